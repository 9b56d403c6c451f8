"""The report of a comparison (mrt.experiments.compare): per arm, the mean and a bootstrap 95% interval over seeds and
problems of accuracy at each budget, cumulative regret at each cutoff, tokens to reach the base model's best accuracy
and mean completion length; training curves (mean and range over seeds); wall time; each arm against the reference
arm on paired seeds and problems (mrt.experiments.paired); the code version of the units (one, unless mixing is
allowed). Pure functions, then the writers: results.json, results.csv, comparison.png, summary.md.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from mrt.experiments.bootstrap import LEVEL, draws, interval, number, per_column_mean, unit_array
from mrt.experiments.paired import paired_report
from mrt.progress import regret_at, tokens_to_reach
from mrt.records import write_atomic

CURVES = ("reward", "mrt/regret", "completions/mean_length")


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


PROBLEM_ROWS = ("index", "accuracy", "regret", "outcome", "tokens")  # per_problem's lists: one entry per problem


def per_problem(records: list[dict], budgets: list[int], cutoffs: list[int]) -> dict:
    """Per problem (in record order), the mean over its scorable completions of: the accuracy at each budget, the
    cumulative regret at each cutoff, the final answer's accuracy; and the mean completion length of all of them.
    None where a problem has no scorable completion."""
    out = {"budgets": list(budgets), "cutoffs": list(cutoffs), **{k: [] for k in PROBLEM_ROWS}}
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


def in_problem_order(table: dict, order: list[int]) -> dict:
    """A copy of a per-problem table (`per_problem`) with its rows taken from positions `order`. Paired statistics
    pair units row by row, so units whose evaluations took the problems in other orders (another evaluation seed
    shuffles them) are put in one order first."""
    return {**table, **{k: [table[k][i] for i in order] for k in PROBLEM_ROWS if k in table}}


def _stat_rows(key: str, xs: list, point, low, high, n: int) -> list[dict]:
    return [{key: x, "mean": number(m), "low": number(lo), "high": number(hi), "n_seeds": n}
            for x, m, lo, hi in zip(xs, point, low, high)]


def _tokens_to(budgets: list[int], target: float | None):
    def stat(values):
        curve = per_column_mean(values)
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


def gain_stat(start: int, end: int):
    """The statistic "accuracy at column `end` minus at column `start`" of a (seeds, problems, k) array."""
    def stat(values):
        curve = per_column_mean(values)
        return np.array([curve[end] - curve[start]])
    return stat


def extrapolation_columns(budgets: list[int], training_budget: int | None) -> tuple[int, int] | None:
    """(column of B, column of the largest budget) when the budgets go past B; the gain is between them."""
    if training_budget not in budgets or budgets[-1] <= training_budget:
        return None
    return budgets.index(training_budget), len(budgets) - 1


def behaviour(units: list[dict]) -> dict:
    """Means over an arm's evaluated units of how its completions behave (the evaluation's summary: answered rate,
    accuracy given answered, episodes, ended early, mean progress per episode) and of its training's logged MRT
    costs (the prover's share of a step; branched: the share of cuts with an empty prefix)."""
    evaluated = [u["eval"] for u in units if u.get("eval")]
    per_episode: dict[int, list[float]] = {}
    for e in evaluated:
        for row in e.get("progress_per_episode", []):
            if row.get("progress") is not None:
                per_episode.setdefault(int(row["episode"]), []).append(row["progress"])

    def logged(key):
        return _mean(entry.get(key) for u in units for entry in u.get("curves", []))

    return {"answered": _mean(e.get("answered") for e in evaluated),
            "accuracy_given_answered": _mean(e.get("accuracy_given_answered") for e in evaluated),
            "episodes": _mean(e.get("mean_episodes") for e in evaluated),
            "ended_early": _mean(e.get("ended_early") for e in evaluated),
            "progress_per_episode": {str(j): _mean(v) for j, v in sorted(per_episode.items())},  # JSON keys
            "prover_step_share": logged("mrt/prover_step_share"),
            "frac_empty_prefix": logged("mrt/frac_empty_prefix")}


LAST_STEPS = 8  # the training reward of a unit: its mean over the last steps (one step's reward is 8 samples)


def unit_name(u: dict) -> str:
    return u.get("unit") or f"{u['arm']}-seed{u['seed']}"


def mark_shared_trainings(units: list[dict]) -> list[dict]:
    """Copies of the units with `training_shared`: the unit evaluated a training (same `training_key`) that a unit
    before it did, so its cost is its evaluation alone. A unit that resumed from its own finished training (after a
    kill) still counts that training, which is why `training_reused` does not decide this."""
    seen, marked = set(), []
    for u in units:
        key = u.get("training_key")
        marked.append(u | {"training_shared": key is not None and key in seen})
        seen.add(key)
    return marked


def unit_rows(units: list[dict]) -> list[dict]:
    """One row per unit: its mean accuracy at each budget over the problems, its evaluation's answered rate and
    episodes, its training reward over the last steps, and its train and eval seconds (the draw-only spread and the
    cost read from these)."""
    rows = []
    for u in units:
        accuracy = per_column_mean(unit_array([u], "accuracy")) if "per_problem" in u else []
        rewards = [e["reward"] for e in u.get("curves", []) if e.get("reward") is not None]
        rows.append({"unit": unit_name(u), "arm": u["arm"], "seed": u["seed"],
                     "accuracy": [number(a) for a in accuracy],
                     "answered": (u.get("eval") or {}).get("answered"),
                     "episodes": (u.get("eval") or {}).get("mean_episodes"),
                     "train_reward": _mean(rewards[-LAST_STEPS:]),
                     "seconds_train": 0.0 if u.get("training_shared") else u.get("seconds_train"),
                     "seconds_eval": u.get("seconds_eval"), "training_shared": bool(u.get("training_shared"))})
    return rows


def arm_stats(units: list[dict], budgets: list[int], target: float | None, resamples: int, seed: int,
              training_budget: int | None = None) -> dict:
    """Every statistic of one arm from its evaluated units (same problems, same budgets)."""
    evaluated = [u for u in units if "per_problem" in u]
    stats = {"seeds": sorted(u["seed"] for u in units if u["seed"] is not None), "n_evaluated": len(evaluated),
             "not_trained": {str(u["seed"]): u["notes"]["not_trained"] for u in units
                             if u.get("notes", {}).get("not_trained")},
             "curves": _curves(units),
             # A unit that evaluated a training another unit did counts only its evaluation.
             "wall_seconds": {"train_mean": _mean(u.get("seconds_train") for u in units
                                                  if not u.get("training_shared")),
                              "eval_mean": _mean(u.get("seconds_eval") for u in units),
                              "total": sum((u.get("seconds_eval") or 0) if u.get("training_shared")
                                           else (u.get("seconds_total") or 0) for u in units)},
             "weight_change": _mean(u.get("weight_change") for u in units),
             "hardware": sorted({u.get("hardware") for u in units if u.get("hardware")}),
             "code_versions": sorted({version_label(u) for u in units})}
    if not evaluated:
        return stats
    cutoffs = evaluated[0]["per_problem"]["cutoffs"]
    accuracy, regret = unit_array(evaluated, "accuracy"), unit_array(evaluated, "regret")
    tokens, outcome = unit_array(evaluated, "tokens"), unit_array(evaluated, "outcome")
    resampled = draws(len(evaluated), accuracy.shape[1], resamples, seed)
    n = len(evaluated)
    stats["accuracy"] = _stat_rows("budget", budgets, *interval(accuracy, per_column_mean, resampled), n)
    stats["regret"] = _stat_rows("cutoff", cutoffs, *interval(regret, per_column_mean, resampled), n)
    stats["mean_length"] = _stat_rows("what", ["tokens"], *interval(tokens, per_column_mean, resampled), n)[0]
    stats["final_accuracy"] = _stat_rows("what", ["outcome"], *interval(outcome, per_column_mean, resampled), n)[0]
    point, low, high = interval(accuracy, _tokens_to(budgets, target), resampled)
    stats["tokens_to_base_best"] = {"target": target, "never": bool(np.isinf(point[0])),
                                    **_stat_rows("what", ["tokens"], point, low, high, n)[0]}
    columns = extrapolation_columns(budgets, training_budget)
    if columns:
        row = _stat_rows("what", ["gain"], *interval(accuracy, gain_stat(*columns), resampled), n)[0]
        stats["extrapolation_gain"] = {**row, "from": budgets[columns[0]], "to": budgets[columns[1]]}
    stats["behaviour"] = behaviour(evaluated)
    return stats


def version_label(unit: dict) -> str:
    """The code version a unit ran on, as the report names it: 'mrt@' and the library tree's first 12 digits (the
    commit's for units that recorded no tree), '+dirty' when the library had uncommitted changes, 'unknown' when the
    unit recorded none (outside git, or an older unit)."""
    version = unit.get("code_version")
    if not version or not version.get("commit"):
        return "unknown"
    name = f"mrt@{version['tree'][:12]}" if version.get("tree") else version["commit"][:12]
    return name + ("+dirty" if version.get("dirty") else "")


def code_versions(units: list[dict], allow_mixed: bool = False) -> dict[str, list[str]]:
    """The units of each code version; more than one version is an error unless `allow_mixed`: numbers from two
    versions of the code are not comparable (the evaluation's draws and the prover change with it)."""
    versions: dict[str, list[str]] = {}
    for u in units:
        versions.setdefault(version_label(u), []).append(unit_name(u))
    if len(versions) > 1 and not allow_mixed:
        listed = "; ".join(f"{v}: {', '.join(names)}" for v, names in sorted(versions.items()))
        raise ValueError(f"The units come from {len(versions)} code versions ({listed}). Re-run the units of the "
                         "other versions on one version (delete their files), or set allow_mixed_versions: true to "
                         "report them anyway, with the version on each row.")
    return versions


def build_report(name: str, units: list[dict], arms: list[str], budgets: list[int], training_budget: int,
                 resamples: int = 1000, seed: int = 0, reference: str | None = "grpo",
                 allow_mixed_versions: bool = False) -> dict:
    """The whole report from the finished units: the base model first, then the arms in config order; each arm
    against `reference` on paired seeds and problems (mrt.experiments.paired); the code versions of the units
    (one, unless `allow_mixed_versions`)."""
    versions = code_versions(units, allow_mixed_versions)
    ordered = mark_shared_trainings([u for arm in ["base", *arms] for u in units if u["arm"] == arm])
    groups = {arm: [u for u in ordered if u["arm"] == arm] for arm in ["base", *arms]}
    base = groups["base"][0] if groups["base"] else None
    best = target = None
    if base is not None and "per_problem" in base:
        curve = per_column_mean(unit_array([base], "accuracy"))
        best = None if np.isnan(curve).all() else float(np.nanmax(curve))
        target = best if best else None  # a base that never answers right sets no target
    return {"name": name, "training_budget": training_budget, "budgets": budgets,
            "budget_multiples": [b / training_budget for b in budgets], "base_best_accuracy": best,
            "target_accuracy": target,
            "bootstrap": {"resamples": resamples, "seed": seed, "level": LEVEL,
                          "over": "seeds, then problems, with replacement"},
            "code_versions": versions, "mixed_versions": len(versions) > 1,
            "arms": {arm: arm_stats(us, budgets, target, resamples, seed, training_budget)
                     for arm, us in groups.items() if us},
            "paired": paired_report(groups, reference, budgets, resamples, seed,
                                    extrapolation=extrapolation_columns(budgets, training_budget))
            if reference else None,
            "units": unit_rows(ordered)}


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
    cutoff, tokens to the base's best accuracy, mean completion length, wall time; mean [95% interval]; the code
    version of the arm's units when the report mixes versions."""
    budgets = report["budgets"]
    base = report["training_budget"]
    mixed = report.get("mixed_versions", False)
    head = (["arm", "seeds"] + [f"acc@{b / base:g}x ({b})" if b else "acc@0 (answer at once)" for b in budgets]
            + [f"regret@{budgets[-1]}", "tokens to base best", "mean length", "train s/unit", "wall s (all)"]
            + (["code"] if mixed else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, s in report["arms"].items():
        acc = {r["budget"]: r for r in s.get("accuracy", [])}
        regret = s.get("regret", [])
        wall = s["wall_seconds"]
        cells = [arm, str(s["n_evaluated"])] + [_fmt(acc.get(b)) for b in budgets]
        cells += [_fmt(regret[-1] if regret else None), _fmt(s.get("tokens_to_base_best"), 1),
                  _fmt(s.get("mean_length"), 1),
                  "n/a" if wall["train_mean"] is None else f"{wall['train_mean']:.0f}", f"{wall['total']:.0f}"]
        cells += [", ".join(s.get("code_versions", []))] if mixed else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _share(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def behaviour_table(report: dict) -> str:
    """One row per arm: the extrapolation gain (accuracy at the largest budget minus at B, [95% interval]), the
    answered rate, accuracy given answered, episodes per completion, the share that ended early (before budget
    forcing), mean progress (J_j - J_(j-1)) of the first three episodes, the prover's share of a training step,
    branched training's share of empty-prefix cuts, and evaluation seconds per unit."""
    head = ["arm", "extrapolation gain", "answered", "acc given answered", "episodes", "ended early",
            "progress ep 1 / 2 / 3", "prover share of step", "empty-prefix cuts", "eval s/unit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, s in report["arms"].items():
        b = s.get("behaviour") or {}
        gain = s.get("extrapolation_gain")
        gain_text = "n/a" if not gain else f"{_fmt(gain)} ({gain['to']} vs {gain['from']})"
        steps = b.get("progress_per_episode") or {}
        progress = " / ".join(_signed(steps.get(str(j))) for j in (1, 2, 3))
        wall = s["wall_seconds"]["eval_mean"]
        cells = [arm, gain_text, _share(b.get("answered")), _share(b.get("accuracy_given_answered")),
                 _share(b.get("episodes"), 2), _share(b.get("ended_early")), progress,
                 _share(b.get("prover_step_share")), _share(b.get("frac_empty_prefix")),
                 "n/a" if wall is None else f"{wall:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def units_table(report: dict) -> str:
    """One row per unit: mean accuracy at each budget, answered, episodes, training reward over the last steps,
    train and eval seconds ("shared" for a unit that evaluated another unit's training)."""
    rows = report.get("units") or []
    if not rows:
        return ""
    budgets, base = report["budgets"], report["training_budget"]
    head = (["unit"] + [f"acc@{b / base:g}x" if b else "acc@0" for b in budgets]
            + ["answered", "episodes", f"train reward (last {LAST_STEPS} steps)", "train s", "eval s"])
    lines = ["Per unit (mean over the held-out problems):", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for r in rows:
        acc = r["accuracy"] or [None] * len(budgets)
        train = "shared" if r["training_shared"] else _share(r["seconds_train"], 0)
        cells = ([r["unit"]] + [_share(a) for a in acc] + [_share(r["answered"]), _share(r["episodes"], 2),
                 _share(r["train_reward"]), train, _share(r["seconds_eval"], 0)])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def _fmt_p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3g}"


def paired_table(report: dict) -> str:
    """One row per arm and budget: the accuracy difference to the reference arm (arm - reference) with its
    bootstrap interval over paired seeds and problems, the t interval over the seeds' differences, the difference
    on each seed, and the sign count over seeds (wins/losses/ties) with its two-sided p. Empty without a reference."""
    paired = report.get("paired")
    if not paired or not paired["arms"]:
        return ""
    ref, base = paired["reference"], report["training_budget"]
    head = ["arm", "budget", "seeds", f"acc - {ref} [bootstrap 95%]", "t 95% (seeds)", "by seed", "sign +/-/=",
            "sign p"]
    lines = [f"Paired against {ref}: same seeds (same training problems), same held-out problems.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, stats in paired["arms"].items():
        gains = [{**r, "label": f"gain {r['budgets']}"} for r in stats.get("extrapolation_gain", [])]
        for r in stats["accuracy"] + gains:
            budget = r.get("label") or (f"{r['budget'] / base:g}x ({r['budget']})" if r["budget"] else "0")
            low, high = _signed(r["low"]), _signed(r["high"])
            t = "n/a" if r["t_low"] is None else f"[{_signed(r['t_low'])}, {_signed(r['t_high'])}]"
            seeds = ", ".join(f"{s}: {_signed(d)}" for s, d in r["by_seed"].items())
            lines.append(f"| {arm} | {budget} | {r['n_seeds']} | {_signed(r['mean'])} [{low}, {high}] | {t} | "
                         f"{seeds} | {r['positive']}/{r['negative']}/{r['ties']} | {_fmt_p(r['sign_p'])} |")
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    """summary.md: the code versions of the units, the per-arm table, then the paired table."""
    versions = report.get("code_versions") or {}
    named = ", ".join(f"{v} ({len(units)} units)" for v, units in sorted(versions.items()))
    line = ("Code versions (mixed; allowed by allow_mixed_versions): " if report.get("mixed_versions")
            else "Code version: ") + (named or "none")
    parts = [f"# {report['name']}", line, markdown_table(report), behaviour_table(report), paired_table(report),
             units_table(report)]
    return "\n\n".join(p for p in parts if p) + "\n"


CSV_FIELDS = ["arm", "metric", "x", "mean", "low", "high", "n_seeds", "code_versions", "reference", "t_low", "t_high",
              "positive", "negative", "ties", "sign_p"]


def csv_rows(report: dict) -> list[dict]:
    """Long format: arm, metric, x, mean, low, high, n_seeds, the arm's code versions; then the paired differences
    (metric diff_accuracy or diff_regret, against `reference`) with their t interval and sign count."""
    rows = []
    for arm, s in report["arms"].items():
        for metric, key in (("accuracy", "budget"), ("regret", "cutoff")):
            rows += [{"arm": arm, "metric": metric, "x": r[key], **{k: r[k] for k in ("mean", "low", "high",
                                                                                       "n_seeds")}}
                     for r in s.get(metric, [])]
        for metric in ("tokens_to_base_best", "mean_length", "final_accuracy", "extrapolation_gain"):
            if metric in s:
                r = s[metric]
                rows.append({"arm": arm, "metric": metric, "x": r.get("target", ""),
                             **{k: r[k] for k in ("mean", "low", "high", "n_seeds")}})
        wall = s["wall_seconds"]
        rows.append({"arm": arm, "metric": "wall_seconds_total", "x": "", "mean": wall["total"], "low": None,
                     "high": None, "n_seeds": len(s["seeds"])})
        for row in rows:
            row.setdefault("code_versions", " ".join(s.get("code_versions", [])))
    paired = report.get("paired") or {"arms": {}}
    for arm, stats in paired["arms"].items():
        for metric, key in (("accuracy", "budget"), ("regret", "cutoff"), ("extrapolation_gain", "budgets")):
            rows += [{"arm": arm, "metric": f"diff_{metric}", "x": r[key], "reference": paired["reference"],
                      **{k: r[k] for k in CSV_FIELDS if k in r}} for r in stats.get(metric, [])]
    return rows


# ---------------------------------------------------------------- files


def write_report(report: dict, output_dir: str | Path) -> list[Path]:
    """results.json, results.csv, comparison.png and summary.md in output_dir; returns the paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "results.json", json.dumps(report, indent=1) + "\n")
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(csv_rows(report))
    write_atomic(out / "results.csv", table.getvalue())
    write_atomic(out / "summary.md", markdown_report(report))
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
