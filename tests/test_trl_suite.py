"""What TRL's own GRPOTrainer tests ask of a trainer, on the tiny model: each test here stands for a TRL test that
failed with MRTTrainer in its place (scripts/run_trl_tests.py runs TRL's slice with either trainer)."""

import logging

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer, LlamaForCausalLM

from mrt import MRTConfig, MRTTrainer

COMMON = dict(
    use_cpu=True, bf16=False, report_to="none", gradient_checkpointing=False, save_strategy="no",
    per_device_train_batch_size=4, num_generations=2, max_completion_length=8, logging_steps=1,
    learning_rate=1e-2, beta=0.0, seed=0, dataloader_num_workers=0, max_steps=1,
    alpha=1.0, prover_num_samples=2, prover_max_tokens=3, episode_chunk_tokens=4, max_episodes=2,
)
QUESTIONS = ["What is 7 + 5?", "Name a colour.", "Count to three.", "Say hello."]


def length_reward(completions, **kwargs):
    """Varies between completions, so a random model's group gets a non-zero advantage."""
    return [float(len(c[-1]["content"] if isinstance(c, list) else c)) for c in completions]


def rows(with_answer=True):
    data = [{"prompt": [{"role": "user", "content": q}], "answer": str(i)} for i, q in enumerate(QUESTIONS)]
    dataset = Dataset.from_list(data)
    return dataset if with_answer else dataset.remove_columns("answer")


class TensorGenerateLlama(LlamaForCausalLM):
    """A custom model whose `generate` returns the token ids only (a plain tensor), whatever it is asked: TRL's
    test_train_with_mask_truncated_completions patches `generate` to do this, and so do some custom models."""

    def generate(self, *args, **kwargs):
        out = super().generate(*args, **kwargs)
        return out if isinstance(out, torch.Tensor) else out.sequences


@pytest.mark.parametrize("reuse", [True, False])
def test_a_generate_that_returns_a_tensor_trains_without_the_prover(reuse, tiny_model_path, tmp_path, caplog):
    # TRL's test_train_with_mask_truncated_completions: MRT's generate wrapper read `.sequences` from a tensor (and,
    # without the cache reuse, the prover itself failed on the tensor).
    model = TensorGenerateLlama.from_pretrained(tiny_model_path)
    args = MRTConfig(output_dir=str(tmp_path), prover_reuse_generation_cache=reuse, **COMMON)
    trainer = MRTTrainer(model=model, reward_funcs=length_reward, args=args, train_dataset=rows(),
                         processing_class=AutoTokenizer.from_pretrained(tiny_model_path))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with caplog.at_level(logging.WARNING, logger="mrt.rl.trainer"):
        trainer.train()
    assert trainer.state.global_step == 1
    assert any(not torch.equal(before[n], p.detach()) for n, p in trainer.model.named_parameters())
    # The transformers prover samples from generate's scores and caches: without them the batch trains as GRPO,
    # and the log says why.
    assert trainer.last_progress is None
    assert any("returned a tensor" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert "generate" not in vars(trainer.model)  # the wrapper is gone after the batch


def test_no_reward_source_raises_trl_error(tiny_model_path, tmp_path):
    # TRL's test_no_reward_source_raises: no reward_funcs and no answer column for the default reward.
    args = MRTConfig(output_dir=str(tmp_path), **COMMON)
    with pytest.raises(ValueError, match="No reward source provided") as error:
        MRTTrainer(model=tiny_model_path, args=args, train_dataset=rows(with_answer=False))
    message = str(error.value)
    assert "answer_column='answer'" in message and "prompt" in message  # offers the default reward, names columns


def test_default_reward_still_offered_with_an_answer_column(tiny_model_path, tmp_path):
    args = MRTConfig(output_dir=str(tmp_path), **COMMON)
    trainer = MRTTrainer(model=tiny_model_path, args=args, train_dataset=rows())
    assert len(trainer.reward_funcs) == 1 and callable(trainer.reward_funcs[0])


def eval_trainer(tiny_model_path, tmp_path, **overrides):
    args = MRTConfig(output_dir=str(tmp_path), per_device_eval_batch_size=4, eval_strategy="steps", eval_steps=1,
                     **{**COMMON, **overrides})
    return MRTTrainer(model=tiny_model_path, reward_funcs=length_reward, args=args, train_dataset=rows(),
                      eval_dataset=rows())


def test_evaluation_batches_are_scored_as_grpo_by_default(tiny_model_path, tmp_path):
    # TRL's test_train_with_eval timed out: the prover ran on every evaluation batch, whose advantages nobody uses.
    trainer = eval_trainer(tiny_model_path, tmp_path)
    calls = {"train": 0, "eval": 0}
    estimate = trainer.progress_estimator.estimate

    def counting(*args, **kwargs):
        calls["train" if trainer.model.training else "eval"] += 1
        return estimate(*args, **kwargs)

    trainer.progress_estimator.estimate = counting
    trainer.train()
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert evals and all("eval_reward" in e for e in evals)
    assert not any(k.startswith("eval_mrt/") for e in evals for k in e), evals
    assert calls == {"train": 1, "eval": 0}
    assert any("mrt/J_0" in e for e in trainer.state.log_history)  # training still runs the prover


def test_prover_on_eval_logs_eval_progress(tiny_model_path, tmp_path):
    trainer = eval_trainer(tiny_model_path, tmp_path, prover_on_eval=True)
    trainer.train()
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert evals and all("eval_mrt/J_0" in e for e in evals), evals


def test_prover_on_eval_needs_a_prover(tmp_path):
    with pytest.raises(ValueError, match="prover_on_eval"):
        MRTConfig(output_dir=str(tmp_path), use_cpu=True, alpha=0.0, prover_on_eval=True)


def test_mu_writes_no_more_tokens_than_a_completion_may(tiny_model_path, tmp_path):
    # TRL's slice ran 3x slower with MRT: with max_completion_length=8, mu decoded prover_max_tokens=64 tokens per
    # sample (a random model never stops), 8x the policy's own generation. mu's budget is the smaller of the two.
    args = MRTConfig(output_dir=str(tmp_path), **{**COMMON, "prover_max_tokens": 64})
    trainer = MRTTrainer(model=tiny_model_path, reward_funcs=length_reward, args=args, train_dataset=rows())
    trainer.train()
    logged = next(e for e in trainer.state.log_history if "mrt/prover_tokens" in e)
    samples = logged["mrt/prover_requests"] * args.prover_num_samples
    assert 0 < logged["mrt/prover_tokens"] <= samples * args.max_completion_length, logged
