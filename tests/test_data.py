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


# ---------------------------------------------------------------- TRL's columns, optional gold, streaming


def test_custom_reward_needs_no_answer_column(tmp_path):
    rows = [{"question": f"Write a poem about {i}.", "id": i} for i in range(3)]
    path = _write_jsonl(tmp_path / "open.jsonl", rows)
    dataset = load_problems(str(path), problem_column="question", require_answer=False)
    assert set(dataset.column_names) == {"question", "id", "prompt"}  # no "answer" column is made up
    assert dataset[2]["prompt"] == format_prompt("Write a poem about 2.")
    with pytest.raises(ValueError, match=r"no column 'answer'.*answer_column"):
        load_problems(str(path), problem_column="question")  # the default reward needs the gold


def test_custom_reward_keeps_a_present_answer_column(tmp_path):
    path = _write_jsonl(tmp_path / "problems.jsonl", ROWS)
    dataset = load_problems(str(path), problem_column="question", answer_column="solution",
                            require_answer=False)
    _check_mapped(dataset)  # the gold is still mapped when it is there (the likelihood estimator reads it)


@pytest.mark.parametrize("conversational", [False, True])
def test_trl_prompt_and_solution_columns_need_no_mapping(tmp_path, conversational):
    def prompt(i):
        text = f"What is {i} + 1?"
        return [{"role": "user", "content": text}] if conversational else text

    rows = [{"prompt": prompt(i), "solution": i + 1} for i in range(4)]
    dataset = load_problems(str(_write_jsonl(tmp_path / "trl.jsonl", rows)))
    assert set(dataset.column_names) == {"prompt", "solution", "answer"}
    assert dataset["answer"] == ["1", "2", "3", "4"]
    assert dataset["solution"] == [1, 2, 3, 4]  # kept for TRL's accuracy_reward, which reads "solution"
    expected = prompt(3) if conversational else format_prompt(prompt(3))
    assert dataset[3]["prompt"] == expected


def test_explicit_columns_win_over_trl_names(tmp_path):
    rows = [{"prompt": "p", "solution": "s", "question": "What is 1 + 1?", "final": 2}]
    dataset = load_problems(str(_write_jsonl(tmp_path / "both.jsonl", rows)), problem_column="question",
                            answer_column="final")
    assert dataset[0]["prompt"][-1]["content"] == "What is 1 + 1?" and dataset[0]["answer"] == "2"


CARD = """---
configs:
- config_name: easy
  data_files:
  - split: train
    path: easy/train.jsonl
- config_name: hard
  data_files:
  - split: train
    path: hard/train.jsonl
---
"""


def _folder_with_configs(tmp_path):
    # A local dataset with two configs declared in its README.md: `name=` selects one, with no hub.
    (tmp_path / "README.md").write_text(CARD)
    for name, rows in (("easy", ROWS[:3]), ("hard", ROWS[3:])):
        (tmp_path / name).mkdir()
        _write_jsonl(tmp_path / name / "train.jsonl", rows)
    return str(tmp_path)


def test_dataset_config_selects_a_local_config(tmp_path):
    folder = _folder_with_configs(tmp_path)
    kwargs = dict(problem_column="question", answer_column="solution")
    assert load_problems(folder, dataset_config="easy", **kwargs)["id"] == [0, 1, 2]
    assert load_problems(folder, dataset_config="hard", **kwargs)["id"] == list(range(3, 10))
    with pytest.raises(ValueError, match="nope"):
        load_problems(folder, dataset_config="nope", **kwargs)


def test_dataset_config_is_refused_where_it_means_nothing(tmp_path):
    path = _write_jsonl(tmp_path / "problems.jsonl", ROWS)
    with pytest.raises(ValueError, match="dataset_config = 'main'"):
        load_problems(str(path), dataset_config="main", problem_column="question", answer_column="solution")
    with pytest.raises(ValueError, match="dataset_config = 'main'"):
        load_problems("arithmetic", dataset_config="main")


def test_streaming_gives_mapped_rows_as_they_come(tmp_path):
    from datasets import IterableDataset

    path = str(_write_jsonl(tmp_path / "problems.jsonl", ROWS))
    dataset = load_problems(path, problem_column="question", answer_column="solution", streaming=True)
    assert isinstance(dataset, IterableDataset)
    rows = list(dataset)
    assert [r["id"] for r in rows] == list(range(10))
    assert rows[4]["prompt"] == format_prompt(ROWS[4]["question"]) and rows[4]["answer"] == "8"
    some = list(load_problems(path, problem_column="question", answer_column="solution", streaming=True,
                              num_problems=3, seed=0))
    assert len(some) == 3 and {r["id"] for r in some} <= set(range(10))
    built_in = load_problems("arithmetic", num_problems=4, streaming=True)
    assert isinstance(built_in, IterableDataset)
    assert [r["problem"] for r in built_in] == load_problems("arithmetic", num_problems=4)["problem"]


def test_streaming_a_local_config(tmp_path):
    folder = _folder_with_configs(tmp_path)
    dataset = load_problems(folder, dataset_config="hard", streaming=True, problem_column="question",
                            answer_column="solution")
    assert [r["answer"] for r in dataset] == [str(r["solution"]) for r in ROWS[3:]]


def test_config_and_streaming_reach_load_dataset_for_hub_names(monkeypatch):
    # A hub dataset cannot be reached offline: a spy stands in for datasets.load_dataset.
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return Dataset.from_list([{"problem": "What is 1 + 2?", "answer": "3"}])

    monkeypatch.setattr(data.datasets, "load_dataset", fake_load_dataset)
    load_problems("someone/math-problems", split="test", dataset_config="algebra", streaming=True)
    assert calls == [("someone/math-problems", {"name": "algebra", "split": "test", "streaming": True})]
