"""0/1 correctness reward: math-verify on the last answer of a text.

Time bound. math-verify's own timeouts (`parse(parsing_timeout=...)`, `verify(timeout_seconds=...)`)
use `signal.alarm`: they only work in the main thread (elsewhere math-verify raises ValueError), they
apply per comparison rather than per call, and they cancel any alarm the caller had set. Without a
timeout, short answers hang: `\\boxed{9^{9^{9}}}` against gold 12 never finishes `verify` (sympy
computes 9**387420489 exactly, one long C call that no Python-level interrupt can stop). So:

1. Input caps: only the last `\\boxed{...}` is read, and it counts as unparsable past
   MAX_ANSWER_CHARS characters or MAX_DEPTH levels of brackets (parsing time grows fast with
   nesting); without a box only the last MAX_TAIL_CHARS characters are searched.
2. Size screen: a parsed answer whose exact value would need more than MAX_BITS bits
   (towers of powers, huge factorials) counts as unparsable, because evaluating it is one long C call.
3. Deadline: math-verify runs with its own timeouts off, and each public call is bounded by
   TIMEOUT_SECONDS as a whole (score: the answer's parse and verify together; the gold's parse,
   cached, once more). A watchdog thread raises `_Deadline` inside the scoring thread (main thread
   included) with `PyThreadState_SetAsyncExc` (CPython), again every _RETRY_SECONDS until the call
   returns: an interrupt that lands in a finalizer or a gc callback is swallowed there, and a one-shot
   alarm would then let the call run on, growing without bound. Such a swallowed interrupt is reported to
   `sys.unraisablehook` at once, inside the call, where the next interrupt could land in the hook itself;
   so while a bounded call runs (in any thread), `_Deadline` reports are dropped there (every other report
   goes on to the hook that was installed), and after the last one the hook is the one installed before.
   Signals and a caller's timers are never touched. A timed-out call scores 0.0 (its answer: []).

Importing this module changes no global state; math-verify's warning about disabled timeouts is turned off
when a call first runs (math-verify shows it once per process, and the timeouts are ours).
"""

import ctypes
import math
import re
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager
from functools import lru_cache

import math_verify
import math_verify.grader
import math_verify.parser
import sympy

TIMEOUT_SECONDS = 3.0  # wall-clock bound of one parse_gold / parse_answer / score call
MAX_ANSWER_CHARS = 1000  # longest \boxed{} content that is parsed
MAX_DEPTH = 10  # deepest bracket nesting in an answer that is parsed
MAX_TAIL_CHARS = 2000  # without a \boxed{}, only this many final characters are searched
MAX_BITS = 2**18  # largest exact number (in bits) an answer may evaluate to
_RETRY_SECONDS = 0.05  # after the deadline, the watchdog interrupts again this often

# Reward kwargs of a prover sample (mrt.prover.scoring), whose completion is what mu wrote after the termination
# suffix: the episode prefix the policy wrote, and what was appended to it (joiner + termination suffix).
PROVER_PREFIX = "prover_prefix"
PROVER_SUFFIX = "prover_suffix"

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_WRAPPED = re.compile(r"\$|\\boxed|\\fbox|\\\(|\\\[")
# Unboxed arithmetic between numbers ("4 + 8", "12 - 4", "3*5") is a restated question, not an answer.
_UNEVALUATED = re.compile(r"\d\s*(?:[-+*\u00d7]|\\times|\\cdot)\s*\d")


class _Deadline(BaseException):
    """Raised inside a call that ran past TIMEOUT_SECONDS (a BaseException, so libraries let it through)."""


_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = [ctypes.c_ulong, ctypes.py_object]
_set_async_exc.restype = ctypes.c_int


class _DropDeadlines:
    """sys.unraisablehook: a `_Deadline` swallowed by a finalizer or gc callback is dropped (the watchdog raises it
    again); every other report goes on to the hook that was installed before."""

    def __init__(self, next_hook):
        self.next_hook = next_hook

    def __call__(self, unraisable) -> None:
        if unraisable.exc_type is not _Deadline:
            self.next_hook(unraisable)


_hook_lock = threading.Lock()
_bounded_calls = 0  # bounded calls running now, in every thread


