"""scripts/bench_step.py in smoke mode (1 step each) so that it cannot rot."""

import os
import subprocess
import sys
from pathlib import Path

from test_train_script import write_config

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_step.py"


def test_bench_prints_the_table_and_the_ratio(tiny_model_path, tmp_path):
    config = write_config(tmp_path, tiny_model_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--config", str(config), "--bench_steps", "1"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.strip().splitlines()
    assert float(lines[-1]) > 0
    table = "\n".join(lines)
    assert "step time (s)" in table and "prover share of the step" in table
    header = next(line for line in lines if "GRPO" in line)
    assert header.split() == ["GRPO", "MRT", "sampling", "MRT", "likelihood"]
    requests = next(line for line in lines if line.startswith("prover requests")).split()
    # GRPO has no prover; both MRT runs ask the same batch: "asked -> unique" for each
    assert requests[-7] == "-"
    for asked, unique in ((requests[-6], requests[-4]), (requests[-3], requests[-1])):
        assert 0 < float(unique) <= float(asked)
    priced = next(line for line in lines if line.startswith("(GRPO step + prover) / GRPO")).split()
    assert float(priced[-3]) == 1.0 and float(priced[-2]) > 1.0 and float(priced[-1]) > 1.0
    tokens = next(line for line in lines if line.startswith("prover tokens")).split()
    assert float(tokens[-3]) == 0  # the likelihood estimator samples nothing
    ratios = [line for line in lines if " completion tokens: " in line]
    assert [r.split()[0] for r in ratios] == ["sampling", "likelihood"]


COMPARE = Path(__file__).resolve().parents[1] / "scripts" / "compare_estimators.py"


def test_compare_estimators_reports_both_estimators_on_the_same_requests(tiny_model_path, tmp_path):
    config = write_config(tmp_path, tiny_model_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(COMPARE), "--config", str(config), "--compare_batches", "1",
                             "--compare_samples", "3"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    values = dict(line.split(None, 1) for line in result.stdout.strip().splitlines()[-8:])
    assert int(values["requests"]) > 0 and int(values["samples_per_request"]) == 3
    assert 0.0 <= float(values["mean_J_sampling"]) <= 1.0
    assert 0.0 < float(values["mean_J_likelihood"]) < 1.0  # a probability, never exactly 0 or 1
    assert float(values["seconds_sampling"]) > 0 and float(values["seconds_likelihood"]) > 0
