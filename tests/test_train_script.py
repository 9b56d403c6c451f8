"""scripts/train_mrt_rl.py (a few lines over mrt.cli): plain python and accelerate launch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_mrt_rl.py"


def write_config(tmp_path, model_path) -> Path:
    # Start from the shipped CPU default and shrink it to the tiny model.
    config = yaml.safe_load((ROOT / "configs" / "mrt_smollm2_arithmetic.yaml").read_text())
    config.update(model_name_or_path=model_path, output_dir=str(tmp_path / "out"), max_steps=5,
                  num_train_problems=16, per_device_train_batch_size=4, num_generations=2,
                  max_completion_length=8, prover_num_samples=2, prover_max_tokens=3)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(command, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def logged_metrics(output: str) -> list[dict]:
    rows = []
    for line in output.splitlines():
        if line.startswith("{") and "'mrt/" in line:
            rows.append(eval(line, {"__builtins__": {}}, {"nan": float("nan"), "inf": float("inf")}))
    return rows


def test_plain_python_with_command_line_overrides(tiny_model_path, tmp_path):
    # The full override test runs through the installed mrt-train (tests/test_cli.py); this one checks the script.
    config = write_config(tmp_path, tiny_model_path)
    result = run([sys.executable, str(SCRIPT), "--config", str(config), "--max_steps", "1", "--alpha", "0.5"],
                 tmp_path)
    assert len(logged_metrics(result.stdout + result.stderr)) == 1
    assert torch.load(tmp_path / "out" / "training_args.bin", weights_only=False).alpha == 0.5


def test_accelerate_launch_single_process(tiny_model_path, tmp_path):
    config = write_config(tmp_path, tiny_model_path)
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        pytest.skip("accelerate CLI not installed beside this python")
    result = run([str(accelerate), "launch", "--num_processes", "1", "--cpu", str(SCRIPT), "--config", str(config),
                  "--max_steps", "1"], tmp_path)
    assert len(logged_metrics(result.stdout + result.stderr)) == 1
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_bad_field_is_reported(tiny_model_path, tmp_path):
    config = write_config(tmp_path, tiny_model_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--config", str(config), "--max_episodes", "0"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "MRTConfig.max_episodes" in result.stderr
