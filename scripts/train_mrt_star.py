"""MRT (STaR), the paper's Algorithm 1: generate traces with the model, score every episode prefix with mu, keep the
correct traces that make the most progress per token, fine-tune on them with TRL's SFTTrainer; `iterations` rounds.

    python scripts/train_mrt_star.py --config configs/mrt_star_smollm2_arithmetic.yaml [--any_field value ...]
    accelerate launch [--config_file configs/accelerate/<config>.yaml] scripts/train_mrt_star.py --config ...

Every field of mrt.star.STaRConfig (TRL's SFTConfig plus the MRT-STaR fields) can be set in the YAML file and
overridden on the command line; `--selection correct` is plain STaR, the baseline. Run the same command again to
resume: finished problems and iterations are kept.
"""

import sys

from accelerate import PartialState
from trl import TrlParser

from mrt.quiet import start_command
from mrt.star.run import STaRConfig, run
from mrt.star.select import NoCorrectTraces


def main(config: STaRConfig) -> list[dict]:
    start_command()
    try:
        summaries = run(config)
    except NoCorrectTraces as error:
        print(error, file=sys.stderr)
        sys.exit(2)
    if not PartialState().is_main_process:
        return summaries
    for s in summaries:
        print(f"iteration {s['iteration']}: {s['traces_generated']} traces generated, {s['traces_correct']} correct, "
              f"{s['traces_kept']} kept ({s['traces_cut']} cut); mean tokens {s['mean_tokens_generated']:.1f} "
              f"generated, {s['mean_tokens_trained']:.1f} trained")
    print(f"Saved the model to {config.output_dir}")
    return summaries


if __name__ == "__main__":
    (config,) = TrlParser((STaRConfig,)).parse_args_and_config()
    main(config)
