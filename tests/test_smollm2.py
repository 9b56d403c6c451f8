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
    # Completions of one prompt share the b_0 request, so they share J_0.
    assert record.j_values[0][0] == record.j_values[1][0] and record.j_values[2][0] == record.j_values[3][0]
    # J_H is the completion's own outcome: its mean is the accuracy reward TRL logged.
    logs = trainer.state.log_history[0]
    outcome = sum(js[-1] for js in record.j_values) / 4
    assert math.isclose(float(logs["rewards/accuracy/mean"]), outcome, abs_tol=1e-6)
    assert float(logs["mrt/prover_requests"]) <= float(logs["mrt/prover_requests_asked"])
