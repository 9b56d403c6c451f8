"""The prover's requests and scoring (pure parts, the real SmolLM2 tokenizer): one builder, mu's own answer only."""

import re
import types

import pytest
import torch
from transformers import AutoTokenizer

from mrt.prover import (
    ProverRequests,
    RewardScorer,
    StopOnText,
    answer_in_context,
    build_requests,
    make_suffix,
    prover_prompt,
    sample_success,
)
from mrt.rewards.accuracy import PROVER_PREFIX, PROVER_SUFFIX, make_accuracy_reward


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_identical_prefixes_are_asked_once_and_b0_is_shared_by_the_group(tokenizer):
    suffix = make_suffix(tokenizer, "boxed", None)
    prompts = [[1, 2], [1, 2], [3]]
    completions = [[10, 11, 12], [10, 13], [10]]
    batch = build_requests(prompts, completions, [[0, 1, 2], [0, 1], [0]], suffix, tokenizer)
    assert batch.asked == 6
    # [1,2]+[] , [1,2]+[10], [1,2]+[10,11] , [3]+[]  -> 4 unique
    assert batch.prefix_ids == [[], [10], [10, 11], []]
    assert batch.index == [[0, 1, 2], [0, 1], [3]]
    assert batch.owner == [0, 0, 0, 2]
    assert all(p[-len(suffix.ids):] == list(suffix.ids) for p in batch.prompts)


def test_same_prefix_of_another_row_is_a_separate_request(tokenizer):
    suffix = make_suffix(tokenizer, "boxed", None)
    batch = build_requests([[1], [1]], [[5], [5]], [[0], [0]], suffix, tokenizer, row_keys=["a", "b"])
    assert len(batch.prompts) == 2 and batch.index == [[0], [1]]


@pytest.mark.parametrize("prefix, joiner", [
    ("We have 3x =", "\n\n"),  # mid-line: a blank line first (not "...3x =Time is up.")
    ("So 12.\n", "\n"),
    ("So 12.\n\n", ""),
    ("", ""),  # no prefix: mu answers from the prompt alone
])
def test_the_suffix_starts_a_new_paragraph(tokenizer, prefix, joiner):
    suffix = make_suffix(tokenizer, "authors", None)
    ids, text = prover_prompt([7], encode(tokenizer, prefix), suffix, tokenizer)
    assert text == prefix + joiner + suffix.text
    assert tokenizer.decode(ids[1:]) == text


def test_answer_in_context_uses_the_in_context_tokens():
    # A Qwen/GPT-2-style BPE merges '{' with a following '\\': the answer must be scored as written in context.
    from mrt.tiny_model import tiny_model_folder

    tok = AutoTokenizer.from_pretrained(tiny_model_folder())
    suffix = make_suffix(tok, "boxed", None)
    for answer in ["\\frac{1}{2}}$", "\\sqrt{2}}$", "12}$"]:
        head, tail = answer_in_context(tok, suffix, answer)
        assert head + tail == encode(tok, suffix.text + answer)
        assert tok.decode(head + tail) == suffix.text + answer
        assert head == list(suffix.ids[:len(head)])


class FixedProver:
    """A prover that answers every prompt with the given texts (the real ones need a model)."""

    def __init__(self, tokenizer, texts):
        self.tokenizer, self.texts = tokenizer, texts

    def generate(self, prompts, num_samples, max_tokens, temperature, stop, seed=None):
        return [[encode(self.tokenizer, t) for t in self.texts[:num_samples]] for _ in prompts]


def j_of(tokenizer, suffix_name, prefix, continuations, gold, reward_funcs=None):
    suffix = make_suffix(tokenizer, suffix_name, None)
    requests = build_requests([[1]], [encode(tokenizer, prefix)], [[len(encode(tokenizer, prefix))]], suffix,
                              tokenizer)
    samples = [[encode(tokenizer, c) for c in continuations]]
    scorer = RewardScorer(reward_funcs or make_accuracy_reward("answer"))
    rates, per_sample = sample_success(requests, samples, tokenizer.decode, suffix.text, scorer, ["q"], [[1]],
                                       [{"answer": gold}], conversational=False)
    return rates[0], per_sample[0]


