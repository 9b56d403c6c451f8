"""MRTTrainer: GRPO whose advantages carry the dense progress bonus of every episode."""

import logging
import time
from dataclasses import dataclass

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer

from mrt.config import MRTConfig
from mrt.data import require_columns
from mrt.episodes import EpisodeRules, prefix_lengths, resolve_thinking_tag, split_completion
from mrt.progress import episode_bonus, progress, regret, termination_advantages, token_advantages
from mrt.prover import ProverBatch, build_batch, likelihood_rates, make_prover, success_rates, termination_suffix
from mrt.rewards import make_accuracy_reward, score

logger = logging.getLogger(__name__)

# Metrics summed over ranks; every other mrt/ metric is a mean over completions (or episodes).
_TOTALS = ("prover_requests", "prover_requests_asked", "prover_tokens", "prover_prompt_tokens", "unscorable")


@dataclass
class ProgressRecord:
    """The last generation batch's progress estimate, kept for inspection (`trainer.last_progress`)."""

    ends: list[list[int]]  # episode end token indices per completion
    j_values: list[list[float | None]]  # J_0..J_H per completion (J_H = the real outcome)
    scorable: list[bool]
    grpo_advantages: torch.Tensor  # (B,) GRPO's group-normalised advantages
    sequence_advantages: torch.Tensor  # (B,) the sequence part actually used
    advantages: torch.Tensor  # (B, T) what the loss sees


