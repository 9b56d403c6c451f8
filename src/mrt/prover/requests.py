"""The one builder of prover prompts: prompt + episode prefix + (blank line) + termination suffix, de-duplicated.

Everything that asks mu to answer from a prefix (training, evaluation, MRT-STaR, branched rollouts, the benches)
builds its prompts here, so the joining rule and the suffix are the same everywhere. Pure: a tokenizer, no model.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

from mrt.prover.presets import SUFFIX_PRESETS

PARAGRAPH_BREAK = "\n\n"


def termination_suffix(setting: str, end_of_thinking_tag: str | None) -> str:
    """The suffix text: a preset ('authors', 'boxed') with the tag in place, or literal text as given."""
    if setting not in SUFFIX_PRESETS:
        return setting
    before, after = SUFFIX_PRESETS[setting]
    return before + (end_of_thinking_tag or "") + after


@dataclass(frozen=True)
class Suffix:
    """The termination suffix as text and token ids, and the ids of the blank line that joins it to a prefix."""

    text: str
    ids: tuple[int, ...]
    break_ids: dict[str, tuple[int, ...]]  # what a prefix ending in "", "\n" needs to end in a blank line

    def joiner(self, prefix_text: str) -> str:
        """The newlines between a prefix and the suffix so that the suffix starts a new paragraph (none after an
        empty prefix)."""
        if not prefix_text:
            return ""
        have = _newlines(prefix_text[::-1]) + _newlines(self.text)
        return "\n" * max(0, 2 - have)


def _newlines(text: str) -> int:
    """Newlines (at most 2) at the start of text."""
    return min(2, len(text) - len(text.lstrip("\n")))


def make_suffix(tokenizer, setting: str, end_of_thinking_tag: str | None) -> Suffix:
    text = termination_suffix(setting, end_of_thinking_tag)
    encode = lambda s: tuple(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    return Suffix(text, encode(text), {"\n": encode("\n"), PARAGRAPH_BREAK: encode(PARAGRAPH_BREAK)})


def prefix_text(tokenizer, prefix_ids: Sequence[int]) -> str:
    return tokenizer.decode(list(prefix_ids), skip_special_tokens=True) if len(prefix_ids) else ""


def prover_prompt(prompt_ids: Sequence[int], prefix_ids: Sequence[int], suffix: Suffix,
                  tokenizer) -> tuple[list[int], str]:
    """Token ids of prompt + prefix + joiner + suffix, and the text of prefix + joiner + suffix (what mu's
    continuation is appended to when it is scored)."""
    text = prefix_text(tokenizer, prefix_ids)
    joiner = suffix.joiner(text)
    ids = [*prompt_ids, *prefix_ids, *(suffix.break_ids[joiner] if joiner else ()), *suffix.ids]
    return ids, text + joiner + suffix.text


@dataclass
class ProverRequests:
    """The unique prover prompts of a batch of completions and where each completion's prefixes went."""

    prompts: list[list[int]] = field(default_factory=list)  # prompt + prefix + joiner + suffix ids
    texts: list[str] = field(default_factory=list)  # prefix + joiner + suffix text, per request
    prefix_texts: list[str] = field(default_factory=list)  # the prefix's text (the start of `texts`), per request
    prefix_ids: list[list[int]] = field(default_factory=list)  # the completion prefix, per request
    owner: list[int] = field(default_factory=list)  # the first completion that asked each request
    index: list[list[int]] = field(default_factory=list)  # index[i][j]: request of completion i's prefix j
    asked: int = 0  # requests before de-duplication


def build_requests(prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]],
                   prefix_lengths: Sequence[Sequence[int]], suffix: Suffix, tokenizer,
                   row_keys: Sequence | None = None) -> ProverRequests:
    """One request per (completion, prefix length); identical prompt + prefix (of rows with the same key, when
    `row_keys` are given) is asked once, so b_0 = 0 is asked once per group."""
    batch, seen = ProverRequests(), {}
    keys = row_keys if row_keys is not None else [None] * len(prompt_ids)
    for i, (prompt, completion, lengths, key) in enumerate(
            zip(prompt_ids, completion_ids, prefix_lengths, keys, strict=True)):
        row = []
        for b in lengths:
            prefix = list(completion[:b])
            lookup = (tuple(prompt), tuple(prefix), key)
            batch.asked += 1
            if lookup not in seen:
                seen[lookup] = len(batch.prompts)
                ids, text = prover_prompt(prompt, prefix, suffix, tokenizer)
                batch.prompts.append(ids)
                batch.texts.append(text)
                batch.prefix_texts.append(prefix_text(tokenizer, prefix))
                batch.prefix_ids.append(prefix)
                batch.owner.append(i)
            row.append(seen[lookup])
        batch.index.append(row)
    return batch
