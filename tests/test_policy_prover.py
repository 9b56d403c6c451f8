"""TransformersProver on real SmolLM2: cache branching and the likelihood estimator against plain transformers calls."""

import pytest
import torch

from mrt import MRTConfig, MRTTrainer
from mrt.data import arithmetic_dataset
from mrt.prover import ProgressEstimator, TransformersProver, prefix_tree


@pytest.fixture(scope="module")
def trainer(smollm2_path, tmp_path_factory):
    args = MRTConfig(output_dir=str(tmp_path_factory.mktemp("out")), use_cpu=True, bf16=False, report_to="none",
                     per_device_train_batch_size=4, num_generations=2, max_completion_length=8,
                     gradient_checkpointing=False, prover_batch_size=6, termination_suffix="boxed")
    return MRTTrainer(model=smollm2_path, args=args, train_dataset=arithmetic_dataset(4, seed=0))


def prover_of(trainer) -> TransformersProver:
    return trainer.progress_estimator.prover


def likelihood_estimator(trainer) -> ProgressEstimator:
    e = trainer.progress_estimator
    return ProgressEstimator(e.prover, e.tokenizer, e.rules, e.suffix, None, estimator="likelihood",
                             answer_format=trainer.args.prover_answer_format)


def prompts_of(trainer, texts):
    tok = trainer._tokenizer
    return [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True,
                                    return_dict=False) for t in texts]


def plain_generate(trainer, prompt, max_tokens):
    """Greedy generation of one unpadded prompt, without the prover's cache branching."""
    ids = torch.tensor([prompt])
    out = trainer.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_tokens, pad_token_id=trainer._tokenizer.pad_token_id)
    new = out[0, len(prompt):].tolist()
    eos = trainer._tokenizer.eos_token_id
    return new[:new.index(eos)] if eos in new else new


def test_prefix_tree_reads_a_group_s_prompt_once_each_completion_once_and_prefixes_from_their_completion():
    prompt, a, b, suffix = [1, 2, 3], [10, 11, 12, 13], [10, 21, 22, 23], [8, 9]
    prompts = [prompt + a + suffix, prompt + a[:2] + suffix, prompt + suffix, prompt + b + suffix,
               prompt + b[:3] + suffix, [7, 7], [5]]
    parent, shared, level = prefix_tree(prompts)
    assert parent[0] is None and level[0] == 0  # the longest of the group is read whole
    assert (parent[3], shared[3], level[3]) == (0, 4, 1)  # completion b takes the prompt and b's first token
    assert (parent[4], shared[4], level[4]) == (3, 6, 2)  # b's prefix takes prompt + b[:3] from b
    assert (parent[1], shared[1]) == (0, 5)
    assert parent[2] in (0, 1, 3, 4) and shared[2] == 3
    assert parent[5] is None and parent[6] is None  # nothing in common
    assert max(level) <= 2


