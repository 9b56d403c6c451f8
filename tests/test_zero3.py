"""DeepSpeed ZeRO-3 on 2 CPU processes for real: `accelerate launch` with configs/accelerate/zero3_cpu_2proc.yaml.

Three launches of tests/zero3_probe.py (scripts/train_mrt_rl.py plus probes) on the tiny model, shared by the
tests below: an uninterrupted 3-step run, a run stopped after its step-2 checkpoint, and that run resumed.
In every run the ranks get unequal prover work (rank 0: up to 8 one-token episodes per completion, 1 prompt per
generate call, so about 30 calls; rank 1: one episode, 2 calls), and generation runs on the partitioned
parameters (ds3_gather_for_generation false), so every forward pass is a collective: a rank that skipped a
call would hang, which the launch timeout turns into a failure.

The tiny random model never answers right, so with the accuracy reward J would be 0 everywhere and the progress
bonus 0. The runs use a reward a random model earns half the time (`zero3_rewards.parity_reward`, passed by its
import path as the command's `reward_funcs`): J then varies from prefix to prefix and every completion gets a bonus.
That checks the plumbing across ranks (every rank's completions get their bonus), not the model's skill.
"""

import math

import pytest
import torch
from zero3_helpers import expected_advantages, launch
from zero3_helpers import write_run as write_helper_run

ALPHA = 0.5
STEPS = 3

pytest.importorskip("deepspeed")


def write_run(tmp, model_path: str, name: str):
    return write_helper_run(tmp, model_path, name, steps=STEPS, alpha=ALPHA,
                            reward_funcs=["zero3_rewards:parity_reward"])


@pytest.fixture(scope="module")
def runs(tiny_model_path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zero3")
    full = launch(write_run(tmp, tiny_model_path, "full"), tmp, MRT_PROBE_CACHE_CHECK="1")
    stopped = launch(write_run(tmp, tiny_model_path, "stopped"), tmp, MRT_PROBE_STOP_AFTER="2")
    checkpoint = tmp / "stopped" / "checkpoint-2"
    resumed = launch(write_run(tmp, tiny_model_path, "resumed"), tmp, "--resume_from_checkpoint", str(checkpoint))
    return {"tmp": tmp, "full": full, "stopped": stopped, "resumed": resumed, "checkpoint": checkpoint}


def test_two_ranks_with_partitioned_parameters(runs):
    for rank, record in enumerate(runs["full"]):
        assert record["rank"] == rank and record["world_size"] == 2
        assert record["distributed_type"].endswith("DEEPSPEED") and record["zero_stage"] == 3
        part = record["partition"]
        # Every parameter is a ZeRO-3 parameter; between steps all but the small persistent ones are released
        # (empty on this rank), and this rank holds half of every parameter's elements.
        assert part["params"] > 0 and part["zero3_params"] == part["params"]
        assert part["released"] == part["params"] - part["persistent"] > 0
        assert part["released_numel"] > 0.9 * part["full_numel"]  # the embedding and most of the weights
        assert 0 < part["local_numel"] <= math.ceil(part["full_numel"] / 2) + 2 * part["params"]
        assert part["local_numel"] >= part["full_numel"] / 2


def test_every_rank_runs_the_prover_and_gets_the_bonus(runs):
    for record in runs["full"]:
        assert [s["step"] for s in record["steps"]] == list(range(1, STEPS + 1))
        for step in record["steps"]:
            assert step["prover"] and all(p["requests"] > 0 and p["answered"] == p["requests"] for p in step["prover"])
            assert all(step["scorable"])
            bonus_tokens = 0
            for row, mask in enumerate(step["completion_mask"]):
                expected = expected_advantages(step, row, ALPHA)
                for t, used in enumerate(mask):
                    if used:
                        assert step["advantages"][row][t] == pytest.approx(expected[t], abs=1e-6)
                        bonus_tokens += abs(step["advantages"][row][t] - step["grpo_advantages"][row]) > 1e-6
            assert bonus_tokens > 0, "this rank's advantages are GRPO's: no progress bonus"


def test_j_is_the_same_without_the_generation_cache(runs):
    # Step 1 of the full run, estimated twice from the same random state: with the keys and values generation
    # computed (the run's own J), then with prover_reuse_generation_cache off.
    for record in runs["full"]:
        step = record["steps"][0]
        check = step["cache_check"]
        assert check["cached"] == step["j_values"] and check["plain"] == check["cached"]
        with_cache, without = check["prefill_tokens"]
        assert with_cache < without  # the cache was used, and switched off


def test_unequal_prover_work_stays_in_step(runs):
    first, second = runs["full"]
    requests = [[sum(p["requests"] for p in s["prover"]) for s in r["steps"]] for r in runs["full"]]
    episodes = [[max(len(e) for e in s["ends"]) for s in r["steps"]] for r in runs["full"]]
    # Constructed: rank 0 asks many prefixes per completion, rank 1 one per prompt.
    assert all(e > 2 for e in episodes[0]) and all(e == 1 for e in episodes[1])
    assert all(a > 3 * b for a, b in zip(*requests))
    # Same number of model.generate calls on both ranks (rank 1 pads with dummy calls), else ZeRO-3 would hang.
    assert first["generate_calls"] == second["generate_calls"]


def test_mrt_metrics_are_gathered_over_ranks(runs):
    logs = [row for row in runs["full"][0]["log_history"] if "mrt/prover_requests" in row]
    assert [row["step"] for row in logs] == list(range(1, STEPS + 1))
    for row in logs:
        steps = [next(s for s in r["steps"] if s["step"] == row["step"]) for r in runs["full"]]
        assert row["mrt/prover_requests"] == sum(p["requests"] for s in steps for p in s["prover"])
        completions = sum(len(s["ends"]) for s in steps)
        assert row["mrt/episodes"] == pytest.approx(sum(len(e) for s in steps for e in s["ends"]) / completions)
        assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])


