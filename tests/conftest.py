"""Shared test fixtures. Tests never reach a model hub."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """Folder of the real SmolLM2-135M-Instruct (converted from the GGUF on first use, ~30 s)."""
    from mrt.models import smollm2_folder

    return str(smollm2_folder())


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    """Folder of a tiny random Llama with the SmolLM2 tokenizer (about 3M parameters)."""
    from mrt.tiny_model import tiny_model_folder

    return str(tiny_model_folder())


@pytest.fixture(scope="session")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture(autouse=True, scope="module")
def _free_memory_after_each_module():
    """Trainers, models and in-process vLLM engines sit in reference cycles; free them before the next module
    (the suite runs in CI machines of 24 GB, beside 2-rank runs that hold their own models and engines)."""
    yield
    from mrt.memory import release_memory

    release_memory()
