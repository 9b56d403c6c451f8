"""One MRT step on the real SmolLM2-135M-Instruct: the prover's J values are real success rates."""

import math

import pytest
import torch

from mrt import MRTConfig, MRTTrainer
from mrt.data import arithmetic_dataset


@pytest.mark.slow
def test_one_mrt_step_on_smollm2(smollm2_path, tmp_path):
    args = MRTConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", gradient_checkpointing=False,
        save_strategy="no", max_steps=1, per_device_train_batch_size=4, num_generations=2,
        max_completion_length=32, learning_rate=1e-5, beta=0.0, seed=0, logging_steps=1,
        model_init_kwargs={"dtype": torch.float32},
        alpha=1.0, prover_num_samples=4, prover_max_tokens=6, termination_suffix="boxed", prover_stop=["}"],
    )
    trainer = MRTTrainer(model=smollm2_path, args=args, train_dataset=arithmetic_dataset(8, seed=0))
    trainer.train()
    record = trainer.last_progress
    assert record is not None and len(record.j_values) == 4
    for ends, js in zip(record.ends, record.j_values):
        assert len(js) == len(ends) + 1
        for j in js:
            assert 0.0 <= j <= 1.0
            assert math.isclose(j * 4, round(j * 4))  # a mean of 4 samples of a 0/1 reward
    # SmolLM2 answers a + b with 0-20 correctly some of the time: J_0 is not always 0.
    assert any(js[0] > 0 for js in record.j_values)
    logs = trainer.state.log_history[0]
    assert 0.0 <= logs["mrt/J_0"] <= 1.0 and logs["mrt/prover_requests"] >= 1
