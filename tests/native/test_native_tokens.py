"""pytrain._native.narrow_tokens against numpy concatenation."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytrain._native import narrow_tokens


def reference(batch, dtype, bos=-1, eos=-1):
    docs = [([bos] if bos >= 0 else []) + list(doc) + ([eos] if eos >= 0 else []) for doc in batch]
    flat = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs]) if docs else np.zeros(0, dtype=np.int64)
    return flat.astype(dtype), np.array([len(d) for d in docs], dtype=np.int64)


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
@pytest.mark.parametrize("bos,eos", [(-1, -1), (1, -1), (-1, 2), (1, 2)])
def test_matches_numpy(dtype, bos, eos):
    rng = np.random.default_rng(0)
    top = 65535 if dtype == "uint16" else 2**32 - 1
    batch = [rng.integers(0, top + 1, size=rng.integers(0, 50)).tolist() for _ in range(40)] + [[]]
    tokens, lengths = narrow_tokens(batch, dtype, bos, eos)
    want_tokens, want_lengths = reference(batch, dtype, bos, eos)
    assert tokens.dtype.str == {"uint16": "<u2", "uint32": "<u4"}[dtype]
    np.testing.assert_array_equal(tokens, want_tokens)
    np.testing.assert_array_equal(lengths, want_lengths)
    assert lengths.dtype == np.int64


def test_bos_eos_placement_and_empty_docs():
    tokens, lengths = narrow_tokens([[5, 6], [], [7]], "uint16", bos=1, eos=2)
    assert tokens.tolist() == [1, 5, 6, 2, 1, 2, 1, 7, 2]
    assert lengths.tolist() == [4, 2, 3]
    tokens, lengths = narrow_tokens([[], []], "uint32")
    assert tokens.tolist() == [] and lengths.tolist() == [0, 0]
    tokens, lengths = narrow_tokens([], "uint16", 1, 2)
    assert tokens.size == 0 and lengths.size == 0


def test_accepts_tuples_and_little_endian_bytes():
    tokens, lengths = narrow_tokens(((0x0102, 0xFFFF), [0]), "uint16")
    assert tokens.tobytes() == b"\x02\x01\xff\xff\x00\x00" and lengths.tolist() == [2, 1]
    tokens, _ = narrow_tokens([(0x01020304,)], "uint32")
    assert tokens.tobytes() == b"\x04\x03\x02\x01"


def test_limits_of_each_dtype():
    assert narrow_tokens([[65535]], "uint16")[0].tolist() == [65535]
    assert narrow_tokens([[2**32 - 1]], "uint32")[0].tolist() == [2**32 - 1]
    with pytest.raises(ValueError, match=r"token id 70000 does not fit uint16; the tokenizer's vocabulary needs uint32 "
                                         r"\(document 1, position 2\)"):
        narrow_tokens([[1], [2, 3, 70000]], "uint16")
    with pytest.raises(ValueError, match=r"token id 4294967296 does not fit uint32 \(document 0, position 0\)"):
        narrow_tokens([[2**32]], "uint32")
    with pytest.raises(ValueError, match=r"token id 1180591620717411303424 does not fit uint32"):
        narrow_tokens([[2**70]], "uint32")
    with pytest.raises(ValueError, match=r"token id -1 is negative \(document 0, position 1\)"):
        narrow_tokens([[0, -1]], "uint32")
    with pytest.raises(ValueError, match=r"token id -1180591620717411303424 is negative"):
        narrow_tokens([[-(2**70)]], "uint32")
    with pytest.raises(ValueError, match=r"token id 65536 does not fit uint16.*\(the eos id\)"):
        narrow_tokens([[0]], "uint16", eos=65536)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dtype must be 'uint16' or 'uint32'"):
        narrow_tokens([[1]], "int32")
    with pytest.raises(TypeError, match="token ids must be int, got float"):
        narrow_tokens([[1.0]], "uint16")
    with pytest.raises(TypeError, match="each document must be a list or tuple"):
        narrow_tokens([1, 2], "uint16")
    with pytest.raises(TypeError, match="batch must be a list"):
        narrow_tokens(5, "uint16")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 65535), max_size=20), max_size=10), st.integers(-1, 65535),
       st.integers(-1, 65535), st.sampled_from(["uint16", "uint32"]))
def test_hypothesis_matches_numpy(batch, bos, eos, dtype):
    tokens, lengths = narrow_tokens(batch, dtype, bos, eos)
    want_tokens, want_lengths = reference(batch, dtype, bos, eos)
    np.testing.assert_array_equal(tokens, want_tokens)
    np.testing.assert_array_equal(lengths, want_lengths)
