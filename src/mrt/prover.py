"""Prover requests and backends: mu finishes the answer from every episode prefix."""

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import DynamicLayer
from trl.models.utils import unwrap_model_for_generation

from mrt.config import SUFFIX_PRESETS
from mrt.rewards import score_continuation


def termination_suffix(suffix: str, end_of_thinking_tag: str | None) -> str:
    """The suffix text: a preset ('authors', 'boxed') with the tag in place, or literal text as given."""
    if suffix not in SUFFIX_PRESETS:
        return suffix
    before, after = SUFFIX_PRESETS[suffix]
    return before + (end_of_thinking_tag or "") + after


@dataclass
class ProverBatch:
    """The unique prover prompts of a generation batch and where each completion's prefixes went."""

    prompts: list[list[int]] = field(default_factory=list)  # prompt + prefix + suffix token ids
    texts: list[str] = field(default_factory=list)  # decoded prefix + suffix, scored with mu's continuation
    golds: list = field(default_factory=list)
    index: list[list[int]] = field(default_factory=list)  # index[i][j]: request of completion i's prefix j
    asked: int = 0  # requests before de-duplication


def build_batch(prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]],
                prefix_lengths: Sequence[Sequence[int]], golds: Sequence, suffix_ids: Sequence[int],
                suffix_text: str, decode) -> ProverBatch:
    """One request per (completion, prefix); identical prompts with the same gold are asked once."""
    batch, seen = ProverBatch(), {}
    for prompt, completion, lengths, gold in zip(prompt_ids, completion_ids, prefix_lengths, golds, strict=True):
        row = []
        for b in lengths:
            key = (tuple(prompt), tuple(completion[:b]), str(gold))
            batch.asked += 1
            if key not in seen:
                seen[key] = len(batch.prompts)
                batch.prompts.append([*prompt, *completion[:b], *suffix_ids])
                batch.texts.append(decode(completion[:b]) + suffix_text)
                batch.golds.append(gold)
            row.append(seen[key])
        batch.index.append(row)
    return batch


def success_rates(batch: ProverBatch, samples: Sequence[Sequence[str]]) -> list[float | None]:
    """J per request: the mean 0/1 score of mu's samples (None when the gold cannot be parsed)."""
    rates = []
    for text, gold, continuations in zip(batch.texts, batch.golds, samples, strict=True):
        scores = [score_continuation(text, c, gold) for c in continuations]
        rates.append(None if any(s is None for s in scores) else sum(scores) / len(scores))
    return rates


def likelihood_rates(prover: "Prover", batch: ProverBatch, encode, answer_format: str) -> list[float | None]:
    """J per request for the likelihood estimator: the probability that mu writes the formatted gold answer right
    after the suffix (None when the request has no gold). `encode` maps text to token ids without special tokens."""
    answers = [encode(answer_format.replace("{answer}", str(gold).strip()))
               if gold is not None and str(gold).strip() else None for gold in batch.golds]
    known = [i for i, a in enumerate(answers) if a]
    # Called even with nothing to score: under ZeRO-3 every rank must take part in the model calls.
    logps = prover.likelihood([batch.prompts[i] for i in known], [answers[i] for i in known])
    rates: list[float | None] = [None] * len(answers)
    for i, value in zip(known, logps, strict=True):
        rates[i] = math.exp(value)
    return rates


class Prover(Protocol):
    """What the trainer asks of mu. Prompts are token ids of the policy's tokenizer (prompt + prefix + suffix)."""

    def generate(self, prompts: list[list[int]], num_samples: int, max_tokens: int, temperature: float,
                 stop: list[str] | None) -> list[list[list[int]]]:
        """`num_samples` continuations per prompt, as token ids (a stop string is kept, EOS is not)."""

    def likelihood(self, prompts: list[list[int]], answers: list[list[int]]) -> list[float]:
        """log P(answers[i] | prompts[i]) under mu: the sum of the answer tokens' log-probabilities."""


def make_prover(trainer) -> Prover:
    """The prover backend the trainer's config asks for: a frozen mu on its own vLLM server (`prover: server`),
    or mu = the policy through the trainer's own generation engine (TRL's vLLM when `use_vllm`, else the
    transformers model)."""
    if trainer.args.prover == "server":
        from mrt.prover_server import ServerProver  # needs the `openai` package (the `server` extra)

        return ServerProver.from_trainer(trainer)
    if trainer.args.use_vllm:
        from mrt.prover_vllm import VLLMPolicyProver  # imports nothing from vLLM until it generates

        return VLLMPolicyProver(trainer)
    return PolicyProver(trainer)


