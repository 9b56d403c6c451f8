import math

import pytest
import torch

from mrt.progress import episode_bonus, progress, regret, termination_advantages, token_advantages


def test_progress_is_the_change_in_success_and_sums_to_outcome_minus_j0():
    js = [0.25, 0.5, 0.25, 1.0]
    assert progress(js) == [0.25, -0.25, 0.75]
    assert math.isclose(sum(progress(js)), js[-1] - js[0])


def test_episode_bonus_places_each_episode_value_on_its_tokens_and_zero_on_padding():
    bonus = episode_bonus([[2, 5], [3]], [[0.5, -0.25], [1.0]], length=6)
    assert bonus.tolist() == [
        [0.5, 0.5, -0.25, -0.25, -0.25, 0.0],
        [1.0, 1.0, 1.0, 0.0, 0.0, 0.0],
    ]


def test_episode_bonus_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="row 0"):
        episode_bonus([[2, 5]], [[0.5]], length=6)


def test_token_advantages_constructed_case():
    # Two completions of one group: A(z) = [+1, -1]; episodes end at [2, 4] and [1, 4].
    sequence = torch.tensor([1.0, -1.0])
    bonus = episode_bonus([[2, 4], [1, 4]], [[0.5, 0.5], [-0.25, 0.0]], length=4)
    adv = token_advantages(sequence, bonus, alpha=2.0)
    assert adv.shape == (2, 4)
    assert adv.tolist() == [[2.0, 2.0, 2.0, 2.0], [-1.5, -1.0, -1.0, -1.0]]


def test_alpha_zero_is_grpo_exactly():
    sequence = torch.randn(8)
    bonus = torch.randn(8, 5)
    adv = token_advantages(sequence, bonus, alpha=0.0)
    assert torch.equal(adv, sequence.unsqueeze(1).expand(8, 5))


def test_token_advantages_checks_shapes():
    with pytest.raises(ValueError, match="expected advantages"):
        token_advantages(torch.zeros(2, 3), torch.zeros(2, 3), alpha=1.0)


def test_termination_advantages_use_j0_as_baseline():
    assert termination_advantages([1.0, 0.0], [0.25, 0.5]).tolist() == [0.75, -0.5]


def test_regret_of_hand_worked_curves():
    assert regret([1.0, 1.0, 1.0], [10, 20]) == 0.0  # right from the start
    assert regret([0.0, 0.0, 0.0], [10, 20]) == 1.0  # never right
    # J_0 = 0 over the first 10 tokens, J_1 = 1 over the last 30: area 30/40.
    assert regret([0.0, 1.0, 1.0], [10, 40]) == pytest.approx(0.25)
    assert regret([0.5, 1.0], []) == 0.5  # empty completion: only J_0


def test_training_evaluation_and_star_agree_on_one_j_curve():
    # One definition of cumulative regret (issue 21): the J step curve, J_{j-1} held over episode j's tokens.
    from mrt.evaluation.run import EvalConfig, summarize
    from mrt.star.select import trace_regret

    js, ends, j_tokens = [0.0, 0.5, 1.0, 1.0], [10, 30, 40], [0, 10, 30, 40]
    record = {"text": "", "tokens": 40, "finished": True, "outcome": 1.0, "episode_ends": ends, "j_tokens": j_tokens,
              "j_values": js, "budget_accuracy": [1.0]}
    trace = {"tokens": 40, "outcome": 1.0, "j_tokens": j_tokens, "j_values": js, "answer_scores": [0.0, 1.0, 1.0]}
    # Up to 40: 0 over [0, 10), 0.5 over [10, 30), 1 over [30, 40); then held at J_H = 1.
    for cutoff, by_hand in ((40, 1 - (0.5 * 20 + 1.0 * 10) / 40), (80, 1 - (0.5 * 20 + 1.0 * 10 + 1.0 * 40) / 80)):
        config = EvalConfig(models=["m"], max_tokens=80, budgets=[80], cutoffs=[cutoff])
        evaluation = summarize([{"index": 0, "completions": [record]}], config)["regret"][0]["regret"]
        assert evaluation == pytest.approx(by_hand) and trace_regret(trace, cutoff) == pytest.approx(by_hand)
        if cutoff == 40:  # training measures a completion at its own length
            assert regret(js, ends) == pytest.approx(by_hand)
