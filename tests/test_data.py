"""Datasets: the built-in arithmetic task, local files with column mapping, and column checks."""

import json
import re

import pytest
from datasets import Dataset

from mrt import data
from mrt.data import SYSTEM_PROMPT, arithmetic_dataset, format_prompt, load_problems, require_columns


def _expression(problem: str) -> str:
    match = re.fullmatch(r"What is (.+)\?", problem)
    assert match, problem
    return match.group(1)


# ---------------------------------------------------------------- arithmetic


def test_arithmetic_is_deterministic_per_seed():
    first = arithmetic_dataset(32, seed=0)
    assert first.to_list() == arithmetic_dataset(32, seed=0).to_list()
    assert first["problem"] != arithmetic_dataset(32, seed=1)["problem"]
    assert first.column_names == ["prompt", "problem", "answer"]
    assert len(first) == 32


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_arithmetic_answers_are_exact(difficulty):
    dataset = arithmetic_dataset(50, seed=3, difficulty=difficulty)
    for row in dataset:
        assert row["answer"] == str(eval(_expression(row["problem"])))  # noqa: S307 - our own problems
        assert row["prompt"] == [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": row["problem"]},
        ]


def test_arithmetic_difficulty_levels_differ():
    def operators(difficulty):
        problems = arithmetic_dataset(40, seed=0, difficulty=difficulty)["problem"]
        return {len(re.findall(r"[-+*]", _expression(p))) for p in problems}, problems

    ops1, easy = operators(1)
    ops2, _ = operators(2)
    ops3, hard = operators(3)
    assert ops1 == {1} and ops2 == {2} and ops3 == {3}
    assert all("+" in p for p in easy)
    assert all("(" in p for p in hard) and not any("(" in p for p in easy)
    assert max(len(p) for p in easy) < min(len(p) for p in hard)


def test_arithmetic_rejects_unknown_difficulty():
    with pytest.raises(ValueError, match="difficulty"):
        arithmetic_dataset(4, difficulty=4)


def test_format_prompt():
    assert format_prompt("What is 1 + 1?") == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "What is 1 + 1?"},
    ]
    assert format_prompt("q", system_prompt=None) == [{"role": "user", "content": "q"}]
    assert "\\boxed{" in SYSTEM_PROMPT


def test_load_builtin_arithmetic():
    dataset = load_problems("arithmetic:2", num_problems=5, seed=0)
    assert dataset["problem"] == arithmetic_dataset(5, seed=0, difficulty=2)["problem"]
    assert len(load_problems("arithmetic")) == 256
    test = load_problems("arithmetic:2", split="test", num_problems=5, seed=0)
    assert test["problem"] != dataset["problem"]
    custom = load_problems("arithmetic", num_problems=2, system_prompt="Be brief.")
    assert custom[0]["prompt"][0] == {"role": "system", "content": "Be brief."}


# ---------------------------------------------------------------- local files

ROWS = [{"question": f"What is {i} + {i}?", "solution": 2 * i, "id": i} for i in range(10)]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _check_mapped(dataset, rows=ROWS):
    assert len(dataset) == len(rows)
    assert set(dataset.column_names) == {"question", "solution", "id", "prompt", "answer"}
    first = dataset[0]
    assert first["prompt"] == format_prompt(rows[0]["question"])
    assert first["answer"] == str(rows[0]["solution"]) and isinstance(first["answer"], str)
    assert first["solution"] == rows[0]["solution"]  # the original column is kept as it was


def test_load_jsonl_with_column_mapping(tmp_path):
    path = _write_jsonl(tmp_path / "problems.jsonl", ROWS)
    _check_mapped(load_problems(str(path), problem_column="question", answer_column="solution"))


def test_load_json_array(tmp_path):
    path = tmp_path / "problems.json"
    path.write_text(json.dumps(ROWS))
    _check_mapped(load_problems(str(path), problem_column="question", answer_column="solution"))


def test_load_parquet(tmp_path):
    path = tmp_path / "problems.parquet"
    Dataset.from_list(ROWS).to_parquet(str(path))
    _check_mapped(load_problems(str(path), problem_column="question", answer_column="solution"))


def test_load_folder_prefers_the_split_files(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", ROWS[:6])
    _write_jsonl(tmp_path / "test.jsonl", ROWS[6:])
    train = load_problems(str(tmp_path), problem_column="question", answer_column="solution")
    test = load_problems(str(tmp_path), split="test", problem_column="question", answer_column="solution")
    assert train["id"] == list(range(6)) and test["id"] == list(range(6, 10))


def test_existing_answer_and_conversational_prompt_columns(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "answer": i} for i in range(3)]
    path = _write_jsonl(tmp_path / "chat.jsonl", rows)
    dataset = load_problems(str(path), problem_column="prompt")
    assert dataset[1]["prompt"] == [{"role": "user", "content": "q1"}]  # kept, no system prompt added
    assert dataset["answer"] == ["0", "1", "2"]  # an integer column becomes strings


def test_plain_text_prompt_column_becomes_conversational(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "What is 2 + 2?", "answer": "4"}])
    dataset = load_problems(str(path), problem_column="prompt", system_prompt=None)
    assert dataset[0]["prompt"] == [{"role": "user", "content": "What is 2 + 2?"}]


def test_missing_column_fails_at_once_naming_it_and_the_present_ones(tmp_path):
    path = _write_jsonl(tmp_path / "problems.jsonl", ROWS)
    with pytest.raises(ValueError) as error:
        load_problems(str(path), problem_column="question", answer_column="final_answer")
    message = str(error.value)
    assert "final_answer" in message
    assert all(name in message for name in ("question", "solution", "id"))
    with pytest.raises(ValueError, match="'problem'"):
        load_problems(str(path))  # default problem_column "problem" is absent


def test_require_columns():
    dataset = Dataset.from_list([{"prompt": "p", "answer": "1"}])
    require_columns(dataset, ["prompt", "answer"])  # passes
    with pytest.raises(ValueError) as error:
        require_columns(dataset, ["prompt", "solution"], what="train dataset")
    message = str(error.value)
    assert "solution" in message and "prompt" in message and "train dataset" in message


def test_num_problems_shuffles_with_seed(tmp_path):
    path = str(_write_jsonl(tmp_path / "problems.jsonl", ROWS))
    kwargs = dict(problem_column="question", answer_column="solution", num_problems=4)
    a = load_problems(path, seed=0, **kwargs)
    assert len(a) == 4 and set(a["id"]) <= set(range(10))
    assert a["id"] == load_problems(path, seed=0, **kwargs)["id"]
    assert a["id"] != load_problems(path, seed=1, **kwargs)["id"]
    assert len(load_problems(path, **{**kwargs, "num_problems": 99})) == 10  # at most all rows


def test_missing_local_file_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_problems(str(tmp_path / "nope.jsonl"))


def test_other_sources_go_to_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return Dataset.from_list([{"problem": "What is 1 + 2?", "answer": "3"}])

    monkeypatch.setattr(data.datasets, "load_dataset", fake_load_dataset)
    dataset = load_problems("someone/math-problems", split="validation")
    assert calls == [("someone/math-problems", "validation")]
    assert dataset[0]["prompt"][-1]["content"] == "What is 1 + 2?"
