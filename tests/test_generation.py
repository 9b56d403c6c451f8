"""Generation backends on the real SmolLM2: the vLLM path (when vllm is installed) and the transformers path
return the same structure, stop where asked and repeat themselves for one seed."""

import os

import pytest


def check_backend(generator):
    tok = generator.tokenizer
    prompts = [tok("What is 7 + 5? The answer is \\boxed{", add_special_tokens=False)["input_ids"],
               tok("Count: one, two,", add_special_tokens=False)["input_ids"]]
    out = generator.generate(prompts, n=2, max_tokens=6, temperature=1.0, stop=["}"], seed=1)
    assert [len(group) for group in out] == [2, 2]
    for group in out:
        for s in group:
            assert 0 < len(s.ids) <= 6
            # A sample cut by max_tokens is not finished; one that wrote the stop string is.
            if "}" in s.text:
                assert s.finished
            elif len(s.ids) == 6:
                assert not s.finished
    again = generator.generate(prompts, n=2, max_tokens=6, temperature=1.0, stop=["}"], seed=1)
    assert [[s.ids for s in g] for g in again] == [[s.ids for s in g] for g in out]


@pytest.mark.slow
def test_transformers_backend(smollm2_path):
    from mrt.generation import TransformersGenerator

    generator = TransformersGenerator(smollm2_path)
    check_backend(generator)
    generator.close()


@pytest.mark.slow
def test_vllm_backend(smollm2_path, monkeypatch):
    """The engine runs in processes of its own (VLLM::EngineCore, VLLM::Worker), also after a colocated TRL engine
    left VLLM_ENABLE_V1_MULTIPROCESSING=0 in the process, and closing the generator ends them."""
    pytest.importorskip("vllm")
    import psutil

    from mrt.generation import MULTIPROCESSING, VLLMGenerator, make_generator

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv(MULTIPROCESSING, "0")  # as vLLM's external launcher leaves it
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    generator = make_generator(smollm2_path, backend="auto", vllm_kwargs={"max_model_len": 512})
    try:
        assert isinstance(generator, VLLMGenerator)
        assert os.environ[MULTIPROCESSING] == "0"  # put back for the colocated engine
        check_backend(generator)
        engine = [p for p in psutil.Process().children(recursive=True)
                  if p.pid not in before and "VLLM" in p.name()]
        assert engine
    finally:
        generator.close()
    _, alive = psutil.wait_procs(engine, timeout=30)
    assert not alive  # closed with the generator: the next unit's training does not carry its memory


@pytest.mark.slow
def test_vllm_seeded_long_prompts_beyond_one_step(smollm2_path):
    """Seeded requests whose prompts together outgrow one engine step's token budget: on CPU vLLM 0.32 then prefills
    in chunks and its sampler crashes ("CPU Generator does not use offset") unless whole prefills are asked for
    (`mrt.generation.cpu_options`)."""
    pytest.importorskip("vllm")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from mrt.generation import make_generator

    generator = make_generator(smollm2_path, backend="vllm", vllm_kwargs={"max_model_len": 1024})
    try:
        tok = generator.tokenizer
        text = " ".join(f"{k} plus {k + 1} is {2 * k + 1}." for k in range(60))  # about 600 tokens
        prompts = [tok(f"Sum {i}: {text}", add_special_tokens=False)["input_ids"] for i in range(12)]
        assert sum(len(p) for p in prompts) > 4096
        out = generator.generate(prompts, n=2, max_tokens=4, temperature=1.0, seed=3)
        again = generator.generate(prompts, n=2, max_tokens=4, temperature=1.0, seed=3)
    finally:
        generator.close()
    assert [[s.ids for s in g] for g in out] == [[s.ids for s in g] for g in again]
    assert all(0 < len(s.ids) <= 4 for g in out for s in g)
