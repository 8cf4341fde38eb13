"""Which lm-evaluation-harness tasks to run, read offline, and running them on a PytrainLM.

Offline like the rest of pytrain: HF_DATASETS_OFFLINE and HF_HUB_OFFLINE are set before the harness (or
`datasets`) reads them, so a task's data comes from local files (a task YAML in `--include-path` /
`eval.include_path` whose `dataset_kwargs.data_files` name local JSONL) or from the datasets cache, and
nothing is downloaded. Finding the harness's ~15000 built-in task configs takes seconds, so the index
is built from the include path alone when it holds every requested task, and the full index only when a
built-in task is asked for.

The results are the harness's own (`lm_eval.simple_evaluate`): the schema `lm_eval --output_path`
writes (results -> task -> "acc,none", ...), the table `lm_eval` prints (`lm_eval.utils.make_table`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import random
import sys
from pathlib import Path

from pytrain.errors import PytrainError, did_you_mean

NOT_INSTALLED = ("lm-evaluation-harness is not installed; install the eval extra: pip install 'pytrain[eval]' "
                 "(or pip install lm-eval)")
OFFLINE = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


def go_offline() -> None:
    """Switch the Hugging Face libraries offline: in the environment they read when imported, and in their
    settings when they already were."""
    for name in OFFLINE:
        os.environ[name] = "1"
    if "datasets" in sys.modules:
        sys.modules["datasets"].config.HF_DATASETS_OFFLINE = True
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].constants.HF_HUB_OFFLINE = True


def require_harness() -> None:
    """Go offline, and check lm-eval is installed."""
    go_offline()
    if importlib.util.find_spec("lm_eval") is None:
        raise PytrainError(NOT_INSTALLED)


class TaskSet:
    """Task names checked against the harness's index (the include path's YAML first); `load()` builds
    them with their data. `option`/`path_option` name the setting in messages (--tasks or eval.tasks)."""

    def __init__(self, names: list[str], include_path: str | None, *, option: str = "--tasks",
                 path_option: str = "--include-path"):
        require_harness()
        from lm_eval.tasks import TaskManager

        names = [part.strip() for name in names for part in name.split(",")]  # "a,b" in a list is two tasks
        if not names or not all(names):
            raise PytrainError(f"{option}: name at least one task (comma-separated), e.g. hellaswag,arc_easy")
        if include_path is not None and not Path(include_path).is_dir():
            raise PytrainError(f"{path_option} {include_path}: not a directory; pass a folder of task YAML files")
        self.names = list(dict.fromkeys(names))
        manager = TaskManager(include_path=include_path, include_defaults=False) if include_path else None
        if manager is None or any(name not in manager.all_tasks for name in self.names):
            manager = _full_index(include_path)
        unknown = [name for name in self.names if name not in manager.all_tasks]
        if unknown:
            where = f"in {include_path} or " if include_path else ""
            raise PytrainError(f"{option}: unknown task {unknown[0]!r}{did_you_mean(unknown[0], manager.all_tasks)}: "
                               f"not {where}among the harness's built-in tasks; write its YAML into a folder and "
                               f"pass it with {path_option} (`lm_eval ls tasks` lists the built-in ones)")
        self.manager = manager
        self._checked: list | None = None

    def check(self) -> None:
        """Load the tasks now, so that one whose data is not available stops the command (or the run's start)
        before any work; the next `load()` returns them."""
        with _random_state_kept():
            self._checked = self.load()

    def load(self) -> list:
        """The tasks (Task, or Group for a group name; a tag's tasks), their data read offline."""
        if self._checked is not None:
            loaded, self._checked = self._checked, None
            return loaded
        loaded = []
        for name in self.names:
            try:
                built = self.manager.load(name)
            except Exception as error:  # datasets' and the harness's errors have no common base class
                first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                cause = f"{type(error).__name__}{': ' + first if first else ''}"
                if not isinstance(error, OSError):  # not a missing file or an offline hub: the YAML itself
                    raise PytrainError(
                        f"task {name}: lm-evaluation-harness could not build it from its YAML ({cause}); check its "
                        "fields (a loglikelihood_rolling task needs doc_to_text: \"\" beside doc_to_target)") from None
                raise PytrainError(
                    f"task {name}: its data is not available offline ({cause}); pytrain evaluates without "
                    "downloading: point the task's YAML at local files (dataset_path: json, dataset_kwargs.data_files) "
                    "or fill the datasets cache first (datasets.load_dataset online, HF_DATASETS_OFFLINE=0)") from None
            group = built["groups"].get(name)
            loaded += [group] if group is not None else list(built["tasks"].values())
        return loaded


@functools.lru_cache(maxsize=4)
def _full_index(include_path: str | None):
    """The harness's built-in tasks and the include path's, indexed once per process (it takes seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


@contextlib.contextmanager
def _random_state_kept():
    """The harness seeds Python's, numpy's and torch's global generators: give them back afterwards, so an
    evaluation during training leaves the run exactly as it was."""
    import numpy as np
    import torch

    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def run_tasks(lm, tasks: TaskSet, *, num_fewshot: int | None = None, limit: int | None = None,
              bootstrap_iters: int = 0, description: str = "") -> dict | None:
    """The harness's results of `tasks` on `lm` (rank 0; None on other ranks). `bootstrap_iters` > 0 adds
    standard errors (analytic for means; bootstrapped for perplexities, as `lm_eval` does)."""
    from lm_eval import simple_evaluate

    with _random_state_kept():
        loaded = tasks.load()
        results = simple_evaluate(model=lm, model_args=description, tasks=loaded, task_manager=tasks.manager,
                                  num_fewshot=num_fewshot, limit=limit, bootstrap_iters=bootstrap_iters,
                                  log_samples=False, batch_size=lm.batch_size, device=str(lm.device))
    if results is not None:
        results.pop("samples", None)
    return results


def task_metrics(results: dict) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} with the harness's names ("acc,none", "bits_per_byte,none", ...): the
    metric,filter numbers of results["results"] (aliases, sample counts and "N/A" standard errors left out)."""
    return {task: {key: value for key, value in metrics.items()
                   if "," in key and isinstance(value, (int, float)) and not isinstance(value, bool)}
            for task, metrics in results["results"].items()}


def results_table(results: dict) -> str:
    """The table `lm_eval` prints: the tasks, then the groups when there are any."""
    from lm_eval.utils import make_table

    table = make_table(results)
    return table + ("\n" + make_table(results, "groups") if results.get("groups") else "")
