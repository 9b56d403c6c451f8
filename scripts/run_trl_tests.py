"""Run a slice of TRL's own GRPOTrainer tests with GRPOTrainer, or with MRTTrainer/MRTConfig in their place, offline.

TRL's `tests/test_grpo_trainer.py` loads hub models (`trl-internal-testing/tiny-...`) and the `zen` dataset. `setup`
copies the test file and its helpers from a git snapshot of TRL into DIR/tests and builds local stand-ins in DIR
under the hub ids (tests run with DIR as working directory, so `from_pretrained("trl-internal-testing/...")` and
`load_dataset(...)` read those folders): tiny random Qwen2/Qwen3 models whose tokenizer is SmolLM2's with the
special tokens moved to Qwen's ids (pad 151643, eos 151645, as the tests' mocked generate expects), and a small
prompt-only dataset in the zen configs. `run` writes DIR/conftest.py (TRL_SUITE_TRAINER=mrt swaps the test module's
GRPOTrainer/GRPOConfig for MRTTrainer/MRTConfig) and runs the slice below with pytest, one process.

The commands (2 CPU cores; one pytest process at a time):

    .venv/bin/python scripts/run_trl_tests.py setup                       # once, ~1 min (DIR=/tmp/trl_tests)
    nice -n 10 .venv/bin/python scripts/run_trl_tests.py run --trainer grpo
    nice -n 10 .venv/bin/python scripts/run_trl_tests.py run --trainer mrt
    nice -n 10 .venv/bin/python scripts/run_trl_tests.py run --trainer mrt -- -k test_train_with_eval   # a subset
    # the 5-test subset timed with both trainers (issue 21 section 5):
    nice -n 10 .venv/bin/python scripts/run_trl_tests.py run --trainer grpo -- --durations=0 -k "test_train_with_eval \
        or test_train_with_mask_truncated_completions or test_no_reward_source_raises or test_train_reward_func_standard"

`run` prints pytest's summary line and the wall time. Options: --dir DIR, --trl_repo (a git dir of TRL;
default /work/.mirror/huggingface+trl/repo, whose HEAD is TRL 1.10.0.dev0, the newest snapshot there: the sdist of
the installed TRL 1.16 ships no tests), --rev (default HEAD).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HUB = "trl-internal-testing"
TEST = "tests/test_grpo_trainer.py"
# Qwen2.5's special-token ids and vocabulary size (the tests' mocked generate writes 151645 as EOS).
SPECIAL_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
VOCAB = 151936

# The slice: TestGRPOTrainer's tests that need no optional package (peft, vLLM, liger, jmespath, vision), no GPU and
# only the tiny Qwen2/Qwen3 models; 51 tests.
SLICE = [
    "test_init_minimal",
    "test_train[trl-internal-testing/tiny-Qwen2ForCausalLM-2.5]",
    "test_train_dataset_format",
    *[f"test_train_loss_types[{loss}-False]" for loss in ("bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")],
    "test_train_with_eval",
    "test_train_with_num_generations_eval",
    "test_train_with_iterable_dataset",
    "test_train_eval_on_start",
    "test_train_multiple_iterations",
    "test_train_reward_func_standard",
    "test_train_reward_func_conversational",
    "test_train_multiple_reward_funcs",
    "test_train_sync_and_async_reward_funcs",
    "test_train_multiple_reward_funcs_with_None_output",
    "test_train_multiple_reward_funcs_with_weights",
    "test_train_multiple_mixed_reward_funcs",
    "test_train_reward_func_additional_column",
    "test_train_with_sync_ref_model",
    "test_train_beta_non_zero",
    "test_train_with_pad_to_multiple_of",
    "test_train_with_off_policy_mask",
    "test_train_with_entropy_filter",
    "test_train_with_additional_generation_kwargs",
    "test_train_normalize_then_sum_aggregation",
    "test_train_scale_rewards",
    "test_train_with_mask_truncated_completions",
    "test_train_with_mask_truncated_completions_all_masked",
    "test_warning_raised_all_rewards_none",
    "test_train_num_generations_larger_than_batch_size",
    "test_train_with_generation_kwargs",
    "test_train_with_reward_func_accessing_trainer_state",
    "test_train_reward_func_with_log_extra",
    "test_train_reward_func_with_log_metric",
    "test_train_sequence_importance_sampling",
    "test_train_with_chat_template_kwargs",
    "test_no_reward_source_raises",
    "test_dataset_required_without_environment",
    "test_mismatched_reward_processing_classes_length",
    "test_correct_reward_processing_classes_list",
    "test_single_reward_model_with_single_processing_class",
]

CONFTEST = '''"""Written by scripts/run_trl_tests.py. TRL_SUITE_TRAINER=mrt: the test module's GRPOTrainer/GRPOConfig are
MRTTrainer/MRTConfig (MRT's defaults otherwise, so the prover runs on every training batch)."""
import os

import pytest
from trl import import_utils

# The snapshot's test helpers import a few availability checks this TRL does not have: their packages count as absent.
for _name in ("is_joblib_available",):
    if not hasattr(import_utils, _name):
        setattr(import_utils, _name, lambda *args, **kwargs: False)


@pytest.fixture(autouse=True)
def _trainer_under_test(request, monkeypatch):
    if os.environ.get("TRL_SUITE_TRAINER") == "mrt" and hasattr(request.module, "GRPOTrainer"):
        from mrt import MRTConfig, MRTTrainer

        monkeypatch.setattr(request.module, "GRPOTrainer", MRTTrainer)
        monkeypatch.setattr(request.module, "GRPOConfig", MRTConfig)
'''

PROMPTS = ["The sky is", "Two plus two equals", "A good name for a cat is", "The capital of France is",
           "Water boils at", "My favourite colour is", "The first letter of the alphabet is", "Cats like to",
           "The opposite of hot is", "Seven times six is", "A square has", "The sun rises in the",
           "Rain falls from", "A week has", "Bread is made from", "Snow is", "The moon orbits"]


def copy_tests(trl_repo: str, rev: str, out: Path) -> None:
    (out / "tests").mkdir(parents=True, exist_ok=True)
    for name in ("__init__.py", "conftest.py", "testing_utils.py", "testing_constants.py", "test_grpo_trainer.py"):
        text = subprocess.run(["git", "-C", trl_repo, "show", f"{rev}:tests/{name}"], check=True,
                              capture_output=True, text=True).stdout
        (out / "tests" / name).write_text(text)


def qwen_tokenizer(folder: Path):
    """SmolLM2's tokenizer with its <|endoftext|>/<|im_start|>/<|im_end|> at Qwen's ids (their old ids renamed)."""
    from transformers import AutoTokenizer

    from mrt.tiny_model import tiny_model_folder

    source = Path(tiny_model_folder())
    data = json.loads((source / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    for token, new_id in SPECIAL_IDS.items():
        old_id = vocab.pop(token)
        vocab[f"<|reserved_{old_id}|>"] = old_id
        vocab[token] = new_id
        for added in data["added_tokens"]:
            if added["content"] == token:
                added["id"] = new_id
        data["added_tokens"].append({**next(a for a in data["added_tokens"] if a["content"] == token),
                                     "id": old_id, "content": f"<|reserved_{old_id}|>"})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(data))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "backend": "tokenizers", "tokenizer_class": "TokenizersBackend", "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "bos_token": None, "model_max_length": 8192}))
    (folder / "chat_template.jinja").write_text((source / "chat_template.jinja").read_text())
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.eos_token_id == 151645 and tok.pad_token_id == 151643, (tok.eos_token_id, tok.pad_token_id)
    return tok


def build_models(out: Path) -> None:
    import torch
    from transformers import (
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen2ForSequenceClassification,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    tok = qwen_tokenizer(out / HUB / "tokenizer")
    shape = {"vocab_size": VOCAB, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048,
             "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, "bos_token_id": None}
    builds = {
        "tiny-Qwen2ForCausalLM-2.5": (Qwen2ForCausalLM, Qwen2Config(tie_word_embeddings=True, **shape)),
        "tiny-Qwen2ForSequenceClassification-2.5": (Qwen2ForSequenceClassification,
                                                    Qwen2Config(num_labels=1, **shape)),
        "tiny-Qwen3ForCausalLM": (Qwen3ForCausalLM, Qwen3Config(head_dim=4, tie_word_embeddings=True, **shape)),
    }
    for name, (cls, config) in builds.items():
        torch.manual_seed(0)
        model = cls(config)
        if hasattr(model, "generation_config") and model.can_generate():
            model.generation_config.eos_token_id, model.generation_config.pad_token_id = 151645, 151643
        model.save_pretrained(out / HUB / name)
        tok.save_pretrained(out / HUB / name)


def build_zen(out: Path) -> None:
    """The two prompt-only configs of trl-internal-testing/zen the slice loads: 17 train rows, 2 test rows."""
    folder = out / HUB / "zen"
    configs = []
    for config in ("standard_prompt_only", "conversational_prompt_only"):
        for split, rows in (("train", PROMPTS), ("test", PROMPTS[:2])):
            path = folder / config / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            prompts = rows if config.startswith("standard") else [[{"role": "user", "content": p}] for p in rows]
            path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
        configs.append(f"- config_name: {config}\n  data_files:\n  - split: train\n    path: {config}/train.jsonl\n"
                       f"  - split: test\n    path: {config}/test.jsonl\n")
    (folder / "README.md").write_text("---\nconfigs:\n" + "".join(configs) + "---\n")


def setup(args) -> None:
    out = Path(args.dir)
    copy_tests(args.trl_repo, args.rev, out)
    build_models(out)
    build_zen(out)
    print(f"TRL tests and local stand-ins written to {out}")


def run(args, pytest_args: list[str]) -> int:
    out = Path(args.dir)
    (out / "conftest.py").write_text(CONFTEST)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "TRL_SUITE_TRAINER": args.trainer}
    ids = [f"{TEST}::TestGRPOTrainer::{name}" for name in SLICE]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *ids, *pytest_args]
    start = time.perf_counter()
    code = subprocess.run(command, cwd=out, env=env, check=False).returncode
    print(f"trainer={args.trainer}: {time.perf_counter() - start:.0f} s wall (pytest exit code {code})")
    return code


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["setup", "run"])
    parser.add_argument("--dir", default="/tmp/trl_tests")
    parser.add_argument("--trl_repo", default="/work/.mirror/huggingface+trl/repo")
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--trainer", choices=["grpo", "mrt"], default="mrt")
    args = parser.parse_args(argv)
    if args.command == "setup":
        setup(args)
        return 0
    return run(args, extra)


if __name__ == "__main__":
    sys.exit(main())
