"""Text generation from a pytrain model (any family): sampling (greedy, temperature, top-k, top-p) and the KV-cache decoding loop.

The one generator in pytrain, beside the model it drives: `pytrain generate`, the demo and the trainer's
periodic samples (pytrain.train.sample) all call `generate_tokens`; `generate_batch` decodes several
prompts together (left-padded, for `pytrain eval`'s generation tasks). With the KV cache (the default) the
prompt runs through the model once and every new token alone, so a completion costs time linear in its
length; `use_cache=False` re-runs the whole sequence per token (quadratic, kept as the reference the
cache is tested against).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

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
    from pytrain.model.layers import KVCache

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


@torch.no_grad()
def generate_batch(model: nn.Module, prompts: list[list[int]], *, max_new_tokens: int, max_len: int,
                   sampling: Sampling = GREEDY, eos_id: int | None = None, generator: torch.Generator | None = None,
                   stop: Callable[[int, list[int]], bool] | None = None) -> list[list[int]]:
    """The tokens continuing each of `prompts` (non-empty lists of ids), decoded together: the prompts are
    left-padded to one length and the KV cache keeps each row's padding out of attention (RoPE positions are
    relative, so the offset changes nothing), so greedily a row gets the tokens `generate_tokens` gives it alone. A row ends before
    EOS, at `max_new_tokens`, or once `stop(row, its tokens so far)` is true (that token kept); decoding ends
    when every row has. Prompts keep their last `max_len - max_new_tokens` tokens, as in `generate_tokens`."""
    from pytrain.model.layers import KVCache

    if not prompts or not all(prompts):
        raise PytrainError("generation needs at least one prompt token per prompt")
    if not 0 < max_new_tokens < max_len:
        raise PytrainError(f"--max-new-tokens must be in [1, {max_len - 1}] (the model's context is {max_len} "
                           f"tokens), got {max_new_tokens}")
    device = next(model.parameters()).device
    prompts = [list(p[-(max_len - max_new_tokens):]) for p in prompts]
    width = max(map(len, prompts))
    padding = torch.tensor([width - len(p) for p in prompts], device=device)
    cache = KVCache(width + max_new_tokens, padding=padding)
    pending = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    new: list[list[int]] = [[] for _ in prompts]
    running = list(range(len(prompts)))
    for _ in range(max_new_tokens):
        logits = model(pending, cache=cache)[:, -1]
        tokens = [next_token(logits[row], sampling, generator) if row in running else 0 for row in range(len(prompts))]
        for row in list(running):
            if tokens[row] == eos_id:
                running.remove(row)
                continue
            new[row].append(tokens[row])
            if stop is not None and stop(row, new[row]):
                running.remove(row)
        if not running:
            break
        pending = torch.tensor(tokens, device=device)[:, None]
    return new


def prompt_ids(tokenizer, text: str, eos_id: int | None) -> list[int]:
    """`text` as token ids; an empty text starts a fresh document (after EOS, as in the packed data)."""
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    return ids or [eos_id if eos_id is not None else 0]
