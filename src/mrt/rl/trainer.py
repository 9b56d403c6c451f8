"""MRTTrainer: GRPO whose advantages carry the dense progress bonus of every episode."""

import copy
import logging
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import gather_object
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.extras.profiling import profiling_context

from mrt.data import require_columns
from mrt.episodes import resolve_thinking_tag
from mrt.progress import progress, regret
from mrt.prover import ProgressEstimator, RewardScorer, TransformersProver, make_prover, make_suffix
from mrt.prover.presets import answer_temperature
from mrt.rewards.accuracy import make_accuracy_reward, with_eos_ids
from mrt.rl.config import MRTConfig
from mrt.rl.modes import mode_class
from mrt.tokens import eos_ids
from mrt.tokens import prompt_ids as prompt_token_ids

logger = logging.getLogger(__name__)

MRT_CITATION = """\
@inproceedings{qu2025mrt,
    title        = {{Optimizing Test-Time Compute via Meta Reinforcement Fine-Tuning}},
    author       = {Yuxiao Qu and Matthew Y. R. Yang and Amrith Setlur and Lewis Tunstall and Edward Emanuel Beeching and
                    Ruslan Salakhutdinov and Aviral Kumar},
    booktitle    = {International Conference on Machine Learning (ICML)},
    year         = 2025,
    eprint       = {arXiv:2503.07572},
}"""

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


