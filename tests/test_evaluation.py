"""Evaluation curve math against hand-worked curves, the tables built from records, the config checks, and
problems sampled together in chunks (tiny random model): their records, resuming inside a chunk, the fingerprint;
reward functions with the dataset's columns and partial credit, budget forcing, training's episode and prover
fields."""

import json

import pytest

from mrt.evaluation.run import EvalConfig, efficiency_table, evaluate, load_records, summarize
from mrt.progress import curve_area, curve_value, efficiency_ratios, regret, regret_at, tokens_to_reach

# ---------------------------------------------------------------- area and regret


def test_curve_at_one_from_the_start_has_regret_zero():
    assert regret_at([0], [1.0], 50) == 0.0
    assert regret_at([0, 10, 40], [1.0, 1.0, 1.0], 100) == 0.0


def test_flat_zero_curve_has_regret_one():
    assert regret_at([0, 10, 40], [0.0, 0.0, 0.0], 25) == 1.0
    assert regret_at([5], [0.0], 100) == 1.0


def test_curve_starts_at_origin_and_is_held_after_last_point():
    # (0,0) -> (10,1) linear, then held at 1: area to 20 = 5 + 10 = 15.
    assert curve_area([10], [1.0], 20) == pytest.approx(15.0)
    # Regret reads the step curve (issue 21: one definition): 0 until 10 tokens, then 1: area 10.
    assert regret_at([10], [1.0], 20) == pytest.approx(0.5)
    # A point at 0 tokens replaces the implicit (0, 0).
    assert curve_area([0, 10], [0.5, 0.5], 20) == pytest.approx(10.0)


def test_interpolation_at_a_cutoff_between_points():
    # (0,0) -> (10,0.5) -> (30,1.0); cutoff 20 lies between: J(20) = 0.75.
    assert curve_value([0, 10, 30], [0.0, 0.5, 1.0], 20) == pytest.approx(0.75)
    # area = 10*0.25 (first segment) + 10*(0.5+0.75)/2 = 2.5 + 6.25 = 8.75
    assert curve_area([0, 10, 30], [0.0, 0.5, 1.0], 20) == pytest.approx(8.75)
    assert regret_at([0, 10, 30], [0.0, 0.5, 1.0], 20) == pytest.approx(1 - 5.0 / 20)  # step: 0 * 10 + 0.5 * 10
    # A cutoff before the first point cuts the first segment: (0,0)->(10,1) up to 4: area 4*0.2 = 0.8.
    assert curve_area([10], [1.0], 4) == pytest.approx(0.8)


def test_jump_at_one_token_count():
    # Two points at 10 tokens: the curve jumps there; the value at 10 is the one after the jump.
    assert curve_value([0, 10, 10], [0.0, 0.0, 1.0], 10) == 1.0
    assert curve_area([0, 10, 10], [0.0, 0.0, 1.0], 20) == pytest.approx(10.0)


def test_step_curve_and_the_training_regret_agree():
    # The training metric holds J_{j-1} over episode j: it is the step curve normalised at the last token.
    js, ends = [0.0, 0.5, 1.0, 1.0], [10, 30, 40]
    by_hand = 1 - (0.0 * 10 + 0.5 * 20 + 1.0 * 10) / 40
    assert regret(js, ends) == pytest.approx(by_hand)
    assert curve_area([0, 10, 30], js[:3], 40, step=True) == pytest.approx(20.0)


def test_bad_curves_are_rejected():
    with pytest.raises(ValueError, match="non-decreasing"):
        curve_area([10, 5], [0.0, 1.0], 20)
    with pytest.raises(ValueError, match="as many tokens as values"):
        curve_area([1, 2], [0.0], 20)
    with pytest.raises(ValueError, match="cutoff"):
        regret_at([0], [1.0], 0)


# ---------------------------------------------------------------- token efficiency


def test_tokens_to_reach_interpolates():
    assert tokens_to_reach([0, 10, 30], [0.0, 0.5, 1.0], 0.75) == pytest.approx(20.0)
    assert tokens_to_reach([0, 10], [0.6, 0.6], 0.5) == 0.0
    assert tokens_to_reach([10], [1.0], 0.5) == pytest.approx(5.0)  # from the implicit (0, 0)
    assert tokens_to_reach([0, 10], [0.0, 0.4], 0.5) is None


