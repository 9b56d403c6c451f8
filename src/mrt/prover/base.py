"""What every prover backend is: mu answers prover prompts (token ids of the policy's tokenizer).

One RNG: every backend samples from its own `torch.Generator`, seeded once (from the training seed), and never
reseeds or draws from the process's global RNG, so that turning the prover on leaves the policy's own sampling,
dropout and data order as they were. A call's `seed`, when given, makes that call reproducible on its own.
"""

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Protocol

import torch


class Prover(Protocol):
    """mu. Prompts are token ids: prompt + prefix + joiner + termination suffix (`mrt.prover.requests`)."""

    def generate(self, prompts: list[list[int]], num_samples: int, max_tokens: int, temperature: float,
                 stop: list[str] | None, seed: int | None = None) -> list[list[list[int]]]:
        """`num_samples` continuations per prompt, as token ids cut at the first EOS (a stop string is kept). Draws
        come from the prover's own generator, or from `seed` alone when it is given."""

    def likelihood(self, prompts: list[list[int]], answers: list[list[int]]) -> list[float]:
        """log P(answers[i] | prompts[i]) under mu: the sum of the answer tokens' log-probabilities."""


def cut_at_eos(ids: Sequence[int], eos: set[int]) -> list[int]:
    """A sample's tokens before its first EOS."""
    ids = list(ids)
    cut = next((k for k, tok in enumerate(ids) if tok in eos), len(ids))
    return ids[:cut]


SEED_LIMIT = 2**31 - 1  # seeds handed to engines (vLLM takes a 32-bit seed)


def own_generator(seed: int) -> torch.Generator:
    """The prover's own RNG (a CPU generator), seeded once."""
    return torch.Generator().manual_seed(int(seed))


def draw_seeds(generator: torch.Generator, count: int, seed: int | None = None) -> list[int]:
    """`count` seeds for one call: from `seed` alone when given, else the next draws of the prover's `generator`."""
    source = own_generator(seed) if seed is not None else generator
    return torch.randint(0, SEED_LIMIT, (count,), generator=source).tolist()


@contextmanager
def isolated_rng(seed: int, device):
    """Within the block the global RNG (CPU, and `device` when it is a CUDA device) starts from `seed`; after it,
    the states are what they were (`torch.random.fork_rng`). For libraries that sample with the global RNG
    (transformers' `generate`)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.default_generator.manual_seed(int(seed))
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(int(seed))
        yield


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts as one left-padded batch of ids, and its attention mask."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask


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
