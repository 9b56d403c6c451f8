"""Train a model with MRT (or GRPO, alpha 0); the same command as the installed `mrt-train`.

    accelerate launch [--config_file configs/accelerate/zero3.yaml] scripts/train_mrt_rl.py \
        --config configs/mrt_smollm2_arithmetic.yaml [--any_field value ...]

Also runs as `python scripts/train_mrt_rl.py --config ...`. The arguments and the trainer are in mrt.cli.
"""

from mrt.cli import main

if __name__ == "__main__":
    main()
