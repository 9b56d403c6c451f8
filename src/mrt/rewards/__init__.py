"""Reward functions with TRL's signature: the default math-verify accuracy reward (accuracy), reasoning-gym
task scorers (reasoning_gym), reward names as `trl grpo` takes them (registry) and the weighted sum of several
rewards (combine). Importing the package loads none of them; a name loads its module when first used."""

from mrt.lazy import lazy_package

__all__, __getattr__ = lazy_package(__name__, {
    "accuracy": ("accuracy_reward", "make_accuracy_reward", "with_eos_ids"),
    "combine": ("weighted_sum",),
    "reasoning_gym": ("reasoning_gym_reward",),
    "registry": ("load_reward_funcs",),
})
