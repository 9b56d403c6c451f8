"""Time GRPO and MRT training steps on the same model, config, prompts and seed, in one process.

    python scripts/bench_step.py --config configs/mrt_smollm2_arithmetic.yaml [--bench_steps 4]
        [--bench_lengths 64 256] [--bench_estimators sampling likelihood] [--bench_branched true] [--field value ...]

For every completion length, runs `bench_steps` steps of plain GRPO (alpha 0, no prover), then the same number of
MRT steps with each prover estimator (and, with --bench_branched, of progress_mode='branched'), and prints one
table; its last line is the MRT/GRPO step-time ratio alone (first estimator, first length). The first step of each
run is left out of the means when there are more than one (it pays one-off start-up costs).
"""

import multiprocessing
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, TrlParser

from mrt import MRTConfig
from mrt.cli import MRTScriptArguments, build_trainer
from mrt.memory import release_memory
from mrt.quiet import quiet_cpu_start


@dataclass
class BenchArguments:
    bench_steps: int = field(default=4, metadata={"help": "Training steps timed for each run."})
    bench_lengths: list[int] | None = field(
        default=None, metadata={"help": "Completion lengths to compare. None: the config's max_completion_length."})
    bench_estimators: list[str] = field(
        default_factory=lambda: ["sampling", "likelihood"],
        metadata={"help": "Prover estimators timed for MRT ('likelihood' is skipped with the 'authors' suffix)."})
    bench_branched: bool = field(
        default=False,
        metadata={"help": "Also time progress_mode='branched' (docs/branched.md) on the same config; it needs an even "
                  "num_generations. With --num_train_problems small enough that problems come back, the later "
                  "steps branch from non-empty prefixes (prefix_source 'rollouts')."})


PARSER = TrlParser((MRTScriptArguments, MRTConfig, ModelConfig, BenchArguments))


def peak_rss_reset() -> None:
    """Free what earlier runs left (their trainers sit in reference cycles until collected), then start a new
    peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM): later runs are not charged for earlier ones."""
    release_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_gb() -> float | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return None if kb is None else kb / 2**20


def run(argv: list[str], overrides: list[str]) -> dict:
    """Parse the user's arguments plus `overrides` (later flags win) and time a short training run."""
    with tempfile.TemporaryDirectory() as out:
        steps = PARSER.parse_args_and_config(argv)[3].bench_steps
        script_args, args, model_args, _ = PARSER.parse_args_and_config(
            argv + ["--max_steps", str(steps), "--output_dir", out, "--save_strategy", "no", "--logging_steps", "1",
                    "--report_to", "none", *overrides])
        peak_rss_reset()
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
        "prefill_tokens": mean("mrt/prover_prefill_tokens"),
        "prefill_min": mean("mrt/prover_prefill_min"),
        "policy_tokens": (mean("completions/mean_length") or 0.0) * batch,
        "peak_rss_gb": peak_rss_gb(),
    }


def run_apart(argv: list[str], overrides: list[str]) -> dict:
    """`run` in a fresh process, so that nothing an earlier run left alive is charged to a later run's peak RSS."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run, (argv, overrides))


def show(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(length: int, runs: dict[str, dict]) -> list[str]:
    """The rows of one completion length: one column per run, GRPO first."""
    grpo = runs["GRPO"]
    names = list(runs)
    rows = [
        ("step time (s)", lambda r: show(r["step_time"])),
        ("step time / GRPO", lambda r: show(r["step_time"] / grpo["step_time"], 3)),
        ("prover seconds per step", lambda r: show(r["prover_seconds"])),
        # The runs' completions differ after step 1 (different updates), so their policy work differs too; this
        # row prices the prover alone on GRPO's step.
        ("(GRPO step + prover) / GRPO",
         lambda r: show(1 + (r["prover_seconds"] or 0.0) / grpo["step_time"], 3)),
        ("prover share of the step", lambda r: show(r["prover_share"], 3)),
        ("prover requests (asked -> after de-dup)",
         lambda r: "-" if r["prover_requests"] is None else
         f"{show(r['prover_requests_asked'], 1)} -> {show(r['prover_requests'], 1)}"),
        ("prover prefill tokens / minimum",
         lambda r: "-" if r["prefill_tokens"] is None else
         f"{show(r['prefill_tokens'], 0)} / {show(r['prefill_min'], 0)} = "
         f"{show(r['prefill_tokens'] / max(r['prefill_min'], 1), 3)}"),
        ("prover tokens / policy tokens",
         lambda r: f"{show(r['prover_tokens'], 0)} / {show(r['policy_tokens'], 0)}"),
        ("peak RSS during the run (GB)", lambda r: show(r["peak_rss_gb"])),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"\ncompletion length {length}", f"{'':{width}}" + "".join(f"  {n:>18}" for n in names)]
    for name, cell in rows:
        lines.append(f"{name:{width}}" + "".join(f"  {cell(runs[n]):>18}" for n in names))
    return lines


def main(argv: list[str]) -> float:
    _, args, _, bench = PARSER.parse_args_and_config(argv)
    lengths = bench.bench_lengths or [args.max_completion_length]
    estimators = [e for e in bench.bench_estimators
                  if e != "likelihood" or args.termination_suffix != "authors"]
    if not estimators:
        raise SystemExit("No estimator to time: the 'likelihood' estimator needs a suffix that ends at the answer "
                         "slot (e.g. --termination_suffix boxed).")
    ratios, lines = {}, []
    for length in lengths:
        at_length = ["--max_completion_length", str(length)]
        runs = {"GRPO": run_apart(argv, [*at_length, "--alpha", "0", "--progress_mode", "dense"])}
        # A branched config still times the dense form in these columns.
        dense = ["--progress_mode", "dense"] if args.progress_mode == "branched" else []
        for estimator in estimators:
            runs[f"MRT {estimator}"] = run_apart(argv, [*at_length, *dense, "--prover_estimator", estimator])
            ratios[(estimator, length)] = runs[f"MRT {estimator}"]["step_time"] / runs["GRPO"]["step_time"]
        if bench.bench_branched:
            runs["MRT branched"] = run_apart(argv, [*at_length, "--progress_mode", "branched"])
            ratios[("branched", length)] = runs["MRT branched"]["step_time"] / runs["GRPO"]["step_time"]
        lines += table(length, runs)
    print("\n".join(lines))
    print(f"\nMRT/GRPO step time ratio over {bench.bench_steps} steps:")
    for (estimator, length), ratio in ratios.items():
        print(f"  {estimator:>10} at {length:>4} completion tokens: {ratio:.3f}")
    first = ratios[(estimators[0], lengths[0])]
    print(f"{first:.3f}")
    return first


if __name__ == "__main__":
    quiet_cpu_start()  # what importing mrt does not set: the quiet CPU start of the commands
    main(sys.argv[1:])
