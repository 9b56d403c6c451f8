"""mu through a transformers model: prefill each prompt once, branch the samples from its cached keys and values."""

import copy
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from transformers import DynamicCache, GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import DynamicLayer
from trl.models.utils import unwrap_model_for_generation

from mrt.prover.base import check_answers, chunks, cut_at_eos, eos_ids
from mrt.prover.scoring import max_over_ranks


class TransformersProver:
    """mu through a transformers model: the trainer's own policy (no second copy) or a model of its own.

    `model_context()` enters whatever the model needs to generate and yields it (the trainer passes TRL's
    unwrap-for-generation, which gathers ZeRO-3 parameters; a plain model needs nothing). All requests of a call
    go through one context, in chunks of at most `batch_size` sequences. Chunks are cut from the prompts in token
    order, so the prefixes of one completion sit in the same chunk and share their prefill. `generate` reads each
    prompt once and branches its samples from the cached keys and values; `likelihood` is one teacher-forced pass
    per chunk. With an `accelerator`, every rank makes the same number of model calls (a rank with fewer chunks
    runs a tiny dummy chunk) so that ZeRO-3's collective parameter gathers stay in step.
    """

    def __init__(self, model_context, tokenizer, eos: set[int], generation_config: GenerationConfig,
                 batch_size: int = 64, accelerator=None, device=None):
        self.model_context, self.tokenizer, self.eos = model_context, tokenizer, set(eos)
        self.generation_config, self.batch_size, self.accelerator = generation_config, batch_size, accelerator
        self.device = device if device is not None else accelerator.device
        self.prefill_tokens = 0  # tokens read by prefill passes (a counter for benchmarks)

    @classmethod
    def from_trainer(cls, trainer) -> "TransformersProver":
        args = trainer.args

        @contextmanager
        def model_context():
            with (
                unwrap_model_for_generation(
                    trainer.model_wrapped, trainer.accelerator, gather_deepspeed3_params=args.ds3_gather_for_generation,
                    generation_kwargs=trainer.generation_kwargs,
                    gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
                ) as model,
                torch.no_grad(),
                trainer._dist.summon_full_params(trainer.model_wrapped, recurse=False),
            ):
                yield model

        return cls(model_context, trainer._tokenizer, {*trainer.eos_token_ids, trainer._tokenizer.pad_token_id},
                   trainer.generation_config, args.prover_batch_size, trainer.accelerator)

    @classmethod
    def for_model(cls, model, tokenizer, batch_size: int = 64) -> "TransformersProver":
        """mu = a model of its own (evaluation, MRT-STaR): plain sampling, temperature set per call."""
        declared = model.generation_config.eos_token_id
        ends = [declared] if isinstance(declared, int) else list(declared or [])
        ends = sorted({*ends, tokenizer.eos_token_id} - {None})
        config = GenerationConfig(do_sample=True, top_p=1.0, top_k=0, pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=ends or None)
        eos = eos_ids(tokenizer, ends)

        @contextmanager
        def model_context():
            with torch.no_grad():
                yield model

        return cls(model_context, tokenizer, eos, config, batch_size, device=model.device)

    def generate(self, prompts: list[list[int]], num_samples: int, max_tokens: int, temperature: float,
                 stop: list[str] | None, seed: int | None = None) -> list[list[list[int]]]:
        config = copy.deepcopy(self.generation_config)
        config.max_new_tokens, config.num_return_sequences = max_tokens, 1
        # A static or other preset cache cannot take the branched cache passed as past_key_values.
        config.cache_implementation = None
        if temperature > 0:
            config.temperature, config.do_sample = temperature, True
        else:
            config.do_sample, config.temperature, config.top_p, config.top_k = False, None, None, None
        dummy = copy.deepcopy(config)
        dummy.max_new_tokens = 1
        per_call = max(1, self.batch_size // num_samples)
        if seed is not None:
            torch.manual_seed(seed)

        def call(model, chunk: list[int] | None) -> list:
            if chunk is None:
                self.branch(model, [[self._pad_id] * 2], dummy, 1, None)
                return []
            out = self.branch(model, [prompts[i] for i in chunk], config, num_samples, stop)
            return [out[k * num_samples:(k + 1) * num_samples] for k in range(len(chunk))]

        return self._in_chunks(prompts, per_call, call)

    def likelihood(self, prompts: list[list[int]], answers: list[list[int]]) -> list[float]:
        check_answers(answers)
        pairs = [[*p, *a] for p, a in zip(prompts, answers, strict=True)]

        def call(model, chunk: list[int] | None) -> list:
            if chunk is None:
                self._answer_logprobs(model, [[self._pad_id] * 2], [1])
                return []
            return self._answer_logprobs(model, [pairs[i] for i in chunk], [len(answers[i]) for i in chunk])

        return self._in_chunks(pairs, self.batch_size, call)

    @property
    def _pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def _in_chunks(self, prompts: list[list[int]], per_call: int, call) -> list:
        """`call(model, indices)` over chunks of prompts in token order, inside one model context; results in
        input order. `call(model, None)` is the dummy call of a rank that has run out of chunks."""
        order = sorted(range(len(prompts)), key=lambda i: prompts[i])
        parts = chunks(order, per_call)
        calls = max_over_ranks(len(parts), self.accelerator)
        results: list = [None] * len(prompts)
        with self.model_context() as model:
            for k in range(calls):
                if k >= len(parts):
                    call(model, None)
                    continue
                for i, value in zip(parts[k], call(model, parts[k]), strict=True):
                    results[i] = value
        return results

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        device = self.device
        ids = torch.tensor([[self._pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        return ids, mask

    def branch(self, model, prompts, config, num_samples, stop) -> list[list[int]]:
        """Prefill the prompts (shared leading tokens once), copy each cache `num_samples` times and sample; the
        returned rows are grouped by prompt."""
        ids, mask, cache = self._prefill(model, prompts)
        self.prefill_tokens += int(mask.sum()) if cache is None else 0
        width = ids.size(1)
        if cache is not None:
            cache.batch_repeat_interleave(num_samples)
        extra = {"stopping_criteria": StoppingCriteriaList([StopOnText(self.tokenizer, stop, width)])} \
            if stop else {}
        out = model.generate(input_ids=ids.repeat_interleave(num_samples, dim=0),
                             attention_mask=mask.repeat_interleave(num_samples, dim=0),
                             past_key_values=cache, generation_config=config, **extra)
        return [cut_at_eos(row, self.eos) for row in out[:, width:].tolist()]

    def _prefill(self, model, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, DynamicCache | None]:
        """Ids, mask and a cache of every prompt but its last token, reading shared leading tokens once.

        Pass 1 reads the "head" prompts whole; pass 2 reads each other prompt's tokens after the part it shares
        with its head, on top of a copy of the head's cached keys and values. Row i is laid out as
        [pad, shared part | pad, rest]; positions come from the mask, so the padding in the middle is invisible.
        Both passes always run (pass 2 on one pad token when nothing needs it): ZeRO-3 ranks stay in step.
        """
        device = self.device
        source, shared = shared_prefixes(prompts)
        heads = sorted(set(source))
        head_ids, head_mask = self._left_pad([prompts[h][:-1] or [self._pad_id] for h in heads])
        head_cache = DynamicCache(config=model.config)
        model(input_ids=head_ids, attention_mask=head_mask, position_ids=_positions(head_mask),
              past_key_values=head_cache, use_cache=True, logits_to_keep=1)
        self.prefill_tokens += int(head_mask.sum())

        if not all(type(layer) is DynamicLayer for layer in head_cache.layers):
            # Sliding-window (or other) caches do not keep every position: read each prompt whole instead.
            model(input_ids=torch.full((1, 1), self._pad_id, device=device), logits_to_keep=1)  # pass 2's place
            return *self._left_pad(prompts), None
        rests = [p[c:] for p, c in zip(prompts, shared)]
        front, back = max(shared), max(len(r) for r in rests)
        rows = [[self._pad_id] * (front - c) + p[:c] + [self._pad_id] * (back - len(r)) + r
                for p, c, r in zip(prompts, shared, rests)]
        ids = torch.tensor(rows, device=device)
        mask = torch.tensor([[0] * (front - c) + [1] * c + [0] * (back - len(r)) + [1] * len(r)
                             for c, r in zip(shared, rests)], device=device)
        # The cache of every row: the head's keys and values of the shared part, then room for the rest.
        layers = []
        for layer in head_cache.layers:
            keys = layer.keys.new_zeros(len(prompts), layer.keys.size(1), front + back - 1, layer.keys.size(3))
            values = torch.zeros_like(keys)
            for i, (h, c) in enumerate(zip(source, shared)):
                k, end = heads.index(h), head_ids.size(1) - (len(prompts[h]) - 1) + c
                keys[i, :, front - c:front] = layer.keys[k, :, end - c:end]
                values[i, :, front - c:front] = layer.values[k, :, end - c:end]
            layers.append((keys, values))
        todo = [i for i, r in enumerate(rests) if len(r) > 1]
        cut = front + back - 1
        if todo:
            part = DynamicCache(config=model.config)
            for n, (keys, values) in enumerate(layers):
                part.update(keys[todo, :, :front], values[todo, :, :front], n)
            model(input_ids=ids[todo, front:cut], attention_mask=mask[todo, :cut],
                  position_ids=_positions(mask[todo])[:, front:cut], past_key_values=part, use_cache=True,
                  logits_to_keep=1)
            self.prefill_tokens += int(mask[todo, front:cut].sum())
            for (keys, values), layer in zip(layers, part.layers):
                keys[todo, :, front:] = layer.keys[:, :, front:]
                values[todo, :, front:] = layer.values[:, :, front:]
        else:
            model(input_ids=torch.full((1, 1), self._pad_id, device=device), logits_to_keep=1)
        cache = DynamicCache(config=model.config)
        for n, (keys, values) in enumerate(layers):
            cache.update(keys, values, n)
        return ids, mask, cache

    def _answer_logprobs(self, model, sequences, answer_sizes) -> list[float]:
        """Sum of log-probabilities of each sequence's last `answer_sizes[i]` tokens, in one forward pass."""
        ids, mask = self._left_pad(sequences)
        keep = max(answer_sizes) + 1
        logits = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask),
                       logits_to_keep=keep).logits[:, :-1].float()
        logps = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, -keep + 1:].unsqueeze(-1)).squeeze(-1)
        return [row[-size:].sum().item() for row, size in zip(logps, answer_sizes)]


