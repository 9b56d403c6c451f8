"""`progress_mode: dense` (the authors' later "MRT-online"): GRPO's advantage plus alpha times the progress of the
episode that holds the token, with mu at every episode boundary of every rollout."""

from mrt.rl.modes.base import ProgressMode


class DenseMode(ProgressMode):
    """GRPO's rollouts and sequence advantage; the per-episode bonus of the base class. With alpha = 0 it is GRPO."""

    name = "dense"
