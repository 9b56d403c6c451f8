"""The paper's MRT (RL), Algorithm 2 (`progress_mode: branched`): the parts that need no trainer.

For each problem a prefix from an earlier policy is cut after a random number of episodes; of the G rollouts from
that prefix, half continue reasoning and half terminate at once (termination suffix, then the answer). With Ĵ(c)
the terminating half's mean reward, a continuing rollout's advantage is its GRPO advantage within its half plus
alpha * (r - Ĵ(c)); a terminating rollout's is its GRPO advantage within its half.

Here: problem keys, seeded cuts at episode boundaries (with left truncation to a token budget), the prefix column
of a dataset, the store of the trainer's own last rollout per problem, and the advantage as a pure tensor function.
"""

from __future__ import annotations

import json
import random
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mrt.episodes import EpisodeRules, episode_ends, prefix_lengths, token_pieces
from mrt.records import fingerprint, write_atomic

SCALE_REWARDS = ("group", "batch", "none")
PREFIX_SOURCES = ("rollouts", "dataset")  # the trainer's own last rollout of a problem, or a dataset column
STORE_FILE = "mrt_prefixes.json"
RANK_STORE_FILE = "mrt_prefixes_rank{rank}.json"  # one file per rank, as checkpoints before the shared file had
_STD_EPS = 1e-4  # as GRPO: advantages are divided by std + 1e-4


# ---------------------------------------------------------------- keys and seeds


def problem_key(prompt) -> str:
    """A stable key for a problem's prompt (a string or a conversation): the same on every rank and every run."""
    return fingerprint(json.dumps(prompt, sort_keys=True, ensure_ascii=False, default=str), 20)


def cut_rng(seed: int, key: str, step: int) -> random.Random:
    """The random source of one problem's cut at one training step (reproducible, independent of call order)."""
    return random.Random(f"mrt-branched-{seed}-{key}-{step}")


# ---------------------------------------------------------------- the cut


@dataclass(frozen=True)
class Cut:
    """Where a prefix was cut. `ids` = source[start:end]: the prefix tokens given to both halves."""

    ids: list[int]
    episode: int  # the cut is after this many episodes of the source (0: empty prefix)
    episodes: int  # episodes of the source before its end-of-thinking tag, H
    start: int  # > 0 when the prefix was truncated from the left to fit the budget
    end: int

    @property
    def truncated(self) -> bool:
        return self.start > 0

    @property
    def empty(self) -> bool:
        return not self.ids


def choose_cut(lengths: Sequence[int], rng: random.Random, budget: int | None = None) -> tuple[int, int, int]:
    """(episode index j, start, end) of a cut: j uniform over the boundaries b_0..b_{H-1} (`lengths`), end = b_j.

    When b_j tokens do not fit in `budget`, whole leading episodes are dropped: start is the first boundary b_k
    (k <= j) with b_j - b_k <= budget (b_j itself, an empty prefix, when no episode fits).
    """
    if not lengths:
        return 0, 0, 0
    j = rng.randrange(len(lengths))
    end = lengths[j]
    start = 0
    if budget is not None and end > max(budget, 0):
        start = next(b for b in lengths[:j + 1] if end - b <= max(budget, 0))
    return j, start, end


def thinking_limit(pieces: Sequence[str], tag: str | None) -> int:
    """Number of leading tokens before the token where the end-of-thinking tag starts (all when there is none)."""
    if not tag:
        return len(pieces)
    text = "".join(pieces)
    at = text.find(tag)
    if at < 0:
        return len(pieces)
    seen = 0
    for i, piece in enumerate(pieces):
        seen += len(piece)
        if seen > at:
            return i
    return len(pieces)


def cut_prefix(ids: Sequence[int], tokenizer, rules: EpisodeRules, rng: random.Random,
               budget: int | None = None) -> Cut:
    """Cut a source completion (token ids) after a random number of its episodes, split with the `dense` rules.

    Text from the end-of-thinking tag on is never part of a prefix: the source is cut before the tag first (the
    thinking part keeps its episodes; the answer, the last episode, is never a prefix). Prefixes longer than
    `budget` tokens are truncated from the left at an episode boundary.
    """
    ids = [int(t) for t in ids]
    pieces = token_pieces(tokenizer, ids)
    limit = thinking_limit(pieces, rules.end_of_thinking_tag)
    ends = episode_ends(pieces, rules)
    # Boundaries at or past the tag cannot happen with these rules; the filter keeps that a guarantee.
    lengths = [b for b in prefix_lengths(ends) if b <= limit]
    j, start, end = choose_cut(lengths, rng, budget)
    return Cut(ids=ids[start:end], episode=j, episodes=len(lengths), start=start, end=end)


