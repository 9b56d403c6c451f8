"""MRT (STaR): selection on constructed J curves, the cut at the best episode, the empty-selection error, resume of
the generation step, and a one-iteration run on the tiny model."""

import pytest

from mrt.star.select import (
    Choice,
    NoCorrectTraces,
    best_prefix,
    check_not_empty,
    select_problem,
    summarize,
    trace_regret,
)

CUTOFF = 100


def trace(j_tokens, j_values, answer_scores=None, outcome=None):
    """A scored trace: J_H (the last value) is its outcome unless given."""
    return {"tokens": j_tokens[-1], "outcome": j_values[-1] if outcome is None else outcome, "j_tokens": j_tokens,
            "j_values": j_values, "answer_scores": answer_scores or [1.0] * (len(j_values) - 1)}


# One problem. Regret at 100 tokens (J step curves held at J_H after the end):
SLOW = trace([0, 50, 100], [0.0, 0.0, 1.0], [0.0, 0.0])  # 1 - 0/100 = 1.0
EARLY = trace([0, 20, 100], [0.0, 1.0, 1.0], [0.0, 1.0])  # 1 - 80/100 = 0.20; J is at its max after episode 1
WRONG = trace([0, 30, 60], [1.0, 1.0, 0.0])  # mu knows, the trace ends wrong: never kept
SHORT = trace([0, 40], [0.0, 1.0], [0.0])  # 1 - 60/100 = 0.40
PROBLEM = [SLOW, EARLY, WRONG, SHORT]


def test_regret_ranks_progress_per_token():
    assert [round(trace_regret(t, CUTOFF), 6) for t in (SLOW, EARLY, SHORT)] == [1.0, 0.2, 0.4]


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
    # Never cut at j = 0 (issue 21; it was cut there): suffix + answer alone teaches opening with "Time is up".
    ([1.0, 1.0], [1.0], None),  # mu answers from the prompt alone as well as the whole trace: kept whole
    ([1.0, 1.0, 1.0], [1.0, 1.0], 1),  # J_0 is at the maximum: the first prefix after an episode that is
    ([1.0, 0.5, 1.0, 1.0], [1.0, 0.0, 1.0], 2),
    ([0.0, 1.0, 1.0], [0.0, None], None),  # no answer of mu kept at that prefix: nothing to end the cut trace with
    ([0.0, 0.0, 0.0], [0.0, 0.0], None),  # a wrong trace is never cut
])
def test_best_prefix(values, scores, cut):
    tokens = [10 * k for k in range(len(values))]
    assert best_prefix(trace(tokens, values, scores)) == cut


def test_truncate_flag():
    assert select_problem([EARLY], "progress", keep=1, cutoff=CUTOFF, truncate=False) == [Choice(0)]
    assert select_problem([EARLY], "progress", keep=1, cutoff=CUTOFF, truncate=True) == [Choice(0, cut=1)]


# ---------------------------------------------------------------- properties on random J curves

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_J = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])


@st.composite
def random_trace(draw):
    episodes = draw(st.integers(1, 4))
    lengths = sorted(draw(st.lists(st.integers(1, 60), min_size=episodes, max_size=episodes)))
    outcome = draw(st.sampled_from([0.0, 1.0, 1.0, None]))
    values = draw(st.lists(st.one_of(_J, st.none()) if draw(st.booleans()) else _J, min_size=episodes,
                           max_size=episodes))
    scores = draw(st.lists(st.sampled_from([None, 0.0, 1.0]), min_size=episodes, max_size=episodes))
    t = {"tokens": lengths[-1], "outcome": outcome, "j_tokens": [0, *lengths[:-1], lengths[-1]],
         "j_values": [*values, outcome], "answer_scores": scores}
    return t


