"""MRT: Meta Reinforcement Fine-Tuning on top of TRL's GRPOTrainer."""

from mrt.quiet import quiet_cpu_start

__version__ = "0.1.0"

quiet_cpu_start()  # before TRL and vLLM are imported through mrt: see mrt/quiet.py

_LAZY = {
    "MRTConfig": "mrt.config",
    "MRTTrainer": "mrt.trainer",
    "accuracy_reward": "mrt.rewards",
    "make_accuracy_reward": "mrt.rewards",
    "resolve_model": "mrt.models",
}

__all__ = list(_LAZY)


def __getattr__(name):
    # Import heavy modules (torch, trl) only when a name is used.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mrt' has no attribute {name!r}")
