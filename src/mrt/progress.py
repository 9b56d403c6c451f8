"""From prover success rates J to progress, per-token advantages and regret; curve areas (pure code)."""

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
    """Training's `mrt/regret` of one completion: `regret_at` its own J curve (J_0..J_H measured at 0 and after each
    episode) at its own length. An empty completion: 1 - J_0."""
    if not ends:
        return 1.0 - float(j_values[0])
    values = list(j_values[:len(ends) + 1])
    return regret_at([0, *ends[:-1], ends[-1]][:len(values)], values, ends[-1])


# ---------------------------------------------------------------- curves of J (or accuracy) against tokens
#
# A curve is given by points (tokens[i], values[i]) with non-decreasing tokens. It starts at (0, 0) unless its
# first point is at 0 tokens, is held flat after its last point, and between points is linear (or, with
# step=True, holds each point's value until the next point).


def _curve_points(tokens: Sequence[float], values: Sequence[float]) -> list[tuple[float, float]]:
    if len(tokens) != len(values) or not tokens:
        raise ValueError(f"a curve needs as many tokens as values, at least one: got {len(tokens)} and {len(values)}")
    points = [(float(t), float(v)) for t, v in zip(tokens, values)]
    if points[0][0] < 0 or any(b[0] < a[0] for a, b in zip(points, points[1:])):
        raise ValueError(f"curve tokens must be >= 0 and non-decreasing, got {list(tokens)}")
    if points[0][0] > 0:
        points.insert(0, (0.0, 0.0))
    return points


def curve_value(tokens: Sequence[float], values: Sequence[float], at: float, step: bool = False) -> float:
    """The curve's value at `at` tokens (at a jump, the value after it)."""
    points = _curve_points(tokens, values)
    value = points[0][1]
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        if at < t1:
            if step or t1 == t0:
                return v0
            return v0 + (v1 - v0) * (at - t0) / (t1 - t0)
        value = v1
    return value


def curve_area(tokens: Sequence[float], values: Sequence[float], cutoff: float, step: bool = False) -> float:
    """Area under the curve between 0 and `cutoff` tokens."""
    if not cutoff > 0:
        raise ValueError(f"cutoff must be > 0, got {cutoff}")
    points = _curve_points(tokens, values)
    area = 0.0
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        if t0 >= cutoff:
            break
        if t1 == t0:  # a jump: no width
            continue
        end = min(t1, cutoff)
        if step:
            area += (end - t0) * v0
        else:
            v_end = v0 + (v1 - v0) * (end - t0) / (t1 - t0)
            area += (end - t0) * (v0 + v_end) / 2
    last_t, last_v = points[-1]
    if last_t < cutoff:
        area += (cutoff - last_t) * last_v
    return area


def j_at(tokens: Sequence[float], values: Sequence[float], at: float) -> float:
    """A J-against-tokens curve at `at` tokens: the J measured last at or before `at` (a step curve), the curve
    whose area `regret_at` measures. Points as for `curve_value`; (0, 0) before a first point above 0 tokens."""
    return curve_value(tokens, values, at, step=True)


def regret_at(tokens: Sequence[float], values: Sequence[float], cutoff: float) -> float:
    """THE cumulative regret (training's metric, the evaluation, MRT-STaR's ranking): 1 - the area under the J
    step curve (`j_at`) up to `cutoff` tokens, divided by the cutoff. 0 for a curve at 1 from the start, 1 for a
    curve that stays at 0.

    The paper's regret sums, over episodes, the gap between the best success rate and mu's success J from the
    prefix so far; per token, that is the J last measured: during episode j the best answer available is mu's from
    the prefix before it (J_{j-1}), and an episode is credited with its progress only once it is written. A linear
    curve would credit it gradually, before the tokens that make it are there.
    """
    return 1.0 - curve_area(tokens, values, cutoff, step=True) / cutoff


def tokens_to_reach(tokens: Sequence[float], values: Sequence[float], target: float) -> float | None:
    """The fewest tokens at which the (linear) curve reaches `target`; None if it never does."""
    points = _curve_points(tokens, values)
    if points[0][1] >= target:
        return points[0][0]
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        if v1 >= target:
            return t1 if t1 == t0 else t0 + (target - v0) * (t1 - t0) / (v1 - v0)
    return None


def efficiency_ratios(needed: Sequence[float | None]) -> list[float | None]:
    """Tokens each curve needs (from tokens_to_reach) as a ratio to the first one's; None where either never
    reaches the target, or where the first needs no tokens at all and the other does."""
    first = needed[0] if needed else None
    ratios: list[float | None] = []
    for n in needed:
        if first is None or n is None:
            ratios.append(None)
        elif first == 0:
            ratios.append(1.0 if n == 0 else None)
        else:
            ratios.append(n / first)
    return ratios
