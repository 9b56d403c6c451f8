"""The TRL drop-in contract: MRTTrainer trains wherever GRPOTrainer does, with the progress bonus in its advantages.

One parametrized test runs MRTTrainer with the prover on (alpha > 0) across the GRPOConfig features a user may set
(every TRL 1.16 loss type, both importance-sampling levels, several iterations or steps per generation, streamed and
dict-of-eval datasets, reward functions, a reward model, reward weights, truncation masking, prompt formats, a
dataset without an answer column). Each case trains, changes the weights, and its advantages carry alpha * progress.

The reward is a non-math function of the text that differs between almost any two random texts, so the prover's J
differs between prefixes and the bonus is non-zero: the bonus check cannot pass by having nothing to check.
"""

import re
from dataclasses import fields

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification
from trl import GRPOConfig

from mrt import MRTConfig, MRTTrainer

ALPHA = 0.5
COMMON = dict(
    use_cpu=True, bf16=False, report_to="none", gradient_checkpointing=False, save_strategy="no",
    per_device_train_batch_size=4, num_generations=2, max_completion_length=12, logging_steps=1,
    learning_rate=1e-2, beta=0.0, seed=0, dataloader_num_workers=0, max_steps=1,
)
MRT = dict(alpha=ALPHA, prover_num_samples=2, prover_max_tokens=3, episode_chunk_tokens=4, max_episodes=3)


def trl_loss_types() -> list[str]:
    """The loss types GRPOConfig documents ("Supported values are 'grpo', ..."), so a new one is tested too."""
    help_text = next(f for f in fields(GRPOConfig) if f.name == "loss_type").metadata["help"]
    listed = re.search(r"Supported values are (.*?)\. ", help_text).group(1)
    return re.findall(r"'(\w+)'", listed)


LOSS_TYPES = trl_loss_types()


def char_reward(completions, **kwargs):
    """Non-math reward in [0, 1): the character-code sum of the text modulo 97. Random texts almost never tie."""
    return [(sum(map(ord, _text(c))) % 97) / 97 for c in completions]


def vowel_reward(completions, **kwargs):
    """A second reward in [0, 1]: the share of vowels in the text."""
    texts = [_text(c) for c in completions]
    return [sum(ch in "aeiouAEIOU" for ch in t) / max(len(t), 1) for t in texts]


def _text(completion) -> str:
    return completion[-1]["content"] if isinstance(completion, list) else completion


QUESTIONS = ["What is 7 + 5?", "Name a colour.", "Count to three.", "Say hello.", "What is 2 * 3?",
             "Spell cat.", "Pick a number.", "What day is it?"]


def conversational_rows():
    return [{"prompt": [{"role": "user", "content": q}], "answer": str(i)} for i, q in enumerate(QUESTIONS)]


def plain_rows():
    return [{"prompt": f"Question: {q}\nAnswer:", "answer": str(i)} for i, q in enumerate(QUESTIONS)]


@pytest.fixture(scope="module")
def reward_model_path(tiny_model_path, tmp_path_factory):
    """A tiny random sequence-classification reward model (num_labels=1) with the tiny model's tokenizer."""
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    folder = tmp_path_factory.mktemp("reward_model")
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


# case id -> (config overrides, dataset kind, reward kind, eval kind)
CASES = {
    **{f"loss_type={lt}": (dict(loss_type=lt, importance_sampling_level="sequence" if lt == "luspo" else "token"),
                           "conversational", "char", None) for lt in LOSS_TYPES},
    "importance_sampling_level=token": (dict(importance_sampling_level="token", num_iterations=2, max_steps=2),
                                        "conversational", "char", None),
    "importance_sampling_level=sequence": (dict(importance_sampling_level="sequence", num_iterations=2, max_steps=2),
                                           "conversational", "char", None),
    "num_iterations=2": (dict(num_iterations=2, max_steps=2), "conversational", "char", None),
    "steps_per_generation=2": (dict(steps_per_generation=2, max_steps=2), "conversational", "char", None),
    "iterable_dataset": ({}, "iterable", "char", None),
    # prover_on_eval: evaluation runs the prover too, so its eval_mrt/ metrics are logged (off by default).
    "eval_dataset_dict": (dict(per_device_eval_batch_size=4, prover_on_eval=True), "conversational", "char", "dict"),
    "custom_reward_function": ({}, "conversational", "char", None),
    "reward_model": ({}, "conversational", "model", None),
    "two_rewards_with_weights": (dict(reward_weights=[0.7, 0.3]), "conversational", "two", None),
    # 12 completions: with the end-of-turn bias below each is cut with probability ~0.3, so a batch with both kinds
    # is near certain (~99%) under any random stream, not only this seed's.
    "mask_truncated_completions": (dict(mask_truncated_completions=True, per_device_train_batch_size=12),
                                   "conversational", "char", None),
    "conversational_prompts": ({}, "conversational", "char", None),
    "plain_text_prompts": ({}, "plain", "char", None),
    "no_answer_column": ({}, "no_answer", "char", None),
}