@settings(max_examples=200, deadline=None)
@given(st.lists(random_trace(), min_size=1, max_size=6), st.integers(1, 4), st.booleans())
def test_selection_properties(traces, keep, truncate):
    correct = select_problem(traces, "correct", keep, CUTOFF, truncate=truncate)
    progress = select_problem(traces, "progress", keep, CUTOFF, truncate=truncate)
    good = [i for i, t in enumerate(traces) if t["outcome"] == 1.0]
    ranked = [i for i in good if None not in traces[i]["j_values"]]
    assert correct == [Choice(i) for i in good]  # plain STaR: every correct trace, whole, in order
    kept = [c.trace for c in progress]
    assert set(kept) <= set(ranked) and len(kept) == min(keep, len(ranked))
    for i in kept:  # nothing left out makes more progress per token than what was kept
        assert all(trace_regret(traces[i], CUTOFF) <= trace_regret(traces[j], CUTOFF) + 1e-12
                   for j in ranked if j not in kept)
    for c in progress:
        if c.cut is None:
            continue
        values = traces[c.trace]["j_values"]
        assert truncate and 1 <= c.cut < len(values) - 1 and values[c.cut] == max(values) > 0
        assert all(v < max(values) for v in values[1:c.cut]) and traces[c.trace]["answer_scores"][c.cut] > 0


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
    assert summary["mean_regret_kept"] == pytest.approx(0.2)
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

    from mrt.star.run import STaRConfig

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
                                          ("completion_only_loss", False), ("iterations", 0),
                                          # the fields shared with MRTConfig (mrt.fields) name STaRConfig too
                                          ("min_paragraphs_between", -1), ("episode_fallback", "sentences"),
                                          ("prover_temperature", 0.0), ("prover_model", " ")])
def test_config_errors_name_the_field(field, value, tmp_path):
    from mrt.star.run import STaRConfig

    with pytest.raises(ValueError, match=rf"STaRConfig\.{field} = "):
        STaRConfig(output_dir=str(tmp_path), use_cpu=True, **{field: value})


# ---------------------------------------------------------------- the cut trace, on a real tokenizer


def test_a_trace_cut_at_the_token_limit_is_scored_as_cut(tokenizer):
    # Issue 20: the default reward reads a trace's ids as GRPOTrainer's (ending in EOS when the model ended it).
    from mrt.rewards.accuracy import make_accuracy_reward
    from mrt.star.run import _with_eos
    from mrt.tokens import eos_ids

    reward = make_accuracy_reward("answer", eos_ids(tokenizer))
    text = "4 + 8 = 12, and then add them together: 12"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    for finished, expected in ((False, 0.0), (True, 1.0)):
        generated = _with_eos(ids, finished, tokenizer.eos_token_id)
        assert reward(prompts=["q"], completions=[text], completion_ids=[generated], answer=["12"]) == [expected]


def test_cut_trace_is_prefix_suffix_and_mus_answer(tokenizer):
    from mrt.prover import make_suffix, prover_prompt
    from mrt.star.run import training_completion

    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt = encode("What is 2 + 3?")
    trace_ids = encode("2 + 3 = 5.\n\nWait, let me check: 5.") + [tokenizer.eos_token_id]
    first = len(encode("2 + 3 = 5."))
    suffix = make_suffix(tokenizer, "boxed", None)
    scored = {"j_tokens": [0, first, len(trace_ids)], "answers": [encode("4}"), encode("5}")]}

    cut = training_completion(prompt, trace_ids, scored, 1, suffix, tokenizer)
    joined, text = prover_prompt(prompt, trace_ids[:first], suffix, tokenizer)
    assert cut == joined[len(prompt):] + encode("5}") + [tokenizer.eos_token_id]
    assert tokenizer.decode(cut, skip_special_tokens=True) == text + "5}"
    assert text == "2 + 3 = 5.\n\n" + suffix.text  # the one joining rule: prefix, blank line, suffix

    whole = training_completion(prompt, trace_ids, scored, None, suffix, tokenizer)
    assert whole == trace_ids  # the trace, with exactly one EOS at the end
    from_prompt = training_completion(prompt, trace_ids, scored, 0, suffix, tokenizer)
    assert tokenizer.decode(from_prompt, skip_special_tokens=True) == suffix.text + "4}"


