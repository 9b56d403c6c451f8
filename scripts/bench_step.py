"""Time GRPO and MRT training steps on the same model, config, prompts and seed, in one process.

    python scripts/bench_step.py --config configs/mrt_smollm2_arithmetic.yaml [--bench_steps 4] [--field value ...]

Runs `bench_steps` steps of plain GRPO (alpha 0, no prover), then the same number of MRT steps as configured,
and prints one table; its last line is the MRT/GRPO step-time ratio alone. The first step of each run is
left out of the means when there are more than one (it pays one-off start-up costs).
"""

import resource
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, TrlParser

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_mrt_rl import MRTScriptArguments, build_trainer  # noqa: E402

from mrt import MRTConfig  # noqa: E402


@dataclass
class BenchArguments:
    bench_steps: int = field(default=4, metadata={"help": "Training steps timed for each of GRPO and MRT."})


PARSER = TrlParser((MRTScriptArguments, MRTConfig, ModelConfig, BenchArguments))


def run(argv: list[str], overrides: list[str]) -> dict:
    """Parse the user's arguments plus `overrides` (later flags win) and time a short training run."""
    with tempfile.TemporaryDirectory() as out:
        steps = PARSER.parse_args_and_config(argv)[3].bench_steps
        script_args, args, model_args, _ = PARSER.parse_args_and_config(
            argv + ["--max_steps", str(steps), "--output_dir", out, "--save_strategy", "no", "--logging_steps", "1",
                    "--report_to", "none", *overrides])
        trainer = build_trainer(script_args, args, model_args)
        trainer.train()
    logs = [row for row in trainer.state.log_history if "step_time" in row]
    timed = logs[1:] if len(logs) > 1 else logs

    def mean(key):
        values = [float(row[key]) for row in timed if key in row]
        return statistics.fmean(values) if values else None

    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * trainer.accelerator.num_processes
    return {
        "step_time": mean("step_time"),
        "prover_seconds": mean("mrt/prover_seconds"),
        "prover_share": mean("mrt/prover_step_share"),
        "prover_requests": mean("mrt/prover_requests"),
        "prover_requests_asked": mean("mrt/prover_requests_asked"),
        "prover_tokens": mean("mrt/prover_tokens"),
        "policy_tokens": (mean("completions/mean_length") or 0.0) * batch,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def show(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str]) -> float:
    steps = PARSER.parse_args_and_config(argv)[3].bench_steps
    grpo = run(argv, ["--alpha", "0", "--progress_mode", "dense"])
    mrt = run(argv, [])
    ratio = mrt["step_time"] / grpo["step_time"]
    rows = [
        ("step time (s)", show(grpo["step_time"]), show(mrt["step_time"])),
        ("prover seconds per step", "-", show(mrt["prover_seconds"])),
        ("prover share of the MRT step", "-", show(mrt["prover_share"], 3)),
        ("prover requests (asked -> after de-dup)", "-",
         f"{show(mrt['prover_requests_asked'], 1)} -> {show(mrt['prover_requests'], 1)}"),
        ("prover tokens / policy tokens", "-",
         f"{show(mrt['prover_tokens'], 0)} / {show(mrt['policy_tokens'], 0)}"),
        ("peak RSS of the process after the run (GB)", show(grpo["peak_rss_gb"]), show(mrt["peak_rss_gb"])),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'':{width}}  {'GRPO':>10}  {'MRT':>16}")
    for name, a, b in rows:
        print(f"{name:{width}}  {a:>10}  {b:>16}")
    print(f"MRT/GRPO step time ratio over {steps} steps: {ratio:.3f}")
    print(f"{ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main(sys.argv[1:])
