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
    suffix = list(trainer.progress_estimator.suffix.ids)
    prompts = [base + suffix, base + steps[:4] + suffix, base + steps + suffix]
    # Greedy: the prover samples whenever temperature > 0, whatever the trainer's generation config says.
    samples = trainer.progress_estimator.prover.generate(prompts, num_samples=2, max_tokens=5, temperature=0.0,
                                                         stop=None)
    for prompt, group in zip(prompts, samples):
        ids = torch.tensor([prompt], device=model.device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=5,
                             pad_token_id=tok.pad_token_id)[0, len(prompt):].tolist()
        eos = {*trainer.eos_token_ids, tok.pad_token_id}
        expected = out[:next((k for k, t in enumerate(out) if t in eos), len(out))]
        assert group == [expected, expected]


def test_a_prover_call_leaves_the_cpu_and_cuda_rngs_untouched(tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mrt.prover import TransformersProver

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).to("cuda").eval()
    prompts = [tok("What is 7 + 5?", add_special_tokens=False)["input_ids"]]
    torch.manual_seed(0)
    cpu, cuda = torch.get_rng_state(), torch.cuda.get_rng_state()
    draws = [TransformersProver.for_model(model, tok, seed=3).generate(prompts, 2, 5, 1.0, None) for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), cpu) and torch.equal(torch.cuda.get_rng_state(), cuda)
    assert draws[0] == draws[1]  # the same prover seed: the same samples


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL weight sync needs the server on a second GPU")
def test_server_mode_pushes_the_trained_weights_to_the_vllm_server(tiny_model_path, tmp_path):
    """vllm_mode='server' on GPUs: `trl vllm-serve` on GPU 1, training on GPU 0. After training and TRL's NCCL weight
    push, mu's log-probabilities through the server are the trained model's, not the initial model's."""
    import os
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    pytest.importorskip("vllm")
    import requests

    from mrt.prover import VLLMPolicyProver

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    trl = Path(sys.executable).with_name("trl")
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([str(trl), "vllm-serve", "--model", tiny_model_path, "--port", str(port),
                               "--host", "127.0.0.1", "--gpu_memory_utilization", "0.3", "--enforce_eager", "true"],
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": "1"}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/health/", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "trl vllm-serve did not start in 600 s"
            time.sleep(2)
        args = MRTConfig(output_dir=str(tmp_path / "out"), bf16=False, max_steps=2, use_vllm=True,
                         vllm_mode="server", vllm_server_base_url=f"http://127.0.0.1:{port}",
                         termination_suffix="boxed", prover_stop=["}"], **{**CUDA, "learning_rate": 5e-2})
        trainer = MRTTrainer(model=tiny_model_path, args=args, train_dataset=arithmetic_dataset(16, seed=0))
        assert isinstance(trainer.progress_estimator.prover, VLLMPolicyProver)
        tok, model = trainer._tokenizer, trainer.model
        prompt = tok.apply_chat_template([{"role": "user", "content": "What is 7 + 5?"}], add_generation_prompt=True,
                                         tokenize=True, return_dict=False)
        answer = tok("12}$", add_special_tokens=False)["input_ids"]

        def local_logprob() -> float:
            ids = torch.tensor([prompt + answer], device=model.device)
            with torch.no_grad():
                logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            return sum(logps[len(prompt) - 1 + k, a].item() for k, a in enumerate(answer))

        initial = local_logprob()
        trainer.train()
        trainer.vllm_generation.sync_weights()  # TRL pushes before each generation; push the final weights too
        trained = local_logprob()
        assert abs(trained - initial) > 0.05, "training did not move the answer's log-probability"
        (served,) = trainer.progress_estimator.prover.likelihood([prompt], [answer])
        assert served == pytest.approx(trained, abs=0.02)
    finally:
        server.terminate()
        server.wait(timeout=60)
