"""What every prover backend is: mu answers prover prompts (token ids of the policy's tokenizer)."""

from collections.abc import Iterable, Sequence
from typing import Protocol

import torch


class Prover(Protocol):
    """mu. Prompts are token ids: prompt + prefix + joiner + termination suffix (`mrt.prover.requests`)."""

    def generate(self, prompts: list[list[int]], num_samples: int, max_tokens: int, temperature: float,
                 stop: list[str] | None, seed: int | None = None) -> list[list[list[int]]]:
        """`num_samples` continuations per prompt, as token ids cut at the first EOS (a stop string is kept)."""

    def likelihood(self, prompts: list[list[int]], answers: list[list[int]]) -> list[float]:
        """log P(answers[i] | prompts[i]) under mu: the sum of the answer tokens' log-probabilities."""


def eos_ids(tokenizer, declared: int | Iterable[int] | None = None) -> set[int]:
    """The ids that end a sample of this model: the tokenizer's EOS, every EOS the model declares (its generation
    config), and the padding id (finished rows of a batch are padded)."""
    ids = [declared] if isinstance(declared, int) else list(declared or [])
    ids += [tokenizer.eos_token_id, tokenizer.pad_token_id]
    return {int(i) for i in ids if i is not None}


def cut_at_eos(ids: Sequence[int], eos: set[int]) -> list[int]:
    """A sample's tokens before its first EOS."""
    ids = list(ids)
    cut = next((k for k, tok in enumerate(ids) if tok in eos), len(ids))
    return ids[:cut]


def check_answers(answers: Sequence[Sequence[int]]) -> None:
    if any(not a for a in answers):
        raise ValueError("Every answer needs at least one token to score its likelihood.")


def chunks(items: Sequence, size: int) -> list:
    return [items[k:k + size] for k in range(0, len(items), size)]


def max_over_ranks(value: int, accelerator) -> int:
    """The largest `value` over the ranks (every rank must make as many collective model calls as the busiest)."""
    if accelerator is None or accelerator.num_processes == 1:
        return value
    return int(accelerator.gather(torch.tensor([value], device=accelerator.device)).max().item())