def test_efficiency_ratios_on_constructed_curves():
    # Model B reaches 0.5 in half the tokens of model A; model C never does.
    a = tokens_to_reach([0, 40], [0.0, 1.0], 0.5)
    b = tokens_to_reach([0, 20], [0.0, 1.0], 0.5)
    c = tokens_to_reach([0, 40], [0.0, 0.25], 0.5)
    assert (a, b, c) == (20.0, 10.0, None)
    assert efficiency_ratios([a, b, c]) == [1.0, 0.5, None]
    assert efficiency_ratios([0.0, 0.0, 5.0]) == [1.0, 1.0, None]
    assert efficiency_ratios([None, 3.0]) == [None, None]


def test_efficiency_table_defaults_to_fractions_of_the_first_models_best():
    per_model = {
        "a": {"accuracy_vs_budget": [{"budget": 0, "accuracy": 0.0}, {"budget": 40, "accuracy": 0.8}]},
        "b": {"accuracy_vs_budget": [{"budget": 0, "accuracy": 0.0}, {"budget": 20, "accuracy": 0.8}]},
    }
    table = efficiency_table(per_model)
    assert [row["target_accuracy"] for row in table] == [0.4, 0.4, 0.6, 0.6, 0.8, 0.8]
    assert [row["tokens"] for row in table[:2]] == [pytest.approx(20.0), pytest.approx(10.0)]
    assert all(row["ratio_to_first"] == pytest.approx(1.0 if row["model"] == "a" else 0.5) for row in table)


# ---------------------------------------------------------------- tables from records


def completion(j_tokens, j_values, budget_accuracy, outcome, tokens, ends, finished=True):
    return {"text": "", "tokens": tokens, "finished": finished, "outcome": outcome, "episode_ends": ends,
            "j_tokens": j_tokens, "j_values": j_values, "budget_accuracy": budget_accuracy}


def test_summarize_hand_worked_records():
    config = EvalConfig(models=["m"], max_tokens=40, budgets=[0, 20, 40], cutoffs=[20, 40])
    records = [{"index": 0, "completions": [
        # J 0 -> 1 after the first episode (10 tokens), finished right at 40 tokens.
        completion([0, 10, 40], [0.0, 1.0, 1.0], [0.0, 1.0, 1.0], 1.0, 40, [10, 40]),
        # Never right, stops at 20 tokens.
        completion([0, 20], [0.0, 0.0], [0.0, 0.0, 0.0], 0.0, 20, [20]),
    ]}]
    s = summarize(records, config)
    assert s["accuracy"] == 0.5 and s["mean_tokens"] == 30 and s["mean_episodes"] == 1.5
    assert [p["accuracy"] for p in s["accuracy_vs_budget"]] == [0.0, 0.5, 0.5]
    # First completion (J step curve): area to 20 = 0 + 10, regret 0.5; to 40: 0 + 30, regret 0.25.
    assert [r["regret"] for r in s["regret"]] == [pytest.approx((0.5 + 1) / 2), pytest.approx((0.25 + 1) / 2)]
    assert s["progress_per_episode"] == [{"episode": 1, "progress": 0.5, "count": 2},
                                         {"episode": 2, "progress": 0.0, "count": 1}]
    j = {p["tokens"]: p["J"] for p in s["j_curve"]}
    assert j[0] == 0.0 and j[5] == 0.0 and j[10] == 0.5 and j[40] == 0.5  # the J last measured (a step curve)


def test_unscorable_completions_are_left_out_of_the_means():
    config = EvalConfig(models=["m"], max_tokens=10, budgets=[0, 10], cutoffs=[10])
    records = [{"index": 0, "completions": [
        completion([0, 10], [1.0, 1.0], [1.0, 1.0], 1.0, 10, [10]),
        completion([0, 10], [None, None], [None, None], None, 10, [10]),
    ]}]
    s = summarize(records, config)
    assert s["unscorable"] == 1 and s["accuracy"] == 1.0 and s["regret"][0]["regret"] == 0.0


# ---------------------------------------------------------------- config and records


