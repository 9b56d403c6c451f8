"""The reasoning testbed's pure parts: the reasoning-gym loader and reward, the written traces."""

import json
import random
import re
import statistics
from pathlib import Path

import pytest

from mrt.data import COLUMNS, DEFAULT_SPEC, SYSTEM_PROMPT, format_prompt, load_spec, load_task, parse_spec
from mrt.episodes import EpisodeRules, split_completion
from mrt.experiments.testbed.traces import (
    ROUTES,
    TraceOptions,
    sft_rows,
    signed_terms,
    write_trace,
    write_traces,
)
from mrt.rewards.accuracy import last_box
from mrt.rewards.reasoning_gym import reasoning_gym_reward

# A written step: "47 + 38 = 85" (a fixed step goes on: "= 85, not 75.").
_EQUATION = re.compile(r"^(-?\d+) ([+-]) (\d+) = (-?\d+)", re.M)


@pytest.fixture(scope="module")
def problems():
    return load_spec(DEFAULT_SPEC, 300, seed=0)


@pytest.fixture(scope="module")
def expressions(problems):
    return [json.loads(m)["expression"] for m in problems["metadata"]]


def _wrong_equations(text: str) -> int:
    """How many written steps are wrong."""
    steps = _EQUATION.findall(text)
    return sum(int(a) + (int(b) if op == "+" else -int(b)) != int(c) for a, op, b, c in steps)


# ---------------------------------------------------------------- loader


def test_load_task_columns_size_and_gold(problems, expressions):
    assert problems.column_names == list(COLUMNS)
    assert len(problems) == 300
    for row, expression in zip(problems, expressions, strict=True):
        terms = signed_terms(expression)
        assert 3 <= len(terms) <= 4 and all(10 <= abs(t) <= 99 for t in terms)  # the spec's options hold
        assert row["answer"] == str(sum(terms))
        assert row["task"] == "chain_sum"
        assert expression in row["problem"]
        assert row["prompt"] == format_prompt(row["problem"], SYSTEM_PROMPT)


def test_load_task_same_seed_same_problems():
    first = load_task("chain_sum", 20, seed=3, min_terms=3, max_terms=5)
    assert first.to_list() == load_task("chain_sum", 20, seed=3, min_terms=3, max_terms=5).to_list()
    assert first["problem"] != load_task("chain_sum", 20, seed=4, min_terms=3, max_terms=5)["problem"]
    assert load_task("chain_sum", 5, seed=3, system_prompt=None)["prompt"][0] == [
        {"role": "user", "content": first["problem"][0]}]


def test_load_spec_splits_draw_other_problems():
    train = set(load_spec(DEFAULT_SPEC, 50, seed=0)["problem"])
    assert train == set(load_spec(DEFAULT_SPEC, 50, seed=0, split="train")["problem"])
    assert not train & set(load_spec(DEFAULT_SPEC, 50, seed=0, split="test")["problem"])


def test_parse_spec_reads_task_and_typed_options():
    assert parse_spec("reasoning_gym:chain_sum") == ("chain_sum", {})
    task, options = parse_spec("reasoning_gym:chain_sum?min_terms=3&allow_negation=true&max_digits=2")
    assert task == "chain_sum"
    assert options == {"min_terms": 3, "allow_negation": True, "max_digits": 2}
    negated = load_spec("reasoning_gym:chain_sum?allow_negation=true&min_terms=4&max_terms=4", 40, seed=1)
    assert any(t < 0 and i == 0 for m in negated["metadata"]
               for i, t in enumerate(signed_terms(json.loads(m)["expression"])))


