"""Side by side: GRPO vs MRT (dense, branched, ...) vs MRT-STaR, trained and evaluated unit by unit.

A comparison YAML (configs/compare_*.yaml) names the arms (each a training config plus overrides), the seeds, the
held-out evaluation and the budgets. Every arm x seed is one *unit*: train from the base model (same data order and
steps for every arm of a seed; `mrt.cli.build_trainer` for RL arms, `mrt.star.run` for STaR), then evaluate the
final model with `mrt.evaluation` at budgets up to the largest multiple of the training budget, and write
`units/<arm>-seed<k>.json`. The base model is one more unit, "base". A unit works in `work_dir/<unit>/` and its
JSON is written under a temporary name and renamed when done, so a finished unit is never redone; an
interrupted one keeps its finished training and evaluated chunks. A unit records the code version it ran on
(`code_version`); units of different versions are refused unless `allow_mixed_versions`. `mrt.experiments.report`
turns the unit files into the report.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mrt.checks import check
from mrt.memory import release_memory
from mrt.records import fingerprint as settings_fingerprint
from mrt.records import write_atomic

logger = logging.getLogger(__name__)

KINDS = ("rl", "star")
BASE = "base"
UNITS = "units"
PROBLEMS_FILE = "eval_problems.jsonl"
TRAINED = "trained"  # work_dir/trained/<training key>/: a trained model, shared by the units that evaluate it
# Evaluation fields the tool sets itself.
EVAL_OWNED = frozenset({"models", "dataset", "split", "max_tokens", "budgets", "cutoffs", "output_dir"})
# Training fields that never change a unit's numbers: left out of its fingerprint.
NOT_FINGERPRINTED = ("output_dir", "report_to", "logging_steps", "save_strategy", "run_name")
# Training-curve keys kept from trainer.state.log_history (every mrt/ metric is kept too).
CURVE_KEYS = ("reward", "reward_std", "completions/mean_length", "completions/clipped_ratio", "loss", "kl",
              "entropy")
# What --smoke forces on top of the YAML's `smoke:` block: the tiny model, one step, one seed, two problems.
SMOKE_EVAL = {"num_problems": 2}
SMOKE_TRAIN = {"max_steps": 1}


def _check(ok: bool, name: str, value, expected: str) -> None:
    check(ok, "CompareConfig", name, value, expected)


@dataclass
class Arm:
    """One method: a training config file plus overrides."""

    name: str = field(metadata={"help": "Short name, used in unit file names and tables."})
    config: str = field(metadata={"help": "Training recipe (YAML): MRT's for kind 'rl', MRT-STaR's for 'star'."})
    kind: str = field(default="rl", metadata={"help": "'rl' (mrt.cli.build_trainer) or 'star' (mrt.star.run)."})
    overrides: dict = field(default_factory=dict, metadata={"help": "Fields set on top of the recipe."})
    optional: bool = field(default=False, metadata={
        "help": "Run this arm's units after every other arm's (all seeds), so that the core comparison ends first."})
    seeds: list[int] | None = field(default=None, metadata={
        "help": "This arm's seeds, a subset of the comparison's (fewer seeds for a secondary arm). None: all."})
    seed_offset: int = field(default=0, metadata={
        "help": "Added to a unit's seed for its training's random draws (samples, data order), its problems staying "
                "the unit seed's (dataset_seed): the same unit with other draws, for the draw-only spread."})
    evaluation: dict = field(default_factory=dict, metadata={
        "help": "EvalConfig fields set on top of the comparison's `evaluation` for this arm's units, e.g. another "
                "seed: with the same training as another arm, the evaluation's draw-only spread (an arm with the "
                "same training fields evaluates the same trained model: it is trained once)."})

    def __post_init__(self):
        check(bool(self.name) and all(c.isalnum() or c in "_." for c in self.name), "Arm", "name", self.name,
              "letters, digits, '_' or '.' (it names files)")
        check(self.name != BASE, "Arm", "name", self.name, f"anything but {BASE!r} (the base model's unit)")
        check(self.kind in KINDS, "Arm", "kind", self.kind, f"one of {KINDS}")
        check(bool(self.config), "Arm", "config", self.config, "a training config path")
        check(isinstance(self.overrides, dict), "Arm", "overrides", self.overrides, "a mapping of field: value")
        check(isinstance(self.evaluation, dict) and not set(self.evaluation) & EVAL_OWNED, "Arm", "evaluation",
              self.evaluation, "a mapping of EvalConfig fields, none of those the tool sets itself")
        check(isinstance(self.optional, bool), "Arm", "optional", self.optional, "true or false")
        check(isinstance(self.seed_offset, int), "Arm", "seed_offset", self.seed_offset, "an integer")
        check(self.seeds is None or (len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds)), "Arm",
              "seeds", self.seeds, "None or at least one seed, no repeats")


@dataclass
class CompareConfig:
    """A comparison: arms x seeds, the held-out evaluation, the budgets, where units and the report go."""

    name: str = field(default="compare", metadata={"help": "Title of the report."})
    model: str = field(default="smollm2-135m", metadata={
        "help": "The base model every arm starts from (model_name_or_path of every arm; the 'base' unit)."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={
        "help": "Seeds: each arm trains once per seed (training seed = data order and sampling)."})
    arms: list[Arm] = field(default_factory=list, metadata={"help": "The methods compared (at least one)."})
    train: dict = field(default_factory=dict, metadata={
        "help": "Overrides applied to every RL arm (the same data, steps and completion length for all)."})
    budget_multiples: list[float] = field(default_factory=lambda: [1, 2, 4], metadata={
        "help": "Evaluation budgets as multiples of the training budget (max_completion_length); the largest sets "
                "the evaluation's max_tokens. Budget 0 is always added (J_0)."})
    evaluation: dict = field(default_factory=dict, metadata={
        "help": "mrt.evaluation.EvalConfig fields (num_problems, num_samples, temperature, prover_*, backend, "
                "seed, ...). models, dataset, max_tokens, budgets, cutoffs and output_dir are set by the tool."})
    eval_dataset: str | None = field(default=None, metadata={
        "help": "Where held-out problems come from (the 'test' split). None: the RL arms' dataset_name."})
    eval_split: str = field(default="test", metadata={"help": "Split of the held-out problems."})
    bootstrap_resamples: int = field(default=1000, metadata={"help": "Bootstrap resamples of the 95% intervals."})
    bootstrap_seed: int = field(default=0, metadata={"help": "Seed of the bootstrap."})
    reference_arm: str | None = field(default="grpo", metadata={
        "help": "The arm every other arm is compared with on paired seeds and problems (mrt.experiments.paired); "
                "no paired statistics when no arm has this name, or None."})
    allow_mixed_versions: bool = field(default=False, metadata={
        "help": "Report units that ran on different code versions (git commits) side by side, with the version on "
                "each row. False: refuse, and refuse to add a unit of another version to finished ones."})
    output_dir: str = field(default="outputs/compare", metadata={
        "help": "Finished unit JSONs (units/), the held-out problems and the report: commit this folder."})
    work_dir: str | None = field(default=None, metadata={
        "help": "Models and records of the unit being run, deleted when it is done. None: output_dir/work (the "
                "tool writes output_dir/.gitignore so that it is never committed)."})
    keep_models: bool = field(default=False, metadata={"help": "Keep each trained model in work_dir."})

    def __post_init__(self):
        self.arms = [a if isinstance(a, Arm) else Arm(**a) for a in self.arms]
        _check(len(self.arms) >= 1, "arms", self.arms, "at least one arm")
        names = [a.name for a in self.arms]
        _check(len(set(names)) == len(names), "arms", names, "distinct arm names")
        _check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds", self.seeds,
               "at least one seed, no repeats")
        for arm in self.arms:
            _check(set(arm.seeds or []) <= set(self.seeds), "arms", {arm.name: {"seeds": arm.seeds}},
                   f"an arm's seeds among the comparison's seeds {self.seeds}")
        _check(bool(self.model), "model", self.model, "a base model")
        _check(len(self.budget_multiples) >= 1 and all(m > 0 for m in self.budget_multiples), "budget_multiples",
               self.budget_multiples, "positive multiples of the training budget")
        _check(isinstance(self.train, dict), "train", self.train, "a mapping of field: value")
        _check(isinstance(self.evaluation, dict), "evaluation", self.evaluation, "a mapping of EvalConfig fields")
        owned = EVAL_OWNED & set(self.evaluation)
        _check(not owned, "evaluation", sorted(owned), "none of the fields the tool sets itself")
        _check(self.bootstrap_resamples >= 10, "bootstrap_resamples", self.bootstrap_resamples, ">= 10")
        _check(self.reference_arm != BASE, "reference_arm", self.reference_arm, "an arm's name or None")
        _check(isinstance(self.allow_mixed_versions, bool), "allow_mixed_versions", self.allow_mixed_versions,
               "true or false")
        if self.work_dir is None:
            self.work_dir = str(Path(self.output_dir) / "work")
        _check(os.path.abspath(self.output_dir) != os.path.abspath(self.work_dir), "work_dir", self.work_dir,
               "another folder than output_dir")

    def units(self) -> list[tuple[str, Arm | None, int | None]]:
        """(unit name, arm, seed): base first, then seed by seed so that early units already compare every arm;
        optional arms after all the others."""
        order = [a for a in self.arms if not a.optional], [a for a in self.arms if a.optional]
        return [(BASE, None, None)] + [(f"{a.name}-seed{s}", a, s) for arms in order for s in self.seeds
                                       for a in arms if s in self.arm_seeds(a)]

    def arm_seeds(self, arm: Arm) -> list[int]:
        """The seeds `arm` trains with: its own, or the comparison's."""
        return self.seeds if arm.seeds is None else [s for s in self.seeds if s in arm.seeds]


