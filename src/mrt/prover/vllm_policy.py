"""mu = the current policy through TRL's own vLLM: the colocated `vllm.LLM` or the trainer's `VLLMClient`.

No second copy of the weights: the prover calls the engine that GRPOTrainer built (`trainer.vllm_generation`).
The weights are those of this step: TRL pushes them to vLLM in `_generate_single_turn` (and before a custom
`rollout_func`) whenever `state.global_step` moved on, before it generates the rollouts; the prover runs after
`super()._generate_and_score_completions`, so within the same step, after that push.
"""

from contextlib import contextmanager, nullcontext

import torch
from accelerate.utils import broadcast_object_list, gather_object

from mrt.prover.base import check_answers, cut_at_eos, draw_seeds, own_generator
from mrt.tokens import eos_ids


class VLLMPolicyProver:
    """mu through a vLLM engine: a `vllm.LLM` (colocated with training, or one of its own) or TRL's `VLLMClient` of a
    `trl vllm-serve` server. One call for all requests of a generation batch.

    `mode="colocate"`, with `llm`: every rank asks its own engine (ranks of one tensor-parallel group, `tp_group` of `tp_size`, pool their
    requests as TRL does and keep their share). `mode="server"`, with `client` (on the main process): the main process sends every rank's requests in one
    call and broadcasts the results back. `sampling` holds the policy's own sampling settings (mu = pi); `engine_awake`
    is a context manager around every engine call (TRL's sleep-mode bookkeeping when the engine is the trainer's).
    Every request carries a seed drawn from the prover's own generator (seeded once with `seed`); in server mode,
    whose client takes one seed per call, the call takes its first request's.
    """

    def __init__(self, eos: set[int], mode: str = "colocate", llm=None, client=None, sampling: dict | None = None,
                 accelerator=None, tp_group=None, tp_size: int = 1, engine_awake=nullcontext, seed: int = 0):
        if mode not in ("colocate", "server"):
            raise ValueError(f"mode must be 'colocate' (a vllm.LLM) or 'server' (TRL's VLLMClient), got {mode!r}")
        if mode == "colocate" and llm is None:
            raise ValueError("VLLMPolicyProver in mode 'colocate' needs llm, a vllm.LLM.")
        # In server mode only the main process holds the client; the other ranks send it their requests.
        self.eos, self.mode, self.llm, self.client, self.sampling = set(eos), mode, llm, client, dict(sampling or {})
        self.accelerator, self.tp_group, self.tp_size, self.engine_awake = accelerator, tp_group, tp_size, engine_awake
        self.rng = own_generator(seed)

    @classmethod
    def from_trainer(cls, trainer) -> "VLLMPolicyProver":
        """The engine GRPOTrainer built (`trainer.vllm_generation`): no second copy of the weights. TRL pushes this
        step's weights to it before the rollouts; the prover runs after them, within the same step."""
        engine, args = trainer.vllm_generation, trainer.args
        sampling = {"repetition_penalty": trainer.repetition_penalty, "top_p": trainer.top_p, "top_k": trainer.top_k,
                    "min_p": trainer.min_p or 0.0, **(args.generation_kwargs or {})}
        eos = eos_ids(trainer._tokenizer, trainer.eos_token_ids)
        if args.vllm_mode == "server":
            return cls(eos, "server", client=engine.vllm_client, sampling=sampling, accelerator=trainer.accelerator,
                       seed=args.seed)

        @contextmanager
        def engine_awake():
            sleeping = engine.enable_sleep_mode
            if sleeping and engine._llm_weights_sleeping:
                # Sleep level 2 dropped the weights after the rollouts: push this step's weights again, as TRL does.
                engine.sync_weights()
            if sleeping:
                engine.llm.wake_up(tags=["kv_cache"])
            try:
                yield
            finally:
                if sleeping:
                    engine.llm.sleep(level=2)
                    engine._llm_weights_sleeping = True

        return cls(eos, "colocate", llm=engine.llm, sampling=sampling, accelerator=trainer.accelerator,
                   tp_group=getattr(engine, "tp_group", None), tp_size=engine.tensor_parallel_size,
                   engine_awake=engine_awake, seed=args.seed)

    def generate(self, prompts: list[list[int]], num_samples: int, max_tokens: int, temperature: float,
                 stop: list[str] | None, seed: int | None = None) -> list[list[list[int]]]:
        params = {**self.sampling, "n": num_samples, "max_tokens": max_tokens, "temperature": temperature}
        if stop:
            params |= {"stop": list(stop), "include_stop_str_in_output": True}
        # Each request carries its seed (drawn before any pooling, so every rank of a pool sends the same call).
        items = list(zip(prompts, draw_seeds(self.rng, len(prompts), seed), strict=True))
        if self.mode == "server":
            def run(requests):
                extra = {k: v for k, v in params.items() if k not in _CLIENT_ARGS} | {"seed": requests[0][1]}
                ids = self.client.generate(prompts=[p for p, _ in requests], logprobs=None, generation_kwargs=extra,
                                           **{k: v for k, v in params.items() if k in _CLIENT_ARGS})["completion_ids"]
                return [ids[k * num_samples:(k + 1) * num_samples] for k in range(len(requests))]
        else:
            def run(requests):
                from vllm import SamplingParams

                outputs = self._llm_generate([p for p, _ in requests], [SamplingParams(**params, seed=s)
                                                                         for _, s in requests])
                return [[list(o.token_ids) for o in out.outputs] for out in outputs]
        groups = self._share(items, run)
        return [[cut_at_eos(s, self.eos) for s in group] for group in groups]

    def likelihood(self, prompts: list[list[int]], answers: list[list[int]]) -> list[float]:
        check_answers(answers)
        pairs = [(list(p), list(a)) for p, a in zip(prompts, answers, strict=True)]
        if self.mode == "server":
            def run(requests):
                out = self.client.get_sequence_logprobs([p + a for p, a in requests], [len(p) for p, _ in requests],
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
        accelerator = self.accelerator
        if self.mode == "server":
            several = accelerator is not None and accelerator.num_processes > 1
            everyone = gather_object(items) if several else list(items)
            sizes = gather_object([len(items)]) if several else [len(items)]
            main = accelerator is None or accelerator.is_main_process
            results = [run(everyone) if everyone else []] if main else [None]
            if several:
                broadcast_object_list(results, from_process=0)
            start = sum(sizes[:accelerator.process_index]) if several else 0
            return results[0][start:start + len(items)]
        if self.tp_size == 1:
            return run(items) if items else []
        gathered = [None] * self.tp_size
        torch.distributed.all_gather_object(gathered, items, group=self.tp_group)
        # Every rank of the group runs the same pooled call (vLLM's tensor parallelism needs all of them).
        results = run([x for part in gathered for x in part])
        start = sum(len(part) for part in gathered[:torch.distributed.get_rank(group=self.tp_group)])
        return results[start:start + len(items)]

    def _llm_generate(self, requests: list[list[int]], params) -> list:
        with self.engine_awake():
            return self.llm.generate([{"prompt_token_ids": ids} for ids in requests], sampling_params=params,
                                     use_tqdm=False)


# Sampling settings that TRL's `VLLMClient.generate` takes as arguments; the others go in its generation_kwargs.
_CLIENT_ARGS = ("n", "repetition_penalty", "temperature", "top_p", "top_k", "min_p", "max_tokens")


def _answer_logprob(prompt_logprobs, sequence: list[int], answer_size: int) -> float:
    """Sum of the log-probabilities of the last `answer_size` tokens of `sequence`, from vLLM's prompt logprobs
    (position k holds {token id: Logprob} for token k; position 0 is None)."""
    start = len(sequence) - answer_size
    return sum(prompt_logprobs[k][sequence[k]].logprob for k in range(start, len(sequence)))
