"""A tiny randomly initialised Llama with the real SmolLM2 tokenizer: the model of the fast tests and smoke runs,
built once into the model cache (mrt.models)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mrt.memory import without_zero3
from mrt.models import (
    FORMAT_VERSION,
    MAX_LENGTH,
    _build_once,
    _save_tokenizer,
    _set_special_ids,
    _smollm2_tokenizer,
    cache_dir,
)

logger = logging.getLogger(__name__)


def tiny_model_folder(
    path: str | os.PathLike | None = None, num_layers: int = 2, hidden_size: int = 64, seed: int = 0
) -> Path:
    """A tiny random Llama causal LM with the real SmolLM2 tokenizer, saved as a model folder.

    4 attention heads, intermediate size 2 * hidden_size, tied embeddings. With the defaults
    it has about 3.2M parameters, almost all in the 49152 x 64 embedding.
    """
    if path is None:
        path = cache_dir() / f"tiny-llama-l{num_layers}-h{hidden_size}-s{seed}-v{FORMAT_VERSION}"

    def build(tmp: Path) -> dict:
        return _build_tiny(tmp, num_layers, hidden_size, seed)

    return _build_once(Path(path), build)


def _build_tiny(out: Path, num_layers: int, hidden_size: int, seed: int) -> dict:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = _smollm2_tokenizer()
    heads = 4
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden_size // heads,
        max_position_embeddings=MAX_LENGTH,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with without_zero3():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig.from_model_config(config)
    _set_special_ids(model, tok)
    model.save_pretrained(out)
    _save_tokenizer(tok, out)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("Tiny model: %d layers, hidden %d, %d parameters", num_layers, hidden_size, n_params)
    return {"num_layers": num_layers, "hidden_size": hidden_size, "seed": seed, "num_parameters": n_params}