def build_dataset(kind):
    if kind == "plain":
        return Dataset.from_list(plain_rows())
    dataset = Dataset.from_list(conversational_rows())
    if kind == "no_answer":
        return dataset.remove_columns("answer")
    if kind == "iterable":
        return dataset.to_iterable_dataset()
    return dataset


def build_trainer(tiny_model_path, tmp_path, reward_model_path, overrides, data_kind, reward_kind, eval_kind):
    overrides = dict(overrides)
    if "mask_truncated_completions" in overrides:
        # The random model almost never stops by itself: favour the end-of-turn token (about 0.09 a token), so that
        # some completions end before the limit (they train) and others are cut and masked.
        tok = AutoTokenizer.from_pretrained(tiny_model_path)
        overrides["generation_kwargs"] = {"sequence_bias": {(tok.eos_token_id,): 8.5}}
    if eval_kind == "dict":
        overrides.update(eval_strategy="steps", eval_steps=1)
    args = MRTConfig(output_dir=str(tmp_path / "out"), **{**COMMON, **MRT, **overrides})
    rewards = {"char": char_reward, "two": [char_reward, vowel_reward], "model": reward_model_path}[reward_kind]
    eval_dataset = None
    if eval_kind == "dict":
        eval_dataset = {"first": build_dataset("conversational").select(range(4)),
                        "second": build_dataset("plain").select(range(4))}
    return MRTTrainer(model=tiny_model_path, reward_funcs=rewards, args=args, train_dataset=build_dataset(data_kind),
                      eval_dataset=eval_dataset)


def assert_bonus(trainer):
    """The last generation batch's advantages are the sequence advantage plus alpha * progress of each token's
    episode, and at least one completion has non-zero progress (so the check is not vacuous)."""
    record = trainer.last_progress
    adv, seq = record.advantages, record.sequence_advantages
    assert adv.dim() == 2 and adv.size(0) == seq.size(0) == len(record.ends) == len(record.j_values)
    with_bonus = 0
    for i, (ends, js) in enumerate(zip(record.ends, record.j_values)):
        if not ends or any(j is None for j in js):
            continue
        start = 0
        for k, end in enumerate(ends):
            prog = js[k + 1] - js[k]
            if end > start and abs(prog) > 1e-6:
                with_bonus += 1
                expected = torch.full((end - start,), float(seq[i]) + ALPHA * prog)
                assert torch.allclose(adv[i, start:end].float(), expected, atol=1e-5), (i, k, adv[i], seq[i], js)
                assert not torch.allclose(adv[i, start:end].float(), seq[i].float().expand(end - start))
            start = end
    assert with_bonus > 0, f"no episode made progress: J={record.j_values}"


def test_every_trl_loss_type_is_covered():
    # TRL 1.16 documents these eight; the parametrized test below runs each one.
    assert {"grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"} <= set(LOSS_TYPES), LOSS_TYPES


@pytest.mark.parametrize("case", list(CASES))
def test_mrt_trains_as_grpo_does_with_the_bonus(case, tiny_model_path, reward_model_path, tmp_path):
    overrides, data_kind, reward_kind, eval_kind = CASES[case]
    trainer = build_trainer(tiny_model_path, tmp_path, reward_model_path, overrides, data_kind, reward_kind,
                            eval_kind)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == trainer.args.max_steps
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert changed, f"{case}: no parameter changed"
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert "mrt/J_0" in logged and "mrt/progress" in logged, sorted(logged)
    if "mask_truncated_completions" in overrides:
        clipped = [e["completions/clipped_ratio"] for e in trainer.state.log_history if "completions/clipped_ratio" in e]
        assert clipped and 0 < clipped[-1] < 1, f"want some truncated and some finished completions, got {clipped}"
    if eval_kind == "dict":
        # TRL names the loss per eval dataset and logs its other metrics (ours too) as eval_*, once per dataset.
        evals = [e for e in trainer.state.log_history if "eval_first_loss" in e or "eval_second_loss" in e]
        assert len(evals) == 2 and all("eval_mrt/J_0" in e and "eval_mrt/progress" in e for e in evals), evals
    assert_bonus(trainer)


