"""What a `mrt-train` run keeps and says: model card, state, metrics, the completions table, resume, Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from test_train_script import SCRIPT, write_config

PARITY_REWARD = """
def parity(completions, **kwargs):
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(len(text) % 2 == 0) for text in texts]
"""


def train_in_process(config, *overrides):
    from mrt.cli import parser, train

    return train(*parser().parse_args_and_config(args=["--config", str(config), *overrides]))


def test_a_run_keeps_card_state_metrics_and_the_progress_table(tiny_model_path, tmp_path, caplog, monkeypatch):
    # A reward a random model earns about half the time, so that J and the progress terms are not all 0.
    (tmp_path / "parity_rewards.py").write_text(PARITY_REWARD)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = write_config(tmp_path, tiny_model_path)
    with caplog.at_level("INFO", logger="mrt.cli"):
        trainer = train_in_process(config, "--max_steps", "1", "--log_completions", "true",
                                   "--num_completions_to_print", "0", "--reward_funcs", "parity_rewards:parity")
    out = tmp_path / "out"

    card = (out / "README.md").read_text()
    assert "2503.07572" in card and "Optimizing Test-Time Compute via Meta Reinforcement Fine-Tuning" in card
    assert "[None]" not in card and "DeepSeekMath" not in card
    assert os.path.basename(tiny_model_path) in card  # the base model, a local folder here
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 1
    assert "train_runtime" in json.loads((out / "train_results.json").read_text())

    summary = "\n".join(r.getMessage() for r in caplog.records)
    assert "progress_mode=dense" in summary and "prover mu: policy via transformers" in summary
    assert f"saved to {out}" in summary

    # The completions table shows what the loss used, not GRPO's advantage, and the progress behind it.
    table = pd.read_parquet(out / "completions" / "completions_00001.parquet")
    for column in ("episode_ends", "J", "progress", "advantage_per_episode", "advantage"):
        assert column in table.columns
    record = trainer.last_progress
    rows = table.tail(len(record.ends))
    for i, (_, row) in enumerate(rows.iterrows()):
        js = record.j_values[i]
        if not record.scorable[i]:
            continue
        assert list(row["J"]) == pytest.approx(js, abs=1e-4)
        terms = [b - a for a, b in zip(js, js[1:])]
        assert list(row["progress"]) == pytest.approx(terms, abs=1e-4)
        assert list(row["episode_ends"]) == record.ends[i]
        expected = [float(record.sequence_advantages[i]) + trainer.args.alpha * t for t in terms]
        assert list(row["advantage_per_episode"]) == pytest.approx(expected, abs=1e-3)
    # The advantage column is the mean per-token advantage the loss used; with progress it is not GRPO's.
    grpo = record.grpo_advantages.tolist()
    moved = [abs(a - g) > 1e-6 for a, g in zip(rows["advantage"], grpo)]
    has_progress = [any(abs(t) > 0 for t in (p if p is not None else [])) for p in rows["progress"]]
    assert moved == has_progress and any(has_progress)


def test_resume_target_reads_true_as_the_last_checkpoint(tmp_path):
    from mrt.cli import resume_target

    out = tmp_path / "out"
    assert resume_target("true", str(out)) is None  # nothing saved yet: start from scratch
    for step in (3, 12):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        (out / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert resume_target("true", str(out)) == str(out / "checkpoint-12")
    assert resume_target("True", str(out)) == str(out / "checkpoint-12")
    assert resume_target(True, str(out)) == str(out / "checkpoint-12")
    assert resume_target("false", str(out)) is None and resume_target(None, str(out)) is None
    assert resume_target(str(out / "checkpoint-3"), str(out)) == str(out / "checkpoint-3")


def test_resume_from_checkpoint_true_continues_the_run(tiny_model_path, tmp_path):
    config = write_config(tmp_path, tiny_model_path)
    train_in_process(config, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1")
    resumed = train_in_process(config, "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1",
                               "--resume_from_checkpoint", "true")
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert resumed.state.global_step == 3 and state["global_step"] == 3
    # Steps 1-2 came from the checkpoint: the resumed run logged only step 3.
    assert [row["step"] for row in resumed.state.log_history if "loss" in row] == [1, 2, 3]
    assert len([row for row in state["log_history"] if "loss" in row]) == 3


def test_ctrl_c_names_the_last_checkpoint_without_a_traceback(tiny_model_path, tmp_path):
    config = write_config(tmp_path, tiny_model_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--config", str(config), "--max_steps", "200",
                             "--save_strategy", "steps", "--save_steps", "1"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = tmp_path / "out" / "checkpoint-1" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert first.exists(), "no checkpoint within 300 s"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    said = [line for line in stderr.splitlines() if line.startswith("Interrupted")]
    assert len(said) == 1 and said[0].startswith("Interrupted; last checkpoint: ")
    assert "checkpoint-" in said[0] and "--resume_from_checkpoint true" in said[0]


def test_push_to_hub_is_called_when_asked(tiny_model_path, tmp_path, monkeypatch):
    # No hub is reachable here, so the upload itself is replaced; the test checks that the command asks for it.
    from mrt.rl.trainer import MRTTrainer

    calls = []
    monkeypatch.setattr(MRTTrainer, "init_hf_repo", lambda self, token=None: None)  # creates the repo at start
    monkeypatch.setattr(MRTTrainer, "push_to_hub", lambda self, **kwargs: calls.append(kwargs))
    config = write_config(tmp_path, tiny_model_path)
    train_in_process(config, "--max_steps", "1", "--push_to_hub", "true", "--hub_model_id", "me/mrt-tiny")
    assert calls[-1] == {"dataset_name": "arithmetic:1"}  # after save_model's own "Model save" push
