"""How well the likelihood estimator of J agrees with the sampling estimator, and what each costs, on real batches.

    python scripts/compare_estimators.py --config configs/mrt_smollm2_arithmetic.yaml [--compare_batches 4]
        [--compare_samples 16] [--field value ...]

Generates `compare_batches` generation batches with the policy, builds their prover requests, and estimates J for
every request twice: by sampling `compare_samples` answers of mu, and by the likelihood of the gold answer. Prints
the correlation of the two over all requests, of the progress terms they give, and the seconds each took.
"""

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from trl import GRPOTrainer, ModelConfig, TrlParser

from mrt import MRTConfig
from mrt.cli import MRTScriptArguments, build_trainer
from mrt.progress import progress


@dataclass
class CompareArguments:
    compare_batches: int = field(default=4, metadata={"help": "Generation batches to estimate J on."})
    compare_samples: int | None = field(
        default=None, metadata={"help": "Samples per request for the sampling estimator. None: prover_num_samples."})


PARSER = TrlParser((MRTScriptArguments, MRTConfig, ModelConfig, CompareArguments))


def correlation(xs: list[float], ys: list[float]) -> float | None:
    try:
        return statistics.correlation(xs, ys)
    except statistics.StatisticsError:  # fewer than two points, or a constant series
        return None


def main(argv: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        script_args, args, model_args, compare = PARSER.parse_args_and_config(
            argv + ["--output_dir", out, "--report_to", "none", "--prover_estimator", "sampling"])
        trainer = build_trainer(script_args, args, model_args)
    if args.termination_suffix == "authors":
        raise SystemExit("The likelihood estimator needs a suffix that ends at the answer slot "
                         "(e.g. --termination_suffix boxed).")
    per_batch = max(1, args.per_device_train_batch_size // args.num_generations)
    pairs, progress_pairs, seconds = [], [], {"sampling": 0.0, "likelihood": 0.0}
    for b in range(compare.compare_batches):
        problems = [trainer.train_dataset[(b * per_batch + k) % len(trainer.train_dataset)] for k in range(per_batch)]
        rows = [p for p in problems for _ in range(args.num_generations)]
        output = GRPOTrainer._generate_and_score_completions(trainer, rows)  # the policy's batch, no prover
        batch, ends, outcomes = trainer.prover_batch(output, rows)
        rates = {}
        for estimator in seconds:
            start = time.perf_counter()
            rates[estimator], _ = trainer.estimate_success(batch, estimator, compare.compare_samples)
            seconds[estimator] += time.perf_counter() - start
        pairs += [(s, l) for s, l in zip(rates["sampling"], rates["likelihood"]) if s is not None and l is not None]
        for row, outcome in zip(batch.index, outcomes):
            js = {e: [rates[e][k] for k in row] + [outcome] for e in rates}
            if all(v is not None for e in js for v in js[e]):
                progress_pairs += zip(progress(js["sampling"]), progress(js["likelihood"]))
    result = {
        "requests": len(pairs),
        "samples_per_request": compare.compare_samples or args.prover_num_samples,
        "mean_J_sampling": statistics.fmean(s for s, _ in pairs) if pairs else None,
        "mean_J_likelihood": statistics.fmean(l for _, l in pairs) if pairs else None,
        "correlation_J": correlation([s for s, _ in pairs], [l for _, l in pairs]),
        "correlation_progress": correlation([s for s, _ in progress_pairs], [l for _, l in progress_pairs]),
        "seconds_sampling": seconds["sampling"],
        "seconds_likelihood": seconds["likelihood"],
    }
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:{width}}  {'-' if value is None else f'{value:.4g}'}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
