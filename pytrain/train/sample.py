"""Text samples during training, to eyeball progress in train.log.

Every rank runs the same generation (FSDP2 needs all ranks in each forward to gather the weights);
the sampling generator is seeded from (seed, step), so all ranks draw the same tokens, and it is
separate from the global RNG, so sampling never changes the training run. No KV cache: each new token
re-runs the (short) sequence, which is simple and cheap for the few tokens logged.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def generate(model: nn.Module, prompt: list[int], *, max_new_tokens: int, max_len: int, temperature: float,
             eos_id: int | None, device: torch.device, generator: torch.Generator) -> list[int]:
    """Continue `prompt` by up to `max_new_tokens` tokens (greedy when temperature is 0); stop at EOS."""
    ids = list(prompt)
    for _ in range(max_new_tokens):
        window = torch.tensor([ids[-max_len:]], dtype=torch.long, device=device)
        logits = model(window)[0, -1].float()
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
        else:
            token = int(logits.argmax())
        ids.append(token)
        if token == eos_id:
            break
    return ids[len(prompt):]


def sample_prompts(model: nn.Module, tokenizer_path, prompts: list[str], *, step: int, seed: int,
                   max_new_tokens: int, max_len: int, temperature: float, eos_id: int | None,
                   device: torch.device) -> list[tuple[str, str]]:
    """[(prompt, completion)] for each prompt; an empty prompt starts a fresh document (after EOS)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    generator = torch.Generator(device=device)
    generator.manual_seed(seed * 1_000_003 + step)
    was_training = model.training
    model.eval()
    results = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids
        if not ids:
            ids = [eos_id if eos_id is not None else 0]
        new = generate(model, ids, max_new_tokens=max_new_tokens, max_len=max_len, temperature=temperature,
                       eos_id=eos_id, device=device, generator=generator)
        results.append((prompt, tokenizer.decode(new, skip_special_tokens=True)))
    model.train(was_training)
    return results
