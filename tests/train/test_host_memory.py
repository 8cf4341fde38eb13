"""pytrain.train.host_memory: with glibc's thresholds raised, a step that allocates and frees the same two
16 MB buffers (the demo's logits and softmax) takes no page faults after the first, counted by the kernel
(getrusage's minor faults); without it, up to one per 4 KiB page every step."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

STEPS = """
import resource, sys, torch
from pytrain.train.host_memory import keep_large_buffers
if sys.argv[1] == "keep":
    keep_large_buffers()
x = torch.randn(2048, 2048)

def step():  # two 16 MB tensors alive at once, then both freed
    return float((x - 1).exp().sum())

for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def faults_per_step(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallopt"), reason="not glibc: nothing to set")
def test_large_buffers_are_reused_without_page_faults():
    # the cost exists here (measured 400 to 8160 of the 8192 pages per step, as glibc's dynamic threshold moves)
    assert faults_per_step("plain") > 64
    assert faults_per_step("keep") < 16
