"""The report of a comparison (mrt.compare): per arm, the mean and a bootstrap 95% interval over seeds and problems of
accuracy at each budget, cumulative regret at each cutoff, tokens to reach the base model's best accuracy and mean
completion length; training curves (mean and range over seeds); wall time. Pure functions, then the writers:
results.json, results.csv, comparison.png, summary.md.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from mrt.progress import regret_at, tokens_to_reach

CURVES = ("reward", "mrt/regret", "completions/mean_length")
LEVEL = 0.95
_NEVER = 1e18  # stands for "never reaches the target" inside the bootstrap


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def per_problem(records: list[dict], budgets: list[int], cutoffs: list[int]) -> dict:
    """Per problem (in record order), the mean over its scorable completions of: the accuracy at each budget, the
    cumulative regret at each cutoff, the final answer's accuracy; and the mean completion length of all of them.
    None where a problem has no scorable completion."""
    out = {"budgets": list(budgets), "cutoffs": list(cutoffs), "index": [], "accuracy": [], "regret": [],
           "outcome": [], "tokens": []}
    for record in records:
        rows = record["completions"]
        ok = [c for c in rows if c["outcome"] is not None and None not in c["j_values"]
              and None not in c["budget_accuracy"]]
        out["index"].append(record["index"])
        out["accuracy"].append([_mean(c["budget_accuracy"][k] for c in ok) for k in range(len(budgets))])
        out["regret"].append([_mean(regret_at(c["j_tokens"], c["j_values"], t) for c in ok) for t in cutoffs])
        out["outcome"].append(_mean(c["outcome"] for c in ok))
        out["tokens"].append(_mean(c["tokens"] for c in rows))
    return out


def _array(units: list[dict], key: str) -> np.ndarray:
    """(seeds, problems, k) array of one per-problem table; NaN for None."""
    rows = [[v if isinstance(v, list) else [v] for v in u["per_problem"][key]] for u in units]
    return np.array([[[math.nan if x is None else x for x in v] for v in r] for r in rows], dtype=float)


def draws(num_seeds: int, num_problems: int, resamples: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Bootstrap resamples: seeds drawn with replacement, then problems drawn with replacement."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, num_seeds, num_seeds), rng.integers(0, num_problems, num_problems))
            for _ in range(resamples)]


def _per_column_mean(values: np.ndarray) -> np.ndarray:
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
    with np.errstate(all="ignore"):
        low = np.nanpercentile(stats, tail, axis=0) if stats.size else np.full(point.shape, np.nan)
        high = np.nanpercentile(stats, 100 - tail, axis=0) if stats.size else np.full(point.shape, np.nan)
    return point, np.where(low >= _NEVER / 2, math.inf, low), np.where(high >= _NEVER / 2, math.inf, high)


def _num(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else round(float(x), 6)


def _stat_rows(key: str, xs: list, point, low, high, n: int) -> list[dict]:
    return [{key: x, "mean": _num(m), "low": _num(lo), "high": _num(hi), "n_seeds": n}
            for x, m, lo, hi in zip(xs, point, low, high)]


def _tokens_to(budgets: list[int], target: float | None):
    def stat(values):
        curve = _per_column_mean(values)
        if target is None or np.isnan(curve).any():
            return np.array([math.nan])
        reached = tokens_to_reach(budgets, list(curve), target)
        return np.array([math.inf if reached is None else reached])
    return stat


def _curves(units: list[dict]) -> dict:
    """Per curve key: steps with the mean, min and max over the seeds that logged that step."""
    out = {}
    for key in CURVES:
        by_step: dict[int, list[float]] = {}
        for u in units:
            for entry in u.get("curves", []):
                if entry.get(key) is not None:
                    by_step.setdefault(int(entry["step"]), []).append(float(entry[key]))
        if by_step:
            out[key] = [{"step": s, "mean": sum(v) / len(v), "min": min(v), "max": max(v), "n_seeds": len(v)}
                        for s, v in sorted(by_step.items())]
    return out


def arm_stats(units: list[dict], budgets: list[int], target: float | None, resamples: int, seed: int) -> dict:
    """Every statistic of one arm from its evaluated units (same problems, same budgets)."""
    evaluated = [u for u in units if "per_problem" in u]
    stats = {"seeds": sorted(u["seed"] for u in units if u["seed"] is not None), "n_evaluated": len(evaluated),
             "not_trained": {str(u["seed"]): u["notes"]["not_trained"] for u in units
                             if u.get("notes", {}).get("not_trained")},
             "curves": _curves(units),
             "wall_seconds": {"train_mean": _mean(u.get("seconds_train") for u in units),
                              "eval_mean": _mean(u.get("seconds_eval") for u in units),
                              "total": sum(u.get("seconds_total") or 0 for u in units)},
             "weight_change": _mean(u.get("weight_change") for u in units),
             "hardware": sorted({u.get("hardware") for u in units if u.get("hardware")})}
    if not evaluated:
        return stats
    cutoffs = evaluated[0]["per_problem"]["cutoffs"]
    accuracy, regret = _array(evaluated, "accuracy"), _array(evaluated, "regret")
    tokens, outcome = _array(evaluated, "tokens"), _array(evaluated, "outcome")
    resampled = draws(len(evaluated), accuracy.shape[1], resamples, seed)
    n = len(evaluated)
    stats["accuracy"] = _stat_rows("budget", budgets, *interval(accuracy, _per_column_mean, resampled), n)
    stats["regret"] = _stat_rows("cutoff", cutoffs, *interval(regret, _per_column_mean, resampled), n)
    stats["mean_length"] = _stat_rows("what", ["tokens"], *interval(tokens, _per_column_mean, resampled), n)[0]
    stats["final_accuracy"] = _stat_rows("what", ["outcome"], *interval(outcome, _per_column_mean, resampled), n)[0]
    point, low, high = interval(accuracy, _tokens_to(budgets, target), resampled)
    stats["tokens_to_base_best"] = {"target": target, "never": bool(np.isinf(point[0])),
                                    **_stat_rows("what", ["tokens"], point, low, high, n)[0]}
    return stats


def build_report(name: str, units: list[dict], arms: list[str], budgets: list[int], training_budget: int,
                 resamples: int = 1000, seed: int = 0) -> dict:
    """The whole report from the finished units: the base model first, then the arms in config order."""
    groups = {arm: [u for u in units if u["arm"] == arm] for arm in ["base", *arms]}
    base = groups["base"][0] if groups["base"] else None
    best = target = None
    if base is not None and "per_problem" in base:
        curve = _per_column_mean(_array([base], "accuracy"))
        best = None if np.isnan(curve).all() else float(np.nanmax(curve))
        target = best if best else None  # a base that never answers right sets no target
    return {"name": name, "training_budget": training_budget, "budgets": budgets,
            "budget_multiples": [b / training_budget for b in budgets], "base_best_accuracy": best,
            "target_accuracy": target,
            "bootstrap": {"resamples": resamples, "seed": seed, "level": LEVEL,
                          "over": "seeds, then problems, with replacement"},
            "arms": {arm: arm_stats(us, budgets, target, resamples, seed) for arm, us in groups.items() if us}}


# ---------------------------------------------------------------- tables


def _fmt(row: dict | None, digits: int = 3) -> str:
    if row and row.get("never"):
        return "never"
    if not row or row.get("mean") is None:
        return "n/a"
    text = f"{row['mean']:.{digits}f}"
    if row.get("low") is not None and row.get("high") is not None and row.get("n_seeds", 0) >= 1:
        text += f" [{row['low']:.{digits}f}, {row['high']:.{digits}f}]"
    elif row.get("low") is not None:
        text += f" [{row['low']:.{digits}f}, never]"
    return text


def markdown_table(report: dict) -> str:
    """One row per arm: accuracy at each budget (0: forced to answer right after the prompt), regret at the largest
    cutoff, tokens to the base's best accuracy, mean completion length, wall time; mean [95% interval]."""
    budgets = report["budgets"]
    base = report["training_budget"]
    head = (["arm", "seeds"] + [f"acc@{b / base:g}x ({b})" if b else "acc@0 (answer at once)" for b in budgets]
            + [f"regret@{budgets[-1]}", "tokens to base best", "mean length", "train s/unit", "wall s (all)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, s in report["arms"].items():
        acc = {r["budget"]: r for r in s.get("accuracy", [])}
        regret = s.get("regret", [])
        wall = s["wall_seconds"]
        cells = [arm, str(s["n_evaluated"])] + [_fmt(acc.get(b)) for b in budgets]
        cells += [_fmt(regret[-1] if regret else None), _fmt(s.get("tokens_to_base_best"), 1),
                  _fmt(s.get("mean_length"), 1),
                  "n/a" if wall["train_mean"] is None else f"{wall['train_mean']:.0f}", f"{wall['total']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_rows(report: dict) -> list[dict]:
    """Long format: arm, metric, x, mean, low, high, n_seeds."""
    rows = []
    for arm, s in report["arms"].items():
        for metric, key in (("accuracy", "budget"), ("regret", "cutoff")):
            rows += [{"arm": arm, "metric": metric, "x": r[key], **{k: r[k] for k in ("mean", "low", "high",
                                                                                       "n_seeds")}}
                     for r in s.get(metric, [])]
        for metric in ("tokens_to_base_best", "mean_length", "final_accuracy"):
            if metric in s:
                r = s[metric]
                rows.append({"arm": arm, "metric": metric, "x": r.get("target", ""),
                             **{k: r[k] for k in ("mean", "low", "high", "n_seeds")}})
        wall = s["wall_seconds"]
        rows.append({"arm": arm, "metric": "wall_seconds_total", "x": "", "mean": wall["total"], "low": None,
                     "high": None, "n_seeds": len(s["seeds"])})
    return rows


# ---------------------------------------------------------------- files


def write_report(report: dict, output_dir: str | Path) -> list[Path]:
    """results.json, results.csv, comparison.png and summary.md in output_dir; returns the paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["arm", "metric", "x", "mean", "low", "high", "n_seeds"])
        writer.writeheader()
        writer.writerows(csv_rows(report))
    (out / "summary.md").write_text(f"# {report['name']}\n\n{markdown_table(report)}\n")
    write_plot(report, out / "comparison.png")
    return [out / n for n in ("results.json", "results.csv", "summary.md", "comparison.png")]


def _errorbars(ax, report, metric, key, title, ylabel):
    arms = list(report["arms"])
    for k, arm in enumerate(arms):
        rows = [r for r in report["arms"][arm].get(metric, []) if r["mean"] is not None]
        if not rows:
            continue
        x = [r[key] * (1 + 0.02 * (k - len(arms) / 2)) for r in rows]  # small offsets keep the bars apart
        y = [r["mean"] for r in rows]
        err = [[m - (r["low"] if r["low"] is not None else m) for m, r in zip(y, rows)],
               [(r["high"] if r["high"] is not None else m) - m for m, r in zip(y, rows)]]
        ax.errorbar(x, y, yerr=err, marker="o", markersize=3, capsize=2, color=f"C{k}", label=arm)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("tokens")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _bars(ax, report, values, title):
    arms = list(report["arms"])
    means = [values(report["arms"][a])[0] for a in arms]
    spans = [values(report["arms"][a])[1:] for a in arms]
    y = [m if m is not None else 0 for m in means]
    err = [[max(0.0, m - lo) if m is not None and lo is not None else 0 for m, (lo, _) in zip(means, spans)],
           [max(0.0, hi - m) if m is not None and hi is not None else 0 for m, (_, hi) in zip(means, spans)]]
    ax.bar(range(len(arms)), y, yerr=err, capsize=3, color=[f"C{k}" for k in range(len(arms))])
    ax.set_xticks(range(len(arms)), arms, rotation=30, fontsize=7, ha="right")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="y")


def write_plot(report: dict, path: Path) -> Path:
    """One PNG, 2 x 4 panels: accuracy vs budget, regret vs cutoff, tokens to the base's best accuracy, mean length;
    training reward, mrt/regret and completion length (mean, range over seeds); wall time per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(17, 7.5))
    _errorbars(axes[0, 0], report, "accuracy", "budget", "Held-out accuracy vs budget (95% CI)", "accuracy")
    _errorbars(axes[0, 1], report, "regret", "cutoff", "Cumulative regret vs cutoff (95% CI)", "regret")

    def triple(row):
        return (row or {}).get("mean"), (row or {}).get("low"), (row or {}).get("high")

    target = report.get("target_accuracy")
    _bars(axes[0, 2], report, lambda s: triple(s.get("tokens_to_base_best")),
          "Tokens to base best accuracy" + (f" ({target:.2f})" if target is not None else ""))
    _bars(axes[0, 3], report, lambda s: triple(s.get("mean_length")), "Mean completion length (tokens)")
    for ax, key in zip(axes[1, :3], CURVES):
        for k, (arm, s) in enumerate(report["arms"].items()):
            rows = s["curves"].get(key)
            if rows:
                steps = [r["step"] for r in rows]
                ax.plot(steps, [r["mean"] for r in rows], color=f"C{k}", label=arm,
                        marker="o" if len(steps) <= 20 else None, markersize=3)
                ax.fill_between(steps, [r["min"] for r in rows], [r["max"] for r in rows], color=f"C{k}", alpha=0.2)
        ax.set_title(f"Training: {key} (mean, range over seeds)", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7)
    _bars(axes[1, 3], report, lambda s: (s["wall_seconds"]["total"] / 60, None, None), "Wall time per arm (min)")
    fig.suptitle(report["name"], fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return path
