"""Success is what the trainer's reward functions say: J from mu's samples, scored like the policy's completions.

`RewardScorer` calls reward functions with TRL's signature `(prompts, completions, completion_ids, **columns)` and
combines them as GRPOTrainer does (weighted sum over the functions that returned a value; None when none did). Every
reward function sees a prover sample as what mu wrote: `completions` holds mu's text (behind the suffix's open
\\boxed{ when the suffix ends inside one: `forced_text`) in the policy's completion format, `completion_ids` mu's
tokens, and the episode prefix and the appended joiner + termination suffix travel in the reward kwargs
`prover_prefix` and `prover_suffix` (`prover_columns`). So any reward (TRL's `accuracy_reward`, a user's) grades mu's
answer and never one from the prefix; the default reward knows a prover sample by those kwargs (`mrt.rewards`).
"""

import asyncio
import inspect
import math
from collections.abc import Sequence

import torch
from torch import nn

from mrt.prover.base import max_over_ranks
from mrt.rewards.accuracy import PROVER_PREFIX, PROVER_SUFFIX, last_box
from mrt.rewards.combine import weighted_sum

CHUNK = 64  # sequences per reward-model forward pass


def forced_text(suffix_text: str, continuation: str) -> str:
    """What mu answered: its continuation, behind the suffix's open \\boxed{ when the suffix ends inside one."""
    box = last_box(suffix_text)
    return suffix_text[box[0]:] + continuation if box is not None and not box[2] else continuation


def as_completion(text: str, conversational: bool):
    """A completion in the format GRPOTrainer gives reward functions."""
    return [{"role": "assistant", "content": text}] if conversational else text


def prover_completion(suffix_text: str, continuation: str, conversational: bool):
    """A prover sample as reward functions see it: what mu wrote (`forced_text`) in the policy's completion format."""
    return as_completion(forced_text(suffix_text, continuation), conversational)


def prover_columns(prefix: str, appended: str) -> dict[str, str]:
    """The reward kwargs (row columns) of a prover sample: the episode prefix the policy wrote, and what was appended
    to it (joiner + termination suffix)."""
    return {PROVER_PREFIX: prefix, PROVER_SUFFIX: appended}


def _noop(*args, **kwargs):
    return None


