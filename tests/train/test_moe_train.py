"""Mixture-of-experts training: the step's gradient is transformers' (LM loss + coefficient x its load-balancing
loss, plus a z-loss written out here), averaged over the step's forwards; the logged values and the
aux-loss-free bias update against their formulas; the router options are logged and a run with them
(capacity, z-loss, aux-loss-free bias) resumes exactly; FLOPs count active parameters."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

from _family_references import VOCAB, save_reference
from _kernel_checks import TRITON_OK, host_syncs_forbidden
from _train_fixtures import base_config, losses, packed_data, train  # noqa: F401

transformers = pytest.importorskip("transformers")


@pytest.fixture
def one_rank():
    from pytrain.train.distributed import init_distributed, shutdown

    d = init_distributed("cpu")
    yield d
    shutdown()


def test_step_gradient_is_transformers_lm_plus_router_losses(tmp_path, one_rank):
    """Two micro-batches through pytrain's step (one fp32 rank: the plain model) give the gradient of
    sum(CE) / tokens + aux_coef x mean(aux) + z_coef x mean(z) computed with transformers' model."""
    from pytrain.model.hf import HFWeights, hf_model_config
    from pytrain.train.parallelize import build_model
    from pytrain.train.step import forward_backward
    from pytrain.train.moe import RouterTraining

    reference = save_reference(tmp_path / "hf", "qwen2_moe", "shared")
    config = replace(hf_model_config(tmp_path / "hf"), router_aux_loss_coef=0.05, router_z_loss_coef=0.01)
    model = build_model(config, one_rank, dtype="fp32", initial_weights=HFWeights(tmp_path / "hf", config))
    generator = torch.Generator().manual_seed(3)
    batches = [{"input_ids": torch.randint(0, VOCAB, (2, 16), generator=generator),
                "labels": torch.randint(0, VOCAB, (2, 16), generator=generator)} for _ in range(2)]
    for batch in batches:
        batch["labels"][0, :3] = -100
    loss, _, tokens = forward_backward(model, batches, document_masking=False, grad_clip=0.0, device=one_rank.device,
                                       router=RouterTraining.of(model))

    reference.train()
    objective, lm_sum = 0.0, 0.0
    for batch in batches:
        out = reference(batch["input_ids"], output_router_logits=True)
        ce = F.cross_entropy(out.logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100, reduction="sum")
        z = torch.cat([torch.logsumexp(logits, dim=-1) for logits in out.router_logits]).square().mean()
        objective = objective + ce / tokens + (0.05 * out.aux_loss + 0.01 * z) / len(batches)
        lm_sum += ce.item()
    objective.backward()
    assert tokens == 2 * 2 * 16 - 2 * 3
    assert loss.item() == pytest.approx(lm_sum / tokens, rel=1e-5)  # the logged loss is the LM loss alone

    ours = {name: param.grad.full_tensor() if isinstance(param.grad, DTensor) else param.grad
            for name, param in model.named_parameters()}
    for name, param in reference.named_parameters():
        ours_name = name.removeprefix("model.")
        if name.endswith("experts.gate_up_proj"):
            base = ours_name.removesuffix("gate_up_proj")
            grad = torch.cat([ours[base + "gate_proj"], ours[base + "up_proj"]], dim=1)
        else:
            grad = ours["embed_tokens.weight" if name == "lm_head.weight" else ours_name]
        torch.testing.assert_close(grad, param.grad, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.skipif(not TRITON_OK, reason="Triton needs a CUDA GPU or TRITON_INTERPRET=1 (CI sets it)")
def test_router_bookkeeping_adds_no_host_sync(one_rank, monkeypatch):
    """Router losses, the load summed over micro-batches and ranks, the logged values and the bias update
    stay on the device: the step's one host sync (which reads them with the loss) stays the only one."""
    from pytrain import ops
    from pytrain.model import build_model, preset
    from pytrain.train.moe import RouterTraining

    model = build_model(preset("tiny-moe", vocab_size=VOCAB, router_z_loss_coef=1e-3, moe_capacity_factor=1.0,
                               router_bias_update_rate=1e-3))
    model.init_weights(seed=0)
    router = RouterTraining.of(model)
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    previous = ops.get_backend()
    ops.set_backend("triton")
    try:
        with host_syncs_forbidden(monkeypatch):
            for _ in range(2):
                (model(ids, ids, reduction="sum") + router.loss(2)).backward()
                router.after_backward()
            values = router.step_values()
            router.update_bias()
    finally:
        ops.set_backend(previous)
    assert set(values) == {"aux_loss", "z_loss", "expert_load", "dropped_tokens"}
    assert model.layers[0].mlp.gate.expert_bias.abs().sum() > 0 and model.layers[0].mlp.routing is None


def test_logged_router_values_and_bias_update_are_the_formulas(one_rank):
    """Two forwards of a step with routings set by hand: the logged aux_loss is the mean of the forwards'
    load-balancing losses (E x sum_e f_e P_e, written out here), expert_load the largest max/mean of a
    layer's step load; and DeepSeek-V3's update moves each bias by rate x sign(mean load - load) of the
    step's load (overloaded experts down, underloaded up, a balanced layer unchanged), not of one forward's."""
    from pytrain.model import build_model, preset
    from pytrain.model.moe import Routing
    from pytrain.train.moe import RouterTraining

    model = build_model(preset("tiny-moe", vocab_size=VOCAB, router_bias_update_rate=0.01))
    router = RouterTraining.of(model)
    # [forward][layer] tokens per expert (4 tokens x top-2 = 8 assignments) and summed probabilities
    counts = [[[4, 0, 0, 0, 0, 0, 0, 4], [1] * 8], [[0, 0, 0, 0, 4, 4, 0, 0], [1] * 8]]
    probs = [[[0.5, 0, 0, 0, 1, 1, 0, 1.5], [0.5] * 8], [[1, 1, 0, 0, 1, 1, 0, 0], [0.25, 0.75] * 4]]
    aux = []
    for forward in range(2):
        for layer, c, p in zip(router.layers, counts[forward], probs[forward]):
            layer.routing = Routing(torch.tensor(c, dtype=torch.float32), torch.tensor(p), torch.zeros(()), 4,
                                        None)
        router.loss(2)
        rows = 2 * 4  # layers x tokens
        f = [sum(c[e] for c in counts[forward]) / rows for e in range(8)]
        mean_p = [sum(p[e] for p in probs[forward]) / rows for e in range(8)]
        aux.append(8 * sum(fe * pe for fe, pe in zip(f, mean_p)))
    values = router.step_values()
    router.update_bias()
    assert values["aux_loss"].item() == pytest.approx(sum(aux) / 2, rel=1e-6)
    step_load = [[a + b for a, b in zip(*layer)] for layer in zip(*counts)]  # [4,0,0,0,4,4,0,4], [2]*8
    assert values["expert_load"].item() == pytest.approx(max(max(load) / (sum(load) / 8) for load in step_load))
    for layer, load in zip(router.layers, step_load):
        mean = sum(load) / 8
        expected = [0.01 if n < mean else -0.01 if n > mean else 0.0 for n in load]
        assert layer.gate.expert_bias.tolist() == pytest.approx(expected)


def test_router_options_are_logged_and_resume_exactly(base_config, tmp_path):
    """Capacity, z-loss and the aux-loss-free expert bias (a checkpointed buffer that steers routing):
    logged each step, and a run resumed from step 2 continues with the very same losses."""
    options = ("model.preset=tiny-moe", "model.moe_capacity_factor=1.0", "model.router_z_loss_coef=0.001",
               "model.router_bias_update_rate=0.01", "train.steps=4", "checkpoint.every=2", "train.eval_every=0",
               "logging.sample_every=0", "schedule.warmup_steps=0")
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    train(base_config, f"train.run_dir={full}", *options)
    train(base_config, f"train.run_dir={resumed}", *options, f"checkpoint.resume={full}", "checkpoint.resume_step=2")
    rows, again = ({row["step"]: row for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
                   for run in (full, resumed))
    for step in (3, 4):
        for key in ("loss", "aux_loss", "z_loss", "expert_load", "dropped_tokens"):
            assert again[step][key] == pytest.approx(rows[step][key], rel=1e-6, abs=1e-9), (step, key)
    assert all(row["dropped_tokens"] >= 0 and row["z_loss"] > 0 and row["expert_load"] >= 1 for row in rows.values())
    log = (full / "train.log").read_text()
    assert " | aux " in log and " | load " in log and " | dropped " in log
    assert "M active per token)" in log


def test_compile_of_a_mixture_of_experts_on_the_reference_path_is_a_one_line_error(base_config, tmp_path, capsys):
    """The reference grouped matmul reads the experts' row counts on the host, which a fullgraph-compiled block
    cannot hold (it was a dynamo traceback): refused before anything is written; with the Triton grouped
    GEMM (CUDA, or the interpreter here) compile stays allowed, and so does compile of a dense model."""
    from pytrain.config import RunConfig
    from pytrain.errors import PytrainError
    from pytrain.train.resolve import resolve_run

    capsys.readouterr()
    assert train(base_config, f"train.run_dir={tmp_path / 'run'}", "model.preset=tiny-moe", "train.compile=true",
                 check=False) == 2
    error = capsys.readouterr().err.strip()
    assert "train.compile with a mixture of experts needs the grouped GEMM kernels" in error, error
    assert len(error.splitlines()) == 1 and not (tmp_path / "run").exists()

    config = RunConfig()
    config.data.path, config.data.seq_len, config.train.batch_size, config.train.compile = "unused", 64, 8, True
    cases = [("tiny-moe", "torch", "cuda", True), ("tiny-moe", "auto", "cuda", False),
             ("tiny-moe", "triton", "cuda", False), ("tiny", "auto", "cpu", False)]
    for preset_name, kernels, device, refused in cases:
        config.model.preset, config.train.kernels = preset_name, kernels
        if refused:
            with pytest.raises(PytrainError, match="train.compile with a mixture of experts"):
                resolve_run(config, 512, 1, device)
        else:
            resolve_run(config, 512, 1, device)


def test_flops_count_active_parameters():
    """6 x (router + k of E experts + shared expert + attention + LM head) + attention scores, per token."""
    from pytrain.model import build_model, preset

    config = preset("tiny-qwen2_moe", vocab_size=VOCAB)
    model = build_model(config)
    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert config.num_params() == total
    assert config.num_params(active=True) == total - experts + experts * 2 // 8  # 2 of 8 experts per token
    vectors = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 1)
    matmul = config.num_params(active=True) - vectors  # tied: the embedding's matrix counts once, as the LM head
    attention = 12 * 2 * 4 * 16 * 64  # layers, heads, head_dim, seq
    assert config.flops_per_token(64) == 6 * matmul + attention
