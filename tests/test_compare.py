"""The side-by-side comparison (mrt.experiments.compare, mrt.experiments.report, scripts/compare_methods.py).

The CI smoke runs the real command with --smoke (tiny model, 1 step per arm, 2 problems); a unit interrupted after
training resumes from nothing and gives the same numbers as one that never stopped; the report's statistics are
checked on hand-made units."""

import contextlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mrt.experiments.compare import (
    Arm,
    CompareConfig,
    load_config,
    load_unit,
    run_comparison,
    save_unit,
    unit_lock,
    write_held_out,
)
from mrt.experiments.report import (
    build_report,
    draws,
    interval,
    markdown_report,
    markdown_table,
    per_problem,
    version_label,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "compare_methods.py"
CPU_CONFIG = ROOT / "configs" / "compare_smollm2_arithmetic.yaml"
GPU_CONFIG = ROOT / "configs" / "compare_gpu.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
# Values that are wall-clock timings, not results: they differ between two identical runs.
TIMINGS = ("seconds", "step_time", "prover_step_share", "finished_at", "hardware")


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the configs name recipes relative to the repository


# ---------------------------------------------------------------- the CI smoke


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "compare"
    result = subprocess.run([sys.executable, str(SCRIPT), "--config", str(CPU_CONFIG), "--smoke", "--output_dir",
                             str(out), "--no_progress"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return out, result.stdout


def test_smoke_trains_every_arm_evaluates_and_reports(smoke):
    out, stdout = smoke
    config = load_config(CPU_CONFIG, smoke=True)
    names = [name for name, _, _ in config.units()]
    assert names == ["base", "grpo-seed0", "mrt_dense-seed0", "mrt_branched-seed0", "termination_baseline-seed0",
                     "mrt_star-seed0"]
    units = {n: json.loads((out / "units" / f"{n}.json").read_text()) for n in names}
    for name, unit in units.items():
        if unit["kind"] != "rl":
            continue
        assert len(unit["curves"]) == 1 and unit["curves"][0]["step"] == 1, name  # one step per arm
        assert unit["weight_change"] > 0, name  # the weights moved, and the trained model was the one evaluated
        assert unit["per_problem"]["budgets"] == [0, 16, 32, 64]
        assert len(unit["per_problem"]["accuracy"]) == 2  # two held-out problems
    assert "mrt/regret" in units["mrt_dense-seed0"]["curves"][0]
    assert "mrt/regret" not in units["grpo-seed0"]["curves"][0]  # GRPO runs no prover
    assert "not_trained" in units["mrt_star-seed0"]["notes"]  # a random model writes no correct trace
    assert "per_problem" not in units["mrt_star-seed0"]
    assert "per_problem" in units["base"] and "weight_change" not in units["base"]

    report = json.loads((out / "results.json").read_text())
    assert report["units_done"] == report["units_planned"] == 6
    assert list(report["arms"]) == ["base", "grpo", "mrt_dense", "mrt_branched", "termination_baseline", "mrt_star"]
    dense = report["arms"]["mrt_dense"]
    assert [r["budget"] for r in dense["accuracy"]] == [0, 16, 32, 64]
    assert all(r["low"] <= r["mean"] <= r["high"] for r in dense["accuracy"] + dense["regret"])
    assert set(dense["curves"]) == {"reward", "mrt/regret", "completions/mean_length"}
    assert dense["wall_seconds"]["total"] > 0
    for name in ("results.csv", "comparison.png", "summary.md", "eval_problems.jsonl", ".gitignore"):
        assert (out / name).stat().st_size > 0, name
    assert "| mrt_branched | 1 |" in stdout and "6 of 6 units done" in stdout
    work = out / "work"
    assert not any(work.rglob("*.safetensors"))  # models removed after each unit


def test_finished_units_are_not_redone(smoke):
    out, _ = smoke
    before = {p.name: p.stat().st_mtime_ns for p in (out / "units").glob("*.json")}
    report = run_comparison(load_config(CPU_CONFIG, smoke=True, output_dir=str(out)), progress_bar=False)
    assert report["units_done"] == 6
    assert {p.name: p.stat().st_mtime_ns for p in (out / "units").glob("*.json")} == before


def test_units_runs_only_the_named_units_and_reports_every_finished_one(smoke, tmp_path):
    import shutil

    out = tmp_path / "compare"
    shutil.copytree(smoke[0], out, ignore=shutil.ignore_patterns("work"))
    (out / "units" / "grpo-seed0.json").unlink()
    (out / "units" / "mrt_dense-seed0.json").unlink()
    config = load_config(CPU_CONFIG, smoke=True, output_dir=str(out))
    with pytest.raises(ValueError, match="units"):
        run_comparison(config, progress_bar=False, units=["grpo-seed7"])
    report = run_comparison(config, progress_bar=False, units=["grpo-seed0"])
    assert (out / "units" / "grpo-seed0.json").exists() and not (out / "units" / "mrt_dense-seed0.json").exists()
    assert report["units_done"] == 5

    # A unit another process finishes while this one runs is taken from disk, not run again.
    dense = (smoke[0] / "units" / "mrt_dense-seed0.json").read_text()
    (out / "units" / "grpo-seed0.json").unlink()

    def other_process_finishes_dense(unit, stage):
        if unit == "grpo-seed0" and stage == "evaluated":
            (out / "units" / "mrt_dense-seed0.json").write_text(dense)

    report = run_comparison(config, progress_bar=False, on_stage=other_process_finishes_dense)
    assert (out / "units" / "mrt_dense-seed0.json").read_text() == dense
    assert report["units_done"] == 6


def test_a_unit_another_process_is_running_is_left_to_it(smoke, tmp_path):
    import shutil

    out = tmp_path / "compare"
    shutil.copytree(smoke[0], out, ignore=shutil.ignore_patterns("work"))
    (out / "units" / "grpo-seed0.json").unlink()
    config = load_config(CPU_CONFIG, smoke=True, output_dir=str(out))
    with unit_lock(config, "grpo-seed0") as mine:  # held here as another process would hold it
        assert mine
        report = run_comparison(config, progress_bar=False)
        assert not (out / "units" / "grpo-seed0.json").exists() and report["units_done"] == 5
    with unit_lock(config, "grpo-seed0") as mine:  # released with its holder
        assert mine


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if not any(t in k for t in TIMINGS)}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


@pytest.fixture(scope="module")
def dense_recipe(tmp_path_factory):
    """The CPU comparison with its dense arm only, and the smoke run of it that was never interrupted."""
    import yaml

    folder = tmp_path_factory.mktemp("dense")
    raw = yaml.safe_load(CPU_CONFIG.read_text())
    raw["arms"] = {"mrt_dense": raw["arms"]["mrt_dense"]}
    recipe = folder / "compare.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    with contextlib.chdir(ROOT):  # the recipe names its arm's config relative to the repository
        whole = run_comparison(load_config(recipe, smoke=True, output_dir=str(folder / "whole")), progress_bar=False)
    return recipe, folder / "whole", whole


@pytest.mark.parametrize("stage", ["trained", "evaluated"])
def test_interrupted_unit_resumes_with_the_same_numbers(dense_recipe, stage, tmp_path, monkeypatch):
    """A unit killed after its training (or after its evaluation) keeps what it finished: the resumed run neither
    trains nor evaluates again what it kept, counts the kept evaluation's time, and writes the numbers an
    uninterrupted run writes."""
    recipe, whole_dir, whole = dense_recipe

    class Killed(Exception):
        pass

    def kill(unit, at):
        if unit == "mrt_dense-seed0" and at == stage:
            raise Killed

    config = load_config(recipe, smoke=True, output_dir=str(tmp_path / "resumed"))
    with pytest.raises(Killed):
        run_comparison(config, progress_bar=False, on_stage=kill)
    units = tmp_path / "resumed" / "units"
    assert (units / "base.json").exists() and not (units / "mrt_dense-seed0.json").exists()
    assert any((tmp_path / "resumed" / "work" / "trained").iterdir())  # the partial unit's trained model
    (units / "mrt_dense-seed0.json.tmp").write_text('{"cut sho')  # as if killed while writing
    kept = [json.loads(line) for path in (tmp_path / "resumed" / "work").glob("mrt_dense-seed0/eval/records/*.jsonl")
            for line in path.read_text().splitlines()]
    assert len(kept) == (2 if stage == "evaluated" else 0)  # the smoke's 2 held-out problems

    def trains_again(fields):
        raise AssertionError("the finished training was not reused")

    monkeypatch.setattr("mrt.experiments.compare.train_rl", trains_again)
    resumed = run_comparison(config, progress_bar=False)

    assert not (units / "mrt_dense-seed0.json.tmp").exists()
    a = json.loads((whole_dir / "units" / "mrt_dense-seed0.json").read_text())
    b = json.loads((units / "mrt_dense-seed0.json").read_text())
    assert a["weight_change"] > 0
    assert not a["training_reused"] and b.pop("training_reused")
    a.pop("training_reused")
    assert b["seconds_eval"] >= sum(record["seconds"] for record in kept) > 0 or not kept
    assert _without_timings(a) == _without_timings(b)
    assert _without_timings(whole["arms"]) == _without_timings(resumed["arms"])


def test_eval_seconds_add_the_kept_chunks_of_an_earlier_run():
    from mrt.experiments.compare import eval_seconds

    assert eval_seconds(10.04, {}) == 10.0
    assert eval_seconds(10.0, {0: {"seconds": 30.0}, 1: {"seconds": 30.0}}) == 70.0


# ---------------------------------------------------------------- settings


def test_cpu_testbed_meets_the_issue_floor():
    config = load_config(CPU_CONFIG)
    arms = {a.name: a for a in config.arms}
    assert {"grpo", "mrt_dense", "mrt_branched"} <= set(arms)
    assert len(config.seeds) >= 3
    assert config.evaluation["num_problems"] >= 64 and config.evaluation["num_samples"] >= 4
    assert config.model == "smollm2-135m" and config.budget_multiples == [1, 2, 4]
    assert arms["grpo"].overrides["alpha"] == 0
    # the core arms' units (every seed) come before the optional arms'
    names = [name for name, _, _ in config.units()]
    assert names[:4] == ["base", "grpo-seed0", "mrt_dense-seed0", "mrt_branched-seed0"]
    assert names[10:] == [f"{a}-seed{s}" for s in (0, 1, 2) for a in ("termination_baseline", "mrt_star")]


def test_gpu_config_loads_with_bf16_and_longer_completions():
    from mrt.experiments.compare import arm_fields, eval_budgets

    config = load_config(GPU_CONFIG)
    assert eval_budgets(config) == ([0, 256, 512, 1024], 1024)
    fields = arm_fields(config, config.arms[0], 0, "out")
    assert fields["bf16"] is True and fields["use_cpu"] is False and fields["dtype"] == "bfloat16"
    assert config.evaluation["dtype"] == "bfloat16"


def test_held_out_problems_are_never_trained_on(tmp_path):
    from mrt.data import load_problems
    from mrt.experiments.compare import arm_fields

    config = load_config(CPU_CONFIG, output_dir=str(tmp_path))
    rows = [json.loads(line) for line in write_held_out(config).read_text().splitlines()]
    problems = [r["problem"] for r in rows]
    assert len(problems) == 64 == len(set(problems))
    for arm in config.arms:
        for seed in config.seeds:
            f = arm_fields(config, arm, seed, "x")
            trained = set(load_problems(f["dataset_name"], num_problems=f["num_train_problems"], seed=seed)["problem"])
            assert not trained & set(problems), (arm.name, seed)


def test_bad_settings_name_the_field(tmp_path):
    arm = {"name": "a", "config": "configs/mrt_smollm2_arithmetic.yaml"}
    with pytest.raises(ValueError, match=r"CompareConfig\.arms"):
        CompareConfig(arms=[arm, arm])
    with pytest.raises(ValueError, match=r"CompareConfig\.evaluation"):
        CompareConfig(arms=[arm], evaluation={"max_tokens": 64})
    with pytest.raises(ValueError, match=r"Arm\.name"):
        Arm(name="base", config="x.yaml")
    with pytest.raises(ValueError, match=r"Arm\.kind"):
        Arm(name="a", config="x.yaml", kind="sft")
    other = {"name": "b", "config": "configs/mrt_smollm2_arithmetic.yaml", "overrides": {"max_completion_length": 32}}
    from mrt.experiments.compare import training_budget

    with pytest.raises(ValueError, match=r"CompareConfig\.train.*one max_completion_length"):
        training_budget(CompareConfig(arms=[arm, other]))


def test_a_unit_made_with_other_settings_is_refused(tmp_path):
    path = tmp_path / "units" / "x.json"
    save_unit(path, {"fingerprint": "aaa"})
    assert load_unit(path, "aaa") == {"fingerprint": "aaa"}
    assert load_unit(tmp_path / "missing.json", "aaa") is None
    with pytest.raises(ValueError, match="Delete the file"):
        load_unit(path, "bbb")


# ---------------------------------------------------------------- the report (pure)


def _completion(budget_accuracy, j_values, j_tokens, tokens, outcome=1.0):
    return {"budget_accuracy": budget_accuracy, "j_values": j_values, "j_tokens": j_tokens, "tokens": tokens,
            "outcome": outcome, "finished": True}


def test_per_problem_means_over_scorable_completions():
    records = [{"index": 0, "completions": [_completion([0.0, 1.0], [0.0, 1.0], [0, 10], 10),
                                            _completion([0.0, 0.0], [0.0, 0.0], [0, 20], 20, outcome=0.0),
                                            _completion([None, 1.0], [0.0, 1.0], [0, 30], 30)]},
               {"index": 1, "completions": [_completion([None, 1.0], [0.0, 1.0], [0, 10], 10)]}]
    table = per_problem(records, [0, 20], [20])
    assert table["accuracy"] == [[0.0, 0.5], [None, None]]
    assert table["outcome"] == [0.5, None]
    assert table["tokens"] == [20.0, 10.0]  # every completion's length counts
    # J is a step curve (mrt.progress.regret_at): 0 until the prefix at 10 tokens is written, then 1; area 10 of 20
    # -> regret 0.5; a curve at 0: regret 1.
    assert table["regret"] == [[pytest.approx((0.5 + 1.0) / 2)], [None]]


def _unit(arm, seed, accuracy, tokens=10.0, seconds=5.0):
    """A finished unit whose problems all have the accuracies `accuracy` (one list per problem) at budgets 0, 8, 16."""
    return {"arm": arm, "seed": seed, "kind": "rl", "notes": {}, "seconds_train": seconds, "seconds_total": seconds,
            "curves": [{"step": 1, "reward": 0.5}],
            "per_problem": {"budgets": [0, 8, 16], "cutoffs": [8, 16], "accuracy": accuracy,
                            "regret": [[1 - a[1], 1 - a[2]] for a in accuracy], "outcome": [a[2] for a in accuracy],
                            "tokens": [tokens] * len(accuracy)}}


def test_bootstrap_is_seeded_and_collapses_without_variation():
    assert all((a == b).all() for x, y in zip(draws(3, 5, 20, 7), draws(3, 5, 20, 7)) for a, b in zip(x, y))
    import numpy as np

    values = np.full((3, 5, 2), 0.25)
    point, low, high = interval(values, lambda v: v.reshape(-1, 2).mean(axis=0), draws(3, 5, 50, 0))
    assert list(point) == list(low) == list(high) == [0.25, 0.25]


def test_report_intervals_targets_and_table():
    base = {**_unit("base", None, [[0.0, 0.5, 0.5]] * 4), "kind": "base"}
    strong = [_unit("mrt", s, [[0.0, 0.5, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.5, 1.0]]) for s in (0, 1)]
    weak = [_unit("grpo", s, [[0.0, 0.0, 0.0], [0.0, 0.25, 0.25]] * 2) for s in (0, 1)]
    report = build_report("t", [base, *weak, *strong], ["grpo", "mrt"], [0, 8, 16], 8, resamples=200, seed=1)
    assert report["base_best_accuracy"] == report["target_accuracy"] == 0.5
    mrt, grpo = report["arms"]["mrt"], report["arms"]["grpo"]
    assert [r["mean"] for r in mrt["accuracy"]] == [0.0, 0.5, 1.0]
    at8 = mrt["accuracy"][1]
    assert at8["low"] < 0.5 < at8["high"]  # problems differ at 8 tokens: a real interval
    assert mrt["accuracy"][2]["low"] == mrt["accuracy"][2]["high"] == 1.0
    assert mrt["tokens_to_base_best"]["mean"] == pytest.approx(8.0)
    assert grpo["tokens_to_base_best"]["never"] is True
    assert grpo["curves"]["reward"] == [{"step": 1, "mean": 0.5, "min": 0.5, "max": 0.5, "n_seeds": 2}]
    assert grpo["wall_seconds"]["total"] == 10.0
    table = markdown_table(report)
    assert "| mrt | 2 | 0.000 [0.000, 0.000] | 0.500 [" in table and "| never |" in table
    assert table.splitlines()[0].startswith("| arm | seeds | acc@0 (answer at once) | acc@1x (8) | acc@2x (16) |")
    assert math.isclose(report["arms"]["base"]["accuracy"][1]["mean"], 0.5)


# ---------------------------------------------------------------- paired statistics (pure, constructed numbers)


def test_t_interval_and_sign_test_on_known_numbers():
    from mrt.experiments.paired import sign_test, t_interval, t_quantile

    # Student's t table, two-sided 95%: df 1, 2, 4, 30
    for df, t in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (30, 2.0423)):
        assert t_quantile(0.95, df) == pytest.approx(t, abs=1e-4)
    mean, low, high = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, n 3
    assert mean == 2.0 and (low, high) == pytest.approx((2 - 4.3027 / 3**0.5, 2 + 4.3027 / 3**0.5), abs=1e-4)
    assert t_interval([0.5]) == (0.5, None, None)  # one seed: no interval
    assert sign_test(3, 0) == 0.25  # "beats GRPO on all 3 seeds": two-sided p = 2 / 8
    assert sign_test(5, 0) == 0.0625 and sign_test(4, 1) == 0.375 and sign_test(0, 0) == 1.0


def _paired_units(arm, accuracy_by_seed):
    """Units of `arm` whose per-problem accuracy at budgets 0, 8, 16 is accuracy_by_seed[seed] (problems x 3)."""
    return [_unit(arm, s, [list(row) for row in acc]) for s, acc in accuracy_by_seed.items()]


def test_paired_differences_by_seed_sign_count_and_t_interval():
    ref = {0: [[0.0, 0.25, 0.5], [0.0, 0.5, 0.5]], 1: [[0.0, 0.5, 0.5], [0.0, 0.0, 0.5]],
           2: [[0.0, 0.25, 0.25], [0.0, 0.25, 0.75]], 3: [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]}
    shift = {0: 0.25, 1: 0.5, 2: -0.25}  # arm - reference on every problem at budget 8, by seed
    arm = {s: [[a0, a8 + shift[s], a16] for a0, a8, a16 in ref[s]] for s in shift}  # seed 3: reference only
    report = build_report("t", _paired_units("grpo", ref) + _paired_units("mrt", arm), ["grpo", "mrt"], [0, 8, 16],
                          8, resamples=200, seed=0)
    paired = report["paired"]
    assert paired["reference"] == "grpo" and list(paired["arms"]) == ["mrt"]
    assert paired["arms"]["mrt"]["seeds"] == [0, 1, 2]  # the seeds both arms ran
    at0, at8, at16 = paired["arms"]["mrt"]["accuracy"]
    assert at8["by_seed"] == {"0": 0.25, "1": 0.5, "2": -0.25}
    assert at8["mean"] == pytest.approx(0.5 / 3, abs=1e-6)
    assert (at8["positive"], at8["negative"], at8["ties"]) == (2, 1, 0) and at8["sign_p"] == 1.0
    from mrt.experiments.paired import t_interval

    _, low, high = t_interval([0.25, 0.5, -0.25])
    assert (at8["t_low"], at8["t_high"]) == pytest.approx((low, high), abs=1e-6)
    assert at8["low"] < at8["mean"] < at8["high"]
    for same in (at0, at16):  # no difference: a point interval, three ties
        assert same["mean"] == same["low"] == same["high"] == 0.0 and same["ties"] == 3 and same["sign_p"] == 1.0
    table = markdown_report(report)
    assert "Paired against grpo" in table
    assert "| mrt | 1x (8) | 3 | +0.167 [" in table and "0: +0.250, 1: +0.500, 2: -0.250 | 2/1/0 | 1 |" in table
    # The extrapolation gain (accuracy at 16 minus at B = 8) moves by minus the shift at 8.
    (gain,) = paired["arms"]["mrt"]["extrapolation_gain"]
    assert gain["budgets"] == "16-8" and gain["by_seed"] == {"0": -0.25, "1": -0.5, "2": 0.25}
    assert "| mrt | gain 16-8 | 3 | -0.167 [" in table
    own = report["arms"]["grpo"]["extrapolation_gain"]  # per arm: the gain with its interval
    assert (own["from"], own["to"]) == (8, 16) and own["mean"] == pytest.approx(1.25 / 8, abs=1e-6)


def test_behaviour_means_and_a_shared_training_counted_once():
    def unit(seed, answered, episodes, progress, share, key, reused=False):
        u = _unit("mrt", seed, [[0.0, 0.5, 0.5]], seconds=100.0)
        u["seconds_eval"], u["seconds_total"], u["training_reused"] = 40.0, 140.0, reused
        u["training_key"] = key
        u["curves"] = [{"step": k, "mrt/prover_step_share": share, "reward": float(k >= 9)} for k in range(1, 11)]
        u["eval"] = {"answered": answered, "accuracy_given_answered": 0.5, "mean_episodes": episodes,
                     "ended_early": 1.0, "progress_per_episode": [{"episode": j + 1, "progress": p, "count": 4}
                                                                   for j, p in enumerate(progress)]}
        return u

    # seed 0 resumed from its own finished training (after a kill); seed 1 evaluated seed 0's training.
    units = [unit(0, 0.5, 3.0, [0.25, 0.0], 0.1, "k0", reused=True), unit(1, 1.0, 4.0, [0.75], 0.3, "k0", reused=True)]
    report = build_report("t", units, ["mrt"], [0, 8, 16], 8, resamples=20)
    mrt = report["arms"]["mrt"]
    b = mrt["behaviour"]
    assert (b["answered"], b["episodes"], b["ended_early"]) == (0.75, 3.5, 1.0)
    assert b["progress_per_episode"] == {"1": 0.5, "2": 0.0} and b["prover_step_share"] == pytest.approx(0.2)
    assert b["frac_empty_prefix"] is None  # not a branched arm
    # The unit that evaluated another unit's training spent only its evaluation.
    assert mrt["wall_seconds"]["total"] == 140.0 + 40.0 and mrt["wall_seconds"]["train_mean"] == 100.0
    table = markdown_report(report)
    assert ("| mrt | 0.000 [0.000, 0.000] (16 vs 8) | 0.750 | 0.500 | 3.50 | 1.000 | +0.500 / +0.000 / n/a | 0.200 |"
            in table)
    # Per unit; the training reward is the mean of the last 8 steps (steps 3-10: two of them 1).
    assert "| mrt-seed0 | 0.000 | 0.500 | 0.500 | 0.500 | 3.00 | 0.250 | 100 | 40 |" in table
    assert "| mrt-seed1 | 0.000 | 0.500 | 0.500 | 1.000 | 4.00 | 0.250 | shared | 40 |" in table
    # With a training of its own, seed 1 counts it too.
    units[1]["training_key"] = "k1"
    own = build_report("t", units, ["mrt"], [0, 8, 16], 8, resamples=20)["arms"]["mrt"]["wall_seconds"]
    assert own["total"] == 2 * 140.0


def test_paired_bootstrap_covers_the_true_difference():
    import numpy as np

    rng = np.random.default_rng(3)
    true = 0.2
    ref, arm = {}, {}
    for seed in range(5):
        seed_effect = rng.normal(0, 0.05)  # a seed moves both arms alike: pairing removes it
        base = np.clip(rng.uniform(0.2, 0.6, size=32) + seed_effect, 0, 1)
        noise = rng.normal(0, 0.1, size=32)
        ref[seed] = [[0.0, b, b] for b in base]
        arm[seed] = [[0.0, b + true + n, b] for b, n in zip(base, noise)]
    report = build_report("t", _paired_units("grpo", ref) + _paired_units("mrt", arm), ["grpo", "mrt"], [0, 8, 16],
                          8, resamples=500, seed=0)
    at8 = report["paired"]["arms"]["mrt"]["accuracy"][1]
    assert at8["low"] <= true <= at8["high"] and at8["low"] > 0.1  # covers 0.2, excludes no effect
    assert at8["t_low"] <= true <= at8["t_high"]
    assert at8["positive"] == 5 and at8["sign_p"] == 0.0625


# ---------------------------------------------------------------- provenance: the code version of each unit


def test_code_version_is_the_commit_and_whether_the_tree_differs(tmp_path):
    from mrt.experiments.compare import code_version

    assert code_version(tmp_path) is None  # outside git
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.py").write_text("x = 1\n")
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    for args in (["init", "-q"], ["add", "a.py"], ["commit", "-q", "-m", "one"]):
        subprocess.run(git + args, check=True, capture_output=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    tree = subprocess.run(git + ["rev-parse", "HEAD^{tree}"], check=True, capture_output=True, text=True).stdout.strip()
    assert code_version(repo) == {"commit": head, "tree": tree, "dirty": False}
    (repo / "a.py").write_text("x = 2\n")
    assert code_version(repo) == {"commit": head, "tree": tree, "dirty": True}
    (repo / "a.py").write_text("x = 1\n")
    (repo / "NOTES.md").write_text("results\n")  # a commit that leaves the code as it was keeps its tree
    for args in (["add", "NOTES.md"], ["commit", "-q", "-m", "two"]):
        subprocess.run(git + args, check=True, capture_output=True)
    (repo / "lib").mkdir()
    (repo / "lib" / "b.py").write_text("y = 1\n")
    for args in (["add", "lib"], ["commit", "-q", "-m", "three"]):
        subprocess.run(git + args, check=True, capture_output=True)
    lib = code_version(repo / "lib")
    (repo / "NOTES.md").write_text("more results\n")
    for args in (["add", "NOTES.md"], ["commit", "-q", "-m", "four"]):
        subprocess.run(git + args, check=True, capture_output=True)
    later = code_version(repo / "lib")
    assert later["commit"] != lib["commit"] and later["tree"] == lib["tree"] and not later["dirty"]
    mine = code_version()  # the library's own checkout
    assert mine is None or len(mine["commit"]) == 40


def test_the_report_names_the_code_versions_and_refuses_a_mix():
    units = [{**_unit("grpo", s, [[0.0, 0.5, 0.5]]), "unit": f"grpo-seed{s}",
              "code_version": {"commit": "a" * 40, "dirty": False}} for s in (0, 1)]
    report = build_report("t", units, ["grpo"], [0, 8, 16], 8, resamples=20)
    assert report["code_versions"] == {"a" * 12: ["grpo-seed0", "grpo-seed1"]} and not report["mixed_versions"]
    assert f"Code version: {'a' * 12} (2 units)" in markdown_report(report)
    tree = {"commit": "c" * 40, "tree": "d" * 40, "dirty": False}  # units name the library's tree when they have it
    assert version_label({"code_version": tree}) == "mrt@" + "d" * 12

    units.append({**_unit("mrt", 0, [[0.0, 1.0, 1.0]]), "unit": "mrt-seed0",
                  "code_version": {"commit": "b" * 40, "dirty": True}})
    units.append({**_unit("mrt", 1, [[0.0, 1.0, 1.0]]), "unit": "mrt-seed1"})  # recorded none
    with pytest.raises(ValueError, match="3 code versions.*allow_mixed_versions"):
        build_report("t", units, ["grpo", "mrt"], [0, 8, 16], 8, resamples=20)
    report = build_report("t", units, ["grpo", "mrt"], [0, 8, 16], 8, resamples=20, allow_mixed_versions=True)
    assert report["mixed_versions"] and report["arms"]["mrt"]["code_versions"] == ["b" * 12 + "+dirty", "unknown"]
    table = markdown_table(report)
    assert table.splitlines()[0].endswith("| code |")
    assert table.splitlines()[-1].endswith(f"| {'b' * 12}+dirty, unknown |")
    assert "Code versions (mixed" in markdown_report(report)


def test_smoke_units_record_their_code_version_and_a_unit_of_another_version_is_refused(smoke, tmp_path):
    import shutil

    from mrt.experiments.compare import code_version

    out, stdout = smoke
    units = {p.stem: json.loads(p.read_text()) for p in (out / "units").glob("*.json")}
    assert all(u["code_version"] == code_version() for u in units.values())
    report = json.loads((out / "results.json").read_text())
    assert report["paired"]["reference"] == "grpo" and "grpo" not in report["paired"]["arms"]
    assert report["paired"]["arms"]["mrt_dense"]["seeds"] == [0]
    assert "Paired against grpo" in stdout and "diff_accuracy" in (out / "results.csv").read_text()

    copy = tmp_path / "compare"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("work"))
    (copy / "units" / "grpo-seed0.json").unlink()
    older = json.loads((copy / "units" / "base.json").read_text())
    older["code_version"] = {"commit": "0" * 40, "dirty": False}
    (copy / "units" / "base.json").write_text(json.dumps(older))
    config = load_config(CPU_CONFIG, smoke=True, output_dir=str(copy))
    with pytest.raises(ValueError, match="code versions"):  # refused before training anything
        run_comparison(config, progress_bar=False)
    assert not (copy / "units" / "grpo-seed0.json").exists()


# ---------------------------------------------------------------- the reasoning testbed's comparison

TESTBED_CONFIG = ROOT / "configs" / "compare_testbed.yaml"


def test_testbed_smoke_runs_every_arm_with_task_columns_and_pairs_them_with_grpo(tmp_path):
    out = tmp_path / "testbed"
    result = subprocess.run([sys.executable, str(SCRIPT), "--config", str(TESTBED_CONFIG), "--smoke",
                             "--output_dir", str(out), "--no_progress"], cwd=ROOT, env=ENV, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    units = sorted(p.stem for p in (out / "units").glob("*.json"))
    assert units == ["base", "grpo-seed0", "grpo.draws-seed0", "grpo.eval1-seed0", "grpo.eval2-seed0",
                     "mrt_branched-seed0", "mrt_dense-seed0", "termination_baseline-seed0"]
    unit = {name: json.loads((out / "units" / f"{name}.json").read_text()) for name in units}
    # The draw-only spread: eval1/eval2 evaluate grpo's trained model (trained once) with other evaluation seeds;
    # grpo.draws trains on the same problems with other draws.
    grpo, draws = unit["grpo-seed0"], unit["grpo.draws-seed0"]
    for name in ("grpo.eval1-seed0", "grpo.eval2-seed0"):
        assert unit[name]["training_reused"] and unit[name]["training_key"] == grpo["training_key"]
        assert unit[name]["weight_change"] == grpo["weight_change"]
    assert not grpo["training_reused"] and draws["training_key"] != grpo["training_key"]
    assert draws["weight_change"] != grpo["weight_change"]
    assert not any((out / "work" / "trained").iterdir())  # no unit left to evaluate them: deleted
    rows = [json.loads(line) for line in (out / "eval_problems.jsonl").read_text().splitlines()]
    assert rows and all({"problem", "answer", "task", "metadata"} <= set(r) for r in rows)  # the task's reward reads them
    summary = (out / "summary.md").read_text()
    assert "Paired against grpo" in summary
    for arm in ("mrt_dense", "termination_baseline", "mrt_branched"):
        assert f"| {arm} | 1x (16) |" in summary


def test_an_arm_trains_only_its_own_seeds():
    config = load_config(TESTBED_CONFIG)
    names = [name for name, _, _ in config.units()]
    assert [n for n in names if n.startswith("grpo-")] == [f"grpo-seed{s}" for s in config.seeds]
    assert [n for n in names if n.startswith("mrt_branched-")] == ["mrt_branched-seed0", "mrt_branched-seed1000",
                                                                   "mrt_branched-seed2000"]
    arm = Arm(name="x", config=str(ROOT / "configs" / "mrt_testbed.yaml"), seeds=[0, 7])
    with pytest.raises(ValueError, match=r"CompareConfig\.arms .*among the comparison's seeds"):
        CompareConfig(arms=[arm], seeds=[0, 1])


def test_held_out_problems_have_no_commuted_twin_of_a_training_problem(tmp_path):
    from mrt.experiments.compare import _training_problems, held_out_key

    ask = "State the final answer to the following arithmetic problem: {} ="
    assert held_out_key(ask.format("2 + 7 - 3")) == held_out_key(ask.format("7 - 3 + 2"))
    assert held_out_key(ask.format("2 + 7 - 3")) != held_out_key(ask.format("2 - 7 + 3"))
    assert held_out_key("What is 3 * 4 + 2?") == "What is 3 * 4 + 2?"  # not a chain sum: the text itself
    config = load_config(TESTBED_CONFIG, output_dir=str(tmp_path))
    config.evaluation["num_problems"] = 16
    trained = _training_problems(config)
    rows = [json.loads(line) for line in write_held_out(config).read_text().splitlines()]
    keys = [held_out_key(r["problem"]) for r in rows]
    assert len(rows) == 16 and len(set(keys)) == 16 and not set(keys) & trained


def test_a_unit_evaluated_with_another_seed_is_paired_problem_by_problem(tmp_path):
    from mrt.experiments.compare import aligned_units, problem_order
    from mrt.experiments.report import in_problem_order

    table = {"budgets": [0], "cutoffs": [], "index": [0, 1, 2], "accuracy": [[0.0], [0.5], [1.0]],
             "regret": [[], [], []], "outcome": [0, 1, 1], "tokens": [3, 4, 5]}
    moved = in_problem_order(table, [2, 0, 1])
    assert moved["index"] == [2, 0, 1] and moved["accuracy"] == [[1.0], [0.0], [0.5]] and moved["tokens"] == [5, 3, 4]
    assert moved["budgets"] == [0] and table["index"] == [0, 1, 2]  # a copy

    config = load_config(TESTBED_CONFIG, output_dir=str(tmp_path))
    config.evaluation["num_problems"] = 8
    problems = write_held_out(config)
    plan = config.units()
    arms = {name: arm for name, arm, _ in plan}
    orders = {name: problem_order(config, arms[name], problems) for name in ("grpo-seed0", "grpo.eval1-seed0")}
    assert sorted(orders["grpo-seed0"]) == sorted(orders["grpo.eval1-seed0"]) != orders["grpo.eval1-seed0"]
    # Each unit's row i holds a number that names the problem its evaluation took i-th.
    ids = {p: i for i, p in enumerate(orders["grpo-seed0"])}
    done = {name: {"unit": name, "per_problem": {"index": list(range(8)), "accuracy": [[ids[p]] for p in order]}}
            for name, order in orders.items()}
    units = {u["unit"]: u for u in aligned_units(config, plan, done, problems)}
    assert units["grpo-seed0"] == done["grpo-seed0"]  # the comparison's own order: unchanged
    assert units["grpo.eval1-seed0"]["per_problem"]["accuracy"] == [[i] for i in range(8)]
