"""The shape of the tokenizer `pytrain tokenizer train` writes: a reference tokenizer.json whose pipeline is
kept while its merges are trained anew.

`--style gpt2` and `--style llama2` are built-in references (the published GPT-2 and Llama-2 pipelines);
`--like REF.json` takes any BPE tokenizer.json. From the reference come the BPE options (byte_fallback,
unk_token, ...), the normalizer, pre-tokenizer, decoder and post-processor (copied verbatim, the
post-processor's token ids renumbered) and the added tokens (same contents and flags). Ids: the special
tokens, with the unk and <0xNN> byte tokens a byte_fallback model needs, come first in the reference's
order (so Llama-2's and Mistral v0.1's ids 0-258 stay the same), then the learned vocabulary, then the
non-special added tokens. Truncation and padding are not copied.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

from pytrain.tokenizer.bpe_support import BYTE_TOKENS, META
from pytrain.errors import PytrainError

MODEL_OPTIONS = ("unk_token", "fuse_unk", "byte_fallback", "continuing_subword_prefix", "end_of_word_suffix",
                 "ignore_merges")
STYLE_EOS = {"gpt2": "<|endoftext|>", "llama2": "</s>"}


@dataclass
class Recipe:
    """A reference tokenizer.json (parsed) and where it came from, for messages."""

    config: dict
    source: str


def style_reference(style: str, eos_token: str, extra_specials) -> Recipe:
    """The built-in reference of `--style`: GPT-2's byte-level pipeline, or Llama-2's SentencePiece-style one
    (transformers' LlamaConverter, legacy: <unk> <s> </s> at ids 0-2, the 256 <0xNN> byte tokens next)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    if style == "gpt2":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        specials = [eos_token]
    elif style == "llama2":
        layout = ["<unk>", "<s>", eos_token, *BYTE_TOKENS]
        tokenizer = Tokenizer(models.BPE({token: i for i, token in enumerate(layout)}, [], unk_token="<unk>",
                                         fuse_unk=True, byte_fallback=True))
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend(META), normalizers.Replace(" ", META)])
        tokenizer.decoder = decoders.Sequence([decoders.Replace(META, " "), decoders.ByteFallback(), decoders.Fuse(),
                                               decoders.Strip(" ", 1, 0)])
        specials = ["<unk>", "<s>", eos_token]
    else:
        raise PytrainError(f"--style {style!r}: choose gpt2 or llama2")
    tokenizer.add_special_tokens(specials + [t for t in extra_specials if t not in specials])
    if style == "llama2":
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))])
    return Recipe(json.loads(tokenizer.to_str()), f"--style {style}")


def like_reference(raw: bytes, path) -> Recipe:
    """The reference of --like (its bytes, already loaded by tokenizers), with one-line errors for a file
    that is not a BPE tokenizer."""
    config = json.loads(raw)
    kind = (config.get("model") or {}).get("type")
    if kind != "BPE":
        raise PytrainError(f"{path}: --like needs a BPE tokenizer.json; its model is {kind!r} "
                           "(use --style gpt2 or llama2 instead)")
    return Recipe(config, f"like {path}")


def _added_token(entry: dict):
    from tokenizers import AddedToken

    return AddedToken(entry["content"], single_word=entry.get("single_word", False),
                      lstrip=entry.get("lstrip", False), rstrip=entry.get("rstrip", False),
                      normalized=entry.get("normalized", not entry.get("special", False)),
                      special=entry.get("special", False))


def _uses_byte_level(step: dict | None) -> bool:
    if not step:
        return False
    if step.get("type") == "Sequence":
        return any(_uses_byte_level(s) for s in step.get("pretokenizers") or [])
    return step.get("type") == "ByteLevel"


