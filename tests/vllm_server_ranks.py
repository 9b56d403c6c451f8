"""Test-only: VLLMPolicyProver's server path on 2 gloo ranks, run by tests/test_prover_vllm.py under torchrun.

Usage: python -m torch.distributed.run --nproc_per_node 2 tests/vllm_server_ranks.py BASE_URL OUT_DIR

Every rank asks a different number of requests; the prover gathers them to the main process, which makes ONE call
to the real vLLM server through TRL's VLLMClient, and broadcasts the results back. Each rank writes its share to
OUT_DIR/rank<r>.json. The prover is built from its parts as the trainer builds it; the process group, the client and
the server are real.
"""

import json
import sys
from pathlib import Path

from accelerate import Accelerator
from trl.generation.vllm_client import VLLMClient

from mrt.prover import VLLMPolicyProver

REQUESTS = {0: [[1, 504, 3260, 28], [1, 1812, 314, 2986, 314, 17, 1780]],
            1: [[1, 9690, 253, 1345, 30], [1, 504, 3260], [1, 2986, 314, 17, 1780, 314, 24, 1780]]}


def main(base_url: str, out: Path) -> None:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    calls = []
    client = None
    if accelerator.is_main_process:
        client = VLLMClient(base_url=base_url, connection_timeout=60)
        generate = client.generate

        def counting(*args, **kwargs):
            calls.append(len(kwargs["prompts"]))
            return generate(*args, **kwargs)

        client.generate = counting
    prover = VLLMPolicyProver({2}, "server", client=client, accelerator=accelerator,
                              sampling={"repetition_penalty": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0})
    mine = REQUESTS[rank]
    greedy = prover.generate(mine, num_samples=1, max_tokens=5, temperature=0.0, stop=None)  # vLLM: greedy needs n=1
    sampled = prover.generate(mine, num_samples=3, max_tokens=5, temperature=1.0, stop=None)
    logps = prover.likelihood(mine, [[28, 30]] * len(mine))
    (out / f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "world": accelerator.num_processes, "requests": mine, "greedy": greedy, "sampled": sampled,
         "logps": logps,
         "calls": calls}))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
