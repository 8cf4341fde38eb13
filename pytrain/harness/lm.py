"""A pytrain model (any family, sharded by FSDP2 or not) as lm-evaluation-harness's language model.

`PytrainLM` implements the harness's three request types directly on the model, with the run's
tokenizer, the way the harness's own Hugging Face backend (`lm_eval --model hf`) does on an exported
folder, so both give the same numbers:

- loglikelihood: context + continuation in one forward (left-truncated to the context length; requests
  with the same input, like one-token choices of a question, share it), the continuation's summed
  log-probabilities and whether greedy decoding would produce it;
- loglikelihood_rolling: a whole document in the harness's disjoint rolling windows
  (`lm_eval.utils.get_rolling_token_windows`), each token predicted once, summed per document;
- generate_until: decoding with pytrain's KV cache (pytrain.model.generation.generate_batch, `batch_size`
  left-padded contexts at a time) until a stop string, EOS or `max_gen_toks`; greedy unless the task
  asks to sample.

Under torchrun the harness gives each rank its share of the documents and gathers the per-document
results on rank 0 (through `rank`, `world_size`, `all_gather`, `gather_object` here). A model sharded
by FSDP2 needs every rank in every forward (each one all-gathers the weights), but ranks hold different
requests and generations end at different lengths: `Lockstep` makes every rank run one forward per round
(a rank with nothing left runs a one-token stand-in) until no rank has work, at the price of one tiny
all-reduce per forward.
"""

from __future__ import annotations

import json

import torch
import torch.distributed as dist
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from torch import nn
from tqdm import tqdm

from pytrain.errors import PytrainError
from pytrain.model.generation import GREEDY, Sampling, generate_batch

DEFAULT_MAX_GEN_TOKS = 256  # the harness's default for generate_until


class Lockstep(nn.Module):
    """The model, called so that every rank runs the same number of forwards (what FSDP2 needs).

    Each forward first all-reduces "I have a forward to run"; after its own work a rank calls `drain()`,
    which runs stand-in forwards for as long as another rank still has work."""

    def __init__(self, model: nn.Module, device: torch.device):
        super().__init__()
        self.model = model
        self.device = device

    def _others_busy(self, busy: bool) -> bool:
        flag = torch.tensor([int(busy)], device=self.device)
        dist.all_reduce(flag)
        return bool(flag.item())

    def forward(self, *args, **kwargs):
        self._others_busy(True)
        return self.model(*args, **kwargs)

    @torch.no_grad()
    def drain(self) -> None:
        stand_in = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        while self._others_busy(False):
            self.model(stand_in)