def test_prefill_reads_no_more_than_the_distinct_prefixes(trainer):
    from mrt.prover.estimate import distinct_prefixes

    tok = trainer._tokenizer
    prompt = prompts_of(trainer, ["What is 7 + 5?"])[0]
    suffix = list(trainer.progress_estimator.suffix.ids)
    works = [tok(t, add_special_tokens=False)["input_ids"] for t in
             ["Let me add. 7 + 5 = 12.\n\nWait, 5 + 7 = 12 too.", "Seven plus five.\n\nHmm, that is 12."]]
    prompts = [prompt + w[:b] + suffix for w in works for b in (0, len(w) // 2, len(w))]
    prover = prover_of(trainer)
    before = prover.prefill_tokens
    prover.generate(prompts, num_samples=1, max_tokens=2, temperature=1.0, stop=None)  # one chunk of 6
    assert prover.prefill_tokens - before == distinct_prefixes([p[:-1] for p in prompts])


def test_branched_samples_equal_plain_generation_greedily(trainer):
    # Prompts of different lengths share chunks (left padding), several share leading tokens (episode prefixes of
    # one completion, one a strict prefix of another), and 3 samples branch from each cached prompt.
    tok = trainer._tokenizer
    base, other = prompts_of(trainer, ["What is 7 + 5?", "Add 12 and 30, then tell me the result please."])
    steps = tok("Let me think. 7 + 5 is 12.\n\nWait, check: 5 + 7 = 12.", add_special_tokens=False)["input_ids"]
    suffix = list(trainer.progress_estimator.suffix.ids)
    prompts = [base + suffix, base + steps[:6] + suffix, base + steps + suffix, other + suffix, base + steps[:6],
               prompts_of(trainer, ["Hi"])[0]]
    samples = prover_of(trainer).generate(prompts, num_samples=3, max_tokens=6, temperature=0.0, stop=None)
    assert [len(s) for s in samples] == [3] * len(prompts)
    for prompt, group in zip(prompts, samples):
        expected = plain_generate(trainer, prompt, 6)
        assert expected, "greedy generation wrote nothing; the comparison would be empty"
        assert group == [expected] * 3


def test_rows_that_have_ended_stop_decoding_and_the_rest_go_on(trainer):
    # A stop string that ends one prompt's greedy answer early: each prompt's last token is read once (not once per
    # sample), after FIRST_TOKENS only the other prompt's rows are decoded on, and both answers are still plain
    # generate's (the first one cut after its stop string).
    from mrt.prover.transformers_policy import FIRST_TOKENS

    tok = trainer._tokenizer
    short, long = prompts_of(trainer, ["What is 7 + 5?", "Write a long story about a cat."])
    long_text = tok.decode(plain_generate(trainer, long, 8))
    early = plain_generate(trainer, short, 8)
    stop = next(tok.decode(early[1:k]) for k in range(2, 4) if tok.decode(early[1:k]).strip())  # ends at 2+
    assert stop not in long_text and len(plain_generate(trainer, long, 8)) == 8
    shapes = []
    hook = trainer.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        short_group, long_group = prover_of(trainer).generate([short, long], num_samples=2, max_tokens=8,
                                                                temperature=0.0, stop=[stop])
    finally:
        hook.remove()
    cut = next(k for k in range(1, 9) if stop in tok.decode(early[:k]))
    assert short_group == [early[:cut]] * 2
    assert long_group == [plain_generate(trainer, long, 8)] * 2
    # Two prefill passes (the longer prompt, then the other's tokens after the shared chat template; no idle pass
    # for the empty levels), the last tokens once per prompt, then the 4 sample rows, then the 2 open rows only.
    assert [width > 1 for _, width in shapes[:3]] == [True, True, False] and shapes[2] == (2, 1)
    rows = [r for r, _ in shapes[3:]]
    assert rows == [4] * (FIRST_TOKENS - 1) + [2] * (8 - FIRST_TOKENS)


def test_sampled_branches_differ_and_respect_the_token_limit(trainer):
    prompts = prompts_of(trainer, ["Write a long story about a cat."])
    torch.manual_seed(0)
    (group,) = prover_of(trainer).generate(prompts, num_samples=4, max_tokens=5, temperature=1.5, stop=None)
    assert len(group) == 4 and all(1 <= len(s) <= 5 for s in group)
    assert len({tuple(s) for s in group}) > 1, "four samples at temperature 1.5 should not all be equal"


def test_likelihood_matches_an_unpadded_forward_pass(trainer):
    tok = trainer._tokenizer
    prompts = prompts_of(trainer, ["What is 7 + 5?", "What is 100 - 1? Answer in one number."])
    answers = [tok("12}", add_special_tokens=False)["input_ids"], tok("99", add_special_tokens=False)["input_ids"]]
    got = prover_of(trainer).likelihood(prompts, answers)
    for prompt, answer, value in zip(prompts, answers, got):
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logps = torch.log_softmax(trainer.model(input_ids=ids).logits[0, :-1].float(), dim=-1)
        expected = sum(logps[len(prompt) - 1 + k, a].item() for k, a in enumerate(answer))
        assert value == pytest.approx(expected, abs=1e-3)
        assert value < 0


def test_likelihood_refuses_an_empty_answer(trainer):
    with pytest.raises(ValueError, match="at least one token"):
        prover_of(trainer).likelihood(prompts_of(trainer, ["Hi"]), [[]])


def test_likelihood_rates_follow_what_the_prefix_already_says(trainer):
    """J by likelihood is high for the answer the prefix has just worked out and low for another one."""
    tok = trainer._tokenizer
    (prompt,) = prompts_of(trainer, ["What is 7 + 5?"])
    prefix = tok("7 + 5 = 12.", add_special_tokens=False)["input_ids"]
    estimate = likelihood_estimator(trainer).estimate([prompt, prompt], [prefix, prefix], ["", ""],
                                                      [{"answer": "12"}, {"answer": "13"}],
                                                      lengths=[[len(prefix)], [len(prefix)]])
    right, wrong = estimate.rates
    assert 0.0 < wrong < right <= 1.0
    assert right > 0.1 and wrong < right / 3, (right, wrong)


def test_likelihood_rates_leave_requests_without_gold_unscored(trainer):
    (prompt,) = prompts_of(trainer, ["What is 7 + 5?"])
    estimate = likelihood_estimator(trainer).estimate([prompt, prompt], [[], []], ["", ""],
                                                      [{"answer": "12"}, {"answer": None}], lengths=[[0], [0]])
    rates = estimate.rates
    assert rates[0] is not None and 0.0 < rates[0] < 1.0 and rates[1] is None


def test_chunks_are_cut_between_groups_not_inside_a_completion_s_prefixes():
    from mrt.prover.transformers_policy import token_order_chunks

    group_a = [[1, 2, 3, 4, 5, k] for k in range(3)]  # three prefixes of one completion
    group_b = [[1, 9, 9, 9, k] for k in range(3)]
    prompts = [group_b[0], group_a[0], group_b[1], group_a[1], group_b[2], group_a[2]]
    parts = token_order_chunks(prompts, 4)
    assert [sorted(prompts[i][1] for i in part) for part in parts] == [[2, 2, 2], [9, 9, 9]]
    assert sorted(i for part in parts for i in part) == list(range(6))
    assert all(len(part) <= 2 for part in token_order_chunks(prompts, 2))


def test_prefix_tree_takes_every_token_of_a_known_row():
    known = [1, 2, 3, 4, 5, 6]
    prompts = [known, [1, 2, 3, 4, 9, 9], [1, 2, 3, 4, 5, 6, 7, 8], [7, 7, 7]]
    parent, shared, level = prefix_tree(prompts, known=1)
    assert parent == [None, 0, 0, None]
    assert shared == [0, 4, 6, 0]  # all of the known row, its last token included
    assert level == [0, 1, 1, 0]
    # Unknown, the same row is an ordinary prompt: it takes 5 tokens from the longest (never its own last token).
    assert prefix_tree(prompts)[:2] == ([2, 2, None, None], [5, 4, 0, 0])


def generated_rows(trainer, prompts, max_tokens):
    """Left-padded prompts and what the model generated greedily, with the cache generate returned."""
    tok = trainer._tokenizer
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = trainer.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_tokens,
                                     pad_token_id=tok.pad_token_id, return_dict_in_generate=True)
    return out.sequences, width, out.past_key_values


def test_reusing_the_generation_cache_gives_the_same_answers_and_reads_only_the_suffixes(trainer):
    prover, suffix = prover_of(trainer), list(trainer.progress_estimator.suffix.ids)
    prompts = prompts_of(trainer, ["What is 7 + 5? Think step by step.", "Add 12 and 30."])
    sequences, width, cache = generated_rows(trainer, prompts, 12)
    completions = [sequences[i, width:].tolist() for i in range(len(prompts))]
    requests = [p + c[:b] + suffix for p, c in zip(prompts, completions) for b in (0, 4, 9)]
    answers = [trainer._tokenizer("12}", add_special_tokens=False)["input_ids"]] * len(requests)

    fresh = prover.likelihood(requests, answers)
    plain = prover.generate(requests, num_samples=2, max_tokens=4, temperature=0.0, stop=None)
    before = prover.prefill_tokens
    with prover.reusing(sequences, width, cache):
        reused = prover.likelihood(requests, answers)
        read = prover.prefill_tokens - before
        branched = prover.generate(requests, num_samples=2, max_tokens=4, temperature=0.0, stop=None)
    assert reused == pytest.approx(fresh, abs=1e-3)
    assert branched == plain
    assert read == sum(len(suffix) - 1 for _ in requests)  # only each suffix (its last token is read when sampling)
    assert prover._known == []  # nothing is kept after the block


def test_a_training_step_reads_completions_from_the_generation_cache(smollm2_path, tmp_path):
    args = MRTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_steps=1,
                     per_device_train_batch_size=4, num_generations=2, max_completion_length=16, logging_steps=1,
                     gradient_checkpointing=False, termination_suffix="boxed", prover_estimator="likelihood",
                     save_strategy="no", seed=0)
    trainer = MRTTrainer(model=smollm2_path, args=args, train_dataset=arithmetic_dataset(4, seed=0))
    trainer.train()
    logged = next(row for row in trainer.state.log_history if "mrt/prover_prefill_min" in row)
    # Without the generation cache the prefill reads the distinct prefixes (the minimum); with it, the suffixes.
    assert logged["mrt/prover_prefill_tokens"] < logged["mrt/prover_prefill_min"]
    assert trainer._generated == []


# ---------------------------------------------------------------- one RNG (tiny model)


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_path).eval(), AutoTokenizer.from_pretrained(tiny_model_path)


def tiny_prompts(tokenizer):
    return [tokenizer("What is 7 + 5? Answer:", add_special_tokens=False)["input_ids"],
            tokenizer("Write a long story.", add_special_tokens=False)["input_ids"]]


@pytest.mark.parametrize("seed", [None, 3])
def test_a_prover_call_leaves_the_global_rng_untouched(tiny, seed):
    model, tok = tiny
    prover = TransformersProver.for_model(model, tok, seed=0)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    prover.generate(tiny_prompts(tok), num_samples=3, max_tokens=6, temperature=1.0, stop=None, seed=seed)
    assert torch.equal(torch.get_rng_state(), before)


def test_provers_with_the_same_seed_draw_the_same_samples_whatever_the_global_rng(tiny):
    model, tok = tiny
    draws = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        prover = TransformersProver.for_model(model, tok, seed=7)
        draws.append([prover.generate(tiny_prompts(tok), 3, 6, 1.0, None) for _ in range(2)])
    assert draws[0] == draws[1]
    assert draws[0][0] != draws[0][1], "a prover's successive calls should draw other samples"
