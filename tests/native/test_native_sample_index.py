"""pytrain._native.permutation and build_sample_index against pure-Python references."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytrain._native import build_sample_index, permutation

MASK = 2**64 - 1


# ----------------------------------------------------------------------------------------------- permutation
def reference_permutation(n: int, seed: int) -> list[int]:
    """The documented algorithm, written out independently: SplitMix64 + Lemire's bounded draw + Fisher-Yates."""
    state = seed

    def next64():
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(r):
        m = next64() * r
        while (m & MASK) < (2**64 - r) % r:
            m = next64() * r
        return m >> 64

    a = list(range(n))
    for i in range(n - 1, 0, -1):
        j = below(i + 1)
        a[i], a[j] = a[j], a[i]
    return a


def test_splitmix64_reference_vector():
    # First outputs of Vigna's splitmix64.c seeded with 0 pin the generator itself, and with it the shuffle's
    # independence from platform and compiler.
    state, outputs = 0, []
    for _ in range(3):
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        outputs.append(z ^ (z >> 31))
    assert outputs == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_pinned_output():
    assert permutation(10, 42).tolist() == [8, 3, 6, 5, 4, 0, 9, 2, 1, 7]


def test_pinned_output_worked_out_from_the_published_splitmix64_vector():
    """permutation(4, seed=0) by hand from the three splitmix64 outputs above (Vigna's, not ours):
    Fisher-Yates draws j = (x * (i + 1)) >> 64 for i = 3, 2, 1 (Lemire; no rejection: the low 64 bits are
    far above the thresholds 0, 1 and 0):
      i=3: 0xE220A8397B1DCDAF / 2^64 = 0.883... -> j = floor(4 * 0.883) = 3, swap a[3], a[3]: [0, 1, 2, 3]
      i=2: 0x6E789E6AA1B965F4 / 2^64 = 0.431... -> j = floor(3 * 0.431) = 1, swap a[2], a[1]: [0, 2, 1, 3]
      i=1: 0x06C45D188009454F / 2^64 = 0.026... -> j = floor(2 * 0.026) = 0, swap a[1], a[0]: [2, 0, 1, 3]"""
    assert permutation(4, 0).tolist() == [2, 0, 1, 3]


@pytest.mark.parametrize("n,seed", [(0, 0), (1, 5), (2, 0), (17, 1), (1000, 12345), (5000, 2**64 - 1)])
def test_matches_reference(n, seed):
    out = permutation(n, seed)
    assert out.dtype == np.int64
    assert out.tolist() == reference_permutation(n, seed)


def test_is_a_deterministic_permutation_that_depends_on_the_seed():
    a, b, c = permutation(100_000, 7), permutation(100_000, 7), permutation(100_000, 8)
    np.testing.assert_array_equal(np.sort(a), np.arange(100_000))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_roughly_uniform():
    # Where element 0 lands over 4000 seeds: each of 8 slots should get about 500.
    counts = np.bincount([int(np.flatnonzero(permutation(8, s) == 0)[0]) for s in range(4000)], minlength=8)
    chi2 = float(((counts - 500.0) ** 2 / 500.0).sum())
    assert chi2 < 30, counts  # 7 degrees of freedom; p < 1e-4 if this fails by chance


def test_permutation_arguments():
    with pytest.raises(ValueError, match="n must be >= 0"):
        permutation(-1, 0)
    for bad_seed in (-1, 2**64):
        with pytest.raises(ValueError, match="seed must be an integer"):
            permutation(3, bad_seed)


# ----------------------------------------------------------------------------------------------- sample index
def reference_sample_index(offsets, order, seq_len):
    """Walk the stream token by token: row s locates stream token s * seq_len."""
    where = [(k, off) for k, d in enumerate(order) for off in range(offsets[d + 1] - offsets[d])]
    total = len(where)
    num_samples = (total - 1) // seq_len if total >= 2 else 0
    return [where[s * seq_len] if s * seq_len < total else (len(order), 0) for s in range(num_samples + 1)]


