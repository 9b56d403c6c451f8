"""Split a completion into token-aligned episodes (DESIGN 1.1 step 1).

An episode is a run of completion tokens: an attempt, a check, a backtrack. The split is given as
the END token index of each episode, so episode ``j`` is ``ids[ends[j-1]:ends[j]]`` (with
``ends[-1] = 0`` implied) and joining the episodes gives back the completion exactly.

Default rule: the text is cut into paragraphs at blank lines; a paragraph that opens with a
reflection marker ("Wait", "Alternatively", ...) starts a new episode. Without any marker the split
falls back to paragraphs, then to fixed-size token chunks. Text from the end-of-thinking tag on (the
final answer) stays in the last episode. Everything here is pure Python: no model, no tensors.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

# Reflection markers, matched case-sensitively at the start of a paragraph.
DEFAULT_MARKERS: tuple[str, ...] = (
    "Wait",
    "But wait",
    "Alternatively",
    "Hmm",
    "Is there another way",
    "But let me double-check",
    "But hold on",
    "Hold on",
    "Let me double-check",
    "Let me check",
    "Let me verify",
    "Let me re-examine",
    "Let me reconsider",
    "On second thought",
    "Actually",
    "Another approach",
    "Double-checking",
)

FALLBACKS = ("paragraphs", "chunks", "none")

# A blank line: two newlines with only whitespace (possibly more newlines) between them.
_BLANK_LINE = re.compile(r"\n\s*\n")
_NON_SPACE = re.compile(r"\S")
_WORD_CHAR = re.compile(r"\w")


@dataclass(frozen=True)
class EpisodeRules:
    """How a completion is cut into episodes.

    markers: paragraph openings that start a new episode (case-sensitive, whole words).
    min_paragraphs_between: a marker paragraph fewer than this many paragraphs after the previous
        kept boundary (or after the start of the completion) does not start an episode.
    max_episodes: more episodes than this are merged, consecutive ones evenly.
    fallback: used when no marker starts an episode: "paragraphs" (every paragraph starts one, then
        "chunks" if that still gives a single episode), "chunks", or "none" (one episode).
    chunk_tokens: size in tokens of the chunks of the chunk fallback.
    end_of_thinking_tag: e.g. "</think>"; no episode starts at or after the token where it first
        occurs, so the final answer belongs to the last episode. "" is read as None.
    """

    markers: tuple[str, ...] = DEFAULT_MARKERS
    min_paragraphs_between: int = 1
    max_episodes: int = 4
    fallback: str = "paragraphs"
    chunk_tokens: int = 64
    end_of_thinking_tag: str | None = None

    def __post_init__(self):
        if isinstance(self.markers, str) or not all(isinstance(m, str) and m.strip() for m in self.markers):
            raise ValueError(f"markers must be a sequence of non-empty strings, got {self.markers!r}")
        # Accept any sequence (a list from a YAML config, say) but store a tuple.
        object.__setattr__(self, "markers", tuple(self.markers))
        if self.min_paragraphs_between < 0:
            raise ValueError(f"min_paragraphs_between must be >= 0, got {self.min_paragraphs_between}")
        if self.max_episodes < 1:
            raise ValueError(f"max_episodes must be >= 1, got {self.max_episodes}")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {self.fallback!r}")
        if self.chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {self.chunk_tokens}")
        object.__setattr__(self, "end_of_thinking_tag", no_empty_tag(self.end_of_thinking_tag))


def _paragraph_starts(text: str) -> list[int]:
    """Character index of the first non-whitespace character of each paragraph, in order."""
    cuts = [0] + [m.end() for m in _BLANK_LINE.finditer(text)]
    starts = []
    for cut in cuts:
        found = _NON_SPACE.search(text, cut)
        if found and (not starts or found.start() > starts[-1]):
            starts.append(found.start())
    return starts


def _opens_with_marker(text: str, pos: int, markers: Sequence[str]) -> bool:
    """True when a marker starts at ``pos`` as a whole word ("Wait," yes, "Waiting" no)."""
    for marker in markers:
        if not text.startswith(marker, pos):
            continue
        after = pos + len(marker)
        # A marker ending in a word character must not run on into a longer word.
        if not _WORD_CHAR.match(marker[-1]) or after == len(text) or not _WORD_CHAR.match(text[after]):
            return True
    return False


def _chunk_boundaries(n_tokens: int, size: int, limit: int) -> list[int]:
    """Token indices size, 2*size, ... below both n_tokens and limit."""
    return list(range(size, min(n_tokens, limit), size))


def _merge_evenly(ends: list[int], max_episodes: int) -> list[int]:
    """Keep max_episodes of the ends, spread evenly; the last one is always kept."""
    h = len(ends)
    if h <= max_episodes:
        return ends
    # Position round((k+1) * h / max_episodes) - 1, rounding halves up, in integer arithmetic.
    return [ends[(2 * (k + 1) * h + max_episodes) // (2 * max_episodes) - 1] for k in range(max_episodes)]


def episode_ends(pieces: Sequence[str], rules: EpisodeRules) -> list[int]:
    """End token index of each episode of a completion.

    ``pieces[i]`` is the decoded text of completion token ``i``. The result is strictly increasing
    and ends with ``len(pieces)``; it is ``[]`` for an empty completion. Episode ``j`` is
    ``tokens[ends[j-1]:ends[j]]`` with ``ends[-1] = 0`` implied.
    """
    n = len(pieces)
    if n == 0:
        return []
    text = "".join(pieces)
    # token_end[i] is the character index just past token i; the token holding character c is
    # the first i with token_end[i] > c (empty pieces hold no character and are never picked).
    token_end = list(accumulate(len(p) for p in pieces))

    def token_of(char_index: int) -> int:
        return bisect_right(token_end, char_index)

    # No episode starts at or after the token where the end-of-thinking tag begins.
    limit = n
    if rules.end_of_thinking_tag is not None:
        tag_at = text.find(rules.end_of_thinking_tag)
        if tag_at >= 0:
            limit = token_of(tag_at)

    para_starts = _paragraph_starts(text)

    # Marker boundaries: kept when on a new token before the limit and far enough (in paragraphs)
    # from the previous kept boundary.
    boundaries: list[int] = []
    last_para = 0
    for p, char_index in enumerate(para_starts):
        if p - last_para < rules.min_paragraphs_between:
            continue
        if not _opens_with_marker(text, char_index, rules.markers):
            continue
        tok = token_of(char_index)
        if 0 < tok < limit and (not boundaries or tok > boundaries[-1]):
            boundaries.append(tok)
            last_para = p

    if not boundaries and rules.fallback == "paragraphs":
        for char_index in para_starts:
            tok = token_of(char_index)
            if 0 < tok < limit and (not boundaries or tok > boundaries[-1]):
                boundaries.append(tok)
    if not boundaries and rules.fallback in ("paragraphs", "chunks"):
        boundaries = _chunk_boundaries(n, rules.chunk_tokens, limit)

    return _merge_evenly(boundaries + [n], rules.max_episodes)


def no_empty_tag(tag: str | None) -> str | None:
    """An end-of-thinking tag setting with '' read as None (no tag)."""
    return tag or None


def resolve_thinking_tag(tag: str | None, tokenizer) -> str | None:
    """The end-of-thinking tag to use: 'auto' is '</think>' when the tokenizer has it as a token, else none."""
    if tag == "auto":
        return "</think>" if "</think>" in tokenizer.get_vocab() else None
    return no_empty_tag(tag)


def prefix_lengths(ends: Sequence[int]) -> list[int]:
    """Prover prefix lengths b_0..b_{H-1}: the token count before each episode, [0] + ends[:-1]."""
    if not ends:
        return []
    return [0] + list(ends[:-1])


def token_pieces(tokenizer, ids: Sequence[int], window: int = 4) -> list[str]:
    """Decoded text of each token, read in context: the text of the `window` tokens before it and the token, minus
    the text of those tokens alone. In context, because some decoders drop a token's leading space when it is
    decoded on its own (SentencePiece's '\u2581again' -> 'again', so 'check again' would read 'checkagain'). A
    byte-level BPE piece of a multi-byte character may come out as "\ufffd"; only ASCII markers and newlines are
    searched, so that is harmless."""
    ids = [int(t) for t in ids]
    if not ids:
        return []
    spans = [ids[max(0, k - window):k + 1] for k in range(len(ids))]
    heads = [span[:-1] for span in spans]
    options = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
    texts = tokenizer.batch_decode(spans, **options)
    befores = tokenizer.batch_decode(heads, **options)
    alone = None
    pieces = []
    for k, (text, before) in enumerate(zip(texts, befores)):
        if text.startswith(before):
            pieces.append(text[len(before):])
        else:  # the decoder changed earlier text once this token came (rare): fall back to the token alone
            alone = alone or tokenizer.batch_decode([[t] for t in ids], **options)
            pieces.append(alone[k])
    return pieces


def split_completion(ids: Sequence[int], tokenizer, rules: EpisodeRules) -> list[int]:
    """Episode end indices of the completion token ids (see episode_ends)."""
    return episode_ends(token_pieces(tokenizer, ids), rules)


def episode_index_per_token(ends: Sequence[int], length: int) -> list[int]:
    """Episode index of each of ``length`` tokens.

    Tokens at or beyond ``ends[-1]`` (padding) get the last episode's index; when ``length`` is
    shorter than the completion the result is cut to ``length``. With no episodes (empty
    completion) every token gets 0, so the result is always a valid index for gathering; such
    tokens are padding and should be masked by the caller.
    """
    index: list[int] = []
    start = 0
    for j, end in enumerate(ends):
        index.extend([j] * (end - start))
        start = end
    fill = max(len(ends) - 1, 0)
    index.extend([fill] * (length - len(index)))
    return index[:length]