@contextmanager
def _deadline_reports_dropped():
    """Within the block, `sys.unraisablehook` drops `_Deadline` reports. The guard goes in when the first bounded
    call starts and comes out when the last one (of any thread) ends, unless the hook was replaced meanwhile."""
    global _bounded_calls
    with _hook_lock:
        if _bounded_calls == 0:
            sys.unraisablehook = _DropDeadlines(sys.unraisablehook)
        _bounded_calls += 1
    try:
        yield
    finally:
        with _hook_lock:
            _bounded_calls -= 1
            if _bounded_calls == 0 and isinstance(sys.unraisablehook, _DropDeadlines):
                sys.unraisablehook = sys.unraisablehook.next_hook


def _bounded(fn, default, *args):
    """fn(*args), or `default` if that takes longer than TIMEOUT_SECONDS. Safe from any thread."""
    seconds = TIMEOUT_SECONDS
    if not seconds or seconds <= 0:
        return fn(*args)
    tid = threading.get_ident()
    lock = threading.Lock()
    finished = [False]
    wake = threading.Event()

    def watch():
        if wake.wait(seconds):
            return
        while True:
            # Under the lock, "still running? then interrupt" cannot race with the caller finishing.
            with lock:
                if finished[0]:
                    return
                _set_async_exc(tid, _Deadline)
            if wake.wait(_RETRY_SECONDS):
                return

    result = default
    with _deadline_reports_dropped():  # left only once no interrupt can come
        threading.Thread(target=watch, daemon=True).start()
        try:
            try:
                result = fn(*args)
            finally:
                # An interrupt that lands while we stop the watchdog is caught, and the stop retried.
                while True:
                    try:
                        with lock:
                            finished[0] = True
                            _set_async_exc(tid, ctypes.py_object())  # NULL: drop one not yet delivered
                        break
                    except _Deadline:
                        pass
                wake.set()
        except _Deadline:
            pass
    return result


# ---------------------------------------------------------------- size screen

_FACTORIAL_LIKE = (
    sympy.factorial,
    sympy.factorial2,
    sympy.subfactorial,
    sympy.gamma,
    sympy.binomial,
    sympy.RisingFactorial,
    sympy.FallingFactorial,
    sympy.fibonacci,
    sympy.lucas,
)


class _TooBig(Exception):
    pass


def _log2_size(expr) -> float | None:
    """Upper bound on log2 |value| of a numeric sympy expression (None if it has symbols).
    Raises _TooBig when any part would evaluate to more than MAX_BITS bits."""
    sizes = [_log2_size(arg) for arg in expr.args]
    if expr.is_Rational:
        size = max(math.log2(abs(expr.p)) if expr.p else 0.0, math.log2(expr.q))
    elif expr.is_Number or expr.is_NumberSymbol or expr is sympy.I:
        # floats and constants such as pi: evaluated approximately, so their magnitude is what counts
        value = abs(complex(expr)) if expr.is_finite else 0.0
        size = max(math.log2(value), 0.0) if value else 0.0
    elif None in sizes or not sizes:
        return None
    elif expr.is_Add:
        size = max(sizes) + math.log2(len(sizes))
    elif expr.is_Mul:
        size = sum(sizes)
    elif expr.is_Pow:
        base, exponent = sizes
        size = base * 2.0 ** min(exponent, 1000.0) if base > 0 else 0.0
    elif isinstance(expr, _FACTORIAL_LIKE):
        n = 2.0 ** min(max(sizes), 1000.0)
        size = n * max(math.log2(n), 1.0)
    elif isinstance(expr, sympy.exp):
        size = 1.5 * 2.0 ** min(sizes[0], 1000.0)
    else:
        size = max(sizes)
    if size > MAX_BITS:
        raise _TooBig()
    return size


def _too_big(answer: list) -> bool:
    try:
        for item in answer:
            if isinstance(item, sympy.MatrixBase):
                for element in item:
                    _log2_size(element)
            elif isinstance(item, sympy.Basic):
                _log2_size(item)
    except (_TooBig, RecursionError, OverflowError):
        return True
    return False


# ---------------------------------------------------------------- answers


