"""`pytrain eval`: downstream task scores of a run's checkpoint, through lm-evaluation-harness.

The checkpoint is evaluated as it is (any family, no export step): pytrain.harness.lm.PytrainLM is the
harness's language model over it, pytrain.harness.tasks reads the tasks offline and runs them. One
process holds the whole model; under torchrun the harness splits the documents over the ranks and
gathers the results, and the model is sharded with FSDP2 (each rank holds 1/W of the weights, so a model
too large for one device is evaluated too) unless `--no-shard` gives every rank a whole copy.

`--out` gets the harness's own results JSON (what `lm_eval --output_path` writes), with a `pytrain` entry
naming the run and checkpoint; it is written atomically and replaces (with --overwrite) only a results
file of `pytrain eval`.

Importing this module also registers the model with the harness as "pytrain", for Python users:
`lm_eval.simple_evaluate(model="pytrain", model_args="run=runs/my-run,step=400", tasks=[...])`, and
switches the Hugging Face libraries offline, as `pytrain eval` runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from pytrain.errors import PytrainError, shown
from pytrain.fsutil import output_lock
from pytrain.safe_read import read_json

DTYPES = ("fp32", "bf16", "fp16")


def run_eval(run_dir: str, *, tasks: list[str], out: str | None, step: int | None = None,
             include_path: str | None = None, num_fewshot: int | None = None, limit: int | None = None,
             batch_size: int = 8, bootstrap_iters: int = 100000, dtype: str = "fp32", device: str = "auto",
             shard: bool = True, overwrite: bool = False) -> dict | None:
    """Evaluate `run_dir`'s checkpoint (latest, or `step`) on `tasks`; write `out` and print the table on
    rank 0. Returns the harness's results (rank 0; None on other ranks)."""
    from pytrain.harness.tasks import TaskSet, require_harness
    from pytrain.train.run_dir import RunDir

    for option, value, least in (("--limit", limit, 1), ("--batch-size", batch_size, 1),
                                 ("--num-fewshot", num_fewshot, 0), ("--bootstrap-iters", bootstrap_iters, 0)):
        if value is not None and value < least:
            raise PytrainError(f"{option} must be >= {least}, got {value}")
    if dtype not in DTYPES:
        raise PytrainError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    with contextlib.ExitStack() as writing:
        if out is not None and os.environ.get("RANK", "0") == "0":  # the rank that writes it: the only writer
            writing.enter_context(output_lock(out, "eval"))     # of --out from the check to the rename
        if out is not None:
            check_replaceable(Path(out), overwrite)
        run = RunDir(run_dir)
        step = resolve_step(run, step)
        require_harness()
        task_set = TaskSet(tasks, include_path)
        task_set.check()
        import torch.distributed as dist

        owns_process_group = not dist.is_initialized()  # else the caller's, left as it is
        try:
            from pytrain.harness.tasks import results_table, run_tasks

            lm, checkpoint = load_lm(run, step, batch_size=batch_size, dtype=dtype, device=device, shard=shard)
            description = f"run={run.path},step={step}"
            results = run_tasks(lm, task_set, num_fewshot=num_fewshot, limit=limit, bootstrap_iters=bootstrap_iters,
                                description=description)
        finally:
            from pytrain.train.distributed import shutdown

            if owns_process_group:
                shutdown()
        if results is None:
            return None
        from pytrain import __version__

        results["pytrain"] = {"command": "eval", "run": str(run.path), "step": step, "checkpoint": str(checkpoint),
                              "dtype": dtype, "pytrain_version": __version__}
        if out is not None:
            _write_results(Path(out), results)
        print(f"pytrain ({description}), gen_kwargs: (None), limit: {limit}, num_fewshot: {num_fewshot}, "
              f"batch_size: {batch_size}")
        print(results_table(results))
        if out is not None:
            print(f"wrote {out}", file=sys.stderr)
        return results


def resolve_step(run, step: int | None) -> int:
    """`step`, or the run's latest checkpoint's (fixed now, so every rank loads the same one and the results
    name it)."""
    from pytrain.train.checkpoint import list_checkpoints

    run.require()
    if step is None:
        step = max(list_checkpoints(run.checkpoints), default=None)
        if step is None:
            raise PytrainError(f"{run.path}: no complete checkpoint yet; train until one is saved "
                               "(checkpoint.every), then evaluate it")
    return step


