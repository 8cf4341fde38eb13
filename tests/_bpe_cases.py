"""Tokenizers and texts for the fast-encoder exactness tests (tests/test_bpe_*.py).

Every supported family is built here offline with `tokenizers` itself: GPT-2-style byte-level
BPEs as `pytrain tokenizer train` writes them, the GPT-2 regex as a Split, and Llama-3-style
Split + ByteLevel tokenizers with ignore_merges, whole words merges cannot reach, and a
TemplateProcessing post-processor. The texts aim at where encoders diverge.
"""

from __future__ import annotations

import json
import random

from pytrain.data.fast_bpe import GPT2_PATTERN, LLAMA3_PATTERN, byte_level_chars

SPACES = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
TRICKY = ("'s 't 're 've 'm 'll 'd 'S 'T 'RE 'Ve 'LL 'D 'ſ 'ſt 'x '' ' ß K Å ﬆ ǅ ǈ ǋ "
          "\u0301 e\u0301 \u200d \ufeff \ufffd 😀 👍🏽 🇫🇷 𝔘 𝟘 ١٢٣ ４５ ½ Ⅻ ௰ 〇 中文 한국어 עברית العربية हिन्दी ไทย "
          "ǈ ᾈ ﬁ İ ı Σσς")
SPECIALS_IN_TEXT = ["<|endoftext|>", "<pad>", "<|user|>", "<|eot|>", "<|eot_id|>", "<|begin_of_text|>", "<|endof", "<|", "|>"]
TRAINING_TEXT = (
    "The quick brown fox jumps over the lazy dog. It's what we'll do; they've said I'm here, you're there.\n"
    "def encode(self, text):\r\n    return [ids for ids in text.split()]  # 12345 + 678 = 13023\n"
    "Ünïcödé façade naïve café — “quotes” ‘single’ 中文字符 日本語のテキスト 한국어 텍스트 Ελληνικά Русский\n"
    "    indented    spaces\t\ttabs\n\n\nnewlines 3.14159 2,718 1e-9 0x1F -42 ١٢٣٤ ¼ ½\n"
)


def training_documents(seed: int) -> list[str]:
    rng = random.Random(seed)
    words = TRAINING_TEXT.split(" ")
    return [TRAINING_TEXT] * 20 + [" ".join(rng.choices(words, k=rng.randint(5, 80))) for _ in range(400)]


def _train(pre_tokenizer, vocab_size: int, specials: list[str], seed: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(training_documents(seed), trainer=trainer)
    return tokenizer


def split_tokenizer_json(pattern: str, vocab_size: int, ignore_merges: bool, seed: int = 0) -> str:
    """A Split(pattern) + ByteLevel(use_regex=false) BPE, Llama-3 style: specials, a BOS template,
    and (with ignore_merges) extra whole words that the merges never produce."""
    from tokenizers import Regex, pre_tokenizers, processors

    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot|>", "<|eot_id|>"]
    tokenizer = _train(pre, vocab_size, specials, seed)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)])
    config = json.loads(tokenizer.to_str())
    config["model"]["ignore_merges"] = ignore_merges
    if ignore_merges:
        chars = byte_level_chars()
        vocab = config["model"]["vocab"]
        extra = ["Ġquick brown", "quickbrown", "Ġthequick", "ĠTheĠquick", "12345", "ĠĠĠĠ", "abc", "'ll"]
        for word in extra:
            token = "".join(c if c in vocab else chars[ord(" ")] for c in word)
            vocab.setdefault(token, len(vocab) + len(specials))
    return json.dumps(config)


def gpt2_split_tokenizer_json(vocab_size: int, seed: int = 0) -> str:
    """GPT-2's regex written as a Split, with ByteLevel only mapping bytes."""
    return split_tokenizer_json(GPT2_PATTERN, vocab_size, ignore_merges=False, seed=seed)


def llama3_tokenizer_json(vocab_size: int, seed: int = 0) -> str:
    return split_tokenizer_json(LLAMA3_PATTERN, vocab_size, ignore_merges=True, seed=seed)


