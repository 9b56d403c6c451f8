"""Test-time compute evaluation of one or more models: accuracy against token budget, J against tokens,
cumulative regret at several cutoffs, progress per episode, token efficiency; JSON, CSVs and PNG plots.

    python scripts/eval_mrt.py --models smollm2-135m outputs/mrt-smollm2-arithmetic --dataset arithmetic:1 \
        --num_problems 8 --num_samples 4 --max_tokens 64 --termination_suffix boxed --prover_max_tokens 8 \
        --prover_stop "}" --output_dir outputs/eval

Every field of mrt.evaluation.EvalConfig is a flag and can also come from a YAML file (--config eval.yaml).
Finished problems are kept in OUTPUT_DIR/records/*.jsonl: run the same command again to resume.
"""

import sys
import time

from trl import TrlParser

from mrt.evaluation.run import EvalConfig, evaluate
from mrt.quiet import start_command


def main(config: EvalConfig) -> dict | None:
    start_command()
    start = time.perf_counter()
    results = evaluate(config)
    seconds = time.perf_counter() - start
    if results is None:
        print(f"Stopped early after {seconds:.1f} s; run the same command again to resume.")
        return None
    for label, m in results["models"].items():
        regrets = ", ".join(f"{r['cutoff']}: {r['regret']:.3f}" for r in m["regret"] if r["regret"] is not None)
        print(f"{label}: accuracy {_number(m['accuracy'])}, mean tokens {m['mean_tokens']:.1f}, regret at cutoffs "
              f"{{{regrets}}}; answered {_number(m['answered'])}, accuracy given answered "
              f"{_number(m['accuracy_given_answered'])}, episodes {_number(m['mean_episodes'])}, "
              f"acc@0 {_number(m['accuracy_at_0'])} (answer at once: the shortcut)")
    print(f"Wrote {config.output_dir}/results.json, CSVs and PNGs in {seconds:.1f} s")
    return results


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    (config,) = TrlParser((EvalConfig,)).parse_args_and_config()
    main(config)
    sys.exit(0)
