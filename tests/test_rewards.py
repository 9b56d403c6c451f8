"""The math-verify 0/1 reward: answers, golds, last-answer-wins, TRL signature, time bounds."""

import signal
import sys
import threading
import time
import types

import pytest

from mrt.rewards import accuracy as rewards
from mrt.rewards.accuracy import (
    PROVER_PREFIX,
    PROVER_SUFFIX,
    accuracy_reward,
    make_accuracy_reward,
    parse_answer,
    parse_gold,
    score,
    score_forced,
)

# ---------------------------------------------------------------- correctness


def test_correct_incorrect_and_missing_answer():
    assert score("7 + 5 = 12, so the answer is \\boxed{12}.", "12") == 1.0
    assert score("7 + 5 = 13, so the answer is \\boxed{13}.", "12") == 0.0
    assert score("I do not know.", "12") == 0.0
    assert score("", "12") == 0.0


@pytest.mark.parametrize("gold", ["12", 12, 12.0, "3/4", "\\frac{1}{2}", "$x=2$", "0.5", "-3", "\\sqrt{2}"])
def test_parse_gold_accepts_common_forms(gold):
    assert parse_gold(gold) is not None


@pytest.mark.parametrize("gold", ["???", "", "   ", None])
def test_unparsable_gold_is_unscorable(gold):
    assert parse_gold(gold) is None
    assert score("\\boxed{12}", gold) is None
    assert score_forced("\\boxed{12}", gold) is None


@pytest.mark.parametrize(
    ("text", "gold"),
    [
        ("\\boxed{0.5}", "\\frac{1}{2}"),
        ("\\boxed{\\frac{1}{2}}", 0.5),
        ("\\boxed{\\dfrac{3}{4}}", "0.75"),
        ("\\boxed{12}", "\\boxed{12}"),
        ("So the total is 12", "\\boxed{12}"),
        ("\\boxed{12}", 12),
        ("\\boxed{2}", "$x=2$"),
        ("\\boxed{1,000}", "1000"),
    ],
)
def test_equivalent_forms_match(text, gold):
    assert score(text, gold) == 1.0


def test_last_boxed_answer_wins():
    # math-verify alone merges two boxes into the set {3, 7}; only the last box counts here.
    text = "First \\boxed{3}. Wait, that is wrong: \\boxed{7}"
    assert score(text, "7") == 1.0
    assert score(text, "3") == 0.0
    assert score("The final answer is 5. Hmm, no: \\boxed{7}", "7") == 1.0
    assert score("The final answer is 5. Hmm, no: \\boxed{7}", "5") == 0.0


def test_without_a_box_the_final_number_counts():
    assert score("First I got 3, then after checking I get 8", "8") == 1.0
    assert score("First I got 3, then after checking I get 8", "3") == 0.0
    assert parse_answer("no numbers here") == []


def test_box_with_braces_inside_is_read_whole():
    assert score("\\boxed{\\frac{1}{2}}", "1/2") == 1.0
    assert score("\\boxed{\\{1, 2\\}}", "\\{1,2\\}") == 1.0


# ---------------------------------------------------------------- prover continuations


def test_forced_answer_fills_an_open_box():
    assert score_forced("\\boxed{12}", "12") == 1.0
    assert score_forced("\\boxed{13}", "12") == 0.0
    assert score_forced("\\boxed{12", "12") == 0.0  # cut at the token limit inside the box: no answer
    assert score_forced("\\boxed{}", "12") == 0.0  # an empty box


def test_forced_answer_is_read_from_mu_s_text_only():
    assert score_forced("The answer is \\boxed{6}.", "6") == 1.0
    assert score_forced("So it is 6.", "6") == 1.0  # a bare answer of mu's own counts
    assert score_forced("", "5") == 0.0
    assert score_forced("\n\nTo solve this problem, we", "12") == 0.0


def test_accuracy_reward_grades_a_prover_sample_by_the_forced_answer_rule():
    # Changed with issue 21: a prover sample is mu's text as the completion, with the prefix and suffix in kwargs of
    # their own (the old `forced_answer` kwarg is gone). The prefix's answer never counts.
    reward = make_accuracy_reward("answer")
    prover = {PROVER_PREFIX: ["That gives 12."], PROVER_SUFFIX: ["\n\nTime is up.\n\n"]}
    assert reward(prompts=["q"], completions=["To solve this problem, we"], answer=["12"], **prover) == [0.0]
    assert reward(prompts=["q"], completions=["So it is 12."], answer=["12"], **prover) == [1.0]
    assert reward(prompts=["q"], completions=["\\boxed{12"], answer=["12"], **prover) == [0.0]  # unclosed box
    assert reward(prompts=["q"], completions=["\\boxed{12"], answer=["12"]) == [1.0]  # a finished policy completion


