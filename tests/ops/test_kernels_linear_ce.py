"""Fused linear cross-entropy (Triton path) against the float64 reference: losses, dHidden and dWeight."""

import os

import pytest
import torch

import pytrain.kernels.linear_cross_entropy as kmod
from _kernel_checks import DEVICE, assert_close, host_syncs_forbidden, leaf64, poisoned, requires_triton
from pytrain.errors import PytrainError
from pytrain.ops import linear_cross_entropy, linear_cross_entropy_reference

pytestmark = requires_triton
N, H, V = 37, 123, 2003


@pytest.fixture
def small_blocks(monkeypatch):
    """Walk the vocab in 512-column steps so the online softmax crosses many blocks at test sizes."""
    monkeypatch.setattr(kmod, "MAX_BLOCK", 512)


def _problem(dtype, seed, n=N, vocab=V, ignored=5, weight_dtype=None):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, H, generator=gen).to(DEVICE, dtype).requires_grad_()
    weight = (0.2 * torch.randn(vocab, H, generator=gen)).to(DEVICE, weight_dtype or dtype).requires_grad_()
    labels = torch.randint(0, vocab, (n,), generator=gen)
    labels[::ignored] = -100
    return hidden, weight, labels.to(DEVICE), gen


def _check(hidden, weight, labels, gen, dtype, chunk=8, **options):
    with poisoned(kmod):
        loss, z_term = kmod.linear_cross_entropy(hidden, weight, labels, chunk=chunk, **options)
        grad_out = torch.rand(loss.shape, generator=gen).to(DEVICE) + 0.5
        dh, dw = torch.autograd.grad(loss, (hidden, weight), grad_out)
    h64, w64 = leaf64(hidden), leaf64(weight)
    ref_loss, ref_z = linear_cross_entropy_reference(h64, w64, labels, return_z_loss=True, **options)
    ref_dh, ref_dw = torch.autograd.grad(ref_loss, (h64, w64), grad_out.double())
    assert loss.dtype == z_term.dtype == torch.float32 and loss.shape == ref_loss.shape
    assert dh.dtype == hidden.dtype and dw.dtype == weight.dtype
    for name, a, b in [("loss", loss, ref_loss), ("dhidden", dh, ref_dh), ("dweight", dw, ref_dw)]:
        assert_close(a, b, dtype, name)
    if options.get("z_loss"):
        assert_close(z_term, ref_z, dtype, "z-loss term")


CASES = [  # dtype, reduction, label_smoothing, z_loss, softcap
    (torch.float32, "mean", 0.0, 0.0, None),
    (torch.float32, "sum", 0.1, 1e-3, None),
    (torch.float32, "none", 0.1, 1e-3, 30.0),
    (torch.float32, "mean", 0.0, 0.0, 5.0),
    (torch.bfloat16, "mean", 0.1, 1e-3, 30.0),
    (torch.bfloat16, "none", 0.0, 1e-4, None),
]


@pytest.mark.parametrize("dtype,reduction,label_smoothing,z_loss,softcap", CASES)
def test_matches_float64_reference(small_blocks, dtype, reduction, label_smoothing, z_loss, softcap):
    hidden, weight, labels, gen = _problem(dtype, seed=0)
    _check(hidden, weight, labels, gen, dtype, reduction=reduction, label_smoothing=label_smoothing,
           z_loss=z_loss, softcap=softcap)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_labels_ignored(reduction):
    hidden, weight, labels, _ = _problem(torch.float32, seed=1, n=9)
    labels.fill_(-100)
    loss = linear_cross_entropy(hidden, weight, labels, reduction=reduction, z_loss=1e-3, backend="triton")
    assert torch.equal(loss, torch.zeros_like(loss))  # 0/0 is 0, not NaN
    dh, dw = torch.autograd.grad(loss.sum(), (hidden, weight))
    assert not dh.any() and not dw.any()


def test_default_chunking_odd_vocab_and_public_entry():
    hidden, weight, labels, gen = _problem(torch.bfloat16, seed=2, vocab=3001, ignored=3)
    _check(hidden, weight, labels, gen, torch.bfloat16, chunk=0, label_smoothing=0.05)
    loss, z = linear_cross_entropy(hidden, weight, labels, z_loss=1e-4, return_z_loss=True, backend="triton")
    ref, ref_z = linear_cross_entropy_reference(hidden.double(), weight.double(), labels, z_loss=1e-4,
                                                return_z_loss=True)
    assert_close(loss, ref, torch.bfloat16, "loss")
    assert_close(z, ref_z, torch.bfloat16, "z")
    assert not z.requires_grad  # for logging; the loss already carries its gradient