def last_box(text: str) -> tuple[int, str, bool] | None:
    """(start, content, closed) of the last \\boxed{...} in text; an unclosed box runs to the end."""
    match = None
    for match in _BOX.finditer(text):
        pass
    if match is None:
        return None
    begin = match.end()
    depth = 1
    i = begin
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # skip escaped characters such as \{ and \}
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return match.start(), text[begin:i], True
        i += 1
    return match.start(), text[begin:], False


def _nesting(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth = max(depth - 1, 0)
    return deepest


def _parse(text: str) -> list:
    math_verify.parser.TIMEOUT_WARNING_SHOWN = True  # the timeout is ours (see above): no warning about None
    return math_verify.parse(text, parsing_timeout=None)


def _parse_answer_raw(text: str, finished: bool = True) -> list:
    box = last_box(text)
    if not finished and (box is None or not box[2]):
        return []  # cut at the token limit: only a closed last box is an answer
    if box is None:
        answer = _parse(text[-MAX_TAIL_CHARS:])
        if len(answer) > 1 and _UNEVALUATED.search(str(answer[1])):
            # "To find 4 + 8, ..." restates the question; math-verify would read "4 + 8" as 12.
            return []
    else:
        content = box[1].strip()
        if not content or len(content) > MAX_ANSWER_CHARS or _nesting(content) > MAX_DEPTH:
            return []
        answer = _parse("\\boxed{" + content + "}")
    return [] if _too_big(answer) else answer


def parse_answer(text: str, finished: bool = True) -> list:
    """The answer of a completion, parsed by math-verify: the last \\boxed{} if there is one, else the final
    expression or number of the text's tail. A completion cut at the token limit (`finished=False`) has an answer
    only in a closed last box. [] when there is none (or it timed out)."""
    return _bounded(_parse_answer_raw, [], text, finished)


def _forced_answer(text: str) -> list:
    """The answer mu wrote after the termination suffix (`text` is mu's continuation, with the suffix's open
    \\boxed{ in front when the suffix ends inside one): a box must be closed and non-empty, and without a box the
    continuation's own tail is read. Nothing before the suffix is ever read."""
    box = last_box(text)
    if box is not None and not box[2]:
        return []  # cut off inside the box (at the token limit): no answer
    return _parse_answer_raw(text)


# ---------------------------------------------------------------- gold


class _GoldTimedOut(Exception):
    """A gold parse that ran past TIMEOUT_SECONDS (raised, so that lru_cache does not keep it)."""


_TIMED_OUT = object()


@lru_cache(maxsize=65536)
def _parse_gold_cached(gold: str) -> list | None:
    def run():
        if _WRAPPED.search(gold):
            parsed = _parse(gold)
        else:
            # Bare answers ("12", "3/4", "x=2", "\sqrt{2}") parse best as LaTeX inside a box.
            parsed = _parse("\\boxed{" + gold + "}") or _parse(gold)
        return parsed if any(not isinstance(p, str) for p in parsed) else None  # a bare string is no answer

    parsed = _bounded(run, _TIMED_OUT)
    if parsed is _TIMED_OUT:
        raise _GoldTimedOut  # not cached: a parse cut short by a busy machine is tried again next time
    return parsed


def parse_gold(gold) -> list | None:
    """math-verify's parse of a gold answer (str, int or float); None when it cannot be parsed (or not within
    TIMEOUT_SECONDS). Cached, but not when it timed out: do not modify the returned list."""
    if gold is None:
        return None
    text = str(gold).strip()
    try:
        return _parse_gold_cached(text) if text else None
    except _GoldTimedOut:
        return None


# ---------------------------------------------------------------- scores


def _verify(gold: list, answer: list) -> float:
    if not answer:
        return 0.0
    math_verify.grader.TIMEOUT_WARNING_SHOWN = True  # as in _parse
    return 1.0 if math_verify.verify(gold, answer, timeout_seconds=None) else 0.0


def score(text: str, gold, finished: bool = True) -> float | None:
    """1.0 if the answer of text (`parse_answer`) equals gold, else 0.0; None when the gold is unparsable."""
    parsed_gold = parse_gold(gold)
    if parsed_gold is None:
        return None
    return _bounded(lambda: _verify(parsed_gold, _parse_answer_raw(text, finished)), 0.0)


def score_forced(text: str, gold) -> float | None:
    """Score of mu's forced answer: `text` is only what mu wrote after the termination suffix (see
    `mrt.prover.scoring.forced_text`); a bare final answer of mu's counts, as the samples are short. No answer
    (empty, an empty or unclosed box) is 0.0; None when the gold is unparsable. Cached: mu often writes the same
    short answer many times."""
    return None if gold is None else _score_forced_cached(text, str(gold).strip())


@lru_cache(maxsize=65536)
def _score_forced_cached(text: str, gold: str) -> float | None:
    parsed_gold = parse_gold(gold)
    if parsed_gold is None:
        return None
    return _bounded(lambda: _verify(parsed_gold, _forced_answer(text)), 0.0)


# ---------------------------------------------------------------- TRL reward function


def _completion_text(completion) -> str:
    """Text of a completion: a string, or the content of the last message of a conversation."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if not completion:
        return ""
    content = completion[-1].get("content") or ""
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content


def make_accuracy_reward(answer_column: str = "answer", eos_token_ids=None) -> Callable:
    """A TRL reward function: 1.0 / 0.0 per completion by math-verify against the gold answers in the dataset column
    `answer_column`; None where the gold is unparsable.

    What counts as a completion's answer: the content of its last closed \\boxed{}; without one, the final number or
    expression of a FINISHED completion. A completion cut at the token limit with no closed last box scores 0 (its
    final number may be a step of unfinished work: "... 4 + 8 = 12, and then add them together: 12 +").
    `eos_token_ids` tells the two apart as GRPOTrainer does: a completion is finished when its `completion_ids` end
    in one of them (MRTTrainer gives this reward the policy's EOS and padding ids, `with_eos_ids`; without them,
    every completion counts as finished). A prover sample (the reward kwargs `prover_prefix` and `prover_suffix`
    are set, see `mrt.prover.scoring`) is graded on mu's text alone by `score_forced`: no answer, an empty or
    unclosed box is 0.
    """
    finishing = None if eos_token_ids is None else {int(i) for i in eos_token_ids if i is not None}

    def accuracy(prompts, completions, completion_ids=None, **kwargs) -> list[float | None]:
        if answer_column not in kwargs:
            raise KeyError(
                f"accuracy reward: no column {answer_column!r} among the reward kwargs "
                f"{sorted(kwargs)}; set answer_column to the dataset column that holds the gold answer"
            )
        golds = kwargs[answer_column]
        if len(golds) != len(completions):
            raise ValueError(
                f"accuracy reward: {len(completions)} completions but {len(golds)} values "
                f"in {answer_column!r}"
            )
        suffixes = kwargs.get(PROVER_SUFFIX) or [None] * len(completions)
        ids = completion_ids if completion_ids is not None and finishing is not None else [None] * len(completions)
        out = []
        for completion, gold, suffix, row_ids in zip(completions, golds, suffixes, ids, strict=True):
            text = _completion_text(completion)
            if suffix is not None:  # a prover sample: grade only what mu wrote
                out.append(score_forced(text, gold))
            else:
                finished = row_ids is None or (len(row_ids) > 0 and int(row_ids[-1]) in finishing)
                out.append(score(text, gold, finished))
        return out

    accuracy.__name__ = "accuracy"
    accuracy.__qualname__ = "accuracy"
    accuracy.answer_column, accuracy.eos_token_ids = answer_column, finishing
    return accuracy


def with_eos_ids(reward, eos_token_ids) -> Callable:
    """`reward` as it is, unless it is this module's accuracy reward built without EOS ids: then the same reward
    with `eos_token_ids` (MRTTrainer gives its own and the CLI's `mrt_accuracy` the policy's)."""
    if getattr(reward, "__qualname__", None) == "accuracy" and hasattr(reward, "answer_column") \
            and reward.eos_token_ids is None:
        return make_accuracy_reward(reward.answer_column, eos_token_ids)
    return reward


accuracy_reward = make_accuracy_reward("answer")
