"""The training command: script arguments, the parser, and the trainer a config describes.

    mrt-train --config configs/mrt_smollm2_arithmetic.yaml [--any_field value ...]
    accelerate launch [--config_file configs/accelerate/zero3.yaml] scripts/train_mrt_rl.py --config ...

Every field of MRTScriptArguments, MRTConfig and TRL's ModelConfig can be set in the YAML file and overridden on the
command line. Benchmarks and tests build their trainers with `build_trainer` too, so they train what the command trains.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, get_type_hints

from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig, ScriptArguments, TrlParser

from mrt.checks import check
from mrt.data import SYSTEM_PROMPT, load_problems
from mrt.fields import EpisodeFields, ProverFields
from mrt.models import resolve_model
from mrt.quiet import start_command
from mrt.rewards.registry import check_reward_names, load_reward_funcs, uses_default_reward
from mrt.rl.config import MRTConfig
from mrt.threads import set_cpu_threads

if TYPE_CHECKING:  # the trainer (torch, TRL's trainer, vLLM) is imported only to train: --help stays fast
    from mrt.rl.trainer import MRTTrainer

logger = logging.getLogger(__name__)


@dataclass
class MRTScriptArguments(ScriptArguments):
    dataset_name: str | None = field(
        default="arithmetic",
        metadata={"help": "'arithmetic[:difficulty]' (built in), a local JSON/JSONL/Parquet path, or a hub name."},
    )
    dataset_config: str | None = field(
        default=None,
        metadata={"help": "Subset of the dataset (`name` of datasets.load_dataset): a hub dataset's, or a "
                  "local folder's whose README.md declares configs."},
    )
    dataset_streaming: bool = field(
        default=False, metadata={"help": "Stream the dataset (an IterableDataset: set max_steps)."},
    )
    problem_column: str = field(
        default="problem",
        metadata={"help": "Column with the problem text ('prompt' when the default 'problem' is absent, "
                  "as in TRL's datasets)."},
    )
    system_prompt: str | None = field(default=SYSTEM_PROMPT, metadata={"help": "System prompt; '' for none."})
    num_train_problems: int | None = field(default=None, metadata={"help": "Use this many training problems."})
    dataset_seed: int | None = field(default=None, metadata={
        "help": "Seed that picks the training problems (num_train_problems, reasoning-gym tasks). None: `seed`. Set "
                "it to train on the same problems with other random draws (order, samples)."})
    num_eval_problems: int | None = field(default=None, metadata={"help": "Evaluate on this many test problems."})
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Reward functions with TRL's signature, named as `trl grpo` names them: "
                  "accuracy_reward, reasoning_accuracy_reward, think_format_reward, "
                  "get_soft_overlong_punishment (max_completion_len 1280, soft_punish_cache 256), "
                  "or an import path 'package.module.function' or 'package.module:function' (the "
                  "working directory is importable); 'mrt_accuracy' is MRT's default reward "
                  "(math-verify on answer_column). They also define success for the prover. None: "
                  "mrt_accuracy alone."},
    )

    def __post_init__(self):
        check_reward_names(self.reward_funcs)


# ---------------------------------------------------------------- parser


SCRIPT_GROUP, MODEL_GROUP = "script arguments (MRTScriptArguments)", "model (TRL's ModelConfig)"
TRAINER_GROUP = "GRPO and Trainer (TRL's GRPOConfig, transformers' TrainingArguments)"
# --help lists the groups in this order; MRT's own fields go to the group of the class that defines them.
MRT_GROUPS = {
    MRTConfig: "MRT: progress bonus, J estimator, branched mode, data (MRTConfig)",
    EpisodeFields: "MRT: episodes (MRTConfig)",
    ProverFields: "MRT: prover mu (MRTConfig)",
}
HELP_ORDER = (SCRIPT_GROUP, *MRT_GROUPS.values(), MODEL_GROUP, TRAINER_GROUP)


def _help_group(dtype, name: str) -> str:
    """The --help group of the field `name` of `dtype`: MRT's fields by the class that defines them."""
    if dtype is MRTConfig:
        owners = [title for cls, title in MRT_GROUPS.items() if name in vars(cls).get("__annotations__", {})]
        return owners[0] if owners else TRAINER_GROUP
    return {MRTScriptArguments: SCRIPT_GROUP, ModelConfig: MODEL_GROUP}.get(dtype, dtype.__name__)


