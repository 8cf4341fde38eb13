"""Build GPT-2's byte-level BPE as an HF tokenizer.json, offline, from `gpt2.tiktoken`.

The PyPI sdist of `openai-whisper` ships `whisper/assets/gpt2.tiktoken`: GPT-2's exact BPE
ranks, one `base64(token bytes) rank` per line. That is all a BPE needs — the merges are
implied by the ranks: a multi-byte token of rank r is the merge of the two parts that BPE
produces on its bytes when only merges of rank < r are allowed.

    python benchmarks/gpt2_tokenizer.py --fetch --check
    python benchmarks/gpt2_tokenizer.py path/to/gpt2.tiktoken --out tok.json

`--check` compares the result with `tiktoken` built from the same ranks (pip install tiktoken).
"""

from __future__ import annotations

import argparse
import base64
import random
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 50256
WHISPER_SDIST_VERSION = "20250625"  # any release ships the same gpt2.tiktoken; pinned so CI fetches one file
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "gpt2-tokenizer.json"
# GPT-2's pre-tokenizer regex as tiktoken writes it (equivalent to the original release's).
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def parse_ranks(text: str) -> dict[bytes, int]:
    """A .tiktoken file's ranks: one `base64(token bytes) rank` per line."""
    ranks = {}
    for line in text.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def load_ranks(path: str | Path) -> dict[bytes, int]:
    return parse_ranks(Path(path).read_text(encoding="ascii"))


def ranks_from_sdist(sdist: str | Path) -> dict[bytes, int]:
    """GPT-2's ranks from the whisper/assets/gpt2.tiktoken inside an openai-whisper sdist."""
    with tarfile.open(sdist) as tar:
        (member,) = [m for m in tar.getmembers() if m.name.endswith("whisper/assets/gpt2.tiktoken")]
        return parse_ranks(tar.extractfile(member).read().decode("ascii"))


def fetch_sdist(directory: Path) -> Path:
    """`pip download` the openai-whisper sdist (WHISPER_SDIST_VERSION) into `directory`; its path."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    "--quiet", f"openai-whisper=={WHISPER_SDIST_VERSION}", "-d", str(directory)], check=True)
    (sdist,) = directory.glob("openai_whisper-*.tar.gz")
    return sdist


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (printable bytes map to themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def split_token(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two parts BPE leaves of `token` when only merges ranked below it may apply."""
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while True:
        best, best_rank = None, limit
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best is None:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {limit}) does not split into two lower-ranked parts: {parts}")
    return parts[0], parts[1]


def build_tokenizer(ranks: dict[bytes, int]):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    to_char = bytes_to_unicode()
    text = lambda token: "".join(to_char[b] for b in token)  # noqa: E731
    vocab = {text(token): rank for token, rank in ranks.items()}
    merged = sorted((rank, token) for token, rank in ranks.items() if len(token) > 1)
    merges = [tuple(text(part) for part in split_token(token, ranks)) for _, token in merged]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken(ENDOFTEXT, special=True, normalized=False)])
    if tokenizer.token_to_id(ENDOFTEXT) != ENDOFTEXT_ID:
        raise ValueError(f"{ENDOFTEXT} got id {tokenizer.token_to_id(ENDOFTEXT)}, expected {ENDOFTEXT_ID}")
    return tokenizer


def check_texts(seed: int = 0) -> list[str]:
    """Real documents plus the inputs where BPE ports usually diverge."""
    from pytrain.data.corpus import _stdlib_files, stdlib_documents

    rng = random.Random(seed)
    texts = stdlib_documents()
    for path in rng.sample(_stdlib_files(), 300):  # code: indentation, operators, long lines
        source = path.read_text(encoding="utf-8", errors="replace")
        start = rng.randrange(max(1, len(source) - 4000))
        texts.append(source[start:start + rng.randint(50, 4000)])
    alphabet = ("aZ09 \t\n\r\x0b\x0c\u00a0\u2003\u3000'\"!?.,;:-_()[]{}<>/\\@#$%^&*~`|+=\n\n  "
                "éßøñüçЖжщΩπλ中文日本語한국어עבריתالعربيةहिन्दीไทย😀👍🏽🇫🇷\u200d\ufeff\u0301𝔘")
    for _ in range(2000):
        texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 200))))
    texts += [
        " " * 40, "\n" * 9, " \n \n", "\t\t x", "x   ", "  leading", "trailing  ", "a  b   c    d",
        "12345678901234567890", "3.14159 2,718 1e-9 0x1F -42", "I'm you're we'll they've he'd it's",
        "I'M YOU'RE", "’s ‘quoted’ “double”", "<|endoftext|>", "a<|endoftext|>b <|endoftext|> c",
        "def f(x):\n    return x ** 2  # square\n", "\u00e9 vs e\u0301", "🇫🇷🇩🇪", "",
    ]
    return texts


def check(tokenizer, ranks: dict[bytes, int]) -> int:
    """Compare ids with tiktoken on the same ranks; returns the number of mismatching texts."""
    import tiktoken

    reference = tiktoken.Encoding("gpt2-from-ranks", pat_str=GPT2_PAT_STR, mergeable_ranks=ranks,
                                  special_tokens={ENDOFTEXT: ENDOFTEXT_ID})
    texts = check_texts()
    ours = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    bad = 0
    for text, ids in zip(texts, ours):
        expected = reference.encode(text, allowed_special="all")
        if ids != expected:
            bad += 1
            if bad <= 5:
                print(f"MISMATCH {text[:80]!r}\n  ours     {ids[:20]}\n  tiktoken {expected[:20]}")
        elif tokenizer.decode(ids, skip_special_tokens=False) != text and "\ufffd" not in text:
            bad += 1
            print(f"ROUND-TRIP FAILED {text[:80]!r}")
    tokens = sum(map(len, ours))
    print(f"check: {len(texts) - bad}/{len(texts)} texts identical to tiktoken ({tokens} tokens)")
    return bad


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ranks", nargs="?", help="a gpt2.tiktoken file")
    parser.add_argument("--fetch", action="store_true", help="get gpt2.tiktoken from the openai-whisper sdist on PyPI")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="compare with tiktoken on a few thousand texts")
    args = parser.parse_args(argv)
    if (args.ranks is None) == (not args.fetch):
        parser.error("give a gpt2.tiktoken path or --fetch (one of them)")
    with tempfile.TemporaryDirectory() as tmp:
        ranks = ranks_from_sdist(fetch_sdist(Path(tmp))) if args.fetch else load_ranks(args.ranks)
    tokenizer = build_tokenizer(ranks)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(args.out))
    print(f"wrote {args.out} ({tokenizer.get_vocab_size(with_added_tokens=True)} tokens)")
    return 1 if args.check and check(tokenizer, ranks) else 0


if __name__ == "__main__":
    sys.exit(main())
