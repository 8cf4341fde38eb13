"""HashedFile: the bytes written and their sha256 are those of the buffers given, in order, whichever path
(hashed in line or on the helper thread) and however many writeback hand-offs the file went through."""

from __future__ import annotations

import hashlib

import numpy as np

from pytrain.data import hashed_file
from pytrain.data.hashed_file import HashedFile


def test_bytes_and_digest_match_the_buffers(tmp_path, monkeypatch):
    monkeypatch.setattr(hashed_file, "WRITEBACK_BYTES", 3 << 20)  # several hand-offs in a small file
    rng = np.random.default_rng(0)
    # Small buffers (hashed in line), buffers over the 1 MB threshold (hashed beside the write), empty ones,
    # and dtypes other than bytes.
    buffers = [rng.integers(0, 2**16, size=n, dtype=np.uint16) for n in (10, 0, 700_000, 1, 3_000_000, 5)]
    buffers += [rng.integers(0, 2**32, size=600_000, dtype=np.uint32), b"tail"]
    path = tmp_path / "out.bin"
    with open(path, "wb") as handle:
        out = HashedFile(handle)
        for buffer in buffers:
            out.write(buffer)
        digest = out.hexdigest()
    expected = b"".join(bytes(memoryview(b)) for b in buffers)
    assert path.read_bytes() == expected
    assert digest == hashlib.sha256(expected).hexdigest()
    assert out.size == len(expected)
