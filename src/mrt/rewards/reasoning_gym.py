"""A TRL reward scored by a reasoning-gym task's own `score_answer` (the tasks load with
`mrt.data.load_problems("reasoning_gym:<task>?...")`)."""

import json
from functools import lru_cache

from mrt.rewards.accuracy import _completion_text, last_box


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
