"""What every fast encoder (fast_bpe.py: byte-level, fast_sentencepiece.py: byte_fallback) requires of a
tokenizer.json beyond its model and pre-tokenization: the checks they share, each raising Unsupported(why)
when the file means something the native encoders do not implement, or PytrainError naming the key when it
claims a BPE model but is malformed.
"""

from __future__ import annotations

import numpy as np

from pytrain.errors import PytrainError

NEUTRAL_POST_PROCESSORS = ("ByteLevel", "TemplateProcessing")
META = "\u2581"  # SentencePiece's visible space
BYTE_TOKENS = [f"<0x{byte:02X}>" for byte in range(256)]  # byte_fallback's tokens, as tokenizers spells them


class Unsupported(Exception):
    """The tokenizer means something the native encoder does not implement (message: why)."""


def require(condition: bool, reason: str) -> None:
    if not condition:
        raise Unsupported(reason)


def steps(component: dict | None, kind_key: str) -> list[dict]:
    """A component as its flat list of steps: a Sequence of Sequences is the steps in order, null is none."""
    if component is None:
        return []
    require(isinstance(component, dict), f"{kind_key} is not an object")
    if component.get("type") != "Sequence":
        return [component]
    inner = component.get(kind_key)
    require(isinstance(inner, list), f"Sequence without a {kind_key!r} list")
    return [step for part in inner for step in steps(part, kind_key)]


def check_neutral_extras(config: dict) -> None:
    """No truncation, no padding, and a post-processor that adds nothing without special tokens (pack
    encodes with add_special_tokens=False)."""
    require(config.get("truncation") is None, "truncation is set")
    require(config.get("padding") is None, "padding is set")
    for step in steps(config.get("post_processor"), "processors"):
        require(step.get("type") in NEUTRAL_POST_PROCESSORS, f"post-processor {step.get('type')!r}")


def check_model_options(model: dict) -> None:
    """A BPE model without dropout or subword prefix/suffix (byte_fallback is the caller's to decide)."""
    require(model.get("type") == "BPE", f"{model.get('type')} model")
    require(model.get("dropout") in (None, 0, 0.0), "BPE dropout")  # 0.0 never drops a merge
    require(not model.get("continuing_subword_prefix"), "continuing_subword_prefix")
    require(not model.get("end_of_word_suffix"), "end_of_word_suffix")


def vocab_and_merges(model: dict) -> tuple[dict, np.ndarray]:
    """model.vocab, and model.merges as (left id, right id, merged id) rows in rank order ("a b" strings
    or [a, b] pairs); PytrainError naming the key for a malformed vocabulary or merge."""
    from pytrain.tokenizer.checks import duplicate_id_problem, merge_problem

    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise PytrainError("model.vocab: is not a mapping from token to id")
    if problem := duplicate_id_problem(vocab):
        raise PytrainError(f"model.vocab: {problem}")
    merges = model.get("merges") or []
    if not isinstance(merges, list):
        raise PytrainError("model.merges: is not a list")
    try:  # one comprehension for the whole list (this runs on every pack); on a failure, find the bad merge
        pairs = [merge.split(" ") if isinstance(merge, str) else merge for merge in merges]
        ids = [vocab[token] for a, b in pairs for token in (a, b, a + b)]
    except (ValueError, TypeError, KeyError):
        rank = next((rank for rank, merge in enumerate(merges) if merge_problem(merge, vocab)), None)
        where = f"model.merges[{rank}]: {merge_problem(merges[rank], vocab)}" if rank is not None else "model.merges: malformed"
        raise PytrainError(where) from None
    return vocab, np.array(ids, dtype=np.uint32).reshape(-1, 3)


OVERLAP_CHECK_BUDGET = 1 << 20  # substrings hashed to check two kinds of added tokens for overlaps


def _overlapping_pair(left: list[str], right: list[str]) -> tuple[str, str] | None:
    """A token of `left` and one of `right` whose occurrences can share a character in some text (one inside
    the other, or a proper suffix of one being a proper prefix of the other), or None.

    Every substring of every token is hashed once, so the cost is the sum of the tokens' squared lengths (at most
    OVERLAP_CHECK_BUDGET, else Unsupported), not the product of the two counts."""
    require(sum(len(t) ** 2 for t in left + right) <= OVERLAP_CHECK_BUDGET,
            f"too many long added tokens of both kinds ({len(left)} normalized=false, {len(right)} normalized=true) "
            "to check for overlaps")
    for mine, theirs in ((left, right), (right, left)):
        inside = {t[i:j]: t for t in theirs for i in range(len(t)) for j in range(i + 1, len(t) + 1)}
        starts = {t[:k]: t for t in theirs for k in range(1, len(t))}
        for token in mine:
            if token in inside:
                return (token, inside[token]) if mine is left else (inside[token], token)
            for k in range(1, len(token)):
                if token[k:] in starts:
                    return (token, starts[token[k:]]) if mine is left else (starts[token[k:]], token)
    return None


def added_tokens(config: dict, reference, normalizer: str) -> list[tuple[bytes, int]]:
    """(UTF-8 content, id) of every added token, if splitting them out in one leftmost-longest pass over the
    raw text is what `tokenizers` does. It extracts normalized=false tokens from the raw text first, then
    normalized=true ones from the normalized rest. One pass is the same when the normalizer leaves the text
    as it is — `normalizer` "none", or "nfc" on an NFC-inert text (FastBpe sends the others to `tokenizers`)
    — and no occurrence of a token of one kind can overlap one of the other kind (then neither pass's
    matches can pre-empt the other's). With any other normalizer ("other") normalized=true is unsupported.

    `reference` is the loaded tokenizers.Tokenizer: an added token's id is the one `tokenizers` gave it when
    loading (the model's id for a content already in the vocabulary), not the JSON's "id". PytrainError for
    two entries with one content (which id the text gets would be ambiguous)."""
    added, first_index, kinds = [], {}, {False: [], True: []}
    for i, token in enumerate(config.get("added_tokens") or []):
        content = token.get("content", "")
        for flag in ("lstrip", "rstrip", "single_word"):
            require(not token.get(flag, False), f"added token {content!r} has {flag}=true")
        require(bool(content), "an empty added token")
        if content in first_index:
            raise PytrainError(f"added_tokens[{i}]: the content {content!r} is also added_tokens[{first_index[content]}]'s;"
                               " one content can have one id")
        first_index[content] = i
        normalized = bool(token.get("normalized", False))
        if normalized:
            require(normalizer != "other", f"added token {content!r} has normalized=true under a normalizer")
            if normalizer == "nfc":
                require(reference.normalizer.normalize_str(content) == content,
                        f"added token {content!r} has normalized=true and NFC changes it")
        kinds[normalized].append(content)
        token_id = reference.token_to_id(content)
        require(token_id is not None, f"added token {content!r} has no id")
        added.append((content.encode("utf-8"), token_id))
    if kinds[False] and kinds[True] and (pair := _overlapping_pair(kinds[False], kinds[True])):
        raise Unsupported(f"added tokens {pair[0]!r} (normalized=false) and {pair[1]!r} (normalized=true) can overlap")
    return added
