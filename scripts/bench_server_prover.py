"""Throughput of a frozen-mu prover server with vLLM's prefix cache on and off, on the same prover batch.

    python scripts/bench_server_prover.py [--model FOLDER] [--num_prompts 8] [--completions 4] ...

1. Starts `vllm serve MODEL --no-enable-prefix-caching`, lets the model itself write `--completions` answers to
   each of `--num_prompts` arithmetic prompts (real completions), splits them into episodes and builds the
   prover requests exactly as MRTTrainer does (prompt + prefix + termination suffix, de-duplicated).
2. Sends that batch through ServerProver to the cache-off server, stops it.
3. Starts `vllm serve MODEL --enable-prefix-caching` and sends the same batch (the cache starts cold: the
   completions were written by the other server).
Prints prefix requests/s, generated tokens/s and prompt tokens/s for each, and writes them as JSON with --out.
"""

import argparse
import json
import time

from transformers import AutoTokenizer

from mrt.data import arithmetic_dataset
from mrt.episodes import EpisodeRules
from mrt.experiments.vllm_server import VLLMServer
from mrt.models import smollm2_folder
from mrt.prover import ProgressEstimator, make_suffix
from mrt.prover.server import ServerProver
from mrt.quiet import quiet_cpu_start
from mrt.tokens import prompt_ids

# float32: this CPU has no native bf16 (AVX2 only), where vLLM runs bf16 far slower.
COMMON = ["--enforce-eager", "--dtype", "float32", "--max-model-len", "2048", "--max-num-seqs", "64"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model folder to serve (default: the offline SmolLM2-135M)")
    p.add_argument("--num_prompts", type=int, default=8)
    p.add_argument("--completions", type=int, default=4, help="completions per prompt (the GRPO group)")
    p.add_argument("--completion_tokens", type=int, default=192)
    p.add_argument("--difficulty", type=int, default=3)
    p.add_argument("--max_episodes", type=int, default=4)
    p.add_argument("--samples", type=int, default=4, help="prover samples per prefix")
    p.add_argument("--max_tokens", type=int, default=16, help="prover tokens per sample")
    p.add_argument("--suffix", default="boxed")
    p.add_argument("--stop", default="}")
    p.add_argument("--start_timeout", type=float, default=600)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args()


def warm_up(prover: ServerProver, tok) -> None:
    """A few requests with other text, so that the timed run does not pay first-call costs."""
    ids = tok("Once upon a time, in a small village by the sea,", add_special_tokens=False)["input_ids"]
    prover.generate([ids, ids[:5]], num_samples=2, max_tokens=8, temperature=1.0, stop=None)


def real_batch(server: VLLMServer, tok, a):
    """Completions the model writes itself, split into episodes; the prover requests MRTTrainer would send."""
    problems = arithmetic_dataset(a.num_prompts, seed=0, difficulty=a.difficulty)
    prompts = prompt_ids(tok, list(problems["prompt"]))
    writer = ServerProver(server.url, tok, timeout=600, max_retries=1)
    groups = writer.generate(prompts, num_samples=a.completions, max_tokens=a.completion_tokens, temperature=0.9,
                             stop=None)
    rules = EpisodeRules(max_episodes=a.max_episodes, chunk_tokens=32)  # MRTConfig's defaults otherwise
    estimator = ProgressEstimator(writer, tok, rules, make_suffix(tok, a.suffix, None), None)
    prompt_rows = [prompt for prompt, group in zip(prompts, groups) for _ in group]
    completion_rows = [ids for group in groups for ids in group]
    rows = [{"answer": gold} for gold, group in zip(problems["answer"], groups) for _ in group]
    batch = estimator.requests(prompt_rows, completion_rows, rows)[0]
    return batch, completion_rows


def timed(server: VLLMServer, tok, batch, a) -> dict:
    prover = ServerProver(server.url, tok, timeout=600, max_retries=1, requests_per_call=64)
    warm_up(prover, tok)
    before = dict(prover.usage)
    start = time.perf_counter()
    prover.generate(batch.prompts, num_samples=a.samples, max_tokens=a.max_tokens, temperature=0.9,
                    stop=[a.stop] if a.stop else None)
    seconds = time.perf_counter() - start
    generated = prover.usage["completion_tokens"] - before["completion_tokens"]
    prompt_tokens = prover.usage["prompt_tokens"] - before["prompt_tokens"]
    return {"seconds": round(seconds, 2), "prefix_requests": len(batch.prompts),
            "prefix_requests_per_s": round(len(batch.prompts) / seconds, 2),
            "generated_tokens": generated, "generated_tokens_per_s": round(generated / seconds, 1),
            "prompt_tokens": prompt_tokens, "prompt_tokens_per_s": round(prompt_tokens / seconds, 1)}


def main():
    a = parse_args()
    model = a.model or str(smollm2_folder())
    tok = AutoTokenizer.from_pretrained(model)
    results = {}
    with VLLMServer(model, args=["--no-enable-prefix-caching", *COMMON]).start(a.start_timeout) as server:
        batch, completions = real_batch(server, tok, a)
        print(f"batch: {a.num_prompts} prompts x {a.completions} completions (mean "
              f"{sum(map(len, completions)) / len(completions):.0f} tokens), {batch.asked} prefixes, "
              f"{len(batch.prompts)} after de-duplication, {sum(map(len, batch.prompts))} prompt tokens; "
              f"{a.samples} samples x <= {a.max_tokens} tokens each", flush=True)
        results["prefix_cache_off"] = timed(server, tok, batch, a)
        print("prefix cache OFF:", results["prefix_cache_off"], flush=True)
    with VLLMServer(model, args=["--enable-prefix-caching", *COMMON]).start(a.start_timeout) as server:
        results["prefix_cache_on"] = timed(server, tok, batch, a)
        print("prefix cache ON: ", results["prefix_cache_on"], flush=True)
    on, off = results["prefix_cache_on"], results["prefix_cache_off"]
    results["speedup_on_over_off"] = round(off["seconds"] / on["seconds"], 2)
    results["config"] = vars(a) | {"model": model}
    print(f"prefix requests/s: ON {on['prefix_requests_per_s']} vs OFF {off['prefix_requests_per_s']}; generated "
          f"tokens/s: ON {on['generated_tokens_per_s']} vs OFF {off['generated_tokens_per_s']}; "
          f"speed-up {results['speedup_on_over_off']}x")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    quiet_cpu_start()  # what importing mrt does not set: the quiet CPU start of the commands
    main()
