"""Tokenizers and texts for the fast-encoder exactness tests (tests/test_bpe_*.py).

Every supported family is built here offline with `tokenizers` itself: GPT-2-style byte-level
BPEs as `pytrain tokenizer train` writes them, the GPT-2 regex as a Split, and Llama-3-style
Split + ByteLevel tokenizers with ignore_merges, whole words merges cannot reach, and a
TemplateProcessing post-processor. The texts aim at where encoders diverge.
"""

from __future__ import annotations

import json
import random

from pytrain.tokenizer.fast_bpe import GPT2_PATTERN, LLAMA3_PATTERN, byte_level_chars

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


def benchmark_module(name: str):
    """benchmarks/NAME.py, loaded by path (the benchmarks use the same code)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _families():
    """benchmarks/bpe_families.py: the published layouts."""
    return benchmark_module("bpe_families")


FAMILY_TEXTS = ["<|im_start|>user\nhi<|im_end|>", "<think>\n\n</think>", "a\u0301<|im_end|>\u0338", "x" + " " * 30 + "y",
                "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>", "if x:\n        return  1",
                "<|endoftext|>  <|padding|>   \t", "ﬁ \u212b \u1e9b\u0323 \uac00\u11a8 \u1100\u1161 Å", "\u0958\u0915\u093c"]


def published_family_json(family: str, vocab_size: int = 1500, seed: int = 0) -> str:
    """`family`'s tokenizer.json in its published layout, vocab and merges trained on training_documents."""
    return _families().family_json(family, training_documents(seed), vocab_size)


def fast_pair(config: str, threads: int = 2):
    """(tokenizers.Tokenizer, the fast encoder) for a tokenizer.json text the fast encoder must support."""
    from tokenizers import Tokenizer

    from pytrain.tokenizer.fast_bpe import fast_encoder

    reference = Tokenizer.from_str(config)
    fast, why_not = fast_encoder(config.encode(), reference, threads)
    assert fast is not None, why_not
    return reference, fast


def assert_same_ids(reference, fast, texts: list[str]) -> None:
    """The fast encoder's ids equal `tokenizers`' for every text."""
    expected = [e.ids for e in reference.encode_batch_fast(texts, add_special_tokens=False)]
    got = fast.encode_lists(texts)
    for text, want, have in zip(texts, expected, got):
        assert have == want, f"{text[:120]!r}: fast {have[:30]} != tokenizers {want[:30]}"
    assert len(got) == len(texts)
