"""mu, the prover: constants (`presets`, pure), requests (`requests`), scoring (`scoring`), the pipeline
(`estimate`), the backend factory (`factory`) and one module per backend: the policy through transformers
(`transformers_policy`), the policy through vLLM (`vllm_policy`), a frozen model on its own vLLM server (`server`,
needs the `openai` package). Importing the package loads none of them; a name loads its module when first used."""

from mrt.lazy import lazy_package

__all__, __getattr__ = lazy_package(__name__, {
    "base": ("Prover", "chunks", "cut_at_eos"),
    "estimate": ("ProgressEstimate", "ProgressEstimator", "answer_in_context"),
    "factory": ("make_prover",),
    "presets": ("AUTHORS_SUFFIX", "ESTIMATORS", "PROVERS", "SUFFIX_PRESETS", "answer_temperature"),
    "requests": ("ProverRequests", "Suffix", "build_requests", "make_suffix", "prover_prompt", "termination_suffix"),
    "scoring": ("RewardScorer", "as_completion", "forced_text", "prover_columns", "prover_completion",
                "sample_success"),
    "server": ("ServerProver", "ProverServerError"),
    "transformers_policy": ("StopOnText", "TransformersProver", "prefix_tree"),
    "vllm_policy": ("VLLMPolicyProver",),
})