def load_config(path: str | os.PathLike, smoke: bool = False, output_dir: str | None = None) -> CompareConfig:
    """The comparison a YAML file describes; `smoke`: the tiny model, one step per arm, the first seed, two problems,
    plus the file's `smoke:` block (train / evaluation / arms overrides)."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    smoke_block = raw.pop("smoke", {}) or {}
    arms = raw.pop("arms", {}) or {}
    _check(isinstance(arms, dict), "arms", arms, "a mapping of arm name: {config, kind, overrides}")
    raw["arms"] = [{"name": name, **(spec or {})} for name, spec in arms.items()]
    for arm in raw["arms"]:
        if "config" in arm:
            arm["config"] = _find_recipe(str(arm["config"]), Path(path))
    if smoke:
        from mrt.tiny_model import tiny_model_folder

        raw["model"] = str(tiny_model_folder())
        raw["seeds"] = list(raw.get("seeds", [0]))[:1]
        for arm in raw["arms"]:
            arm.pop("seeds", None)
        raw["train"] = {**raw.get("train", {}), **smoke_block.get("train", {}), **SMOKE_TRAIN}
        raw["evaluation"] = {**raw.get("evaluation", {}), **smoke_block.get("evaluation", {}), **SMOKE_EVAL}
        for arm in raw["arms"]:
            extra = (smoke_block.get("arms") or {}).get(arm["name"], {})
            arm["overrides"] = {**arm.get("overrides", {}), **extra}
            if arm.get("kind") == "star":
                arm["overrides"]["max_steps"] = 1
        raw["bootstrap_resamples"] = smoke_block.get("bootstrap_resamples", 100)
        raw["output_dir"] = smoke_block.get("output_dir", "outputs/compare-smoke")
        raw.pop("work_dir", None)
    if output_dir:
        raw["output_dir"] = output_dir
        raw.pop("work_dir", None)
    unknown = set(raw) - set(CompareConfig.__dataclass_fields__)
    _check(not unknown, "fields", sorted(unknown), f"known fields: {sorted(CompareConfig.__dataclass_fields__)}")
    return CompareConfig(**raw)


def _find_recipe(name: str, compare_file: Path) -> str:
    """A recipe path as written (relative to the working directory), else relative to the comparison file's folder
    or the folder above it (configs/ inside a repository)."""
    if Path(name).is_absolute() or Path(name).exists():
        return name
    here = compare_file.resolve().parent
    for folder in (here, here.parent):
        if (folder / name).exists():
            return str(folder / name)
    raise FileNotFoundError(f"Training recipe {name!r} (in {compare_file}) not found in the working directory, "
                            f"{here} or {here.parent}; give a path relative to one of them.")


# ---------------------------------------------------------------- what each unit trains


def arm_fields(config: CompareConfig, arm: Arm, seed: int, output_dir: str | Path) -> dict:
    """The training fields of one unit: the recipe, the common overrides (RL arms), the arm's own, then the base
    model, the seed and the unit's output folder."""
    recipe = yaml.safe_load(Path(arm.config).read_text()) or {}
    common = config.train if arm.kind == "rl" else {}
    other_draws = {"dataset_seed": seed} if arm.seed_offset else {}
    return {**recipe, **common, **other_draws, **arm.overrides, "model_name_or_path": config.model,
            "seed": seed + arm.seed_offset, "output_dir": str(output_dir)}


