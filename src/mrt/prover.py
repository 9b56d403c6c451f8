"""Prover requests and backends: mu finishes the answer from every episode prefix."""

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
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


class Prover(Protocol):
    """What the trainer asks of mu. Prompts are token ids of the policy's tokenizer (prompt + prefix + suffix)."""

    def generate(self, prompts: list[list[int]], num_samples: int, max_tokens: int, temperature: float,
                 stop: list[str] | None) -> list[list[list[int]]]:
        """`num_samples` continuations per prompt, as token ids (a stop string is kept, EOS is not)."""

    def likelihood(self, prompts: list[list[int]], answers: list[list[int]]) -> list[float]:
        """log P(answers[i] | prompts[i]) under mu: the sum of the answer tokens' log-probabilities."""


def make_prover(trainer) -> Prover:
    """The prover backend the trainer's config asks for."""
    return PolicyProver(trainer)


class PolicyProver:
    """mu = the current policy through the trainer's own transformers generation.

    All requests go through one unwrap-for-generation context, chunked to `prover_batch_size` sequences. Every rank
    makes the same number of generate calls (ranks with fewer chunks run a one-token dummy call) so that ZeRO-3's
    collective parameter gathers stay in step.
    """

    def __init__(self, trainer):
        self.trainer = trainer

    def generate(self, prompts: list[list[int]], num_samples: int, max_tokens: int, temperature: float,
                 stop: list[str] | None) -> list[list[list[int]]]:
        t, args = self.trainer, self.trainer.args
        per_call = max(1, args.prover_batch_size // num_samples)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        chunks = [order[k:k + per_call] for k in range(0, len(order), per_call)]
        calls = _max_over_ranks(len(chunks), t.accelerator)
        config = copy.deepcopy(t.generation_config)
        config.max_new_tokens, config.temperature, config.num_return_sequences = max_tokens, temperature, num_samples
        dummy_config = copy.deepcopy(config)
        dummy_config.max_new_tokens, dummy_config.num_return_sequences = 1, 1
        results: list = [None] * len(prompts)
        with (
            unwrap_model_for_generation(
                t.model_wrapped, t.accelerator, gather_deepspeed3_params=args.ds3_gather_for_generation,
                generation_kwargs=t.generation_kwargs,
                gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
            ) as model,
            torch.no_grad(),
            t._dist.summon_full_params(t.model_wrapped, recurse=False),
        ):
            for call in range(calls):
                if call < len(chunks):
                    chunk = chunks[call]
                    out = self._generate(model, [prompts[i] for i in chunk], config, stop)
                    for k, i in enumerate(chunk):
                        results[i] = out[k * num_samples:(k + 1) * num_samples]
                else:
                    self._generate(model, [[t._tokenizer.pad_token_id]], dummy_config, None)
        return results

    def _generate(self, model, prompts, config, stop) -> list[list[int]]:
        t = self.trainer
        device = t.accelerator.device
        width = max(len(p) for p in prompts)
        pad_id = t._tokenizer.pad_token_id
        input_ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        extra = {"stopping_criteria": StoppingCriteriaList([StopOnText(t._tokenizer, stop, width)])} if stop else {}
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config, **extra)
        eos = {*t.eos_token_ids, t._tokenizer.pad_token_id}  # finished rows are padded
        samples = []
        for row in out[:, width:].tolist():
            cut = next((k for k, tok in enumerate(row) if tok in eos), len(row))
            samples.append(row[:cut])
        return samples


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
