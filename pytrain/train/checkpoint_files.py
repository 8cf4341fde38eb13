"""What a checkpoint folder's name and its train_state.json may hold: one parser for each, so every reader
(resume, generate, export, verify) agrees on what is a checkpoint and refuses the same malformed state.

A checkpoint folder is `step_N` with N written as pytrain writes it: ASCII digits, no sign, no leading zero,
below 2**63 (so `step_-1`, `step_007`, `step_1e3`, `step_١٢` and `step_99999999999999999999` are not
checkpoints, and two names can never mean one step). A train_state.json must hold every key a resume uses,
of its type and in its range, and the step of the folder it is in.
"""

from __future__ import annotations

import math
import re

from pytrain.errors import PytrainError, shown

MAX_COUNT = 2**63 - 1          # steps, tokens, samples consumed: int64 wherever they end up
MAX_WORLD_SIZE = 1 << 20
MAX_BATCH = 2**31 - 1          # batch_size and seq_len
_STEP_NAME = re.compile(r"step_(0|[1-9][0-9]{0,18})")


def parse_step_name(name: str) -> int | None:
    """N for a folder named `step_N` as pytrain names it, else None."""
    match = _STEP_NAME.fullmatch(name)
    if match is None:
        return None
    step = int(match.group(1))
    return step if step <= MAX_COUNT else None


def _is_int(value, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


_RANGES = {"step": (0, MAX_COUNT), "tokens": (0, MAX_COUNT), "world_size": (1, MAX_WORLD_SIZE),
           "batch_size": (1, MAX_BATCH), "seq_len": (1, MAX_BATCH)}


def train_state_problem(state: dict, folder_step: int | None) -> str | None:
    """What is wrong with a parsed train_state.json (a phrase naming the key), or None. `folder_step`: the step
    of the folder holding it (None when its name is not step_N: a folder given by path)."""
    for key, (low, high) in _RANGES.items():
        if not _is_int(state.get(key), low, high):
            return f"{key} must be an integer in [{low}, {high}], got {shown(state.get(key))}"
    if folder_step is not None and state["step"] != folder_step:
        return f"step is {state['step']}, but the folder is step_{folder_step}"
    if not isinstance(state.get("model_config"), dict):
        return f"model_config must be a mapping, got {shown(state.get('model_config'))}"
    return _data_problem(state.get("data")) or _model_problem(state["model_config"])


def _data_problem(data) -> str | None:
    """The data position (pytrain.sampling.mixture's state_dict): the counter, and the walks that only save time."""
    if not isinstance(data, dict):
        return f"data must be a mapping, got {shown(data)}"
    if "consumed" in data and not _is_int(data["consumed"], 0, MAX_COUNT):
        return f"data.consumed must be an integer in [0, {MAX_COUNT}], got {shown(data['consumed'])}"
    walks = data.get("walks", {})
    if not isinstance(walks, dict) or not isinstance(walks.get("at", {}), dict):
        return f"data.walks must be a mapping with a mapping 'at', got {shown(walks)}"
    for name, position in walks.get("at", {}).items():
        if not (isinstance(position, list) and len(position) == 3 and all(_is_int(p, 0, MAX_COUNT) for p in position)):
            return f"data.walks.at[{shown(name)}] must be three integers >= 0, got {shown(position)}"
    return None


def _model_problem(model_config: dict) -> str | None:
    """Each ModelConfig field present must have its type (bool, int, float, str or null) and a finite value."""
    import dataclasses
    import typing

    from pytrain.model.config import ModelConfig

    hints = typing.get_type_hints(ModelConfig)
    for field in dataclasses.fields(ModelConfig):
        if field.name not in model_config or model_config[field.name] is None:
            continue
        value, allowed = model_config[field.name], typing.get_args(hints[field.name]) or (hints[field.name],)
        if type(value) is bool:
            ok = bool in allowed
        elif type(value) is int:
            ok = int in allowed or float in allowed
        elif type(value) is float:
            ok = float in allowed and math.isfinite(value)
        else:
            ok = type(value) in allowed
        if not ok:
            names = "/".join(t.__name__ for t in allowed if t is not type(None))
            return f"model_config.{field.name} must be {names}, got {shown(value)}"
    names = {field.name for field in dataclasses.fields(ModelConfig)}
    try:  # its own checks (positive sizes, divisible heads, a known family, ...)
        ModelConfig(**{k: v for k, v in model_config.items() if k in names and v is not None})
    except PytrainError as error:
        return f"model_config: {error}"
    return None


def check_train_state(state, where: str, folder_step: int | None) -> dict:
    """`state` when it is a well-formed train state, else a one-line PytrainError naming `where` and the key."""
    if not isinstance(state, dict):
        raise PytrainError(f"{where}: not a JSON object")
    problem = train_state_problem(state, folder_step)
    if problem:
        raise PytrainError(f"{where}: {problem}")
    return state
