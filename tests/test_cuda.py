"""MRTTrainer and the policy prover on a CUDA device (bf16 and fp32). Skipped where there is no CUDA: the
development and CI machines have none; these run on a GPU machine when one is available."""

import math

import pytest
import torch

from datasets import Dataset

from mrt import MRTConfig, MRTTrainer
from mrt.data import arithmetic_dataset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = dict(use_cpu=False, report_to="none", gradient_checkpointing=False, save_strategy="no", logging_steps=1,
            per_device_train_batch_size=4, num_generations=2, max_completion_length=12, learning_rate=1e-2,
            beta=0.0, seed=0, prover_num_samples=2, prover_max_tokens=3, episode_chunk_tokens=4, max_episodes=3)


def test_two_bf16_steps_on_cuda_carry_the_bonus(tiny_model_path, tmp_path):
    # The random model never answers right (r = 0), but the suffix states the gold answer, so mu's J is 1: the last
    # episode gets a bonus of -alpha and the loss has a gradient even though GRPO's advantages are 0.
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": f"Item {i}: what is 3 + 4?"}],
                                  "answer": "7"} for i in range(16)])
    args = MRTConfig(output_dir=str(tmp_path / "out"), bf16=True, max_steps=2, alpha=0.5,
                     termination_suffix="\nThe final answer is $\\boxed{7}$.\n", **CUDA)
    trainer = MRTTrainer(model=tiny_model_path, args=args, train_dataset=dataset)
    assert next(trainer.model.parameters()).device.type == "cuda"
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(before[n], p.detach()) for n, p in trainer.model.named_parameters())
    record = trainer.last_progress
    assert record.advantages.device.type == "cuda"
    assert any(j > 0 for js in record.j_values for j in js[:-1]), "mu never read the stated answer"
    assert not torch.equal(record.advantages, record.sequence_advantages[:, None].expand_as(record.advantages))
    assert all(len(js) == len(e) + 1 for js, e in zip(record.j_values, record.ends))
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert logged and all(math.isfinite(row["loss"]) for row in logged)
    assert any("mrt/J_0" in row for row in trainer.state.log_history)


def test_branched_prover_samples_equal_plain_generation_on_cuda(tiny_model_path, tmp_path):
    args = MRTConfig(output_dir=str(tmp_path / "out"), bf16=False, **CUDA)
    trainer = MRTTrainer(model=tiny_model_path, args=args, train_dataset=arithmetic_dataset(4, seed=0))
    tok, model = trainer._tokenizer, trainer.model
    base = tok.apply_chat_template([{"role": "user", "content": "What is 7 + 5?"}], add_generation_prompt=True,
                                   tokenize=True, return_dict=False)
    steps = tok("7 + 5 is 12.\n\nWait, 5 + 7 = 12.", add_special_tokens=False)["input_ids"]
    prompts = [base + trainer.suffix_ids, base + steps[:4] + trainer.suffix_ids, base + steps + trainer.suffix_ids]
    trainer.generation_config.do_sample = False
    samples = trainer.prover.generate(prompts, num_samples=2, max_tokens=5, temperature=1.0, stop=None)
    for prompt, group in zip(prompts, samples):
        ids = torch.tensor([prompt], device=model.device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=5,
                             pad_token_id=tok.pad_token_id)[0, len(prompt):].tolist()
        eos = {*trainer.eos_token_ids, tok.pad_token_id}
        expected = out[:next((k for k, t in enumerate(out) if t in eos), len(out))]
        assert group == [expected, expected]
