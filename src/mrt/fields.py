"""The settings MRT (RL) and MRT (STaR) share: how a completion is cut into episodes and how the prover mu answers.

`MRTConfig` and `STaRConfig` inherit these fields; each field, its help and its check are written here only.
"""

from dataclasses import dataclass, field

from mrt.checks import check
from mrt.episodes import DEFAULT_MARKERS, FALLBACKS, EpisodeRules, no_empty_tag
from mrt.prover.presets import PROVERS, SUFFIX_PRESETS

# EpisodeRules' argument -> the field that sets it
_RULE_FIELDS = {"markers": "episode_markers", "min_paragraphs_between": "min_paragraphs_between",
                "max_episodes": "max_episodes", "fallback": "episode_fallback", "chunk_tokens": "episode_chunk_tokens"}


@dataclass
class EpisodeFields:
    """Where a completion is cut into episodes (checked by `EpisodeRules`)."""

    episode_markers: list[str] = field(
        default_factory=lambda: list(DEFAULT_MARKERS),
        metadata={"help": "A paragraph that begins with one of these words starts a new episode."},
    )
    min_paragraphs_between: int = field(
        default=1,
        metadata={"help": "A marker boundary closer than this many paragraphs to the previous one is skipped."},
    )
    max_episodes: int = field(
        default=4,
        metadata={"help": "At most this many episodes per completion; more are merged evenly."},
    )
    episode_fallback: str = field(
        default="paragraphs",
        metadata={
            "help": "Split used when a completion has no marker: 'paragraphs' (then fixed chunks if there is only "
            "one paragraph), 'chunks', or 'none' (one episode).",
            "choices": list(FALLBACKS),
        },
    )
    episode_chunk_tokens: int = field(
        default=64,
        metadata={"help": "Chunk size in tokens for the fixed-size chunk fallback."},
    )
    end_of_thinking_tag: str | None = field(
        default="auto",
        metadata={
            "help": "End-of-thinking tag, e.g. '</think>'. Text after it belongs to the last episode and the tag "
            "closes the termination suffix. 'auto': '</think>' when the tokenizer has it as a token, else none. "
            "None or '': no tag."
        },
    )

    def check_episode_fields(self) -> None:
        """Normalise the fields ('' is no tag) and reject bad ones, naming the field."""
        self.episode_markers = list(self.episode_markers or [])
        self.end_of_thinking_tag = no_empty_tag(self.end_of_thinking_tag)
        self.episode_rules(None)

    def episode_rules(self, end_of_thinking_tag: str | None) -> EpisodeRules:
        """The episode rules of these settings (with the resolved end-of-thinking tag)."""
        try:
            return EpisodeRules(markers=tuple(self.episode_markers), min_paragraphs_between=self.min_paragraphs_between,
                                max_episodes=self.max_episodes, fallback=self.episode_fallback,
                                chunk_tokens=self.episode_chunk_tokens, end_of_thinking_tag=end_of_thinking_tag)
        except ValueError as error:
            name = next((f for rule, f in _RULE_FIELDS.items() if str(error).startswith(rule)), "episode_markers")
            raise ValueError(f"{type(self).__name__}.{name} = {getattr(self, name)!r} is invalid: {error}.") from None


@dataclass
class ProverFields:
    """Who mu is, and how it is asked to answer from a prefix."""

    prover: str = field(
        default="policy",
        metadata={
            "help": "Where mu comes from. 'policy': the model being trained, through its own generation engine "
            "(TRL's vLLM engine or client when `use_vllm`, else the transformers model; no second copy). "
            "'server': a frozen model served by `vllm serve MODEL --enable-prefix-caching` at `prover_server_url` "
            "(it must use the policy's tokenizer).",
            "choices": list(PROVERS),
        },
    )
    prover_num_samples: int = field(
        default=4,
        metadata={"help": "Samples of mu per prefix; J_j is their mean 0/1 reward."},
    )
    prover_max_tokens: int = field(
        default=64,
        metadata={"help": "Maximum new tokens mu writes after the termination suffix."},
    )
    prover_temperature: float | None = field(
        default=None,
        metadata={"help": "Sampling temperature of mu. None: the policy's `temperature`."},
    )
    termination_suffix: str = field(
        default="authors",
        metadata={
            "help": "Text appended to each prefix to make mu answer now. A preset name ('authors': the paper's "
            "'Time is up...' suffix; 'boxed': the same ending at '\\boxed{' so mu writes only the answer) or "
            "literal text."
        },
    )
    prover_stop: list[str] | None = field(
        default=None,
        metadata={"help": "Stop strings for mu, e.g. ['}'] with the 'boxed' suffix and integer answers."},
    )
    prover_batch_size: int = field(
        default=64,
        metadata={
            "help": "Sequences per prover generate call on the transformers path (bounds memory); with "
            "prover='server', sequences (prompts x samples) per request to the server."
        },
    )
    prover_server_url: str = field(
        default="http://localhost:8000/v1",
        metadata={"help": "prover='server': base URL of the OpenAI-compatible vLLM server that serves mu."},
    )
    prover_model: str | None = field(
        default=None,
        metadata={"help": "prover='server': the served model name to ask. None: the one model the server serves."},
    )
    prover_timeout: float = field(
        default=600.0,
        metadata={"help": "prover='server': seconds one request may take before it is retried."},
    )
    prover_max_retries: int = field(
        default=3,
        metadata={
            "help": "prover='server': retries of a failed request (connection error, timeout, 5xx), with "
            "exponential backoff, before the run stops with an error."
        },
    )

    def check_prover_fields(self) -> None:
        def _check(ok, name, expected):
            check(ok, type(self).__name__, name, getattr(self, name), expected)

        _check(self.prover in PROVERS, "prover", f"one of {PROVERS}")
        for name in ("prover_num_samples", "prover_max_tokens", "prover_batch_size"):
            _check(getattr(self, name) >= 1, name, ">= 1")
        _check(self.prover_temperature is None or self.prover_temperature > 0, "prover_temperature",
               "None or > 0 (a greedy mu would give the same answer prover_num_samples times)")
        _check(bool(self.termination_suffix), "termination_suffix", f"a preset {tuple(SUFFIX_PRESETS)} or non-empty "
               "text")
        _check(self.prover_server_url.startswith(("http://", "https://")), "prover_server_url",
               "an http(s) URL such as 'http://localhost:8000/v1'")
        _check(self.prover_model is None or bool(self.prover_model.strip()), "prover_model",
               "None or a served model name")
        _check(self.prover_timeout > 0, "prover_timeout", "> 0 seconds")
        _check(self.prover_max_retries >= 0, "prover_max_retries", ">= 0")
