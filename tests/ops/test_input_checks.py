"""The debug switch for labels and RoPE positions (PYTRAIN_CHECK_INPUTS=1 / ops.set_checks), and the
kernels' NaN for out-of-range positions when it is off."""

import os
import subprocess
import sys

import pytest
import torch

from _kernel_checks import DEVICE, TRITON_OK
from pytrain import ops
from pytrain.errors import PytrainError

BACKENDS = ["torch"] + (["triton"] if TRITON_OK else [])


@pytest.fixture
def checks_on():
    ops.set_checks(True)
    try:
        yield
    finally:
        ops.set_checks(False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_label_is_named(checks_on, backend):
    hidden, weight = torch.randn(4, 8, device=DEVICE), torch.randn(11, 8, device=DEVICE)
    labels = torch.tensor([3, -100, 11, 2], device=DEVICE)
    with pytest.raises(PytrainError, match=r"label 11 at index \[2\] is outside \[0, 11\) and is not the "
                                           r"ignore index -100"):
        ops.linear_cross_entropy(hidden, weight, labels, backend=backend)
    labels[2] = -7
    with pytest.raises(PytrainError, match=r"label -7 at index \[2\]"):
        ops.linear_cross_entropy(hidden, weight, labels, backend=backend)
    labels[2] = 10  # in range, ignore_index elsewhere: accepted
    assert torch.isfinite(ops.linear_cross_entropy(hidden, weight, labels, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_position_is_named(checks_on, backend):
    q, k = torch.randn(2, 5, 2, 8, device=DEVICE), torch.randn(2, 5, 1, 8, device=DEVICE)
    pos = torch.arange(5, device=DEVICE).repeat(2, 1)
    pos[1, 3] = 9
    with pytest.raises(PytrainError, match=r"position 9 at index \[1, 3\] is outside \[0, 5\); pass max_position"):
        ops.apply_rope(q, k, pos, backend=backend)
    qo, _ = ops.apply_rope(q, k, pos, max_position=16, backend=backend)  # a table long enough: fine
    assert torch.isfinite(qo).all()


def test_checks_are_off_by_default_and_cost_nothing(monkeypatch):
    assert not ops.checks_enabled()
    monkeypatch.setattr(torch.Tensor, "any", lambda *a, **k: pytest.fail("checked while switched off"))
    hidden, weight = torch.randn(3, 8), torch.randn(5, 8)
    ops.linear_cross_entropy(hidden, weight, torch.tensor([0, 1, 4]), backend="torch")


def test_environment_variable_switches_checks_on():
    code = "from pytrain import ops; print(ops.checks_enabled())"
    env = {**os.environ, "PYTRAIN_CHECK_INPUTS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "True"


@pytest.mark.skipif(not TRITON_OK, reason="Triton kernels need a CUDA GPU or TRITON_INTERPRET=1")
def test_kernel_turns_out_of_range_position_into_nan():
    """With checks off the kernel reads no stray memory and poisons only the bad token's outputs."""
    q, k = torch.randn(1, 4, 2, 8, device=DEVICE), torch.randn(1, 4, 1, 8, device=DEVICE)
    pos = torch.tensor([[0, 1, 7, -1]], device=DEVICE)
    qo, ko = ops.apply_rope(q, k, pos, backend="triton")
    assert torch.isnan(qo[0, 2:]).all() and torch.isnan(ko[0, 2:]).all()
    ref_q, ref_k = ops.apply_rope_reference(q[:, :2], k[:, :2])
    torch.testing.assert_close(qo[:, :2], ref_q)
    torch.testing.assert_close(ko[:, :2], ref_k)


def test_compiled_check_does_not_break_the_graph(checks_on):
    """Under torch.compile(fullgraph=True) the check is an asynchronous assertion, not a graph break."""
    def loss(hidden, weight, labels):
        return ops.linear_cross_entropy(hidden, weight, labels, backend="torch")

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    hidden, weight = torch.randn(3, 8), torch.randn(5, 8)
    torch.testing.assert_close(compiled(hidden, weight, torch.tensor([0, 1, 4])),
                               loss(hidden, weight, torch.tensor([0, 1, 4])))
    with pytest.raises(RuntimeError, match="outside"):
        compiled(hidden, weight, torch.tensor([0, 5, 4]))
