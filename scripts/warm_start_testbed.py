"""Build (or reuse) the reasoning testbed's warm-started model and print its folder.

    python scripts/warm_start_testbed.py --config configs/testbed/warm_start.yaml [--field value ...]

Every field of mrt.experiments.testbed.warm_start.WarmStartConfig is a flag and can come from the YAML file.
"""

import sys
import time

from trl import TrlParser

from mrt.experiments.testbed.warm_start import WarmStartConfig, warm_start
from mrt.quiet import start_command

if __name__ == "__main__":
    start_command()
    (config,) = TrlParser((WarmStartConfig,)).parse_args_and_config()
    start = time.perf_counter()
    folder = warm_start(config)
    print(f"Warm start ready in {time.perf_counter() - start:.1f} s: {folder}")
    print(folder)
    sys.exit(0)
