"""Sampling backends for evaluation: vLLM (prefix caching) when it is installed, transformers otherwise.

Both take prompts as token ids and return, per prompt, `n` samples with their token ids, text and whether the
model ended the sample itself (EOS or a stop string) rather than running out of tokens. A `seed` makes a call
reproducible on its own, whatever ran before it, so that a resumed evaluation gives the same numbers.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Protocol

from mrt.prover import Prover, TransformersProver, VLLMPolicyProver
from mrt.tokens import eos_ids

MULTIPROCESSING = "VLLM_ENABLE_V1_MULTIPROCESSING"

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
    prover: Prover  # the same model as mu, for `mrt.prover.ProgressEstimator`
    eos: set[int]  # the ids that end a sample (`mrt.tokens.eos_ids`)

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

    Sampling goes through the prover's transformers backend (`mrt.prover.TransformersProver`): each chunk's prompts
    are read once, shared leading tokens (the chat prompt, a completion's earlier episodes) only once, and the `n`
    samples of a prompt branch from its cache.
    """

    name = "transformers"

    def __init__(self, model: str, dtype: str = "float32", batch_size: int = 64):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(
            model, dtype=getattr(torch, dtype) if dtype != "auto" else "auto").to(default_device()).eval()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token_id = self.tokenizer.eos_token_id
        self.prover = TransformersProver.for_model(self.model, self.tokenizer, batch_size)
        self.eos = self.prover.eos

    def generate(self, prompts, n, max_tokens, temperature, stop=None, seed=0):
        rows = self.prover.generate([list(p) for p in prompts], n, max_tokens, temperature, stop, seed)
        return [[self._sample(ids, max_tokens, stop) for ids in group] for group in rows]

    def generate_forced(self, prompts, n, max_tokens, temperature, cues: list[list[int]], seed=0):
        """`n` samples per prompt under budget forcing with these cue ids (`mrt.evaluation.forcing`), each in one
        `generate` call that continues from the cache; and, per sample, where it first ended (None: never)."""
        import torch
        from transformers import LogitsProcessorList

        from mrt.evaluation.forcing import ForcedContinuation
        from mrt.prover.base import chunks, cut_at_eos, isolated_rng, left_pad

        config = copy.deepcopy(self.prover.generation_config)
        config.do_sample, config.temperature, config.top_p, config.top_k = False, None, None, None
        config.max_new_tokens, config.num_return_sequences, config.num_beams = max_tokens, 1, 1
        config.eos_token_id = sorted(self.eos)
        rows = [list(p) for p in prompts for _ in range(n)]
        samples, ends = [], []
        with isolated_rng(seed, self.model.device), torch.no_grad():
            for part in chunks(rows, self.prover.batch_size):
                ids, mask = left_pad(part, self.tokenizer.pad_token_id, self.model.device)
                forcing = ForcedContinuation(cues, self.eos, max_tokens, ids.size(1), temperature)
                out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                          logits_processor=LogitsProcessorList([forcing]))
                samples += [self._sample(cut_at_eos(row, self.eos), max_tokens, None)
                            for row in out[:, ids.size(1):].tolist()]
                ends += forcing.first_end
        return chunks(samples, n), chunks(ends, n)

    def _sample(self, ids: list[int], max_tokens: int, stop) -> Sample:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        # The prover cuts a row at its EOS (or the padding after a stop string): shorter than max_tokens = ended.
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
                   "gpu_memory_utilization": 0.25, **cpu_options(), **kwargs}
        from transformers import AutoTokenizer

        with own_engine_process():
            self.llm = LLM(model=model, **options)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.prover = VLLMPolicyProver(eos_ids(self.tokenizer, _declared_eos(model)), "colocate", llm=self.llm)
        self.eos = self.prover.eos

    def generate(self, prompts, n, max_tokens, temperature, stop=None, seed=0):
        from vllm import SamplingParams

        params = SamplingParams(n=n, max_tokens=max_tokens, temperature=temperature, stop=stop or None,
                                include_stop_str_in_output=True, seed=seed)
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        return [[Sample(list(o.token_ids), o.text, o.finish_reason == "stop") for o in out.outputs]
                for out in outputs]

    def close(self):
        engine = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if engine is not None:  # dropping the LLM alone left the engine's processes (and their memory) running
            engine.shutdown()
        del self.llm
        gc.collect()


@contextlib.contextmanager
def own_engine_process():
    """Start a vLLM engine in a process of its own. A colocated TRL engine (external launcher) sets
    VLLM_ENABLE_V1_MULTIPROCESSING=0 for the rest of the process, and engines in one process share vLLM's global
    parallel state: closing one breaks the next. The variable is put back once the engine has started."""
    import vllm.envs

    before = os.environ.get(MULTIPROCESSING)
    os.environ[MULTIPROCESSING] = "1"
    vllm.envs.disable_envs_cache()  # an in-process engine froze vLLM's view of the environment
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(MULTIPROCESSING)
        else:
            os.environ[MULTIPROCESSING] = before


def cpu_options() -> dict:
    """vLLM options on a machine without a GPU. vLLM 0.32's CPU sampler rewinds a seeded request's generator after a
    partial (chunked) prefill, which CPU generators cannot do: the engine dies with "CPU Generator does not use
    offset" once seeded prompts outgrow one step's token budget. Whole prefills avoid it."""
    import torch

    return {} if torch.cuda.is_available() else {"enable_chunked_prefill": False}


def default_device() -> str:
    """This process's GPU when there is one (its LOCAL_RANK under `accelerate launch`), else the CPU."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    return "cpu"


def _declared_eos(model: str):
    """The EOS ids a model folder declares in its generation config (None without one)."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model).eos_token_id
    except OSError:
        return None