class MRTTrainer(GRPOTrainer):
    """[`~trl.GRPOTrainer`] with MRT's progress bonus; takes the same arguments, with an [`MRTConfig`].

    `reward_funcs` defaults to the math-verify accuracy reward on `args.answer_column`; whatever they are, they
    define success for the prover too (`args.progress_reward_funcs` picks some of them). Set `progress_enabled` to
    False to generate and score batches as plain GRPO (e.g. to compare on the same batch). The form of MRT
    (`args.progress_mode`) is `self.progress_mode`, a `mrt.rl.modes.ProgressMode` built once: every GRPO hook
    below forwards to it.
    """

    _tag_names = ["trl", "grpo", "mrt"]
    _name = "MRT"
    _paper = {
        "title": "Optimizing Test-Time Compute via Meta Reinforcement Fine-Tuning",
        "id": "2503.07572",
        "citation": MRT_CITATION,
    }

    def __init__(self, model, reward_funcs=None, args: MRTConfig | None = None, train_dataset=None,
                 eval_dataset=None, processing_class=None, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = MRTConfig(output_dir=f"{name.split('/')[-1]}-MRT")
        if not isinstance(args, MRTConfig):
            raise TypeError(f"MRTTrainer needs an MRTConfig, got {type(args).__name__}; build one with MRTConfig(...).")
        # No reward_funcs: MRT's default reward on the answer column, unless an environment owns the reward (TRL's).
        default_reward = reward_funcs is None and kwargs.get("environment_factory") is None
        if default_reward:
            _require_reward_source(args.answer_column, _datasets(train_dataset, eval_dataset))
        if default_reward or args.prover_estimator == "likelihood":
            why = "the default reward" if default_reward else "the likelihood estimator"
            for dataset in _datasets(train_dataset, eval_dataset):
                require_columns(dataset, ["prompt", args.answer_column], what=f"dataset (answer_column for {why})")
        if default_reward:
            reward_funcs = make_accuracy_reward(args.answer_column)
        super().__init__(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)
        # MRT's accuracy reward tells a finished completion from one cut at the token limit by the policy's EOS ids.
        self.reward_funcs[:] = [with_eos_ids(f, eos_ids(self._tokenizer, self.eos_token_ids))
                                for f in self.reward_funcs]

        # The model card's base model: the name the caller gave (a hub id, an alias or a folder).
        self.base_model_name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", None)
        self.end_of_thinking_tag = resolve_thinking_tag(args.end_of_thinking_tag, self._tokenizer)
        self.reward_scorer = RewardScorer.from_trainer(self)
        self.progress_estimator = self._build_estimator()
        self.progress_enabled = True
        self.batch_rewards: torch.Tensor | None = None  # (N, F) rewards of the last batch, every rank's rows
        self.last_progress: ProgressRecord | None = None
        self._prover_seconds = 0.0
        self._generated: list[tuple] = []  # (sequences, prompt width, cache) of this batch's transformers generate
        self._ids_only = False  # this batch's generate returned token ids only (no scores, no cache)
        self._warned_ids_only = False
        if args.max_prompt_length is not None and self.train_dataset is not None:
            self.train_dataset = self._drop_long_prompts(self.train_dataset, args.max_prompt_length)
        if args.prover_estimator == "likelihood":
            _warn_long_answers(self.train_dataset, args.answer_column)
        self.add_callback(_ProverShare(self))
        self.progress_mode = mode_class(args.progress_mode)(self)  # the form (mrt.rl.modes), built once

    def _build_estimator(self) -> ProgressEstimator:
        args, tok = self.args, self._tokenizer
        prover = make_prover(self) if args.runs_prover else None
        return ProgressEstimator(
            prover, tok, args.episode_rules(self.end_of_thinking_tag),
            make_suffix(tok, args.termination_suffix, self.end_of_thinking_tag), self.reward_scorer,
            num_samples=args.prover_num_samples, max_tokens=args.prover_token_budget,
            temperature=answer_temperature(args.prover_temperature, args.temperature), stop=args.prover_stop,
            estimator=args.prover_estimator, answer_format=args.prover_answer_format, answer_column=args.answer_column)

    # ------------------------------------------------------------ GRPO's hooks, each forwarded to the form

    def _tokenize_prompts(self, prompts):
        return self.progress_mode.tokenize_prompts(*super()._tokenize_prompts(prompts))

    def _generate(self, prompts):
        out = super()._generate(prompts)
        self.progress_mode.generated(out[1])
        return out

    def _generate_single_turn(self, prompt_ids, *args, **kwargs):
        return self.progress_mode.generate_single_turn(self._generate_policy, prompt_ids, *args, **kwargs)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # GRPO's rewards of the batch (gathered over ranks): J_H of every completion is its own reward.
        self.batch_rewards = self.progress_mode.calculate_rewards(super()._calculate_rewards, inputs, prompts,
                                                                  completions, completion_ids_list)
        return self.batch_rewards

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        self.progress_mode.save(os.path.join(self._get_output_dir(trial=trial),
                                             f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.progress_mode.load(checkpoint)

    def _prover_runs_now(self) -> bool:
        """Whether the prover runs on the batch being generated: a training batch, or an evaluation one with
        `prover_on_eval` (evaluation otherwise scores as GRPO does); never after the policy's generate gave token ids
        only (the transformers prover samples from generate's scores and caches)."""
        return (self.args.runs_prover and self.progress_enabled and not self._ids_only
                and (self.model.training or self.args.prover_on_eval))

    def _generate_policy(self, prompt_ids, *args, **kwargs):
        """GRPO's generation of one turn. The transformers prover reads each completion from the keys and values its generation computed
        (prover_reuse_generation_cache), and needs a generate that returns scores and caches."""
        if not (self._prover_runs_now() and isinstance(self.progress_estimator.prover, TransformersProver)
                and not self.use_vllm
                and not getattr(self, "use_transformers_continuous_batching", False)
                and not getattr(self, "use_transformers_paged", False)):
            return super()._generate_single_turn(prompt_ids, *args, **kwargs)
        model = self.accelerator.unwrap_model(self.model_wrapped)
        own = vars(model).get("generate")  # a generate set on the instance itself is put back afterwards
        plain = model.generate

        def generate(*positional, **options):
            if options.get("generation_config") is not None:  # set on a copy: config and flag together warn
                options["generation_config"] = copy.deepcopy(options["generation_config"])
                options["generation_config"].return_dict_in_generate = True
            else:
                options["return_dict_in_generate"] = True
            out = plain(*positional, **options)
            if isinstance(out, torch.Tensor):  # ids only (a custom generate, a mock): no cache, and no prover
                self._gave_ids_only()
                return out
            if self.args.prover_reuse_generation_cache:
                width = options["input_ids"].size(1) if "input_ids" in options else positional[0].size(1)
                self._generated.append((out.sequences, width, getattr(out, "past_key_values", None)))
            return out.sequences

        model.generate = generate
        try:
            return super()._generate_single_turn(prompt_ids, *args, **kwargs)
        finally:
            if own is None:
                del model.generate
            else:
                model.generate = own

    def _gave_ids_only(self) -> None:
        self._ids_only = True
        if not self._warned_ids_only:
            self._warned_ids_only = True
            logger.warning("The policy's generate returned a tensor of token ids, not a GenerateOutput, when asked for "
                           "return_dict_in_generate: the transformers prover needs its scores and caches, so batches "
                           "generated this way train as GRPO (no progress bonus). Use use_vllm=True or prover='server' "
                           "for MRT with this model.")

    def _generate_and_score_completions(self, inputs):
        self._generated, self._ids_only = [], False
        self.last_progress = None
        try:
            output = self.progress_mode.generate_and_score(self._score_with_progress, inputs)
        finally:
            self._generated = []  # the generation caches are freed with the batch
        if self.log_completions:
            self._log_progress_columns(output)
        return output

    def _score_with_progress(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if not self._prover_runs_now():
            return output
        start = time.perf_counter()
        mode = "train" if self.model.training else "eval"
        rewards = self.local_rewards(len(inputs))
        outcomes = self.reward_scorer.combine(rewards)
        with profiling_context(self, "estimate_progress"):
            estimate, active = self.estimate_progress(output, inputs, outcomes)

        j_rows, ends = [[] for _ in inputs], [[] for _ in inputs]
        for k, i in enumerate(active):
            j_rows[i], ends[i] = estimate.j[k], estimate.ends[k]
        scorable = [bool(js) and all(v is not None for v in js) for js in j_rows]
        progress_rows = [progress(js)[:len(e)] if ok else [0.0] * len(e) for js, e, ok in zip(j_rows, ends, scorable)]
        grpo = output["advantages"]
        sequence, advantages = self.progress_mode.advantages(grpo, outcomes, j_rows, ends, progress_rows,
                                                             output["completion_ids"].size(1), mode)
        self.last_progress = ProgressRecord(ends, j_rows, scorable, grpo, sequence, advantages)
        output["advantages"] = advantages

        seconds = time.perf_counter() - start
        if mode == "train":
            self._prover_seconds += seconds
        ok_rows = [(js, e, p) for js, e, p, ok in zip(j_rows, ends, progress_rows, scorable) if ok]
        episode_values = [v for _, _, p in ok_rows for v in p]
        self.log_mrt(mode, means={
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
            if isinstance(estimator.prover, TransformersProver) and self.args.prover_reuse_generation_cache:
                for sequences, width, cache in self._generated:
                    stack.enter_context(estimator.prover.reusing(sequences, width, cache))
            estimate = estimator.estimate(pick(prompts), pick(completions), pick([x["prompt"] for x in inputs]),
                                          pick(inputs), outcomes=pick(outcomes), reward_kwargs=state)
        return estimate, active

    def log_mrt(self, mode: str, means: dict[str, tuple[float, int]], totals: dict[str, float]) -> None:
        """Log `mrt/` metrics over every rank: each of `means` is (sum, count), each of `totals` a sum."""
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

    def prompt_lengths(self, prompts: list) -> list[int]:
        """Tokens of each prompt as GRPOTrainer tokenizes prompts: a conversation through the processing
        class's chat template with the assistant turn opened, TRL's `chat_template`, `tools` and
        `args.chat_template_kwargs`; a plain prompt through the processing class, special tokens included."""
        ids = prompt_token_ids(self.processing_class, prompts, chat_template=self.chat_template, tools=self.tools,
                               chat_template_kwargs=self.chat_template_kwargs)
        return [len(row) for row in ids]

    def _drop_long_prompts(self, dataset, limit: int):
        before, chunk = len(dataset), 256
        lengths = [n for start in range(0, before, chunk)
                   for n in self.prompt_lengths(dataset[start:start + chunk]["prompt"])]
        dataset = dataset.select([i for i, n in enumerate(lengths) if n <= limit])
        if len(dataset) < before:
            logger.warning("Dropped %d of %d training prompts longer than max_prompt_length=%d tokens.",
                           before - len(dataset), before, limit)
        if len(dataset) == 0:
            raise ValueError(f"Every training prompt is longer than max_prompt_length={limit} tokens.")
        return dataset

    # ------------------------------------------------------------ what a run says and keeps

    def _save_rng_state(self, output_dir: str) -> None:
        # The prover's own generator is part of the run's random state: a resumed run draws the same J.
        super()._save_rng_state(output_dir)
        rng = getattr(self.progress_estimator.prover, "rng", None)
        if rng is not None:
            torch.save(rng.get_state(), os.path.join(output_dir, f"prover_rng_state_{self.args.process_index}.pth"))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        rng = getattr(self.progress_estimator.prover, "rng", None)
        path = os.path.join(checkpoint or "", f"prover_rng_state_{self.args.process_index}.pth")
        if checkpoint is not None and rng is not None and os.path.isfile(path):
            rng.set_state(torch.load(path, weights_only=True))

    def settings_summary(self) -> str:
        """A few lines naming the effective MRT settings (printed at the start of `mrt-train`)."""
        args = self.args
        funcs = self.reward_scorer.names
        j_funcs = [funcs[i] for i in self.reward_scorer.selected]
        lines = [f"MRT: progress_mode={args.progress_mode}, alpha={args.alpha}, rewards={funcs}"]
        if args.runs_prover:
            backend = "server " + args.prover_server_url if args.prover == "server" else (
                "policy via vLLM (" + args.vllm_mode + ")" if args.use_vllm else "policy via transformers")
            lines.append(f"  prover mu: {backend}; estimator={args.prover_estimator}, "
                         f"{args.prover_num_samples} samples x {args.prover_token_budget} tokens, "
                         f"suffix={args.termination_suffix!r}; J from {j_funcs}")
        else:
            lines.append(self.progress_mode.summary() or "  prover off (alpha = 0 with progress_mode='dense' is GRPO)")
        lines.append(f"  episodes: markers {list(args.episode_markers)[:3]}..., at most {args.max_episodes}, "
                     f"fallback={args.episode_fallback}, end-of-thinking tag={self.end_of_thinking_tag!r}")
        return "\n".join(lines)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Saves the model; a save into `args.output_dir` (the final model) also writes the model card there."""
        super().save_model(output_dir, _internal_call)
        final = output_dir is None or os.path.abspath(output_dir) == os.path.abspath(self.args.output_dir)
        if final and not _internal_call:
            self.create_model_card(model_name=self.args.hub_model_id or Path(self.args.output_dir).name)

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None, tags=None):
        """TRL's card, citing MRT (Qu et al., arXiv 2503.07572) and naming the base model also when it was a local
        folder (TRL then links a base model 'None')."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        path = os.path.join(self.args.output_dir, "README.md")
        if self.is_world_process_zero() and os.path.exists(path):
            text = Path(path).read_text()
            name = str(self.base_model_name or "an unnamed model")
            if os.path.isdir(name):
                name = f"{Path(name).name} (local folder)"
            Path(path).write_text(text.replace("[None](https://huggingface.co/None)", f"`{name}`"))

    def _log_progress_columns(self, output: dict) -> None:
        """TRL's completions table: the advantage the loss uses (mean over the completion's tokens), and per
        completion its episode ends, J_0..J_H, progress terms and per-episode advantages (None without a prover)."""
        advantages = output["advantages"].float()
        if advantages.dim() == 2:
            mask = output["completion_mask"].float()
            used = ((advantages * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).tolist()
        else:
            used = advantages.tolist()
        record, rows = self.last_progress, []
        for i in range(len(used)):
            if record is None or not record.j_values[i]:
                rows.append((used[i], None, None, None, None))
                continue
            js = record.j_values[i]
            terms = progress(js) if record.scorable[i] else None
            sequence = float(record.sequence_advantages[i])
            per_episode = [round(sequence + self.args.alpha * t, 4) for t in terms] if terms else None
            rows.append((used[i], record.ends[i], [None if v is None else round(v, 4) for v in js],
                         [round(t, 4) for t in terms] if terms else None, per_episode))
        rows = gather_object(rows)
        logged = self._logs["advantages"]
        for k, row in enumerate(rows):  # TRL logged GRPO's advantages of these rows last: replace them
            logged[len(logged) - len(rows) + k] = row[0]
        for c, name in enumerate(("episode_ends", "J", "progress", "advantage_per_episode"), start=1):
            self._logs["extra"][name].extend(row[c] for row in rows)


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


def _require_reward_source(column: str, datasets: list) -> None:
    """TRL's error when nothing gives a reward: no reward_funcs, and no answer column for MRT's default reward."""
    for dataset in datasets:
        present = dataset.column_names
        splits = list(present.values()) if isinstance(present, dict) else [present]
        if any(column not in names for names in splits):
            raise ValueError(
                "No reward source provided. Pass `reward_funcs`, or an `environment_factory` whose environment defines "
                "a `get_reward` method, or a dataset with the gold answers in answer_column="
                f"{column!r} for MRT's default math-verify reward (the dataset's columns are {present}).")


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