# ---------------------------------------------------------------- generation: records on disk, resume


def small_config(tmp_path, model, **overrides):
    from mrt.star.run import STaRConfig

    settings = dict(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", seed=5,
                    model_name_or_path=model, num_train_problems=5, num_generations=2, max_completion_length=8,
                    problems_per_batch=2, generation_backend="transformers", prover_num_samples=2,
                    prover_max_tokens=3, termination_suffix="boxed", prover_stop=["}"], learning_rate=1e-3,
                    num_train_epochs=1, per_device_train_batch_size=4, save_strategy="no",
                    gradient_checkpointing=False, logging_steps=1)
    return STaRConfig(**{**settings, **overrides})


def test_generation_resumes_after_a_kill(tiny_model_path, tmp_path):
    from mrt.generation import make_generator
    from mrt.star.run import generate_traces, load_star_problems

    config = small_config(tmp_path, tiny_model_path)
    problems = load_star_problems(config)
    fingerprint = config.fingerprint(tiny_model_path, 1, "traces")
    generator = make_generator(tiny_model_path, backend="transformers")
    full = generate_traces(config, generator, problems, tmp_path / "full", fingerprint, seed=7, progress_bar=False)
    assert sorted(full) == [0, 1, 2, 3, 4] and all(len(r["traces"]) == 2 for r in full.values())

    folder = tmp_path / "killed"
    part = generate_traces(config, generator, problems, folder, fingerprint, seed=7, progress_bar=False,
                           stop_after=3)  # stopped in the middle of the second batch (problems 2 and 3)
    assert sorted(part) == [0, 1, 2]
    path = folder / "traces-rank0.jsonl"
    written = path.read_text()
    path.write_text(written + '{"fingerprint": "' + fingerprint + '", "index": 3, "tra')  # killed mid-line
    resumed = generate_traces(config, generator, problems, folder, fingerprint, seed=7, progress_bar=False)
    assert resumed == full  # the same traces as a run that never stopped (batch 2 regenerated with its seed)
    assert path.read_text().startswith(written) and path.read_text().count("\n") == 5  # the 3 records kept as they were

    other = small_config(tmp_path, tiny_model_path, num_generations=3).fingerprint(tiny_model_path, 1, "traces")
    with pytest.raises(ValueError, match="other settings"):
        generate_traces(config, generator, problems, folder, other, seed=7, progress_bar=False)


# ---------------------------------------------------------------- one iteration on the tiny model


def always_right(prompts, completions, **kwargs):
    """A reward under which every trace and every answer of mu is right: J = 1 from the prompt on."""
    return [1.0] * len(completions)


