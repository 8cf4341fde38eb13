"""Generation: the KV cache gives the full forward's logits and tokens, costs linear time, sampling filters,
EOS and context limits, and `pytrain generate` on a trained run."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from _train_fixtures import base_config, base_run, packed_data  # noqa: F401
from pytrain.cli import main
from pytrain.errors import PytrainError
from pytrain.model.generation import GREEDY, Sampling, generate_batch, generate_tokens, next_token, prompt_ids
from pytrain.model import Llama, preset
from pytrain.model.layers import KVCache


def peaked_model(**overrides) -> Llama:
    """Random weights with a large init, so the next-token distributions are far from uniform."""
    model = Llama(preset("tiny", initializer_range=0.2, **overrides))
    model.init_weights(seed=0)
    return model.eval()


@pytest.mark.parametrize("overrides", [{}, {"attention_bias": True, "tie_word_embeddings": False,
                                            "num_key_value_heads": 1}])
@torch.no_grad()
def test_cache_gives_the_full_forward_logits(overrides):
    model = peaked_model(**overrides)
    ids = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(0))
    cache = KVCache(64)
    chunks = [model(ids[:, :10], cache=cache), model(ids[:, 10:25], cache=cache)]  # prefill, then several at once
    chunks += [model(ids[:, i:i + 1], cache=cache) for i in range(25, 40)]  # then one at a time
    assert cache.length == 40
    torch.testing.assert_close(torch.cat(chunks, 1), model(ids), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("sampling", [GREEDY, Sampling(temperature=1.0, top_k=20, top_p=0.9)])
def test_generation_with_and_without_cache_gives_the_same_tokens(sampling):
    model = peaked_model()
    runs = [list(generate_tokens(model, [5, 17, 3], max_new_tokens=60, max_len=256, sampling=sampling,
                                 use_cache=use_cache, generator=torch.Generator().manual_seed(1)))
            for use_cache in (True, False)]
    assert len(runs[0]) == 60 and runs[0] == runs[1]


@pytest.mark.parametrize("overrides", [{}, {"num_key_value_heads": 1}])
def test_a_batch_of_left_padded_prompts_gives_each_prompt_its_own_tokens(overrides):
    """generate_batch (prompts of 1 to 17 tokens decoded together) gives every prompt the greedy tokens
    generate_tokens gives it alone: padding is never attended to; a row stops at EOS or when `stop` says so (that token kept) while the others go on."""
    model = peaked_model(**overrides)
    rng = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 512, (n,), generator=rng).tolist() for n in (17, 1, 9, 4)]
    alone = [list(generate_tokens(model, p, max_new_tokens=12, max_len=64)) for p in prompts]
    assert len({tuple(tokens) for tokens in alone}) == len(prompts)
    assert generate_batch(model, prompts, max_new_tokens=12, max_len=64) == alone
    eos = alone[2][5]  # the third prompt's sixth token: an end of text for it (and maybe for others)
    until_eos = [tokens[:tokens.index(eos)] if eos in tokens else tokens for tokens in alone]
    assert generate_batch(model, prompts, max_new_tokens=12, max_len=64, eos_id=eos) == until_eos
    stopped = generate_batch(model, prompts, max_new_tokens=12, max_len=64, stop=lambda row, tokens: row == 1 and len(tokens) == 3)
    assert stopped == [alone[0], alone[1][:3], *alone[2:]]


def test_cache_runs_each_token_through_the_model_once():
    model = peaked_model()
    seen = []
    model.embed_tokens.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    prompt, new = [1, 2, 3, 4], 20
    list(generate_tokens(model, prompt, max_new_tokens=new, max_len=256))
    assert seen == [len(prompt)] + [1] * (new - 1)  # linear: prompt once, then one token per step
    seen.clear()
    list(generate_tokens(model, prompt, max_new_tokens=new, max_len=256, use_cache=False))
    assert seen == list(range(len(prompt), len(prompt) + new))  # quadratic: the whole sequence every step


class Counter(nn.Module):
    """A stand-in model that predicts (last token + 1) mod vocab and records what it was given."""

    def __init__(self, vocab: int = 10):
        super().__init__()
        self.vocab = vocab
        self.weight = nn.Parameter(torch.zeros(1))
        self.inputs = []

    def forward(self, ids, cache=None):
        self.inputs.append(ids[0].tolist())
        logits = torch.zeros(1, ids.shape[1], self.vocab)
        logits[0, -1, (ids[0, -1] + 1) % self.vocab] = 1.0
        return logits


def test_stops_before_eos_and_keeps_the_prompt_tail_that_fits():
    model = Counter()
    assert list(generate_tokens(model, [1], max_new_tokens=9, max_len=16, eos_id=5)) == [2, 3, 4]
    model.inputs.clear()
    assert list(generate_tokens(model, [1, 2, 3, 4, 5, 6], max_new_tokens=3, max_len=6)) == [7, 8, 9]
    assert model.inputs[0] == [4, 5, 6]  # max_len - max_new_tokens prompt tokens, the last ones


def test_limits_are_checked():
    with pytest.raises(PytrainError, match="max-new-tokens must be in"):
        list(generate_tokens(Counter(), [1], max_new_tokens=16, max_len=16))
    with pytest.raises(PytrainError, match="at least one prompt token"):
        list(generate_tokens(Counter(), [], max_new_tokens=1, max_len=16))
    for bad, message in (({"temperature": -1}, "temperature"), ({"top_k": -1}, "top-k"), ({"top_p": 0}, "top-p")):
        with pytest.raises(PytrainError, match=message):
            Sampling(**bad)


def test_sampling_filters():
    logits = torch.tensor([1.0, 3.0, 2.0, 0.5, 2.9])
    g = torch.Generator().manual_seed(0)
    assert next_token(logits, GREEDY) == 1
    assert {next_token(logits, Sampling(temperature=5.0, top_k=1, top_p=1.0), g) for _ in range(50)} == {1}
    assert {next_token(logits, Sampling(temperature=5.0, top_k=3, top_p=1.0), g) for _ in range(300)} == {1, 2, 4}
    # p(1) and p(4) hold ~0.64 of the mass at temperature 1: top_p 0.6 needs both, top_p 0.3 only the first
    assert {next_token(logits, Sampling(temperature=1.0, top_k=0, top_p=0.6), g) for _ in range(300)} == {1, 4}
    assert {next_token(logits, Sampling(temperature=1.0, top_k=0, top_p=0.3), g) for _ in range(50)} == {1}
    assert len({next_token(logits, Sampling(temperature=1.0, top_k=0, top_p=1.0), g) for _ in range(500)}) == 5


def _expected_completion(run_dir, prompt: list[int] | str, sampling=GREEDY, seed=0) -> str:
    """What `pytrain generate` must print: the prompt, then the Python generator's tokens decoded, then a newline."""
    from tokenizers import Tokenizer

    from pytrain.train import load_model_for_inference

    model, config, tokenizer_path = load_model_for_inference(run_dir)
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids if prompt else [tokenizer.token_to_id("<|endoftext|>")]
    new = list(generate_tokens(model, ids, max_new_tokens=12, max_len=config.max_position_embeddings,
                               sampling=sampling, eos_id=tokenizer.token_to_id("<|endoftext|>"),
                               generator=torch.Generator().manual_seed(seed)))
    assert new, "the reference completion is empty: the comparison would prove nothing"
    return prompt + tokenizer.decode(new, skip_special_tokens=True) + "\n"


