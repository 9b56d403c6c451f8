"""Importing mrt changes no global state; its packages load a module only when one of its names is used."""

import json
import os
import subprocess
import sys

import pytest

from mrt.lazy import lazy_exports, lazy_package

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

# Imports the libraries mrt builds on first (their import-time settings are theirs), records the process's
# global state, imports every library module of mrt, runs the default reward once, and prints what changed.
PROBE = """
import importlib, importlib.util, json, logging, sys, warnings
import datasets, math_verify, sympy, torch, transformers, trl, trl.trainer.grpo_trainer, yaml
for optional in ("openai", "vllm"):
    if importlib.util.find_spec(optional):
        importlib.import_module(optional)

def state():
    named = [("root", logging.getLogger()), *logging.Logger.manager.loggerDict.items()]
    loggers = {name: [logger.level, logger.propagate, logger.disabled, [repr(f) for f in logger.filters],
                      [repr(h) for h in logger.handlers]]
               for name, logger in named if isinstance(logger, logging.Logger)}
    return {"warnings": [repr(f) for f in warnings.filters], "unraisablehook": repr(sys.unraisablehook),
            "loggers": loggers, "disabled": logging.root.manager.disable,
            "math_verify": [math_verify.parser.TIMEOUT_WARNING_SHOWN,
                            math_verify.grader.TIMEOUT_WARNING_SHOWN]}

def changes(before, after):
    keys = ("warnings", "unraisablehook", "disabled", "math_verify")
    out = [key for key in keys if before[key] != after[key]]
    fresh = [logging.NOTSET, True, False, [], []]  # a logger that getLogger made and nobody configured
    return out + ["logger " + name for name, config in after["loggers"].items()
                  if config != before["loggers"].get(name, fresh)]

before = state()
for name in MODULES:
    importlib.import_module(name)
after_import = state()
from mrt.rewards.accuracy import accuracy_reward
texts = ["\\\\boxed{12}", "\\\\boxed{9^{9^{9}}}"]  # the second: too big to evaluate
scores = accuracy_reward(prompts=[None] * 2, completions=texts, answer=["12", "12"])
after_reward = state()
print(json.dumps({"import": changes(before, after_import), "reward": changes(after_import, after_reward),
                  "scores": scores}))
"""

MODULES = ["mrt", "mrt.checks", "mrt.cli", "mrt.data", "mrt.episodes", "mrt.fields", "mrt.generation",
           "mrt.progress", "mrt.records", "mrt.tokens", "mrt.threads", "mrt.prover", "mrt.prover.estimate",
           "mrt.prover.scoring", "mrt.prover.server", "mrt.prover.transformers_policy",
           "mrt.prover.vllm_policy", "mrt.rewards", "mrt.rewards.accuracy", "mrt.rewards.registry",
           "mrt.rewards.combine", "mrt.rl", "mrt.rl.config", "mrt.rl.trainer", "mrt.evaluation", "mrt.star"]


def test_importing_mrt_changes_no_global_state():
    code = f"MODULES = {MODULES!r}\n{PROBE}"
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["import"] == [], f"importing mrt changed {report['import']}"
    # The reward's time bound guards sys.unraisablehook only while it runs; math-verify's own once-per-process
    # warning about disabled timeouts is all it leaves off.
    assert report["scores"] == [1.0, 0.0]
    assert report["reward"] == ["math_verify"], report


HEAVY = ("torch", "trl", "vllm", "openai", "math_verify", "mrt.prover.", "mrt.rewards.")
LOADED = "print(sorted(m for m in sys.modules if m.split('.')[0] in HEAVY or m.startswith(HEAVY)))"


def test_packages_load_no_module_until_a_name_is_used():
    code = "\n".join([f"import sys, mrt.prover, mrt.rewards; HEAVY = {HEAVY!r}", LOADED,
                       "mrt.prover.ProverServerError", LOADED])
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    first, second = result.stdout.strip().splitlines()[-2:]
    assert first == "[]", f"importing the packages loaded {first}"
    assert "'mrt.prover.server'" in second and "'mrt.prover.transformers_policy'" not in second


def test_lazy_exports_load_the_named_module_and_refuse_other_names():
    getattr_ = lazy_exports("mypackage", {"dumps": "json", "sep": "os"})
    assert getattr_("dumps") is json.dumps and getattr_("sep") == os.sep
    with pytest.raises(AttributeError, match="module 'mypackage' has no attribute 'loads'"):
        getattr_("loads")


def test_lazy_package_exports_each_modules_names():
    names, getattr_ = lazy_package("os", {"path": ("join", "sep"), "": ()})
    assert names == ["join", "sep"] and getattr_("join") is os.path.join
    import mrt.rewards

    assert mrt.rewards.weighted_sum.__module__ == "mrt.rewards.combine"
    assert "load_reward_funcs" in mrt.rewards.__all__