def test_config_defaults_and_checks():
    config = EvalConfig(models="m", max_tokens=64)
    assert config.models == ["m"]
    assert config.budgets == [0, 16, 32, 48, 64] and config.cutoffs == config.budgets[1:]
    with pytest.raises(ValueError, match="EvalConfig.budgets"):
        EvalConfig(max_tokens=16, budgets=[0, 32])
    with pytest.raises(ValueError, match="EvalConfig.num_samples"):
        EvalConfig(num_samples=0)
    with pytest.raises(ValueError, match="EvalConfig.backend"):
        EvalConfig(backend="tgi")
    with pytest.raises(ValueError, match="EvalConfig.max_problems_this_run"):
        EvalConfig(max_problems_this_run=-1)  # would never count down to 0: no limit by accident
    # More problems or other cutoffs reuse the records; another sampling setting does not.
    assert EvalConfig(num_problems=8).fingerprint() == EvalConfig(num_problems=16, cutoffs=[5]).fingerprint()
    assert EvalConfig().fingerprint() != EvalConfig(temperature=0.5).fingerprint()
    # Problems sampled together draw other numbers.
    assert EvalConfig().fingerprint() != EvalConfig(problems_per_call=1).fingerprint()
    # So do other splits of a chunk into generate calls.
    assert EvalConfig().fingerprint() != EvalConfig(batch_size=16).fingerprint()