@pytest.mark.parametrize("suffix, prefix, continuation, gold", [
    ("authors", "7 + 5. That gives 12.\n\n", "\n\nTo solve this problem, we", "12"),  # answer only in the prefix
    ("authors", "\\boxed{7}.\n\nWait, let me check.", "", "7"),  # mu wrote nothing
    ("boxed", "So the total is 12.", "}", "12"),  # an empty box
    ("boxed", "So the total is 12.", "1", "12"),  # cut inside the box at the token limit
])
def test_j_never_credits_mu_with_the_prefix_s_answer(tokenizer, suffix, prefix, continuation, gold):
    rate, scores = j_of(tokenizer, suffix, prefix, [continuation], gold)
    assert rate == 0.0 and scores == [0.0]


def test_j_is_the_mean_reward_of_mu_s_own_answers(tokenizer):
    rate, scores = j_of(tokenizer, "boxed", "7 + 5 = 12.", ["12}", "13}", "12}$", " 7}"], "12")
    assert scores == [1.0, 0.0, 1.0, 0.0] and rate == 0.5


def test_j_uses_the_user_s_reward_functions_and_weights(tokenizer):
    def says_yes(completions, **kwargs):
        return [1.0 if "yes" in c else 0.0 for c in completions]

    def polite(completions, **kwargs):
        return [0.5 if "please" in c else None for c in completions]

    suffix = make_suffix(tokenizer, "authors", None)
    requests = build_requests([[1]], [[]], [[0]], suffix, tokenizer)
    samples = [[encode(tokenizer, " yes please"), encode(tokenizer, " no"), encode(tokenizer, " yes")]]
    scorer = RewardScorer([says_yes, polite], reward_weights=[1.0, 2.0])
    rates, per_sample = sample_success(requests, samples, tokenizer.decode, suffix.text, scorer, ["q"], [[1]],
                                       [{}], conversational=False)
    assert per_sample[0] == [2.0, 0.0, 1.0]  # None of one function is left out of the weighted sum
    only = RewardScorer([says_yes, polite], reward_weights=[1.0, 2.0], only=["says_yes"])
    rates, per_sample = sample_success(requests, samples, tokenizer.decode, suffix.text, only, ["q"], [[1]], [{}],
                                       conversational=False)
    assert per_sample[0] == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="progress_reward_funcs"):
        RewardScorer([says_yes], only=["format"])


def test_a_sample_no_reward_function_scores_leaves_j_unknown(tokenizer):
    rate, scores = j_of(tokenizer, "boxed", "", ["12}"], "???")  # the default reward cannot parse the gold
    assert rate is None and scores == [None]


def test_conversational_prover_completions_are_messages_of_mu_s_text(tokenizer):
    # Changed with issue 21: the completion a reward function sees is mu's text only (it was prefix + suffix + mu's).
    seen = []

    def record(prompts, completions, **kwargs):
        seen.extend(completions)
        return [0.0] * len(completions)

    suffix = make_suffix(tokenizer, "authors", None)
    requests = ProverRequests(prompts=[[1, *suffix.ids]], texts=[suffix.text], prefix_texts=[""], prefix_ids=[[]],
                              owner=[0], index=[[0]], asked=1)
    sample_success(requests, [[encode(tokenizer, " 4")]], tokenizer.decode, suffix.text, RewardScorer(record),
                   [[{"role": "user", "content": "q"}]], [[1]], [{}], conversational=True)
    assert seen == [[{"role": "assistant", "content": " 4"}]]