# ---------------------------------------------------------------- what counts as an answer (issue 20)

EOS = 2


@pytest.mark.parametrize("text, finished, expected", [
    ("To add 4 and 8: 4 + 8 = 12, and then add them together: 12 +", False, 0.0),  # cut at the token limit
    ("So the total is 12", False, 0.0),  # cut: a final number is not an answer yet
    ("So the total is 12", True, 1.0),  # finished: the final number is the answer
    ("So the answer is \\boxed{12}, and to check it", False, 1.0),  # cut after a closed box
    ("So \\boxed{12}. Hmm, no: \\boxed{1", False, 0.0),  # cut inside the last box
    ("So the answer is \\boxed{12}", True, 1.0),
])
def test_a_completion_cut_at_the_token_limit_counts_only_a_closed_box(text, finished, expected):
    reward = make_accuracy_reward("answer", eos_token_ids=[EOS])
    ids = [5, 6, 7] + ([EOS] if finished else [])
    assert reward(prompts=["q"], completions=[text], completion_ids=[ids], answer=["12"]) == [expected]
    assert score(text, "12", finished=finished) == expected


def test_without_eos_ids_every_completion_counts_as_finished():
    reward = make_accuracy_reward("answer")
    assert reward(prompts=["q"], completions=["So the total is 12"], completion_ids=[[5, 6]], answer=["12"]) == [1.0]


@pytest.mark.parametrize("given", [False, True])
def test_the_trainer_s_accuracy_reward_knows_a_cut_completion(tiny_model_path, tmp_path, given):
    # The default reward, and MRT's accuracy reward given without EOS ids (e.g. `--reward_funcs mrt_accuracy`).
    from mrt import MRTConfig, MRTTrainer
    from mrt.data import arithmetic_dataset

    args = MRTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", num_generations=2,
                     per_device_train_batch_size=2, max_completion_length=8)
    trainer = MRTTrainer(model=tiny_model_path, args=args, train_dataset=arithmetic_dataset(4, seed=0),
                         reward_funcs=[make_accuracy_reward("answer")] if given else None)
    reward = trainer.reward_funcs[0]
    text = ["4 + 8 = 12, and then add them together: 12"]
    assert reward(prompts=["q"], completions=text, completion_ids=[[5, 6]], answer=["12"]) == [0.0]
    assert reward(prompts=["q"], completions=text, completion_ids=[[5, trainer.eos_token_ids[-1]]],
                  answer=["12"]) == [1.0]


# ---------------------------------------------------------------- TRL reward function


def test_reward_function_signature_and_name():
    reward = make_accuracy_reward("solution")
    assert reward.__name__ == "accuracy"
    assert accuracy_reward.__name__ == "accuracy"
    out = reward(
        prompts=["p1", "p2", "p3"],
        completions=["\\boxed{12}", "\\boxed{3}", "\\boxed{1}"],
        completion_ids=[[1], [2], [3]],
        solution=["12", "4", "???"],
        problem=["a", "b", "c"],
    )
    assert out == [1.0, 0.0, None]


def test_reward_function_reads_conversational_completions():
    completions = [
        [{"role": "assistant", "content": "7 + 5 = \\boxed{12}"}],
        [{"role": "assistant", "content": "\\boxed{11}"}],
        [{"role": "assistant", "content": [{"type": "text", "text": "\\boxed{12}"}]}],
    ]
    prompts = [[{"role": "user", "content": "What is 7 + 5?"}]] * 3
    rewards_out = accuracy_reward(prompts=prompts, completions=completions, answer=["12", "12", "12"])
    assert rewards_out == [1.0, 0.0, 1.0]


def test_reward_function_missing_column_names_it_and_the_available_ones():
    reward = make_accuracy_reward("solution")
    with pytest.raises(KeyError) as error:
        reward(prompts=["p"], completions=["\\boxed{1}"], answer=["1"], problem=["p"])
    message = str(error.value)
    assert "solution" in message and "answer" in message and "problem" in message


# ---------------------------------------------------------------- time bounds

ADVERSARIAL = {
    "power chain": ("\\boxed{" + "9^" * 5000 + "9}", "12"),
    "nested parens": ("\\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}", "1"),
    "200k characters": ("Let me think. 1 + 1 = 2. " * 8000, "12"),
    "power tower": ("\\boxed{9^{9^{9}}}", "12"),  # exact value has 1.2e9 bits: verify never returns
    "huge factorial": ("\\boxed{(10^{10})!}", "12"),
    "slow nested parse": ("$" + "(" * 40 + "1" + ")" * 40 + "$", "2"),  # no box: runs into the deadline
    "slow expansion": ("\\boxed{(1+x)^{1000000}}", "12"),  # runs into the deadline
}


