"""Written reasoning traces for chain sums ("47 + 38 - 21 + 59"), in the shape of a reasoning model's output.

A trace is an attempt that adds the terms left to right, one step a line; then check episodes, paragraphs
that open with a reflection marker: "Wait, ..." re-doing the same steps, or "Alternatively, ..." another route
(right to left, positive and negative terms apart, or in pairs), each confirming the sum or correcting it;
then a last paragraph with the final \\boxed{answer}. Paragraphs are separated by blank lines, so the
trainer's episode rule (`mrt.episodes`) finds one episode per paragraph that opens with a marker.

Slips: with probability `slip_rate` one step of the attempt drops a carry (or a borrow): that step, and so the
attempt's sum, is off by 10. When there are checks, they catch the slip with probability `catch_rate`, at one
of them drawn at random: the checks before it re-do the same steps, repeat the slip and agree with it; the
catching check and the ones after it reach the right sum. The final answer is right unless a slip was left
uncorrected.

Everything here is pure and seeded (`random.Random(seed)`): the same seed writes the same traces.
"""

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from mrt.checks import check

ROUTES = ("recheck", "right_to_left", "signs", "pairs")  # the kinds of check episode

_OPENINGS = {
    "recheck": ("Wait, let me check each step.", "Let me check that again.", "Hmm, let me verify the steps."),
    "right_to_left": ("Alternatively, I can add from right to left.",),
    "signs": ("Alternatively, I can add the positive and negative terms apart.",),
    "pairs": ("Alternatively, I can add the terms in pairs.",),
}
_ATTEMPT_OPENING = "Let me add from left to right."


@dataclass(frozen=True)
class TraceOptions:
    """How traces are written.

    slip_rate: probability that the attempt drops a carry (one step off by 10).
    catch_rate: probability that the checks catch a slip (when there is at least one check).
    min_checks, max_checks: the number of check episodes, drawn uniformly from this range.
    other_route_rate: probability that a check which does not repeat a slip takes another route than
        re-doing the same steps (right to left, signs apart, pairs; those that fit the problem).
    """

    slip_rate: float = 0.3
    catch_rate: float = 0.8
    min_checks: int = 1
    max_checks: int = 2
    other_route_rate: float = 0.5

    def __post_init__(self):
        for name in ("slip_rate", "catch_rate", "other_route_rate"):
            value = getattr(self, name)
            check(0.0 <= value <= 1.0, "TraceOptions", name, value, "a probability in [0, 1]")
        check(self.min_checks >= 0, "TraceOptions", "min_checks", self.min_checks, ">= 0")
        check(self.max_checks >= self.min_checks, "TraceOptions", "max_checks", self.max_checks,
              f">= min_checks ({self.min_checks})")


@dataclass(frozen=True)
class Trace:
    """A written trace and what was written into it.

    kinds: "attempt", then the route of each check episode (see ROUTES). episodes: len(kinds).
    slip: the attempt slipped; slip_caught: a check corrected it, in episode `caught_in` (1: the first check).
    """

    text: str
    answer: str
    gold: str
    correct: bool
    episodes: int
    kinds: tuple[str, ...]
    slip: bool
    slip_caught: bool
    caught_in: int | None


def signed_terms(expression: str) -> list[int]:
    """The signed terms of a chain sum: "47 + 38 - 21" -> [47, 38, -21] (at least two terms)."""
    tokens = expression.split()
    try:
        terms = [int(tokens[0])]
        if len(tokens) % 2 == 0 or any(op not in "+-" or len(op) != 1 for op in tokens[1::2]):
            raise ValueError
        signs = [1 if op == "+" else -1 for op in tokens[1::2]]
        terms += [sign * int(value) for sign, value in zip(signs, tokens[2::2], strict=True)]
    except (ValueError, IndexError):
        raise ValueError(f"not a chain sum of integers joined by + and -: {expression!r}") from None
    if len(terms) < 2:
        raise ValueError(f"a chain sum needs at least two terms: {expression!r}")
    return terms


def _plus(acc: int, term: int) -> str:
    return f"{acc} {'+' if term >= 0 else '-'} {abs(term)}"


def _carries(acc: int, term: int) -> bool:
    """Whether acc + term carries (or borrows) in the ones place, for a non-negative acc."""
    if acc < 0:
        return False
    if term >= 0:
        return acc % 10 + term % 10 >= 10
    return acc >= -term and acc % 10 < -term % 10


def _running(terms: Sequence[int], slip_step: int | None = None, delta: int = 0,
             fix: tuple[int, int] | None = None) -> tuple[list[str], int]:
    """Lines "a + b = c" adding the terms in order; step `slip_step` is off by `delta`. With
    `fix = (step, wrong)`, the line of that step says that its result is not `wrong` (the attempt's)."""
    lines, acc = [], terms[0]
    for step, term in enumerate(terms[1:]):
        value = acc + term + (delta if step == slip_step else 0)
        line = f"{_plus(acc, term)} = {value}"
        if fix is not None and step == fix[0]:
            line += f", not {fix[1]}."
        lines.append(line)
        acc = value
    return lines, acc


def _listed(values: Sequence[int]) -> str:
    text = " + ".join(map(str, values))
    return f"{text} = {sum(values)}" if len(values) > 1 else text


