"""reasoning-gym tasks as problem datasets, and a TRL reward scored by the task's own `score_answer`.

A dataset name `reasoning_gym:<task>` or `reasoning_gym:<task>?<option>=<value>&...` (one string, so it
fits the `dataset_name` field of a YAML recipe) names a task of the `reasoning-gym` package and options of its
config dataclass, e.g. `reasoning_gym:chain_sum?min_terms=3&max_terms=4&min_digits=2&max_digits=2`. Values
are read as YAML scalars (3 -> int, 0.5 -> float, true -> bool, else text). `seed` and `size` are not
options: the loader's arguments set them.
"""

import difflib
import json
from functools import lru_cache
from urllib.parse import parse_qsl

import yaml
from datasets import Dataset

from mrt.data import _TEST_SEED_OFFSET, SYSTEM_PROMPT, format_prompt
from mrt.rewards import _completion_text, last_box

PREFIX = "reasoning_gym:"
# The testbed's task: chain sums of 3-4 two-digit terms (a 135M model needs several steps for them).
DEFAULT_SPEC = "reasoning_gym:chain_sum?min_terms=3&max_terms=4&min_digits=2&max_digits=2"
COLUMNS = ("prompt", "problem", "answer", "task", "metadata")
_RESERVED = ("seed", "size", "system_prompt")  # set by the loader's own arguments


def is_spec(dataset_name: str) -> bool:
    """Whether a dataset name names a reasoning-gym task."""
    return isinstance(dataset_name, str) and dataset_name.startswith(PREFIX)


def parse_spec(spec: str) -> tuple[str, dict]:
    """`reasoning_gym:<task>?<option>=<value>&...` -> (task, options). ValueError, saying what is wrong, when
    the string is not of that form; the task and its options are checked when the task is loaded."""
    form = f"expected '{PREFIX}<task>[?name=value&...]'"
    if not is_spec(spec):
        raise ValueError(f"dataset name {spec!r} is not a reasoning-gym spec: {form}")
    task, _, query = spec[len(PREFIX):].partition("?")
    if not task.strip() or task != task.strip():
        raise ValueError(f"dataset name {spec!r} has no task: {form}")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"dataset name {spec!r}: options must be 'name=value' joined by '&'") from None
    options = {}
    for name, value in pairs:
        if not name or not value:
            raise ValueError(f"dataset name {spec!r}: option {name or '?'!r} has no name or no value")
        if name in options:
            raise ValueError(f"dataset name {spec!r}: option {name!r} is given twice")
        if name in _RESERVED:
            raise ValueError(f"dataset name {spec!r}: {name!r} is not an option: the loader sets it")
        options[name] = yaml.safe_load(value)
    return task, options


def _create(task: str, size: int, seed: int, options: dict):
    """reasoning-gym's dataset object; a wrong task name or option is raised as a ValueError."""
    from reasoning_gym.factory import DATASETS, create_dataset

    if task not in DATASETS:
        close = difflib.get_close_matches(task, DATASETS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else " (see reasoning_gym.factory.DATASETS)"
        raise ValueError(f"reasoning-gym has no task {task!r}{hint}")
    fields = DATASETS[task][1].__dataclass_fields__
    unknown = sorted(set(options) - set(fields))
    if unknown:
        known = sorted(set(fields) - set(_RESERVED))
        raise ValueError(f"reasoning-gym task {task!r} has no option {', '.join(unknown)}; "
                         f"its options: {known}")
    try:
        return create_dataset(task, size=size, seed=seed, **options)
    except (AssertionError, TypeError, ValueError) as error:  # its configs check themselves with assert
        reason = str(error) or type(error).__name__
        raise ValueError(f"reasoning-gym task {task!r} rejects options {options}: {reason}") from error


def load_task(task: str, size: int, seed: int, system_prompt: str | None = SYSTEM_PROMPT,
              **options) -> Dataset:
    """`size` problems of a reasoning-gym task, generated with reasoning-gym's `seed`: the same seed gives the
    same problems. reasoning-gym draws problem i from `random.Random(seed + i)`, so seeds s and s + 1 share
    all problems but one: use seeds far apart for other problems.

    Columns: "prompt" (conversational: the system prompt, then the question), "problem" (the question),
    "answer" (gold), "task", and "metadata" (the entry's metadata as JSON, for the task's scorer)."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    generator = _create(task, size, seed, options)
    rows = [{"prompt": format_prompt(entry["question"], system_prompt), "problem": entry["question"],
             "answer": str(entry["answer"]), "task": task, "metadata": json.dumps(entry["metadata"])}
            for entry in generator]
    return Dataset.from_list(rows)


def load_spec(spec: str, size: int, seed: int = 0, split: str = "train",
              system_prompt: str | None = SYSTEM_PROMPT) -> Dataset:
    """The dataset a `reasoning_gym:<task>?...` name stands for (see `parse_spec` and `load_task`). As for the
    built-in arithmetic task (`mrt.data.load_problems`), splits other than "train" draw other problems."""
    task, options = parse_spec(spec)
    split_seed = seed if split == "train" else seed + _TEST_SEED_OFFSET
    return load_task(task, size, split_seed, system_prompt=system_prompt, **options)


@lru_cache(maxsize=None)
def _scorer(task: str):
    from reasoning_gym import get_score_answer_fn

    return get_score_answer_fn(task)


def _answer_text(text: str) -> str | None:
    """The content of the last closed \\boxed{} of a text, or None."""
    box = last_box(text)
    return box[1].strip() if box is not None and box[2] else None


def reasoning_gym_reward(prompts, completions, answer, task, metadata, problem=None,
                         **kwargs) -> list[float | None]:
    """TRL reward: each completion's last closed \\boxed{} scored by its task's own `score_answer` (in [0, 1];
    some tasks give partial credit); 0.0 without a closed box, None where the gold is missing. The dataset
    columns "answer", "task", "metadata" (and "problem", if present) come in as kwargs. A prover sample's
    completion is only what mu wrote after the termination suffix (behind the suffix's open box, if any), so
    an answer in the prefix is never read."""
    if not len(answer) == len(task) == len(metadata) == len(completions):
        raise ValueError(f"reasoning_gym reward: {len(completions)} completions but {len(answer)} answers, "
                         f"{len(task)} tasks and {len(metadata)} metadata values")
    texts = [_completion_text(c) for c in completions]
    problems = problem if problem is not None else [None] * len(texts)
    scores = []
    for text, gold, name, meta, question in zip(texts, answer, task, metadata, problems, strict=True):
        if gold is None:
            scores.append(None)
            continue
        found = _answer_text(text)
        entry = {"question": question, "answer": str(gold), "metadata": json.loads(meta)}
        scores.append(0.0 if found is None else float(_scorer(name)(found, entry)))
    return scores
