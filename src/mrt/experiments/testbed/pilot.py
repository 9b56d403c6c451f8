"""The testbed's pilot: four gates the warm-started base model must pass before any arm is trained (DESIGN 1.4).

On held-out problems (split "test"), with completions of at most the training budget B:
- answer at once: accuracy when forced to answer right after the prompt (budget 0) <= 0.10;
- accuracy at B: the model's own answers, right only at reward 1, in [0.2, 0.5];
- episodes: at least 30% of completions have 2 or more episodes under the trainer's episode rule;
- rising: J at the budgets as cutoffs (0 ... B; mu's forced answer after the last episode that ends by then, the
  evaluation's J step curve) rises with the budget.
The gates are pure functions of numbers (`gates`) and of evaluation records (`gate_values`); `run_pilot` evaluates
the model with `mrt.evaluation` and writes pilot.json and pilot.md.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from itertools import pairwise
from pathlib import Path

from mrt.checks import check
from mrt.evaluation.run import EvalConfig
from mrt.progress import j_at

logger = logging.getLogger(__name__)


@dataclass
class PilotConfig(EvalConfig):
    """The pilot: an evaluation of one model (every `EvalConfig` field, meaning what it means there; the testbed's
    values are in configs/testbed/pilot.yaml) with completions of at most B = `max_tokens`, and the gates'
    thresholds. Every field is also a flag of scripts/pilot_testbed.py."""

    max_answer_at_once: float = field(default=0.10, metadata={"help": "Gate: forced accuracy at budget 0 at most."})
    min_accuracy: float = field(default=0.2, metadata={"help": "Gate: accuracy at B at least."})
    max_accuracy: float = field(default=0.5, metadata={"help": "Gate: accuracy at B at most."})
    min_multi_episode: float = field(default=0.3, metadata={"help": "Gate: share of completions with >= 2 episodes."})
    rise_tolerance: float = field(default=0.02, metadata={
        "help": "Gate: the forced-accuracy curve may dip by at most this much between budgets."})
    pilot_dir: str = field(default="results/testbed_pilot", metadata={
        "help": "Where pilot.json, pilot.md and a copy of the records go (the evaluation's own files go to "
                "`output_dir`)."})

    def __post_init__(self):
        super().__post_init__()
        check(len(self.models) == 1, "PilotConfig", "models", self.models, "one model (a folder, a hub id, an alias "
              "or 'testbed:<warm start YAML>')")
        check(self.budgets[0] == 0 and self.budgets[-1] == self.max_tokens, "PilotConfig", "budgets", self.budgets,
              f"budgets from 0 to max_tokens={self.max_tokens} (B)")
        for name in ("max_answer_at_once", "min_accuracy", "max_accuracy", "min_multi_episode", "rise_tolerance"):
            value = getattr(self, name)
            check(0.0 <= value <= 1.0, "PilotConfig", name, value, "a fraction in [0, 1]")
        check(self.min_accuracy <= self.max_accuracy, "PilotConfig", "max_accuracy", self.max_accuracy,
              f">= min_accuracy ({self.min_accuracy})")

    def eval_config(self, folder: str) -> EvalConfig:
        """The evaluation of the model folder (the pilot's `EvalConfig` fields, with the model resolved)."""
        return EvalConfig(**{f.name: getattr(self, f.name) for f in fields(EvalConfig)} | {"models": [folder]})


# ---------------------------------------------------------------- gates (pure)


@dataclass(frozen=True)
class Gate:
    name: str
    value: float | list | None
    rule: str
    passed: bool


def _right(value) -> float:
    """A completion counts as right only at reward 1 (reasoning-gym gives partial credit)."""
    return float(value is not None and value >= 1.0)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def gate_values(completions: list[dict], budgets: list[int]) -> dict:
    """The pilot's numbers from evaluation records of completions (`outcome`, `episode_ends`, `j_tokens`,
    `j_values`, `budget_accuracy` aligned with `budgets`): J at each budget as a cutoff, own accuracy, share with
    >= 2 episodes, and the forced accuracy at each budget (cut anywhere, also inside an episode)."""
    curve = [_mean([j_at(c["j_tokens"], c["j_values"], b) for c in completions]) for b in budgets]
    forced = [_mean([_right(c["budget_accuracy"][k]) for c in completions]) for k in range(len(budgets))]
    return {"answer_at_once": forced[budgets.index(0)],
            "accuracy": _mean([_right(c["outcome"]) for c in completions]),
            "multi_episode": _mean([float(len(c["episode_ends"]) >= 2) for c in completions]),
            "mean_episodes": _mean([float(len(c["episode_ends"])) for c in completions]),
            "finished": _mean([float(c["finished"]) for c in completions]),
            "mean_tokens": _mean([float(c["tokens"]) for c in completions]),
            "curve": [{"budget": b, "accuracy": a} for b, a in zip(budgets, curve, strict=True)],
            "forced_curve": [{"budget": b, "accuracy": a} for b, a in zip(budgets, forced, strict=True)]}


def rising(curve: list[float], tolerance: float) -> bool:
    """Whether accuracies at increasing budgets rise: the last above the first, and no dip larger than
    `tolerance` between neighbours."""
    if len(curve) < 2 or any(a is None for a in curve):
        return False
    return curve[-1] > curve[0] and all(b >= a - tolerance for a, b in pairwise(curve))


def gates(values: dict, config: PilotConfig) -> list[Gate]:
    """The four gates on the numbers of `gate_values`."""
    at_once, accuracy, multi = values["answer_at_once"], values["accuracy"], values["multi_episode"]
    curve = [point["accuracy"] for point in values["curve"]]
    return [
        Gate("answer at once (forced at budget 0)", at_once, f"<= {config.max_answer_at_once}",
             at_once is not None and at_once <= config.max_answer_at_once),
        Gate(f"accuracy at B = {config.max_tokens}", accuracy, f"in [{config.min_accuracy}, {config.max_accuracy}]",
             accuracy is not None and config.min_accuracy <= accuracy <= config.max_accuracy),
        Gate("completions with >= 2 episodes", multi, f">= {config.min_multi_episode}",
             multi is not None and multi >= config.min_multi_episode),
        Gate("J at cutoffs rising with budget", curve, f"last > first, dips <= {config.rise_tolerance}",
             rising(curve, config.rise_tolerance)),
    ]


def _show(value) -> str:
    if isinstance(value, list):
        return ", ".join("n/a" if v is None else f"{v:.3f}" for v in value)
    return "n/a" if value is None else f"{value:.3f}"


def report_lines(results: dict) -> list[str]:
    """The gates as markdown table rows, with pass/fail."""
    lines = ["| gate | value | rule | |", "|---|---|---|---|"]
    for g in results["gates"]:
        lines.append(f"| {g['name']} | {_show(g['value'])} | {g['rule']} | {'pass' if g['passed'] else 'FAIL'} |")
    return lines


# ---------------------------------------------------------------- the run


def resolve_pilot_model(name: str) -> str:
    from mrt.experiments.testbed.warm_start import is_testbed, resolve_testbed
    from mrt.models import resolve_model

    return resolve_testbed(name) if is_testbed(name) else resolve_model(name)


def run_pilot(config: PilotConfig, progress_bar: bool = True) -> dict:
    """Evaluate the (warm-started) model on held-out problems, compute the gates, write pilot.json and pilot.md."""
    from mrt.evaluation import evaluate

    start = time.perf_counter()
    folder = resolve_pilot_model(config.models[0])
    results = evaluate(config.eval_config(folder), progress_bar=progress_bar)
    (summary,) = results["models"].values()
    records = [json.loads(line) for line in Path(summary["records"]).read_text().splitlines() if line.strip()]
    completions = [c for r in sorted(records, key=lambda r: r["index"]) for c in r["completions"]]
    values = gate_values(completions, config.budgets)
    marker = Path(folder) / "mrt_complete.json"
    out = {"config": asdict(config), "model_folder": folder,
           "warm_start": json.loads(marker.read_text()) if marker.is_file() else None,
           "num_completions": len(completions), "eval_seconds": round(sum(r["seconds"] for r in records), 1),
           "values": values,
           "gates": [asdict(g) for g in gates(values, config)],
           "seconds": round(time.perf_counter() - start, 1)}
    out["all_passed"] = all(g["passed"] for g in out["gates"])
    write_pilot(out, config.pilot_dir)
    shutil.copyfile(summary["records"], Path(config.pilot_dir) / "records.jsonl")  # every completion, for audits
    return out


def write_pilot(results: dict, output_dir: str | Path) -> None:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pilot.json").write_text(json.dumps(results, indent=2) + "\n")
    c, v = results["config"], results["values"]
    text = [
        "# Testbed pilot", "",
        (f"Model `{c['models'][0]}` on {c['num_problems']} held-out problems x {c['num_samples']} samples of "
         f"`{c['dataset']}` (split {c['split']}), budget B = {c['max_tokens']}; evaluated in "
         f"{results['eval_seconds']} s. "
         f"All gates pass: **{results['all_passed']}**."), "",
        *report_lines(results), "",
        (f"Finished within B: {_show(v['finished'])}; mean tokens {_show(v['mean_tokens'])}; "
         f"mean episodes {_show(v['mean_episodes'])}."), "",
        "J at cutoffs: " + ", ".join(f"{p['budget']}: {_show(p['accuracy'])}" for p in v["curve"]) + ". Forced "
        "accuracy cut at the budget (also inside an episode): "
        + ", ".join(f"{p['budget']}: {_show(p['accuracy'])}" for p in v["forced_curve"]) + ".",
        "", ("Written by `python scripts/pilot_testbed.py --config configs/testbed/pilot.yaml` (pilot.json: all "
             "numbers and the warm start's build record)."), ""]
    (out / "pilot.md").write_text("\n".join(text))
