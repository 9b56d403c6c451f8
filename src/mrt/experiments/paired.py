"""Paired statistics of a comparison (pure): each arm against a reference arm (GRPO) on the same seeds (same
training problems) and the same held-out problems. Per budget: the difference by seed, its bootstrap interval over
seeds and problems, a t interval over the seeds' differences, and the sign count over seeds with its two-sided
sign-test p. A claim that one arm beats another rests on these, not on overlapping per-arm intervals."""

from __future__ import annotations

import math

import numpy as np

from mrt.experiments.bootstrap import LEVEL, draws, interval, number, per_column_mean, unit_array


def sign_test(positive: int, negative: int) -> float:
    """Two-sided sign-test p of `positive` wins and `negative` losses (ties left out): the chance under a fair coin of
    a split at least this uneven."""
    n = positive + negative
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(positive, negative) + 1)) / 2**n
    return min(1.0, 2 * tail)


def _t_central(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with an integer `df` (the closed forms for odd and even df)."""
    theta = math.atan(t / math.sqrt(df))
    c2, term = math.cos(theta) ** 2, 1.0 if df % 2 == 0 else math.cos(theta)
    total = term
    for j in range(2 if df % 2 == 0 else 3, df - 1, 2):
        term *= (j - 1) / j * c2
        total += term
    if df % 2 == 0:
        return math.sin(theta) * total
    return 2 / math.pi * (theta + (math.sin(theta) * total if df > 1 else 0.0))


def t_quantile(level: float, df: int) -> float:
    """The t with P(|T| <= t) = `level` for Student's t with `df` degrees of freedom (e.g. 4.303 for 0.95, df 2)."""
    if not (0 < level < 1 and df >= 1):
        raise ValueError(f"t_quantile needs 0 < level < 1 and df >= 1, got {level}, {df}")
    low, high = 0.0, 1.0
    while _t_central(high, df) < level:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if _t_central(mid, df) < level else (low, mid)
    return (low + high) / 2


def t_interval(values, level: float = LEVEL) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high): Student's t interval of the mean of `values`; low and high are None under 2 values."""
    values = [float(v) for v in values]
    if not values:
        return None, None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = t_quantile(level, len(values) - 1) * sd / math.sqrt(len(values))
    return mean, mean - half, mean + half


def seed_means(values: np.ndarray) -> np.ndarray:
    """(seeds, k): the mean over problems of each seed of a (seeds, problems, k) array, NaNs left out."""
    return np.stack([per_column_mean(one) for one in values])


def mean_of_seed_means(values: np.ndarray) -> np.ndarray:
    """Per column, the mean over seeds of each seed's mean over problems: every seed weighs the same."""
    return per_column_mean(seed_means(values))


def paired_rows(units: list[dict], reference: list[dict], key: str, xs: list, x_name: str, resamples: int,
                seed: int, level: float = LEVEL) -> list[dict]:
    """Per x (budget or cutoff) of the per-problem table `key`: arm - reference on the seeds both evaluated."""
    mine = {u["seed"]: u for u in units if "per_problem" in u}
    theirs = {u["seed"]: u for u in reference if "per_problem" in u}
    seeds = sorted(set(mine) & set(theirs))
    if not seeds:
        return []
    a, b = unit_array([mine[s] for s in seeds], key), unit_array([theirs[s] for s in seeds], key)
    if a.shape != b.shape:
        raise ValueError(f"paired statistics need the same problems and budgets for both arms: {key} has shape "
                         f"{a.shape} against the reference's {b.shape}")
    diff = a - b
    by_seed = seed_means(diff)
    point, low, high = interval(diff, mean_of_seed_means, draws(len(seeds), diff.shape[1], resamples, seed), level)
    rows = []
    for k, x in enumerate(xs):
        known = [(s, float(d)) for s, d in zip(seeds, by_seed[:, k]) if not math.isnan(d)]
        positive, negative = sum(d > 0 for _, d in known), sum(d < 0 for _, d in known)
        _, t_low, t_high = t_interval([d for _, d in known], level)
        rows.append({x_name: x, "mean": number(point[k]), "low": number(low[k]), "high": number(high[k]),
                     "n_seeds": len(known), "by_seed": {str(s): number(d) for s, d in known},
                     "t_low": number(t_low), "t_high": number(t_high), "positive": positive, "negative": negative,
                     "ties": len(known) - positive - negative, "sign_p": number(sign_test(positive, negative))})
    return rows


def with_gain(units: list[dict], start: int, end: int) -> list[dict]:
    """The units with one more per-problem table, "gain": accuracy at budget column `end` minus at `start`."""
    out = []
    for u in units:
        rows = u["per_problem"]["accuracy"]
        gain = [None if r[start] is None or r[end] is None else r[end] - r[start] for r in rows]
        out.append({**u, "per_problem": {**u["per_problem"], "gain": gain}})
    return out


def paired_report(groups: dict[str, list[dict]], reference: str, budgets: list[int], resamples: int, seed: int,
                  level: float = LEVEL, extrapolation: tuple[int, int] | None = None) -> dict | None:
    """Every arm but the base and the reference against the reference: accuracy at each budget and regret at each
    cutoff; with `extrapolation` (the budget columns of B and of the largest budget), the difference of the
    extrapolation gain (accuracy at the largest budget minus at B) too. None when the reference arm has no evaluated
    unit."""
    ref = [u for u in groups.get(reference, []) if "per_problem" in u]
    if not ref:
        return None
    cutoffs = ref[0]["per_problem"]["cutoffs"]
    arms = {}
    for arm, units in groups.items():
        if arm in ("base", reference):
            continue
        seeds = sorted({u["seed"] for u in units if "per_problem" in u} & {u["seed"] for u in ref})
        if seeds:
            arms[arm] = {"seeds": seeds,
                         "accuracy": paired_rows(units, ref, "accuracy", budgets, "budget", resamples, seed, level),
                         "regret": paired_rows(units, ref, "regret", cutoffs, "cutoff", resamples, seed, level)}
            if extrapolation:
                start, end = extrapolation
                mine = with_gain([u for u in units if "per_problem" in u], start, end)
                arms[arm]["extrapolation_gain"] = paired_rows(mine, with_gain(ref, start, end), "gain",
                                                              [f"{budgets[end]}-{budgets[start]}"], "budgets",
                                                              resamples, seed, level)
    return {"reference": reference, "level": level, "difference": f"arm - {reference}",
            "bootstrap_over": "paired seeds, then problems, with replacement", "t_over": "the seeds' differences",
            "arms": arms}
