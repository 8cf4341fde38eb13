"""pytrain._native.index_lines against a regex reference, over every kind of buffer it accepts."""

import mmap
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytrain._native import index_lines


def reference(buf: bytes) -> list[int]:
    starts = [0] + [m.end() for m in re.finditer(b"\n", buf)]
    if starts[-1] != len(buf):  # a last line without '\n'
        starts.append(len(buf))
    return starts


@pytest.mark.parametrize("buf", [b"", b"\n", b"\n\n\n", b"a", b"a\n", b"a\nb", b"ab\n\ncd\n", b"\r\n\r\n", b"x" * 100])
def test_small_buffers(buf):
    starts = index_lines(buf)
    assert starts.dtype == np.int64
    assert starts.tolist() == reference(buf)


def test_lines_reassemble_the_buffer():
    buf = b"first\nsecond\r\n\nlast without newline"
    starts = index_lines(buf).tolist()
    lines = [buf[a:b] for a, b in zip(starts, starts[1:])]
    assert lines == [b"first\n", b"second\r\n", b"\n", b"last without newline"]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300).map(lambda b: b.replace(b"\x00", b"\n")), st.sampled_from([1, 2, 3]))
def test_hypothesis_matches_reference(buf, threads):
    assert index_lines(buf, threads).tolist() == reference(buf)


MIB = 1 << 20


@st.composite
def threaded_buffers(draw):
    """A 2-5 MiB buffer (so 2-5 workers of >= 1 MiB really run) with newlines at random places, in dense
    runs, and at and around the byte offsets where the workers' parts meet, for 2, 3 or 4 threads."""
    size = draw(st.integers(2 * MIB, 5 * MIB + 7))
    threads = draw(st.sampled_from([2, 3, 4]))
    workers = min(threads, size // MIB)
    buf = np.full(size, ord("x"), dtype=np.uint8)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    buf[rng.integers(0, size, size=draw(st.integers(0, 3000)))] = ord("\n")
    for k in range(1, workers):
        boundary = size // workers * k + size % workers * k // workers
        for delta in draw(st.lists(st.integers(-2, 2), max_size=5)):
            buf[boundary + delta] = ord("\n")
    if draw(st.booleans()):
        start = draw(st.integers(0, size - 1))
        buf[start:start + draw(st.integers(1, 5000))] = ord("\n")
    buf[-1] = ord("\n") if draw(st.booleans()) else ord("y")
    return buf.tobytes(), threads


@settings(max_examples=25, deadline=None)
@given(threaded_buffers())
def test_hypothesis_threaded_matches_reference(case):
    buf, threads = case
    assert index_lines(buf, threads).tolist() == reference(buf)


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_thread_counts_identical_on_large_buffer(trailing_newline):
    # 9 MB, enough for 7 workers of at least 1 MiB each; line lengths from 0 to ~2000 bytes.
    rng = np.random.default_rng(1)
    arr = rng.integers(32, 127, size=9_000_000, dtype=np.uint8)
    arr[rng.integers(0, arr.size, size=12_000)] = ord("\n")
    arr[-1] = ord("\n") if trailing_newline else ord("x")
    expected = np.concatenate([[0], np.flatnonzero(arr == ord("\n")) + 1])
    if not trailing_newline:
        expected = np.append(expected, arr.size)
    for threads in (1, 2, 4, 7, 0, 100_000):  # absurd requests are capped, not honoured
        np.testing.assert_array_equal(index_lines(arr, threads), expected)


def test_dense_newlines_across_worker_boundaries():
    buf = b"\n" * 3_000_001  # every byte a line end; workers split inside a run of newlines
    for threads in (1, 3):
        starts = index_lines(buf, threads)
        assert len(starts) == len(buf) + 1 and starts[0] == 0 and starts[-1] == len(buf)
        assert np.all(np.diff(starts) == 1)


def test_readonly_mmap_memoryview(tmp_path):
    data = b"one\ntwo\nthree"
    path = tmp_path / "lines.txt"
    path.write_bytes(data)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        assert view.readonly
        assert index_lines(view).tolist() == [0, 4, 8, 13]
        assert index_lines(view[4:]).tolist() == [0, 4, 9]
        view.release()


def test_numpy_and_bytearray_inputs():
    data = b"a\nbb\n"
    assert index_lines(np.frombuffer(data, dtype=np.uint8)).tolist() == [0, 2, 5]
    assert index_lines(bytearray(data)).tolist() == [0, 2, 5]


def test_rejects_bad_arguments():
    with pytest.raises(TypeError):
        index_lines("text is not bytes")
    with pytest.raises((ValueError, BufferError)):
        index_lines(np.zeros(10, dtype=np.uint8)[::2])  # not contiguous
    with pytest.raises(ValueError, match="threads"):
        index_lines(b"a\n", -1)
