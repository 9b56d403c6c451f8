"""Side-by-side comparison of training methods (GRPO, MRT dense, MRT branched, termination_baseline, MRT-STaR):
every arm x seed trained from the same base model, evaluated on held-out problems at 1x, 2x and 4x the training
budget, then one report (results.json, results.csv, comparison.png, summary.md) with 95% bootstrap intervals and
each arm's paired differences to GRPO (same seeds, same problems). Every unit records the git commit it ran on; a
report refuses units of different commits unless the YAML sets allow_mixed_versions: true.

    python scripts/compare_methods.py --config configs/compare_smollm2_arithmetic.yaml [--max_units N]
    python scripts/compare_methods.py --config configs/compare_smollm2_arithmetic.yaml --smoke   # tiny model, CI

Several processes can share one output_dir: on one machine each leaves the unit another is running to it; across
machines, give each its own --units NAME ... (disjoint).
Run the same command again to resume: finished units (OUTPUT_DIR/units/*.json) are kept, an interrupted one starts
again. The library code is mrt.experiments.compare and mrt.experiments.report; docs/experiment.md describes the outputs.
"""

import argparse

from mrt.experiments.compare import load_config, run_comparison
from mrt.experiments.report import markdown_report
from mrt.quiet import start_command


def main(argv: list[str] | None = None) -> dict:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--config", required=True, help="Comparison YAML (configs/compare_*.yaml).")
    args.add_argument("--smoke", action="store_true", help="Tiny model, 1 step per arm, first seed, 2 problems.")
    args.add_argument("--output_dir", default=None, help="Where units and the report go (default: the YAML's).")
    args.add_argument("--max_units", type=int, default=None, help="Run at most this many new units, then report.")
    args.add_argument("--units", nargs="+", default=None, metavar="UNIT",
                      help="Run only these units (e.g. grpo-seed1 mrt_dense-seed1): processes on several machines "
                           "sharing one output_dir are given disjoint units.")
    args.add_argument("--no_progress", action="store_true", help="No progress bars.")
    ns = args.parse_args(argv)
    start_command()
    config = load_config(ns.config, smoke=ns.smoke, output_dir=ns.output_dir)
    report = run_comparison(config, progress_bar=not ns.no_progress, max_units=ns.max_units,
                            units=ns.units)
    print(f"\n{report['name']}: {report['units_done']} of {report['units_planned']} units done\n")
    print(markdown_report(report))
    print(f"\nWrote {config.output_dir}/results.json, results.csv, comparison.png, summary.md")
    return report


if __name__ == "__main__":
    main()