# ---------------------------------------------------------------- the prefix column (prefix_source: dataset)


def parse_prefixes(value, column: str, row: int | None = None) -> list:
    """The earlier completions held by one row's prefix cell: a list of texts or of token-id lists.

    Accepts a text, a list of texts, a list of token ids (one completion) or a list of token-id lists. An empty
    list (or an empty text) is no prefix: []. Anything else raises a ValueError naming the column.
    """
    where = f"prefix column {column!r}" + (f" (row {row})" if row is not None else "")
    if value is None:
        raise ValueError(f"The {where} holds None: expected a text, a list of texts or a list of token-id lists. "
                         "Write [] for a problem without prefixes.")
    if isinstance(value, str):
        return [value] if value else []
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"The {where} holds a {type(value).__name__}: expected a text, a list of texts or a "
                         "list of token-id lists (see scripts/make_prefixes.py).")
    if value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return [list(value)]
    out = []
    for item in value:
        if isinstance(item, str):
            if item:
                out.append(item)
        elif isinstance(item, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            if item:
                out.append(list(item))
        else:
            raise ValueError(f"The {where} holds an item of type {type(item).__name__}: expected texts or "
                             "token-id lists (see scripts/make_prefixes.py).")
    return out


def check_prefix_column(dataset, column: str) -> int:
    """Check a dataset's prefix column before training; returns the number of rows without a prefix.

    Raises a ValueError naming the column when it is missing, when a row holds something other than texts or
    token-id lists, or when no row holds any prefix.
    """
    names = getattr(dataset, "column_names", None)
    if names is not None and column not in names:
        raise ValueError(f"progress_mode='branched' with prefix_source='dataset' reads earlier completions from "
                         f"the column {column!r}, which the dataset does not have; its columns are {list(names)}. "
                         "Set prefix_column, write the column with scripts/make_prefixes.py, or use "
                         "prefix_source='rollouts'.")
    if names is None:  # streamed: checked row by row when read
        return 0
    empty = 0
    values = dataset[column]
    for row, value in enumerate(values):
        if not parse_prefixes(value, column, row):
            empty += 1
    if values and empty == len(values):
        raise ValueError(f"The prefix column {column!r} is empty: no row holds a prefix. Fill it with "
                         "scripts/make_prefixes.py or use prefix_source='rollouts'.")
    return empty


def pick_prefix(prefixes: list, rng: random.Random, tokenizer) -> list[int]:
    """One of a row's earlier completions, chosen with `rng`, as token ids ([] when the row has none)."""
    if not prefixes:
        return []
    chosen = prefixes[rng.randrange(len(prefixes))]
    if isinstance(chosen, str):
        return tokenizer(chosen, add_special_tokens=False)["input_ids"]
    return [int(t) for t in chosen]


# ---------------------------------------------------------------- the rollouts store (prefix_source: rollouts)


class PrefixStore:
    """Per problem key, the token ids of the trainer's own last rollout of that problem (a stale prefix), at 4 bytes
    a token: 40,000 problems of 8k-token rollouts take 1.3 GB on every rank, not the 11 GB of lists of Python ints.

    Saved in a checkpoint folder as `mrt_prefixes.json` and read back by every rank on resume.
    """

    version = 1

    def __init__(self):
        self.prefixes: dict[str, array] = {}

    def __len__(self) -> int:
        return len(self.prefixes)

    def __contains__(self, key: str) -> bool:
        return key in self.prefixes

    def get(self, key: str) -> list[int]:
        return list(self.prefixes.get(key, []))

    def put(self, key: str, ids: Sequence[int]) -> None:
        self.prefixes[key] = _token_array(ids)

    def state_dict(self) -> dict:
        return {"version": self.version, "prefixes": {k: list(v) for k, v in self.prefixes.items()}}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("version") != self.version or \
                not isinstance(state.get("prefixes"), dict):
            raise ValueError(f"Not a prefix store state of version {self.version}: keys "
                             f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
        self.prefixes = {str(k): _token_array(v) for k, v in state["prefixes"].items()}

    @staticmethod
    def path(folder) -> Path:
        return Path(folder) / STORE_FILE

    def save(self, folder) -> Path:
        """Write the store into a checkpoint folder: one file, since the store is the same on every rank."""
        return write_atomic(self.path(folder), json.dumps(self.state_dict()))

    def load(self, folder, rank: int) -> bool:
        """Read the store from a checkpoint folder (this rank's own file in checkpoints written before the shared
        one); False (store unchanged) when there is none."""
        path = self.path(folder)
        if not path.exists():
            path = Path(folder) / RANK_STORE_FILE.format(rank=rank)
        if not path.exists():
            return False
        try:
            state = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"Cannot read the prefix store {path}: {err}. Delete it to start with empty "
                             "prefixes.") from err
        self.load_state_dict(state)
        return True


def _token_array(ids: Sequence[int]) -> array:
    """Token ids as unsigned 32-bit integers (any vocabulary below 4 billion)."""
    return array("I", (int(t) for t in ids))


# ---------------------------------------------------------------- the advantage


@dataclass
class BranchedAdvantages:
    advantages: torch.Tensor  # (B,) what the loss sees
    grpo: torch.Tensor  # (B,) GRPO advantage within the completion's half
    j_hat: torch.Tensor  # (B,) Ĵ(c) of the completion's group (NaN when its terminating half is unscorable)
    bonus: torch.Tensor  # (B,) s - Ĵ(c) for continuing completions (s: success); 0 for the others


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over `mask` along the last dim (NaN where the mask is empty)."""
    count = mask.sum(dim=-1)
    total = torch.where(mask, values, torch.zeros_like(values)).sum(dim=-1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


def _masked_std(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sample standard deviation (Bessel-corrected) over `mask` along the last dim; NaN below two values."""
    count = mask.sum(dim=-1)
    mean = _masked_mean(values, mask).unsqueeze(-1)
    sq = torch.where(mask, (values - mean) ** 2, torch.zeros_like(values)).sum(dim=-1)
    return torch.where(count > 1, (sq / (count - 1).clamp(min=1)).sqrt(), torch.full_like(sq, float("nan")))


def branched_advantages(rewards: torch.Tensor, num_generations: int, terminating: torch.Tensor, alpha: float,
                        scale_rewards: str = "group",
                        success: torch.Tensor | None = None) -> BranchedAdvantages:
    """Advantages of branched rollouts.

    rewards: (B,) rewards (NaN = unscorable), groups of `num_generations` consecutive completions.
    terminating: (B,) True for completions of the terminating half of their group.
    success: (B,) what Ĵ and the bonus count (`progress_reward_funcs`; NaN = unknown); None: the rewards.
    Within each half: A_GRPO = r - mean(r of the half), divided by std + 1e-4 unless scale_rewards is 'none'
    (std of the half for 'group', of the whole batch for 'batch'). Continuing completions add
    alpha * (s - Ĵ(c)), Ĵ(c) = mean success of their group's terminating half. Unscorable completions get 0.
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    success = rewards if success is None else success
    if rewards.dim() != 1 or terminating.shape != rewards.shape or success.shape != rewards.shape:
        raise ValueError(f"expected rewards, terminating and success of shape (B,), got "
                         f"{tuple(rewards.shape)}, {tuple(terminating.shape)} and {tuple(success.shape)}")
    if num_generations < 2 or rewards.numel() % num_generations:
        raise ValueError(f"{rewards.numel()} rewards do not form groups of num_generations={num_generations}")
    r = rewards.float().view(-1, num_generations)
    term = terminating.bool().to(r.device).view(-1, num_generations)
    valid = ~torch.isnan(r)

    grpo = torch.zeros_like(r)
    for half in (term, ~term):
        members = half & valid
        mean = _masked_mean(r, members).unsqueeze(-1)
        centred = r - mean
        if scale_rewards == "group":
            centred = centred / (_masked_std(r, members).unsqueeze(-1) + _STD_EPS)
        grpo = torch.where(half, centred, grpo)
    if scale_rewards == "batch":
        flat = r.flatten()
        grpo = grpo / (_masked_std(flat, ~torch.isnan(flat)) + _STD_EPS)
    grpo = torch.nan_to_num(torch.where(valid, grpo, torch.zeros_like(grpo)), nan=0.0)

    s = success.float().to(r.device).view(-1, num_generations)
    known = ~torch.isnan(s)
    j_hat = _masked_mean(s, term & known).unsqueeze(-1).expand_as(s)
    bonus = torch.where(~term & valid & known & ~torch.isnan(j_hat), s - j_hat, torch.zeros_like(s))
    advantages = grpo + alpha * bonus if alpha else grpo.clone()
    return BranchedAdvantages(advantages.flatten(), grpo.flatten(), j_hat.flatten(), bonus.flatten())


def terminating_mask(num_rows: int, num_generations: int, offset: int = 0) -> torch.Tensor:
    """(num_rows,) True for rows in the second half of their group; `offset` = global index of the first row."""
    positions = (torch.arange(num_rows) + offset) % num_generations
    return positions >= num_generations // 2


# ---------------------------------------------------------------- planning a generation batch


@dataclass(frozen=True)
class Branch:
    """One completion's branch. Every row of a group has the same key and cut; the continuing half extends the
    prompt with the prefix, the terminating half with prefix + joiner + termination suffix."""

    key: str
    terminating: bool
    cut: Cut
    has_source: bool  # the problem had something to cut (a stored rollout, a prefix in the dataset)


def plan_branches(rows: Sequence[dict], tokenizer, rules: EpisodeRules, num_generations: int, seed: int, step: int,
                  source: str, store: PrefixStore | None = None, column: str = "prefixes",
                  budgets: Sequence[int | None] | None = None, offset: int = 0) -> list[Branch]:
    """The branch of each row of a generation batch (groups of `num_generations` consecutive rows; `offset` is
    the global index of the first row). The cut of a problem depends only on (seed, its key, step)."""
    if source not in PREFIX_SOURCES:
        raise ValueError(f"prefix source must be one of {PREFIX_SOURCES}, got {source!r}")
    budgets = list(budgets) if budgets is not None else [None] * len(rows)
    terminating = terminating_mask(len(rows), num_generations, offset).tolist()
    cuts: dict[str, tuple[Cut, bool]] = {}
    plan = []
    for i, row in enumerate(rows):
        key = problem_key(row["prompt"])
        if key not in cuts:
            rng = cut_rng(seed, key, step)
            if source == "rollouts":
                ids = store.get(key) if store is not None else []
            else:
                ids = pick_prefix(parse_prefixes(row.get(column), column), rng, tokenizer)
            cuts[key] = (cut_prefix(ids, tokenizer, rules, rng, budgets[i]), bool(ids))
        cut, has_source = cuts[key]
        plan.append(Branch(key, terminating[i], cut, has_source))
    return plan


def rollout_updates(plan: Sequence[Branch], completion_ids: Sequence[Sequence[int]], num_generations: int,
                    seed: int, step: int) -> list[tuple[str, list[int]]]:
    """(key, prefix + continuation) per group with a continuing row: the trace the store keeps for the problem's
    next visit, from one of the group's continuing completions chosen at random (seeded)."""
    updates = []
    for start in range(0, len(plan), num_generations):
        group = range(start, min(start + num_generations, len(plan)))
        continuing = [i for i in group if not plan[i].terminating]
        if not continuing:
            continue
        key = plan[continuing[0]].key
        pick = random.Random(f"mrt-store-{seed}-{key}-{step}").choice(continuing)
        updates.append((key, [*plan[pick].cut.ids, *(int(t) for t in completion_ids[pick])]))
    return updates


def plan_stats(plan: Sequence[Branch], num_generations: int) -> dict[str, tuple[float, int]]:
    """Per-group sums and counts of the cut: episode index, prefix tokens, empty, truncated, no source."""
    groups = [plan[k] for k in range(0, len(plan), num_generations)]
    n = len(groups)
    return {
        "cut_episode": (sum(b.cut.episode for b in groups), n),
        "prefix_tokens": (sum(len(b.cut.ids) for b in groups), n),
        "frac_empty_prefix": (sum(b.cut.empty for b in groups), n),
        "truncated_prefixes": (sum(b.cut.truncated for b in groups), 1),
        "no_prefix_source": (sum(not b.has_source for b in groups), 1),
    }


def stop_end(ids: Sequence[int], tokenizer, stop: Sequence[str] | None) -> int | None:
    """Tokens up to and including the one that completes the first stop string (None when none does)."""
    if not stop:
        return None
    text = ""
    for k, piece in enumerate(token_pieces(tokenizer, [int(t) for t in ids])):
        text += piece
        # Only the tail can hold a stop string that this token completed.
        tail = text[-(len(piece) + max(len(s) for s in stop)):]
        if any(s in tail for s in stop):
            return k + 1
    return None


def cut_at_stop(ids: Sequence[int], tokenizer, stop: Sequence[str] | None) -> list[int]:
    """The ids up to and including the token that completes the first stop string (all of them when none does)."""
    ids = [int(t) for t in ids]
    end = stop_end(ids, tokenizer, stop)
    return ids if end is None else ids[:end]


def answer_ended(ids: Sequence[int], tokenizer, stop: Sequence[str] | None, ends: set[int]) -> bool:
    """Whether a terminating answer ended by itself: at an end token (`ends`: EOS and padding, as TRL counts a
    completion as not clipped) or at a stop string, rather than at its token limit."""
    if not ids:
        return False
    return int(ids[-1]) in ends or stop_end(ids, tokenizer, stop) == len(ids)
