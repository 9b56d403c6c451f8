"""MRTConfig: GRPOConfig plus the fields of Meta Reinforcement Fine-Tuning."""

from dataclasses import dataclass, field

from trl import GRPOConfig

from mrt.checks import check
from mrt.fields import EpisodeFields, ProverFields
from mrt.prover.presets import ESTIMATORS
from mrt.rl.branched import PREFIX_SOURCES
from mrt.rl.modes import MODES, mode_class


@dataclass
class MRTConfig(GRPOConfig, EpisodeFields, ProverFields):
    r"""
    Configuration for [`MRTTrainer`]: every [`~trl.GRPOConfig`] field, the episode and prover fields MRT (STaR)
    shares (`mrt.fields`), and the MRT (RL) fields below.

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
            "choices": list(MODES),
        },
    )
    estimate_progress: bool | None = field(
        default=None,
        metadata={
            "help": "Run the prover. None: only when it changes the advantages (alpha > 0 or progress_mode is not "
            "'dense'). True: always, e.g. to log J and regret under plain GRPO."
        },
    )
    prover_on_eval: bool = field(
        default=False,
        metadata={
            "help": "Also run the prover on evaluation batches, to log eval_mrt/ metrics (J, progress, regret). "
            "False: evaluation scores completions as GRPOTrainer does (their advantages train nothing), at GRPO's "
            "cost."
        },
    )

    # Prover mu
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

    prover_reuse_generation_cache: bool = field(
        default=True,
        metadata={
            "help": "mu = the policy through transformers (no vLLM): the prover takes each completion's "
            "keys and values from the cache the batch's generation computed instead of reading the "
            "completion again. The same J up to float rounding; False reads every prover prompt anew (to "
            "rule the cache out)."
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
            "their reward_weights as GRPO combines them: also r in r - J_0 (termination_baseline) and Ĵ "
            "and the bonus (branched). None: all of them. E.g. ['accuracy'] to leave a format reward out of "
            "the progress signal."
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
        metadata={"help": "Drop (with a warning) training prompts longer than this many tokens, counted "
                  "as TRL tokenizes prompts (chat template with chat_template_kwargs, special tokens). None: "
                  "keep all."},
    )

    def __post_init__(self):
        super().__post_init__()
        self.check_episode_fields()
        self.check_prover_fields()
        _check(self.alpha >= 0 and self.alpha == self.alpha, "alpha", self.alpha, "a number >= 0")
        _check(self.progress_mode in MODES, "progress_mode", self.progress_mode, f"one of {tuple(MODES)}")
        _check(self.prover_estimator in ESTIMATORS, "prover_estimator", self.prover_estimator,
               f"one of {ESTIMATORS}")
        _check("{answer}" in self.prover_answer_format, "prover_answer_format", self.prover_answer_format,
               "text holding '{answer}'")
        _check(self.prover_estimator != "likelihood" or self.termination_suffix != "authors", "prover_estimator",
               self.prover_estimator, "'sampling' with the 'authors' suffix, which does not end at the answer slot "
               "(use termination_suffix='boxed' or your own suffix ending where the answer starts)")
        _check(self.prefix_source in PREFIX_SOURCES, "prefix_source", self.prefix_source,
               f"one of {PREFIX_SOURCES}")
        _check(bool(self.prefix_column), "prefix_column", self.prefix_column, "a column name")
        mode_class(self.progress_mode).check_config(self)
        _check(self.multi_objective_aggregation == "sum_then_normalize" or not self.runs_prover,
               "multi_objective_aggregation", self.multi_objective_aggregation,
               "'sum_then_normalize' while the prover runs (alpha > 0, progress_mode "
               "'termination_baseline' or estimate_progress): J is a weighted sum of rewards, which "
               "normalize_then_sum does not form")
        _check(bool(self.answer_column), "answer_column", self.answer_column, "a column name")
        _check(self.max_prompt_length is None or self.max_prompt_length >= 1, "max_prompt_length",
               self.max_prompt_length, "None or >= 1")
        _check(not self.prover_on_eval or self.runs_prover, "prover_on_eval", self.prover_on_eval,
               "False while the prover does not run (alpha = 0 with progress_mode 'dense', or 'branched')")
        if self.estimate_progress is False:
            _check(self.alpha == 0 and not mode_class(self.progress_mode).needs_prover, "estimate_progress", False,
                   "True or None while alpha > 0 or progress_mode != 'dense' (they need the prover)")

    @property
    def prover_token_budget(self) -> int:
        """The most tokens mu writes per answer: `prover_max_tokens`, but never more than a completion may have."""
        return min(self.prover_max_tokens, self.max_completion_length or self.prover_max_tokens)

    @property
    def runs_prover(self) -> bool:
        """Whether the separate prover mu runs (the form decides: `mrt.rl.modes`)."""
        return mode_class(self.progress_mode).runs_prover(self)


def _check(ok: bool, name: str, value, expected: str) -> None:
    check(ok, "MRTConfig", name, value, expected)