def _signs(terms: Sequence[int]) -> tuple[list[str], int]:
    positive = [t for t in terms if t >= 0]
    negative = [-t for t in terms if t < 0]
    up, down = sum(positive), sum(negative)
    return [f"Positive: {_listed(positive)}", f"Negative: {_listed(negative)}",
            f"{up} - {down} = {up - down}"], up - down


def _pairs(terms: Sequence[int]) -> tuple[list[str], int]:
    lines, values = [], []
    for k in range(0, len(terms), 2):
        pair = terms[k:k + 2]
        if len(pair) == 2:
            lines.append(f"{_plus(*pair)} = {sum(pair)}")
        values.append(sum(pair))
    total = sum(values)
    lines.append(" + ".join(map(str, values)).replace("+ -", "- ") + f" = {total}")
    return lines, total


def _routes(terms: Sequence[int]) -> list[str]:
    """The other routes that fit these terms (besides re-doing the same steps)."""
    routes = ["right_to_left"]
    if any(t >= 0 for t in terms) and any(t < 0 for t in terms):
        routes.append("signs")
    if len(terms) >= 4:
        routes.append("pairs")
    return routes


def _route(kind: str, terms: Sequence[int]) -> tuple[list[str], int]:
    if kind == "right_to_left":
        return _running(terms[::-1])
    if kind == "signs":
        return _signs(terms)
    return _pairs(terms)


def write_trace(expression: str, rng: random.Random, options: TraceOptions = TraceOptions()) -> Trace:
    """One trace for the chain sum `expression`, drawn with `rng`."""
    terms = signed_terms(expression)
    gold = sum(terms)
    n_checks = rng.randint(options.min_checks, options.max_checks)
    slip = rng.random() < options.slip_rate
    slip_step, delta, catch_at = None, 0, None
    if slip:
        steps = range(len(terms) - 1)
        carrying = [k for k in steps if _carries(sum(terms[:k + 1]), terms[k + 1])]
        slip_step = rng.choice(carrying or list(steps))
        # A dropped carry adds too little, a dropped borrow takes away too little.
        delta = -10 if terms[slip_step + 1] >= 0 else 10
        if n_checks and rng.random() < options.catch_rate:
            catch_at = rng.randint(1, n_checks)
    wrong = gold + delta
    if slip:  # the slipped step, and what it should have been
        slipped_step = _plus(sum(terms[:slip_step + 1]), terms[slip_step + 1])
        step_right = sum(terms[:slip_step + 2])

    lines, total = _running(terms, slip_step, delta)
    paragraphs = ["\n".join([_ATTEMPT_OPENING, *lines, f"So the sum is {total}."])]
    kinds = ["attempt"]
    for episode in range(1, n_checks + 1):
        missed = slip and (catch_at is None or episode < catch_at)
        catching = episode == catch_at
        if missed:  # re-does the same steps and repeats the slip
            kind = "recheck"
            lines, total = _running(terms, slip_step, delta)
        elif rng.random() >= options.other_route_rate:
            kind = "recheck"
            lines, total = _running(terms, fix=(slip_step, step_right + delta) if catching else None)
        else:
            fresh = [route for route in _routes(terms) if route not in kinds]
            kind = rng.choice(fresh or _routes(terms))
            lines, total = _route(kind, terms)
        if catching and kind == "recheck":
            close = f"I made a slip before: the sum is {total}, not {wrong}."
        elif catching:
            close = f"That gives {total}, not {wrong}: I slipped in {slipped_step} = {step_right} before."
        else:
            close = f"That matches: {total}." if kind == "recheck" else f"That gives {total} again."
        paragraphs.append("\n".join([rng.choice(_OPENINGS[kind]), *lines, close]))
        kinds.append(kind)
    answer = wrong if slip and catch_at is None else gold
    paragraphs.append(f"So the final answer is \\boxed{{{answer}}}.")
    return Trace(text="\n\n".join(paragraphs), answer=str(answer), gold=str(gold), correct=answer == gold,
                 episodes=len(kinds), kinds=tuple(kinds), slip=slip, slip_caught=catch_at is not None,
                 caught_in=catch_at)


def write_traces(expressions: Iterable[str], seed: int,
                 options: TraceOptions = TraceOptions()) -> list[Trace]:
    """One trace per chain sum, all drawn from `random.Random(seed)` in order."""
    rng = random.Random(seed)
    return [write_trace(expression, rng, options) for expression in expressions]


def sft_rows(problems: Iterable[dict], seed: int, options: TraceOptions = TraceOptions()) -> list[dict]:
    """Prompt-completion rows for TRL's SFTTrainer: one trace per problem row of
    `mrt.data.load_task` (a chain_sum task, whose "metadata" JSON holds the expression). Each
    row: the problem's "prompt", the trace as the assistant's "completion", the gold "answer", and the trace's
    facts as "trace_<field>" (every Trace field but the text and the gold)."""
    problems = list(problems)
    expressions = [json.loads(row["metadata"])["expression"] for row in problems]
    rows = []
    for row, trace in zip(problems, write_traces(expressions, seed, options), strict=True):
        facts = {k: v for k, v in asdict(trace).items() if k not in ("text", "gold")}
        facts["kinds"] = list(trace.kinds)
        rows.append({"prompt": row["prompt"], "completion": [{"role": "assistant", "content": trace.text}],
                     "answer": trace.gold, **{f"trace_{k}": v for k, v in facts.items()}})
    return rows