def numbered_fields(config: CompareConfig, arm: Arm, seed: int) -> dict:
    """A unit's training fields that decide its numbers (not NOT_FINGERPRINTED)."""
    return {k: v for k, v in arm_fields(config, arm, seed, "x").items() if k not in NOT_FINGERPRINTED}


def training_budget(config: CompareConfig) -> int:
    """max_completion_length of the RL arms; they must all train with the same one."""
    lengths = {a.name: arm_fields(config, a, config.seeds[0], "x").get("max_completion_length")
               for a in config.arms if a.kind == "rl"}
    if not lengths:  # STaR only: its trace length
        lengths = {a.name: arm_fields(config, a, config.seeds[0], "x").get("max_completion_length")
                   for a in config.arms}
    values = set(lengths.values())
    _check(len(values) == 1 and None not in values, "train", lengths,
           "one max_completion_length for every arm (set it under train:)")
    return int(values.pop())


def eval_budgets(config: CompareConfig) -> tuple[list[int], int]:
    """(budgets including 0, max_tokens)."""
    budget = training_budget(config)
    budgets = sorted({0, *(round(m * budget) for m in config.budget_multiples)})
    return budgets, budgets[-1]


def _training_problems(config: CompareConfig) -> set[str]:
    from mrt.cli import problems_seed
    from mrt.data import load_problems

    seen = set()
    for arm in config.arms:
        for seed in config.arm_seeds(arm):
            f = arm_fields(config, arm, seed, "x")
            rows = load_problems(f.get("dataset_name", "arithmetic"), split=f.get("dataset_train_split", "train"),
                                 problem_column=f.get("problem_column", "problem"),
                                 answer_column=f.get("answer_column", "answer"), system_prompt=None,
                                 num_problems=f.get("num_train_problems"),
                                 seed=problems_seed(f.get("dataset_seed"), f["seed"]))
            seen.update(held_out_key(str(p)) for p in rows[f.get("problem_column", "problem")])
    return seen


