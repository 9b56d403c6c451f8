"""MRTTrainer: GRPO whose advantages carry the dense progress bonus of every episode."""

import copy
import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer

from mrt.branched_trainer import BranchedRollouts
from mrt.config import MRTConfig
from mrt.data import require_columns
from mrt.episodes import resolve_thinking_tag
from mrt.progress import episode_bonus, progress, regret, termination_advantages, token_advantages
from mrt.prover import ProgressEstimator, RewardScorer, TransformersProver, make_prover, make_suffix
from mrt.rewards import make_accuracy_reward

logger = logging.getLogger(__name__)

# Metrics summed over ranks; every other mrt/ metric is a mean over completions (or episodes).
_TOTALS = ("prover_requests", "prover_requests_asked", "prover_tokens", "prover_prompt_tokens", "prover_prefill_min",
           "prover_prefill_tokens", "unscorable")
LONG_ANSWER_CHARS = 64  # likelihood estimator: a gold answer longer than this is likely a whole solution


@dataclass
class ProgressRecord:
    """The last generation batch's progress estimate, kept for inspection (`trainer.last_progress`)."""

    ends: list[list[int]]  # episode end token indices per completion ([] when not sent to the prover)
    j_values: list[list[float | None]]  # J_0..J_H per completion (J_H = the completion's own reward)
    scorable: list[bool]
    grpo_advantages: torch.Tensor  # (B,) GRPO's group-normalised advantages
    sequence_advantages: torch.Tensor  # (B,) the sequence part actually used
    advantages: torch.Tensor | None  # (B, T) what the loss sees


