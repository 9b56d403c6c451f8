"""scripts/eval_mrt.py end to end on the offline SmolLM2 (transformers backend): JSON, CSVs and PNGs; a run killed
midway resumes without redoing the finished problems and gives the same result as one that never stopped."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "eval_mrt.py"
# Small enough for a loaded 2-core machine; 1 thread is faster than 2 there and keeps runs bit-identical. One problem
# per call, so that the kill lands between the two problems' records (resuming inside a chunk: test_evaluation.py).
ARGS = ["--models", "smollm2-135m", "--dataset", "arithmetic:1", "--num_problems", "2", "--num_samples", "2",
        "--max_tokens", "16", "--budgets", "0", "8", "16", "--prover_num_samples", "2", "--prover_max_tokens", "4",
        "--prover_stop", "}", "--termination_suffix", "boxed", "--backend", "transformers", "--seed", "3",
        "--problems_per_call", "1"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def command(output_dir) -> list[str]:
    return [sys.executable, str(SCRIPT), *ARGS, "--output_dir", str(output_dir)]


def records(output_dir) -> list[dict]:
    (path,) = (Path(output_dir) / "records").glob("*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(smollm2_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    result = subprocess.run(command(out), env=ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.mark.slow
def test_writes_json_csvs_and_pngs(uninterrupted):
    results = json.loads((uninterrupted / "results.json").read_text())
    (m,) = results["models"].values()
    assert m["num_problems"] == 2 and m["num_completions"] == 4
    assert [p["budget"] for p in m["accuracy_vs_budget"]] == [0, 8, 16]
    assert [r["cutoff"] for r in m["regret"]] == [8, 16]
    for r in m["regret"]:
        assert 0.0 <= r["regret"] <= 1.0
    for row in records(uninterrupted):
        for c in row["completions"]:
            assert c["j_tokens"][0] == 0 and c["j_tokens"][-1] == c["tokens"] <= 16
            assert len(c["j_values"]) == len(c["episode_ends"]) + 1
            # J is a mean of 2 answers (or the 0/1 outcome): a multiple of 1/2.
            assert all(v in (0.0, 0.5, 1.0) for v in c["j_values"] + c["budget_accuracy"])
    for name in ("accuracy_vs_budget", "j_curve", "regret", "progress_per_episode", "summary", "efficiency"):
        lines = (uninterrupted / f"{name}.csv").read_text().splitlines()
        assert lines[0].split(",")[0] in ("model", "target_accuracy") and len(lines) >= 1
    assert len((uninterrupted / "regret.csv").read_text().splitlines()) == 1 + 2
    for name in ("accuracy_vs_budget.png", "j_vs_tokens.png", "regret_vs_cutoff.png", "summary.png"):
        assert (uninterrupted / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(uninterrupted, tmp_path):
    out = tmp_path / "eval"
    path = None
    process = subprocess.Popen(command(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and process.poll() is None:
            found = list((out / "records").glob("*.jsonl")) if (out / "records").exists() else []
            if found and found[0].read_text().count("\n") >= 1:
                path = found[0]
                break
            time.sleep(0.2)
        assert path is not None, "no problem was finished before the deadline"
        os.kill(process.pid, signal.SIGKILL)  # midway: problem 2 of 2 is being generated
    finally:
        process.kill()
        process.wait()
    assert not (out / "results.json").exists(), "the run finished before it could be killed"
    first = records(out)
    assert len(first) == 1

    result = subprocess.run(command(out), env=ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    resumed = records(out)
    # One record per problem: the finished one was kept as written by the killed run, not generated again.
    assert [r["index"] for r in resumed] == [0, 1]
    assert resumed[0] == first[0]
    assert resumed[1]["run"] != first[0]["run"]
    # The same numbers as the run that never stopped.
    reference = records(uninterrupted)
    assert [r["completions"] for r in resumed] == [r["completions"] for r in reference]
    a = json.loads((out / "results.json").read_text())["models"]
    b = json.loads((uninterrupted / "results.json").read_text())["models"]
    for m in (a, b):
        for v in m.values():
            v.pop("records")
    assert a == b