_CHAIN = re.compile(r"-?\d+(?:\s*[+-]\s*\d+)+")


def held_out_key(problem: str) -> str:
    """What makes two problems the same for the held-out set: a sum or difference of integers (the problem's only
    arithmetic) is the multiset of its signed terms, so that "2 + 7 - 3" and "7 - 3 + 2" are one problem (a
    commuted twin of a training problem is not held out); any other problem is its text."""
    chains = _CHAIN.findall(problem)
    if len(chains) != 1 or re.search(r"[*/x×÷()^]", problem.replace(chains[0], "")):
        return problem
    terms = [int(t.replace(" ", "")) for t in re.findall(r"[+-]?\s*\d+", chains[0])]
    return "terms:" + ",".join(str(t) for t in sorted(terms))


def write_held_out(config: CompareConfig) -> Path:
    """The evaluation problems: the first `num_problems` distinct problems of the held-out split that no arm trains
    on with any seed (nor a commuted twin of one: `held_out_key`), written to output_dir/eval_problems.jsonl (problem,
    answer and the dataset's other columns but its prompt)."""
    from mrt.data import load_problems

    n = int(config.evaluation.get("num_problems", 8))
    first_rl = next((a for a in config.arms if a.kind == "rl"), config.arms[0])
    fields = arm_fields(config, first_rl, config.seeds[0], "x")
    source = config.eval_dataset or fields.get("dataset_name", "arithmetic")
    column = config.evaluation.get("problem_column", fields.get("problem_column", "problem"))
    answers = config.evaluation.get("answer_column", fields.get("answer_column", "answer"))
    built_in = source == "arithmetic" or source.startswith("arithmetic:")
    candidates = load_problems(source, split=config.eval_split, problem_column=column, answer_column=answers,
                               system_prompt=None, num_problems=max(1024, 16 * n) if built_in else None,
                               seed=int(config.evaluation.get("seed", 0)))
    seen, kept = _training_problems(config), []
    for row in candidates:
        problem = str(row[column])
        if held_out_key(problem) not in seen:
            seen.add(held_out_key(problem))
            # the task's own columns too (e.g. reasoning-gym's task and metadata, which its reward reads)
            kept.append({**{k: v for k, v in row.items() if k != "prompt"}, "problem": problem, "answer": row["answer"]})
        if len(kept) == n:
            break
    _check(len(kept) == n, "evaluation", {"num_problems": n},
           f"at most {len(kept)} held-out problems: {source!r} split {config.eval_split!r} has no more problems "
           "that no arm trains on; lower evaluation.num_problems or num_train_problems")
    # processes running other units write it too: each under its own temporary name
    return write_atomic(Path(config.output_dir) / PROBLEMS_FILE, "".join(json.dumps(r) + "\n" for r in kept))


