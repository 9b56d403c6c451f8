"""mu = the current policy through TRL's own vLLM: the colocated `vllm.LLM` or the trainer's `VLLMClient`.

No second copy of the weights: the prover calls the engine that GRPOTrainer built (`trainer.vllm_generation`).
The weights are those of this step: TRL pushes them to vLLM in `_generate_single_turn` (and before a custom
`rollout_func`) whenever `state.global_step` moved on, before it generates the rollouts; the prover runs after
`super()._generate_and_score_completions`, so within the same step, after that push.
"""

import torch
from accelerate.utils import broadcast_object_list, gather_object


class VLLMPolicyProver:
    """The prover through the trainer's vLLM engine: one call for all requests of a generation batch.

    `vllm_mode="colocate"`: every rank asks its own colocated engine (ranks of one tensor-parallel group pool their
    requests, as TRL does, and keep their share). `vllm_mode="server"`: the main process sends every rank's requests to
    the server in one call and broadcasts the results back.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self.vllm = trainer.vllm_generation  # TRL's VLLMGeneration: holds `.llm` (colocate) or `.vllm_client` (server)
        self.mode = trainer.args.vllm_mode
        self.eos = {*trainer.eos_token_ids, trainer._tokenizer.pad_token_id}

    def generate(self, prompts: list[list[int]], num_samples: int, max_tokens: int, temperature: float,
                 stop: list[str] | None) -> list[list[list[int]]]:
        t = self.trainer
        params = {
            # mu = pi: the policy's own sampling settings, then the prover's length, temperature and stops.
            "repetition_penalty": t.repetition_penalty, "top_p": t.top_p, "top_k": t.top_k,
            "min_p": t.min_p or 0.0, **(t.args.generation_kwargs or {}),
            "n": num_samples, "max_tokens": max_tokens, "temperature": temperature,
        }
        if stop:
            params |= {"stop": list(stop), "include_stop_str_in_output": True}
        if self.mode == "server":
            def run(requests):
                client = self.vllm.vllm_client
                extra = {k: v for k, v in params.items() if k not in _CLIENT_ARGS}
                ids = client.generate(prompts=requests, logprobs=None, generation_kwargs=extra,
                                      **{k: v for k, v in params.items() if k in _CLIENT_ARGS})["completion_ids"]
                return [ids[k * num_samples:(k + 1) * num_samples] for k in range(len(requests))]
        else:
            def run(requests):
                from vllm import SamplingParams

                outputs = self._llm_generate(requests, SamplingParams(**params))
                return [[list(o.token_ids) for o in out.outputs] for out in outputs]
        groups = self._share(prompts, run)
        return [[self._without_eos(s) for s in group] for group in groups]

    def likelihood(self, prompts: list[list[int]], answers: list[list[int]]) -> list[float]:
        if any(not a for a in answers):
            raise ValueError("Every answer needs at least one token to score its likelihood.")
        pairs = [(list(p), list(a)) for p, a in zip(prompts, answers, strict=True)]
        if self.mode == "server":
            def run(requests):
                client = self.vllm.vllm_client
                out = client.get_sequence_logprobs([p + a for p, a in requests], [len(p) for p, _ in requests],
                                                   top_logprobs=0)
                return [sum(lp[0] for lp in row) for row in out["actual_logprobs"]]
        else:
            def run(requests):
                from vllm import SamplingParams

                # prompt_logprobs=0: each prompt token's own log-probability (raw logits, temperature 1).
                params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0)
                outputs = self._llm_generate([p + a for p, a in requests], params)
                return [_answer_logprob(out.prompt_logprobs, p + a, len(a))
                        for out, (p, a) in zip(outputs, requests, strict=True)]
        return self._share(pairs, run)

    def _share(self, items: list, run) -> list:
        """`run(all_items)` once for the items of every rank that shares the engine; this rank's results back."""
        if self.mode == "server":
            accelerator = self.trainer.accelerator
            everyone = gather_object(items) if accelerator.num_processes > 1 else list(items)
            sizes = gather_object([len(items)]) if accelerator.num_processes > 1 else [len(items)]
            results = [run(everyone) if everyone else []] if accelerator.is_main_process else [None]
            broadcast_object_list(results, from_process=0)
            start = sum(sizes[:accelerator.process_index])
            return results[0][start:start + len(items)]
        group, size = getattr(self.vllm, "tp_group", None), self.vllm.tensor_parallel_size
        if size == 1:
            return run(items) if items else []
        gathered = [None] * size
        torch.distributed.all_gather_object(gathered, items, group=group)
        # Every rank of the group runs the same pooled call (vLLM's tensor parallelism needs all of them).
        results = run([x for part in gathered for x in part])
        start = sum(len(part) for part in gathered[:torch.distributed.get_rank(group=group)])
        return results[start:start + len(items)]

    def _llm_generate(self, requests: list[list[int]], params) -> list:
        """The colocated engine's generate, with TRL's sleep-mode bookkeeping around it."""
        vllm, sleeping = self.vllm, self.vllm.enable_sleep_mode
        if sleeping and vllm._llm_weights_sleeping:
            # Sleep level 2 dropped the weights after the rollouts: push this step's weights again, as TRL does.
            vllm.sync_weights()
        if sleeping:
            vllm.llm.wake_up(tags=["kv_cache"])
        try:
            return vllm.llm.generate([{"prompt_token_ids": ids} for ids in requests], sampling_params=params,
                                     use_tqdm=False)
        finally:
            if sleeping:
                vllm.llm.sleep(level=2)
                vllm._llm_weights_sleeping = True

    def _without_eos(self, ids: list[int]) -> list[int]:
        cut = next((k for k, tok in enumerate(ids) if tok in self.eos), len(ids))
        return list(ids[:cut])


# Sampling settings that TRL's `VLLMClient.generate` takes as arguments; the others go in its generation_kwargs.
_CLIENT_ARGS = ("n", "repetition_penalty", "temperature", "top_p", "top_k", "min_p", "max_tokens")


def _answer_logprob(prompt_logprobs, sequence: list[int], answer_size: int) -> float:
    """Sum of the log-probabilities of the last `answer_size` tokens of `sequence`, from vLLM's prompt logprobs
    (position k holds {token id: Logprob} for token k; position 0 is None)."""
    start = len(sequence) - answer_size
    return sum(prompt_logprobs[k][sequence[k]].logprob for k in range(start, len(sequence)))
