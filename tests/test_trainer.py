"""MRTTrainer on a tiny random model with the real SmolLM2 tokenizer (fast, CPU)."""

import logging

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from mrt import MRTConfig, MRTTrainer
from mrt.data import arithmetic_dataset
from mrt.progress import progress

COMMON = dict(
    use_cpu=True, bf16=False, report_to="none", gradient_checkpointing=False, save_strategy="no",
    per_device_train_batch_size=4, num_generations=2, max_completion_length=12, logging_steps=1,
    learning_rate=1e-2, beta=0.0, seed=0, dataloader_num_workers=0,
)
MRT = dict(prover_num_samples=2, prover_max_tokens=3, episode_chunk_tokens=4, max_episodes=3)


def mrt_trainer(model_path, tmp_path, dataset=None, eval_dataset=None, reward_funcs=None, **overrides):
    args = MRTConfig(output_dir=str(tmp_path / "out"), **{**COMMON, **MRT, **overrides})
    return MRTTrainer(model=model_path, args=args, train_dataset=dataset or arithmetic_dataset(16, seed=0),
                      eval_dataset=eval_dataset, reward_funcs=reward_funcs)


def length_reward(completions, **kwargs):
    """Varies between completions, so that a random model gets a non-zero GRPO advantage."""
    return [float(len(c[0]["content"] if isinstance(c, list) else c)) for c in completions]


def one_batch(trainer):
    """Score one generation batch as training would, and return TRL's output dict."""
    trainer.model.train()
    rows = [trainer.train_dataset[i] for i in range(2) for _ in range(trainer.num_generations)]
    return trainer._generate_and_score_completions(rows)


def expected_advantages(record, alpha, length):
    rows = []
    for ends, js, seq in zip(record.ends, record.j_values, record.sequence_advantages.tolist()):
        prog = progress(js)[:len(ends)]
        row, start = [0.0] * length, 0
        for end, value in zip(ends, prog):
            for t in range(start, min(end, length)):
                row[t] = alpha * value
            start = end
        rows.append([seq + v for v in row])
    return torch.tensor(rows)


def test_two_steps_train_and_log_mrt_metrics(tiny_model_path, tmp_path):
    trainer = mrt_trainer(tiny_model_path, tmp_path, max_steps=2, reward_funcs=[mrt_reward(), length_reward])
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert changed, "no parameter changed after two MRT steps"
    logged = {k for entry in trainer.state.log_history for k in entry}
    for name in ("episodes", "J_0", "J_final", "progress", "progress_abs", "frac_positive_progress",
                 "prover_requests", "prover_tokens", "prover_seconds", "prover_step_share", "regret"):
        assert f"mrt/{name}" in logged, f"mrt/{name} not logged"
    assert trainer.state.global_step == 2


def test_a_step_logs_no_warning_about_its_own_generation_call(tiny_model_path, tmp_path):
    # MRTTrainer asks TRL's generate for its cache; asking with a flag beside TRL's generation_config made
    # transformers warn at every start, about a call the user does not make.
    seen = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("transformers")
    logging.Logger.warning_once.cache_clear()  # transformers says each warning once per process
    logger.addHandler(handler)
    try:
        one_batch(mrt_trainer(tiny_model_path, tmp_path))
    finally:
        logger.removeHandler(handler)
    assert not [m for m in seen if "generation_config" in m], seen


def test_advantages_are_sequence_advantage_plus_alpha_times_progress(tiny_model_path, tmp_path):
    trainer = mrt_trainer(tiny_model_path, tmp_path, alpha=0.5)
    output = one_batch(trainer)
    record = trainer.last_progress
    adv = output["advantages"]
    assert adv.shape == output["completion_ids"].shape
    assert len(record.ends) == adv.size(0)
    for ends, js in zip(record.ends, record.j_values):
        assert 1 <= len(ends) <= 3 and len(js) == len(ends) + 1
        assert all(0.0 <= j <= 1.0 for j in js)
    assert torch.allclose(adv, expected_advantages(record, 0.5, adv.size(1)))
    assert torch.equal(record.sequence_advantages, record.grpo_advantages)  # dense mode keeps GRPO's A(z)


def test_alpha_zero_gives_grpo_advantages_exactly(tiny_model_path, tmp_path):
    trainer = mrt_trainer(tiny_model_path, tmp_path, alpha=0.0, estimate_progress=True)
    output = one_batch(trainer)
    grpo = trainer.last_progress.grpo_advantages
    assert torch.equal(output["advantages"], grpo.unsqueeze(1).expand_as(output["advantages"]))