def eval_config(config: CompareConfig, model: str, problems: Path, output_dir: Path, arm: Arm | None = None):
    from mrt.evaluation.run import EvalConfig

    budgets, max_tokens = eval_budgets(config)
    fields = {"backend": "transformers", **config.evaluation, **(arm.evaluation if arm else {})}
    fields.pop("problem_column", None)
    fields.pop("answer_column", None)
    return EvalConfig(**fields, models=[model], dataset=str(problems), split="train", max_tokens=max_tokens,
                      budgets=budgets, cutoffs=[b for b in budgets if b > 0], output_dir=str(output_dir))


def fingerprint(config: CompareConfig, arm: Arm | None, seed: int | None, problems: Path) -> str:
    """Hash of everything that decides a unit's numbers: its training fields, the evaluation, the problems."""
    if arm is None:
        what = {"model": config.model}
    else:
        what = {"kind": arm.kind, "fields": numbered_fields(config, arm, seed)}
    evaluation = eval_config(config, config.model, problems, Path("x"), arm).settings()  # as committed units know it
    evaluation = {k: v for k, v in evaluation.items() if k not in ("models", "dataset", "output_dir")}
    what.update(evaluation=evaluation, problems=settings_fingerprint(problems.read_bytes(), length=40))
    return settings_fingerprint(what)


def problem_order(config: CompareConfig, arm: Arm | None, problems: Path) -> list[str]:
    """The held-out problems in the order an arm's evaluation takes them (its evaluation seed shuffles them)."""
    from mrt.evaluation.run import load_eval_problems

    evaluation = eval_config(config, config.model, problems, Path("x"), arm)
    return [str(p) for p in load_eval_problems(evaluation)[evaluation.problem_column]]


def aligned_units(config: CompareConfig, plan: list, done: dict[str, dict], problems: Path) -> list[dict]:
    """The finished units in plan order, each one's per-problem rows put in the order of the comparison's own
    evaluation (a unit evaluated with another seed took the problems in another order), so that paired statistics
    pair a problem with itself. Units evaluated in that order are unchanged."""
    from mrt.experiments.report import in_problem_order

    reference = problem_order(config, None, problems)
    # Only an arm's own evaluation settings can change the order: arms without them share the comparison's.
    orders: dict[str, list[int] | None] = {"{}": None}
    units = []
    for name, arm, *_ in plan:
        if name not in done:
            continue
        unit = done[name]
        key = json.dumps(arm.evaluation if arm else {}, sort_keys=True)
        if "per_problem" in unit and key not in orders:
            position = {p: i for i, p in enumerate(problem_order(config, arm, problems))}
            order = [position[p] for p in reference if p in position]
            orders[key] = None if order == list(range(len(order))) else order
        if orders.get(key):
            unit = {**unit, "per_problem": in_problem_order(unit["per_problem"], orders[key])}
        units.append(unit)
    return units


