"""Datasets: loading with column mapping, chat prompts, and the built-in arithmetic task."""

import random
from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset, load_dataset

SYSTEM_PROMPT = (
    "You are a careful math assistant. Think step by step, then give the final answer "
    "in the form \\boxed{answer}."
)
_FILE_TYPES = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_OPS = ("+", "-", "*")


def format_prompt(problem: str, system_prompt: str | None = SYSTEM_PROMPT) -> list[dict]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": problem}]


def _expression(rng: random.Random, difficulty: int) -> str:
    if difficulty <= 1:
        return f"{rng.randint(0, 20)} + {rng.randint(0, 20)}"
    if difficulty == 2:
        a, b, c = rng.randint(1, 20), rng.randint(1, 20), rng.randint(1, 12)
        return f"{a} {rng.choice(_OPS)} {b} {rng.choice(_OPS)} {c}"
    a, b, c, d = (rng.randint(2, 99) for _ in range(4))
    return f"({a} {rng.choice(_OPS)} {b}) {rng.choice(_OPS)} {c} {rng.choice(_OPS)} {d}"


def arithmetic_dataset(num_problems: int = 256, seed: int = 0, difficulty: int = 1,
                       system_prompt: str | None = SYSTEM_PROMPT) -> Dataset:
    """Seeded arithmetic problems: 1 = a + b, 2 = two operations, 3 = three operations with parentheses."""
    if difficulty not in (1, 2, 3):
        raise ValueError(f"arithmetic difficulty must be 1, 2 or 3, got {difficulty!r}")
    rng = random.Random(f"arithmetic-{difficulty}-{seed}")
    rows = []
    for _ in range(num_problems):
        expression = _expression(rng, difficulty)
        problem = f"What is {expression}?"
        answer = str(eval(expression, {"__builtins__": {}}))  # our own digits and operators only
        rows.append({"prompt": format_prompt(problem, system_prompt), "problem": problem, "answer": answer})
    return Dataset.from_list(rows)


def require_columns(dataset, columns: Sequence[str], what: str = "dataset") -> None:
    """Raise a ValueError naming the missing columns and the ones present."""
    present = list(dataset.column_names or [])
    missing = [c for c in columns if c not in present]
    if missing:
        raise ValueError(f"The {what} has no column {', '.join(map(repr, missing))}; its columns are {present}. "
                         "Map them with problem_column / answer_column.")


def _read(source: str, split: str) -> Dataset:
    path = Path(source)
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.suffix in _FILE_TYPES)
        if not files:
            raise ValueError(f"No .json, .jsonl or .parquet files in {source}")
        return load_dataset(_FILE_TYPES[Path(files[0]).suffix], data_files=files, split="train")
    if path.suffix in _FILE_TYPES:
        if not path.exists():
            raise FileNotFoundError(f"Dataset file not found: {source}")
        return load_dataset(_FILE_TYPES[path.suffix], data_files=str(path), split="train")
    return load_dataset(source, split=split)


def load_problems(source: str, split: str = "train", problem_column: str = "problem",
                  answer_column: str = "answer", system_prompt: str | None = SYSTEM_PROMPT,
                  num_problems: int | None = None, seed: int = 0) -> Dataset:
    """Load problems as chat prompts with a gold answer.

    `source` is `arithmetic[:difficulty]` (built in; the test split uses other seeds than the train split), a
    local .json/.jsonl/.parquet file or folder, or a hub dataset name. The result has a conversational `prompt`
    column, the gold in `answer_column` (as a string), and the original columns.
    """
    if source == "arithmetic" or source.startswith("arithmetic:"):
        difficulty = int(source.partition(":")[2] or 1)
        split_seed = seed if split == "train" else seed + 1_000_003
        return arithmetic_dataset(num_problems or 256, seed=split_seed, difficulty=difficulty,
                                  system_prompt=system_prompt)
    dataset = _read(source, split)
    require_columns(dataset, [problem_column, answer_column], what=f"dataset {source!r}")
    if num_problems is not None:
        dataset = dataset.shuffle(seed=seed).select(range(min(num_problems, len(dataset))))

    def to_row(row):
        problem = row[problem_column]
        prompt = problem if isinstance(problem, list) else format_prompt(str(problem), system_prompt)
        return {"prompt": prompt, answer_column: str(row[answer_column])}

    return dataset.map(to_row)
