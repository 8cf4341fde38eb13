"""Structural checks of a tokenizer.json that claims a BPE model, each naming the key at fault.

`tokenizers` refuses most malformed files with a message about serde variants and columns;
`read_tokenizer` asks `bpe_problem` for a message a user can act on instead. The fast encoder
uses the per-part checks on what `tokenizers` accepts but would make ambiguous (duplicate ids).
"""

from __future__ import annotations


def merge_problem(merge, vocab: dict) -> str:
    """Why one entry of model.merges is malformed ("" when it is not)."""
    if isinstance(merge, str):
        parts = merge.split(" ")
        if len(parts) != 2:
            return f"{merge!r} is not two tokens separated by one space"
    elif isinstance(merge, list) and len(merge) == 2 and all(isinstance(p, str) for p in merge):
        parts = merge
    else:
        return f"{merge!r} is neither \"a b\" nor [\"a\", \"b\"]"
    for token in (*parts, parts[0] + parts[1]):
        if token not in vocab:
            return f"{merge!r} names {token!r}, which is not in model.vocab"
    return ""


def duplicate_id_problem(vocab: dict) -> str:
    """Why model.vocab is malformed: a non-integer or negative id, or one id given to two tokens ("" if none)."""
    owner: dict[int, str] = {}
    for token, token_id in vocab.items():
        if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
            return f"{token!r} has the id {token_id!r}, not a non-negative integer"
        if token_id in owner:
            return f"the id {token_id} is given to both {owner[token_id]!r} and {token!r}"
        owner[token_id] = token
    return ""


def _split_problem(pre, key: str) -> str:
    if not isinstance(pre, dict):
        return f"{key}: is not an object"
    if pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers")
        if not isinstance(steps, list):
            return f"{key}.pretokenizers: is not a list"
        return next((p for i, step in enumerate(steps) if (p := _split_problem(step, f"{key}.pretokenizers[{i}]"))), "")
    if pre.get("type") == "Split":
        pattern = pre.get("pattern")
        if not (isinstance(pattern, dict) and len(pattern) == 1 and set(pattern) <= {"Regex", "String"}
                and isinstance(next(iter(pattern.values())), str)):
            return f"{key}.pattern: {pattern!r} is not {{\"Regex\": str}} or {{\"String\": str}}"
    return ""


def bpe_problem(config) -> str:
    """The first structural problem of a tokenizer.json whose model is (or should be) BPE, as "key: what"."""
    if not isinstance(config, dict):
        return "the file is not a JSON object"
    model = config.get("model")
    if model is None:
        return "model: missing (a tokenizer.json needs its model)"
    if not isinstance(model, dict):
        return "model: is not an object"
    if model.get("type", "BPE") != "BPE":
        return ""
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        return "model.vocab: is not a mapping from token to id"
    if problem := duplicate_id_problem(vocab):
        return f"model.vocab: {problem}"
    merges = model.get("merges", [])
    if not isinstance(merges, list):
        return "model.merges: is not a list"
    for rank, merge in enumerate(merges):
        if problem := merge_problem(merge, vocab):
            return f"model.merges[{rank}]: {problem}"
    if config.get("pre_tokenizer") is not None and (problem := _split_problem(config["pre_tokenizer"], "pre_tokenizer")):
        return problem
    added = config.get("added_tokens", [])
    if not isinstance(added, list):
        return "added_tokens: is not a list"
    for i, token in enumerate(added):
        if not isinstance(token, dict) or not isinstance(token.get("content"), str) or not isinstance(token.get("id"), int):
            return f"added_tokens[{i}]: needs a string \"content\" and an integer \"id\""
    return ""