class MRTTrainer(GRPOTrainer):
    """[`~trl.GRPOTrainer`] with MRT's progress bonus; takes the same arguments, with an [`MRTConfig`].

    `reward_funcs` defaults to the math-verify accuracy reward on `args.answer_column`.
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
        for dataset in _datasets(train_dataset, eval_dataset):
            require_columns(dataset, ["prompt", args.answer_column], what="dataset")
        if reward_funcs is None:
            reward_funcs = make_accuracy_reward(args.answer_column)
        super().__init__(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)

        tag = self.end_of_thinking_tag = resolve_thinking_tag(args.end_of_thinking_tag, self._tokenizer)
        self.episode_rules = EpisodeRules(
            markers=tuple(args.episode_markers), min_paragraphs_between=args.min_paragraphs_between,
            max_episodes=args.max_episodes, fallback=args.episode_fallback, chunk_tokens=args.episode_chunk_tokens,
            end_of_thinking_tag=tag,
        )
        self.suffix_text = termination_suffix(args.termination_suffix, tag)
        self.suffix_ids = self._tokenizer(self.suffix_text, add_special_tokens=False)["input_ids"]
        self.prover = make_prover(self)
        self._prover_seconds = 0.0
        self.last_progress: ProgressRecord | None = None
        if args.max_prompt_length is not None and self.train_dataset is not None:
            self.train_dataset = self._drop_long_prompts(self.train_dataset, args.max_prompt_length)
        self.add_callback(_ProverShare(self))

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if not self.args.runs_prover:
            return output
        start = time.perf_counter()
        mode = "train" if self.model.training else "eval"
        args = self.args
        batch, ends, outcomes = self.prover_batch(output, inputs)
        rates, samples = self.estimate_success(batch)

        j_rows = [[rates[k] for k in row] + [r] for row, r in zip(batch.index, outcomes)]
        scorable = [all(v is not None for v in js) for js in j_rows]
        progress_rows = [progress(js)[:len(e)] if ok else [0.0] * len(e)
                         for js, e, ok in zip(j_rows, ends, scorable)]
        device = output["advantages"].device
        keep = torch.tensor(scorable, dtype=torch.bool, device=device)
        if args.progress_mode == "termination_baseline":
            sequence = termination_advantages([js[-1] if ok else 0.0 for js, ok in zip(j_rows, scorable)],
                                              [js[0] if ok else 0.0 for js, ok in zip(j_rows, scorable)])
        else:
            sequence = output["advantages"]
        sequence = torch.where(keep, sequence.to(device), torch.zeros((), device=device))
        bonus = episode_bonus(ends, progress_rows, output["completion_ids"].size(1))
        self.last_progress = ProgressRecord(ends, j_rows, scorable, output["advantages"], sequence, None)
        output["advantages"] = self.last_progress.advantages = token_advantages(sequence, bonus, args.alpha)

        seconds = time.perf_counter() - start
        self._prover_seconds += seconds
        ok_rows = [(js, e, p) for js, e, p, ok in zip(j_rows, ends, progress_rows, scorable) if ok]
        episode_values = [v for _, _, p in ok_rows for v in p]
        self._log_mrt(mode, means={
            "episodes": (sum(len(e) for e in ends), len(ends)),
            "J_0": (sum(js[0] for js, _, _ in ok_rows), len(ok_rows)),
            "J_final": (sum(js[-1] for js, _, _ in ok_rows), len(ok_rows)),
            "progress": (sum(episode_values), len(episode_values)),
            "progress_abs": (sum(abs(v) for v in episode_values), len(episode_values)),
            "frac_positive_progress": (sum(v > 0 for v in episode_values), len(episode_values)),
            "regret": (sum(regret(js, e) for js, e, _ in ok_rows if e), sum(1 for _, e, _ in ok_rows if e)),
            "prover_seconds": (seconds, 1),
        }, totals={
            "prover_requests": len(batch.prompts),
            "prover_requests_asked": batch.asked,
            "prover_tokens": sum(len(s) for group in samples for s in group),
            "prover_prompt_tokens": sum(len(p) for p in batch.prompts),
            "unscorable": len(scorable) - sum(scorable),
        })
        return output

    def prover_batch(self, output: dict, inputs: list[dict]) -> tuple[ProverBatch, list[list[int]], list]:
        """The prover requests of a scored generation batch, each completion's episode ends and its 0/1 outcome."""
        tok, golds = self._tokenizer, [x.get(self.args.answer_column) for x in inputs]
        prompts = [ids[m.bool()].tolist() for ids, m in zip(output["prompt_ids"], output["prompt_mask"])]
        completions = self._completion_lists(output)
        texts = tok.batch_decode(completions, skip_special_tokens=True)
        outcomes = [score(text, gold) for text, gold in zip(texts, golds)]
        ends = [split_completion(c, tok, self.episode_rules) for c in completions]
        # b_0 = 0 for every completion (even an empty one) so that J_0 is always known.
        lengths = [prefix_lengths(e) if e else [0] for e in ends]
        decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
        batch = build_batch(prompts, completions, lengths, golds, self.suffix_ids, self.suffix_text, decode)
        return batch, ends, outcomes

    def estimate_success(self, batch: ProverBatch, estimator: str | None = None,
                         num_samples: int | None = None) -> tuple[list[float | None], list[list[list[int]]]]:
        """J for every request of `batch` with the configured (or the given) estimator; also mu's samples."""
        args, tok = self.args, self._tokenizer
        if (estimator or args.prover_estimator) == "likelihood":
            encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
            return likelihood_rates(self.prover, batch, encode, args.prover_answer_format), []
        temperature = args.prover_temperature or args.temperature
        samples = self.prover.generate(batch.prompts, num_samples or args.prover_num_samples, args.prover_max_tokens,
                                       temperature, args.prover_stop)
        return success_rates(batch, [tok.batch_decode(s, skip_special_tokens=True) for s in samples]), samples

    def _completion_lists(self, output) -> list[list[int]]:
        """Each completion's token ids without padding (truncated ones keep their tokens)."""
        ids, mask = output["completion_ids"], output["completion_mask"]
        limit = min(ids.size(1), self.args.max_completion_length or ids.size(1))
        rows = []
        for row, used in zip(ids.tolist(), mask.sum(dim=1).tolist()):
            # mask_truncated_completions zeroes the mask of a truncated completion: its tokens fill the limit.
            rows.append(row[:used] if used > 0 or not self.args.mask_truncated_completions else row[:limit])
        return rows

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
    """Logs the prover's share of each optimizer step's wall time as mrt/prover_step_share."""

    def __init__(self, trainer: MRTTrainer):
        self.trainer, self.start = trainer, None

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

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
