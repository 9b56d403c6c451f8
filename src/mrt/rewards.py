"""0/1 correctness reward: math-verify on the last answer of a text.

Time bound. math-verify's own timeouts (`parse(parsing_timeout=...)`, `verify(timeout_seconds=...)`)
use `signal.alarm`, so they only work in the main thread (elsewhere math-verify raises ValueError),
and they reset any alarm the caller had set. Without a timeout, short answers can hang for minutes
(`\\boxed{9^{9^{9}}}` against gold 12 never finishes verify), so caps on the input are not enough.
This module therefore:

1. caps the input: only the last `\\boxed{...}` is read (at most MAX_ANSWER_CHARS characters and
   MAX_DEPTH levels of brackets, else the answer counts as unparsable); without a box only the last
   MAX_TAIL_CHARS characters are searched;
2. runs math-verify with its own timeouts off and bounds every public call with `_bounded`: a
   watchdog thread that, once TIMEOUT_SECONDS have passed, raises `_Deadline` inside the scoring
   thread (`PyThreadState_SetAsyncExc`, the per-thread counterpart of a signal). It works in the
   main thread and in worker threads alike. Like a signal, it interrupts Python code only, not one
   long C call; the caps keep those short.
"""

import ctypes
import re
import threading
from collections.abc import Callable
from functools import lru_cache

import math_verify
import math_verify.grader
import math_verify.parser

TIMEOUT_SECONDS = 3.0  # wall-clock bound of one parse_gold / parse_answer / score call
MAX_ANSWER_CHARS = 1000  # longest \boxed{} content that is parsed
MAX_DEPTH = 10  # deepest bracket nesting in an answer that is parsed (deep nesting parses very slowly)
MAX_TAIL_CHARS = 2000  # without a \boxed{}, only this many final characters are searched
_RETRY_SECONDS = 0.05  # after the deadline, interrupt again this often until the call returns

# We pass timeouts of None on purpose (see above); skip math-verify's warning about it.
math_verify.parser.TIMEOUT_WARNING_SHOWN = True
math_verify.grader.TIMEOUT_WARNING_SHOWN = True

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_WRAPPED = re.compile(r"\$|\\boxed|\\fbox|\\\(|\\\[")


class _Deadline(BaseException):
    """Raised inside a call that ran past TIMEOUT_SECONDS (BaseException: libraries do not catch it)."""


_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = [ctypes.c_ulong, ctypes.py_object]
_set_async_exc.restype = ctypes.c_int


def _bounded(fn, default, *args):
    """fn(*args), or `default` if it runs longer than TIMEOUT_SECONDS. Safe from any thread."""
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
            # The lock makes "still running? then interrupt" atomic against the caller finishing.
            with lock:
                if finished[0]:
                    return
                _set_async_exc(tid, _Deadline)
            if wake.wait(_RETRY_SECONDS):
                return

    try:
        try:
            threading.Thread(target=watch, daemon=True).start()
            return fn(*args)
        finally:
            with lock:
                finished[0] = True
                _set_async_exc(tid, ctypes.py_object())  # NULL: drop an interrupt not yet delivered
            wake.set()
    except _Deadline:
        return default


# ---------------------------------------------------------------- answers


def _last_box(text: str) -> tuple[int, str, bool] | None:
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
    return math_verify.parse(text, parsing_timeout=None)


def _parse_answer_raw(text: str) -> list:
    box = _last_box(text)
    if box is None:
        return _parse(text[-MAX_TAIL_CHARS:])
    content = box[1].strip()
    if not content or len(content) > MAX_ANSWER_CHARS or _nesting(content) > MAX_DEPTH:
        return []
    return _parse("\\boxed{" + content + "}")


def parse_answer(text: str) -> list:
    """The last answer in text, parsed by math-verify: the last \\boxed{} if there is one, else the
    final expression or number of the text's tail. [] when there is none (or it timed out)."""
    return _bounded(_parse_answer_raw, [], text)


def _continuation_answer(prefix: str, continuation: str) -> list:
    box = _last_box(prefix)
    if box is not None and not box[2]:
        # The prefix ends inside an open \boxed{: the continuation fills that box.
        start = box[0]
        answer = _parse_answer_raw(prefix[start:] + continuation)
        prefix = prefix[:start]
    else:
        answer = _parse_answer_raw(continuation)
    return answer or _parse_answer_raw(prefix)


# ---------------------------------------------------------------- gold


@lru_cache(maxsize=65536)
def _parse_gold_cached(gold: str) -> list | None:
    def run():
        if _WRAPPED.search(gold):
            parsed = _parse(gold)
        else:
            # Bare answers ("12", "3/4", "x=2", "\sqrt{2}") parse best as LaTeX inside a box.
            parsed = _parse("\\boxed{" + gold + "}") or _parse(gold)
        return parsed if any(not isinstance(p, str) for p in parsed) else None  # a bare string is no answer

    return _bounded(run, None)


def parse_gold(gold) -> list | None:
    """math-verify's parse of a gold answer (str, int or float); None when it cannot be parsed.
    Cached: do not modify the returned list."""
    if gold is None:
        return None
    text = str(gold).strip()
    return _parse_gold_cached(text) if text else None


# ---------------------------------------------------------------- scores


def _verify(gold: list, answer: list) -> float:
    if not answer:
        return 0.0
    return 1.0 if math_verify.verify(gold, answer, timeout_seconds=None) else 0.0


def score(text: str, gold) -> float | None:
    """1.0 if the last answer in text equals gold, else 0.0; None when the gold is unparsable."""
    parsed_gold = parse_gold(gold)
    if parsed_gold is None:
        return None
    return _bounded(lambda: _verify(parsed_gold, _parse_answer_raw(text)), 0.0)


def score_continuation(prefix: str, continuation: str, gold) -> float | None:
    """Score of the text prefix + continuation where the last answer wins: an answer in the
    continuation beats one in the prefix. A prefix that ends inside an open \\boxed{ is completed by
    the continuation (prefix "... \\boxed{" + continuation "12}" answers 12)."""
    parsed_gold = parse_gold(gold)
    if parsed_gold is None:
        return None
    return _bounded(lambda: _verify(parsed_gold, _continuation_answer(prefix, continuation)), 0.0)


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


def make_accuracy_reward(answer_column: str = "answer") -> Callable:
    """A TRL reward function: 1.0 / 0.0 per completion by math-verify against the gold answers in
    the dataset column `answer_column`; None where the gold is unparsable."""

    def accuracy(prompts, completions, **kwargs) -> list[float | None]:
        if answer_column not in kwargs:
            raise KeyError(
                f"accuracy reward: no column {answer_column!r} among the reward kwargs "
                f"{sorted(kwargs)}; set answer_column to the dataset column that holds the gold answer"
            )
        golds = kwargs[answer_column]
        if len(golds) != len(completions):
            raise ValueError(
                f"accuracy reward: {len(completions)} completions but {len(golds)} values in {answer_column!r}"
            )
        return [score(_completion_text(c), g) for c, g in zip(completions, golds)]

    accuracy.__name__ = "accuracy"
    accuracy.__qualname__ = "accuracy"
    return accuracy


accuracy_reward = make_accuracy_reward("answer")