class PolicyProver:
    """mu = the current policy through the trainer's own transformers model.

    All requests go through one unwrap-for-generation context, in chunks of at most `prover_batch_size` sequences.
    `generate` reads each prompt once and branches its `num_samples` samples from the cached keys and values;
    `likelihood` is one teacher-forced pass per chunk. Every rank makes the same number of model calls (ranks with
    fewer chunks run a tiny dummy chunk) so that ZeRO-3's collective parameter gathers stay in step.
    """

    def __init__(self, trainer):
        self.trainer = trainer

    def generate(self, prompts: list[list[int]], num_samples: int, max_tokens: int, temperature: float,
                 stop: list[str] | None) -> list[list[list[int]]]:
        config = copy.deepcopy(self.trainer.generation_config)
        config.max_new_tokens, config.temperature, config.num_return_sequences = max_tokens, temperature, 1
        dummy = copy.deepcopy(config)
        dummy.max_new_tokens = 1
        per_call = max(1, self.trainer.args.prover_batch_size // num_samples)

        def call(model, chunk: list[int] | None) -> list:
            if chunk is None:
                self._branch(model, [[self._pad_id] * 2], dummy, 1, None)
                return []
            out = self._branch(model, [prompts[i] for i in chunk], config, num_samples, stop)
            return [out[k * num_samples:(k + 1) * num_samples] for k in range(len(chunk))]

        return self._in_chunks([len(p) for p in prompts], per_call, call)

    def likelihood(self, prompts: list[list[int]], answers: list[list[int]]) -> list[float]:
        if any(not a for a in answers):
            raise ValueError("Every answer needs at least one token to score its likelihood.")
        pairs = [[*p, *a] for p, a in zip(prompts, answers, strict=True)]

        def call(model, chunk: list[int] | None) -> list:
            if chunk is None:
                self._answer_logprobs(model, [[self._pad_id] * 2], [1])
                return []
            return self._answer_logprobs(model, [pairs[i] for i in chunk], [len(answers[i]) for i in chunk])

        return self._in_chunks([len(p) for p in pairs], self.trainer.args.prover_batch_size, call)

    @property
    def _pad_id(self) -> int:
        return self.trainer._tokenizer.pad_token_id

    def _in_chunks(self, lengths: list[int], per_call: int, call) -> list:
        """`call(model, indices)` over chunks of items of similar length, inside one unwrap context; results in
        input order. `call(model, None)` is the dummy call of a rank that has run out of chunks."""
        t, args = self.trainer, self.trainer.args
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        chunks = [order[k:k + per_call] for k in range(0, len(order), per_call)]
        calls = _max_over_ranks(len(chunks), t.accelerator)
        results: list = [None] * len(lengths)
        with (
            unwrap_model_for_generation(
                t.model_wrapped, t.accelerator, gather_deepspeed3_params=args.ds3_gather_for_generation,
                generation_kwargs=t.generation_kwargs,
                gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
            ) as model,
            torch.no_grad(),
            t._dist.summon_full_params(t.model_wrapped, recurse=False),
        ):
            for k in range(calls):
                if k >= len(chunks):
                    call(model, None)
                    continue
                for i, value in zip(chunks[k], call(model, chunks[k]), strict=True):
                    results[i] = value
        return results

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        device = self.trainer.accelerator.device
        ids = torch.tensor([[self._pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        return ids, mask

    def _branch(self, model, prompts, config, num_samples, stop) -> list[list[int]]:
        """Prefill the prompts (shared leading tokens once), copy each cache `num_samples` times and sample; the
        returned rows are grouped by prompt."""
        ids, mask, cache = self._prefill(model, prompts)
        width = ids.size(1)
        if cache is not None:
            cache.batch_repeat_interleave(num_samples)
        extra = {"stopping_criteria": StoppingCriteriaList([StopOnText(self.trainer._tokenizer, stop, width)])} \
            if stop else {}
        out = model.generate(input_ids=ids.repeat_interleave(num_samples, dim=0),
                             attention_mask=mask.repeat_interleave(num_samples, dim=0),
                             past_key_values=cache, generation_config=config, **extra)
        eos = {*self.trainer.eos_token_ids, self._pad_id}  # finished rows are padded
        samples = []
        for row in out[:, width:].tolist():
            cut = next((k for k, tok in enumerate(row) if tok in eos), len(row))
            samples.append(row[:cut])
        return samples

    def _prefill(self, model, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, DynamicCache | None]:
        """Ids, mask and a cache of every prompt but its last token, reading shared leading tokens once.

        Pass 1 reads the "head" prompts whole; pass 2 reads each other prompt's tokens after the part it shares
        with its head, on top of a copy of the head's cached keys and values. Row i is laid out as
        [pad, shared part | pad, rest]; positions come from the mask, so the padding in the middle is invisible.
        Both passes always run (pass 2 on one pad token when nothing needs it): ZeRO-3 ranks stay in step.
        """
        device = self.trainer.accelerator.device
        source, shared = shared_prefixes(prompts)
        heads = sorted(set(source))
        head_ids, head_mask = self._left_pad([prompts[h][:-1] or [self._pad_id] for h in heads])
        head_cache = DynamicCache(config=model.config)
        model(input_ids=head_ids, attention_mask=head_mask, position_ids=_positions(head_mask),
              past_key_values=head_cache, use_cache=True, logits_to_keep=1)

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


def _max_over_ranks(value: int, accelerator) -> int:
    if accelerator.num_processes == 1:
        return value
    return int(accelerator.gather(torch.tensor([value], device=accelerator.device)).max().item())