@pytest.mark.parametrize("vocab", [32003, 50257, 128256])
def test_real_vocabulary_sizes(vocab):
    """Llama-2-with-extra-tokens, GPT-2 and Llama-3 vocabularies: odd sizes past many kernel blocks, with the
    default block size (a few rows and a narrow hidden keep the interpreter fast)."""
    gen = torch.Generator().manual_seed(vocab)
    hidden = torch.randn(6, 16, generator=gen).to(DEVICE).requires_grad_()
    weight = (0.2 * torch.randn(vocab, 16, generator=gen)).to(DEVICE).requires_grad_()
    labels = torch.tensor([0, vocab - 1, 7, -100, vocab // 2, vocab - 2]).to(DEVICE)  # both ends of the vocab
    _check(hidden, weight, labels, gen, torch.float32, chunk=0, z_loss=1e-4)


def test_non_contiguous_hidden_and_fp32_master_weight(small_blocks):
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(H, N, generator=gen).to(DEVICE, torch.bfloat16).T.requires_grad_()
    weight = (0.2 * torch.randn(V, H, generator=gen)).to(DEVICE).requires_grad_()  # fp32, as under autocast
    labels = torch.randint(0, V, (N,), generator=gen).to(DEVICE)
    labels[1::4] = -100
    _check(hidden, weight, labels, gen, torch.bfloat16, chunk=16, z_loss=1e-4)


def test_frozen_weight_or_hidden():
    hidden, weight, labels, _ = _problem(torch.float32, seed=4, n=11)
    weight.requires_grad_(False)
    loss = linear_cross_entropy(hidden, weight, labels, backend="triton")
    (dh,) = torch.autograd.grad(loss, (hidden,))
    h64 = leaf64(hidden)
    (ref_dh,) = torch.autograd.grad(linear_cross_entropy_reference(h64, weight.double(), labels), (h64,))
    assert_close(dh, ref_dh, torch.float32, "dhidden")
    with torch.no_grad():
        assert_close(linear_cross_entropy(hidden, weight, labels, backend="triton"),
                     linear_cross_entropy_reference(hidden.double(), weight.double(), labels), torch.float32, "loss")


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_no_host_sync(monkeypatch, backend, reduction):
    hidden, weight, labels, _ = _problem(torch.float32, seed=5, n=9)
    with host_syncs_forbidden(monkeypatch):
        loss = linear_cross_entropy(hidden, weight, labels, reduction=reduction, z_loss=1e-4, backend=backend)
        loss.sum().backward()


def test_rejects_sharded_dtensor_weight():
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        mesh = init_device_mesh("cpu", (2,))
        weight = distribute_tensor(torch.randn(V, H), mesh, [Shard(0)])
        with pytest.raises(PytrainError, match="inside the forward"):
            linear_cross_entropy(torch.randn(4, H), weight, torch.zeros(4, dtype=torch.long), backend="torch")
    finally:
        dist.destroy_process_group()


class _LMHead(torch.nn.Module):
    """The FSDP2 rule: the loss is computed inside the forward of the module that owns the LM head."""

    def __init__(self, vocab):
        super().__init__()
        self.proj = torch.nn.Linear(16, 16)
        self.lm_head = torch.nn.Linear(16, vocab, bias=False)

    def forward(self, x, labels, backend):
        return linear_cross_entropy(self.proj(x), self.lm_head.weight, labels, backend=backend)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="a CPU (gloo) check: needs TRITON_INTERPRET=1")
def test_fsdp2_sharded_lm_head(tmp_path):
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        torch.manual_seed(7)
        sharded, plain = _LMHead(301), _LMHead(301)
        plain.load_state_dict(sharded.state_dict())
        fully_shard(sharded, mesh=init_device_mesh("cpu", (1,)))
        x, labels = torch.randn(9, 16), torch.randint(0, 301, (9,))
        labels[2] = -100
        sharded(x, labels, "triton").backward()
        plain(x, labels, "torch").backward()
        torch.testing.assert_close(sharded.lm_head.weight.grad.full_tensor(), plain.lm_head.weight.grad)
        torch.testing.assert_close(sharded.proj.weight.grad.full_tensor(), plain.proj.weight.grad)
    finally:
        dist.destroy_process_group()


def _sharded_lm_head_rank(rank: int, world: int, init_file: str) -> None:
    """One of 2 gloo ranks: the LM head sharded for real (301 rows: 151 + 150), each rank on its own tokens."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(7)
        sharded, plain = _LMHead(301), _LMHead(301)
        plain.load_state_dict(sharded.state_dict())
        fully_shard(sharded, mesh=init_device_mesh("cpu", (world,)))
        assert sharded.lm_head.weight.to_local().shape[0] == (151, 150)[rank]
        gen = torch.Generator().manual_seed(11)
        x, labels = torch.randn(world, 9, 16, generator=gen), torch.randint(0, 301, (world, 9), generator=gen)
        labels[0, 2] = labels[1, 5] = -100
        sharded(x[rank], labels[rank], "triton").backward()  # FSDP2 averages the ranks' gradients
        sum(plain(x[r], labels[r], "torch") for r in range(world)).div(world).backward()
        torch.testing.assert_close(sharded.lm_head.weight.grad.full_tensor(), plain.lm_head.weight.grad)
        torch.testing.assert_close(sharded.proj.weight.grad.full_tensor(), plain.proj.weight.grad)
        # Outside the forward, the parameter is this rank's shard: refused, never computed on silently.
        with pytest.raises(PytrainError, match="inside the forward"):
            linear_cross_entropy(x[rank], sharded.lm_head.weight, labels[rank], backend="triton")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="a CPU (gloo) check: needs TRITON_INTERPRET=1")
def test_fsdp2_lm_head_sharded_over_two_ranks(tmp_path):
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    import torch.multiprocessing as mp

    mp.spawn(_sharded_lm_head_rank, args=(2, str(tmp_path / "pg")), nprocs=2, join=True)


def test_opcheck_and_fullgraph_compile():
    hidden, weight, labels, _ = _problem(torch.float32, seed=6, n=9, vocab=301)
    for reduction in ("mean", "none"):
        args = (hidden, weight, labels, -100, reduction, 0.1, 1e-3, 20.0, True, True, 4)
        torch.library.opcheck(kmod.lce_fwd, args)

    def loss_fn(hidden, weight, labels):
        per_row = linear_cross_entropy(hidden, weight, labels, reduction="none", backend="triton")
        return linear_cross_entropy(hidden, weight, labels, z_loss=1e-3, backend="triton") + per_row.mean()

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    grads = torch.autograd.grad(compiled(hidden, weight, labels), (hidden, weight))
    expected = torch.autograd.grad(loss_fn(hidden, weight, labels), (hidden, weight))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)