def test_generate_command(base_run, capsys):
    greedy = ["--run", str(base_run), "--max-new-tokens", "12", "--temperature", "0"]
    assert main(["generate", *greedy, "--prompt", "def "]) == 0
    out, err = capsys.readouterr()
    assert err == f"loaded {base_run / 'checkpoints' / 'step_8'} (step 8)\n"  # the latest
    assert main(["generate", *greedy, "--prompt", "def ", "--step", "4"]) == 0
    assert capsys.readouterr().err == f"loaded {base_run / 'checkpoints' / 'step_4'} (step 4)\n"
    assert out.startswith("def ") and len(out) > len("def \n")
    assert out == _expected_completion(base_run, "def ")
    assert main(["generate", *greedy, "--prompt", "def ", "--no-cache"]) == 0
    assert capsys.readouterr().out == out
    assert main(["generate", *greedy]) == 2
    assert "--prompt TEXT, or --interactive" in capsys.readouterr().err
    assert main(["generate", *greedy, "--prompt", "x", "--top-p", "2"]) == 2
    assert "--top-p must be in (0, 1]" in capsys.readouterr().err
    interactive = subprocess.run([sys.executable, "-m", "pytrain", "generate", *greedy, "--interactive"],
                                 input="def \n", capture_output=True, text=True, check=True)
    assert interactive.stdout == f"> {out}> " and "Ctrl-D" in interactive.stderr  # prompt, completion, prompt, EOF


def test_generate_command_samples_with_its_seed_and_an_empty_prompt_starts_a_document(base_run, capsys):
    sampled = ["--run", str(base_run), "--max-new-tokens", "12", "--temperature", "0.8", "--top-k", "20",
               "--top-p", "0.9", "--seed", "3"]
    assert main(["generate", *sampled, "--prompt", "def "]) == 0
    sampling = Sampling(temperature=0.8, top_k=20, top_p=0.9)
    assert capsys.readouterr().out == _expected_completion(base_run, "def ", sampling, seed=3)
    assert main(["generate", "--run", str(base_run), "--max-new-tokens", "12", "--temperature", "0", "--prompt", ""]) == 0
    assert capsys.readouterr().out == _expected_completion(base_run, "")  # continues [EOS]: a new document
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(base_run / "tokenizer.json"))
    assert prompt_ids(tokenizer, "", eos_id=0) == [0] and prompt_ids(tokenizer, "def ", eos_id=0) == tokenizer.encode("def ").ids
