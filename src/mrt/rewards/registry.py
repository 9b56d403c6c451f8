"""Reward functions by name, as `trl grpo` takes them: TRL's registry names, MRT's own rewards, or import paths
('package.module.function' / 'package.module:function', looked up from the working directory too)."""

import importlib
import os
import sys

from mrt.checks import check


def _trl_reward(name: str, **options):
    def load(answer_column: str):
        func = getattr(importlib.import_module("trl.rewards"), name)
        return func(**options) if options else func

    return load


def _default_reward(answer_column: str):
    from mrt.rewards.accuracy import make_accuracy_reward

    return make_accuracy_reward(answer_column)


def _reasoning_gym_reward(answer_column: str):
    from mrt.rewards.reasoning_gym import reasoning_gym_reward  # the `reasoning` extra

    return reasoning_gym_reward


DEFAULT_REWARD = "mrt_accuracy"
# trl/scripts/grpo.py's names (with its values for the overlong punishment), then MRT's own rewards.
REWARD_NAMES = {
    "accuracy_reward": _trl_reward("accuracy_reward"),
    "reasoning_accuracy_reward": _trl_reward("reasoning_accuracy_reward"),
    "think_format_reward": _trl_reward("think_format_reward"),
    "get_soft_overlong_punishment": _trl_reward("get_soft_overlong_punishment", max_completion_len=1280,
                                                soft_punish_cache=256),
    DEFAULT_REWARD: _default_reward,
    "reasoning_gym_reward": _reasoning_gym_reward,
}


def check_reward_names(names: list[str] | None, owner: str = "MRTScriptArguments") -> None:
    """Each name is one `trl grpo` knows, MRT's default reward, or an import path (a '.' or ':' in it); an error
    names `owner`'s field reward_funcs."""
    for name in names or []:
        check(name in REWARD_NAMES or "." in name or ":" in name, owner, "reward_funcs",
              names, f"names among {sorted(REWARD_NAMES)} or import paths 'package.module.function' / "
              f"'package.module:function' (got {name!r})")


def _import_reward(path: str):
    module, sep, name = path.partition(":")
    if not sep:
        module, _, name = path.rpartition(".")
    if os.getcwd() not in sys.path:  # a my_rewards.py in the working directory, as `trl grpo` allows
        sys.path.insert(0, os.getcwd())
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"MRTScriptArguments.reward_funcs: cannot load {path!r} ({error}).") from error


def load_reward_funcs(names: list[str] | None, answer_column: str = "answer") -> list | None:
    """The reward functions `names` stand for: names `trl grpo` knows, 'mrt_accuracy' (the default reward on
    `answer_column`), or import paths 'package.module.function' / 'package.module:function', looked up from
    the working directory too. None (or []) stays None: the trainer's default reward."""
    if not names:
        return None
    check_reward_names(names)
    return [REWARD_NAMES[n](answer_column) if n in REWARD_NAMES else _import_reward(n) for n in names]


def uses_default_reward(names: list[str] | None) -> bool:
    """Whether the rewards named include MRT's default reward (which reads the gold in answer_column)."""
    return not names or DEFAULT_REWARD in names
