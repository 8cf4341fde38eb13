"""optim.name=muon on one process, against torch.optim.Muon and torch.optim.AdamW step by step; the
Newton-Schulz iteration against a float64 formula; batches of matrices (MoE experts) per matrix;
the parameter groups; the config's keys."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pytrain.config import OptimSection
from pytrain.model import Llama, preset
from pytrain.train.optim import build_optimizer, describe_optimizer
from pytrain.train.optim.newton_schulz import orthogonalize
from pytrain.train.step import _create_optimizer_state

COEFFICIENTS = (3.4445, -4.7750, 2.0315)
MUON = dict(name="muon", lr=2e-2, weight_decay=0.1, momentum=0.9, ns_steps=4, ns_coefficients=[3.0, -4.0, 2.0],
            betas=[0.8, 0.9], eps=1e-6)


def tiny_model(**overrides) -> Llama:
    model = Llama(preset("tiny", vocab_size=96, attention_bias=True, tie_word_embeddings=False, **overrides))
    model.init_weights(seed=0)
    return model


def is_block_matrix(name: str, param) -> bool:
    return name.startswith("layers.") and param.dim() == 2


def reference_optimizers(model: nn.Module, settings: dict, nesterov: bool) -> list[torch.optim.Optimizer]:
    """torch.optim.Muon (Moonlight's RMS match) on the blocks' matrices, torch.optim.AdamW on the rest,
    weight decay on the untied LM head only."""
    named = list(model.named_parameters())
    matrices = [p for n, p in named if is_block_matrix(n, p)]
    decayed = [p for n, p in named if n == "lm_head.weight"]
    kept = [p for n, p in named if not is_block_matrix(n, p) and n != "lm_head.weight"]
    muon = torch.optim.Muon(matrices, lr=settings["lr"], weight_decay=settings["weight_decay"],
                            momentum=settings["momentum"], nesterov=nesterov, ns_steps=settings["ns_steps"],
                            ns_coefficients=tuple(settings["ns_coefficients"]), adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW([{"params": decayed, "weight_decay": settings["weight_decay"]},
                               {"params": kept, "weight_decay": 0.0}],
                              lr=settings["lr"], betas=tuple(settings["betas"]), eps=settings["eps"], fused=True)
    return [muon, adamw]


def loss_of(model: nn.Module, step: int) -> torch.Tensor:
    tokens = torch.randint(0, 96, (2, 17), generator=torch.Generator().manual_seed(step))
    tokens = tokens.to(next(model.parameters()).device)
    return model(tokens[:, :-1], labels=tokens[:, 1:])


def train_both(model, optimizer, reference, references, steps: int, compare) -> None:
    """Step pytrain's optimizer and the reference optimizers on the same losses; `compare` after each step."""
    for step in range(1, steps + 1):
        lr = MUON["lr"] * step / steps  # the schedule sets every group's lr
        for group in optimizer.param_groups + [g for o in references for g in o.param_groups]:
            group["lr"] = lr
        loss_of(model, step).backward()
        loss_of(reference, step).backward()
        for o in [optimizer, *references]:
            o.step()
            o.zero_grad()
        for (name, got), expected in zip(model.named_parameters(), reference.parameters()):
            compare(got, expected, (step, name))


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_equals_torch_muon_and_adamw_step_by_step(nesterov):
    """Newton-Schulz in bf16 (as torch.optim.Muon always computes it): the same arithmetic, so the same bits."""
    model = tiny_model()
    reference = copy.deepcopy(model)
    optimizer = build_optimizer(model, OptimSection(**MUON, nesterov=nesterov), torch.device("cpu"))
    optimizer.ns_dtype = torch.bfloat16
    references = reference_optimizers(reference, MUON, nesterov)

    def equal(got, expected, where):
        assert torch.equal(got, expected), (where, (got - expected).abs().max())

    train_both(model, optimizer, reference, references, 4, equal)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (benchmarks/gpu_check.sh runs it)")
def test_cuda_compiled_bf16_close_to_torch_muon():
    """On CUDA the iteration runs compiled in bf16: within bf16 rounding of torch.optim.Muon's eager bf16."""
    model = tiny_model().cuda()
    reference = copy.deepcopy(model)
    optimizer = build_optimizer(model, OptimSection(**MUON), torch.device("cuda"))
    assert optimizer.ns_dtype == torch.bfloat16

    def close(got, expected, where):
        torch.testing.assert_close(got, expected, rtol=0, atol=2e-4, msg=lambda m: f"{where}: {m}")

    train_both(model, optimizer, reference, reference_optimizers(reference, MUON, True), 4, close)


def test_adamw_equals_torch_adamw():
    """optim.name=adamw (the default): torch.optim.AdamW with weight decay on the matmul weights but the embedding."""
    model = tiny_model()
    reference = copy.deepcopy(model)
    optimizer = build_optimizer(model, OptimSection(lr=1e-2, betas=[0.8, 0.9]), torch.device("cpu"))
    named = list(reference.named_parameters())
    adamw = torch.optim.AdamW([{"params": [p for n, p in named if p.dim() == 2 and n != "embed_tokens.weight"]},
                               {"params": [p for n, p in named if p.dim() == 1 or n == "embed_tokens.weight"],
                                "weight_decay": 0.0}], lr=1e-2, betas=(0.8, 0.9), weight_decay=0.1, fused=True)
    for step in range(1, 4):
        loss_of(model, step).backward()
        loss_of(reference, step).backward()
        optimizer.step()
        adamw.step()
        optimizer.zero_grad()
        adamw.zero_grad()
    for (name, got), expected in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(got, expected), name


def test_groups_muon_on_block_matrices_adamw_on_the_rest():
    model = tiny_model()
    optimizer = build_optimizer(model, OptimSection(**MUON), torch.device("cpu"))
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [(g["algorithm"], g["weight_decay"], {names[id(p)] for p in g["params"]}) for g in optimizer.param_groups]
    matrices = {n for n, p in model.named_parameters() if is_block_matrix(n, p)}
    assert len(matrices) == 14  # q, k, v, o, gate, up, down in each of the 2 blocks
    assert groups[0] == ("muon", 0.1, matrices)
    assert groups[1] == ("adamw", 0.1, {"lm_head.weight"})
    assert groups[2][:2] == ("adamw", 0.0) and "embed_tokens.weight" in groups[2][2]
    assert "norm.weight" in groups[2][2] and "layers.1.self_attn.q_proj.bias" in groups[2][2]
    assert len(groups) == 3 and sum(len(g[2]) for g in groups) == len(names)
    lines = describe_optimizer(optimizer, model)
    assert lines[0].startswith("optimizer group muon: 14 tensors") and "layers.*.self_attn.q_proj.weight" in lines[0]
    assert "momentum 0.9, nesterov True, ns_steps 4, ns_coefficients (3, -4, 2)" in lines[0]
    assert "Newton-Schulz in float32" in lines[0]
    assert lines[2].startswith("optimizer group adamw:") and "betas (0.8, 0.9), eps 1e-06" in lines[2]


class Experts(nn.Module):
    """A block holding a batch of 4 expert matrices [experts, out, in] and a bias, as an MoE layer would."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Module()])
        self.layers[0].experts = nn.Parameter(torch.randn(4, 6, 10))
        self.layers[0].wide = nn.Parameter(torch.randn(3, 10, 6))
        self.layers[0].bias = nn.Parameter(torch.randn(6))


def test_each_expert_is_orthogonalised_on_its_own():
    """A 3-D block weight is a batch of matrices: each equals torch.optim.Muon on that matrix alone."""
    model = Experts()
    slices = [nn.Parameter(w.detach().clone()) for p in (model.layers[0].experts, model.layers[0].wide) for w in p]
    optimizer = build_optimizer(model, OptimSection(**MUON), torch.device("cpu"))
    optimizer.ns_dtype = torch.bfloat16
    reference = torch.optim.Muon(slices, lr=MUON["lr"], weight_decay=0.1, momentum=0.9, ns_steps=4,
                                 ns_coefficients=(3.0, -4.0, 2.0), adjust_lr_fn="match_rms_adamw")
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=generator)
        for s, g in zip(slices, [*model.layers[0].experts.grad, *model.layers[0].wide.grad]):
            s.grad = g.clone()
        optimizer.step()
        reference.step()
    got = [*model.layers[0].experts, *model.layers[0].wide]
    for i, (g, e) in enumerate(zip(got, slices)):
        assert torch.equal(g, e), i


def newton_schulz_float64(g: torch.Tensor, steps: int, coefficients) -> torch.Tensor:
    """The quintic iteration written out in float64, on the short side of the matrix."""
    a, b, c = coefficients
    x = g.double().T if g.shape[0] > g.shape[1] else g.double()
    x = x / torch.linalg.matrix_norm(x)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if g.shape[0] > g.shape[1] else x


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (17, 17)])
def test_newton_schulz_fp32_against_float64(shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    got = orthogonalize(g, 5, COEFFICIENTS, torch.float32)
    expected = newton_schulz_float64(g, 5, COEFFICIENTS)
    assert got.dtype == torch.float32 and got.shape == g.shape
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    singular = torch.linalg.svdvals(expected)  # what the iteration is for: singular values near 1
    assert singular.min() > 0.5 and singular.max() < 1.5


def test_cpu_default_is_fp32_and_the_cuda_form_traces_whole():
    """On the CPU the iteration runs in fp32 eagerly; on CUDA it is compiled with fullgraph=True, so it
    must trace without a graph break: the traced function equals the eager one (2-D and batched)."""
    optimizer = build_optimizer(tiny_model(), OptimSection(**MUON), torch.device("cpu"))
    assert optimizer.ns_dtype == torch.float32
    traced = torch.compile(orthogonalize, fullgraph=True, backend="aot_eager")
    for shape in [(24, 40), (40, 24), (3, 8, 12)]:
        g = torch.randn(shape, generator=torch.Generator().manual_seed(2))
        assert torch.equal(traced(g, 5, COEFFICIENTS, torch.bfloat16), orthogonalize(g, 5, COEFFICIENTS, torch.bfloat16))


def test_state_before_the_first_step_leaves_weights_and_zero_momentum():
    """The training step creates the optimizer state up front (pytrain.train.step): for Muon too, the
    weights stay bit for bit and every momentum buffer is zero."""
    model = tiny_model()
    before = copy.deepcopy(model.state_dict())
    optimizer = build_optimizer(model, OptimSection(**MUON), torch.device("cpu"))
    _create_optimizer_state(optimizer)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    muon, adamw_groups = optimizer.param_groups[0], optimizer.param_groups[1:]
    assert all(not optimizer.state[p]["momentum_buffer"].any() for p in muon["params"])
    assert all(int(optimizer.state[p]["step"]) == 0 for g in adamw_groups for p in g["params"])


def test_defaults_are_torch_muons():
    """The documented defaults of optim.momentum, nesterov, ns_steps, ns_coefficients are torch.optim.Muon's."""
    import inspect

    torch_defaults = {k: v.default for k, v in inspect.signature(torch.optim.Muon).parameters.items()}
    section = OptimSection()
    assert (section.momentum, section.nesterov, section.ns_steps) == (
        torch_defaults["momentum"], torch_defaults["nesterov"], torch_defaults["ns_steps"])
    assert tuple(section.ns_coefficients) == torch_defaults["ns_coefficients"]


@pytest.mark.parametrize("override, message", [
    ("optim.name=sgd", 'optim.name: unknown value "sgd"'),
    ("optim.momentum=1", "optim.momentum must be in [0, 1), got 1.0"),
    ("optim.ns_steps=0", "optim.ns_steps (Newton-Schulz iterations) must be 1 to 99, got 0"),
    ("optim.ns_coefficients=[3.4, -4.7]", "optim.ns_coefficients must be three numbers (a, b, c)"),
])
def test_config_refuses_bad_muon_settings(tmp_path, override, message):
    from pytrain.config import load_config
    from pytrain.errors import PytrainError

    path = tmp_path / "run.yaml"
    path.write_text("data: {path: somewhere}\n")
    assert load_config(path).optim.name == "adamw"
    with pytest.raises(PytrainError) as error:
        load_config(path, [override])
    assert message in str(error.value) and "\n" not in str(error.value)
