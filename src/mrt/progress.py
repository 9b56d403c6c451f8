"""From prover success rates J to progress, per-token advantages and regret (pure tensor code)."""

from collections.abc import Sequence

import torch


def progress(j_values: Sequence[float]) -> list[float]:
    """progress_j = J_j - J_{j-1} for j = 1..H, given J_0..J_H (J_H is the real outcome)."""
    return [b - a for a, b in zip(j_values[:-1], j_values[1:])]


def episode_bonus(ends_per_row: Sequence[Sequence[int]], progress_per_row: Sequence[Sequence[float]],
                  length: int) -> torch.Tensor:
    """(B, T) tensor whose token t of row i holds the progress of the episode containing t (0 past the end)."""
    bonus = torch.zeros(len(ends_per_row), length, dtype=torch.float32)
    for row, (ends, prog) in enumerate(zip(ends_per_row, progress_per_row, strict=True)):
        if len(ends) != len(prog):
            raise ValueError(f"row {row}: {len(ends)} episodes but {len(prog)} progress values")
        start = 0
        for end, value in zip(ends, prog):
            bonus[row, start:min(end, length)] = value
            start = end
    return bonus


def token_advantages(sequence_advantages: torch.Tensor, bonus: torch.Tensor, alpha: float) -> torch.Tensor:
    """A_t = A(z) + alpha * progress_{j(t)}; with alpha = 0 this is A(z) broadcast over tokens, exactly."""
    if sequence_advantages.dim() != 1 or bonus.dim() != 2 or bonus.size(0) != sequence_advantages.size(0):
        raise ValueError(
            f"expected advantages (B,) and bonus (B, T), got {tuple(sequence_advantages.shape)} and {tuple(bonus.shape)}"
        )
    advantages = sequence_advantages.unsqueeze(1).expand(-1, bonus.size(1))
    if alpha == 0:
        return advantages.clone()
    return advantages + alpha * bonus.to(device=advantages.device, dtype=advantages.dtype)


def termination_advantages(outcomes: Sequence[float], j0: Sequence[float]) -> torch.Tensor:
    """Sequence advantage r - J_0: the prover's success from the prompt alone is the baseline."""
    return torch.tensor([r - j for r, j in zip(outcomes, j0, strict=True)], dtype=torch.float32)


def regret(j_values: Sequence[float], ends: Sequence[int]) -> float:
    """1 - normalised area under the J-against-tokens step curve of one completion.

    During episode j the best answer available is the one mu gives from the prefix before it (J_{j-1}), so the
    curve holds J_{j-1} over that episode's tokens. A stream whose J is 1 from the start has regret 0.
    """
    if not ends:
        return 1.0 - float(j_values[0])
    area, start = 0.0, 0
    for j, end in enumerate(ends):
        area += float(j_values[j]) * (end - start)
        start = end
    return 1.0 - area / ends[-1]