def shared_prefixes(prompts: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """For each prompt, the head prompt whose cached tokens it reuses and how many leading tokens it takes.

    Longest prompts first; a prompt sharing no leading token with an earlier head becomes a head itself. A head
    reuses its own cache for all but its last token; no prompt takes its own last token from a cache.
    """
    source, shared, heads = [0] * len(prompts), [0] * len(prompts), []
    for i in sorted(range(len(prompts)), key=lambda i: -len(prompts[i])):
        p = prompts[i]
        best, best_len = None, 0
        for h in heads:
            n = min(_common_length(p, prompts[h]), len(p) - 1, len(prompts[h]) - 1)
            if n > best_len:
                best, best_len = h, n
        if best is None:
            heads.append(i)
            best, best_len = i, len(p) - 1
        source[i], shared[i] = best, best_len
    return source, shared


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch, as transformers' generate computes them."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class StopOnText(StoppingCriteria):
    """Stops a row once its new text contains a stop string (the string is kept, as with vLLM's
    include_stop_str_in_output). Cheaper than transformers' `stop_strings`, which indexes the whole vocabulary."""

    def __init__(self, tokenizer, stop: Sequence[str], prompt_width: int, window: int = 8):
        self.tokenizer, self.stop, self.start, self.window = tokenizer, list(stop), prompt_width, window

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        # Only the last few tokens can hold a newly completed stop string.
        tail = input_ids[:, max(self.start, input_ids.size(1) - self.window):]
        texts = self.tokenizer.batch_decode(tail, skip_special_tokens=True)
        return torch.tensor([any(s in text for s in self.stop) for text in texts], device=input_ids.device)
