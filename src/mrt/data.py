"""Datasets: chat prompts with a gold answer, column mapping, the built-in arithmetic task and reasoning-gym tasks.

A dataset name `reasoning_gym:<task>` or `reasoning_gym:<task>?<option>=<value>&...` (one string, so it fits the
`dataset_name` field of a YAML recipe) names a task of the `reasoning-gym` package and options of its config
dataclass, e.g. `reasoning_gym:chain_sum?min_terms=3&max_terms=4&min_digits=2&max_digits=2`. Values are read as YAML
scalars (3 -> int, 0.5 -> float, true -> bool, else text). `seed` and `size` are not options: the loader's arguments
set them.
"""

import difflib
import json
import random
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qsl

import datasets
import yaml
from datasets import Dataset, IterableDataset

from mrt.tokens import is_conversation

SYSTEM_PROMPT = (
    "You are a careful math assistant. Reason step by step, then give the final answer "
    "in the form \\boxed{answer}."
)

_FILE_TYPES = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_OPS = ("+", "-", "*")
_TEST_SEED_OFFSET = 1_000_003  # built-in task: splits other than "train" draw from another seed
TRL_COLUMNS = {"problem": "prompt", "answer": "solution"}  # TRL's names for the default columns


def format_prompt(problem: str, system_prompt: str | None = SYSTEM_PROMPT) -> list[dict]:
    """A conversational prompt: the system prompt (if any), then the problem as the user turn."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": problem}]


# ---------------------------------------------------------------- built-in arithmetic task


def _expression(rng: random.Random, difficulty: int) -> str:
    op = lambda: rng.choice(_OPS)  # noqa: E731
    if difficulty == 1:
        return f"{rng.randint(0, 20)} + {rng.randint(0, 20)}"
    if difficulty == 2:
        a, b, c = (rng.randint(1, 20) for _ in range(3))
        return f"{a} {op()} {b} {op()} {c}"
    a, b, c, d = (rng.randint(10, 99) for _ in range(4))
    template = rng.choice(["({a} {o1} {b}) {o2} ({c} {o3} {d})", "({a} {o1} {b} {o2} {c}) {o3} {d}",
                           "{a} {o1} ({b} {o2} ({c} {o3} {d}))"])
    return template.format(a=a, b=b, c=c, d=d, o1=op(), o2=op(), o3=op())


def arithmetic_dataset(num_problems: int = 256, seed: int = 0, difficulty: int = 1, *,
                       system_prompt: str | None = SYSTEM_PROMPT) -> Dataset:
    """Seeded arithmetic problems ("What is 7 + 5?") with exact integer answers.

    difficulty 1: a + b with small integers; 2: two operations among +, -, *; 3: three operations on
    two-digit numbers with parentheses. Columns: "prompt" (conversational), "problem", "answer".
    """
    if difficulty not in (1, 2, 3):
        raise ValueError(f"arithmetic difficulty must be 1, 2 or 3, got {difficulty!r}")
    if num_problems < 0:
        raise ValueError(f"num_problems must be >= 0, got {num_problems}")
    rng = random.Random(f"arithmetic-{difficulty}-{seed}")
    rows = []
    for _ in range(num_problems):
        expression = _expression(rng, difficulty)
        problem = f"What is {expression}?"
        answer = eval(expression, {"__builtins__": {}})  # only digits, + - * and parentheses written above
        prompt = format_prompt(problem, system_prompt)
        rows.append({"prompt": prompt, "problem": problem, "answer": str(answer)})
    if not rows:
        return Dataset.from_dict({"prompt": [], "problem": [], "answer": []})
    return Dataset.from_list(rows)


# ---------------------------------------------------------------- loading


def require_columns(dataset, columns: Sequence[str], what: str = "dataset") -> None:
    """Raise a ValueError at once if `dataset` lacks any of `columns`, naming the missing columns and
    the ones present. Datasets that do not know their columns (some streamed ones) pass."""
    present = dataset.column_names
    if isinstance(present, dict):  # DatasetDict: check every split
        for name, split in dataset.items():
            require_columns(split, columns, what=f"{what} (split {name!r})")
        return
    if present is None:
        return
    missing = [c for c in columns if c not in present]
    if missing:
        raise ValueError(
            f"The {what} has no column {', '.join(map(repr, missing))}; its columns are {list(present)}. "
            "Map them with problem_column / answer_column."
        )


def _local_files(folder: Path, split: str) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix in _FILE_TYPES and p.is_file())
    if not files:
        raise ValueError(f"No .json, .jsonl or .parquet files in {folder}")
    # Prefer files named after the split: train.jsonl, train-00000-of-00001.parquet, ...
    named = [p for p in files if re.match(rf"{re.escape(split)}([-_.]|$)", p.stem)]
    return named or files


def _read(source: str, split: str, dataset_config: str | None, streaming: bool):
    """A split of a local file or folder, or of a hub dataset, as `datasets.load_dataset` gives it."""
    options = {"streaming": True} if streaming else {}
    path = Path(source)
    is_file = path.suffix in _FILE_TYPES
    if dataset_config is not None:  # a hub dataset's subset, or a local folder's (configs in its README.md)
        if is_file:
            raise ValueError(f"dataset_config = {dataset_config!r} is invalid for the file {source}: "
                             "expected None (a config names a subset of a hub dataset or of a folder with "
                             "configs in its README.md)")
        return datasets.load_dataset(source, name=dataset_config, split=split, **options)
    if path.is_dir():
        files = _local_files(path, split)
    elif is_file:
        if not path.exists():
            raise FileNotFoundError(f"Dataset file not found: {source}")
        files = [path]
    else:
        return datasets.load_dataset(source, split=split, **options)
    kinds = {_FILE_TYPES[p.suffix] for p in files}
    if len(kinds) > 1:
        raise ValueError(f"{source} mixes file types {sorted(kinds)}; keep one kind per folder")
    return datasets.load_dataset(kinds.pop(), data_files=[str(p) for p in files], split="train", **options)


def _pick(present, column: str) -> str:
    """`column`, or TRL's name for it when `column` is a default name the dataset lacks (TRL's convention)."""
    trl_name = TRL_COLUMNS.get(column)
    if present is not None and column not in present and trl_name in present:
        return trl_name
    return column


def _gold(value) -> str:
    return "" if value is None else str(value)


def load_problems(source: str, split: str = "train", problem_column: str = "problem",
                  answer_column: str = "answer", system_prompt: str | None = SYSTEM_PROMPT,
                  num_problems: int | None = None, seed: int = 0, *, dataset_config: str | None = None,
                  streaming: bool = False, require_answer: bool = True) -> Dataset | IterableDataset:
    """Problems as conversational prompts with a gold answer.

    source: "arithmetic" or "arithmetic:<difficulty>" (built in; splits other than "train" use other
    problems), "reasoning_gym:<task>?<option>=<value>&..." (a reasoning-gym task, see
    `load_spec`), a local .json/.jsonl/.parquet file or a folder of them (files named after `split` are
    preferred), or else a hub dataset passed to `datasets.load_dataset(source, split=split)`.
    dataset_config: the subset (`load_dataset`'s `name`) of a hub dataset or of a local folder that declares
    configs in its README.md. streaming: an IterableDataset (TRL trains on one when max_steps is set).

    Returns the original columns plus "prompt" (built from `problem_column` and the system prompt; a
    column that already holds conversations is kept as is) and "answer" (the gold from
    `answer_column`, as a string). A dataset in TRL's convention needs no mapping: when the default
    "problem" / "answer" columns are absent, "prompt" / "solution" are read. require_answer=False (a
    custom reward): a dataset without the answer column loads, with no "answer" column added.
    num_problems: shuffle with `seed` and keep that many.
    """
    built_in = source == "arithmetic" or source.startswith(("arithmetic:", "reasoning_gym:"))
    if built_in and dataset_config is not None:
        raise ValueError(f"dataset_config = {dataset_config!r} is invalid for the built-in {source!r}: expected "
                         "None (options go in the name: 'arithmetic:2', 'reasoning_gym:chain_sum?min_terms=3')")
    if source.startswith("reasoning_gym:"):
        dataset = load_spec(source, 256 if num_problems is None else num_problems, seed, split, system_prompt)
        num_problems = None
        if streaming:
            dataset = dataset.to_iterable_dataset()
    elif source == "arithmetic" or source.startswith("arithmetic:"):
        if dataset_config is not None:
            raise ValueError(f"dataset_config = {dataset_config!r} is invalid for the built-in {source!r}: "
                             "expected None (the difficulty goes in the name, 'arithmetic:2')")
        difficulty = int(source.partition(":")[2] or 1)
        split_seed = seed if split == "train" else seed + _TEST_SEED_OFFSET
        dataset = arithmetic_dataset(256 if num_problems is None else num_problems, seed=split_seed,
                                     difficulty=difficulty, system_prompt=system_prompt)
        num_problems = None  # already exactly that many
        if streaming:
            dataset = dataset.to_iterable_dataset()
    else:
        dataset = _read(source, split, dataset_config, streaming)
    present = dataset.column_names
    problem_column, answer_column = _pick(present, problem_column), _pick(present, answer_column)
    with_answer = require_answer or present is None or answer_column in present
    require_columns(dataset, [problem_column, answer_column] if with_answer else [problem_column],
                    what=f"dataset {source!r}")

    def prompt(value) -> list[dict]:
        return value if is_conversation(value) else format_prompt(str(value), system_prompt)

    if isinstance(dataset, IterableDataset):  # rows are mapped as they stream, with no column types to keep
        if num_problems is not None:
            dataset = dataset.shuffle(seed=seed).take(num_problems)

        def convert(row: dict) -> dict:
            new = {"prompt": prompt(row[problem_column])}
            return {**new, "answer": _gold(row[answer_column])} if with_answer else new

        return dataset.map(convert)
    if num_problems is not None:
        dataset = dataset.shuffle(seed=seed).select(range(min(num_problems, len(dataset))))
    # Add new columns and drop the old ones (map would cast the new strings back to an old integer
    # "answer" type); temporary names, because removing every column first would lose the row count.
    names = {"_mrt_prompt": "prompt", "_mrt_answer": "answer"} if with_answer else {"_mrt_prompt": "prompt"}
    dataset = dataset.add_column("_mrt_prompt", [prompt(p) for p in dataset[problem_column]])
    if with_answer:
        dataset = dataset.add_column("_mrt_answer", [_gold(a) for a in dataset[answer_column]])
    dataset = dataset.remove_columns([c for c in names.values() if c in present])
    return dataset.rename_columns(names)


# ---------------------------------------------------------------- reasoning-gym tasks (the `reasoning` extra)

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
