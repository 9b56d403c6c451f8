"""configs/accelerate/*.yaml: what each DeepSpeed ZeRO-3 config asks of accelerate, read by accelerate itself.

The 2-process CPU config runs for real in test_zero3.py; the GPU configs cannot run here, so these tests check
that accelerate reads them as intended and that launch flags win over the multi-node file's values.
"""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


def load(name: str):
    return load_config_from_file(str(CONFIGS / f"{name}.yaml"))


@pytest.mark.parametrize("name", ["zero3_8gpu", "zero3_multinode", "zero3_offload", "zero3_cpu_2proc"])
def test_zero3_with_gathered_16bit_save(name):
    config = load(name)
    assert config.distributed_type == DistributedType.DEEPSPEED
    ds = config.deepspeed_config
    assert ds["zero_stage"] == 3 and ds["zero3_init_flag"] is True
    # The final model is written as a normal folder, not only as DeepSpeed shards.
    assert ds["zero3_save_16bit_model"] is True


def test_each_config_fits_its_machines():
    gpu8, multi, offload, cpu = (load(n) for n in ("zero3_8gpu", "zero3_multinode", "zero3_offload", "zero3_cpu_2proc"))
    assert (gpu8.num_machines, gpu8.num_processes, gpu8.mixed_precision, gpu8.use_cpu) == (1, 8, "bf16", False)
    assert multi.num_machines > 1 and multi.num_processes == 8 * multi.num_machines
    assert multi.deepspeed_config["deepspeed_multinode_launcher"] == "standard"
    assert offload.deepspeed_config["offload_optimizer_device"] == "cpu"
    assert offload.deepspeed_config["offload_param_device"] == "cpu"
    # DESIGN 4: the recipe measured on CPU (gloo); bf16 would be refused on CPU.
    assert (cpu.num_processes, cpu.use_cpu, cpu.mixed_precision) == (2, True, "no")


def test_multinode_flags_win_over_the_file():
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args([
        "--config_file", str(CONFIGS / "zero3_multinode.yaml"), "--num_machines", "4", "--num_processes", "32",
        "--machine_rank", "3", "--main_process_ip", "10.1.2.3", "--main_process_port", "29555",
        "scripts/train_mrt_rl.py", "--config", "recipe.yaml",
    ])
    args = _validate_launch_command(args)[0]
    assert args.use_deepspeed and args.zero_stage == 3
    assert (args.num_machines, args.num_processes, args.machine_rank) == (4, 32, 3)
    assert (args.main_process_ip, args.main_process_port) == ("10.1.2.3", 29555)
    assert args.training_script_args == ["--config", "recipe.yaml"]
