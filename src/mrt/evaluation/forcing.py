"""Budget forcing, as in the authors' extrapolation code: a sample that ends before the budget has its end (its EOS,
or its end-of-thinking tag and what follows) replaced by a continuation cue, as a new paragraph so that the episode
rule sees a new episode, and goes on; repeated, cycling through the cues, until the budget is used.

Two ways to the same samples: `ForcedContinuation` forces inside one `generate` call, continuing from the model's
cache (a backend with `generate_forced`, EOS-ended models); `force_budget` calls `generate` again per round with
the sample so far (any backend, and an end-of-thinking tag, which can only be cut once written)."""

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


def cue_ids(tokenizer, cues: list[str]) -> list[list[int]]:
    """The token ids a sample gets for each cue, as a new paragraph."""
    return [tokenizer(CUE_JOINER + cue, add_special_tokens=False)["input_ids"] for cue in cues]


class ForcedContinuation:
    """Budget forcing inside one transformers `generate` call (a `LogitsProcessor`), for rows that all start at
    column `width`. It draws each row's next token itself (from the scores at `temperature`, greedy at 0: plain
    sampling) and, when a row draws an EOS with room left for the next cue and one more token, writes the cue instead,
    one token a step; the EOS never enters the sample. It returns scores whose argmax is that token, so `generate`
    runs greedy. `first_end[i]`: where row i first drew an EOS (None: never)."""

    def __init__(self, cues: list[list[int]], eos: set[int], max_tokens: int, width: int, temperature: float):
        self.cues, self.eos, self.max_tokens = cues, set(eos), max_tokens
        self.width, self.temperature = width, temperature
        self.first_end: list[int | None] = []
        self._queue: list[list[int]] = []
        self._used: list[int] = []

    def __call__(self, input_ids, scores):
        import torch

        rows, written = input_ids.size(0), input_ids.size(1) - self.width
        if not self.first_end:
            self.first_end, self._queue, self._used = [None] * rows, [[] for _ in range(rows)], [0] * rows
        if self.temperature > 0:
            drawn = torch.multinomial(torch.softmax(scores.float() / self.temperature, dim=-1), 1).squeeze(1)
        else:
            drawn = scores.argmax(dim=-1)
        tokens = drawn.tolist()
        for i in range(rows):
            if self._queue[i]:
                tokens[i] = self._queue[i].pop(0)
            elif tokens[i] in self.eos:
                if self.first_end[i] is None:
                    self.first_end[i] = written
                cue = self.cues[self._used[i] % len(self.cues)]
                if written + len(cue) < self.max_tokens:  # room for the cue and one more token, as force_budget
                    self._used[i] += 1
                    tokens[i], self._queue[i] = cue[0], list(cue[1:])
        forced = torch.full_like(scores, float("-inf"))
        forced[torch.arange(rows, device=scores.device), torch.tensor(tokens, device=scores.device)] = 0.0
        return forced


def force_budget(generate: Callable, tokenizer, prompts: list[list[int]], samples: list[Sample], max_tokens: int,
                 temperature: float, cues: list[str], eos: set[int], tag: str | None, seed: int) -> list[Sample]:
    """Each sample continued up to `max_tokens` (`prompts[i]` is sample i's prompt). `generate` is a generator's
    `generate(prompts, n, max_tokens, temperature, stop, seed)`; round r of continuations draws with `seed + r`. A
    sample that ends with no room left for a cue and one more token keeps its end."""
    cue_tokens = cue_ids(tokenizer, cues)
    tag_ids = tokenizer(tag, add_special_tokens=False)["input_ids"] if tag else []
    ids = [list(s.ids) for s in samples]
    ended = [s.finished for s in samples]
    used = [0] * len(samples)
    for round_ in range(max_tokens):  # every round adds a cue's tokens: at most max_tokens rounds
        todo = []
        for i in range(len(samples)):
            if not ended[i]:
                continue
            head = without_end(ids[i], eos, tag_ids) + cue_tokens[used[i] % len(cue_tokens)]
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