class MRTParser(TrlParser):
    """TRL's parser (`--config FILE.yaml` plus field overrides) whose --help lists the script arguments and
    MRT's fields first, grouped, then the model's, then the hundreds of GRPOConfig / Trainer fields."""

    def __init__(self, dataclass_types, **kwargs):
        kwargs.setdefault("usage", "%(prog)s [--config FILE.yaml] [--any_field value ...]")
        super().__init__(dataclass_types, **kwargs)
        rank = {title: i for i, title in enumerate(HELP_ORDER)}
        head, groups = self._action_groups[:2], self._action_groups[2:]  # argparse's own two stay first
        self._action_groups = head + sorted(groups, key=lambda g: rank.get(g.title, len(rank)))

    def _add_dataclass_arguments(self, dtype):
        # HfArgumentParser puts every field in one list in MRO order; here each field goes to its group.
        hints, groups = get_type_hints(dtype), {g.title: g for g in self._action_groups}
        for f in dataclasses.fields(dtype):
            if f.init:
                title = _help_group(dtype, f.name)
                if title not in groups:
                    groups[title] = self.add_argument_group(title)
                f.type = hints[f.name]
                self._parse_dataclass_field(groups[title], f)


def parser() -> TrlParser:
    """The parser for (MRTScriptArguments, MRTConfig, ModelConfig): `--config FILE.yaml`, then overrides."""
    return MRTParser((MRTScriptArguments, MRTConfig, ModelConfig))


def kbit_missing(training_args: MRTConfig) -> list[str]:
    """What 4-bit and 8-bit loading (bitsandbytes on CUDA) lacks here; [] when it can run."""
    import torch

    needs = {"the bitsandbytes package": importlib.util.find_spec("bitsandbytes") is not None,
             "CUDA": torch.cuda.is_available() and not training_args.use_cpu}
    return [what for what, ok in needs.items() if not ok]


def quantization_config(model_args: ModelConfig, training_args: MRTConfig):
    """TRL's BitsAndBytesConfig for `load_in_4bit` / `load_in_8bit` (None without them); refused where
    bitsandbytes or CUDA is missing, rather than loading the model unquantized."""
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return None
    from trl import get_quantization_config

    missing = kbit_missing(training_args)
    check(not missing, "ModelConfig", "load_in_4bit" if model_args.load_in_4bit else "load_in_8bit", True,
          f"False: {' and '.join(missing)} missing here (4-bit and 8-bit loading is bitsandbytes on CUDA)")
    return get_quantization_config(model_args)


def problems_seed(dataset_seed: int | None, seed: int) -> int:
    """The seed that picks the training problems: `dataset_seed`, else the training seed."""
    return seed if dataset_seed is None else dataset_seed