def test_one_iteration_cuts_trains_and_saves(tiny_model_path, tmp_path):
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from mrt.star.run import DONE, run

    config = small_config(tmp_path, tiny_model_path, keep_per_problem=1, episode_chunk_tokens=4)
    (summary,) = run(config, reward_funcs=[always_right], progress_bar=False)
    out = Path(config.output_dir)
    assert summary["traces_generated"] == 10 and summary["traces_correct"] == 10 and summary["traces_kept"] == 5
    selected = [json.loads(line) for line in (out / "iter-1" / "selected.jsonl").read_text().splitlines()]
    assert len(selected) == 5 and {s["index"] for s in selected} == {0, 1, 2, 3, 4}
    # J = 1 from the prompt on: the best place to stop is after the first episode, never right after the prompt
    # (changed with issue 21: a trace cut at j = 0, suffix + answer alone, was kept and opened with "Time is up.").
    for s in selected:
        assert s["cut_after_episode"] in (None, 1) and s["j_values"][0] == 1.0
        assert not s["completion"].startswith("Time is up.") and s["completion"].endswith("<|im_end|>")
    assert summary["traces_cut"] == sum(s["cut_after_episode"] == 1 for s in selected) >= 1
    assert json.loads((out / "iter-1" / "summary.json").read_text())["seconds_train"] > 0

    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    trained = AutoModelForCausalLM.from_pretrained(out)  # a normal model folder
    changed = [not torch.equal(a, b) for a, b in zip(base.parameters(), trained.parameters())]
    assert any(changed), "SFT did not change the weights"

    # A finished iteration is not run again.
    stamp = (out / DONE).stat().st_mtime
    (again,) = run(config, reward_funcs=[always_right], progress_bar=False)
    assert again["traces_kept"] == 5 and (out / DONE).stat().st_mtime == stamp

    # Plain STaR on the same records: nothing is generated or scored again, every correct trace is kept whole.
    import shutil

    star = tmp_path / "star"
    (star / "iter-1").mkdir(parents=True)
    for path in (out / "iter-1").glob("*-rank*.jsonl"):
        shutil.copy(path, star / "iter-1" / path.name)
    before = {p.name: p.read_text() for p in (star / "iter-1").glob("*.jsonl")}
    plain = small_config(tmp_path, tiny_model_path, selection="correct", output_dir=str(star), episode_chunk_tokens=4)
    (baseline,) = run(plain, reward_funcs=[always_right], progress_bar=False)
    assert baseline["traces_kept"] == 10 and baseline["traces_cut"] == 0
    assert {name: (star / "iter-1" / name).read_text() for name in before} == before


def test_two_iterations_start_from_the_trained_model(tiny_model_path, tmp_path):
    import json

    from mrt.star.run import DONE, run

    config = small_config(tmp_path, tiny_model_path, iterations=2, num_train_problems=2)
    first, second = run(config, reward_funcs=[always_right], progress_bar=False)
    out = Path(config.output_dir)
    assert (out / "iter-1" / "model" / DONE).exists() and (out / DONE).exists()
    assert first["model"] == tiny_model_path and second["model"] == str(out / "iter-1" / "model")
    assert json.loads((out / DONE).read_text())["from_model"] == str(out / "iter-1" / "model")
    # Iteration 2 generated traces of its own (from the new model, with its own seeds).
    traces = [(out / f"iter-{k}" / "traces-rank0.jsonl").read_text() for k in (1, 2)]
    assert traces[0] != traces[1]


def test_a_server_mu_is_built_from_the_configs_prover_fields(tiny_model_path, tmp_path):
    # STaR builds its frozen mu the one way the trainer does (ServerProver.from_fields); nothing listens here, so
    # the client fails fast, naming the config's URL, retries and model.
    import socket

    pytest.importorskip("openai")
    from mrt.generation import make_generator
    from mrt.prover.server import ProverServerError
    from mrt.star.run import make_mu

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = small_config(tmp_path, tiny_model_path, prover="server", prover_server_url=f"http://127.0.0.1:{port}/v1",
                          prover_model="my-mu", prover_timeout=5, prover_max_retries=0)
    generator = make_generator(tiny_model_path, backend="transformers")
    with pytest.raises(ProverServerError, match=f"at http://127.0.0.1:{port}/v1 .*after 0 retries.*vllm serve my-mu"):
        make_mu(config, generator)
    generator.close()


