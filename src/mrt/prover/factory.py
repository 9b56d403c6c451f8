"""The one place a backend is chosen for mu."""

from mrt.prover.base import Prover


def make_prover(trainer) -> Prover:
    """The backend the trainer's config asks for: a frozen mu on its own vLLM server (`prover: server`), or mu = the
    policy through the trainer's own generation engine (TRL's vLLM when `use_vllm`, else the transformers model)."""
    if trainer.args.prover == "server":
        from mrt.prover.server import ServerProver  # needs the `openai` package (the `server` extra)

        return ServerProver.from_trainer(trainer)
    if trainer.args.use_vllm:
        from mrt.prover.vllm_policy import VLLMPolicyProver

        return VLLMPolicyProver.from_trainer(trainer)
    from mrt.prover.transformers_policy import TransformersProver

    return TransformersProver.from_trainer(trainer)
