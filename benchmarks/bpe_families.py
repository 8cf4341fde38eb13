"""Byte-level BPE tokenizer.json files in the layouts the model families publish, built offline.

Every key and setting written here is the published file's: normalizer, pre-tokenizer, post-processor,
decoder, model options, added tokens and their flags. The sources: transformers'
convert_slow_tokenizer.py (GPT2Converter for GPT-2, Qwen2Converter for Qwen2/2.5; Qwen3 adds its
tokens to that), and the files
themselves as they read (meta-llama's Llama-3.x tokenizer.json: Split with the Llama-3 regex +
ByteLevel(use_regex=false), ignore_merges, 256 special tokens; EleutherAI's GPT-NeoX-20B/Pythia
tokenizer.json: NFC, ByteLevel, <|endoftext|>/<|padding|> and 23 space-run added tokens with
normalized=true). Only the vocabulary and merges differ: they are trained here with `tokenizers`
on the caller's documents (the published ones are 50k-150k tokens that live on a model hub).

Used by tests/_bpe_cases.py (exactness tests) and bench_pack.py --families.
"""

from __future__ import annotations

import json

from pytrain.tokenizer.fast_bpe import LLAMA3_PATTERN

QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")  # Qwen2Converter's regex: one digit at a time
FAMILIES = ("gpt2", "llama3", "qwen2", "qwen3", "neox")
LLAMA3_SPECIALS = (["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
                   + [f"<|reserved_special_token_{i}|>" for i in range(3, 248)])
QWEN_SPECIALS = [  # (content, special) in id order: Qwen2.5's list; Qwen3 adds the last four
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False)]


def _byte_level(add_prefix_space=False, trim_offsets=True, use_regex=True) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": trim_offsets,
            "use_regex": use_regex}


def _added(token_id: int, content: str, special: bool = True, normalized: bool = False) -> dict:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": normalized, "special": special}


def _split_sequence(pattern: str, trim_offsets: bool) -> dict:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        _byte_level(trim_offsets=trim_offsets, use_regex=False)]}


def _model(vocab: dict, merges: list, **options) -> dict:
    return {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, **options,
            "vocab": vocab, "merges": merges}


def train(family: str, documents: list[str], vocab_size: int) -> tuple[dict, list]:
    """(vocab, merges as "a b" strings) trained with the family's own pre-tokenizer, no added tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    if family in ("gpt2", "neox"):
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        pattern = LLAMA3_PATTERN if family == "llama3" else QWEN2_PATTERN
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), "isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(documents, trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    return model["vocab"], [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]


def layout(family: str, vocab: dict, merges: list) -> dict:
    """The published tokenizer.json of `family` around a (vocab, merges) of its pre-tokenizer."""
    vocab = dict(vocab)
    if family == "gpt2":  # <|endoftext|> is the vocabulary's last token too; no use_regex key (default true)
        vocab["<|endoftext|>"] = len(vocab)
        return {"version": "1.0", "truncation": None, "padding": None,
                "added_tokens": [_added(len(vocab) - 1, "<|endoftext|>", normalized=True)], "normalizer": None,
                "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True},
                "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False},
                "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True},
                "model": {k: v for k, v in _model(vocab, merges).items() if k != "byte_fallback"}}
    if family == "neox":  # ids 0 and 1 are the specials, the space runs (24 down to 2) come after the vocabulary
        vocab = {"<|endoftext|>": 0, "<|padding|>": 1, **{token: i + 2 for token, i in vocab.items()}}
        spaces = [_added(len(vocab) + i, " " * (24 - i), special=False, normalized=True) for i in range(23)]
        neox_byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}
        model = _model(vocab, merges, continuing_subword_prefix=None, end_of_word_suffix=None)
        return {"version": "1.0", "truncation": None, "padding": None,
                "added_tokens": [_added(0, "<|endoftext|>"), _added(1, "<|padding|>")] + spaces,
                "normalizer": {"type": "NFC"}, "pre_tokenizer": neox_byte_level, "post_processor": neox_byte_level,
                "decoder": neox_byte_level, "model": {k: v for k, v in model.items() if k != "byte_fallback"}}
    if family == "llama3":  # the specials follow the vocabulary (128000 on)
        first = len(vocab)
        bos = [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}]
        template = {"type": "TemplateProcessing", "single": bos + [{"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": bos + [{"Sequence": {"id": "A", "type_id": 0}},
                                   {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                                   {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [first],
                                                             "tokens": ["<|begin_of_text|>"]}}}
        return {"version": "1.0", "truncation": None, "padding": None,
                "added_tokens": [_added(first + i, content) for i, content in enumerate(LLAMA3_SPECIALS)],
                "normalizer": None, "pre_tokenizer": _split_sequence(LLAMA3_PATTERN, trim_offsets=True),
                "post_processor": {"type": "Sequence", "processors": [
                    _byte_level(add_prefix_space=True, trim_offsets=False), template]},
                "decoder": _byte_level(add_prefix_space=True),
                "model": _model(vocab, merges, continuing_subword_prefix=None, end_of_word_suffix=None,
                                ignore_merges=True)}
    if family in ("qwen2", "qwen3"):
        # qwen2: Qwen2Converter's layout exactly. qwen3: Qwen3's added tokens, merges as [a, b] pairs, and every
        # ByteLevel option false (a variant that changes offsets only, never ids).
        specials = QWEN_SPECIALS if family == "qwen3" else QWEN_SPECIALS[:-4]
        qwen3 = family == "qwen3"
        post = _byte_level(trim_offsets=False, use_regex=False) if qwen3 else _byte_level(True, trim_offsets=False)
        decoder = _byte_level(trim_offsets=False, use_regex=False) if qwen3 else _byte_level(True)
        return {"version": "1.0", "truncation": None, "padding": None,
                "added_tokens": [_added(len(vocab) + i, content, special) for i, (content, special) in enumerate(specials)],
                "normalizer": {"type": "NFC"}, "pre_tokenizer": _split_sequence(QWEN2_PATTERN, trim_offsets=not qwen3),
                "post_processor": post, "decoder": decoder,
                "model": _model(vocab, [m.split(" ") for m in merges] if qwen3 else merges, ignore_merges=False)}
    raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")


def family_json(family: str, documents: list[str], vocab_size: int) -> str:
    """`family`'s published tokenizer.json with vocab and merges trained on `documents`."""
    return json.dumps(layout(family, *train(family, documents, vocab_size)))
