"""Step time and peak memory per rank: 2 DeepSpeed ZeRO-3 CPU ranks against 1 process, same global batch.

    python scripts/bench_zero3.py --config configs/mrt_smollm2_arithmetic.yaml [--bench_steps 4] \
        [--per_rank_batch 4] [--field value ...]

Runs the training config twice for `bench_steps` steps: in one plain process with a per-device batch of
2 * per_rank_batch, then under `accelerate launch` with configs/accelerate/zero3_cpu_2proc.yaml and
per_rank_batch per rank, so both runs train on the same global batch (same prompts and seed). Each rank
times its optimizer steps and reports its peak RSS. The first step is left out of the mean when there are
more (one-off start-up costs). The last line holds the two ratios (2-rank / 1-process): step time, then
the largest per-rank peak memory.
"""

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

HERE = Path(__file__).resolve().parent
ZERO3_CPU = HERE.parent / "configs" / "accelerate" / "zero3_cpu_2proc.yaml"


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step on this rank."""

    def __init__(self):
        self.start, self.times = None, []

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.start)


def worker(argv: list[str], out: Path) -> None:
    """One rank: train as scripts/train_mrt_rl.py does, then write rank<r>.json."""
    from trl import ModelConfig, TrlParser

    from mrt import MRTConfig
    from mrt.cli import MRTScriptArguments, build_trainer

    parser = TrlParser((MRTScriptArguments, MRTConfig, ModelConfig))
    script_args, args, model_args = parser.parse_args_and_config(argv)
    trainer = build_trainer(script_args, args, model_args)
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    acc = trainer.accelerator
    record = {"rank": acc.process_index, "world_size": acc.num_processes, "step_times": timer.times,
              "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
              "global_batch": args.per_device_train_batch_size * acc.num_processes}
    (out / f"rank{acc.process_index}.json").write_text(json.dumps(record))


def launch(command: list[str], out: Path, timeout: float) -> list[dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MRT_BENCH_OUT": str(out)}
    env.setdefault("OMP_NUM_THREADS", "1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        sys.exit(f"run failed ({' '.join(command[:4])} ...):\n{result.stderr[-4000:]}")
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mean_step(times: list[float]) -> float:
    return statistics.fmean(times[1:] if len(times) > 1 else times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench_steps", type=int, default=4, help="Optimizer steps timed in each run.")
    parser.add_argument("--per_rank_batch", type=int, default=4, help="Per-device batch of each ZeRO-3 rank.")
    parser.add_argument("--timeout", type=float, default=3600, help="Seconds allowed per run.")
    own, rest = parser.parse_known_args()
    common = [*rest, "--max_steps", str(own.bench_steps), "--save_strategy", "no", "--report_to", "none",
              "--use_cpu", "true", "--bf16", "false", "--gradient_checkpointing", "false"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = {}
        for name, prefix, batch in (
            ("1 process", [sys.executable], 2 * own.per_rank_batch),
            ("ZeRO-3, 2 CPU ranks", [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
                                     str(ZERO3_CPU), "--main_process_port", str(free_port())], own.per_rank_batch),
        ):
            out = tmp / name.split()[0].strip(",")
            out.mkdir()
            command = [*prefix, str(Path(__file__).resolve()), *common, "--output_dir", str(out / "model"),
                       "--per_device_train_batch_size", str(batch)]
            print(f"running {name} ...", file=sys.stderr, flush=True)
            runs[name] = launch(command, out, own.timeout)

    print(f"{'run':<22}{'ranks':>6}{'global batch':>14}{'step time (s)':>15}{'peak RSS per rank (GB)':>26}")
    summary = {}
    for name, ranks in runs.items():
        step = statistics.fmean(mean_step(r["step_times"]) for r in ranks)
        peaks = [r["peak_rss_gb"] for r in ranks]
        summary[name] = (step, max(peaks))
        print(f"{name:<22}{len(ranks):>6}{ranks[0]['global_batch']:>14}{step:>15.2f}"
              f"{' / '.join(f'{p:.2f}' for p in peaks):>26}")
    (one, one_peak), (two, two_peak) = summary.values()
    print("ratios 2-rank / 1-process (step time, peak memory per rank):")
    print(f"{two / one:.3f} {two_peak / one_peak:.3f}")


if __name__ == "__main__":
    if os.environ.get("MRT_BENCH_OUT"):
        worker(sys.argv[1:], Path(os.environ["MRT_BENCH_OUT"]))
    else:
        main()