class RewardScorer:
    """Reward functions (callables or sequence-classification models) and their weights, combined as GRPO does.

    `only` restricts the combination to some functions (names or indices): e.g. accuracy but not format for J.
    """

    def __init__(self, reward_funcs, reward_weights: Sequence[float] | None = None, processing_classes=None,
                 names: Sequence[str] | None = None, only: Sequence | None = None, accelerator=None,
                 chat_template_kwargs: dict | None = None):
        self.funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        self.names = list(names) if names is not None else [_name(f) for f in self.funcs]
        weights = [1.0] * len(self.funcs) if reward_weights is None else [float(w) for w in reward_weights]
        if len(weights) != len(self.funcs):
            raise ValueError(f"{len(weights)} reward weights for {len(self.funcs)} reward functions")
        self.weights = torch.tensor(weights, dtype=torch.float32)
        self.processing_classes = list(processing_classes or [None] * len(self.funcs))
        self.accelerator, self.chat_template_kwargs = accelerator, chat_template_kwargs or {}
        self.selected = self._select(only)

    @classmethod
    def from_trainer(cls, trainer) -> "RewardScorer":
        return cls(trainer.reward_funcs, trainer.reward_weights.tolist(), trainer.reward_processing_classes,
                   trainer.reward_func_names, trainer.args.progress_reward_funcs, trainer.accelerator,
                   getattr(trainer, "chat_template_kwargs", None))

    def _select(self, only) -> list[int]:
        if only is None:
            return list(range(len(self.funcs)))
        picked = []
        for item in only:
            if isinstance(item, int) and 0 <= item < len(self.funcs):
                picked.append(item)
            elif isinstance(item, str) and item in self.names:
                picked.append(self.names.index(item))
            elif isinstance(item, str) and item.isdigit() and int(item) < len(self.funcs):
                picked.append(int(item))
            else:
                raise ValueError(f"MRTConfig.progress_reward_funcs = {list(only)!r} is invalid: {item!r} is not one "
                                 f"of the reward functions {self.names} (names or indices).")
        return sorted(set(picked))

    def combine(self, per_function: torch.Tensor) -> list[float | None]:
        """Weighted sum over the selected functions that returned a value (N, F) -> N; None where none did."""
        total = weighted_sum(per_function[:, self.selected], self.weights[self.selected])
        return [None if torch.isnan(v) else float(v) for v in total]

    def per_function(self, prompts: list, completions: list, completion_ids: list[list[int]], rows: list[dict],
                     **extra) -> torch.Tensor:
        """(N, F) rewards, NaN where a function returned None (and for functions left out by `only`)."""
        out = torch.full((len(completions), len(self.funcs)), math.nan)
        columns = {k: [row[k] for row in rows] for k in (rows[0] if rows else {})
                   if k not in ("prompt", "completion", "completion_ids")}
        kwargs = {"log_extra": _noop, "log_metric": _noop, **columns, **extra}
        for i in self.selected:
            func = self.funcs[i]
            if isinstance(func, nn.Module):
                values = self._model_rewards(func, self.processing_classes[i], prompts, completions)
            else:
                values = func(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
                if inspect.isawaitable(values):
                    values = asyncio.run(_await(values))
                values = [math.nan if v is None else float(v) for v in values]
            if len(values) != len(completions):
                raise ValueError(f"The reward function {self.names[i]!r} returned {len(values)} rewards for "
                                 f"{len(completions)} completions.")
            out[:, i] = torch.tensor(values, dtype=torch.float32)
        return out

    def __call__(self, prompts, completions, completion_ids, rows, **extra) -> list[float | None]:
        return self.combine(self.per_function(prompts, completions, completion_ids, rows, **extra))

    def _model_rewards(self, model, tokenizer, prompts, completions) -> list[float]:
        """A sequence-classification reward model's first logit per text, in chunks. Every rank makes the same
        number of forward passes (a ZeRO-3 model gathers its parameters collectively)."""
        if prompts and isinstance(prompts[0], list):
            texts = [tokenizer.apply_chat_template(p + c, tokenize=False, **self.chat_template_kwargs)
                     for p, c in zip(prompts, completions, strict=True)]
        else:
            texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        chunks = [texts[k:k + CHUNK] for k in range(0, len(texts), CHUNK)]
        calls = max_over_ranks(len(chunks), self.accelerator)
        device = next(model.parameters()).device
        values: list[float] = []
        with torch.inference_mode():
            for k in range(calls):
                batch = tokenizer(text=chunks[k] if k < len(chunks) else ["."], return_tensors="pt", padding=True,
                                  padding_side="right", add_special_tokens=False).to(device)
                logits = model(**batch).logits[:, 0].float().tolist()
                if k < len(chunks):
                    values += logits
        return values


async def _await(value):
    return await value


def _name(func) -> str:
    if isinstance(func, nn.Module):
        return func.config._name_or_path.split("/")[-1]
    return getattr(func, "__name__", type(func).__name__)


def sample_success(requests, samples: list[list[list[int]]], decode, suffix_text: str, scorer: RewardScorer,
                   prompts: list, prompt_ids: list[list[int]], rows: list[dict], conversational: bool,
                   reward_kwargs: dict | None = None) -> tuple[list[float | None], list[list[float | None]]]:
    """J per request (the mean reward of mu's samples) and every sample's reward.

    Each sample is scored as what mu wrote (`prover_completion`, mu's tokens as its ids) with the row of the
    completion that asked it, plus the prefix and suffix columns (`prover_columns`); an empty answer too (the default
    reward gives it 0). A sample every reward function returned None for is left out of the mean (J is None when all
    are). `prompt_ids` is kept for the callers' signature: the prompt is never part of what is scored.
    """
    owners, completions, ids, sample_rows = [], [], [], []
    for r, group in enumerate(samples):
        owner = requests.owner[r]
        prefix = requests.prefix_texts[r]
        columns = prover_columns(prefix, requests.texts[r][len(prefix):])
        for sample in group:
            owners.append(owner)
            completions.append(prover_completion(suffix_text, decode(sample), conversational))
            ids.append(list(sample))
            sample_rows.append({**rows[owner], **columns})
    values = scorer([prompts[o] for o in owners], completions, ids, sample_rows, **(reward_kwargs or {})) \
        if owners else []
    per_sample, k = [], 0
    for group in samples:
        per_sample.append(list(values[k:k + len(group)]))
        k += len(group)
    rates = []
    for scores in per_sample:
        known = [s for s in scores if s is not None]
        rates.append(sum(known) / len(known) if known else None)
    return rates, per_sample