def _in_thread(fn, *args):
    result = {}

    def run():
        start = time.monotonic()
        result["value"] = fn(*args)
        result["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "scoring hung in a worker thread"
    return result["value"], result["seconds"]


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_inputs_are_bounded_in_main_and_worker_threads(name, monkeypatch):
    monkeypatch.setattr(rewards, "TIMEOUT_SECONDS", 1.0)
    text, gold = ADVERSARIAL[name]
    start = time.monotonic()
    main_value = score(text, gold)
    main_seconds = time.monotonic() - start
    thread_value, thread_seconds = _in_thread(score, text, gold)
    assert main_value == 0.0 and thread_value == 0.0
    # A bound, not a speed target: a hang would take minutes; an interrupt lands between Python steps.
    assert main_seconds < 10.0 and thread_seconds < 10.0, (main_seconds, thread_seconds)


def test_long_completion_still_scores_its_final_answer():
    text = "Let me think. 1 + 1 = 2. " * 8000 + "So the answer is \\boxed{12}."
    assert len(text) > 200_000
    start = time.monotonic()
    assert score(text, "12") == 1.0
    assert _in_thread(score, text, "12")[0] == 1.0
    assert time.monotonic() - start < 3.0


def test_huge_values_are_unparsable_but_moderate_powers_score():
    assert parse_answer("\\boxed{9^{9^{9}}}") == []
    assert parse_answer("\\boxed{" + "9" * 5 + "}") != []
    assert score("\\boxed{2^{10}}", "1024") == 1.0
    assert score("\\boxed{10!}", "3628800") == 1.0


def test_worker_thread_keeps_running_cleanly_after_a_timeout(monkeypatch):
    monkeypatch.setattr(rewards, "TIMEOUT_SECONDS", 0.5)
    text, gold = ADVERSARIAL["slow expansion"]

    def timed_out_then_busy():
        value = score(text, gold)
        total = 0
        end = time.monotonic() + 0.3  # a stray late interrupt would land in this loop
        while time.monotonic() < end:
            total += 1
        return value, score("\\boxed{12}", "12")

    (value, after), _ = _in_thread(timed_out_then_busy)
    assert value == 0.0 and after == 1.0


def test_a_callers_alarm_handler_and_pending_timer_are_left_alone(monkeypatch):
    monkeypatch.setattr(rewards, "TIMEOUT_SECONDS", 0.5)

    def handler(signum, frame):
        raise AssertionError("the caller's alarm must not fire during this test")

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 100.0)
        assert score(*ADVERSARIAL["slow expansion"]) == 0.0  # runs into its own deadline
        assert score("\\boxed{12}", "12") == 1.0
        assert signal.getsignal(signal.SIGALRM) is handler
        assert 95.0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 100.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _stubborn(swallowed):
    """Busy for 20 s; swallows the first interrupt, as a finalizer that it lands in would ("Exception ignored")."""
    end = time.monotonic() + 20.0
    while time.monotonic() < end:
        try:
            while time.monotonic() < end:
                pass
        except BaseException as interrupt:
            if swallowed:
                raise
            swallowed.append(interrupt)
    return "ran to the end"


@pytest.mark.parametrize("where", ["main thread", "worker thread"])
def test_a_swallowed_deadline_is_raised_again(where, monkeypatch):
    # In CI a one-shot main-thread alarm was lost this way and "slow expansion" grew until the OOM killer came.
    monkeypatch.setattr(rewards, "TIMEOUT_SECONDS", 0.3)
    swallowed = []
    start = time.monotonic()
    if where == "main thread":
        value = rewards._bounded(_stubborn, "timed out", swallowed)
    else:
        value, _ = _in_thread(rewards._bounded, _stubborn, "timed out", swallowed)
    assert value == "timed out" and len(swallowed) == 1
    assert time.monotonic() - start < 5.0