def last_box_equals_gold(completions, answer, **kwargs):
    """A user's reward: the content of the last closed \\boxed{} equals the gold."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    boxes = [re.findall(r"\\boxed\{([^{}]*)\}", t) for t in texts]
    return [1.0 if b and b[-1].strip() == str(g) else 0.0 for b, g in zip(boxes, answer)]


def trl_accuracy(completions, solution, **kwargs):
    from trl.rewards import accuracy_reward

    return accuracy_reward(completions, solution, **kwargs)


# TRL's accuracy_reward reads conversational completions only (completion[0]["content"]).
ANY_REWARD = [(last_box_equals_gold, "answer", False), (last_box_equals_gold, "answer", True),
              (trl_accuracy, "solution", True)]


@pytest.mark.parametrize("reward, column, conversational", ANY_REWARD)
@pytest.mark.parametrize("suffix_name, mu_writes, expected", [
    ("authors", "", 0.0),  # mu wrote nothing: the prefix's \boxed{12} is not mu's
    ("authors", " So it is \\boxed{13}.", 0.0),  # a wrong answer of mu's own
    ("authors", " So it is \\boxed{12}.", 1.0),  # the right one
    ("boxed", "}", 0.0),  # an empty box
    ("boxed", "13}", 0.0),
    ("boxed", "12}", 1.0),  # mu closes the suffix's open box
])
def test_j_grades_mu_s_own_answer_under_any_reward(tokenizer, reward, column, conversational, suffix_name, mu_writes,
                                                   expected):
    prefix = "7 + 5 = 12, so the answer is \\boxed{12}.\n\nWait, let me check."
    suffix = make_suffix(tokenizer, suffix_name, None)
    requests = build_requests([[1]], [encode(tokenizer, prefix)], [[len(encode(tokenizer, prefix))]], suffix,
                              tokenizer)
    prompt = [{"role": "user", "content": "What is 7 + 5?"}] if conversational else "What is 7 + 5?"
    sample = encode(tokenizer, mu_writes)
    seen = {}

    def graded(prompts, completions, completion_ids, **kwargs):
        seen.update(completions=completions, completion_ids=completion_ids, **kwargs)
        return reward(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)

    rates, _ = sample_success(requests, [[sample]], tokenizer.decode, suffix.text, RewardScorer(graded), [prompt],
                              [[1]], [{column: "12"}], conversational=conversational)
    assert rates == [expected]
    assert seen["completion_ids"] == [sample]  # mu's tokens only
    # The prefix (what the policy wrote) and the suffix (joiner + termination suffix) travel in their own kwargs.
    assert seen[PROVER_PREFIX] == [prefix] and seen[PROVER_PREFIX][0] + seen[PROVER_SUFFIX][0] == requests.texts[0]
    text = seen["completions"][0] if not conversational else seen["completions"][0][0]["content"]
    assert "7 + 5" not in text and "Time is up" not in text


def test_stop_on_text_sees_only_new_tokens(tokenizer):
    prompt = encode(tokenizer, "Answer: \\boxed{4}")
    new = encode(tokenizer, " 12} and more")
    stop = StopOnText(tokenizer, ["}"], prompt_width=len(prompt))
    # the prompt's own "}" does not count; the row whose new text has "}" stops
    assert not stop(torch.tensor([prompt + new[:1]]), None)[0]
    assert not stop(torch.tensor([prompt + new[:3]]), None)[0]  # " 12"
    assert stop(torch.tensor([prompt + new[:4]]), None)[0]  # " 12}"


class FakeLLM:
    """Records the sampling parameters of each request (a real vllm.LLM takes minutes to start on CPU)."""

    def __init__(self):
        self.seeds = []

    def generate(self, prompts, sampling_params, use_tqdm=False):
        self.seeds.append([p.seed for p in sampling_params])
        one = types.SimpleNamespace(token_ids=[5, 6])
        return [types.SimpleNamespace(outputs=[one] * p.n) for p in sampling_params]


def test_vllm_prover_seeds_each_request_from_its_own_generator():
    pytest.importorskip("vllm")
    from mrt.prover import VLLMPolicyProver

    llms = [FakeLLM(), FakeLLM()]
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for llm in llms:
        prover = VLLMPolicyProver({0}, "colocate", llm=llm, seed=11)
        prover.generate([[1, 2], [3]], 2, 4, 1.0, None)
        prover.generate([[1, 2], [3]], 2, 4, 1.0, None)
    assert torch.equal(torch.get_rng_state(), before)  # the process's RNG is neither drawn from nor reseeded
    assert llms[0].seeds == llms[1].seeds  # the same prover seed: the same request seeds
    first, second = llms[0].seeds
    assert len(set(first)) == 2 and first != second  # a seed per request, new ones at every call
