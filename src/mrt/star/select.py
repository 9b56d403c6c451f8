"""MRT (STaR) selection: which self-generated traces to fine-tune on, where to cut them, and the summary (pure code).

A scored trace is a dict with
    "tokens":        its length in tokens,
    "outcome":       its own reward (J_H), None when it cannot be scored,
    "j_tokens":      b_0 = 0, b_1, ..., b_{H-1}, then its length: where each J value is measured,
    "j_values":      J_0 .. J_{H-1} from mu (None where unscorable), then J_H = outcome,
    "answer_scores": per prefix j < H, the score of mu's best answer from that prefix (None: no answer kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mrt.progress import j_at, regret_at

SELECTIONS = ("progress", "correct")


@dataclass(frozen=True)
class Choice:
    """A trace picked for training: its index within its problem, and the prefix j (1..H-1) it is cut after
    (then the termination suffix and mu's answer from that prefix follow), or None to keep it whole."""

    trace: int
    cut: int | None = None


def is_correct(trace: dict, min_reward: float) -> bool:
    return trace["outcome"] is not None and trace["outcome"] >= min_reward


def is_scored(trace: dict) -> bool:
    """Every J of the curve known (mu could score every prefix, the trace has a reward)."""
    return None not in trace["j_values"]


def trace_regret(trace: dict, cutoff: float) -> float:
    """Cumulative regret (`mrt.progress.regret_at`) of the trace's J curve up to `cutoff` tokens. The curve is held at
    J_H after the trace ends, so with a common cutoff a trace that gets there in fewer tokens has less regret."""
    return regret_at(trace["j_tokens"], trace["j_values"], cutoff)


def best_prefix(trace: dict) -> int | None:
    """The first prefix 1 <= j < H where J reaches the maximum of the whole curve J_0..J_H, if mu gave an answer there
    that scored above 0 (the answer the cut trace ends with); None: the trace is best kept whole. Never j = 0: a
    trace cut there is the suffix and an answer alone, which teaches the model to open with the suffix."""
    values = trace["j_values"]
    top = max(values)
    j = values.index(top, 1) if top in values[1:] else len(values) - 1
    if j == len(values) - 1 or top <= 0:
        return None
    score = trace["answer_scores"][j]
    return j if score is not None and score > 0 else None


def select_problem(traces: Sequence[dict], selection: str, keep: int, cutoff: float, min_reward: float = 1.0,
                   truncate: bool = False) -> list[Choice]:
    """The traces of one problem to train on.

    'progress' (MRT-STaR): the correct traces with a fully scored J curve, lowest cumulative regret first (ties: fewer
    tokens, then trace order), the first `keep`; with `truncate`, each cut at its best prefix (`best_prefix`).
    'correct' (plain STaR): every correct trace, whole, in trace order (`keep` and `truncate` do not apply).
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    correct = [i for i, t in enumerate(traces) if is_correct(t, min_reward)]
    if selection == "correct":
        return [Choice(i) for i in correct]
    ranked = sorted((i for i in correct if is_scored(traces[i])),
                    key=lambda i: (trace_regret(traces[i], cutoff), traces[i]["tokens"], i))
    return [Choice(i, best_prefix(traces[i]) if truncate else None) for i in ranked[:keep]]


# ---------------------------------------------------------------- summary


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def mean_curve(traces: Sequence[dict], grid: Sequence[float]) -> list[dict]:
    """Mean J at each grid point (tokens) over the fully scored traces."""
    scored = [t for t in traces if is_scored(t)]
    return [{"tokens": x, "J": _mean(j_at(t["j_tokens"], t["j_values"], x) for t in scored)} for x in grid]


def summarize(problems: Sequence[Sequence[dict]], chosen: Sequence[Sequence[Choice]],
              completion_tokens: Sequence[int], cutoff: float, min_reward: float = 1.0,
              grid_points: int = 17) -> dict:
    """The numbers of one iteration. `problems`: the scored traces of each problem; `chosen`: its choices;
    `completion_tokens`: the length of every training completion built from the choices (after any cut)."""
    every = [t for traces in problems for t in traces]
    kept_ids = {(p, c.trace) for p, choices in enumerate(chosen) for c in choices}
    kept = [t for p, traces in enumerate(problems) for i, t in enumerate(traces) if (p, i) in kept_ids]
    dropped = [t for p, traces in enumerate(problems) for i, t in enumerate(traces) if (p, i) not in kept_ids]
    grid = sorted({round(cutoff * k / (grid_points - 1)) for k in range(grid_points)})
    return {
        "problems": len(problems),
        "problems_with_a_correct_trace": sum(any(is_correct(t, min_reward) for t in traces) for traces in problems),
        "problems_kept": sum(bool(c) for c in chosen),
        "traces_generated": len(every),
        "traces_unscorable": sum(not is_scored(t) for t in every),
        "traces_correct": sum(is_correct(t, min_reward) for t in every),
        "traces_kept": len(kept),
        "traces_cut": sum(c.cut is not None for choices in chosen for c in choices),
        "accuracy": _mean(t["outcome"] for t in every),
        "mean_tokens_generated": _mean(t["tokens"] for t in every),
        "mean_tokens_kept_before_cut": _mean(t["tokens"] for t in kept),
        "mean_tokens_trained": _mean(completion_tokens),
        "mean_regret_kept": _mean(trace_regret(t, cutoff) for t in kept if is_scored(t)),
        "mean_regret_dropped": _mean(trace_regret(t, cutoff) for t in dropped if is_scored(t)),
        "regret_cutoff": cutoff,
        "j_curve_kept": mean_curve(kept, grid),
        "j_curve_dropped": mean_curve(dropped, grid),
    }


class NoCorrectTraces(RuntimeError):
    """Nothing to train on: no problem has a selected trace."""


def check_not_empty(summary: dict, iteration: int, skipped: int) -> None:
    """Stop with the numbers when the selection is empty (never train on an empty set)."""
    if summary["traces_kept"]:
        return
    raise NoCorrectTraces(
        f"MRT-STaR iteration {iteration}: no trace to train on. {summary['problems']} problems scored "
        f"({skipped} skipped: unparsable gold), {summary['traces_generated']} traces generated, "
        f"{summary['traces_correct']} correct, {summary['traces_unscorable']} not scorable by mu. Nothing was trained. "
        "Try more traces per problem (num_generations), a larger max_completion_length, an easier dataset, "
        "or a stronger model.")
