"""The prover pipeline: completions -> episodes -> prover requests -> mu -> J per episode prefix.

One `ProgressEstimator` serves the trainer, the evaluation, MRT-STaR and the benches; it is built from explicit
parts (a prover backend, the tokenizer, the episode rules, the suffix, the reward scorer).
"""

import math
from dataclasses import dataclass, field

from mrt.episodes import EpisodeRules, prefix_lengths, split_completion
from mrt.prover.base import Prover
from mrt.prover.presets import ESTIMATORS
from mrt.prover.requests import ProverRequests, Suffix, build_requests
from mrt.prover.scoring import RewardScorer, sample_success


@dataclass
class ProgressEstimate:
    """J at every episode prefix of a batch of completions."""

    ends: list[list[int]]  # episode end token indices per completion
    lengths: list[list[int]]  # prefix lengths b_0..b_{H-1} (b_0 = 0, also for an empty completion)
    j: list[list[float | None]]  # J_0..J_{H-1}, then J_H = the outcome when outcomes were given
    requests: ProverRequests
    samples: list[list[list[int]]] = field(default_factory=list)  # mu's token ids per request (sampling)
    sample_scores: list[list[float | None]] = field(default_factory=list)  # per request, per sample
    rates: list[float | None] = field(default_factory=list)  # J per request
    prefill_tokens: int | None = None  # tokens the prover's prefill read (backends that count them)

    @property
    def scorable(self) -> list[bool]:
        return [all(v is not None for v in js) for js in self.j]

    def stats(self) -> dict[str, float]:
        return {
            "prover_requests": len(self.requests.prompts),
            "prover_requests_asked": self.requests.asked,
            "prover_tokens": sum(len(s) for group in self.samples for s in group),
            "prover_prompt_tokens": sum(len(p) for p in self.requests.prompts),
            "prover_prefill_min": distinct_prefixes([p[:-1] for p in self.requests.prompts]),
            **({"prover_prefill_tokens": self.prefill_tokens} if self.prefill_tokens is not None else {}),
        }


