"""Write an evaluation's results: results.json (every number), one CSV per table, PNG plots side by side."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from mrt.records import write_atomic

# CSV name -> (per-model table key, its columns); the efficiency table spans the models.
TABLES = {
    "accuracy_vs_budget": ("budget", "accuracy", "answer_at_once"),  # budget 0: the answer-at-once shortcut
    "j_curve": ("tokens", "J"),
    "regret": ("cutoff", "regret"),
    "progress_per_episode": ("episode", "progress", "count"),
}
SUMMARY = ("num_problems", "num_completions", "unscorable", "accuracy", "mean_reward", "answered",
           "accuracy_given_answered", "accuracy_at_0", "finished", "ended_early", "mean_tokens", "mean_episodes", "J_0")
PLOTS = ("accuracy_vs_budget.png", "j_vs_tokens.png", "regret_vs_cutoff.png", "summary.png")


def write_report(results: dict, output_dir: str | Path) -> list[Path]:
    """results.json, the CSVs and the PNGs; returns the paths written."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [write_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")]
    models = results["models"]
    for name, columns in TABLES.items():
        rows = [{"model": label, **{c: row.get(c) for c in columns}} for label, m in models.items() for row in m[name]]
        written.append(_write_csv(out / f"{name}.csv", ["model", *columns], rows))
    written.append(_write_csv(out / "summary.csv", ["model", *SUMMARY],
                              [{"model": label, **{k: m.get(k) for k in SUMMARY}} for label, m in models.items()]))
    written.append(_write_csv(out / "efficiency.csv", ["target_accuracy", "model", "tokens", "ratio_to_first"],
                              results["efficiency"]))
    written += write_plots(models, out)
    return written


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _panel(ax, models: dict, table: str, x: str, y: str, title: str, xlabel: str, ylabel: str) -> None:
    for label, m in models.items():
        points = [(row[x], row[y]) for row in m[table] if row[y] is not None]
        if points:
            ax.plot(*zip(*points), marker="o" if len(points) <= 12 else None, markersize=3, label=label)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


_PANELS = (
    ("accuracy_vs_budget", "budget", "accuracy", "Accuracy vs token budget", "token budget", "accuracy"),
    ("j_curve", "tokens", "J", "J (mu's success) vs tokens", "tokens", "J"),
    ("regret", "cutoff", "regret", "Cumulative regret vs cutoff", "cutoff (tokens)", "regret"),
)


def write_plots(models: dict, output_dir: Path) -> list[Path]:
    """One PNG per panel, and summary.png with the three panels side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, panel in zip(PLOTS, _PANELS):
        fig, ax = plt.subplots(figsize=(5, 3.6))
        _panel(ax, models, *panel)
        fig.tight_layout()
        fig.savefig(output_dir / name, dpi=80)
        plt.close(fig)
        written.append(output_dir / name)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, panel in zip(axes, _PANELS):
        _panel(ax, models, *panel)
    fig.tight_layout()
    fig.savefig(output_dir / PLOTS[-1], dpi=72)
    plt.close(fig)
    written.append(output_dir / PLOTS[-1])
    return written
