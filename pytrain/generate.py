"""Text generation: sampling (greedy, temperature, top-k, top-p), the KV-cache decoding loop, `pytrain generate`.

The one generator in pytrain: the trainer's periodic samples (pytrain.train.sample) and the CLI both use
`generate_tokens`. With the KV cache (the default) the prompt runs through the model once and every
new token alone, so a completion costs time linear in its length; `use_cache=False` re-runs the whole
sequence per token (quadratic, kept as the reference the cache is tested against).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from pytrain.errors import PytrainError


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy when temperature is 0, else sampled from the filtered softmax."""
    temperature: float = 0.8
    top_k: int = 50      # keep the k most likely tokens; 0: all
    top_p: float = 0.95  # keep the smallest set of most likely tokens holding this probability; 1: all

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise PytrainError(f"--temperature must be >= 0 (0: greedy), got {self.temperature}")
        if self.top_k < 0:
            raise PytrainError(f"--top-k must be >= 0 (0: off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise PytrainError(f"--top-p must be in (0, 1] (1: off), got {self.top_p}")


GREEDY = Sampling(temperature=0.0)


def next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> int:
    """The next token from one position's logits [vocab]: temperature, then top-k, then top-p (as in HF)."""
    logits = logits.float()
    if sampling.temperature == 0:
        return int(logits.argmax())
    logits = logits / sampling.temperature
    if 0 < sampling.top_k < logits.numel():
        kth = torch.topk(logits, sampling.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs >= sampling.top_p  # the more likely tokens already hold top_p
        logits = logits.masked_fill(torch.empty_like(drop).scatter_(0, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate_tokens(model: nn.Module, prompt: list[int], *, max_new_tokens: int, max_len: int,
                    sampling: Sampling = GREEDY, eos_id: int | None = None, use_cache: bool = True,
                    generator: torch.Generator | None = None) -> Iterator[int]:
    """Yield up to `max_new_tokens` tokens continuing `prompt` (a non-empty list of ids); stop before EOS.

    `max_len` is the context the model may see (its max_position_embeddings, or the training sequence
    length): the prompt keeps its last `max_len - max_new_tokens` tokens so prompt and completion fit.
    The model is called as-is (eval mode and device are the caller's).
    """
    from pytrain.model.llama import KVCache

    if not prompt:
        raise PytrainError("generation needs at least one prompt token (an empty prompt starts after EOS)")
    if not 0 < max_new_tokens < max_len:
        raise PytrainError(f"--max-new-tokens must be in [1, {max_len - 1}] (the model's context is {max_len} "
                           f"tokens), got {max_new_tokens}")
    device = next(model.parameters()).device
    ids = list(prompt[-(max_len - max_new_tokens):])
    cache = KVCache(max_len) if use_cache else None
    pending = ids  # tokens the model has not seen yet: the prompt, then each new token
    for _ in range(max_new_tokens):
        inputs = torch.tensor([pending if use_cache else ids], dtype=torch.long, device=device)
        token = next_token(model(inputs, cache=cache)[0, -1], sampling, generator)
        if token == eos_id:
            return
        yield token
        ids.append(token)
        pending = [token]


def prompt_ids(tokenizer, text: str, eos_id: int | None) -> list[int]:
    """`text` as token ids; an empty text starts a fresh document (after EOS, as in the packed data)."""
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    return ids or [eos_id if eos_id is not None else 0]


# ----------------------------------------------------------------------------- pytrain generate
def run_generate(run_dir: str, *, step: int | None, prompt: str | None, interactive: bool, max_new_tokens: int,
                 sampling: Sampling, seed: int, use_cache: bool, device: str) -> None:
    """Load a run's checkpoint and stream completions of `prompt`, or of each prompt typed at `> `."""
    from pytrain.train.distributed import pick_device
    from pytrain.train.run_dir import RunDir

    if prompt is None and not interactive:
        raise PytrainError("pass --prompt TEXT, or --interactive for a prompt loop")
    if prompt is not None:
        _check_text(prompt, "--prompt")
    if not 0 <= seed < 2**63:
        raise PytrainError(f"--seed must be an integer in [0, 2^63), got {seed}")
    device = pick_device(device, "--device")
    run = RunDir(run_dir)
    model, model_config = run.load_model(step, device=device)
    tokenizer = run.tokenizer()
    eos_id = run.eos_id(tokenizer)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)

    def complete(text: str) -> None:
        ids = prompt_ids(tokenizer, text, eos_id)
        sys.stdout.write(text)
        new: list[int] = []
        shown = ""
        for token in generate_tokens(model, ids, max_new_tokens=max_new_tokens,
                                     max_len=model_config.max_position_embeddings, sampling=sampling,
                                     eos_id=eos_id, use_cache=use_cache, generator=generator):
            new.append(token)
            decoded = tokenizer.decode(new, skip_special_tokens=True)
            if not decoded.endswith("\ufffd"):  # hold back a character whose UTF-8 bytes are still arriving
                sys.stdout.write(decoded[len(shown):])
                sys.stdout.flush()
                shown = decoded
        sys.stdout.write(tokenizer.decode(new, skip_special_tokens=True)[len(shown):] + "\n")
        sys.stdout.flush()

    if prompt is not None:
        complete(prompt)
    if interactive:
        print("type a prompt and press enter (an empty line starts a new document); Ctrl-D to quit",
              file=sys.stderr)
        while True:
            try:
                text = input("> ")
            except EOFError:
                print(file=sys.stderr)
                return
            try:
                _check_text(text, "the prompt")
            except PytrainError as error:
                print(f"error: {error}", file=sys.stderr)
                continue
            complete(text)


def _check_text(text: str, what: str) -> None:
    """Command-line text arrives with undecodable bytes as lone surrogates: refuse it instead of failing later."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise PytrainError(f"{what} is not valid UTF-8 (byte {error.start}); pass UTF-8 text") from None