# ---------------------------------------------------------------- the private TRL names mrt relies on (mrt.rl.trl_api)


def _trl_private_names() -> set[str]:
    """Private names TRL's GRPOTrainer and transformers' Trainer define: methods, instance and class attributes."""
    import inspect

    import transformers.trainer
    import trl.trainer.grpo_trainer

    names = set()
    for module in (trl.trainer.grpo_trainer, transformers.trainer):
        source = inspect.getsource(module)
        names |= set(re.findall(r"self\.(_[a-zA-Z]\w*)\s*[:=]", source))
        names |= set(re.findall(r"def (_[a-zA-Z]\w*)\(", source))
        names |= set(re.findall(r"^    (_[a-zA-Z]\w*)\s*=", source, re.MULTILINE))
    return names


def test_every_private_trl_name_mrt_uses_is_listed():
    from pathlib import Path

    from mrt.rl.trl_api import PRIVATE_NAMES

    root = Path(__file__).resolve().parents[1]
    used = {}
    for path in [*(root / "src" / "mrt").rglob("*.py"), *(root / "scripts").rglob("*.py")]:
        text = path.read_text()
        pattern = r"\b(?:self|trainer|t)\.(_[a-zA-Z]\w*)|def (_[a-zA-Z]\w*)\(self|^    (_[a-zA-Z]\w*)\s*="
        for match in re.finditer(pattern, text, re.MULTILINE):
            used.setdefault(next(g for g in match.groups() if g), set()).add(path.relative_to(root).as_posix())
    trl = _trl_private_names()
    unlisted = {name: sorted(used[name]) for name in used.keys() & trl}
    for entry in PRIVATE_NAMES:
        unlisted.pop(entry.name, None)
    assert not unlisted, f"private TRL names used but not listed in mrt.rl.trl_api: {unlisted}"
    # The check can fail: the trainer's overrides are TRL names it finds.
    assert {"_generate_and_score_completions", "_calculate_rewards", "_tokenizer"} <= used.keys() & trl


def test_every_listed_private_name_exists_as_mrt_uses_it(tiny_model_path, tmp_path):
    import inspect

    from transformers import Trainer
    from trl import GRPOTrainer

    from mrt.rl.trl_api import PRIVATE_NAMES

    owners = {"GRPOTrainer": GRPOTrainer, "Trainer": Trainer}
    args = MRTConfig(output_dir=str(tmp_path / "out"), **COMMON)
    trainer = MRTTrainer(model=tiny_model_path, reward_funcs=char_reward, args=args,
                         train_dataset=Dataset.from_list(conversational_rows()))
    for entry in PRIVATE_NAMES:
        owner = owners[entry.owner]
        if entry.kind in ("override", "call"):
            method = getattr(owner, entry.name, None)
            assert callable(method), f"{entry.owner}.{entry.name} is gone"
            params = list(inspect.signature(method).parameters)[1:]
            assert params[:len(entry.parameters)] == list(entry.parameters), (entry.name, params)
            if entry.kind == "override":
                assert entry.name in vars(MRTTrainer), f"listed as overridden, but MRTTrainer does not: {entry.name}"
        elif entry.kind == "class":
            assert entry.name in vars(GRPOTrainer) and entry.name in vars(MRTTrainer), entry.name
        else:
            assert hasattr(trainer, entry.name), f"a GRPOTrainer has no {entry.name} any more"
    # The shapes of the attributes, as the use column says.
    assert {"train", "eval"} <= set(trainer._metrics) and {"advantages", "extra"} <= set(trainer._logs)
    assert isinstance(trainer._pending_extra_logs, dict) and hasattr(trainer._dist, "summon_full_params")
    assert set(GRPOTrainer._paper) == {"title", "id", "citation"}


def test_the_listed_range_is_the_pinned_one_and_installed():
    import tomllib
    from importlib.metadata import version
    from pathlib import Path

    from packaging.requirements import Requirement

    from mrt.rl.trl_api import CHECKED_ON

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    pins = {r.name: r.specifier for r in map(Requirement, project["dependencies"]) if r.name in CHECKED_ON}
    assert {name: str(spec) for name, spec in pins.items()} == \
        {name: str(Requirement(f"{name}{spec}").specifier) for name, spec in CHECKED_ON.items()}
    assert all(version(name) in spec for name, spec in pins.items())
