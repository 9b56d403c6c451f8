"""mu, the prover: requests (`requests`), scoring (`scoring`), the pipeline (`estimate`) and one module per backend:
the policy through transformers (`transformers_policy`), the policy through vLLM (`vllm_policy`), a frozen model on its
own vLLM server (`server`, needs the `openai` package)."""

from mrt.prover.base import Prover, chunks, cut_at_eos, eos_ids
from mrt.prover.estimate import ESTIMATORS, ProgressEstimate, ProgressEstimator, answer_in_context
from mrt.prover.requests import (ProverRequests, Suffix, build_requests, make_suffix, prover_prompt,
                                 termination_suffix)
from mrt.prover.scoring import (RewardScorer, as_completion, forced_text, prover_columns, prover_completion,
                                sample_success)
from mrt.prover.transformers_policy import StopOnText, TransformersProver, prefix_tree
from mrt.prover.vllm_policy import VLLMPolicyProver

__all__ = [
    "ESTIMATORS", "ProgressEstimate", "ProgressEstimator", "Prover", "ProverRequests", "RewardScorer", "StopOnText",
    "Suffix", "TransformersProver", "VLLMPolicyProver", "answer_in_context", "as_completion", "build_requests",
    "chunks", "cut_at_eos", "eos_ids", "forced_text", "make_prover", "make_suffix", "prover_columns",
    "prover_completion", "prover_prompt", "sample_success", "prefix_tree", "termination_suffix",
]


def make_prover(trainer) -> Prover:
    """The backend the trainer's config asks for: a frozen mu on its own vLLM server (`prover: server`), or mu = the
    policy through the trainer's own generation engine (TRL's vLLM when `use_vllm`, else the transformers model)."""
    if trainer.args.prover == "server":
        from mrt.prover.server import ServerProver  # needs the `openai` package (the `server` extra)

        return ServerProver.from_trainer(trainer)
    if trainer.args.use_vllm:
        return VLLMPolicyProver.from_trainer(trainer)
    return TransformersProver.from_trainer(trainer)