def test_no_correct_trace_stops_before_training(tiny_model_path, tmp_path):
    import json

    from mrt.star.run import DONE, load_star_problems, run

    data = tmp_path / "problems.jsonl"
    rows = [{"problem": "What is 2 + 2?", "answer": "4"}, {"problem": "What is half?", "answer": "\\frac{1}{"},
            {"problem": "What is 3 + 3?", "answer": "6"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = small_config(tmp_path, tiny_model_path, dataset_name=str(data), num_train_problems=None)
    problems = load_star_problems(config)
    assert problems.usable == [0, 2] and problems.skipped == [1]  # a gold that does not parse
    with pytest.raises(NoCorrectTraces, match=r"2 problems scored \(1 skipped: unparsable gold\), 4 traces generated, "
                                              r"0 correct"):
        run(config, progress_bar=False)  # a random model never answers right
    out = Path(config.output_dir)
    summary = json.loads((out / "iter-1" / "summary.json").read_text())
    assert summary["problems_skipped_unparsable_gold"] == 1 and summary["traces_kept"] == 0
    assert not (out / DONE).exists() and not (out / "model.safetensors").exists()  # nothing trained


def test_script_trains_and_eval_mrt_loads_the_model(tiny_model_path, tmp_path):
    """The shipped CPU config, shrunk to the tiny model, through the script; then scripts/eval_mrt.py on its output."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "star"
    shrink = ["--model_name_or_path", tiny_model_path, "--num_train_problems", "2", "--max_completion_length", "8",
              "--num_generations", "2", "--prover_num_samples", "2", "--prover_max_tokens", "3",
              "--generation_backend", "transformers", "--output_dir", str(out)]
    base = [sys.executable, str(ROOT / "scripts" / "train_mrt_star.py"), "--config",
            str(ROOT / "configs" / "mrt_star_smollm2_arithmetic.yaml"), *shrink]
    empty = subprocess.run(base, env=env, capture_output=True, text=True, timeout=600)
    assert empty.returncode == 2 and "no trace to train on" in empty.stderr  # the random model is never right
    result = subprocess.run(base + ["--min_reward", "0"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "4 traces generated" in result.stdout and (out / "model.safetensors").exists()

    evaluation = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "eval_mrt.py"), "--models", str(out), "--num_problems", "1",
         "--num_samples", "2", "--max_tokens", "8", "--prover_num_samples", "2", "--prover_max_tokens", "3",
         "--backend", "transformers", "--output_dir", str(tmp_path / "eval")],
        env=env, capture_output=True, text=True, timeout=600)
    assert evaluation.returncode == 0, evaluation.stderr[-4000:]
    (model,) = json.loads((tmp_path / "eval" / "results.json").read_text())["models"].values()
    assert model["model"] == str(out) and model["num_completions"] == 2


def test_two_zero3_ranks_share_the_problems(tiny_model_path, tmp_path):
    """`accelerate launch` with 2 DeepSpeed ZeRO-3 CPU ranks: each rank generates and scores its own batches on a
    whole copy of the model, both select the same data, SFT runs sharded and saves one gathered model folder."""
    import os
    import subprocess
    import sys

    import torch
    from transformers import AutoModelForCausalLM

    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        pytest.skip("accelerate CLI not installed beside this python")
    out = tmp_path / "star"
    command = [str(accelerate), "launch", "--config_file",
               str(ROOT / "configs" / "accelerate" / "zero3_cpu_2proc.yaml"),
               str(ROOT / "scripts" / "train_mrt_star.py"), "--config",
               str(ROOT / "configs" / "mrt_star_smollm2_arithmetic.yaml"), "--model_name_or_path", tiny_model_path,
               "--num_train_problems", "6", "--problems_per_batch", "2", "--max_completion_length", "8",
               "--num_generations", "2", "--prover_num_samples", "2", "--prover_max_tokens", "3",
               "--generation_backend", "transformers", "--min_reward", "0", "--learning_rate", "1e-3",
               "--per_device_train_batch_size", "2", "--output_dir", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = lambda name: (out / "iter-1" / name).read_text().count("\n")  # noqa: E731
    # Batches 0 and 2 on rank 0, batch 1 on rank 1; every problem scored once; one selection.
    assert (lines("traces-rank0.jsonl"), lines("traces-rank1.jsonl")) == (4, 2)
    assert (lines("scores-rank0.jsonl"), lines("scores-rank1.jsonl")) == (4, 2)
    assert lines("selected.jsonl") == 6 and result.stdout.count("traces generated") == 1
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    trained = AutoModelForCausalLM.from_pretrained(out)
    assert any(not torch.equal(a, b) for a, b in zip(base.parameters(), trained.parameters()))