# ---------------------------------------------------------------- one unit


def train_rl(fields: dict) -> tuple[str, list[dict], dict]:
    """Train one RL unit; (saved model folder, log history, notes)."""
    from mrt.cli import build_trainer, parser

    script_args, training_args, model_args = parser().parse_dict(fields)
    trainer = build_trainer(script_args, training_args, model_args)
    trainer.train()
    folder = str(Path(training_args.output_dir) / "model")
    trainer.save_model(folder)
    history = list(trainer.state.log_history)
    del trainer
    release_memory()
    return folder, history, {}


def train_star(fields: dict) -> tuple[str | None, list[dict], dict]:
    """Train one MRT-STaR unit; the model folder is None when no trace was correct (nothing to train on)."""
    from trl import TrlParser

    from mrt.star.run import STaRConfig, run
    from mrt.star.select import NoCorrectTraces

    (star_config,) = TrlParser((STaRConfig,)).parse_dict(fields)
    try:
        summaries = run(star_config, progress_bar=False)
    except NoCorrectTraces as error:
        return None, [], {"not_trained": str(error)}
    return star_config.output_dir, [], {"star_summaries": summaries}


def weight_change(base: str, trained: str) -> float:
    """Relative L2 distance of the trained weights to the base's: ||w - w0|| / ||w0|| over the shared tensors."""
    from safetensors import safe_open

    def tensors(folder):
        return {f: safe_open(str(f), "pt") for f in sorted(Path(folder).glob("*.safetensors"))}

    base_files, trained_files = tensors(base), tensors(trained)
    where = {k: h for h in trained_files.values() for k in h.keys()}
    diff = norm = 0.0
    for handle in base_files.values():
        for key in handle.keys():
            if key in where:
                w0 = handle.get_tensor(key).double()
                diff += (where[key].get_tensor(key).double() - w0).pow(2).sum().item()
                norm += w0.pow(2).sum().item()
    return (diff / norm) ** 0.5 if norm else float("nan")


def code_version(folder: str | os.PathLike | None = None) -> dict | None:
    """The version of the code in `folder` (default: the mrt package this process runs): the git commit, the git
    tree of `folder` at that commit (what names the code: commits that change only docs or results keep it), and
    whether the files under `folder` differ from it (changed or untracked files: neither names the code then);
    None outside a git checkout."""
    here = Path(folder) if folder is not None else Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=30,
                                  check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    tree = git("rev-parse", "HEAD:./")
    status = git("status", "--porcelain", "--", ".")
    return {"commit": commit.strip(), "tree": (tree or "").strip() or None,
            "dirty": status is None or bool(status.strip())}


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def training_key(config: CompareConfig, arm: Arm | None, seed: int | None) -> str | None:
    """What names a unit's training (its fields, less those that never change numbers); None for the base."""
    if arm is None:
        return None
    return settings_fingerprint({"kind": arm.kind, "fields": numbered_fields(config, arm, seed)})


