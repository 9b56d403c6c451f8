import pytest

from mrt import MRTConfig
from mrt.prover import termination_suffix
from mrt.prover.presets import SUFFIX_PRESETS


def config(**kwargs):
    return MRTConfig(output_dir="unused", use_cpu=True, bf16=False, report_to="none", **kwargs)


@pytest.mark.parametrize(
    "field, value",
    [
        ("alpha", -0.5),
        ("alpha", float("nan")),
        ("progress_mode", "sparse"),
        ("max_episodes", 0),
        ("min_paragraphs_between", -1),
        ("episode_fallback", "sentences"),
        ("episode_chunk_tokens", 0),
        ("prover", "oracle"),
        ("prover_estimator", "exact"),
        ("prover_answer_format", "}$"),
        ("prover_num_samples", 0),
        ("prover_max_tokens", 0),
        ("prover_temperature", 0.0),
        ("prover_batch_size", 0),
        ("termination_suffix", ""),
        ("answer_column", ""),
        ("max_prompt_length", 0),
        ("episode_markers", ["Wait", " "]),
    ],
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"MRTConfig.{field} "):
        config(**{field: value})


def test_estimate_progress_false_needs_plain_grpo():
    with pytest.raises(ValueError, match="MRTConfig.estimate_progress"):
        config(alpha=1.0, estimate_progress=False)
    assert not config(alpha=0.0, estimate_progress=False).runs_prover


def test_prover_runs_only_when_it_matters_by_default():
    assert config(alpha=1.0).runs_prover
    assert not config(alpha=0.0).runs_prover
    assert config(alpha=0.0, progress_mode="termination_baseline").runs_prover
    assert config(alpha=0.0, estimate_progress=True).runs_prover


def test_empty_tag_means_no_tag():
    assert config(end_of_thinking_tag="").end_of_thinking_tag is None


def test_suffix_presets_put_the_tag_in_place():
    authors = termination_suffix("authors", "</think>")
    assert authors.startswith("Time is up.") and authors.endswith("</think>")
    boxed = termination_suffix("boxed", None)
    assert boxed.endswith("\\boxed{") and "</think>" not in boxed
    assert termination_suffix("Answer now: ", "</think>") == "Answer now: "
    assert set(SUFFIX_PRESETS) == {"authors", "boxed"}


def test_likelihood_needs_a_suffix_that_ends_at_the_answer_slot():
    with pytest.raises(ValueError, match="MRTConfig.prover_estimator .*answer slot"):
        config(prover_estimator="likelihood", termination_suffix="authors")
    assert config(prover_estimator="likelihood", termination_suffix="boxed").prover_estimator == "likelihood"


def test_normalize_then_sum_is_refused_while_the_prover_runs():
    # J is a weighted sum of rewards; normalize_then_sum has no such sum per sample.
    for settings in (dict(alpha=1.0), dict(alpha=0.0, progress_mode="termination_baseline"),
                     dict(alpha=0.0, estimate_progress=True)):
        with pytest.raises(ValueError, match="MRTConfig.multi_objective_aggregation .*normalize_then_sum"):
            config(multi_objective_aggregation="normalize_then_sum", **settings)
    assert not config(alpha=0.0, multi_objective_aggregation="normalize_then_sum").runs_prover


def test_the_generation_cache_reuse_can_be_switched_off():
    assert config().prover_reuse_generation_cache
    assert not config(prover_reuse_generation_cache=False).prover_reuse_generation_cache