@pytest.mark.parametrize("spec, message", [
    ("arithmetic", "not a reasoning-gym spec"),
    ("reasoning_gym:", "has no task"),
    ("reasoning_gym:?min_terms=3", "has no task"),
    ("reasoning_gym:chain_sum?min_terms", "name=value"),
    ("reasoning_gym:chain_sum?min_terms=", "no name or no value"),
    ("reasoning_gym:chain_sum?=3", "no name or no value"),
    ("reasoning_gym:chain_sum?min_terms=3&min_terms=4", "given twice"),
    ("reasoning_gym:chain_summ", "no task 'chain_summ'; did you mean chain_sum"),
    ("reasoning_gym:chain_sum?terms=3", "no option terms; its options: .*min_terms"),
    ("reasoning_gym:chain_sum?seed=3", "'seed' is not an option"),
    ("reasoning_gym:chain_sum?size=3", "'size' is not an option"),
    ("reasoning_gym:chain_sum?min_terms=5&max_terms=2", "rejects options"),
    ("reasoning_gym:chain_sum?min_terms=many", "rejects options"),
])
def test_bad_specs_raise_a_clear_value_error(spec, message):
    with pytest.raises(ValueError, match=message):
        load_spec(spec, 4)


# ---------------------------------------------------------------- reward


def _reward(completions, rows):
    return reasoning_gym_reward([r["prompt"] for r in rows], completions, answer=[r["answer"] for r in rows],
                                task=[r["task"] for r in rows], metadata=[r["metadata"] for r in rows],
                                problem=[r["problem"] for r in rows])


def test_reward_right_wrong_unboxed_unparsable_unclosed(problems):
    row = problems[0]
    gold, off = row["answer"], str(int(row["answer"]) + 1)
    completions = [
        f"Adding up, the sum is \\boxed{{{gold}}}.",  # right
        f"So the sum is \\boxed{{{off}}}.",  # wrong
        f"The sum is {gold}.",  # no box
        "The sum is \\boxed{many}.",  # unparsable
        f"The sum is \\boxed{{{gold}",  # cut inside the box
        f"First \\boxed{{{off}}}, then on second thought \\boxed{{{gold}}}.",  # the last box counts
        f"First \\boxed{{{gold}}}, but then \\boxed{{{off}}}.",
    ]
    assert _reward(completions, [row] * len(completions)) == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def test_reward_reads_conversational_completions_and_skips_missing_gold(problems):
    rows = problems.select(range(2)).to_list()
    conversation = [[{"role": "assistant", "content": f"\\boxed{{{r['answer']}}}"}] for r in rows]
    assert _reward(conversation, rows) == [1.0, 1.0]
    rows[1] = {**rows[1], "answer": None}
    assert _reward(conversation, rows) == [1.0, None]
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        reasoning_gym_reward(None, conversation, answer=["1"], task=["chain_sum"] * 2, metadata=["{}"] * 2)


# ---------------------------------------------------------------- traces


def test_traces_have_check_episodes_under_the_trainers_rule(tokenizer, expressions):
    rules = EpisodeRules()
    for trace in write_traces(expressions[:60], seed=1, options=TraceOptions(min_checks=1, max_checks=3)):
        ids = tokenizer(trace.text, add_special_tokens=False)["input_ids"]
        ends = split_completion(ids, tokenizer, rules)
        assert len(ends) >= 2
        assert len(ends) == min(trace.episodes, rules.max_episodes)
        assert trace.kinds[0] == "attempt" and set(trace.kinds[1:]) <= set(ROUTES)
    # Without checks no paragraph opens with a marker (the paragraph fallback would split attempt and answer).
    markers_only = EpisodeRules(fallback="none")
    for trace in write_traces(expressions[:10], seed=1, options=TraceOptions(min_checks=0, max_checks=0)):
        ids = tokenizer(trace.text, add_special_tokens=False)["input_ids"]
        assert trace.episodes == 1 and len(split_completion(ids, tokenizer, markers_only)) == 1


def test_slips_are_made_and_caught_at_the_configured_rates(expressions):
    options = TraceOptions(slip_rate=0.3, catch_rate=0.6, min_checks=1, max_checks=3)
    traces = write_traces(expressions * 10, seed=2, options=options)  # 3000 traces
    slipped = [t for t in traces if t.slip]
    # Binomial standard deviations are about 0.008 and 0.016: these bounds are 5 of them wide.
    assert abs(len(slipped) / len(traces) - 0.3) < 0.04
    assert abs(sum(t.slip_caught for t in slipped) / len(slipped) - 0.6) < 0.08
    assert all(1 <= t.caught_in < t.episodes for t in slipped if t.slip_caught)
    assert not any(t.slip for t in write_traces(expressions, seed=2, options=TraceOptions(slip_rate=0.0)))
    always = write_traces(expressions, seed=2, options=TraceOptions(slip_rate=1.0, catch_rate=1.0))
    assert all(t.slip and t.slip_caught and t.correct for t in always)
    never = write_traces(expressions, seed=2, options=TraceOptions(slip_rate=1.0, min_checks=0, max_checks=0))
    assert not any(t.slip_caught or t.correct for t in never)