def trained_part(config: CompareConfig, arm: Arm, seed: int, work: Path, key: str) -> dict:
    """Train in `work / "train"`, or take the training a unit with the same `key` (`training_key`) finished
    earlier, in this run or an interrupted one (`work / "trained.json"`, same code version); the unit's training
    fields, with "model"."""
    from mrt.models import resolve_model

    marker = work / "trained.json"
    version = code_version()
    if marker.exists():
        kept = json.loads(marker.read_text())
        if kept["key"] == key and kept["code_version"] == version and (
                kept["model"] is None or Path(kept["model"]).exists()):
            logger.info("%s-seed%s: trained earlier (%s): evaluating that model", arm.name, seed, marker)
            return kept["part"] | {"model": kept["model"], "training_reused": True}
    shutil.rmtree(work, ignore_errors=True)  # what an interrupted run left
    start = time.perf_counter()
    fields = arm_fields(config, arm, seed, work / "train")
    model, history, notes = (train_rl if arm.kind == "rl" else train_star)(fields)
    part = {"notes": notes, "curves": [{k: v for k, v in entry.items() if k == "step" or k in CURVE_KEYS
                                        or k.startswith("mrt/")} for entry in history
                                       if "step" in entry and "loss" in entry]}
    if model is not None:
        part["weight_change"] = weight_change(resolve_model(config.model), model)
    part["seconds_train"] = round(time.perf_counter() - start, 1)
    write_atomic(marker, json.dumps({"key": key, "code_version": version, "model": model,
                                     "part": part}, indent=1) + "\n")
    return part | {"model": model, "training_reused": False}


def eval_seconds(wall: float, earlier: dict[int, dict]) -> float:
    """A unit's evaluation time: this run's wall time plus the chunk time of the problems an earlier, interrupted
    run evaluated (their records' `seconds`, per problem)."""
    return round(wall + sum(record["seconds"] for record in earlier.values()), 1)


def run_unit(config: CompareConfig, arm: Arm | None, seed: int | None, problems: Path, work: Path,
             progress_bar: bool = True, on_stage=None) -> dict:
    """Train (unless base) and evaluate one unit in `work`; its result (without writing it). The training is in
    `training_folder` (shared by units with the same training) and kept when a run is interrupted, as are the
    evaluated chunks (`mrt.evaluation`)."""
    from mrt.evaluation.run import evaluate, load_records, records_path
    from mrt.experiments.report import per_problem

    stage = on_stage or (lambda name: None)
    result = {"arm": arm.name if arm else BASE, "seed": seed, "kind": arm.kind if arm else BASE,
              "config": arm.config if arm else None, "hardware": hardware(), "code_version": code_version(),
              "curves": [], "notes": {}, "seconds_train": 0.0}
    model = config.model
    if arm is not None:
        key = training_key(config, arm, seed)
        part = trained_part(config, arm, seed, training_folder(config, key), key)
        result["training_key"] = key
        model = part.pop("model")
        result.update(part)
    stage("trained")
    if model is None:  # nothing trained: no model to evaluate
        result["seconds_total"] = result["seconds_train"]
        return result
    start_eval = time.perf_counter()
    evaluation = eval_config(config, model, problems, work / "eval", arm)
    earlier = load_records(records_path(evaluation.output_dir, model), evaluation.fingerprint())
    report = evaluate(evaluation, progress_bar=progress_bar)
    (summary,) = report["models"].values()
    records = load_records(Path(summary["records"]), evaluation.fingerprint())
    result["eval"] = {k: v for k, v in summary.items() if k not in ("model", "records")}
    result["per_problem"] = per_problem([records[i] for i in sorted(records)], evaluation.budgets,
                                        evaluation.cutoffs)
    result["seconds_eval"] = eval_seconds(time.perf_counter() - start_eval, earlier)
    result["seconds_total"] = round(result["seconds_train"] + result["seconds_eval"], 1)
    stage("evaluated")
    return result


# ---------------------------------------------------------------- the units on disk


def unit_path(config: CompareConfig, unit: str) -> Path:
    return Path(config.output_dir) / UNITS / f"{unit}.json"


def load_unit(path: Path, expected: str) -> dict | None:
    """A finished unit, or None; a unit made with other settings is an error."""
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if data["fingerprint"] != expected:
        raise ValueError(f"{path} was made with other settings (fingerprint {data['fingerprint']}, now {expected}): "
                         "a recipe, an override or the evaluation changed. Delete the file to redo that unit, or "
                         "use another output_dir.")
    return data


def save_unit(path: Path, data: dict) -> None:
    """Write under a temporary name, then rename: a unit file on disk is always whole."""
    write_atomic(path, json.dumps(data, indent=1) + "\n")


