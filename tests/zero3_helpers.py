"""Helpers shared by the 2-rank ZeRO-3 CPU tests (tests/test_zero3.py, tests/test_zero3_vllm.py): write a run's
config, `accelerate launch` tests/zero3_probe.py on 2 ranks, and recompute a completion's advantages from the probe's
record."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "tests" / "zero3_probe.py"
ACCELERATE_CONFIG = ROOT / "configs" / "accelerate" / "zero3_cpu_2proc.yaml"
LAUNCH_TIMEOUT = 480  # seconds per launch; a run is ~1 minute on 2 busy cores, a deadlock never ends


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_run(tmp: Path, model_path: str, name: str, steps: int = 3, alpha: float = 0.5, **overrides) -> Path:
    """The CPU recipe on 32 copies of "3 + 4" with a tiny batch; `overrides` replace or add config fields."""
    data = tmp / "problems.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps({"problem": f"Item {i}: what is 3 + 4?", "answer": "7"}) + "\n"
                                for i in range(32)))
    config = yaml.safe_load((ROOT / "configs" / "mrt_smollm2_arithmetic.yaml").read_text())
    config.update(
        model_name_or_path=model_path, dataset_name=str(data), num_train_problems=None,
        output_dir=str(tmp / name), max_steps=steps, save_strategy="steps", save_steps=2, seed=7,
        learning_rate=1e-4, per_device_train_batch_size=4, num_generations=2, max_completion_length=8,
        alpha=alpha, max_episodes=8, prover_num_samples=2, prover_max_tokens=3, prover_batch_size=2,
        termination_suffix="\nTime is up. The final answer is $\\boxed{7}$.\n", prover_stop=["}"],
        ds3_gather_for_generation=False,
    )
    config.update(overrides)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch(config: Path, tmp: Path, *args: str, timeout: int = LAUNCH_TIMEOUT, **env: str) -> list[dict]:
    """accelerate launch the probe on 2 ZeRO-3 CPU ranks; returns the per-rank records."""
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        pytest.skip("accelerate CLI not installed beside this python")
    out = config.with_suffix("")
    command = [str(accelerate), "launch", "--config_file", str(ACCELERATE_CONFIG),
               "--main_process_port", str(free_port()), str(PROBE), "--config", str(config), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MRT_PROBE_UNEQUAL": "1",
           "MRT_PROBE_DIR": str(out / "probe"), "PYTHONPATH": os.pathsep.join(
               [str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]), **env}
    log = tmp / f"{out.name}.log"
    with log.open("w") as handle:
        process = subprocess.Popen(command, cwd=tmp, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the launcher and both ranks
            process.wait()
            pytest.fail(f"2-rank run did not finish within {timeout} s (hung?):\n{log.read_text()[-4000:]}")
    assert code == 0, log.read_text()[-6000:]
    records = [json.loads((out / "probe" / f"rank{r}.json").read_text()) for r in range(2)]
    return records


def expected_advantages(step: dict, row: int, alpha: float) -> list[float]:
    """sequence advantage + alpha * (J_j - J_{j-1}) on the tokens of episode j, recomputed from the record."""
    values = [step["sequence_advantages"][row]] * len(step["advantages"][row])
    js, start = step["j_values"][row], 0
    for j, end in enumerate(step["ends"][row]):
        for t in range(start, min(end, len(values))):
            values[t] += alpha * (js[j + 1] - js[j])
        start = end
    return values
