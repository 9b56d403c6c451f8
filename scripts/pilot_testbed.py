"""The reasoning testbed's pilot: evaluate the warm-started model on held-out problems and check the four gates
(answer at once <= 0.10, accuracy at B in [0.2, 0.5], >= 30% of completions with >= 2 episodes, forced accuracy
rising with budget). Writes OUTPUT_DIR/pilot.json and pilot.md; exits 1 when a gate fails.

    python scripts/pilot_testbed.py --config configs/testbed/pilot.yaml [--field value ...]
"""

import sys

from trl import TrlParser

from mrt.experiments.testbed.pilot import PilotConfig, report_lines, run_pilot
from mrt.quiet import start_command

if __name__ == "__main__":
    start_command()
    (config,) = TrlParser((PilotConfig,)).parse_args_and_config()
    results = run_pilot(config)
    print("\n".join(report_lines(results)))
    print(f"All gates pass: {results['all_passed']} ({results['seconds']} s); wrote {config.output_dir}/pilot.json")
    sys.exit(0 if results["all_passed"] else 1)
