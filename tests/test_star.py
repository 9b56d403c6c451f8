"""MRT (STaR): selection on constructed J curves, the cut at the best episode, the empty-selection error, resume of
the generation step, and a one-iteration run on the tiny model."""

import pytest

from mrt.star_select import (Choice, NoCorrectTraces, best_prefix, check_not_empty, select_problem, summarize,
                             trace_regret)

CUTOFF = 100


def trace(j_tokens, j_values, answer_scores=None, outcome=None):
    """A scored trace: J_H (the last value) is its outcome unless given."""
    return {"tokens": j_tokens[-1], "outcome": j_values[-1] if outcome is None else outcome, "j_tokens": j_tokens,
            "j_values": j_values, "answer_scores": answer_scores or [1.0] * (len(j_values) - 1)}


# One problem. Regret at 100 tokens (linear curves held at J_H after the end):
SLOW = trace([0, 50, 100], [0.0, 0.0, 1.0], [0.0, 0.0])  # 1 - 25/100 = 0.75
EARLY = trace([0, 20, 100], [0.0, 1.0, 1.0], [0.0, 1.0])  # 1 - 90/100 = 0.10; J is at its max after episode 1
WRONG = trace([0, 30, 60], [1.0, 1.0, 0.0])  # mu knows, the trace ends wrong: never kept
SHORT = trace([0, 40], [0.0, 1.0], [0.0])  # 1 - 80/100 = 0.20
PROBLEM = [SLOW, EARLY, WRONG, SHORT]


def test_regret_ranks_progress_per_token():
    assert [round(trace_regret(t, CUTOFF), 6) for t in (SLOW, EARLY, SHORT)] == [0.75, 0.1, 0.2]


def test_progress_keeps_the_lowest_regret_correct_traces():
    assert select_problem(PROBLEM, "progress", keep=1, cutoff=CUTOFF) == [Choice(1)]
    assert select_problem(PROBLEM, "progress", keep=2, cutoff=CUTOFF) == [Choice(1), Choice(3)]
    assert select_problem(PROBLEM, "progress", keep=9, cutoff=CUTOFF) == [Choice(1), Choice(3), Choice(0)]


def test_correct_keeps_every_correct_trace_whole():
    # Plain STaR: no ranking, no cut, keep_per_problem does not apply; the wrong trace is out in both.
    assert select_problem(PROBLEM, "correct", keep=1, cutoff=CUTOFF, truncate=True) == [Choice(0), Choice(1), Choice(3)]


def test_progress_and_correct_differ_on_the_same_traces():
    progress = select_problem(PROBLEM, "progress", keep=1, cutoff=CUTOFF, truncate=True)
    correct = select_problem(PROBLEM, "correct", keep=1, cutoff=CUTOFF, truncate=True)
    assert progress == [Choice(1, cut=1)]
    assert {c.trace for c in correct} == {0, 1, 3} and all(c.cut is None for c in correct)


def test_min_reward_and_unscorable_traces():
    unscored = trace([0, 10, 20], [0.0, None, 1.0])
    half = trace([0, 10], [0.0, 0.5])
    problem = [unscored, half]
    # An unscorable curve cannot be ranked (progress) but a correct trace is still correct (plain STaR).
    assert select_problem(problem, "progress", keep=2, cutoff=CUTOFF) == []
    assert select_problem(problem, "correct", keep=2, cutoff=CUTOFF) == [Choice(0)]
    assert select_problem(problem, "progress", keep=2, cutoff=CUTOFF, min_reward=0.5) == [Choice(1)]
    no_reward = trace([0, 10], [0.0, 1.0], outcome=None)
    no_reward["outcome"] = None
    assert select_problem([no_reward], "correct", keep=1, cutoff=CUTOFF) == []


def test_ties_prefer_fewer_tokens_then_order():
    a = trace([0, 50], [1.0, 1.0], [1.0])
    b = trace([0, 30], [1.0, 1.0], [1.0])
    c = trace([0, 30], [1.0, 1.0], [1.0])
    assert [ch.trace for ch in select_problem([a, b, c], "progress", keep=3, cutoff=CUTOFF)] == [1, 2, 0]


@pytest.mark.parametrize("values, scores, cut", [
    ([0.0, 0.5, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0], 2),  # the FIRST episode where J reaches its maximum
    ([0.0, 0.5, 0.5, 1.0], [0.0, 1.0, 1.0], None),  # the maximum is only reached by the trace itself
    ([1.0, 1.0], [1.0], 0),  # mu answers from the prompt alone as well as the whole trace
    ([0.0, 1.0, 1.0], [0.0, None], None),  # no answer of mu kept at that prefix: nothing to end the cut trace with
    ([0.0, 0.0, 0.0], [0.0, 0.0], None),  # a wrong trace is never cut
])
def test_best_prefix(values, scores, cut):
    tokens = [10 * k for k in range(len(values))]
    assert best_prefix(trace(tokens, values, scores)) == cut