class ProgressEstimator:
    """J_j for every episode prefix: mu answers from prompt + prefix + termination suffix, the reward functions score
    its answers (`sampling`), or the probability that mu writes the gold answer is read directly (`likelihood`)."""

    def __init__(self, prover: Prover, tokenizer, rules: EpisodeRules, suffix: Suffix, scorer: RewardScorer | None,
                 num_samples: int = 4, max_tokens: int = 64, temperature: float = 1.0, stop: list[str] | None = None,
                 estimator: str = "sampling", answer_format: str = "{answer}", answer_column: str = "answer"):
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        self.prover, self.tokenizer, self.rules, self.suffix, self.scorer = prover, tokenizer, rules, suffix, scorer
        self.num_samples, self.max_tokens, self.temperature, self.stop = num_samples, max_tokens, temperature, stop
        self.estimator, self.answer_format, self.answer_column = estimator, answer_format, answer_column

    def split(self, completion_ids: list[list[int]]) -> tuple[list[list[int]], list[list[int]]]:
        """Episode ends of each completion and its prefix lengths (b_0 = 0 even for an empty completion)."""
        ends = [split_completion(c, self.tokenizer, self.rules) for c in completion_ids]
        return ends, [prefix_lengths(e) if e else [0] for e in ends]

    def requests(self, prompt_ids: list[list[int]], completion_ids: list[list[int]], rows: list[dict] | None = None,
                 lengths: list[list[int]] | None = None) -> tuple[ProverRequests, list[list[int]], list[list[int]]]:
        """The prover requests of the completions' episode prefixes (or of the given prefix `lengths`), with each
        completion's episode ends and prefix lengths. Rows with the same columns share requests."""
        if lengths is None:
            ends, lengths = self.split(completion_ids)
        else:
            ends = [[] for _ in completion_ids]
        keys = [_row_key(row) for row in rows] if rows is not None else None
        return build_requests(prompt_ids, completion_ids, lengths, self.suffix, self.tokenizer, keys), ends, lengths

    def estimate(self, prompt_ids: list[list[int]], completion_ids: list[list[int]], prompts: list, rows: list[dict],
                 outcomes: list[float | None] | None = None, lengths: list[list[int]] | None = None,
                 seed: int | None = None, reward_kwargs: dict | None = None) -> ProgressEstimate:
        """J at each completion's episode prefixes (or at the given prefix `lengths`).

        `prompts` and `rows` are what the reward functions get: the prompts in the dataset's format and each
        completion's row (its columns). `outcomes`, the completions' own rewards, are appended as J_H.
        """
        requests, ends, lengths = self.requests(prompt_ids, completion_ids, rows, lengths)
        estimate = ProgressEstimate(ends, lengths, [], requests)
        before = getattr(self.prover, "prefill_tokens", None)
        if self.estimator == "likelihood":
            estimate.rates = self._likelihood(requests, rows)
        else:
            estimate.samples = self.prover.generate(requests.prompts, self.num_samples, self.max_tokens,
                                                    self.temperature, self.stop, seed)
            conversational = bool(prompts) and isinstance(prompts[0], list)
            decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
            estimate.rates, estimate.sample_scores = sample_success(
                requests, estimate.samples, decode, self.suffix.text, self.scorer, prompts, prompt_ids, rows,
                conversational, reward_kwargs)
        if before is not None:
            estimate.prefill_tokens = self.prover.prefill_tokens - before
        for i, row in enumerate(requests.index):
            js = [estimate.rates[r] for r in row]
            estimate.j.append(js + ([outcomes[i]] if outcomes is not None else []))
        return estimate

    def _likelihood(self, requests: ProverRequests, rows: list[dict]) -> list[float | None]:
        """J per request: the probability that mu writes the formatted gold answer right after the suffix, with
        the answer's tokens as the tokenizer produces them in context (after the suffix text), not on their own."""
        prompts, answers, known = [], [], []
        for r, owner in enumerate(requests.owner):
            gold = rows[owner].get(self.answer_column)
            if gold is None or not str(gold).strip():
                continue
            head, answer = answer_in_context(self.tokenizer, self.suffix, self.answer_format.replace(
                "{answer}", str(gold).strip()))
            prompts.append([*requests.prompts[r][:len(requests.prompts[r]) - len(self.suffix.ids)], *head])
            answers.append(answer)
            known.append(r)
        # Called even with nothing to score: under ZeRO-3 every rank must take part in the model calls.
        logps = self.prover.likelihood(prompts, answers)
        rates: list[float | None] = [None] * len(requests.prompts)
        for r, value in zip(known, logps, strict=True):
            rates[r] = math.exp(value)
        return rates


def answer_in_context(tokenizer, suffix: Suffix, answer: str) -> tuple[list[int], list[int]]:
    """Suffix + answer tokenized together, split where the suffix's own tokens end: (suffix part, answer part).

    A tokenizer may merge the suffix's last characters with the answer's first ('{' + '\\frac' -> '{\\'); the split
    is then before the merged token, so the scored tokens are those the model would write."""
    together = tokenizer(suffix.text + answer, add_special_tokens=False)["input_ids"]
    same = 0
    for a, b in zip(suffix.ids, together):
        if a != b:
            break
        same += 1
    if same == len(together):  # the answer added no token of its own
        same = len(together) - 1
    return list(together[:same]), list(together[same:])


def distinct_prefixes(sequences: list[list[int]]) -> int:
    """Nodes of the trie of `sequences`: the fewest tokens a reader that shares common leading tokens must read."""
    total, previous = 0, []
    for seq in sorted(sequences):
        common = 0
        for a, b in zip(seq, previous):
            if a != b:
                break
            common += 1
        total += len(seq) - common
        previous = seq
    return total


def _row_key(row: dict) -> str:
    """Rows with the same columns (the G completions of one prompt) share their prover requests."""
    return repr(sorted((k, repr(v)) for k, v in row.items() if k not in ("completion", "completion_ids")))