def _busy(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


class _SlowFinalizer:
    """Busy in its finalizer, where an interrupt is swallowed and reported as unraisable (as in a gc callback: a
    test once failed when the next interrupt landed in pytest's report hook), until 3 interrupts were swallowed."""

    swallowed = 0

    def __del__(self):
        if _SlowFinalizer.swallowed >= 3:
            return
        finished = False
        try:
            _busy(0.01)
            finished = True
        finally:
            _SlowFinalizer.swallowed += not finished


def _finalizing(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        _SlowFinalizer()
    return "ran to the end"


@pytest.mark.parametrize("where", ["main thread", "worker thread"])
def test_deadlines_swallowed_by_finalizers_never_reach_the_unraisable_hook(where, monkeypatch):
    reports = []
    monkeypatch.setattr(sys, "unraisablehook", reports.append)
    monkeypatch.setattr(_SlowFinalizer, "swallowed", 0)
    monkeypatch.setattr(rewards, "TIMEOUT_SECONDS", 0.2)
    if where == "main thread":
        value = rewards._bounded(_finalizing, "timed out", 20.0)
    else:
        value, _ = _in_thread(rewards._bounded, _finalizing, "timed out", 20.0)
    assert value == "timed out" and _SlowFinalizer.swallowed == 3
    assert not [r for r in reports if r.exc_type is rewards._Deadline]
    other = ValueError("not ours")  # every other report still reaches the hook that was installed
    sys.unraisablehook(types.SimpleNamespace(exc_type=ValueError, exc_value=other))
    assert reports and reports[-1].exc_value is other


def test_the_deadline_guard_is_on_only_while_bounded_calls_run(monkeypatch):
    # Two overlapping calls in two threads: the guard stays while either runs; after them, the caller's hook.
    own = types.SimpleNamespace()  # any hook the program installed
    monkeypatch.setattr(sys, "unraisablehook", own)
    started, release, seen = threading.Event(), threading.Event(), {}

    def held():
        started.set()
        release.wait(10)
        return "held"

    def peek():
        seen["inner"] = sys.unraisablehook
        return "peeked"

    worker = threading.Thread(target=lambda: seen.setdefault("worker", rewards._bounded(held, None)))
    worker.start()
    assert started.wait(10)
    assert rewards._bounded(peek, None) == "peeked"
    assert isinstance(seen["inner"], rewards._DropDeadlines) and seen["inner"].next_hook is own
    assert sys.unraisablehook is seen["inner"], "the guard left while the worker's call still ran"
    release.set()
    worker.join(10)
    assert seen["worker"] == "held" and sys.unraisablehook is own


def test_a_gold_parse_that_timed_out_is_not_cached(monkeypatch):
    gold, parse = "1234/5678", rewards._parse
    rewards._parse_gold_cached.cache_clear()
    monkeypatch.setattr(rewards, "TIMEOUT_SECONDS", 0.05)
    monkeypatch.setattr(rewards, "_parse", lambda text: (_busy(5.0), parse(text))[1])  # as on a busy machine
    assert parse_gold(gold) is None
    monkeypatch.setattr(rewards, "_parse", parse)
    assert parse_gold(gold) is not None and score("\\boxed{1234/5678}", gold) == 1.0


def test_no_interrupt_reaches_the_caller_after_many_bounded_calls(monkeypatch):
    monkeypatch.setattr(rewards, "TIMEOUT_SECONDS", 0.05)
    for _ in range(20):  # deadlines land at every point of the call, the stop included
        assert score(*ADVERSARIAL["slow expansion"]) == 0.0
    end = time.monotonic() + 0.5  # a late interrupt would land in this loop
    while time.monotonic() < end:
        pass
    assert score("\\boxed{12}", "12") == 1.0


@pytest.mark.parametrize("text, gold, expected", [
    ("To find 4 + 8, we add the two numbers.", "12", 0.0),  # restates the question: not an answer
    ("Let me compute 12 - 4 step by step", "8", 0.0),
    ("So 3*5", "15", 0.0),
    ("4 + 8 = 12. Done.", "12", 1.0),  # the last value is the answer
    ("The answer is 1/2", "1/2", 1.0),  # a fraction is an answer
    ("so it is -3", "-3", 1.0),
    ("So the answer is \\boxed{4+8}", "12", 1.0),  # a boxed expression is an explicit answer
])
def test_an_unboxed_restated_sum_is_not_an_answer(text, gold, expected):
    assert score(text, gold) == expected


# ---------------------------------------------------------------- several reward functions


def test_weighted_sum_skips_none_and_keeps_unscorable_rows_nan():
    import torch

    from mrt.rewards.combine import weighted_sum

    nan = float("nan")
    per_function = torch.tensor([[1.0, 0.5], [nan, 1.0], [nan, nan], [0.0, 0.0]])
    total = weighted_sum(per_function, torch.tensor([2.0, -1.0]))
    assert total[[0, 1, 3]].tolist() == [1.5, -1.0, 0.0]  # a None (NaN) adds nothing to its row
    assert torch.isnan(total[2])  # no function scored it: unscorable, not 0
