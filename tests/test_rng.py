"""One RNG: the prover never draws from or reseeds the process's RNG, so alpha = 0 with the prover on is GRPO."""

import torch
from trl import GRPOConfig, GRPOTrainer

from mrt import MRTConfig, MRTTrainer
from mrt.data import arithmetic_dataset
from mrt.rewards.accuracy import make_accuracy_reward, with_eos_ids

COMMON = dict(
    use_cpu=True, bf16=False, report_to="none", gradient_checkpointing=False, save_strategy="no",
    per_device_train_batch_size=4, num_generations=2, max_completion_length=12, logging_steps=1,
    learning_rate=1e-2, beta=0.0, seed=0, dataloader_num_workers=0, max_steps=3,
)


def length_reward(completions, **kwargs):
    """Varies between completions, so that a random model gets non-zero advantages and its weights move."""
    return [float(len(c[-1]["content"] if isinstance(c, list) else c)) for c in completions]


def rewards():
    return [make_accuracy_reward("answer"), length_reward]


def test_alpha_zero_with_the_prover_on_trains_exactly_like_grpo(tiny_model_path, tmp_path):
    dataset = arithmetic_dataset(16, seed=0)
    grpo = GRPOTrainer(model=tiny_model_path, reward_funcs=rewards(), train_dataset=dataset,
                       args=GRPOConfig(output_dir=str(tmp_path / "grpo"), **COMMON))
    # The same reward as MRTTrainer gives itself: the accuracy reward knows a cut completion by the EOS ids.
    grpo.reward_funcs[:] = [with_eos_ids(f, [*grpo.eos_token_ids, grpo._tokenizer.pad_token_id])
                            for f in grpo.reward_funcs]
    grpo.train()
    mrt = MRTTrainer(model=tiny_model_path, reward_funcs=rewards(), train_dataset=dataset,
                     args=MRTConfig(output_dir=str(tmp_path / "mrt"), alpha=0.0, estimate_progress=True,
                                    prover_num_samples=2, prover_max_tokens=3, episode_chunk_tokens=4,
                                    max_episodes=3, **COMMON))
    mrt.train()
    assert any("mrt/J_0" in entry for entry in mrt.state.log_history), "the prover did not run"

    def losses(trainer):
        return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    assert len(losses(grpo)) == 3 and losses(mrt) == losses(grpo)
    start = GRPOTrainer(model=tiny_model_path, reward_funcs=rewards(), train_dataset=dataset,
                        args=GRPOConfig(output_dir=str(tmp_path / "start"), **COMMON)).model
    assert any(not torch.equal(a, b) for a, b in zip(start.parameters(), grpo.model.parameters())), "nothing trained"
    for (name, a), b in zip(grpo.model.named_parameters(), mrt.model.parameters()):
        assert torch.equal(a, b), name