def build_trainer(script_args: MRTScriptArguments, training_args: MRTConfig, model_args: ModelConfig) -> MRTTrainer:
    """The trainer a config describes: model alias resolved, datasets loaded (the gold answer column is
    required only by the default reward), rewards by name or path, quantization and PEFT if asked."""
    from mrt.rl.trainer import MRTTrainer

    quantization = quantization_config(model_args, training_args)
    model = resolve_model(model_args.model_name_or_path)
    training_args.model_init_kwargs = {
        **(training_args.model_init_kwargs or {}),
        "dtype": model_args.dtype,
        "attn_implementation": model_args.attn_implementation,
        "revision": model_args.model_revision,
    }

    def load(split, num):
        return load_problems(
            script_args.dataset_name, split=split, problem_column=script_args.problem_column,
            answer_column=training_args.answer_column, system_prompt=script_args.system_prompt or None,
            num_problems=num, seed=problems_seed(script_args.dataset_seed, training_args.seed),
            dataset_config=script_args.dataset_config,
            streaming=script_args.dataset_streaming,
            require_answer=uses_default_reward(script_args.reward_funcs),
        )

    train_dataset = load(script_args.dataset_train_split, script_args.num_train_problems)
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = load(script_args.dataset_test_split, script_args.num_eval_problems)

    peft_config = None
    if model_args.use_peft:
        from trl import get_peft_config

        peft_config = get_peft_config(model_args)
    reward_funcs = load_reward_funcs(script_args.reward_funcs, training_args.answer_column)
    return MRTTrainer(model=model, reward_funcs=reward_funcs, args=training_args, train_dataset=train_dataset,
                      eval_dataset=eval_dataset, peft_config=peft_config, quantization_config=quantization)


def train(script_args: MRTScriptArguments, training_args: MRTConfig, model_args: ModelConfig,
          callbacks: list | None = None) -> MRTTrainer:
    """Build the trainer, train (resuming if asked), then keep what the run made in output_dir: the final model with
    its model card, the trainer state and the train metrics; push to the hub when `push_to_hub` is set."""
    trainer = build_trainer(script_args, training_args, model_args)
    for callback in callbacks or []:
        trainer.add_callback(callback)
    if trainer.accelerator.is_main_process:
        logger.info("%s", trainer.settings_summary())
    result = trainer.train(resume_from_checkpoint=resume_target(training_args.resume_from_checkpoint,
                                                                training_args.output_dir))
    trainer.save_model(training_args.output_dir)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    if trainer.accelerator.is_main_process:
        logger.info("Model, model card, trainer state and metrics saved to %s", training_args.output_dir)
    return trainer


def resume_target(value: str | bool | None, output_dir: str) -> str | None:
    """`resume_from_checkpoint` as the command line gives it: 'true' is the last checkpoint in output_dir (none yet:
    start from scratch, so a requeued job can always pass it), 'false'/'' is none, anything else a checkpoint path."""
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "last"):
        value = True
    if value is True:
        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last is None:
            logger.info("resume_from_checkpoint=true: no checkpoint in %s yet, starting from scratch.", output_dir)
        return last
    if value is False or (isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "")):
        return None
    return value


def main(argv: list[str] | None = None) -> None:
    """Console entry (`mrt-train`): parse argv (default sys.argv[1:]) and train. Returns None: the console script
    passes the return value to sys.exit. The command's start (quiet CPU start, INFO logging) is set here, before
    TRL's trainer is imported, and never by importing this module."""
    start_command()
    script_args, training_args, model_args = parser().parse_args_and_config(args=argv)
    import torch

    if training_args.use_cpu or not torch.cuda.is_available():
        threads = set_cpu_threads()
        if threads is not None:
            logger.info("CPU threads: %d (the idle cores at start; set OMP_NUM_THREADS to choose)", threads)
    guard = InterruptGuard()
    previous = signal.signal(signal.SIGINT, guard.handle)
    try:
        train(script_args, training_args, model_args, callbacks=[guard])
    except KeyboardInterrupt:
        last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        where = (f"last checkpoint: {last} (resume with --resume_from_checkpoint true)" if last
                 else "no checkpoint was saved yet")
        print(f"Interrupted; {where}.", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGINT, previous)


class InterruptGuard(TrainerCallback):
    """Ctrl-C stops training even where Python drops the KeyboardInterrupt (one raised inside a finalizer or a gc
    callback is only printed): the handler raises it as usual and remembers it, and the next step boundary raises it
    again."""

    def __init__(self):
        self.interrupted = False

    def handle(self, signum, frame):
        self.interrupted = True
        raise KeyboardInterrupt

    def on_substep_end(self, args, state, control, **kwargs):
        if self.interrupted:
            raise KeyboardInterrupt

    on_step_end = on_substep_end