def test_alpha_zero_trains_exactly_like_grpo(tiny_model_path, tmp_path):
    dataset = arithmetic_dataset(16, seed=0)
    grpo_args = GRPOConfig(output_dir=str(tmp_path / "grpo"), max_steps=1, **COMMON)
    grpo = GRPOTrainer(model=tiny_model_path, reward_funcs=mrt_reward(), args=grpo_args, train_dataset=dataset)
    grpo.train()
    mrt = mrt_trainer(tiny_model_path, tmp_path, dataset=dataset, alpha=0.0, max_steps=1)
    mrt.train()
    for (name, a), b in zip(grpo.model.named_parameters(), mrt.model.parameters()):
        assert torch.equal(a, b), name


def mrt_reward():
    from mrt.rewards.accuracy import make_accuracy_reward

    return make_accuracy_reward("answer")


def test_termination_baseline_uses_outcome_minus_j0(tiny_model_path, tmp_path):
    trainer = mrt_trainer(tiny_model_path, tmp_path, progress_mode="termination_baseline", alpha=1.0)
    one_batch(trainer)
    record = trainer.last_progress
    expected = torch.tensor([js[-1] - js[0] for js in record.j_values])
    assert torch.allclose(record.sequence_advantages, expected)


def test_missing_answer_column_fails_at_start_naming_columns(tiny_model_path, tmp_path):
    dataset = arithmetic_dataset(8, seed=0).remove_columns("answer")
    with pytest.raises(ValueError) as error:
        mrt_trainer(tiny_model_path, tmp_path, dataset=dataset)
    assert "answer" in str(error.value) and "problem" in str(error.value)


def test_unparsable_gold_is_unscorable_with_zero_advantage(tiny_model_path, tmp_path):
    dataset = arithmetic_dataset(16, seed=0)
    dataset = dataset.map(lambda row, i: {"answer": "???" if i % 2 == 0 else row["answer"]}, with_indices=True)
    trainer = mrt_trainer(tiny_model_path, tmp_path, dataset=dataset, max_steps=1)
    output = one_batch(trainer)  # rows 0 (unparsable) and 1
    record = trainer.last_progress
    assert record.scorable == [False, False, True, True]
    assert torch.all(output["advantages"][:2] == 0)
    assert trainer._metrics["train"]["mrt/unscorable"][-1] == 2
    trainer.train()  # training goes on
    assert trainer.state.global_step == 1


def test_truncated_and_markerless_completions_still_get_episodes(tiny_model_path, tmp_path):
    # The random model almost never stops or writes a marker: completions are cut at the limit.
    trainer = mrt_trainer(tiny_model_path, tmp_path, max_completion_length=8)
    output = one_batch(trainer)
    assert output["completion_mask"].sum(dim=1).tolist() == [8] * 4
    assert all(ends and ends[-1] == 8 for ends in trainer.last_progress.ends)
    assert torch.isfinite(output["advantages"]).all()


def test_completions_masked_as_truncated_are_not_sent_to_the_prover(tiny_model_path, tmp_path):
    trainer = mrt_trainer(tiny_model_path, tmp_path, max_completion_length=8, mask_truncated_completions=True)
    output = one_batch(trainer)
    assert output["completion_mask"].sum() == 0  # every completion was truncated and masked by TRL
    record = trainer.last_progress
    assert record.ends == [[]] * 4 and record.j_values == [[]] * 4
    assert trainer._metrics["train"]["mrt/prover_requests"][-1] == 0
    assert torch.equal(output["advantages"], record.grpo_advantages.unsqueeze(1).expand_as(output["advantages"]))


def test_empty_completion_has_no_episode_and_no_crash(tiny_model_path, tmp_path):
    # Forcing the end-of-turn token first gives completions with no text at all.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    others = [i for i in range(len(tok)) if i != tok.eos_token_id]
    trainer = mrt_trainer(tiny_model_path, tmp_path, max_completion_length=2,
                          generation_kwargs={"suppress_tokens": others})
    output = one_batch(trainer)
    texts = trainer._tokenizer.batch_decode(output["completion_ids"], skip_special_tokens=True)
    assert all(t == "" for t in texts)
    record = trainer.last_progress
    assert all(len(ends) <= 1 for ends in record.ends)
    assert torch.isfinite(output["advantages"]).all()


