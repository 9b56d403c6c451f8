"""The testbed's warm start: a base model fine-tuned with TRL's SFTTrainer on written traces that reason in episodes.

`warm_start(config)` builds the model folder once and caches it under
`cache_dir() / "testbed" / <name>-<fingerprint>` through `mrt.models._build_once` (a crash leaves no half folder);
the same settings reuse it. A model name `testbed:<warm start YAML>` (`resolve_testbed`) stands for that folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from mrt.checks import check
from mrt.data import DEFAULT_SPEC, is_spec, load_spec
from mrt.experiments.testbed.traces import TraceOptions, sft_rows
from mrt.models import _build_once, cache_dir, resolve_model

logger = logging.getLogger(__name__)

PREFIX = "testbed:"
VERSION = 1  # bump when the build changes, so that cached folders are rebuilt


@dataclass
class WarmStartConfig:
    """What the warm start trains on and how; every field is also a flag of scripts/warm_start_testbed.py."""

    name: str = field(default="chain-sum", metadata={"help": "Name of the cached folder (before its fingerprint)."})
    model: str = field(default="smollm2-135m", metadata={
        "help": "Base model: a local folder or the offline alias smollm2-135m (mrt.models.resolve_model)."})
    spec: str = field(default=DEFAULT_SPEC, metadata={"help": "The task: 'reasoning_gym:<task>?<option>=<value>&...'."})
    num_problems: int = field(default=512, metadata={"help": "SFT problems (split 'train'; evaluation uses 'test')."})
    seed: int = field(default=0, metadata={"help": "Seed of the SFT problems, the traces and the training."})
    slip_rate: float = field(default=0.3, metadata={"help": "Traces: probability that the attempt slips."})
    catch_rate: float = field(default=0.8, metadata={"help": "Traces: probability that the checks catch a slip."})
    min_checks: int = field(default=1, metadata={"help": "Traces: fewest check episodes."})
    max_checks: int = field(default=2, metadata={"help": "Traces: most check episodes."})
    other_route_rate: float = field(default=0.5, metadata={"help": "Traces: probability of another route."})
    max_steps: int = field(default=40, metadata={"help": "SFT optimizer steps (the problems repeat if needed)."})
    learning_rate: float = field(default=1e-4, metadata={"help": "SFT learning rate (constant after warmup)."})
    warmup_steps: int = field(default=4, metadata={"help": "SFT linear warmup steps."})
    batch_size: int = field(default=8, metadata={"help": "SFT sequences per step."})
    max_length: int = field(default=512, metadata={"help": "SFT maximum tokens of prompt + trace."})
    bf16: bool = field(default=True, metadata={
        "help": "Train under bf16 autocast (about 1.3x faster on a CPU with avx512_bf16); the weights stay float32."})

    def __post_init__(self):
        check(bool(self.name.strip()) and "/" not in self.name, "WarmStartConfig", "name", self.name,
              "a non-empty folder name without '/'")
        check(is_spec(self.spec), "WarmStartConfig", "spec", self.spec, "'reasoning_gym:<task>?...'")
        for name in ("num_problems", "max_steps", "batch_size", "max_length"):
            check(getattr(self, name) >= 1, "WarmStartConfig", name, getattr(self, name), ">= 1")
        check(self.warmup_steps >= 0, "WarmStartConfig", "warmup_steps", self.warmup_steps, ">= 0")
        check(math.isfinite(self.learning_rate) and self.learning_rate > 0, "WarmStartConfig", "learning_rate",
              self.learning_rate, "a number > 0")
        self.trace_options()  # TraceOptions checks its own fields and names them

    def trace_options(self) -> TraceOptions:
        return TraceOptions(**{f.name: getattr(self, f.name) for f in fields(TraceOptions)})

    def fingerprint(self) -> str:
        """Hash of every setting that changes the trained weights (all but `name`)."""
        keep = {k: v for k, v in asdict(self).items() if k != "name"} | {"version": VERSION}
        return hashlib.sha1(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]

    def folder(self) -> Path:
        return cache_dir() / "testbed" / f"{self.name}-{self.fingerprint()}"


def load_config(path: str | Path) -> WarmStartConfig:
    """A WarmStartConfig from a YAML file of its fields; a key that is no field raises a ValueError naming it."""
    values = yaml.safe_load(Path(path).read_text()) or {}
    known = {f.name for f in fields(WarmStartConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown WarmStartConfig fields {unknown}; known: {sorted(known)}")
    return WarmStartConfig(**values)


def training_rows(config: WarmStartConfig) -> list[dict]:
    """Prompt-completion rows of the SFT problems (split "train"), one written trace each."""
    problems = load_spec(config.spec, config.num_problems, seed=config.seed, split="train")
    return sft_rows(problems, seed=config.seed, options=config.trace_options())


def warm_start(config: WarmStartConfig) -> Path:
    """The warm-started model folder: trained on first use, then reused from the cache."""
    return _build_once(config.folder(), lambda out: _train(config, out))


def is_testbed(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def resolve_testbed(name: str) -> str:
    """`testbed:<path to a warm start YAML>` -> the warm-started folder (built when missing)."""
    if not is_testbed(name):
        raise ValueError(f"model name {name!r} is not '{PREFIX}<path to a warm start YAML>'")
    return str(warm_start(load_config(name[len(PREFIX):])))


def _train(config: WarmStartConfig, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = training_rows(config)
    # Prompt-completion rows: SFTTrainer puts the loss on the completion only.
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    source = resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, dtype=torch.float32)
    args = SFTConfig(
        output_dir=str(out / "trainer"), max_steps=config.max_steps, per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate, lr_scheduler_type="constant_with_warmup",
        warmup_steps=config.warmup_steps, max_length=config.max_length, seed=config.seed, data_seed=config.seed,
        use_cpu=not torch.cuda.is_available(), bf16=config.bf16, gradient_checkpointing=False,
        report_to="none", save_strategy="no", logging_steps=max(1, config.max_steps // 10),
        disable_tqdm=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    shutil.rmtree(out / "trainer", ignore_errors=True)
    trainer.model.to(torch.float32).save_pretrained(out)
    tokenizer.save_pretrained(out)
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    logger.info("Warm start: %d steps, loss %.3f -> %.3f", config.max_steps, losses[0], losses[-1])
    return {"config": asdict(config), "source": source, "train_loss": result.training_loss,
            "first_loss": losses[0], "last_loss": losses[-1],
            "traces_correct": sum(r["trace_correct"] for r in rows) / len(rows),
            "traces_episodes": sum(r["trace_episodes"] for r in rows) / len(rows)}
