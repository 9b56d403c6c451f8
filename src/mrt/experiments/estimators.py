"""The sampling and the likelihood estimator of J on the same generation batches: agreement and cost."""

import copy
import statistics
import time
from dataclasses import dataclass, field

from mrt.progress import progress


@dataclass
class CompareArguments:
    compare_batches: int = field(default=4, metadata={"help": "Generation batches to estimate J on."})
    compare_samples: int | None = field(
        default=None, metadata={"help": "Samples per request for the sampling estimator. None: prover_num_samples."})


def correlation(xs: list[float], ys: list[float]) -> float | None:
    try:
        return statistics.correlation(xs, ys)
    except statistics.StatisticsError:  # fewer than two points, or a constant series
        return None


def compare(trainer, options: CompareArguments) -> dict:
    """Estimate J with both estimators on `compare_batches` batches of the trainer's policy (prover off while the
    batches are generated, so both estimators see the same completions)."""
    args = trainer.args
    if args.termination_suffix == "authors":
        raise SystemExit("The likelihood estimator needs a suffix that ends at the answer slot "
                         "(e.g. --termination_suffix boxed).")
    base = trainer.progress_estimator
    estimators = {"sampling": replace_estimator(base, "sampling", options.compare_samples or base.num_samples),
                  "likelihood": replace_estimator(base, "likelihood", base.num_samples)}
    per_batch = max(1, args.per_device_train_batch_size // args.num_generations)
    pairs, progress_pairs, seconds = [], [], dict.fromkeys(estimators, 0.0)
    trainer.progress_enabled = False
    trainer.model.train()
    try:
        for b in range(options.compare_batches):
            problems = [trainer.train_dataset[(b * per_batch + k) % len(trainer.train_dataset)]
                        for k in range(per_batch)]
            rows = [p for p in problems for _ in range(args.num_generations)]
            output = trainer._generate_and_score_completions(rows)
            outcomes = trainer.reward_scorer.combine(trainer.local_rewards(len(rows)))
            j = {}
            for name, estimator in estimators.items():
                start = time.perf_counter()
                j[name] = trainer.estimate_progress(output, rows, outcomes, estimator)[0].j
                seconds[name] += time.perf_counter() - start
            for js, jl in zip(j["sampling"], j["likelihood"]):
                pairs += [(s, l) for s, l in zip(js[:-1], jl[:-1]) if s is not None and l is not None]
                if all(v is not None for v in js + jl):
                    progress_pairs += zip(progress(js), progress(jl))
    finally:
        trainer.progress_enabled = True
    return {
        "requests": len(pairs),  # episode prefixes scored by both
        "samples_per_request": estimators["sampling"].num_samples,
        "mean_J_sampling": statistics.fmean(s for s, _ in pairs) if pairs else None,
        "mean_J_likelihood": statistics.fmean(l for _, l in pairs) if pairs else None,
        "correlation_J": correlation([s for s, _ in pairs], [l for _, l in pairs]),
        "correlation_progress": correlation([s for s, _ in progress_pairs], [l for _, l in progress_pairs]),
        "seconds_sampling": seconds["sampling"],
        "seconds_likelihood": seconds["likelihood"],
    }


def replace_estimator(estimator, kind: str, num_samples: int):
    """A copy of the trainer's estimator (same prover, rules, suffix, scorer) with another kind and sample count."""
    other = copy.copy(estimator)
    other.estimator, other.num_samples = kind, num_samples
    return other