def test_long_prompts_are_dropped_with_a_warning(tiny_model_path, tmp_path, caplog):
    dataset = arithmetic_dataset(8, seed=0)
    long = {"problem": "x", "answer": "1",
            "prompt": [{"role": "user", "content": "What is 1 + 0? " + "Think hard. " * 200}]}
    dataset = Dataset.from_list([long] + [dict(dataset[i]) for i in range(len(dataset))])
    with caplog.at_level(logging.WARNING):
        trainer = mrt_trainer(tiny_model_path, tmp_path, dataset=dataset, max_prompt_length=200)
    assert len(trainer.train_dataset) == 8
    assert "Dropped 1 of 9" in caplog.text
    with pytest.raises(ValueError, match="max_prompt_length=5"):
        mrt_trainer(tiny_model_path, tmp_path, dataset=dataset, max_prompt_length=5)


def test_prompt_lengths_are_counted_as_trl_tokenizes_prompts(tiny_model_path, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    # A template that reads a chat_template_kwargs value, as e.g. Qwen3's reads enable_thinking.
    tok.chat_template = "{% if preamble %}{{ preamble }}{% endif %}" + tok.chat_template
    rows = [{"prompt": [{"role": "user", "content": "What is 1 + 1?" + " Think." * k}], "answer": "2"}
            for k in range(8)]
    dataset = Dataset.from_list(rows)
    settings = {**COMMON, **MRT, "chat_template_kwargs": {"preamble": "Take your time. " * 40}}

    def build(**overrides):
        args = MRTConfig(output_dir=str(tmp_path / "out"), **{**settings, **overrides})
        return MRTTrainer(model=tiny_model_path, args=args, train_dataset=dataset, processing_class=tok)

    prompts = [row["prompt"] for row in rows]
    lengths = [len(ids) for ids in build()._tokenize_prompts(prompts)[0]]  # TRL's own prompt ids
    assert lengths == sorted(lengths) and lengths[0] > 160  # the preamble counts
    limit = lengths[3]
    kept = [row["prompt"] for row in build(max_prompt_length=limit).train_dataset]
    assert kept == [p for p, n in zip(prompts, lengths) if n <= limit] and len(kept) < len(prompts)


def test_j_is_the_same_with_and_without_the_generation_cache(tiny_model_path, tmp_path):
    # One real TRL step: 8 completions (4 prompts x num_generations 2) generated once for 2 micro-steps. Same
    # seed, so the same completions and the same random draws of mu: only where the keys and values come from
    # differs.
    runs = {}
    for reuse in (True, False):
        trainer = mrt_trainer(tiny_model_path, tmp_path / str(reuse), reward_funcs=parity, max_steps=1,
                              steps_per_generation=2, prover_reuse_generation_cache=reuse)
        trainer.train()
        prefill = [h["mrt/prover_prefill_tokens"] for h in trainer.state.log_history
                   if "mrt/prover_prefill_tokens" in h]
        runs[reuse] = (trainer.last_progress, prefill[0])
    (cached, read_with), (plain, read_without) = runs[True], runs[False]
    assert len(cached.j_values) == 8 and any(0 < j < 1 for js in cached.j_values for j in js[:-1])
    assert cached.ends == plain.ends and cached.j_values == plain.j_values
    assert torch.equal(cached.advantages, plain.advantages)
    assert read_with < read_without  # the switch switched: with the cache the prover read only the suffixes


def test_eval_batches_get_the_bonus_with_prover_on_eval(tiny_model_path, tmp_path):
    trainer = mrt_trainer(tiny_model_path, tmp_path, eval_dataset=arithmetic_dataset(4, seed=1),
                          per_device_eval_batch_size=4, eval_strategy="no", prover_on_eval=True)
    metrics = trainer.evaluate()
    assert "eval_mrt/J_0" in metrics and "eval_mrt/episodes" in metrics
    assert metrics["eval_mrt/episodes"] >= 1


def test_grpo_config_is_refused_with_a_clear_message(tiny_model_path, tmp_path):
    args = GRPOConfig(output_dir=str(tmp_path), **COMMON)
    with pytest.raises(TypeError, match="MRTConfig"):
        MRTTrainer(model=tiny_model_path, args=args, train_dataset=arithmetic_dataset(4))


def test_likelihood_estimator_gives_fractional_j_without_sampling(tiny_model_path, tmp_path):
    trainer = mrt_trainer(tiny_model_path, tmp_path, prover_estimator="likelihood", termination_suffix="boxed",
                          alpha=0.5)
    output = one_batch(trainer)
    record = trainer.last_progress
    inner = [j for js in record.j_values for j in js[:-1]]  # J_H is the real 0/1 outcome
    assert inner and all(0.0 < j < 1.0 for j in inner), inner
    assert torch.allclose(output["advantages"], expected_advantages(record, 0.5, output["advantages"].size(1)))
    assert trainer._metrics["train"]["mrt/prover_tokens"][-1] == 0  # nothing sampled


def test_eval_batches_do_not_count_toward_the_training_step_s_prover_share(tiny_model_path, tmp_path):
    trainer = mrt_trainer(tiny_model_path, tmp_path, prover_on_eval=True)
    trainer.model.eval()
    rows = [trainer.train_dataset[0]] * trainer.num_generations
    trainer._generate_and_score_completions(rows)
    assert trainer._metrics["eval"]["mrt/prover_seconds"][-1] > 0
    assert trainer._prover_seconds == 0.0  # nothing carried into the next training step's mrt/prover_step_share


def test_beam_search_generation_kwargs_do_not_break_the_prover(tiny_model_path, tmp_path):
    # Beam search returns a cache of batch x beams rows, reordered: not the rows of the returned sequences, so the
    # prover must read its prompts anew (TRL's test_train_with_generation_kwargs crashed on it).
    j_values = {}
    for reuse in (True, False):
        trainer = mrt_trainer(tiny_model_path, tmp_path / str(reuse), reward_funcs=parity,
                              prover_reuse_generation_cache=reuse,
                              generation_kwargs={"do_sample": True, "top_k": 50, "num_beams": 2, "length_penalty": -0.1})
        output = one_batch(trainer)
        assert trainer._metrics["train"]["mrt/prover_requests"][-1] > 0
        assert torch.isfinite(output["advantages"]).all()
        j_values[reuse] = trainer.last_progress.j_values
    assert j_values[True] == j_values[False]  # the beams' cache was not taken for the sequences' keys and values


def test_a_static_cache_implementation_does_not_break_the_prover(tiny_model_path, tmp_path):
    trainer = mrt_trainer(tiny_model_path, tmp_path, cache_implementation="static")
    output = one_batch(trainer)
    assert trainer._metrics["train"]["mrt/prover_requests"][-1] > 0
    assert torch.isfinite(output["advantages"]).all()


def half_unparsable(n=16):
    dataset = arithmetic_dataset(n, seed=0)
    return dataset.map(lambda row, i: {"answer": "???" if i % 2 == 0 else row["answer"]}, with_indices=True)


def test_estimating_progress_at_alpha_zero_is_grpo_even_for_rows_only_another_reward_scores(tiny_model_path,
                                                                                            tmp_path):
    # Rows 0-1 have an unparsable gold: accuracy says None there, but the length reward scores them, so GRPO
    # gives them an advantage; running the prover must not take it away.
    def checksum(completions, **kwargs):  # differs between any two texts, almost surely
        return [float(sum(map(ord, c[0]["content"] if isinstance(c, list) else c)) % 97) for c in completions]

    trainer = mrt_trainer(tiny_model_path, tmp_path, dataset=half_unparsable(), alpha=0.0, estimate_progress=True,
                          reward_funcs=[mrt_reward(), checksum])
    output = one_batch(trainer)
    grpo = trainer.last_progress.grpo_advantages
    assert grpo[:2].abs().sum() > 0
    assert torch.equal(output["advantages"], grpo.unsqueeze(1).expand_as(output["advantages"]))


def parity(completions, **kwargs):
    """A reward a random model earns about half the time: the parity of the text's length."""
    return [float(len(c[0]["content"] if isinstance(c, list) else c) % 2) for c in completions]


def test_termination_baseline_takes_r_and_j0_from_the_progress_rewards(tiny_model_path, tmp_path):
    # Issue 21 changed this rule: r was the whole reward, J_0 only the progress rewards' (two scales).
    trainer = mrt_trainer(tiny_model_path, tmp_path, progress_mode="termination_baseline", alpha=1.0,
                          reward_funcs=[parity, length_reward], reward_weights=[1.0, 0.01],
                          progress_reward_funcs=["parity"])
    one_batch(trainer)
    record = trainer.last_progress
    rewards = trainer.local_rewards(4)
    assert rewards[:, 1].abs().sum() > 0  # the length reward counts in GRPO's reward, not in r or J
    expected = rewards[:, 0] - torch.tensor([js[0] for js in record.j_values])
    assert torch.allclose(record.sequence_advantages, expected)
    assert all(js[-1] == r for js, r in zip(record.j_values, rewards[:, 0].tolist()))  # J_H = r


def test_termination_baseline_rows_without_j0_take_the_group_mean_in_reward_units(tiny_model_path, tmp_path):
    from mrt.rewards.accuracy import PROVER_SUFFIX

    first = arithmetic_dataset(16, seed=0)[0]["problem"]

    def checksum_but_not_mu_on_the_first_problem(completions, problem, **kwargs):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        values = [float(sum(map(ord, t)) % 97) / 10 for t in texts]  # differs between texts, almost surely
        if PROVER_SUFFIX in kwargs:  # a prover sample: unscored for the first problem, so its J is unknown
            values = [None if p == first else v for v, p in zip(values, problem)]
        return values

    trainer = mrt_trainer(tiny_model_path, tmp_path, progress_mode="termination_baseline", alpha=1.0,
                          reward_funcs=checksum_but_not_mu_on_the_first_problem)
    one_batch(trainer)  # rows 0-1: the first problem, rows 2-3: the second
    record = trainer.last_progress
    r = trainer.local_rewards(4)[:, 0]
    assert [js[0] is None for js in record.j_values] == [True, True, False, False]
    assert r[0] != r[1] and abs(abs(r[0] - r[1]) - 2 ** 0.5) > 0.1  # GRPO's scaling would show
    # r - J_0 where J_0 is known; r - the group's mean r (GRPO's baseline, not divided by the std) elsewhere.
    expected = torch.cat([r[:2] - r[:2].mean(), r[2:] - torch.tensor([js[0] for js in record.j_values[2:]])])
    assert torch.allclose(record.sequence_advantages, expected)


def test_likelihood_with_whole_solutions_as_answers_warns(tiny_model_path, tmp_path, caplog):
    dataset = arithmetic_dataset(8, seed=0).map(
        lambda row: {"answer": f"We add the two numbers step by step and find that the result is {row['answer']}."})
    with caplog.at_level(logging.WARNING, logger="mrt.rl.trainer"):
        mrt_trainer(tiny_model_path, tmp_path, dataset=dataset, prover_estimator="likelihood",
                    termination_suffix="boxed")
    assert any("long texts" in r.message and "answer_column='answer'" in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mrt.rl.trainer"):
        mrt_trainer(tiny_model_path, tmp_path, prover_estimator="likelihood", termination_suffix="boxed")
    assert not any("long texts" in r.message for r in caplog.records)


def test_a_new_progress_form_is_one_class_and_a_registry_line(tiny_model_path, tmp_path, monkeypatch):
    from mrt.rl.modes import MODES, ProgressMode

    class OutcomeOnly(ProgressMode):
        """A form of this test only: r itself as the sequence advantage (no baseline), so it needs no GRPO mean."""

        name = "outcome_only"
        needs_prover = True

        def sequence_advantages(self, grpo, outcomes, j_rows, mode):
            return torch.tensor([0.0 if r is None else r for r in outcomes])

    with pytest.raises(ValueError, match="MRTConfig.progress_mode "):
        mrt_trainer(tiny_model_path, tmp_path, progress_mode="outcome_only")
    monkeypatch.setitem(MODES, OutcomeOnly.name, OutcomeOnly)
    trainer = mrt_trainer(tiny_model_path, tmp_path, progress_mode="outcome_only", alpha=0.5,
                          reward_funcs=length_reward)
    assert isinstance(trainer.progress_mode, OutcomeOnly)
    assert trainer.args.runs_prover and not mrt_trainer(tiny_model_path, tmp_path, alpha=0.0).args.runs_prover
    output = one_batch(trainer)
    record = trainer.last_progress
    r = trainer.local_rewards(4)[:, 0]
    assert torch.equal(record.sequence_advantages, r) and (r > 0).all()  # GRPO's would sum to 0 per group
    assert torch.allclose(output["advantages"], expected_advantages(record, 0.5, output["advantages"].size(1)))
