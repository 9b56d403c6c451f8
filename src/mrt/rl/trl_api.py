"""Every private name of TRL's GRPOTrainer (and of transformers' Trainer under it) that mrt overrides, calls or reads:
the one list of them. Private names change between releases without notice: tests/test_trl_contract.py checks each
one against the installed TRL, and fails on a private TRL name used in src/mrt or scripts/ that is not listed here.
Checked on `CHECKED_ON`; pyproject.toml pins that range."""

from dataclasses import dataclass

CHECKED_ON = {"trl": ">=1.16,<1.17", "transformers": ">=5.16.1,<5.20"}  # as pinned; the suite ran on trl 1.16.0


@dataclass(frozen=True)
class PrivateName:
    name: str
    owner: str  # "GRPOTrainer" (trl) or "Trainer" (transformers): the class whose instances have it
    kind: str  # "override" (MRTTrainer overrides it), "call" (mrt calls it), "attribute" (read or written), "class"
    parameters: tuple[str, ...] = ()  # a method's parameters after self, as mrt passes them
    use: str = ""  # what mrt relies on


PRIVATE_NAMES = (
    # GRPO's steps of one generation batch: MRTTrainer overrides each once and forwards to its progress form.
    PrivateName("_generate_and_score_completions", "GRPOTrainer", "override", ("inputs",),
                "returns the batch dict whose 'advantages' (B,) MRT replaces; also called by "
                "mrt.experiments.estimators to score one batch"),
    PrivateName("_calculate_rewards", "GRPOTrainer", "override",
                ("inputs", "prompts", "completions", "completion_ids_list"),
                "(N, F) rewards gathered over ranks; branched calls it once per half"),
    PrivateName("_tokenize_prompts", "GRPOTrainer", "override", ("prompts",),
                "returns (prompt_ids, images, multimodal_fields); branched extends the prompt ids"),
    PrivateName("_generate", "GRPOTrainer", "override", ("prompts",),
                "returns a tuple whose item 1 is this rank's completion ids, after logging completions/ metrics"),
    PrivateName("_generate_single_turn", "GRPOTrainer", "override",
                ("prompt_ids", "images", "multimodal_fields", "num_generations"),
                "returns (completion ids, logprobs or None); calls model.generate (transformers path)"),
    # Checkpoints: the prefix store and the prover's random state travel with them.
    PrivateName("_save_checkpoint", "GRPOTrainer", "override", ("model", "trial"), "writes checkpoint-<step>/"),
    PrivateName("_load_optimizer_and_scheduler", "GRPOTrainer", "override", ("checkpoint",),
                "called once on resume with the checkpoint folder"),
    PrivateName("_save_rng_state", "Trainer", "override", ("output_dir",), "called on every checkpoint save"),
    PrivateName("_load_rng_state", "Trainer", "override", ("checkpoint",), "called on resume"),
    PrivateName("_get_output_dir", "Trainer", "call", ("trial",), "the folder that holds checkpoint-<step>/"),
    # State read or written.
    PrivateName("_tokenizer", "GRPOTrainer", "attribute", use="the policy's tokenizer (also of a processor)"),
    PrivateName("_metrics", "GRPOTrainer", "attribute", use="{'train'|'eval': {name: [values]}}, logged as means"),
    PrivateName("_logs", "GRPOTrainer", "attribute",
                use="the completions table: 'advantages' (a list, one per row) and 'extra' ({column: list})"),
    PrivateName("_pending_extra_logs", "GRPOTrainer", "attribute",
                use="{column: [values]} queued by reward functions' log_extra; branched swaps it per half"),
    PrivateName("_dist", "GRPOTrainer", "attribute",
                use="DistributedBackend: summon_full_params(model, recurse=False) under FSDP (transformers prover)"),
    # The model card.
    PrivateName("_tag_names", "GRPOTrainer", "class", use="the model card's tags"),
    PrivateName("_name", "GRPOTrainer", "class", use="the trainer's name on the model card"),
    PrivateName("_paper", "GRPOTrainer", "class", use="{'title', 'id', 'citation'} cited on the model card"),
)