def load_lm(run, step: int, *, batch_size: int, dtype: str, device: str, shard: bool):
    """(PytrainLM over the run's checkpoint, the checkpoint's path), in this process's share of torchrun."""
    from pytrain.harness.lm import PytrainLM
    from pytrain.tokenizer.files import BOS_CANDIDATES, special_token_id
    from pytrain.train.checkpoint import step_name
    from pytrain.train.distributed import init_distributed
    from pytrain.train.parallelize import DTYPES as TORCH_DTYPES

    d = init_distributed(device)
    sharded = shard and d.world_size > 1
    if sharded:
        model, model_config, checkpoint = run.load_sharded_model(d, step, dtype=dtype)
    else:
        model, model_config = run.load_model(step, device=d.device)
        model.to(TORCH_DTYPES[dtype])
        checkpoint = run.checkpoints / step_name(step)
    print(f"loaded {checkpoint} (step {step}){' sharded over ' + str(d.world_size) + ' ranks' if sharded else ''}",
          file=sys.stderr)
    tokenizer = run.tokenizer()
    bos_id = special_token_id(tokenizer, None, BOS_CANDIDATES, "BOS", run.tokenizer_file)
    lm = PytrainLM(model, tokenizer, eos_id=run.eos_id(tokenizer), bos_id=bos_id,
                   max_length=model_config.context_length, batch_size=batch_size, device=d.device, lockstep=sharded)
    return lm, checkpoint


def check_replaceable(out: Path, overwrite: bool) -> None:
    """--out may replace only a results file of `pytrain eval` (with --overwrite), never another file."""
    if out.is_dir():
        raise PytrainError(f"--out {out}: is a directory; name the results .json file to write")
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise PytrainError(f"--out {out}: already exists; choose another --out or pass --overwrite")
    try:
        ours = not out.is_symlink() and read_json(out)["pytrain"]["command"] == "eval"
    except (OSError, ValueError, KeyError, TypeError):
        ours = False
    if not ours:
        raise PytrainError(f"--out {out}: is not a results file of `pytrain eval`; refusing to replace it even "
                           "with --overwrite (choose another --out)")


def _write_results(out: Path, results: dict) -> None:
    from lm_eval.utils import handle_non_serializable

    from pytrain.fsutil import atomic_write_text

    atomic_write_text(out, json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n")


def _model_arg_int(options: dict, key: str, least: int) -> int | None:
    """model_args' `key` as an int >= least (the harness hands over ints, or strings it could not convert)."""
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value.strip()) < 19:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise PytrainError(f'model_args of model "pytrain": {key} must be an integer >= {least}, '
                           f"got {shown(value)}")
    return value


def _register() -> None:
    """The harness's "pytrain" model: a run directory's checkpoint, from model_args run=DIR[,step=N,...]."""
    import importlib.util

    from pytrain.harness.tasks import go_offline

    go_offline()
    if importlib.util.find_spec("lm_eval") is None:
        return
    from lm_eval.api.registry import register_model

    from pytrain.harness.lm import PytrainLM

    @register_model("pytrain")
    class RunLM(PytrainLM):
        @classmethod
        def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
            from pytrain.train.run_dir import RunDir

            options = {**{k: v for k, v in (additional_config or {}).items() if v is not None}, **arg_dict}
            if "run" not in options:
                raise PytrainError('model_args of model "pytrain" need run=RUN_DIR (and optionally step=N)')
            step, batch_size = _model_arg_int(options, "step", 0), _model_arg_int(options, "batch_size", 1)
            dtype = options.get("dtype", "fp32")
            if dtype not in DTYPES:
                raise PytrainError(f'model_args of model "pytrain": dtype must be one of {", ".join(DTYPES)}, '
                                   f"got {shown(dtype)}")
            run = RunDir(options["run"])
            lm, _ = load_lm(run, resolve_step(run, step), batch_size=batch_size or 8, dtype=dtype,
                            device=options.get("device") or "auto",
                            shard=str(options.get("shard", True)).lower() != "false")
            return lm

        @classmethod
        def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
            from lm_eval.utils import simple_parse_args_string

            return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)


_register()
