"""Sampling backends for evaluation: vLLM (prefix caching) when it is installed, transformers otherwise.

Both take prompts as token ids and return, per prompt, `n` samples with their token ids, text and whether the
model ended the sample itself (EOS or a stop string) rather than running out of tokens. A `seed` makes a call
reproducible on its own, whatever ran before it, so that a resumed evaluation gives the same numbers.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Protocol

from mrt.prover import PolicyProver

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "transformers", "vllm")


@dataclass
class Sample:
    ids: list[int]
    text: str
    finished: bool  # ended by EOS or a stop string, not by max_tokens


class Generator(Protocol):
    name: str
    tokenizer: object

    def generate(self, prompts: list[list[int]], n: int, max_tokens: int, temperature: float,
                 stop: list[str] | None = None, seed: int = 0) -> list[list[Sample]]:
        """`n` samples of at most `max_tokens` tokens per prompt (a stop string is kept in the text)."""

    def close(self) -> None:
        """Free the model."""


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def make_generator(model: str, backend: str = "auto", dtype: str = "float32", batch_size: int = 64,
                   seed: int = 0, vllm_kwargs: dict | None = None) -> Generator:
    """The backend asked for; 'auto' is vLLM when it imports, else transformers."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "vllm" or (backend == "auto" and vllm_available()):
        return VLLMGenerator(model, dtype=dtype, seed=seed, **(vllm_kwargs or {}))
    return TransformersGenerator(model, dtype=dtype, batch_size=batch_size)


class TransformersGenerator:
    """`model.generate` on a model loaded by transformers, in chunks of at most `batch_size` sequences.

    Sampling goes through the trainer's prover code (`PolicyProver._branch`): each chunk's prompts are read once,
    shared leading tokens (the chat prompt, a completion's earlier episodes) only once, and the `n` samples of a
    prompt branch from its cache.
    """

    name = "transformers"

    def __init__(self, model: str, dtype: str = "float32", batch_size: int = 64):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(
            model, dtype=getattr(torch, dtype) if dtype != "auto" else "auto").eval()
        self.batch_size = batch_size
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None:
            eos.append(self.tokenizer.eos_token_id)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token_id = eos[0]
        self.eos_ids = sorted(set(eos))
        # What PolicyProver reads from its trainer.
        self._prover = PolicyProver(SimpleNamespace(
            accelerator=SimpleNamespace(device=self.model.device), _tokenizer=self.tokenizer,
            eos_token_ids=self.eos_ids))

    def generate(self, prompts, n, max_tokens, temperature, stop=None, seed=0):
        import torch
        from transformers import GenerationConfig

        torch.manual_seed(seed)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0} \
            if temperature > 0 else {"do_sample": False}
        config = GenerationConfig(max_new_tokens=max_tokens, num_return_sequences=1, eos_token_id=self.eos_ids,
                                  pad_token_id=self.tokenizer.pad_token_id, **sampling)
        per_call = max(1, self.batch_size // n)
        out: list[list[Sample]] = []
        with torch.no_grad():
            for k in range(0, len(prompts), per_call):
                chunk = [list(p) for p in prompts[k:k + per_call]]
                rows = self._prover._branch(self.model, chunk, config, n, stop)
                for i in range(len(chunk)):
                    out.append([self._sample(ids, max_tokens, stop) for ids in rows[i * n:(i + 1) * n]])
        return out

    def _sample(self, ids: list[int], max_tokens: int, stop) -> Sample:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        # _branch cuts a row at its EOS (or the padding after a stop string): shorter than max_tokens = ended.
        return Sample(ids, text, len(ids) < max_tokens or any(s in text for s in stop or []))

    def close(self):
        del self.model
        gc.collect()


class VLLMGenerator:
    """`vllm.LLM` with prefix caching: the episode prefixes of one completion share their cached prompt."""

    name = "vllm"

    def __init__(self, model: str, dtype: str = "float32", seed: int = 0, **kwargs):
        from vllm import LLM

        options = {"enable_prefix_caching": True, "enforce_eager": True, "seed": seed, "dtype": dtype,
                   "gpu_memory_utilization": 0.25, **kwargs}
        from transformers import AutoTokenizer

        self.llm = LLM(model=model, **options)
        self.tokenizer = AutoTokenizer.from_pretrained(model)

    def generate(self, prompts, n, max_tokens, temperature, stop=None, seed=0):
        from vllm import SamplingParams

        params = SamplingParams(n=n, max_tokens=max_tokens, temperature=temperature, stop=stop or None,
                                include_stop_str_in_output=True, seed=seed)
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        return [[Sample(list(o.token_ids), o.text, o.finish_reason == "stop") for o in out.outputs]
                for out in outputs]

    def close(self):
        del self.llm
        gc.collect()
