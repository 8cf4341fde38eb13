"""Structural checks of a tokenizer.json that claims a BPE model, each naming the key at fault.

`tokenizers` refuses most malformed files with a message about serde variants and columns;
`read_tokenizer` asks `bpe_problem` for a message a user can act on instead. The fast encoder
uses the per-part checks on what `tokenizers` accepts but would make ambiguous (duplicate ids).
"""

from __future__ import annotations

import json
import re


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
    ids = list(vocab.values())
    if all(type(i) is int for i in ids) and min(ids, default=0) >= 0 and len(set(ids)) == len(ids):
        return ""  # the common case, checked at C speed; else find the first offender below
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
    if merges and (odd := next((r for r, m in enumerate(merges) if type(m) is not type(merges[0])), None)) is not None:
        return (f"model.merges[{odd}]: written as {'a string' if isinstance(merges[odd], str) else 'a pair'}, unlike "
                "model.merges[0]; tokenizers reads one form throughout (\"a b\" strings or [\"a\", \"b\"] pairs)")
    if config.get("pre_tokenizer") is not None and (problem := _split_problem(config["pre_tokenizer"], "pre_tokenizer")):
        return problem
    added = config.get("added_tokens", [])
    if not isinstance(added, list):
        return "added_tokens: is not a list"
    for i, token in enumerate(added):
        if not isinstance(token, dict) or not isinstance(token.get("content"), str) or not isinstance(token.get("id"), int):
            return f"added_tokens[{i}]: needs a string \"content\" and an integer \"id\""
    return ""


_POSITION = re.compile(r" at line (\d+) column (\d+)$")
_INVALID_VALUE = re.compile(r'invalid (?:type|value): (?:string "(?P<str>[^"]*)"|integer `(?P<int>-?\d+)`'
                            r"|floating point `(?P<float>[^`]*)`|boolean `(?P<bool>true|false)`)")


def located_problem(raw: bytes, message: str) -> str:
    """`tokenizers`' parse error as "key: what", the key found from the error's "line L column C".

    tokenizers (serde) reports where it stopped: for a bad field inside an object it has buffered (most of
    tokenizer.json), the end of that object. So the key is the innermost value holding that position, then,
    when the message quotes the bad value ("invalid type: string "no", ..."), the member of that object that
    holds it. "" when the message has no position or the file does not parse as JSON."""
    found = _POSITION.search(message)
    if not found:
        return ""
    line, column = int(found[1]), int(found[2])
    try:
        text = raw.decode("utf-8")
        lines = raw.split(b"\n")
        start = sum(len(part) + 1 for part in lines[: line - 1])
        offset = len(raw[: start + max(column - 1, 0)].decode("utf-8", errors="ignore"))
        path, value = _path_at(text, offset)
    except (ValueError, IndexError):
        return ""
    what = message[: found.start()]
    if isinstance(value, dict) and (bad := _INVALID_VALUE.search(what)):
        holders = list(_members_quoted_as(value, bad, path))
        if len(holders) == 1:  # the one member (vocab and merges aside) holding the quoted value
            path = holders[0]
    return f"{_key_name(path)}: {what}" if path else ""


def _members_quoted_as(value, bad: re.Match, path: list):
    """Key paths under `value` whose member equals the quoted bad value, not looking inside model.vocab/merges."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, member in items:
        if key in ("vocab", "merges"):
            continue
        if _quoted_as(member, bad):
            yield [*path, key]
        else:
            yield from _members_quoted_as(member, bad, [*path, key])


def _quoted_as(member, bad: re.Match) -> bool:
    if bad["str"] is not None:
        return isinstance(member, str) and member == bad["str"]
    if bad["bool"] is not None:
        return member is (bad["bool"] == "true")
    if bad["int"] is not None:
        return isinstance(member, int) and not isinstance(member, bool) and member == int(bad["int"])
    return isinstance(member, float) and repr(member) == bad["float"]


def _key_name(path: list) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(path))


def _path_at(text: str, offset: int) -> tuple[list, object]:
    """(key path, value) of the innermost JSON value whose text holds `offset`; each level's members are
    skipped with the C decoder, so the cost is a few passes over the file."""
    decoder = json.JSONDecoder()
    path: list = []
    at = _skip_space(text, 0)
    while True:
        value, end = decoder.raw_decode(text, at)
        opener = text[at]
        if opener not in "{[":
            return path, value
        index, position = 0, _skip_space(text, at + 1)
        for _ in range(len(value)):
            if opener == "{":
                key, position = decoder.raw_decode(text, position)
                position = _skip_space(text, _skip_space(text, position) + 1)  # past the ':'
            else:
                key = index
            _, member_end = decoder.raw_decode(text, position)
            if position <= offset < member_end:
                path.append(key)
                at = position
                break
            index += 1
            position = _skip_space(text, _skip_space(text, member_end) + 1)  # past the ','
        else:
            return path, value


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at
