"""Text samples during training, to eyeball progress in train.log.

Every rank runs the same generation (FSDP2 needs all ranks in each forward to gather the weights);
the sampling generator is seeded from (seed, step), so all ranks draw the same tokens, and it is
separate from the global RNG, so sampling never changes the training run. The tokens come from
pytrain.model.generation (KV cache), run eagerly: compiled blocks would recompile for every decoding shape.
"""

from __future__ import annotations

import torch
from torch import nn

from pytrain.model.generation import GREEDY, Sampling, generate_tokens, prompt_ids


def sample_prompts(model: nn.Module, tokenizer_path, prompts: list[str], *, step: int, seed: int,
                   max_new_tokens: int, max_len: int, temperature: float, eos_id: int | None,
                   device: torch.device) -> list[tuple[str, str]]:
    """[(prompt, completion)] for each prompt; an empty prompt starts a fresh document (after EOS)."""
    from pytrain.tokenizer.files import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed * 1_000_003 + step)
    sampling = Sampling(temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else GREEDY
    was_training = model.training
    model.eval()
    results = []
    with torch.compiler.set_stance("force_eager"):
        for prompt in prompts:
            new = list(generate_tokens(model, prompt_ids(tokenizer, prompt, eos_id),
                                       max_new_tokens=min(max_new_tokens, max_len - 1), max_len=max_len,
                                       sampling=sampling, eos_id=eos_id, generator=generator))
            results.append((prompt, tokenizer.decode(new, skip_special_tokens=True)))
    model.train(was_training)
    return results