def random_code_point(rng: random.Random) -> str:
    """Any scalar value, from every plane, with the BMP and ASCII weighted up."""
    plane = rng.choice((0, 0, 0, 1, 2, 3, 14, 15, 16))
    while True:
        cp = rng.randrange(0x80) if rng.random() < 0.3 else plane * 0x10000 + rng.randrange(0x10000)
        if not 0xD800 <= cp <= 0xDFFF:
            return chr(cp)


def generated_texts(seed: int, count: int = 600) -> list[str]:
    """Random mixtures of the hard cases, plus fixed edge cases."""
    rng = random.Random(seed)
    pieces = [
        lambda: " " * rng.randint(1, 50), lambda: "\r\n" * rng.randint(1, 5), lambda: "\n" * rng.randint(1, 5),
        lambda: "".join(rng.choices(SPACES, k=rng.randint(1, 8))), lambda: "9" * rng.randint(1, 40),
        lambda: "".join(rng.choices("0123456789١٢٣４", k=rng.randint(1, 12))),
        lambda: "".join(rng.choices("!?.,;:-_()[]{}<>/\\@#$%^&*~`|+=\"'", k=rng.randint(1, 30))),
        lambda: rng.choice(TRICKY.split(" ")), lambda: rng.choice(TRAINING_TEXT.split(" ")),
        lambda: rng.choice(SPECIALS_IN_TEXT), lambda: random_code_point(rng) * rng.randint(1, 3),
        lambda: "".join(random_code_point(rng) for _ in range(rng.randint(1, 6))),
        lambda: bytes(rng.randrange(256) for _ in range(rng.randint(1, 12))).decode("utf-8", "replace"),
        lambda: "'" + rng.choice(["s", "S", "ſ", "re", "RE", "rE", "ll", "Ll", "ve", "d", "m", "t", "x"]),
    ]
    texts = ["", " ", "  ", "\n", "\r\n", "\t \n ", " " * 1000, "9" * 1000, "!" * 1000, "a" * 5000,
             "abcdefghij" * 800, "x" + "\u00e9" * 3000, "<|endoftext|>", "<|endoftext|><|endoftext|>",
             "a<|endoftext|>b <|endoftext|> c", "<|eot_id|><|eot|>x", " <|user|> ", "\ufffd" * 7]
    for _ in range(count):
        texts.append("".join(rng.choice(pieces)() for _ in range(rng.randint(1, 25))))
    return texts


# ----------------------------------------------------------------------------- published families
# Each family's tokenizer.json as it is published: every key and setting below is the published file's
# (normalizer, pre-tokenizer, post-processor, decoder, model options, added tokens and their flags), as
# transformers' convert_slow_tokenizer.py writes them (GPT2Converter: GPT-2; Qwen2Converter: Qwen2/2.5/3)
# or as the files themselves read (Llama-3.x: meta-llama's tokenizer.json; GPT-NeoX-20B/Pythia:
# EleutherAI's, NFC + 23 space-run added tokens with normalized=true). Only vocab and merges differ:
# trained here with `tokenizers` on TRAINING_TEXT (the published ones are 50k-150k tokens from a hub).
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
LLAMA3_SPECIALS = (["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
                   + [f"<|reserved_special_token_{i}|>" for i in range(3, 248)])
QWEN_SPECIALS = [  # (content, special) in id order: Qwen2.5's list, Qwen3 adds the last four
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False)]
FAMILY_TEXTS = ["<|im_start|>user\nhi<|im_end|>", "<think>\n\n</think>", "a\u0301<|im_end|>\u0338", "x" + " " * 30 + "y",
                "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>", "if x:\n        return  1",
                "<|endoftext|>  <|padding|>   \t", "ﬁ \u212b \u1e9b\u0323 \uac00\u11a8 \u1100\u1161 Å", "\u0958\u0915\u093c"]


def _byte_level(add_prefix_space=False, trim_offsets=True, use_regex=True) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": trim_offsets,
            "use_regex": use_regex}


def _added(token_id: int, content: str, special: bool = True, normalized: bool = False) -> dict:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": normalized, "special": special}


