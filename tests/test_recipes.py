"""configs/*1.5b*.yaml: the paper's GPU recipes, read by the training script's own parser (nothing is downloaded)."""

from pathlib import Path

import pytest

from mrt.cli import parser

ROOT = Path(__file__).resolve().parents[1]

GPUS = {"mrt_deepscaler_1.5b_frozen_mu": 4}  # the rest train on 8 GPUs (configs/accelerate/zero3_8gpu.yaml)
RECIPES = {
    "mrt_deepscaler_1.5b": ("agentica-org/DeepScaleR-1.5B-Preview", 1.0),
    "grpo_deepscaler_1.5b": ("agentica-org/DeepScaleR-1.5B-Preview", 0.0),
    "mrt_r1_distill_qwen_1.5b": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", 1.0),
    "grpo_r1_distill_qwen_1.5b": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", 0.0),
    "mrt_deepscaler_1.5b_frozen_mu": ("agentica-org/DeepScaleR-1.5B-Preview", 1.0),
}


def parse(name: str, *overrides: str):
    # bf16 needs a GPU: the CPU test turns it off on the command line, as a user could.
    argv = ["--config", str(ROOT / "configs" / f"{name}.yaml"), "--bf16", "false", "--use_cpu", "true", *overrides]
    return parser().parse_args_and_config(args=argv)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_has_the_papers_rl_setting(name):
    script, args, model = parse(name)
    model_name, alpha = RECIPES[name]
    assert model.model_name_or_path == model_name and model.dtype == "bfloat16"
    assert args.alpha == alpha and args.runs_prover == (alpha > 0)
    assert (args.learning_rate, args.lr_scheduler_type, args.warmup_steps, args.weight_decay) == (
        1e-6, "cosine", 0.1, 0.01)
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * GPUS.get(name, 8) == 256
    assert (args.num_generations, args.temperature, args.max_prompt_length, args.max_completion_length) == (
        4, 0.9, 4096, 24576)
    assert args.use_vllm and args.vllm_mode == "colocate" and args.vllm_gpu_memory_utilization == 0.8
    assert args.vllm_max_model_length >= args.max_prompt_length + args.max_completion_length
    assert args.termination_suffix == "authors" and args.end_of_thinking_tag == "</think>"
    assert script.dataset_name and script.problem_column and args.answer_column


@pytest.mark.parametrize("model", ["deepscaler_1.5b", "r1_distill_qwen_1.5b"])
def test_grpo_baseline_differs_from_mrt_only_in_alpha_and_output_dir(model):
    mrt = [vars(x) for x in parse(f"mrt_{model}")]
    grpo = [vars(x) for x in parse(f"grpo_{model}")]
    diff = {k for a, b in zip(mrt, grpo) for k in a if not k.startswith("_") and a[k] != b[k]}
    # distributed_state: a cached accelerate object, not a setting
    assert diff - {"distributed_state"} == {"alpha", "output_dir", "run_name"}, diff


def test_frozen_mu_recipe_asks_a_server():
    _, args, _ = parse("mrt_deepscaler_1.5b_frozen_mu")
    assert args.prover == "server" and args.prover_server_url == "http://localhost:8001/v1"
    assert args.prover_model and args.prover_timeout > 0 and args.prover_max_retries >= 1