def test_final_model_is_a_loadable_gathered_folder(runs, tiny_model_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM

    folder = runs["tmp"] / "full"
    model = AutoModelForCausalLM.from_pretrained(folder)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    saved, before = model.state_dict(), initial.state_dict()
    assert saved.keys() == before.keys()
    assert all(saved[k].shape == before[k].shape for k in saved)
    assert any(not torch.equal(saved[k], before[k]) for k in saved), "training changed no weight"
    # The folder holds the trained weights: those of the last ZeRO-3 checkpoint, consolidated by DeepSpeed.
    shards = get_fp32_state_dict_from_zero_checkpoint(str(folder / f"checkpoint-{STEPS}"))
    for name, value in shards.items():
        assert torch.allclose(saved[name].float(), value.float()), name
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()


def test_resume_continues_with_the_same_step_and_prompts(runs):
    full, stopped, resumed = runs["full"], runs["stopped"], runs["resumed"]
    assert runs["checkpoint"].is_dir()
    for rank in range(2):
        assert [s["step"] for s in stopped[rank]["steps"]] == [1, 2] and stopped[rank]["global_step"] == 2
        # Same seed, same prompts as the uninterrupted run up to the interruption...
        assert [s["prompts"] for s in stopped[rank]["steps"]] == [s["prompts"] for s in full[rank]["steps"][:2]]
        # ...and the resumed run starts at step 3 with the uninterrupted run's step-3 prompts, ending where it ended.
        assert [s["step"] for s in resumed[rank]["steps"]] == list(range(3, STEPS + 1))
        assert [s["prompts"] for s in resumed[rank]["steps"]] == [s["prompts"] for s in full[rank]["steps"][2:]]
        assert resumed[rank]["global_step"] == full[rank]["global_step"] == STEPS
        # The per-rank RNG state comes back too: the same completions, episodes, J values and advantages.
        for key in ("ends", "j_values", "advantages"):
            assert [s[key] for s in resumed[rank]["steps"]] == [s[key] for s in full[rank]["steps"][2:]], key
    losses = [{row["step"]: row["loss"] for row in run[0]["log_history"] if "loss" in row} for run in (full, resumed)]
    assert losses[1][STEPS] == pytest.approx(losses[0][STEPS])
    # Different problems in different steps: the comparison above could not pass by accident.
    assert full[0]["steps"][2]["prompts"] != full[0]["steps"][0]["prompts"]
