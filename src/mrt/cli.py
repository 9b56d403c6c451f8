"""The training command: script arguments, the parser, and the trainer a config describes.

    mrt-train --config configs/mrt_smollm2_arithmetic.yaml [--any_field value ...]
    accelerate launch [--config_file configs/accelerate/zero3.yaml] scripts/train_mrt_rl.py --config ...

Every field of MRTScriptArguments, MRTConfig and TRL's ModelConfig can be set in the YAML file and overridden on the
command line. Benchmarks and tests build their trainers with `build_trainer` too, so they train what the command trains.
"""

import importlib
import logging
from dataclasses import dataclass, field

from trl import ModelConfig, ScriptArguments, TrlParser

from mrt.config import MRTConfig
from mrt.data import SYSTEM_PROMPT, load_problems
from mrt.models import resolve_model
from mrt.trainer import MRTTrainer


@dataclass
class MRTScriptArguments(ScriptArguments):
    dataset_name: str | None = field(
        default="arithmetic",
        metadata={"help": "'arithmetic[:difficulty]' (built in), a local JSON/JSONL/Parquet path, or a hub name."},
    )
    problem_column: str = field(default="problem", metadata={"help": "Column with the problem text."})
    system_prompt: str | None = field(default=SYSTEM_PROMPT, metadata={"help": "System prompt; '' for none."})
    num_train_problems: int | None = field(default=None, metadata={"help": "Use this many training problems."})
    num_eval_problems: int | None = field(default=None, metadata={"help": "Evaluate on this many test problems."})
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Reward functions with TRL's signature, as import paths 'package.module:function' (they also "
                  "define success for the prover). None: math-verify accuracy on answer_column."},
    )


def load_reward_funcs(paths: list[str] | None) -> list | None:
    """The functions named by 'package.module:function' paths (None stays None: the default reward)."""
    if not paths:
        return None
    funcs = []
    for path in paths:
        module, _, name = path.partition(":")
        if not module or not name:
            raise ValueError(f"MRTScriptArguments.reward_funcs = {paths!r} is invalid: expected 'package.module:function'"
                             f" paths, got {path!r}.")
        try:
            funcs.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError) as error:
            raise ValueError(f"MRTScriptArguments.reward_funcs: cannot load {path!r} ({error}).") from error
    return funcs


def parser() -> TrlParser:
    """TRL's parser for (MRTScriptArguments, MRTConfig, ModelConfig): `--config FILE.yaml` plus field overrides."""
    return TrlParser((MRTScriptArguments, MRTConfig, ModelConfig))


def build_trainer(script_args: MRTScriptArguments, training_args: MRTConfig, model_args: ModelConfig) -> MRTTrainer:
    """The trainer a config describes: model alias resolved, datasets loaded, PEFT if asked."""
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
            num_problems=num, seed=training_args.seed,
        )

    train_dataset = load(script_args.dataset_train_split, script_args.num_train_problems)
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = load(script_args.dataset_test_split, script_args.num_eval_problems)

    peft_config = None
    if model_args.use_peft:
        from trl import get_peft_config

        peft_config = get_peft_config(model_args)
    return MRTTrainer(model=model, reward_funcs=load_reward_funcs(script_args.reward_funcs), args=training_args,
                      train_dataset=train_dataset, eval_dataset=eval_dataset, peft_config=peft_config)


def train(script_args: MRTScriptArguments, training_args: MRTConfig, model_args: ModelConfig) -> MRTTrainer:
    """Build the trainer, train (resuming if the config says so) and save the model to output_dir."""
    trainer = build_trainer(script_args, training_args, model_args)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    return trainer


def main(argv: list[str] | None = None) -> None:
    """Console entry (`mrt-train`): parse argv (default sys.argv[1:]) and train. Returns None: the console script
    passes the return value to sys.exit."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    train(*parser().parse_args_and_config(args=argv))
