"""`pytrain generate`: load a run's checkpoint and stream completions of a prompt (or of each typed prompt).

The sampling and decoding loop live beside the model, in pytrain.model.generation.
"""

from __future__ import annotations

import sys

from pytrain.errors import PytrainError
from pytrain.model.generation import Sampling, generate_tokens, prompt_ids


# ----------------------------------------------------------------------------- pytrain generate
def run_generate(run_dir: str, *, step: int | None, prompt: str | None, interactive: bool, max_new_tokens: int,
                 sampling: Sampling, seed: int, use_cache: bool, device: str) -> None:
    """Load a run's checkpoint and stream completions of `prompt`, or of each prompt typed at `> `."""
    from pytrain.train.checkpoint import list_checkpoints, step_name
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
    run.require()
    if step is None:  # the latest, fixed now so the line below names the checkpoint that was loaded
        step = max(list_checkpoints(run.checkpoints), default=None)
    model, model_config = run.load_model(step, device=device)
    print(f"loaded {run.checkpoints / step_name(step)} (step {step})", file=sys.stderr)
    tokenizer = run.tokenizer()
    eos_id = run.eos_id(tokenizer)
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(seed)

    def complete(text: str) -> None:
        ids = prompt_ids(tokenizer, text, eos_id)
        sys.stdout.write(text)
        new: list[int] = []
        shown = ""
        for token in generate_tokens(model, ids, max_new_tokens=max_new_tokens,
                                     max_len=model_config.context_length, sampling=sampling,
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
