"""Budget forcing, as in the authors' extrapolation code: a sample that ends before the budget has its end (its EOS,
or its end-of-thinking tag and what follows) replaced by a continuation cue, as a new paragraph so that the episode
rule sees a new episode, and goes on; repeated, cycling through the cues, until the budget is used."""

from __future__ import annotations

from collections.abc import Callable

from mrt.generation import Sample

FORCING_CUES = ("Wait", "But wait", "Alternatively", "But hold on")  # the authors' cycle
CUE_JOINER = "\n\n"  # a cue starts a paragraph


def without_end(ids: list[int], eos: set[int], tag_ids: list[int]) -> list[int]:
    """A sample without its end: cut before its end-of-thinking tag when it wrote one, else without the EOS ids
    it ends in."""
    width = len(tag_ids)
    for k in range(len(ids) - width + 1) if width else ():
        if ids[k:k + width] == tag_ids:
            return list(ids[:k])
    end = len(ids)
    while end and ids[end - 1] in eos:
        end -= 1
    return list(ids[:end])


def first_end(sample: Sample, eos: set[int]) -> int | None:
    """The token where a sample ended by itself (its length without the EOS), None when the budget cut it."""
    return len(without_end(sample.ids, eos, [])) if sample.finished else None


def force_budget(generate: Callable, tokenizer, prompts: list[list[int]], samples: list[Sample], max_tokens: int,
                 temperature: float, cues: list[str], eos: set[int], tag: str | None, seed: int) -> list[Sample]:
    """Each sample continued up to `max_tokens` (`prompts[i]` is sample i's prompt). `generate` is a generator's
    `generate(prompts, n, max_tokens, temperature, stop, seed)`; round r of continuations draws with `seed + r`. A
    sample that ends with no room left for a cue and one more token keeps its end."""
    cue_ids = [tokenizer(CUE_JOINER + cue, add_special_tokens=False)["input_ids"] for cue in cues]
    tag_ids = tokenizer(tag, add_special_tokens=False)["input_ids"] if tag else []
    ids = [list(s.ids) for s in samples]
    ended = [s.finished for s in samples]
    used = [0] * len(samples)
    for round_ in range(max_tokens):  # every round adds a cue's tokens: at most max_tokens rounds
        todo = []
        for i in range(len(samples)):
            if not ended[i]:
                continue
            head = without_end(ids[i], eos, tag_ids) + cue_ids[used[i] % len(cue_ids)]
            if len(head) < max_tokens:
                ids[i], used[i] = head, used[i] + 1
                todo.append(i)
        if not todo:
            break
        room = [max_tokens - len(ids[i]) for i in todo]
        drawn = generate([list(prompts[i]) + ids[i] for i in todo], 1, max(room), temperature, None, seed + round_)
        for i, left, (sample,) in zip(todo, room, drawn, strict=True):
            ids[i] += list(sample.ids[:left])
            ended[i] = sample.finished and len(sample.ids) <= left
    return [s if not used[i] else Sample(ids[i], tokenizer.decode(ids[i], skip_special_tokens=True), ended[i])
            for i, s in enumerate(samples)]