def test_answers_are_right_unless_a_slip_is_left_uncorrected(expressions):
    options = TraceOptions(slip_rate=0.5, catch_rate=0.5, min_checks=0, max_checks=3)
    traces = write_traces(expressions, seed=3, options=options)
    assert {(t.slip, t.slip_caught) for t in traces} == {(False, False), (True, True), (True, False)}
    for trace, expression in zip(traces, expressions, strict=True):
        assert trace.gold == str(sum(signed_terms(expression)))
        assert trace.correct == (not trace.slip or trace.slip_caught) == (trace.answer == trace.gold)
        assert last_box(trace.text)[1] == trace.answer
        attempt = trace.text.split("\n\n")[0]
        # Every written step is right but the slipped one (repeated by the checks that miss it).
        assert (_wrong_equations(attempt) == 1) == trace.slip
        assert (_wrong_equations(trace.text) == 0) == (not trace.slip)
        assert trace.text.count("\n\n") == trace.episodes  # one paragraph per episode, then the answer


def test_traces_are_deterministic_per_seed(expressions):
    first = write_traces(expressions[:50], seed=7)
    assert first == write_traces(expressions[:50], seed=7)
    assert [t.text for t in first] != [t.text for t in write_traces(expressions[:50], seed=8)]


def test_trace_boxes_score_with_the_task_scorer(problems):
    rows = problems.to_list()
    traces = sft_rows(rows, seed=4, options=TraceOptions(slip_rate=0.5))
    scores = _reward([t["completion"] for t in traces], rows)
    assert any(not t["trace_correct"] for t in traces)
    for trace, row, value in zip(traces, rows, scores, strict=True):
        assert trace["answer"] == row["answer"]
        assert (value == 1.0) == trace["trace_correct"]
    assert [t["prompt"] for t in traces] == [r["prompt"] for r in rows]


def test_trace_length_at_the_default_settings(tokenizer, problems):
    rows = sft_rows(problems.to_list(), seed=5)
    texts = [r["completion"][0]["content"] for r in rows]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    fifth, *_, ninety_fifth = statistics.quantiles(lengths, n=20)
    assert 60 <= fifth and ninety_fifth <= 200


@pytest.mark.parametrize("options, field", [
    (dict(slip_rate=1.5), "slip_rate"),
    (dict(catch_rate=-0.1), "catch_rate"),
    (dict(other_route_rate=2), "other_route_rate"),
    (dict(min_checks=-1), "min_checks"),
    (dict(min_checks=3, max_checks=2), "max_checks"),
])
def test_trace_options_are_checked(options, field):
    with pytest.raises(ValueError, match=f"TraceOptions.{field} = "):
        TraceOptions(**options)


@pytest.mark.parametrize("expression", ["47", "47 +", "47 * 3", "47 + x", "", "47 ++ 3"])
def test_signed_terms_rejects_what_is_not_a_chain_sum(expression):
    with pytest.raises(ValueError, match="chain sum"):
        signed_terms(expression)


def test_write_trace_takes_negative_terms():
    options = TraceOptions(slip_rate=0.0, min_checks=2, max_checks=2)
    trace = write_trace("-5 + 12 - -3", random.Random(0), options)
    assert signed_terms("-5 + 12 - -3") == [-5, 12, 3]
    assert trace.answer == "10" and trace.correct and _wrong_equations(trace.text) == 0


