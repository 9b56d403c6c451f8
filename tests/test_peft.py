"""--use_peft: LoRA adapters through the training command (TRL's ModelConfig fields), on the tiny model."""

import pytest
import torch
from test_train_script import write_config

peft = pytest.importorskip("peft", reason="the peft extra is not installed (pip install -e '.[peft]')")

LORA = ["--use_peft", "--lora_r", "8", "--lora_alpha", "16", "--lora_dropout", "0.0"]


def command_args(tiny_model_path, tmp_path, *more):
    from mrt.cli import parser

    # zero3_rewards.parity_reward: a reward the random model earns half the time, so the advantages (and the
    # LoRA gradients) are not all 0.
    return parser().parse_args_and_config(args=[
        "--config", str(write_config(tmp_path, tiny_model_path)), *LORA,
        "--reward_funcs", "zero3_rewards:parity_reward", "--learning_rate", "1e-3", *more])


def test_one_step_trains_and_saves_the_adapter(tiny_model_path, tmp_path):
    from safetensors.torch import load_file

    from mrt.cli import train

    trainer = train(*command_args(tiny_model_path, tmp_path, "--max_steps", "1"))
    assert isinstance(trainer.model, peft.PeftModel)
    out = tmp_path / "out"
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    assert not (out / "model.safetensors").exists(), "the whole model was saved, not the adapter"
    saved = load_file(out / "adapter_model.safetensors")
    lora_b = {name: w for name, w in saved.items() if "lora_B" in name}
    # LoRA's B matrices start at 0: any non-zero entry was learned in the step.
    assert lora_b and any(w.abs().sum() > 0 for w in lora_b.values()), "the LoRA weights did not change"
    assert peft.PeftConfig.from_pretrained(str(out)).r == 8
    logged = [e for e in trainer.state.log_history if "mrt/prover_requests" in e]
    assert logged and logged[0]["mrt/prover_requests"] > 0, "the prover did not run on the PEFT model"


def test_prover_is_the_policy_with_its_adapter(tiny_model_path, tmp_path, tokenizer):
    from mrt.cli import build_trainer

    trainer = build_trainer(*command_args(tiny_model_path, tmp_path))
    model, prover = trainer.model, trainer.progress_estimator.prover
    prompt, answer = tokenizer("What is 2 + 3?").input_ids, tokenizer(" 5").input_ids

    def mu():
        return prover.likelihood([prompt], [answer])[0]

    def base():
        with model.disable_adapter():
            return mu()

    fresh = mu()
    assert fresh == pytest.approx(base(), abs=1e-6)  # B = 0: the adapter changes nothing yet
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0.0, 1.0)
    assert mu() != pytest.approx(fresh, abs=1e-3), "mu does not see the adapter"
    assert base() == pytest.approx(fresh, abs=1e-6)