class PytrainLM(TemplateLM):
    """lm-evaluation-harness's language model over a pytrain model.

    `model`: any family, unsharded or sharded by FSDP2 (in eval mode; dtype and device are the caller's).
    `tokenizer`: the run's tokenizers.Tokenizer; `eos_id`: the EOS the data was packed with (where
    generation stops); `bos_id`: the BOS token, when the tokenizer has one (the context of an empty
    prompt and of a rolling window's first token, else EOS: as the Hugging Face backend chooses).
    `max_length`: the context the model attends over. With `lockstep`, every forward is matched on all
    ranks (a sharded model under torchrun)."""

    def __init__(self, model: nn.Module, tokenizer, *, eos_id: int | None, bos_id: int | None, max_length: int,
                 batch_size: int = 8, device: torch.device | str = "cpu", lockstep: bool = False,
                 max_gen_toks: int = DEFAULT_MAX_GEN_TOKS, seed: int = 1234):
        super().__init__()
        if eos_id is None:
            raise PytrainError("evaluation needs the tokenizer's EOS token (the end of a generation, and the "
                               "context of an empty prompt without a BOS token); the run's tokenizer has none")
        self._device = torch.device(device)
        self.model = Lockstep(model, self._device) if lockstep else model
        self.tokenizer = tokenizer
        self._eos_id, self._bos_id = eos_id, bos_id
        self._max_length, self._max_gen_toks = max_length, max_gen_toks
        self.batch_size = batch_size
        self.seed = seed
        if dist.is_initialized():
            self._rank, self._world_size = dist.get_rank(), dist.get_world_size()

    # ------------------------------------------------------------------ what the harness asks of a model
    @property
    def eot_token_id(self) -> int:
        return self._eos_id

    @property
    def prefix_token_id(self) -> int:
        return self._bos_id if self._bos_id is not None else self._eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return "pytrain"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        """The tokenizer's ids, its post-processor's special tokens included unless told otherwise or the
        text already starts with the prefix token (the Hugging Face backend's rule)."""
        if add_special_tokens is None:
            prefix = self.tokenizer.decode([self.prefix_token_id], skip_special_tokens=False)
            add_special_tokens = not (prefix and string.startswith(prefix))
        ids = self.tokenizer.encode(string, add_special_tokens=add_special_tokens).ids
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------ distribution (the harness splits, we gather)
    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    def gather_object(self, obj, dst: int = 0):
        if self.world_size == 1:
            return [obj]
        gathered = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(obj, gathered, dst=dst)
        return gathered

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def _finish(self) -> None:
        """After a request type's own work: stand in for the forwards other ranks still run."""
        if isinstance(self.model, Lockstep):
            self.model.drain()

    def _progress(self, total: int, what: str, disable: bool):
        return tqdm(total=total, desc=f"Running {what} requests", disable=disable or self.rank != 0)

    # ------------------------------------------------------------------ loglikelihood
    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(summed log-probability of the continuation, whether it is the greedy one) per (request, context ids,
        continuation ids). Requests with the same input (the choices of one question, when each is one token)
        share a forward; inputs run in batches, longest first."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        inputs: dict[tuple[int, ...], list[int]] = {}  # input ids -> the requests scored on its logits
        for i, (_, context, continuation) in enumerate(requests):
            if not context or not continuation or len(continuation) > self.max_length:
                raise PytrainError(f"a loglikelihood request needs a context and a continuation of 1 to "
                                   f"{self.max_length} tokens, got {len(context)} and {len(continuation)}")
            inputs.setdefault(tuple((context + continuation)[-(self.max_length + 1):][:-1]), []).append(i)
        order = sorted(inputs, key=len, reverse=True)
        progress = self._progress(len(requests), "loglikelihood", disable_tqdm)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            width = len(chunk[0])
            batch = torch.tensor([ids + (0,) * (width - len(ids)) for ids in chunk], device=self._device)
            logits = self.model(batch)  # right padding: the positions that are read never see it
            for row, ids in enumerate(chunk):
                for i in inputs[ids]:
                    continuation = requests[i][2]
                    scored = logits[row, len(ids) - len(continuation):len(ids)].float().log_softmax(-1)
                    target = torch.tensor(continuation, device=self._device)
                    logprob = float(scored.gather(-1, target[:, None]).sum())
                    results[i] = (logprob, bool((scored.argmax(-1) == target).all()))
                progress.update(len(inputs[ids]))
        progress.close()
        self._finish()
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each document's log-likelihood over the harness's disjoint rolling windows of max_length tokens."""
        windows, owner = [], []
        for index, (text,) in enumerate(request.args for request in requests):
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, context, continuation))
                owner.append(index)
        totals = [0.0] * len(requests)
        for index, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[index] += logprob
        return totals

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continue each context until one of the task's stop strings (or EOS, or max_gen_toks tokens), with
        the KV cache, `batch_size` contexts of the same generation settings at a time (longest first); the stop
        string and what follows are cut off, as the harness does."""
        eos_text = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        bos_text = None if self._bos_id is None else self.tok_decode([self._bos_id], skip_special_tokens=False)
        generator = torch.Generator(device=self._device)
        generator.manual_seed(self.seed)
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(index)
        outputs: list[str | None] = [None] * len(requests)
        progress = self._progress(len(requests), "generate_until", disable_tqdm)
        for indices in groups.values():
            kwargs = dict(normalize_gen_kwargs(requests[indices[0]].args[1], self.max_gen_toks))
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            max_new = kwargs.pop("max_gen_toks")
            if not 0 < max_new < self.max_length:
                raise PytrainError(f"generate_until: max_gen_toks must be in [1, {self.max_length - 1}] (the model's "
                                   f"context is {self.max_length} tokens), got {max_new}")
            sampling = _sampling(kwargs)
            # The Hugging Face backend encodes contexts as a batch: special tokens unless the text starts with BOS.
            prompts = {}
            for i in indices:
                context = requests[i].args[0]
                add_special = not (bos_text and context.startswith(bos_text))
                prompts[i] = self.tok_encode(context, add_special_tokens=add_special) or [self.prefix_token_id]
            order = sorted(indices, key=lambda i: -len(prompts[i]))

            def stopped(row: int, tokens: list[int], until=until) -> bool:
                text = self.tok_decode(tokens)  # once per row and step, whatever the number of stop strings
                return any(stop and stop in text for stop in until)

            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                generated = generate_batch(self.model, [prompts[i] for i in chunk], max_new_tokens=max_new,
                                           max_len=self.max_length, sampling=sampling, eos_id=self.eot_token_id,
                                           generator=generator, stop=stopped)
                for i, tokens in zip(chunk, generated):
                    outputs[i] = postprocess_generated_text(self.tok_decode(tokens), until, None)
                progress.update(len(chunk))
        progress.close()
        self._finish()
        return outputs


def _sampling(kwargs: dict) -> Sampling:
    """pytrain's Sampling for a task's generation kwargs (greedy unless do_sample); others are refused."""
    do_sample = kwargs.pop("do_sample", False)
    temperature = float(kwargs.pop("temperature", 0.0))
    top_k, top_p = int(kwargs.pop("top_k", 0) or 0), float(kwargs.pop("top_p", 1.0) or 1.0)
    if kwargs:
        raise PytrainError(f"generate_until: generation_kwargs {', '.join(sorted(kwargs))} are not supported by "
                           "pytrain (it supports until, max_gen_toks, do_sample, temperature, top_k, top_p)")
    if not do_sample or temperature == 0:
        return GREEDY
    return Sampling(temperature=temperature, top_k=top_k, top_p=top_p)