def test_load_problems_reads_a_reasoning_gym_name():
    from mrt.data import load_problems

    train = load_problems("reasoning_gym:chain_sum?min_terms=3&max_terms=3&min_digits=2&max_digits=2",
                          num_problems=8, seed=1)
    test = load_problems("reasoning_gym:chain_sum?min_terms=3&max_terms=3&min_digits=2&max_digits=2",
                         split="test", num_problems=8, seed=1)
    assert len(train) == 8 and {"prompt", "answer", "task", "metadata"} <= set(train.column_names)
    assert train[0]["prompt"][-1]["role"] == "user" and train[0]["task"] == "chain_sum"
    assert not set(train["problem"]) & set(test["problem"])
    with pytest.raises(ValueError, match="dataset_config"):
        load_problems("reasoning_gym:chain_sum", num_problems=2, dataset_config="x")


# ---------------------------------------------------------------- warm start


def _tiny_warm_start(tiny_model_path, **overrides):
    from mrt.experiments.testbed.warm_start import WarmStartConfig

    values = {"name": "tiny", "model": tiny_model_path, "num_problems": 8, "max_steps": 2, "batch_size": 4,
              "warmup_steps": 0, "learning_rate": 1e-2, "max_length": 384, "bf16": False}
    return WarmStartConfig(**(values | overrides))


def test_warm_start_trains_once_and_is_reused(tiny_model_path, tmp_path, monkeypatch):
    import torch
    import yaml
    from transformers import AutoModelForCausalLM

    from mrt.experiments.testbed import warm_start as ws

    monkeypatch.setenv("MRT_CACHE_DIR", str(tmp_path / "cache"))
    config = _tiny_warm_start(tiny_model_path)
    folder = ws.warm_start(config)
    assert folder == tmp_path / "cache" / "testbed" / f"tiny-{config.fingerprint()}"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    assert base.keys() == tuned.keys()
    assert any(not torch.equal(base[k], tuned[k].to(base[k].dtype)) for k in base)  # SFT moved the weights
    info = json.loads((folder / "mrt_complete.json").read_text())
    assert info["config"]["max_steps"] == 2 and info["first_loss"] > 0

    # A second call, and a `testbed:` name of the same settings, reuse the folder without training.
    monkeypatch.setattr(ws, "_train", lambda *args: pytest.fail("trained again"))
    assert ws.warm_start(_tiny_warm_start(tiny_model_path)) == folder
    recipe = tmp_path / "warm_start.yaml"
    recipe.write_text(yaml.safe_dump({k: v for k, v in vars(config).items()}))
    assert ws.resolve_testbed(f"testbed:{recipe}") == str(folder)
    from mrt.models import resolve_model

    assert resolve_model(f"testbed:{recipe}") == str(folder)  # what a recipe's model_name_or_path goes through
    # Other settings are another folder.
    assert _tiny_warm_start(tiny_model_path, max_steps=3).folder() != folder


@pytest.mark.parametrize("field, value, owner", [
    ("num_problems", 0, "WarmStartConfig"), ("max_steps", 0, "WarmStartConfig"),
    ("learning_rate", 0.0, "WarmStartConfig"), ("batch_size", 0, "WarmStartConfig"),
    ("warmup_steps", -1, "WarmStartConfig"), ("spec", "arithmetic:1", "WarmStartConfig"),
    ("name", "a/b", "WarmStartConfig"), ("slip_rate", 1.5, "TraceOptions"), ("max_checks", 0, "TraceOptions"),
])
def test_warm_start_config_names_a_bad_field(field, value, owner):
    from mrt.experiments.testbed.warm_start import WarmStartConfig

    values = {"min_checks": 1} if field == "max_checks" else {}
    with pytest.raises(ValueError, match=f"{owner}.{field} = "):
        WarmStartConfig(**values, **{field: value})


def test_warm_start_yaml_and_names_are_checked(tmp_path):
    from mrt.experiments.testbed.warm_start import load_config, resolve_testbed

    path = tmp_path / "w.yaml"
    path.write_text("max_steps: 3\nlearning_rte: 0.1\n")
    with pytest.raises(ValueError, match="learning_rte"):
        load_config(path)
    path.write_text("max_steps: 3\nnum_problems: 16\n")
    assert (load_config(path).max_steps, load_config(path).num_problems) == (3, 16)
    with pytest.raises(ValueError, match="testbed:"):
        resolve_testbed(str(path))


