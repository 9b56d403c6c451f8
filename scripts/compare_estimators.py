"""How well the likelihood estimator of J agrees with the sampling estimator, and what each costs, on real batches.

    python scripts/compare_estimators.py --config configs/mrt_smollm2_arithmetic.yaml [--compare_batches 4]
        [--compare_samples 16] [--field value ...]

Generates `compare_batches` generation batches with the policy, and estimates J at every episode prefix twice: by
sampling `compare_samples` answers of mu, and by the likelihood of the gold answer. Prints the correlation of the two
over all prefixes, of the progress terms they give, and the seconds each took.
"""

import sys
import tempfile

from trl import ModelConfig, TrlParser

from mrt import MRTConfig
from mrt.cli import MRTScriptArguments, build_trainer
from mrt.experiments.estimators import CompareArguments, compare
from mrt.quiet import quiet_cpu_start


def main(argv: list[str]) -> dict:
    parser = TrlParser((MRTScriptArguments, MRTConfig, ModelConfig, CompareArguments))
    with tempfile.TemporaryDirectory() as out:
        script_args, args, model_args, options = parser.parse_args_and_config(
            argv + ["--output_dir", out, "--report_to", "none", "--prover_estimator", "sampling"])
        trainer = build_trainer(script_args, args, model_args)
    result = compare(trainer, options)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:{width}}  {'-' if value is None else f'{value:.4g}'}")
    return result


if __name__ == "__main__":
    quiet_cpu_start()  # what importing mrt does not set: the quiet CPU start of the commands
    main(sys.argv[1:])
