"""MRT: Meta Reinforcement Fine-Tuning on top of TRL's GRPOTrainer.

Importing mrt (or any of its library modules) changes no global state: no warning or logging filter, no hook.
The command line sets what it needs (`mrt.quiet.start_command`, called by `mrt.cli.main` and the scripts)."""

from mrt.lazy import lazy_package

__version__ = "0.1.0"

# Heavy modules (torch, trl) are imported only when a name is used.
__all__, __getattr__ = lazy_package(__name__, {
    "rl.config": ("MRTConfig",),
    "rl.trainer": ("MRTTrainer",),
    "rewards.accuracy": ("accuracy_reward", "make_accuracy_reward"),
    "models": ("resolve_model",),
})