def _trained_model(pre_tokenizer, vocab_size: int, seed: int, pairs: bool = False) -> tuple[dict, list]:
    """(vocab, merges) trained on TRAINING_TEXT with the family's own pre-tokenizer, no added tokens."""
    config = json.loads(_train(pre_tokenizer, vocab_size, [], seed).to_str())
    merges = config["model"]["merges"]
    merges = [m.split(" ") if isinstance(m, str) else m for m in merges] if pairs else [
        m if isinstance(m, str) else " ".join(m) for m in merges]
    return config["model"]["vocab"], merges


def _split_sequence(pattern: str, trim_offsets: bool) -> dict:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        _byte_level(trim_offsets=trim_offsets, use_regex=False)]}


def published_family_json(family: str, vocab_size: int = 1500, seed: int = 0) -> str:
    """tokenizer.json of `family` ("gpt2", "llama3", "qwen2", "qwen3", "neox") in its published layout."""
    from tokenizers import Regex, pre_tokenizers

    def model(vocab, merges, **options):
        return {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, **options,
                "vocab": vocab, "merges": merges}

    if family in ("gpt2", "neox"):
        vocab, merges = _trained_model(pre_tokenizers.ByteLevel(add_prefix_space=False), vocab_size, seed)
        pre = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}  # no use_regex key (default)
        if family == "gpt2":  # <|endoftext|> is in the vocabulary too, last
            vocab["<|endoftext|>"] = len(vocab)
            return json.dumps({
                "version": "1.0", "truncation": None, "padding": None,
                "added_tokens": [_added(len(vocab) - 1, "<|endoftext|>", normalized=True)], "normalizer": None,
                "pre_tokenizer": pre, "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False},
                "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True},
                "model": {k: v for k, v in model(vocab, merges).items() if k != "byte_fallback"}})
        shifted = {token: i + 2 for token, i in vocab.items()}  # ids 0 and 1 are the specials
        spaces = [_added(len(shifted) + 2 + i, " " * (24 - i), special=False, normalized=True) for i in range(23)]
        return json.dumps({
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [_added(0, "<|endoftext|>"), _added(1, "<|padding|>")] + spaces,
            "normalizer": {"type": "NFC"}, "pre_tokenizer": pre,
            "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True},
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True},
            "model": {k: v for k, v in model({"<|endoftext|>": 0, "<|padding|>": 1, **shifted}, merges,
                                             continuing_subword_prefix=None, end_of_word_suffix=None).items()
                      if k != "byte_fallback"}})
    if family == "llama3":
        split = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_PATTERN), "isolated"),
                                         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        vocab, merges = _trained_model(split, vocab_size, seed)
        first = len(vocab)
        template = {"type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                             {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [first], "tokens": ["<|begin_of_text|>"]}}}
        return json.dumps({
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [_added(first + i, content) for i, content in enumerate(LLAMA3_SPECIALS)],
            "normalizer": None, "pre_tokenizer": _split_sequence(LLAMA3_PATTERN, trim_offsets=True),
            "post_processor": {"type": "Sequence", "processors": [_byte_level(add_prefix_space=True, trim_offsets=False), template]},
            "decoder": _byte_level(add_prefix_space=True),
            "model": model(vocab, merges, continuing_subword_prefix=None, end_of_word_suffix=None, ignore_merges=True)})
    if family in ("qwen2", "qwen3"):
        split = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_PATTERN), "isolated"),
                                         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        vocab, merges = _trained_model(split, vocab_size, seed, pairs=family == "qwen3")
        specials = QWEN_SPECIALS if family == "qwen3" else QWEN_SPECIALS[:-4]
        no_regex = _byte_level(trim_offsets=False, use_regex=False)
        return json.dumps({
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [_added(len(vocab) + i, content, special) for i, (content, special) in enumerate(specials)],
            "normalizer": {"type": "NFC"}, "pre_tokenizer": _split_sequence(QWEN2_PATTERN, trim_offsets=False),
            "post_processor": no_regex, "decoder": no_regex, "model": model(vocab, merges, ignore_merges=False)})
    raise ValueError(family)
