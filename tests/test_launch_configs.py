"""Every launch the docs write as `accelerate launch --config_file configs/accelerate/X.yaml ... --config
configs/Y.yaml` passes the checks that run before its first step, on CPU.

The pairs are read from README.md, docs/*.md and the comments of configs/**/*.yaml, so a newly documented pair
is covered without editing this file. For each one: accelerate's own `launch_command` prepares the environment
every rank inherits (only the start of the ranks is replaced); the recipe is parsed by the script's own parser
in that environment (transformers builds accelerate's DeepSpeedPlugin from it in
TrainingArguments.__post_init__, and TRL's GRPOConfig checks its batch arithmetic there); then the Trainer's
steps (propagate_args_to_deepspeed, trainer_config_finalize) and DeepSpeed's own batch check run on the
resulting DeepSpeed config.

What cannot be built on CPU is replaced, and only that: the process count (`TrainingArguments.world_size`
returns the launch's num_processes), `--use_cpu true` (transformers refuses bf16 without a GPU unless use_cpu;
the DeepSpeed config does not depend on it), the launch's port check (a busy port here says nothing about the
config), and DeepSpeed's rank query (no process group).
"""

import re
import types
from pathlib import Path

import pytest
import yaml

pytest.importorskip("deepspeed")

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


def documented_launches() -> dict[str, list[str]]:
    """Launch commands (the tokens after `accelerate launch`) that pair an accelerate config with a recipe,
    mapped to the files that document them."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "configs").rglob("*.yaml"))]
    found: dict[str, list[str]] = {}
    for path in files:
        lines = path.read_text().splitlines()
        if path.suffix == ".yaml":  # commands live in the comments
            lines = [line.lstrip()[1:] for line in lines if line.lstrip().startswith("#")]
        for line in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines():  # join continued lines
            _, sep, command = line.partition("accelerate launch ")
            tokens = []
            for token in command.split() if sep else []:
                if token.startswith("#") or token in ("&", "&&", ";", "|"):
                    break
                tokens.append(token.strip("'\"`"))
            if has_value(tokens, "--config_file", r"configs/accelerate/[\w.-]+\.yaml") and has_value(
                    tokens, "--config", r"configs/[\w.-]+\.yaml"):
                found.setdefault(" ".join(tokens), []).append(path.relative_to(ROOT).as_posix())
    return found


def has_value(tokens: list[str], flag: str, pattern: str) -> bool:
    return any(a == flag and re.fullmatch(pattern, b) for a, b in zip(tokens, tokens[1:]))


DOCUMENTED = documented_launches()


def script_parser(script: str):
    """The parser each training script uses."""
    from trl import TrlParser

    from mrt.cli import parser

    if script.endswith("train_mrt_rl.py"):
        return parser()
    if script.endswith("train_mrt_star.py"):
        from mrt.star.run import STaRConfig

        return TrlParser((STaRConfig,))  # as in scripts/train_mrt_star.py
    raise AssertionError(f"{script}: no parser known for this script; add it to script_parser")


def launch_environment(tokens: list[str], monkeypatch) -> types.SimpleNamespace:
    """What `accelerate launch TOKENS` hands to every rank: its parsed arguments and ACCELERATE_* values."""
    import accelerate.commands.launch as launch
    import accelerate.utils.launch as launch_utils

    seen = {}
    prepare = launch.prepare_deepspeed_cmd_env

    def record(args):
        cmd, env = prepare(args)
        seen.update(args=args, env={k: v for k, v in env.items() if k.startswith("ACCELERATE_")})
        return cmd, env

    monkeypatch.setattr(launch, "prepare_deepspeed_cmd_env", record)
    monkeypatch.setattr(launch, "_run_torchrun", lambda args: None)  # the ranks are not started
    monkeypatch.setattr(launch, "_run_subprocess", lambda *args: None)
    monkeypatch.setattr(launch_utils, "is_port_in_use", lambda port: False)
    monkeypatch.chdir(ROOT)
    launch.launch_command(launch.launch_command_parser().parse_args(tokens))
    assert seen, f"{tokens}: accelerate did not take its DeepSpeed launcher"
    return types.SimpleNamespace(**seen)


def check_launch(tokens: list[str], monkeypatch):
    """Build the launch's DeepSpeed config as the ranks would, running the launch-time checks; returns the
    training arguments, the final DeepSpeed config and the number of ranks."""
    import deepspeed.comm
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import propagate_args_to_deepspeed

    launch = launch_environment(tokens, monkeypatch)
    assert launch.env.get("ACCELERATE_USE_DEEPSPEED") == "true", f"{tokens}: not a DeepSpeed launch"
    for key, value in launch.env.items():
        monkeypatch.setenv(key, value)
    world = int(launch.args.num_processes)
    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: world))

    # TrainingArguments.__post_init__ builds the DeepSpeedPlugin from the environment; GRPOConfig checks
    # the batch arithmetic.
    parsed = script_parser(launch.args.training_script).parse_args_and_config(
        args=[*launch.args.training_script_args, "--use_cpu", "true"])
    args = next(a for a in parsed if isinstance(a, TrainingArguments))
    plugin = args.deepspeed_plugin
    assert plugin is not None and plugin.zero_stage == 3

    # Trainer.__init__ (the accelerator holds the plugin), then deepspeed_init at the start of train(): the
    # mismatches between the DeepSpeed config and the training arguments are raised here. These configs have
    # no scheduler or model-size keys, so neither the model nor the step count matters.
    accelerator = types.SimpleNamespace(state=types.SimpleNamespace(deepspeed_plugin=plugin))
    propagate_args_to_deepspeed(accelerator, args)
    plugin.hf_ds_config.trainer_config_finalize(args, None, max(args.max_steps, 1))
    config = plugin.hf_ds_config.config
    assert "auto" not in yaml.safe_dump(config), f"unfilled 'auto' left in the DeepSpeed config: {config}"

    # deepspeed.initialize: DeepSpeed's own checks (train batch = micro batch x accumulation x ranks).
    monkeypatch.setattr(deepspeed.comm, "get_rank", lambda *a, **k: 0)
    ranks = types.SimpleNamespace(get_data_parallel_world_size=lambda: world)
    DeepSpeedConfig(dict(config), mpu=ranks)
    return args, config, world


def test_the_docs_pair_every_accelerate_config_family_with_recipes():
    assert DOCUMENTED, "no `accelerate launch --config_file ... --config configs/...` command in the docs"
    used = {re.search(r"--config_file (\S+)", command).group(1) for command in DOCUMENTED}
    assert "configs/accelerate/zero3_8gpu.yaml" in used and "configs/accelerate/zero3_cpu_2proc.yaml" in used


@pytest.mark.parametrize("command", sorted(DOCUMENTED), ids=lambda c: re.sub(r"\S*/", "", c)[:90])
def test_documented_launch_passes_the_launch_checks(command, monkeypatch):
    args, config, world = check_launch(command.split(), monkeypatch)
    assert config["gradient_accumulation_steps"] == args.gradient_accumulation_steps
    assert config["train_micro_batch_size_per_gpu"] == args.per_device_train_batch_size
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
    assert config["train_batch_size"] == per_step * world
    assert config["gradient_clipping"] == args.max_grad_norm
    assert config["bf16"]["enabled"] == args.bf16
    if hasattr(args, "num_generations") and hasattr(args, "generation_batch_size"):  # GRPO: whole groups
        assert args.generation_batch_size % args.num_generations == 0


def sweep_recipe(accelerate_config: Path) -> str:
    """A recipe whose precision matches the accelerate config (bf16 GPU recipe or the fp32 CPU one)."""
    gpu = yaml.safe_load(accelerate_config.read_text())["mixed_precision"] == "bf16"
    return "configs/mrt_deepscaler_1.5b.yaml" if gpu else "configs/mrt_smollm2_arithmetic.yaml"


@pytest.mark.parametrize("accelerate_config", ACCELERATE_CONFIGS, ids=lambda p: p.stem)
def test_batch_settings_from_the_command_line_reach_deepspeed(accelerate_config, monkeypatch):
    # The command: a sweep over gradient accumulation (and clipping) on the command line.
    command = ["--config_file", f"configs/accelerate/{accelerate_config.name}", "scripts/train_mrt_rl.py",
               "--config", sweep_recipe(accelerate_config), "--gradient_accumulation_steps", "2",
               "--max_grad_norm", "0.5"]
    args, config, world = check_launch(command, monkeypatch)
    assert (args.gradient_accumulation_steps, config["gradient_accumulation_steps"]) == (2, 2)
    assert (args.max_grad_norm, config["gradient_clipping"]) == (0.5, 0.5)


def test_a_pinned_accumulation_is_caught(tmp_path, monkeypatch):
    # The check itself: an accelerate config that pins the accumulation fails as the real launch does.
    pinned = yaml.safe_load((ROOT / "configs" / "accelerate" / "zero3_8gpu.yaml").read_text())
    pinned["deepspeed_config"]["gradient_accumulation_steps"] = 1
    path = tmp_path / "pinned.yaml"
    path.write_text(yaml.safe_dump(pinned))
    command = ["--config_file", str(path), "scripts/train_mrt_rl.py",
               "--config", "configs/mrt_deepscaler_1.5b.yaml"]
    with pytest.raises(ValueError, match="gradient_accumulation_steps=1 vs hf gradient_accumulation_steps=4"):
        check_launch(command, monkeypatch)