@contextmanager
def unit_lock(config: CompareConfig, unit: str) -> Iterator[bool]:
    """Whether this process may run `unit`: False while another process on this machine runs it. The lock is held
    for the block and released when its holder ends, however it ends (an advisory lock on work_dir/<unit>.lock)."""
    path = Path(config.work_dir) / f"{unit}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def training_folder(config: CompareConfig, key: str) -> Path:
    return Path(config.work_dir) / TRAINED / key


def _finished(config: CompareConfig, plan: list) -> dict[str, dict]:
    """The planned units whose files are on disk, by name."""
    return {name: unit for name, _, _, fp in plan if (unit := load_unit(unit_path(config, name), fp))}


def run_comparison(config: CompareConfig, progress_bar: bool = True, max_units: int | None = None,
                   on_stage=None, units: list[str] | None = None) -> dict:
    """Run every unit not yet finished (only those named in `units` if given, at most `max_units` this time), then
    write the report from every unit finished on disk; returns the report. Processes can share one output_dir: on
    one machine each leaves a unit another is running to it (`unit_lock`); on several, give them disjoint `units`.
    `on_stage(unit, stage)` is called after 'trained' and 'evaluated'."""
    from tqdm.auto import tqdm

    from mrt.experiments.report import build_report, code_versions, write_report

    problems = write_held_out(config)
    ignore = Path(config.output_dir) / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# mrt.experiments.compare: commit the units, problems and report; never the work "
                          "folder\nwork/\n*.tmp\n")
    plan = [(name, arm, seed, fingerprint(config, arm, seed, problems)) for name, arm, seed in config.units()]
    unknown = sorted(set(units or ()) - {name for name, *_ in plan})
    _check(not unknown, "units", unknown, f"names of planned units: {', '.join(name for name, *_ in plan)}")
    done = _finished(config, plan)
    todo = [p for p in plan if p[0] not in done and (units is None or p[0] in units)]
    if max_units is not None:
        todo = todo[:max_units]
    if todo and not config.allow_mixed_versions:  # refused before hours of training, not when reporting
        code_versions([*done.values(), {"unit": "the units to run now", "code_version": code_version()}])
    bar = tqdm(total=len(plan), initial=len(done), desc="units", disable=not progress_bar)
    for name, arm, seed, fp in todo:
        with unit_lock(config, name) as mine:
            if not mine:
                logger.info("%s is running in another process: left to it", name)
                continue
            if load_unit(unit_path(config, name), fp):  # another process finished it meanwhile
                bar.update(1)
                continue
            bar.set_postfix_str(name)
            work = Path(config.work_dir) / name  # kept: an interrupted unit resumes from it (run_unit)
            for leftover in unit_path(config, name).parent.glob(f"{name}.json*.tmp"):
                leftover.unlink(missing_ok=True)
            key = training_key(config, arm, seed)
            with unit_lock(config, f"{TRAINED}-{key}") if key else nullcontext(True) as trainable:
                if not trainable:
                    logger.info("%s: its training is running in another process: left for a later run", name)
                    continue
                stage = (lambda s, name=name: on_stage(name, s)) if on_stage else None
                result = run_unit(config, arm, seed, problems, work, progress_bar, stage)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            result.update(unit=name, fingerprint=fp, finished_at=stamp)
            save_unit(unit_path(config, name), result)
            if not config.keep_models:
                shutil.rmtree(work, ignore_errors=True)
                waiting = {training_key(config, a, s) for n, a, s, f in plan if n != name
                           and not load_unit(unit_path(config, n), f)}
                if key is not None and key not in waiting:  # no unit left to evaluate this training
                    shutil.rmtree(training_folder(config, key), ignore_errors=True)
            bar.update(1)
    bar.close()
    done = _finished(config, plan)  # this run's units and those other processes finished meanwhile
    budgets, _ = eval_budgets(config)
    report = build_report(config.name, aligned_units(config, plan, done, problems),
                          [a.name for a in config.arms], budgets, training_budget(config),
                          resamples=config.bootstrap_resamples, seed=config.bootstrap_seed,
                          reference=config.reference_arm, allow_mixed_versions=config.allow_mixed_versions)
    report["units_planned"], report["units_done"] = len(plan), len(done)
    write_report(report, config.output_dir)
    return report