def test_records_with_a_cut_last_line_and_other_settings(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"fingerprint": "f", "index": 0}\n{"fingerprint": "f", "ind')
    assert list(load_records(path, "f")) == [0]
    assert path.read_text() == '{"fingerprint": "f", "index": 0}\n'  # the cut line is gone
    with pytest.raises(ValueError, match="other settings"):
        load_records(path, "g")


def test_yaml_config_with_command_line_overrides(tmp_path):
    from trl import TrlParser

    path = tmp_path / "eval.yaml"
    path.write_text("models: [smollm2-135m, outputs/ckpt]\nnum_samples: 2\nbudgets: [0, 32, 64]\nprover_stop: ['}']\n")
    (config,) = TrlParser((EvalConfig,)).parse_args_and_config(
        args=["--config", str(path), "--num_samples", "3", "--cutoffs", "16", "64"])
    assert config.models == ["smollm2-135m", "outputs/ckpt"] and config.num_samples == 3
    assert config.budgets == [0, 32, 64] and config.cutoffs == [16, 64] and config.prover_stop == ["}"]


def test_docs_show_the_command_and_a_small_plot():
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs"
    page = (docs / "evaluation.md").read_text()
    assert "python scripts/eval_mrt.py --models" in page
    image = page.split("![")[1].split("](")[1].split(")")[0]
    assert (docs / image).is_file() and (docs / image).stat().st_size < 150_000


# ---------------------------------------------------------------- problems sampled together (tiny random model)


def tiny_config(model: str, output_dir, **kwargs) -> EvalConfig:
    """5 problems x 2 samples of 12 tokens, several episodes each, 2 forced answers of 3 tokens per prefix."""
    return EvalConfig(**{"models": [model], "num_problems": 5, "num_samples": 2, "max_tokens": 12,
                         "budgets": [0, 6, 12], "prover_num_samples": 2, "prover_max_tokens": 3, "prover_stop": ["}"],
                         "termination_suffix": "boxed",
                         "backend": "transformers", "episode_chunk_tokens": 4, "seed": 5,
                         "output_dir": str(output_dir), **kwargs})


def written(config: EvalConfig) -> list[dict]:
    from mrt.evaluation.run import records_path

    return [json.loads(line) for line in records_path(config.output_dir, config.models[0]).read_text().splitlines()]


def drawn(record: dict) -> list[tuple]:
    return [(c["text"], c["tokens"], c["episode_ends"], c["j_values"], c["budget_accuracy"])
            for c in record["completions"]]


@pytest.fixture(scope="module")
def uninterrupted_pairs(tiny_model_path, tmp_path_factory):
    """One run of 5 problems in chunks of 2: [0, 1], [2, 3], [4]."""
    config = tiny_config(tiny_model_path, tmp_path_factory.mktemp("pairs"), problems_per_call=2)
    assert evaluate(config, progress_bar=False) is not None
    return written(config)


@pytest.mark.parametrize("separate_mu", [False, True], ids=["mu-is-model", "mu-separate"])
def test_records_are_the_chunked_calls_and_one_per_call_is_the_single_problem_draw(tiny_model_path, tmp_path,
                                                                                   separate_mu):
    from mrt.evaluation.run import evaluate_problems, load_eval_problems, make_setup
    from mrt.generation import make_generator
    from mrt.tokens import prompt_ids

    prover = {"prover_checkpoint": tiny_model_path + "/"} if separate_mu else {}  # mu is a second generator
    by_size = {}
    for size in (1, 2):
        config = tiny_config(tiny_model_path, tmp_path / str(size), problems_per_call=size, **prover)
        evaluate(config, progress_bar=False)
        by_size[size] = written(config)
        assert [r["index"] for r in by_size[size]] == [0, 1, 2, 3, 4]
        assert all(len(r["completions"]) == 2 and r["seconds"] >= 0 for r in by_size[size])

    # The same records by hand: problem i alone with seed 5 * 1_000_003 + 1000 * i (the draws of one problem per
    # call), and the chunks [0, 1], [2, 3], [4] with the seed of their first problem.
    config = tiny_config(tiny_model_path, tmp_path / "x", **prover)
    model = make_generator(tiny_model_path, backend="transformers")
    mu = make_generator(tiny_model_path, backend="transformers") if separate_mu else model
    setup = make_setup(config, model.tokenizer, model.eos)
    problems = [dict(row) for row in load_eval_problems(config)]
    prompts = prompt_ids(model.tokenizer, [p["prompt"] for p in problems])
    alone = [evaluate_problems(config, setup, model, mu, [prompts[i]], [problems[i]], 5 * 1_000_003 + 1000 * i)
             for i in range(5)]
    assert all(len(rows) == 1 for rows in alone)
    assert [r["completions"] for r in by_size[1]] == [rows[0] for rows in alone]
    pairs = [rows for c in (0, 2, 4) for rows in evaluate_problems(
        config, setup, model, mu, prompts[c:c + 2], problems[c:c + 2], 5 * 1_000_003 + 1000 * c)]
    assert [r["completions"] for r in by_size[2]] == pairs
    # Sampled together, the chunk's second problem gets other draws than alone (what the fingerprint keeps apart).
    assert drawn(by_size[2][1]) != drawn(by_size[1][1])
    assert by_size[1][0]["fingerprint"] != by_size[2][0]["fingerprint"]
    for c in by_size[2][0]["completions"]:
        assert c["j_tokens"][0] == 0 and c["j_tokens"][-1] == c["tokens"] <= 12
        assert len(c["j_values"]) == len(c["episode_ends"]) + 1 and len(c["budget_accuracy"]) == 3


def test_run_stopped_inside_a_chunk_resumes_to_the_uninterrupted_draws(tiny_model_path, tmp_path,
                                                                      uninterrupted_pairs):
    config = tiny_config(tiny_model_path, tmp_path, problems_per_call=2, max_problems_this_run=3)
    assert evaluate(config, progress_bar=False) is None
    first = written(config)
    assert [r["index"] for r in first] == [0, 1, 2]  # stopped inside the chunk [2, 3]
    assert len({r["seconds"] for r in first[:2]}) == 1  # a chunk's time, shared by its problems

    config.max_problems_this_run = None
    assert evaluate(config, progress_bar=False) is not None
    resumed = written(config)
    assert [r["index"] for r in resumed] == [0, 1, 2, 3, 4]
    assert resumed[:3] == first  # kept as written, not appended again
    assert resumed[3]["run"] != first[2]["run"]
    # Problem 3 was drawn with its whole chunk again: the numbers of the run that never stopped.
    assert [drawn(r) for r in resumed] == [drawn(r) for r in uninterrupted_pairs]
    assert [r["completions"] for r in resumed] == [r["completions"] for r in uninterrupted_pairs]


def test_other_problems_per_call_is_refused_on_resume(tiny_model_path, tmp_path):
    evaluate(tiny_config(tiny_model_path, tmp_path, problems_per_call=2, max_problems_this_run=1), progress_bar=False)
    with pytest.raises(ValueError, match="other settings"):
        evaluate(tiny_config(tiny_model_path, tmp_path, problems_per_call=3), progress_bar=False)
    with pytest.raises(ValueError, match="EvalConfig.problems_per_call"):
        tiny_config(tiny_model_path, tmp_path, problems_per_call=0)


# ---------------------------------------------------------------- rewards (tiny random model)


REWARD_MODULE = '''
def credit_reward(prompts, completions, completion_ids, credit, **kwargs):
    """Partial credit read from the dataset's own column: every answer of a problem gets its `credit`."""
    assert len(credit) == len(completions) == len(completion_ids) == len(prompts)
    return [float(c) for c in credit]
'''


@pytest.fixture
def credit_problems(tmp_path, monkeypatch):
    """Two problems whose column `credit` (0.5, 1.0) is the reward of every answer; the reward module on sys.path."""
    (tmp_path / "credit_rewards.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "credit.jsonl"
    path.write_text("".join(json.dumps({"problem": f"What is {i} + 1?", "answer": str(i + 1), "credit": c}) + "\n"
                            for i, c in enumerate([0.5, 1.0])))
    return str(path)


@pytest.mark.parametrize("threshold", [1.0, 0.5])
def test_reward_funcs_score_completions_and_mu_with_the_dataset_columns(tiny_model_path, tmp_path, credit_problems,
                                                                        threshold):
    config = tiny_config(tiny_model_path, tmp_path, dataset=credit_problems, split="train", num_problems=2,
                         reward_funcs=["credit_rewards:credit_reward"], correct_threshold=threshold)
    results = evaluate(config, progress_bar=False)
    by_credit = {0.5: [], 1.0: []}
    for record in written(config):
        credit = 0.5 if record["answer"] == "1" else 1.0
        by_credit[credit] += record["completions"]
    for credit, rows in by_credit.items():
        correct = float(credit >= threshold)
        for c in rows:
            assert c["outcome"] == credit and c["correct"] == correct
            assert c["j_values"][0] == credit  # mu's answers get the reward too (J is the mean reward)
            assert c["budget_accuracy"][0] == correct  # the forced answers count as correct at the threshold
    (m,) = results["models"].values()
    assert m["mean_reward"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.5 if threshold == 1.0 else 1.0)
    assert m["accuracy_at_0"] == m["accuracy_vs_budget"][0]["accuracy"] and m["accuracy_vs_budget"][0]["answer_at_once"]


def test_reward_and_threshold_checks():
    with pytest.raises(ValueError, match="EvalConfig.reward_funcs"):
        EvalConfig(reward_funcs=["no_such_reward"])
    with pytest.raises(ValueError, match="EvalConfig.correct_threshold"):
        EvalConfig(correct_threshold=0)
    with pytest.raises(ValueError, match="EvalConfig.forcing_cues"):
        EvalConfig(budget_forcing=True, forcing_cues=[])
    # Records made before these fields existed resume: at their defaults they leave the fingerprint alone.
    assert EvalConfig().fingerprint() != EvalConfig(correct_threshold=0.5).fingerprint()
    assert EvalConfig().fingerprint() != EvalConfig(reward_funcs=["mrt_accuracy"]).fingerprint()
    assert EvalConfig().fingerprint() != EvalConfig(budget_forcing=True).fingerprint()
    assert EvalConfig().fingerprint() == EvalConfig(forcing_cues=["Hmm"]).fingerprint()  # unused without forcing


# ---------------------------------------------------------------- budget forcing (tiny random model)


def test_without_end_cuts_the_thinking_tag_or_the_eos():
    from mrt.evaluation.forcing import without_end

    assert without_end([5, 6, 2, 2], {2}, []) == [5, 6]
    assert without_end([5, 6, 9, 7, 8, 2], {2}, [9, 7]) == [5, 6]  # the tag and the answer after it go
    assert without_end([5, 9, 6], {2}, [9, 7]) == [5, 9, 6]  # no whole tag: nothing cut


class EndsEarly:
    """The tiny model's generator, except that its first sampling call (n > 1) ends every sample after `after`
    tokens, as if it wrote its EOS there: a random model almost never ends by itself (so this stands in for it)."""

    def __init__(self, generator, after: int):
        self.generator, self.after, self.calls = generator, after, []
        self.name, self.tokenizer, self.prover, self.eos = (generator.name, generator.tokenizer, generator.prover,
                                                            generator.eos)

    def generate(self, prompts, n, max_tokens, temperature, stop=None, seed=0):
        from mrt.generation import Sample

        self.calls.append((n, max_tokens))
        out = self.generator.generate(prompts, n, max_tokens, temperature, stop, seed)
        if n == 1:
            return out
        return [[Sample(s.ids[:self.after], self.tokenizer.decode(s.ids[:self.after]), True) for s in group]
                for group in out]

    def close(self):
        self.generator.close()


@pytest.mark.parametrize("forcing", [False, True])
def test_budget_forcing_continues_an_early_end_with_the_cue_up_to_the_budget(tiny_model_path, tmp_path, forcing):
    from mrt.generation import make_generator

    built = []

    def make(model, **kwargs):
        built.append(EndsEarly(make_generator(model, **kwargs), after=3))
        return built[-1]

    config = tiny_config(tiny_model_path, tmp_path, num_problems=2, max_tokens=24, budgets=[0, 12, 24],
                         budget_forcing=forcing, forcing_cues=["Wait", "But wait"], max_episodes=8)
    results = evaluate(config, make_generator=make, progress_bar=False)
    tok = built[0].tokenizer
    cue = tok("\n\nBut wait", add_special_tokens=False)["input_ids"]  # the longer cue
    for record in written(config):
        for c in record["completions"]:
            assert c["first_end"] == 3 and not c["answered"]
            if not forcing:
                assert c["tokens"] == 3 and c["finished"] and c["episodes"] == len(c["episode_ends"])
                continue
            # Continued as a new paragraph that starts with the first cue, then up to the budget (or ended again
            # with no room left for the next cue).
            assert "\n\nWait" in c["text"]
            assert c["tokens"] == 24 or (c["finished"] and c["tokens"] + len(cue) >= 24)
            assert c["episodes"] >= 2 and c["episode_ends"][0] in (3, 3 + 2)  # before or after the blank line
            assert len(c["budget_accuracy"]) == 3
    (m,) = results["models"].values()
    assert m["ended_early"] == 1.0 and m["answered"] == 0.0
    # The first round continues every sample from its 3 tokens and the cue, with the rest of the budget.
    rounds = [max_tokens for n, max_tokens in built[0].calls if n == 1]
    assert rounds[:1] == ([24 - 3 - len(tok("\n\nWait", add_special_tokens=False)["input_ids"])] if forcing else [])


def _ending_early(tiny_model_path):
    """The tiny model's transformers generator with its most frequent greedy token taken as its EOS, so that its
    samples end early (a random model almost never writes its real EOS)."""
    from collections import Counter

    from mrt.generation import make_generator

    gen = make_generator(tiny_model_path, backend="transformers", batch_size=8)
    prompts = [gen.tokenizer(text)["input_ids"] for text in ("What is 2 + 3?", "Compute 7 + 1 + 4 please")]
    counts = Counter(t for group in gen.generate(prompts, 1, 40, 0.0, None, 0) for s in group for t in s.ids)
    gen.eos = gen.prover.eos = {counts.most_common(1)[0][0]}
    return gen, prompts


def test_forcing_in_one_call_gives_the_rounds_samples(tiny_model_path):
    """Greedy, budget forcing from the cache in one `generate` call (`ForcedContinuation`) writes exactly the
    samples that forcing in rounds writes (each round re-reading the sample), with the same first ends."""
    from mrt.evaluation.forcing import cue_ids, first_end, force_budget

    gen, prompts = _ending_early(tiny_model_path)
    cues, budget = ["Wait", "But wait"], 40
    plain = [s for group in gen.generate(prompts, 2, budget, 0.0, None, 0) for s in group]
    rounds = force_budget(gen.generate, gen.tokenizer, [p for p in prompts for _ in range(2)], plain, budget, 0.0,
                          cues, gen.eos, None, 3)
    drawn, ends = gen.generate_forced(prompts, 2, budget, 0.0, cue_ids(gen.tokenizer, cues), 0)
    one_call = [s for group in drawn for s in group]
    assert [(s.ids, s.finished) for s in one_call] == [(s.ids, s.finished) for s in rounds]
    assert [e for group in ends for e in group] == [first_end(s, gen.eos) for s in plain]
    assert any(e is not None for group in ends for e in group)  # something was forced
    assert any("Wait" in s.text for s in one_call)


def test_forcing_in_one_call_samples_up_to_the_budget_without_an_eos(tiny_model_path):
    from mrt.evaluation.forcing import cue_ids

    gen, prompts = _ending_early(tiny_model_path)
    cues = cue_ids(gen.tokenizer, ["Wait", "But wait"])
    drawn, ends = gen.generate_forced(prompts, 3, 30, 1.0, cues, 7)
    again, _ = gen.generate_forced(prompts, 3, 30, 1.0, cues, 7)
    assert [[s.ids for s in g] for g in drawn] == [[s.ids for s in g] for g in again]  # the seed fixes the draws
    longest = max(len(c) for c in cues)
    for group, group_ends in zip(drawn, ends):
        assert len(group) == len(group_ends) == 3
        for s, end in zip(group, group_ends):
            assert not gen.eos & set(s.ids)  # an EOS never stays inside a sample
            assert len(s.ids) == 30 or (s.finished and len(s.ids) + longest >= 30)  # or no room for a cue
            assert end is None or end <= len(s.ids)


# ---------------------------------------------------------------- training's episode and prover fields


def test_episode_and_prover_fields_are_trainings():
    from dataclasses import fields

    from mrt.fields import EpisodeFields, ProverFields
    from mrt.rl.config import MRTConfig

    config = EvalConfig(episode_markers=["Check"], max_episodes=3)
    # A model trained with custom markers is evaluated with them.
    assert config.episode_rules(None).markers == ("Check",) and config.episode_rules(None).max_episodes == 3
    for shared in (*fields(EpisodeFields), *fields(ProverFields)):
        theirs = MRTConfig.__dataclass_fields__[shared.name]
        ours = EvalConfig.__dataclass_fields__[shared.name]
        assert (ours.default, ours.metadata["help"]) == (theirs.default, theirs.metadata["help"]), shared.name
    with pytest.raises(ValueError, match="EvalConfig.prover_temperature"):
        EvalConfig(prover_temperature=0.0)  # training's check: a greedy mu gives one answer m times
    with pytest.raises(ValueError, match="EvalConfig.prover"):
        EvalConfig(prover="other-model")  # a model of mu's own is prover_checkpoint now
    with pytest.raises(ValueError, match="EvalConfig.prover_checkpoint"):
        EvalConfig(prover="server", prover_checkpoint="m")
    with pytest.raises(ValueError, match="EvalConfig.min_paragraphs_between"):
        EvalConfig(min_paragraphs_between=-1)


def test_fingerprint_of_records_made_before_the_training_fields():
    """The hash the records carried before evaluation took training's fields: every field of that time (mu's model
    under the name `prover`), at the values given now."""
    from dataclasses import asdict

    from mrt.records import fingerprint

    old_fields = ("dataset", "split", "problem_column", "answer_column", "system_prompt", "num_samples", "max_tokens",
                  "temperature", "prover_num_samples", "prover_max_tokens", "prover_temperature",
                  "termination_suffix", "prover_stop", "budgets", "max_episodes", "min_paragraphs_between",
                  "episode_fallback", "episode_chunk_tokens", "end_of_thinking_tag", "backend", "dtype",
                  "batch_size", "problems_per_call", "seed")
    for mu in (None, "other/model"):
        config = EvalConfig(prover_checkpoint=mu, prover_max_tokens=8, termination_suffix="boxed", batch_size=16)
        old = {k: v for k, v in asdict(config).items() if k in old_fields}
        assert config.fingerprint() == fingerprint({**old, "prover": mu})
    assert EvalConfig().fingerprint() != EvalConfig(episode_markers=["Check"]).fingerprint()


def test_served_mu_that_is_down_is_a_clear_error(tiny_model_path, tmp_path):
    pytest.importorskip("openai")  # the `server` extra
    from mrt.experiments.vllm_server import free_port
    from mrt.prover import ProverServerError

    url = f"http://127.0.0.1:{free_port()}/v1"
    config = tiny_config(tiny_model_path, tmp_path, prover="server", prover_server_url=url, prover_timeout=5,
                         prover_max_retries=0)
    with pytest.raises(ProverServerError, match="vllm serve MODEL"):
        evaluate(config, progress_bar=False)


def test_reasoning_gym_task_is_scored_by_its_own_scorer_with_its_columns(tiny_model_path, tmp_path):
    pytest.importorskip("reasoning_gym")  # the `reasoning` extra
    config = tiny_config(tiny_model_path, tmp_path, dataset="reasoning_gym:chain_sum", num_problems=2,
                         reward_funcs=["reasoning_gym_reward"])
    results = evaluate(config, progress_bar=False)
    # The reward needs the rows' `task` and `metadata` columns (it raises without them); the random model's
    # completions never box an answer and its forced answers are random text: every reward is 0.
    completions = [c for r in written(config) for c in r["completions"]]
    assert len(completions) == 4 and all(c["outcome"] == 0.0 and not c["answered"] for c in completions)
    assert all(v == 0.0 for c in completions for v in c["j_values"] + c["budget_accuracy"])
    (m,) = results["models"].values()
    assert m["accuracy"] == 0.0 and m["answered"] == 0.0 and m["accuracy_given_answered"] is None