def sample_tokens(rows, s, offsets, order):
    """Tokens of sample s read back from rows s and s + 1 (both ends inclusive), documents as token ranges."""
    (k0, o0), (k1, o1) = rows[s], rows[s + 1]
    doc = lambda k: np.arange(offsets[order[k]], offsets[order[k] + 1])  # noqa: E731
    if k0 == k1:
        return doc(k0)[o0:o1 + 1]
    return np.concatenate([doc(k0)[o0:]] + [doc(k) for k in range(k0 + 1, k1)] + [doc(k1)[:o1 + 1]])


def check(lengths, seq_len, seed):
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(lengths)).astype(np.int64)
    rows = build_sample_index(offsets, order, seq_len)
    assert rows.dtype == np.int64 and rows.ndim == 2 and rows.shape[1] == 2
    assert [tuple(r) for r in rows.tolist()] == reference_sample_index(offsets.tolist(), order.tolist(), seq_len)
    stream = np.concatenate([np.arange(offsets[d], offsets[d + 1]) for d in order]) if len(order) else np.zeros(0)
    num_samples = rows.shape[0] - 1
    assert num_samples == max(len(stream) - 1, 0) // seq_len
    for s in range(num_samples):
        np.testing.assert_array_equal(sample_tokens(rows, s, offsets, order),
                                      stream[s * seq_len:s * seq_len + seq_len + 1])
    return rows


def test_small_example():
    # docs of 3, 0 and 7 tokens laid out as [2, 1, 0]: stream = doc2 (7 tokens), doc0 (3 tokens)
    rows = build_sample_index(np.array([0, 3, 3, 10]), np.array([2, 1, 0]), 4)
    assert rows.tolist() == [[0, 0], [0, 4], [2, 1]]


@pytest.mark.parametrize("lengths,seq_len", [
    ([], 4), ([0, 0], 3), ([1], 1), ([2], 1), ([5], 4), ([5], 5), ([0, 5, 0, 0, 4, 0], 2), ([10, 10, 10], 9),
    ([1] * 50, 7), ([100], 1),
])
def test_edge_cases(lengths, seq_len):
    check(lengths, seq_len, seed=0)


def test_empty_stream_row():
    assert build_sample_index(np.array([0, 0, 0]), np.array([1, 0]), 4).tolist() == [[2, 0]]
    assert build_sample_index(np.array([7]), np.array([], dtype=np.int64), 4).tolist() == [[0, 0]]


def test_offsets_need_not_start_at_zero():
    rows = build_sample_index(np.array([100, 104, 110]), np.array([1, 0]), 3)
    assert rows.tolist() == [[0, 0], [0, 3], [1, 0], [1, 3]]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.just(0), st.integers(0, 40)), max_size=30), st.integers(1, 25), st.integers(0, 2**32))
def test_hypothesis_matches_reference_and_reconstructs_stream(lengths, seq_len, seed):
    check(lengths, seq_len, seed)


def test_validation_errors():
    offsets, order = np.array([0, 2, 5]), np.array([1, 0])
    with pytest.raises(ValueError, match="seq_len must be >= 1"):
        build_sample_index(offsets, order, 0)
    with pytest.raises(ValueError, match=r"non-decreasing: doc_offsets\[1\] = 6 > doc_offsets\[2\] = 5"):
        build_sample_index(np.array([0, 6, 5]), order, 2)
    with pytest.raises(ValueError, match="permutation of the 2 document ids, got 3 entries"):
        build_sample_index(offsets, np.array([0, 1, 1]), 2)
    with pytest.raises(ValueError, match="document 1 appears twice"):
        build_sample_index(offsets, np.array([1, 1]), 2)
    with pytest.raises(ValueError, match=r"doc_order\[1\] = 2 is not a document id in \[0, 2\)"):
        build_sample_index(offsets, np.array([0, 2]), 2)
    with pytest.raises(ValueError, match="at least 1"):
        build_sample_index(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 2)
    with pytest.raises(TypeError, match="integer array"):
        build_sample_index(offsets.astype(np.float64), order, 2)
    with pytest.raises(ValueError, match="must be 1-D"):
        build_sample_index(offsets.reshape(1, 3), order, 2)
    # other integer dtypes and plain lists are fine
    np.testing.assert_array_equal(build_sample_index(offsets.astype(np.uint32), [1, 0], 2),
                                  build_sample_index(offsets, order, 2))
