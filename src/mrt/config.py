"""MRTConfig: GRPOConfig plus the fields of Meta Reinforcement Fine-Tuning."""

from dataclasses import dataclass, field

from trl import GRPOConfig

from mrt.checks import check
from mrt.episodes import DEFAULT_MARKERS, FALLBACKS, EpisodeRules, no_empty_tag

AUTHORS_SUFFIX = (
    "Time is up.\n\nGiven the time I've spent and the approaches I've tried, I should stop thinking and "
    "formulate a final answer based on what I already have.\n"
)

# Named termination suffixes: (text before the end-of-thinking tag, text after it).
SUFFIX_PRESETS = {
    # The authors' suffix: mu then writes a whole answer.
    "authors": (AUTHORS_SUFFIX, ""),
    # Ends at the answer slot, so mu writes only the answer (a handful of tokens).
    "boxed": (AUTHORS_SUFFIX, "\nThe final answer is $\\boxed{"),
}

PROGRESS_MODES = ("dense", "termination_baseline", "branched")
PREFIX_SOURCES = ("rollouts", "dataset")
PROVERS = ("policy", "server")
ESTIMATORS = ("sampling", "likelihood")


@dataclass
class MRTConfig(GRPOConfig):
    r"""
    Configuration for [`MRTTrainer`]: every [`~trl.GRPOConfig`] field plus the MRT fields below.

    The per-token advantage is `A_t = A(z) + alpha * progress_{j(t)}`, where `progress_j = J_j - J_{j-1}` is the
    change in the prover's success rate made by the episode `j` that holds token `t`.
    """

    # Progress bonus
    alpha: float = field(
        default=1.0,
        metadata={"help": "Progress coefficient alpha: weight of the dense progress bonus. 0 turns MRT into GRPO."},
    )
    progress_mode: str = field(
        default="dense",
        metadata={
            "help": "How progress enters the advantage. 'dense': GRPO's group-normalised advantage plus "
            "alpha * progress of the token's episode. 'termination_baseline': the sequence advantage is r - J_0 "
            "(the prover's success from the prompt alone replaces the group mean), plus the same dense bonus. "
            "'branched': the paper's MRT (RL), Algorithm 2 (docs/branched.md): a stale prefix cut after a random "
            "number of episodes; half of each group continues it, half terminates at once; a continuing "
            "completion's advantage is its GRPO advantage within its half plus alpha * (r - mean reward of the "
            "terminating half).",
            "choices": list(PROGRESS_MODES),
        },
    )
    estimate_progress: bool | None = field(
        default=None,
        metadata={
            "help": "Run the prover. None: only when it changes the advantages (alpha > 0 or progress_mode is not "
            "'dense'). True: always, e.g. to log J and regret under plain GRPO."
        },
    )

    # Episodes
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

    # Prover mu
    prover: str = field(
        default="policy",
        metadata={
            "help": "Where mu comes from. 'policy': the current policy through the trainer's own generation engine "
            "(TRL's vLLM engine or client when `use_vllm`, else the transformers model; no second copy). "
            "'server': a frozen model served by `vllm serve MODEL --enable-prefix-caching` at `prover_server_url` "
            "(it must use the policy's tokenizer).",
            "choices": list(PROVERS),
        },
    )
    prover_estimator: str = field(
        default="sampling",
        metadata={
            "help": "How J_j is estimated. 'sampling': the mean 0/1 reward of `prover_num_samples` answers of mu. "
            "'likelihood': the probability that mu writes `prover_answer_format` (the gold answer) right after the "
            "termination suffix, by teacher forcing: no sampling noise, but exact-match only, so it needs a suffix "
            "that ends at the answer slot.",
            "choices": list(ESTIMATORS),
        },
    )
    prover_answer_format: str = field(
        default="{answer}}$",
        metadata={
            "help": "Likelihood estimator: the text whose probability is J, with '{answer}' replaced by the gold "
            "answer. The default closes the 'boxed' suffix's '$\\boxed{' the way the model writes it: a tokenizer "
            "that has '}$' as one token gives a plain '}' little probability."
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
            "exponential backoff, before training stops with an error."
        },
    )

    # Branched mode (progress_mode='branched', docs/branched.md)
    prefix_source: str = field(
        default="rollouts",
        metadata={
            "help": "progress_mode='branched': where each problem's prefix comes from. 'rollouts': the trainer's "
            "own rollout from the last time it saw the problem (empty the first time; kept in checkpoints). "
            "'dataset': one of the earlier completions in the dataset column `prefix_column` "
            "(scripts/make_prefixes.py writes it).",
            "choices": list(PREFIX_SOURCES),
        },
    )
    prefix_column: str = field(
        default="prefixes",
        metadata={
            "help": "prefix_source='dataset': the column with each problem's earlier completions (a text, a "
            "list of texts or a list of token-id lists; an empty list means no prefix)."
        },
    )

    progress_reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Reward functions (names or indices into reward_funcs) that define success for J, combined with "
            "their reward_weights as GRPO combines them. None: all of them. E.g. ['accuracy'] to leave a format "
            "reward out of the progress signal."
        },
    )

    # Data
    answer_column: str = field(
        default="answer",
        metadata={
            "help": "Dataset column with the gold answer: read by the default reward (math-verify, used when "
            "reward_funcs is None) and by the likelihood estimator; other datasets need not have it."
        },
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Drop (with a warning) training prompts longer than this many tokens. None: keep all."},
    )

    def __post_init__(self):
        super().__post_init__()
        self.episode_markers = list(self.episode_markers or [])
        self.end_of_thinking_tag = no_empty_tag(self.end_of_thinking_tag)
        self.episode_rules(None)  # EpisodeRules checks the episode fields
        _check(self.alpha >= 0 and self.alpha == self.alpha, "alpha", self.alpha, "a number >= 0")
        _check(self.progress_mode in PROGRESS_MODES, "progress_mode", self.progress_mode, f"one of {PROGRESS_MODES}")
        _check(self.prover in PROVERS, "prover", self.prover, f"one of {PROVERS}")
        _check(self.prover_estimator in ESTIMATORS, "prover_estimator", self.prover_estimator,
               f"one of {ESTIMATORS}")
        _check("{answer}" in self.prover_answer_format, "prover_answer_format", self.prover_answer_format,
               "text holding '{answer}'")
        _check(self.prover_estimator != "likelihood" or self.termination_suffix != "authors", "prover_estimator",
               self.prover_estimator, "'sampling' with the 'authors' suffix, which does not end at the answer slot "
               "(use termination_suffix='boxed' or your own suffix ending where the answer starts)")
        _check(self.prover_num_samples >= 1, "prover_num_samples", self.prover_num_samples, ">= 1")
        _check(self.prover_max_tokens >= 1, "prover_max_tokens", self.prover_max_tokens, ">= 1")
        _check(self.prover_batch_size >= 1, "prover_batch_size", self.prover_batch_size, ">= 1")
        _check(self.prover_temperature is None or self.prover_temperature > 0, "prover_temperature",
               self.prover_temperature, "None or > 0")
        _check(bool(self.termination_suffix), "termination_suffix", self.termination_suffix,
               f"a preset {tuple(SUFFIX_PRESETS)} or non-empty text")
        _check(self.prover_server_url.startswith(("http://", "https://")), "prover_server_url",
               self.prover_server_url, "an http(s) URL such as 'http://localhost:8000/v1'")
        _check(self.prover_model is None or bool(self.prover_model.strip()), "prover_model", self.prover_model,
               "None or a served model name")
        _check(self.prover_timeout > 0, "prover_timeout", self.prover_timeout, "> 0 seconds")
        _check(self.prover_max_retries >= 0, "prover_max_retries", self.prover_max_retries, ">= 0")
        _check(self.prefix_source in PREFIX_SOURCES, "prefix_source", self.prefix_source,
               f"one of {PREFIX_SOURCES}")
        _check(bool(self.prefix_column), "prefix_column", self.prefix_column, "a column name")
        if self.progress_mode == "branched":
            _check(self.num_generations is not None and self.num_generations >= 2 and self.num_generations % 2 == 0,
                   "num_generations", self.num_generations, "an even number >= 2 with progress_mode='branched' "
                   "(half of each group continues the prefix, half terminates)")
            _check(self.estimate_progress is None, "estimate_progress", self.estimate_progress,
                   "None with progress_mode='branched' (it runs no separate prover)")
            _check(not (self.mask_truncated_completions and self.prover_stop), "mask_truncated_completions",
                   self.mask_truncated_completions, "False with progress_mode='branched' and prover_stop: the "
                   "terminating half ends at a stop string, not at EOS, and would be masked as truncated")
            local = self.per_device_train_batch_size * (self.steps_per_generation or 1)
            _check(local % self.num_generations == 0, "per_device_train_batch_size",
                   self.per_device_train_batch_size, f"a value for which per_device_train_batch_size x "
                   f"steps_per_generation ({self.steps_per_generation}) is a multiple of num_generations "
                   f"({self.num_generations}) with progress_mode='branched', so that every process holds whole groups")
            _check(self.multi_objective_aggregation == "sum_then_normalize", "multi_objective_aggregation",
                   self.multi_objective_aggregation, "'sum_then_normalize' with progress_mode='branched'")
        _check(bool(self.answer_column), "answer_column", self.answer_column, "a column name")
        _check(self.max_prompt_length is None or self.max_prompt_length >= 1, "max_prompt_length",
               self.max_prompt_length, "None or >= 1")
        if self.estimate_progress is False:
            _check(self.alpha == 0 and self.progress_mode == "dense", "estimate_progress", False,
                   "True or None while alpha > 0 or progress_mode != 'dense' (they need the prover)")

    def episode_rules(self, end_of_thinking_tag: str | None) -> EpisodeRules:
        """The episode rules of these settings (with the resolved end-of-thinking tag)."""
        fields = {"markers": "episode_markers", "min_paragraphs_between": "min_paragraphs_between",
                  "max_episodes": "max_episodes", "fallback": "episode_fallback", "chunk_tokens": "episode_chunk_tokens"}
        try:
            return EpisodeRules(markers=tuple(self.episode_markers), min_paragraphs_between=self.min_paragraphs_between,
                                max_episodes=self.max_episodes, fallback=self.episode_fallback,
                                chunk_tokens=self.episode_chunk_tokens, end_of_thinking_tag=end_of_thinking_tag)
        except ValueError as error:
            name = next((f for rule, f in fields.items() if str(error).startswith(rule)), "episode_markers")
            raise ValueError(f"MRTConfig.{name} = {getattr(self, name)!r} is invalid: {error}.") from None

    @property
    def runs_prover(self) -> bool:
        if self.progress_mode == "branched":
            return False  # the terminating half of each group is mu's answer: no separate prover
        if self.estimate_progress is not None:
            return self.estimate_progress
        return self.alpha > 0 or self.progress_mode != "dense"


def _check(ok: bool, name: str, value, expected: str) -> None:
    check(ok, "MRTConfig", name, value, expected)
