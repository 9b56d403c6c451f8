"""The interface of a progress form (`progress_mode`): what it asks of the prover, how it changes rollouts and how it
turns rewards and J into advantages. MRTTrainer builds one form in `__init__` and forwards TRL's hooks to it."""

from typing import ClassVar

import torch

from mrt.progress import episode_bonus, token_advantages


class ProgressMode:
    """A progress form. The class says how the form uses the prover (read by `MRTConfig`); an instance is built by
    the trainer with the trainer itself, whose parts it reads. Every rollout hook is a no-op here: a form that keeps
    GRPO's rollouts overrides none of them."""

    name: ClassVar[str]
    uses_prover: ClassVar[bool] = True  # may run the separate prover mu at all
    needs_prover: ClassVar[bool] = False  # needs J whatever alpha is (alpha = 0 is not GRPO)

    def __init__(self, trainer):
        self.trainer = trainer

    # ------------------------------------------------------------ the config

    @classmethod
    def check_config(cls, args) -> None:
        """The form's own checks of an MRTConfig (through `mrt.checks.check`, naming the field)."""

    @classmethod
    def runs_prover(cls, args) -> bool:
        """Whether mu runs: `estimate_progress` when set, else when the advantages need it."""
        if not cls.uses_prover:
            return False
        if args.estimate_progress is not None:
            return args.estimate_progress
        return args.alpha > 0 or cls.needs_prover

    def summary(self) -> str | None:
        """A line for `settings_summary` when mu does not run (None: the default line)."""
        return None

    # ------------------------------------------------------------ rollouts (GRPO's hooks, forwarded by the trainer)

    def generate_and_score(self, run, inputs: list[dict]) -> dict:
        """One generation batch: `run(inputs)` is the trainer's scoring (GRPO's, then J's advantages)."""
        return run(inputs)

    def tokenize_prompts(self, prompt_ids, images, fields):
        """GRPO's tokenized prompts of the batch, as the form wants them generated from."""
        return prompt_ids, images, fields

    def generate_single_turn(self, generate, prompt_ids, *args, **kwargs):
        """`generate` is the trainer's (GRPO's) generation of `prompt_ids`."""
        return generate(prompt_ids, *args, **kwargs)

    def generated(self, completion_ids) -> None:
        """Called with this rank's completion ids after GRPO's `_generate` logged its completion metrics."""

    def calculate_rewards(self, score, inputs, prompts, completions, completion_ids_list) -> torch.Tensor:
        """`score` is GRPO's reward computation (gathered over ranks)."""
        return score(inputs, prompts, completions, completion_ids_list)

    def save(self, folder: str) -> None:
        """Write the form's state into a checkpoint folder."""

    def load(self, checkpoint: str) -> None:
        """Read the form's state back from a checkpoint folder."""

    # ------------------------------------------------------------ advantages from rewards and J

    def sequence_advantages(self, grpo: torch.Tensor, outcomes: list[float | None], j_rows: list[list],
                            mode: str) -> torch.Tensor:
        """(B,) the sequence part of the advantage: GRPO's group-normalised one."""
        return grpo

    def advantages(self, grpo: torch.Tensor, outcomes: list[float | None], j_rows: list[list], ends: list[list[int]],
                   progress_rows: list[list[float]], width: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(sequence (B,), per-token (B, T)) advantages: the sequence part plus alpha times the progress of the
        token's episode. `outcomes`: r per completion; `j_rows`: J_0..J_H; `ends`: episode ends; `mode`: train or
        eval."""
        sequence = self.sequence_advantages(grpo, outcomes, j_rows, mode).to(grpo.device)
        bonus = episode_bonus(ends, progress_rows, width).to(grpo.device)
        return sequence, token_advantages(sequence, bonus, self.trainer.args.alpha)
