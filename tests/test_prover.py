import torch

from mrt.prover import ProverBatch, StopOnText, build_batch, success_rates


def decode(ids):
    return "".join(f"<{i}>" for i in ids)


def test_identical_prefixes_are_asked_once_and_b0_is_shared_by_the_group():
    prompts = [[1, 2], [1, 2], [3]]
    completions = [[10, 11, 12], [10, 13], [10]]
    lengths = [[0, 1, 2], [0, 1], [0]]
    batch = build_batch(prompts, completions, lengths, ["5", "5", "7"], [99], " S", decode)
    assert batch.asked == 6
    # [1,2]+[] , [1,2]+[10], [1,2]+[10,11] , [3]+[]  -> 4 unique
    assert batch.prompts == [[1, 2, 99], [1, 2, 10, 99], [1, 2, 10, 11, 99], [3, 99]]
    assert batch.index == [[0, 1, 2], [0, 1], [3]]
    assert batch.texts[2] == "<10><11> S"


def test_same_prefix_with_another_gold_is_a_separate_request():
    batch = build_batch([[1], [1]], [[5], [5]], [[0], [0]], ["1", "2"], [], "", decode)
    assert len(batch.prompts) == 2 and batch.index == [[0], [1]]


def test_success_rate_is_the_mean_sample_score():
    batch = ProverBatch(prompts=[[1], [2], [3]], texts=["The final answer is $\\boxed{", "", "x"],
                        golds=["12", "12", "???"], index=[[0, 1, 2]])
    rates = success_rates(batch, [["12}", "13}", "12}$", "7}"], ["\\boxed{12}", "no"], ["\\boxed{1}"]])
    assert rates == [0.5, 0.5, None]


def test_stop_on_text_sees_only_new_tokens(tokenizer):
    prompt = tokenizer("Answer: \\boxed{4}", add_special_tokens=False)["input_ids"]
    new = tokenizer(" 12} and more", add_special_tokens=False)["input_ids"]
    stop = StopOnText(tokenizer, ["}"], prompt_width=len(prompt))
    # the prompt's own "}" does not count; the row whose new text has "}" stops
    done = stop(torch.tensor([prompt + new[:1]]), None)
    assert not done[0]
    assert not stop(torch.tensor([prompt + new[:3]]), None)[0]  # " 12"
    assert stop(torch.tensor([prompt + new[:4]]), None)[0]  # " 12}"