def test_truncate_flag():
    assert select_problem([EARLY], "progress", keep=1, cutoff=CUTOFF, truncate=False) == [Choice(0)]
    assert select_problem([EARLY], "progress", keep=1, cutoff=CUTOFF, truncate=True) == [Choice(0, cut=1)]


def test_bad_arguments():
    with pytest.raises(ValueError, match="selection"):
        select_problem(PROBLEM, "best", keep=1, cutoff=CUTOFF)
    with pytest.raises(ValueError, match="keep"):
        select_problem(PROBLEM, "progress", keep=0, cutoff=CUTOFF)


def test_summary_counts_and_curves():
    chosen = [select_problem(PROBLEM, "progress", keep=1, cutoff=CUTOFF, truncate=True)]
    summary = summarize([PROBLEM], chosen, completion_tokens=[30], cutoff=CUTOFF)
    assert summary["traces_generated"] == 4 and summary["traces_correct"] == 3 and summary["traces_kept"] == 1
    assert summary["traces_cut"] == 1 and summary["problems_kept"] == 1
    assert summary["mean_tokens_generated"] == pytest.approx((100 + 100 + 60 + 40) / 4)
    assert summary["mean_tokens_kept_before_cut"] == 100 and summary["mean_tokens_trained"] == 30
    assert summary["mean_regret_kept"] == pytest.approx(0.1)
    kept = {p["tokens"]: p["J"] for p in summary["j_curve_kept"]}
    dropped = {p["tokens"]: p["J"] for p in summary["j_curve_dropped"]}
    assert kept[0] == 0.0 and kept[100] == 1.0 and kept[25] == 1.0
    assert dropped[0] == pytest.approx(1 / 3)  # SLOW, WRONG, SHORT start at 0, 1, 0


def test_empty_selection_stops_with_the_numbers():
    wrong = [[trace([0, 10], [0.0, 0.0]), trace([0, 10], [1.0, 0.0])], [trace([0, 5], [0.0, 0.0])]]
    chosen = [select_problem(p, "progress", keep=1, cutoff=CUTOFF) for p in wrong]
    summary = summarize(wrong, chosen, [], cutoff=CUTOFF)
    with pytest.raises(NoCorrectTraces, match=r"2 problems scored \(1 skipped: unparsable gold\), 3 traces "
                                              r"generated, 0 correct"):
        check_not_empty(summary, iteration=1, skipped=1)
    check_not_empty(summarize([PROBLEM], [[Choice(1)]], [10], CUTOFF), iteration=1, skipped=0)  # not empty: passes


# ---------------------------------------------------------------- config and recipes

from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse(*argv):
    from trl import TrlParser

    from mrt.star import STaRConfig

    (config,) = TrlParser((STaRConfig,)).parse_args_and_config(args=list(argv))
    return config


def test_cpu_config_with_command_line_overrides():
    config = parse("--config", str(ROOT / "configs" / "mrt_star_smollm2_arithmetic.yaml"), "--selection", "correct",
                   "--num_train_problems", "4")
    assert config.selection == "correct" and config.num_train_problems == 4  # overrides win over the YAML
    assert config.model_name_or_path == "smollm2-135m" and config.use_cpu and config.completion_only_loss
    assert config.num_generations * config.max_completion_length <= 4 * 64


def test_gpu_recipe_has_the_papers_sft_settings():
    config = parse("--config", str(ROOT / "configs" / "mrt_star_gpu.yaml"), "--bf16", "false", "--use_cpu", "true")
    assert config.learning_rate == 1e-6 and config.num_train_epochs == 3 and config.prover_num_samples == 20
    assert config.per_device_train_batch_size * config.gradient_accumulation_steps * 8 == 256


@pytest.mark.parametrize("field, value", [("selection", "best"), ("keep_per_problem", 0), ("num_generations", 0),
                                          ("prover", "mu"), ("max_episodes", 0), ("generation_backend", "tpu"),
                                          ("completion_only_loss", False), ("iterations", 0)])
def test_config_errors_name_the_field(field, value, tmp_path):
    from mrt.star import STaRConfig

    with pytest.raises(ValueError, match=rf"STaRConfig\.{field} = "):
        STaRConfig(output_dir=str(tmp_path), use_cpu=True, **{field: value})