class MRTTrainer(BranchedRollouts, GRPOTrainer):
    """[`~trl.GRPOTrainer`] with MRT's progress bonus; takes the same arguments, with an [`MRTConfig`].

    `reward_funcs` defaults to the math-verify accuracy reward on `args.answer_column`; whatever they are, they
    define success for the prover too (`args.progress_reward_funcs` picks some of them). Set `progress_enabled` to
    False to generate and score batches as plain GRPO (e.g. to compare on the same batch).
    """

    _tag_names = ["trl", "grpo", "mrt"]
    _name = "MRT"

    def __init__(self, model, reward_funcs=None, args: MRTConfig | None = None, train_dataset=None,
                 eval_dataset=None, processing_class=None, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = MRTConfig(output_dir=f"{name.split('/')[-1]}-MRT")
        if not isinstance(args, MRTConfig):
            raise TypeError(f"MRTTrainer needs an MRTConfig, got {type(args).__name__}; build one with MRTConfig(...).")
        if reward_funcs is None or args.prover_estimator == "likelihood":
            why = "the default reward" if reward_funcs is None else "the likelihood estimator"
            for dataset in _datasets(train_dataset, eval_dataset):
                require_columns(dataset, ["prompt", args.answer_column], what=f"dataset (answer_column for {why})")
        if reward_funcs is None:
            reward_funcs = make_accuracy_reward(args.answer_column)
        super().__init__(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)

        self.end_of_thinking_tag = resolve_thinking_tag(args.end_of_thinking_tag, self._tokenizer)
        self.reward_scorer = RewardScorer.from_trainer(self)
        self.progress_estimator = self._build_estimator()
        self.progress_enabled = True
        self.batch_rewards: torch.Tensor | None = None  # (N, F) rewards of the last batch, every rank's rows
        self.last_progress: ProgressRecord | None = None
        self._prover_seconds = 0.0
        self._generated: list[tuple] = []  # (sequences, prompt width, cache) of this batch's transformers generate
        if args.max_prompt_length is not None and self.train_dataset is not None:
            self.train_dataset = self._drop_long_prompts(self.train_dataset, args.max_prompt_length)
        if args.prover_estimator == "likelihood":
            _warn_long_answers(self.train_dataset, args.answer_column)
        self.add_callback(_ProverShare(self))
        self._init_branched()  # progress_mode='branched': mrt.branched_trainer

    def _build_estimator(self) -> ProgressEstimator:
        args, tok = self.args, self._tokenizer
        prover = make_prover(self) if args.runs_prover else None
        return ProgressEstimator(
            prover, tok, args.episode_rules(self.end_of_thinking_tag),
            make_suffix(tok, args.termination_suffix, self.end_of_thinking_tag), self.reward_scorer,
            num_samples=args.prover_num_samples, max_tokens=args.prover_max_tokens,
            temperature=args.prover_temperature or args.temperature, stop=args.prover_stop,
            estimator=args.prover_estimator, answer_format=args.prover_answer_format, answer_column=args.answer_column)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # GRPO's rewards of the batch (gathered over ranks): J_H of every completion is its own reward.
        self.batch_rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self.batch_rewards

    def _generate_single_turn(self, prompt_ids, *args, **kwargs):
        # The transformers prover reads each completion from the keys and values its generation computed.
        if not (self.progress_enabled and isinstance(self.progress_estimator.prover, TransformersProver)
                and not self.use_vllm and not getattr(self, "use_transformers_continuous_batching", False)
                and not getattr(self, "use_transformers_paged", False)):
            return super()._generate_single_turn(prompt_ids, *args, **kwargs)
        model = self.accelerator.unwrap_model(self.model_wrapped)
        plain = model.generate

        def generate(*positional, **options):
            if options.get("generation_config") is not None:  # set on a copy: config and flag together warn
                options["generation_config"] = copy.deepcopy(options["generation_config"])
                options["generation_config"].return_dict_in_generate = True
            else:
                options["return_dict_in_generate"] = True
            out = plain(*positional, **options)
            width = options["input_ids"].size(1) if "input_ids" in options else positional[0].size(1)
            self._generated.append((out.sequences, width, getattr(out, "past_key_values", None)))
            return out.sequences

        model.generate = generate
        try:
            return super()._generate_single_turn(prompt_ids, *args, **kwargs)
        finally:
            del model.generate

    def _generate_and_score_completions(self, inputs):
        self._generated = []
        try:
            return self._score_with_progress(inputs)
        finally:
            self._generated = []  # the generation caches are freed with the batch

    def _score_with_progress(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if not (self.args.runs_prover and self.progress_enabled):
            return output
        start = time.perf_counter()
        mode = "train" if self.model.training else "eval"
        args = self.args
        rewards = self.local_rewards(len(inputs))
        outcomes = self.reward_scorer.combine(rewards)
        estimate, active = self.estimate_progress(output, inputs, outcomes)

        j_rows, ends = [[] for _ in inputs], [[] for _ in inputs]
        for k, i in enumerate(active):
            j_rows[i], ends[i] = estimate.j[k], estimate.ends[k]
        scorable = [bool(js) and all(v is not None for v in js) for js in j_rows]
        progress_rows = [progress(js)[:len(e)] if ok else [0.0] * len(e) for js, e, ok in zip(j_rows, ends, scorable)]
        device = output["advantages"].device
        grpo = output["advantages"]
        sequence = grpo
        if args.progress_mode == "termination_baseline":
            # r - J_0 with r the completion's whole reward (as GRPO combines it); GRPO's where J_0 is unknown.
            full = (rewards * self.reward_weights.cpu()).nansum(dim=1)
            base = torch.tensor([js[0] if ok else 0.0 for js, ok in zip(j_rows, scorable)])
            keep = torch.tensor(scorable) & ~torch.isnan(rewards).all(dim=1)
            sequence = torch.where(keep.to(device), termination_advantages(full.tolist(), base.tolist()).to(device),
                                   grpo)
        bonus = episode_bonus(ends, progress_rows, output["completion_ids"].size(1))
        self.last_progress = ProgressRecord(ends, j_rows, scorable, grpo, sequence, None)
        output["advantages"] = self.last_progress.advantages = token_advantages(sequence, bonus.to(device),
                                                                                args.alpha)

        seconds = time.perf_counter() - start
        if mode == "train":
            self._prover_seconds += seconds
        ok_rows = [(js, e, p) for js, e, p, ok in zip(j_rows, ends, progress_rows, scorable) if ok]
        episode_values = [v for _, _, p in ok_rows for v in p]
        self._log_mrt(mode, means={
            "episodes": (sum(len(e) for e in estimate.ends), len(estimate.ends)),
            "J_0": (sum(js[0] for js, _, _ in ok_rows), len(ok_rows)),
            "J_final": (sum(js[-1] for js, _, _ in ok_rows), len(ok_rows)),
            "progress": (sum(episode_values), len(episode_values)),
            "progress_abs": (sum(abs(v) for v in episode_values), len(episode_values)),
            "frac_positive_progress": (sum(v > 0 for v in episode_values), len(episode_values)),
            "regret": (sum(regret(js, e) for js, e, _ in ok_rows if e), sum(1 for _, e, _ in ok_rows if e)),
            "prover_seconds": (seconds, 1),
        }, totals={**estimate.stats(), "unscorable": len(active) - sum(scorable[i] for i in active)})
        return output

    def local_rewards(self, batch_size: int) -> torch.Tensor:
        """(B, F) rewards of this rank's completions of the last batch (NaN where a function returned None)."""
        index = self.accelerator.process_index
        return self.batch_rewards[index * batch_size:(index + 1) * batch_size].float().cpu()

    def estimate_progress(self, output: dict, inputs: list[dict], outcomes: list[float | None],
                          estimator: ProgressEstimator | None = None):
        """J at every episode prefix of a scored generation batch, for the completions that train (a completion
        masked by `mask_truncated_completions` is not sent to the prover); returns the estimate and their indices.
        `estimator`: another one than the trainer's (e.g. to compare estimators on the same batch)."""
        prompts = [ids[m.bool()].tolist() for ids, m in zip(output["prompt_ids"], output["prompt_mask"])]
        completions = [ids[m.bool()].tolist() for ids, m in zip(output["completion_ids"], output["completion_mask"])]
        active = [i for i, c in enumerate(completions) if c or not self.args.mask_truncated_completions]
        pick = lambda values: [values[i] for i in active]  # noqa: E731
        state = {"trainer_state": self.state}
        estimator = estimator or self.progress_estimator
        with ExitStack() as stack:
            if isinstance(estimator.prover, TransformersProver):
                for sequences, width, cache in self._generated:
                    stack.enter_context(estimator.prover.reusing(sequences, width, cache))
            estimate = estimator.estimate(pick(prompts), pick(completions), pick([x["prompt"] for x in inputs]),
                                          pick(inputs), outcomes=pick(outcomes), reward_kwargs=state)
        return estimate, active

    def _log_mrt(self, mode: str, means: dict[str, tuple[float, int]], totals: dict[str, float]) -> None:
        names = sorted(means) + sorted(totals)
        local = [[float(means[n][0]), float(means[n][1])] for n in sorted(means)]
        local += [[float(totals[n]), 1.0] for n in sorted(totals)]
        stats = torch.tensor(local, dtype=torch.float64, device=self.accelerator.device)
        stats = self.accelerator.gather(stats.unsqueeze(0)).sum(dim=0).tolist()
        for name, (value, count) in zip(names, stats):
            if name in _TOTALS:
                self._metrics[mode][f"mrt/{name}"].append(value)
            elif count > 0:
                self._metrics[mode][f"mrt/{name}"].append(value / count)

    def _drop_long_prompts(self, dataset, limit: int):
        tok = self._tokenizer

        def length(example):
            prompt = example["prompt"]
            if isinstance(prompt, list):
                prompt = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            return len(tok(prompt, add_special_tokens=False)["input_ids"])

        before = len(dataset)
        dataset = dataset.filter(lambda example: length(example) <= limit)
        if len(dataset) < before:
            logger.warning("Dropped %d of %d training prompts longer than max_prompt_length=%d tokens.",
                           before - len(dataset), before, limit)
        if len(dataset) == 0:
            raise ValueError(f"Every training prompt is longer than max_prompt_length={limit} tokens.")
        return dataset


class _ProverShare(TrainerCallback):
    """Logs the prover's share of each optimizer step's wall time as mrt/prover_step_share (training only)."""

    def __init__(self, trainer: MRTTrainer):
        self.trainer, self.start = trainer, None

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()
        self.trainer._prover_seconds = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        if self.start is None or not self.trainer.args.runs_prover:
            return
        wall = time.perf_counter() - self.start
        self.trainer._metrics["train"]["mrt/prover_step_share"].append(self.trainer._prover_seconds / wall)
        self.trainer._prover_seconds = 0.0


def _datasets(train_dataset, eval_dataset) -> list:
    found = [train_dataset] if train_dataset is not None else []
    if isinstance(eval_dataset, dict):
        found += list(eval_dataset.values())
    elif eval_dataset is not None:
        found.append(eval_dataset)
    # Streaming datasets may not know their columns up front; they are checked when read.
    return [d for d in found if getattr(d, "column_names", None) is not None]


def _warn_long_answers(dataset, column: str) -> None:
    """The likelihood estimator scores the exact gold text: whole solutions give J near 0 everywhere."""
    if dataset is None or getattr(dataset, "column_names", None) is None or column not in dataset.column_names:
        return
    golds = [str(g) for g in dataset.select(range(min(64, len(dataset))))[column]]
    long = [g for g in golds if len(g) > LONG_ANSWER_CHARS or "\n" in g.strip()]
    if long:
        logger.warning("prover_estimator='likelihood' scores the exact gold answer, but %d of the first %d values of "
                       "answer_column=%r are long texts (e.g. %r): J will be near 0. Point answer_column at short final "
                       "answers, or use prover_estimator='sampling'.", len(long), len(golds), column, long[0][:80])
