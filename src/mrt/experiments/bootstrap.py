"""The bootstrap of a comparison's report (pure): per-problem tables of the units as arrays, resamples of seeds and
problems, and percentile intervals."""

from __future__ import annotations

import math
import warnings

import numpy as np

LEVEL = 0.95
_NEVER = 1e18  # stands for "never reaches the target" inside the bootstrap


def unit_array(units: list[dict], key: str) -> np.ndarray:
    """(seeds, problems, k) array of one per-problem table; NaN for None."""
    rows = [[v if isinstance(v, list) else [v] for v in u["per_problem"][key]] for u in units]
    return np.array([[[math.nan if x is None else x for x in v] for v in r] for r in rows], dtype=float)


def draws(num_seeds: int, num_problems: int, resamples: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Bootstrap resamples: seeds drawn with replacement, then problems drawn with replacement."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, num_seeds, num_seeds), rng.integers(0, num_problems, num_problems))
            for _ in range(resamples)]


def per_column_mean(values: np.ndarray) -> np.ndarray:
    """Mean of each of the last axis's columns over every other axis, NaNs left out (NaN where all are)."""
    flat = values.reshape(-1, values.shape[-1])
    with np.errstate(all="ignore"):
        counts = (~np.isnan(flat)).sum(axis=0)
        sums = np.nansum(flat, axis=0)
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def interval(values: np.ndarray, stat, resampled: list[tuple[np.ndarray, np.ndarray]], level: float = LEVEL):
    """(point estimate, low, high) of `stat` (a function of a (seeds, problems, k) array that returns a vector)."""
    point = np.asarray(stat(values), dtype=float)
    stats = np.array([stat(values[s][:, p]) for s, p in resampled], dtype=float)
    stats = np.where(np.isinf(stats), _NEVER, stats)  # "never reached" sorts last, and percentiles stay finite
    tail = (1 - level) / 2 * 100
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column that is NaN in every resample stays NaN
        low = np.nanpercentile(stats, tail, axis=0) if stats.size else np.full(point.shape, np.nan)
        high = np.nanpercentile(stats, 100 - tail, axis=0) if stats.size else np.full(point.shape, np.nan)
    return point, np.where(low >= _NEVER / 2, math.inf, low), np.where(high >= _NEVER / 2, math.inf, high)


def number(x) -> float | None:
    """A JSON number: None for None, NaN and infinities; 6 decimals."""
    return None if x is None or not math.isfinite(float(x)) else round(float(x), 6)