def test_warm_start_rows_are_train_problems_with_written_traces():
    from mrt.experiments.testbed.warm_start import WarmStartConfig, training_rows

    config = WarmStartConfig(num_problems=12, min_checks=1, max_checks=1, slip_rate=0.0)
    rows = training_rows(config)
    test = load_spec(config.spec, 200, seed=0, split="test")
    assert len(rows) == 12 and not {r["prompt"][-1]["content"] for r in rows} & set(test["problem"])
    assert all(r["trace_episodes"] == 2 and r["trace_correct"] for r in rows)
    assert rows == training_rows(config)


# ---------------------------------------------------------------- pilot gates


def _completion(outcome, episodes, forced, tokens=100, finished=True):
    """An evaluation record of one completion, as mrt.evaluation writes it; J measured at tokens 0, 100 and 200 (the
    budgets of `_gates`) is `forced`, the forced accuracy at those budgets."""
    return {"outcome": outcome, "episode_ends": list(range(10, 10 * episodes + 1, 10)), "budget_accuracy": forced,
            "j_tokens": [0, 100, 200], "j_values": forced, "tokens": tokens, "finished": finished}


def _gates(completions, **config):
    from mrt.experiments.testbed.pilot import PilotConfig, gate_values, gates

    pilot = PilotConfig(max_tokens=200, budgets=[0, 100, 200], **config)
    values = gate_values(completions, pilot.budgets)
    return values, {g.name.split(" ")[0]: g.passed for g in gates(values, pilot)}


def test_gates_pass_on_a_model_that_reasons_in_episodes():
    # 10 completions: 3 right (reward 1), one with partial credit (0.5: wrong), 4 with 2+ episodes;
    # forced accuracy 0.1 at budget 0, then 0.2, 0.3.
    completions = [_completion(1.0, 2, [0.0, 1.0, 1.0]), _completion(1.0, 3, [0.0, 0.0, 1.0]),
                   _completion(1.0, 1, [1.0, 1.0, 1.0]), _completion(0.5, 2, [0.0, 0.0, 0.0]),
                   *[_completion(0.0, 1 if k else 2, [0.0, 0.0, 0.0]) for k in range(6)]]
    values, passed = _gates(completions)
    assert values["accuracy"] == pytest.approx(0.3) and values["answer_at_once"] == pytest.approx(0.1)
    assert values["multi_episode"] == pytest.approx(0.4)
    assert [p["accuracy"] for p in values["curve"]] == pytest.approx([0.1, 0.2, 0.3])
    assert [p["accuracy"] for p in values["forced_curve"]] == pytest.approx([0.1, 0.2, 0.3])
    assert passed == {"answer": True, "accuracy": True, "completions": True, "J": True}


def test_each_gate_fails_on_its_own_numbers():
    right_at_once = [_completion(1.0, 2, [1.0, 1.0, 1.0])] * 2 + [_completion(0.0, 2, [0.0, 0.0, 1.0])] * 8
    assert _gates(right_at_once)[1]["answer"] is False  # 0.2 answer at once
    too_good = [_completion(1.0, 2, [0.0, 1.0, 1.0])] * 6 + [_completion(0.0, 2, [0.0, 0.0, 0.0])] * 4
    assert _gates(too_good)[1]["accuracy"] is False  # 0.6 at B
    partial = [_completion(0.9, 2, [0.0, 0.0, 1.0])] * 10  # partial credit is not right
    assert _gates(partial)[1]["accuracy"] is False
    one_episode = [_completion(1.0, 1, [0.0, 1.0, 1.0])] * 3 + [_completion(0.0, 1, [0.0, 0.0, 0.0])] * 7
    assert _gates(one_episode)[1]["completions"] is False
    dipping = ([_completion(1.0, 2, [0.0, 1.0, 1.0])] + [_completion(1.0, 2, [0.0, 1.0, 0.0])] * 2
               + [_completion(0.0, 2, [0.0, 0.0, 0.0])] * 7)  # 0.0, 0.3, 0.1
    assert _gates(dipping)[1]["J"] is False
    # The same dip is within a looser tolerance; a flat curve never rises.
    assert _gates(dipping, rise_tolerance=0.5)[1]["J"] is True
    flat = [_completion(1.0, 2, [1.0, 1.0, 1.0])] + [_completion(0.0, 2, [0.0, 0.0, 0.0])] * 9
    assert _gates(flat, max_answer_at_once=0.5)[1]["J"] is False


