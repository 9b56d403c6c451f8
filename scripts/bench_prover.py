"""Prover throughput of the policy paths on one batch of prover prompts: the trainer's colocated vLLM engine vs the
transformers prover (same model, same requests, same sampling settings).

    python scripts/bench_prover.py [--problems 8] [--episodes 3] [--samples 8] [--max_tokens 8] [--repeats 2]

Prints prefix requests/s and generated tokens/s for each path, and for vLLM with the prefix cache kept from the
previous call ("warm") and emptied before each call ("cold": prefixes still share their blocks within the call).
`--no-prefix-caching` builds the engine without prefix caching (TRL exposes no field for it: the flag is passed to
vllm.LLM by wrapping its constructor, in this script only). Runs on CPU with VLLM_CPU_CI_ENV=1 (no inductor compile)
and VLLM_CPU_KVCACHE_SPACE=1 unless set.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_CI_ENV", "1")
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
for _name, _value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1").items():
    os.environ.setdefault(_name, _value)


def float32_view(folder: str) -> str:
    """The model folder with config dtype float32 (weights linked): vLLM's CPU bf16 path is slow without AVX-512."""
    config = json.loads((Path(folder) / "config.json").read_text())
    if config.get("dtype", config.get("torch_dtype")) == "float32":
        return folder
    view = Path(tempfile.mkdtemp(prefix="bench-prover-fp32-"))
    for item in Path(folder).iterdir():
        if item.name != "config.json":
            (view / item.name).symlink_to(item.resolve())
    (view / "config.json").write_text(json.dumps({**config, "dtype": "float32"}))
    return str(view)


def prover_batch(trainer, problems: int, episodes: int):
    """Each problem's prompt plus 0..episodes paragraphs of a worked answer: the trainer's prover requests."""
    from mrt.data import arithmetic_dataset
    from mrt.tokens import prompt_ids

    tok = trainer._tokenizer
    prompts, completions, lengths, rows = [], [], [], []
    for row in arithmetic_dataset(problems, seed=1):
        prompts.append(prompt_ids(tok, [row["prompt"]])[0])
        paragraphs = [f"Let me work out {row['problem'][8:-1]} step by step.\n\n",
                      "Wait, let me double-check the arithmetic carefully before answering.\n\n",
                      f"So the result is {row['answer']}.\n\n", "Hmm, that looks right to me.\n\n"][:episodes]
        ids, ends = [], [0]
        for text in paragraphs:
            ids += tok(text, add_special_tokens=False)["input_ids"]
            ends.append(len(ids))
        completions.append(ids)
        lengths.append(ends[:-1] if len(ends) > 1 else [0])
        rows.append({"answer": row["answer"]})
    return trainer.progress_estimator.requests(prompts, completions, rows, lengths)[0]


def timed(label: str, call, batch, repeats: int, before=None) -> dict:
    best = None
    for _ in range(repeats):
        if before:
            before()
        start = time.perf_counter()
        samples = call()
        seconds = time.perf_counter() - start
        best = seconds if best is None else min(best, seconds)
    tokens = sum(len(s) for group in samples for s in group)
    row = {"path": label, "requests": len(batch.prompts), "seconds": round(best, 3),
           "requests_per_s": round(len(batch.prompts) / best, 3), "tokens": tokens,
           "tokens_per_s": round(tokens / best, 2)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder (default: the offline SmolLM2-135M-Instruct)")
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max_tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per path (the best is kept)")
    parser.add_argument("--no-prefix-caching", action="store_true")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()

    import socket

    import torch
    import vllm

    from mrt import MRTConfig, MRTTrainer
    from mrt.data import arithmetic_dataset
    from mrt.models import smollm2_folder
    from mrt.prover import TransformersProver

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        os.environ.setdefault("MASTER_PORT", str(s.getsockname()[1]))
    if args.no_prefix_caching:
        init = vllm.LLM.__init__
        vllm.LLM.__init__ = lambda self, *a, **kw: init(self, *a, **{**kw, "enable_prefix_caching": False})
    model = float32_view(args.model or str(smollm2_folder()))
    common = dict(
        use_cpu=True, bf16=False, report_to="none", gradient_checkpointing=False,
        per_device_train_batch_size=args.samples, num_generations=2, model_init_kwargs={"dtype": torch.float32},
        termination_suffix="boxed", prover_stop=["}"], prover_batch_size=max(64, args.samples),
    )
    # per_device_train_batch_size sets the colocated engine's max_num_seqs (TRL: batch * steps_per_generation).
    config = MRTConfig(output_dir=tempfile.mkdtemp(prefix="bench-prover-"), use_vllm=True, vllm_mode="colocate",
                       vllm_gpu_memory_utilization=0.1, vllm_enable_sleep_mode=False, **common)
    trainer = MRTTrainer(model=model, args=config, train_dataset=arithmetic_dataset(4, seed=0))
    engine = trainer.vllm_generation.llm
    caching = engine.llm_engine.vllm_config.cache_config.enable_prefix_caching
    batch = prover_batch(trainer, args.problems, args.episodes)
    print(json.dumps({"requests": len(batch.prompts), "asked": batch.asked, "samples": args.samples,
                      "max_tokens": args.max_tokens, "prompt_tokens": sum(len(p) for p in batch.prompts),
                      "prefix_caching": caching, "max_num_seqs": engine.llm_engine.vllm_config.scheduler_config
                      .max_num_seqs, "torch_threads": torch.get_num_threads()}), flush=True)
    ask = dict(num_samples=args.samples, max_tokens=args.max_tokens, temperature=1.0, stop=["}"])
    vllm_call = lambda: trainer.progress_estimator.prover.generate(batch.prompts, **ask)  # noqa: E731
    vllm_call()  # warm-up: the CPU backend traces the model on its first calls
    rows = [timed(f"vllm colocate (prefix caching {'on' if caching else 'off'}, warm)", vllm_call, batch,
                  args.repeats)]
    if caching:
        rows.append(timed("vllm colocate (prefix caching on, cache emptied before each call)", vllm_call, batch,
                          args.repeats, before=engine.reset_prefix_cache))
    if not args.skip_transformers:
        # TRL sets up transformers generation only without vLLM: a second trainer on the same model for this path.
        plain = MRTConfig(output_dir=tempfile.mkdtemp(prefix="bench-prover-"), **common)
        policy = TransformersProver.from_trainer(MRTTrainer(model=model, args=plain,
                                                            train_dataset=arithmetic_dataset(4, seed=0)))
        policy.generate(batch.prompts[:1], **ask)  # warm-up
        rows.append(timed("transformers prover", lambda: policy.generate(batch.prompts, **ask), batch,
                          args.repeats))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