def _renumber(post: dict | None, token_id, source: str) -> dict | None:
    """The reference's post-processor with its special tokens' ids as the new tokenizer numbers them."""
    if post is None:
        return None
    post = copy.deepcopy(post)

    def new_id(token: str) -> int:
        found = token_id(token)
        if found is None:
            raise PytrainError(f"{source}: post_processor names token {token!r}, which is not among its added tokens")
        return found

    kind = post.get("type")
    if kind == "Sequence":
        post["processors"] = [_renumber(step, token_id, source) for step in post.get("processors") or []]
    elif kind == "TemplateProcessing":
        for spec in (post.get("special_tokens") or {}).values():
            spec["ids"] = [new_id(token) for token in spec["tokens"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            post[key] = [post[key][0], new_id(post[key][0])]
    return post


@dataclass
class Training:
    """What the trainer gets for a recipe, and what `finished` needs back."""

    tokenizer: object  # an untrained tokenizers.Tokenizer with the pipeline it trains under
    specials: list  # AddedTokens the trainer puts first (ids 0, 1, ...)
    alphabet: list[str]  # the trainer's initial_alphabet
    others: list  # non-special AddedTokens, added after training
    model_only: set[str] = field(default_factory=set)  # in the vocabulary, but no added token in the reference


def prepare(recipe: Recipe) -> Training:
    from tokenizers import Tokenizer, models, pre_tokenizers

    config = recipe.config
    model = config["model"]
    options = {key: model[key] for key in MODEL_OPTIONS if model.get(key) is not None}
    tokenizer = Tokenizer(models.BPE(**options))
    if model.get("byte_fallback") and (config.get("pre_tokenizer") or {}).get("type") in (None, "Metaspace"):
        # SentencePiece-style: train over words, as SentencePiece does (split_by_whitespace), not whole texts;
        # the file written keeps the reference's own pipeline.
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=META, prepend_scheme="always", split=True)
    else:
        reference = Tokenizer.from_str(json.dumps({**config, "model": {**model, "vocab": {}, "merges": []}}))
        tokenizer.normalizer = reference.normalizer
        tokenizer.pre_tokenizer = reference.pre_tokenizer
    entries = sorted(config.get("added_tokens") or [], key=lambda entry: entry.get("id", 0))
    contents = {entry["content"] for entry in entries}
    needed = ([options["unk_token"]] if "unk_token" in options else []) + (BYTE_TOKENS if model.get("byte_fallback") else [])
    model_only = {token for token in needed if token not in contents}
    # Special and model-only tokens in the reference's id order, so a layout like Llama-2's (<unk> <s> </s>,
    # then <0x00>..<0xFF>) keeps its ids; the trainer numbers them 0, 1, ...
    ranked = [(entry.get("id", 0), _added_token(entry)) for entry in entries if entry.get("special")]
    unplaced = max([*model["vocab"].values(), *(rank for rank, _ in ranked), -1]) + 1
    ranked += [(model["vocab"].get(token, unplaced), token) for token in dict.fromkeys(needed) if token in model_only]
    specials = [token for _, token in sorted(ranked, key=lambda pair: pair[0])]
    others = [_added_token(entry) for entry in entries if not entry.get("special")]
    alphabet = pre_tokenizers.ByteLevel.alphabet() if _uses_byte_level(config.get("pre_tokenizer")) else []
    return Training(tokenizer, specials, alphabet, others, model_only)


def finished(recipe: Recipe, training: Training) -> str:
    """The tokenizer.json to write: the trained vocabulary and merges in the reference's pipeline."""
    trained = training.tokenizer
    trained.add_tokens(training.others)
    out = json.loads(trained.to_str())
    out["added_tokens"] = [entry for entry in out["added_tokens"] if entry["content"] not in training.model_only]
    for key in ("normalizer", "pre_tokenizer", "decoder"):
        out[key] = copy.deepcopy(recipe.config.get(key))
    out["post_processor"] = _renumber(recipe.config.get("post_processor"), trained.token_to_id, recipe.source)
    return json.dumps(out, indent=2, ensure_ascii=False)
