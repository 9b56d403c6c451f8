"""report_to: a 1-step MRT run on the tiny model logs the train loss and the `mrt/` metrics to each tracker,
offline; the GPU recipes log to one.

TensorBoard runs in this process (CI installs it). trackio and wandb run through the training script in a
child process, as a user would (both read their directories from the environment when imported; wandb starts
a service process), and skip when their package is not installed (`pip install -e '.[tracking]'`).
"""

import glob
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_train_script import ROOT, SCRIPT, run, write_config

TRACKERS = {"tensorboard", "trackio", "wandb"}


def command(tmp_path, model_path, tracker: str) -> list[str]:
    return ["--config", str(write_config(tmp_path, model_path)), "--max_steps", "1", "--report_to", tracker,
            "--run_name", "mrt-tiny"]


def assert_loss_and_mrt_metrics(tags: set[str]):
    assert "train/loss" in tags, sorted(tags)
    assert {"train/mrt/episodes", "train/mrt/J_0", "train/mrt/progress"} <= tags, sorted(tags)


def test_tensorboard_events_hold_the_loss_and_mrt_metrics(tiny_model_path, tmp_path):
    pytest.importorskip("tensorboard", reason="not installed (pip install -e '.[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mrt.cli import parser, train

    train(*parser().parse_args_and_config(args=command(tmp_path, tiny_model_path, "tensorboard")))
    events = sorted((tmp_path / "out" / "runs").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file under output_dir/runs"
    scalars = EventAccumulator(str(events[0].parent))
    scalars.Reload()
    tags = set(scalars.Tags()["scalars"])
    assert_loss_and_mrt_metrics(tags)
    [episodes] = scalars.Scalars("train/mrt/episodes")
    assert episodes.step == 1 and episodes.value >= 1  # every completion of the tiny run has an episode


def test_trackio_logs_locally(tiny_model_path, tmp_path, monkeypatch):
    pytest.importorskip("trackio", reason="not installed (pip install -e '.[tracking]')")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    args = [*command(tmp_path, tiny_model_path, "trackio"), "--project", "mrt-test"]
    run([sys.executable, str(SCRIPT), *args], tmp_path)
    read = ("import json; from trackio.sqlite_storage import SQLiteStorage as S; "
            "print(json.dumps(sorted({k for row in S.get_logs('mrt-test', 'mrt-tiny') for k in row})))")
    keys = subprocess.run([sys.executable, "-c", read], capture_output=True, text=True, check=True,
                          timeout=120)
    assert_loss_and_mrt_metrics(set(json.loads(keys.stdout.splitlines()[-1])))


def test_wandb_logs_offline(tiny_model_path, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="not installed (pip install -e '.[tracking]')")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run([sys.executable, str(SCRIPT), *command(tmp_path, tiny_model_path, "wandb")], tmp_path)
    [record] = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    # wandb ships no reader of its offline run file; its history keys are stored as plain protobuf strings.
    data = Path(record).read_bytes()
    assert_loss_and_mrt_metrics({key for key in ("train/loss", "train/mrt/episodes", "train/mrt/J_0",
                                                 "train/mrt/progress") if key.encode() in data})


GPU_RECIPES = sorted({*ROOT.glob("configs/*1.5b*.yaml"), *ROOT.glob("configs/*gpu*.yaml")})


@pytest.mark.parametrize("recipe", GPU_RECIPES, ids=lambda p: p.stem)
def test_gpu_recipes_log_to_a_tracker(recipe):
    config = yaml.safe_load(recipe.read_text())
    if "train" in config:  # a comparison (scripts/compare_methods.py): the fields every unit trains with
        config = config["train"]
    else:
        assert config.get("run_name"), f"{recipe.name}: no run_name"
    report_to = config.get("report_to")
    report_to = [report_to] if isinstance(report_to, str) else report_to
    assert report_to and set(report_to) <= TRACKERS, f"{recipe.name}: report_to={report_to!r}"