def test_pilot_config_checks_budgets_and_thresholds():
    from mrt.experiments.testbed.pilot import PilotConfig

    assert PilotConfig(max_tokens=200).budgets == [0, 50, 100, 150, 200]
    with pytest.raises(ValueError, match="PilotConfig.budgets = "):
        PilotConfig(max_tokens=200, budgets=[50, 200])
    with pytest.raises(ValueError, match="PilotConfig.max_accuracy = "):
        PilotConfig(min_accuracy=0.6, max_accuracy=0.5)
    with pytest.raises(ValueError, match="PilotConfig.models = "):
        PilotConfig(models=["a", "b"])
    with pytest.raises(ValueError, match="EvalConfig.num_samples = "):  # the evaluation's own checks
        PilotConfig(num_samples=0)


def test_pilot_yaml_is_an_evaluation_of_the_testbed_with_the_recipes_rules():
    """The pilot's evaluation settings are EvalConfig's fields (one definition); its YAML sets B and the episode rule
    of the testbed recipes."""
    import yaml

    from mrt.experiments.testbed.pilot import PilotConfig

    root = Path(__file__).resolve().parents[1]
    pilot = PilotConfig(**yaml.safe_load((root / "configs" / "testbed" / "pilot.yaml").read_text()))
    recipe = yaml.safe_load((root / "configs" / "mrt_testbed.yaml").read_text())
    evaluation = pilot.eval_config("folder")
    assert evaluation.models == ["folder"] and evaluation.max_tokens == recipe["max_completion_length"]
    assert evaluation.dataset == recipe["dataset_name"] and evaluation.reward_funcs == recipe["reward_funcs"]
    assert evaluation.max_episodes == recipe.get("max_episodes", 4) and evaluation.split == "test"


def test_run_pilot_writes_the_gates_of_a_model(tiny_model_path, tmp_path):
    from mrt.experiments.testbed.pilot import PilotConfig, run_pilot

    config = PilotConfig(models=[tiny_model_path], max_tokens=8, num_problems=2, num_samples=2, prover_num_samples=1,
                         prover_max_tokens=4, termination_suffix="boxed", backend="transformers",
                         prover_stop=["}"], dataset=DEFAULT_SPEC, reward_funcs=["reasoning_gym_reward"],
                         output_dir=str(tmp_path / "e"), pilot_dir=str(tmp_path / "out"))
    results = run_pilot(config, progress_bar=False)
    written = json.loads((tmp_path / "out" / "pilot.json").read_text())
    assert written["num_completions"] == 4 and len(written["gates"]) == 4
    assert [p["budget"] for p in written["values"]["curve"]] == [0, 2, 4, 6, 8]
    assert written["all_passed"] == results["all_passed"] is False  # a random model answers nothing right
    assert "| answer at once" in (tmp_path / "out" / "pilot.md").read_text()
    assert len((tmp_path / "out" / "records.jsonl").read_text().splitlines()) == 2  # one line a problem


def test_rising_gate_reads_j_at_episode_ends_not_cuts_inside_an_episode():
    from mrt.experiments.testbed.pilot import PilotConfig, gate_values, gates

    # Right after its first episode (token 60), wrong when cut inside the second (forced at 100), right at the end.
    completion = {"outcome": 1.0, "episode_ends": [60, 150], "budget_accuracy": [0.0, 0.0, 1.0], "tokens": 150,
                  "finished": True, "j_tokens": [0, 60, 150], "j_values": [0.0, 1.0, 1.0]}
    pilot = PilotConfig(max_tokens=200, budgets=[0, 100, 200])
    values = gate_values([completion], pilot.budgets)
    assert [p["accuracy"] for p in values["curve"]] == [0.0, 1.0, 1.0]
    assert [p["accuracy"] for p in values["forced_curve"]] == [0.0, 0.0, 1.0]
    assert gates(values, pilot)[3].passed
