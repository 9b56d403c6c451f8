"""Test-time compute evaluation: accuracy against token budget, J against tokens, cumulative regret, progress.

For every model and problem: sample `num_samples` completions of at most `max_tokens` tokens; split each into
episodes with the training rules (`mrt.episodes`); ask mu (the model itself unless `prover` names another) to
answer from every episode prefix with the termination suffix (`prover_num_samples` samples, `mrt.prover`), which
gives J after each episode and the tokens spent to reach it; and force the model's own answer at every token
budget. Problems go in fixed chunks of `problems_per_call` (by index), each with one sampling call and one prover
call (two when mu is another model) and its own seed. Each finished problem is appended to
`output_dir/records/<model>.jsonl` at once, so an interrupted run resumes where it stopped (a chunk begun but not
all written is drawn again whole, the same draws). `summarize` turns the records into the tables (pure),
`mrt.eval_report` writes them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mrt.checks import check
from mrt.episodes import EpisodeRules, no_empty_tag, prefix_lengths, resolve_thinking_tag, split_completion
from mrt.generation import BACKENDS
from mrt.progress import efficiency_ratios, j_at, progress, regret_at, tokens_to_reach
from mrt.prover import ProgressEstimator, RewardScorer, Suffix, make_suffix
from mrt.rewards import make_accuracy_reward, score

logger = logging.getLogger(__name__)

RECORDS = "records"
GRID_POINTS = 33  # tokens at which the mean J curve is tabulated (plus the budgets and cutoffs)


@dataclass
class EvalConfig:
    """What to evaluate and how; every field is also a command-line flag of scripts/eval_mrt.py."""

    models: list[str] = field(
        default_factory=lambda: ["smollm2-135m"],
        metadata={"help": "Models to compare (local folders, hub ids, or the offline alias smollm2-135m); the first "
                  "is the reference of the token-efficiency ratios."})
    dataset: str = field(default="arithmetic:1", metadata={
        "help": "'arithmetic[:difficulty]' (built in), a local JSON/JSONL/Parquet path, or a hub dataset."})
    split: str = field(default="test", metadata={"help": "Dataset split (the built-in task draws other problems "
                                                          "for splits other than 'train')."})
    problem_column: str = field(default="problem", metadata={"help": "Column with the problem text."})
    answer_column: str = field(default="answer", metadata={"help": "Column with the gold answer."})
    system_prompt: str | None = field(default=None, metadata={
        "help": "System prompt; None: the training default (mrt.data.SYSTEM_PROMPT); '' for none."})
    num_problems: int = field(default=8, metadata={"help": "Problems to evaluate (the dataset's first ones "
                                                           "after a seeded shuffle)."})
    num_samples: int = field(default=4, metadata={"help": "Completions K sampled per problem."})
    max_tokens: int = field(default=64, metadata={"help": "Maximum completion length: the largest budget."})
    temperature: float = field(default=0.9, metadata={"help": "Sampling temperature of the completions."})
    prover: str | None = field(default=None, metadata={
        "help": "mu, the model that answers from each episode prefix. None: each evaluated model itself. It must "
                "share the evaluated models' tokenizer."})
    prover_num_samples: int = field(default=4, metadata={"help": "Answers m per prefix; J is their mean reward."})
    prover_max_tokens: int = field(default=8, metadata={"help": "Maximum tokens of each forced answer."})
    prover_temperature: float | None = field(default=None, metadata={
        "help": "Temperature of the forced answers. None: `temperature`."})
    termination_suffix: str = field(default="boxed", metadata={
        "help": "Text appended to a prefix to force the answer: a preset ('authors', 'boxed') or literal text."})
    prover_stop: list[str] | None = field(default=None, metadata={
        "help": "Stop strings of the forced answers, e.g. '}' with the 'boxed' suffix and integer answers."})
    budgets: list[int] | None = field(default=None, metadata={
        "help": "Token budgets of the accuracy curve. None: 0 and 4 even steps up to max_tokens."})
    cutoffs: list[int] | None = field(default=None, metadata={
        "help": "Token cutoffs of the cumulative regret. None: the budgets above 0."})
    target_accuracies: list[float] | None = field(default=None, metadata={
        "help": "Accuracies of the token-efficiency table. None: 1/2, 3/4 and all of the first model's best."})
    max_episodes: int = field(default=4, metadata={"help": "Episode rule (as in training): at most this many."})
    min_paragraphs_between: int = field(default=1, metadata={"help": "Episode rule (as in training)."})
    episode_fallback: str = field(default="paragraphs", metadata={"help": "Episode rule (as in training)."})
    episode_chunk_tokens: int = field(default=64, metadata={"help": "Episode rule (as in training)."})
    end_of_thinking_tag: str | None = field(default="auto", metadata={
        "help": "'auto': '</think>' when the tokenizer has it, else none."})
    backend: str = field(default="auto", metadata={
        "help": "'auto' (vLLM when it imports, else transformers), 'vllm' or 'transformers'."})
    dtype: str = field(default="float32", metadata={"help": "Model dtype ('float32', 'bfloat16', 'auto')."})
    batch_size: int = field(default=64, metadata={
        "help": "Sequences per generate call (transformers backend); it changes the random draws, so it is part of "
                "the records' settings."})
    problems_per_call: int = field(default=16, metadata={
        "help": "Problems sampled together (one generate call and one prover call per chunk of problems, fixed by "
                "index); it changes the random draws, so it is part of the records' settings. 1: one per call."})
    seed: int = field(default=0, metadata={"help": "Seed of the problem shuffle and of every chunk's sampling."})
    output_dir: str = field(default="outputs/eval", metadata={"help": "Where records, JSON, CSVs and plots go."})
    max_problems_this_run: int | None = field(default=None, metadata={
        "help": "Stop after this many newly evaluated problems (the rest is done by the next run)."})

    def __post_init__(self):
        if isinstance(self.models, str):
            self.models = [self.models]
        _check(len(self.models) >= 1, "models", self.models, "at least one model")
        for name in ("num_problems", "num_samples", "max_tokens", "prover_num_samples", "prover_max_tokens",
                     "max_episodes", "episode_chunk_tokens", "batch_size", "problems_per_call"):
            _check(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        _check(self.temperature >= 0, "temperature", self.temperature, ">= 0")
        _check(self.prover_temperature is None or self.prover_temperature >= 0, "prover_temperature",
               self.prover_temperature, "None or >= 0")
        _check(self.backend in BACKENDS, "backend", self.backend, f"one of {BACKENDS}")
        _check(self.max_problems_this_run is None or self.max_problems_this_run >= 0, "max_problems_this_run",
               self.max_problems_this_run, "None (no limit) or >= 0")
        if self.budgets is None:
            self.budgets = sorted({round(self.max_tokens * k / 4) for k in range(5)})
        self.budgets = sorted(set(int(b) for b in self.budgets))
        _check(all(0 <= b <= self.max_tokens for b in self.budgets), "budgets", self.budgets,
               f"token counts between 0 and max_tokens={self.max_tokens}")
        if self.cutoffs is None:
            self.cutoffs = [b for b in self.budgets if b > 0] or [self.max_tokens]
        self.cutoffs = sorted(set(int(c) for c in self.cutoffs))
        _check(all(c > 0 for c in self.cutoffs), "cutoffs", self.cutoffs, "token counts > 0")
        self.end_of_thinking_tag = no_empty_tag(self.end_of_thinking_tag)
        EpisodeRules(max_episodes=self.max_episodes, min_paragraphs_between=self.min_paragraphs_between,
                     fallback=self.episode_fallback, chunk_tokens=self.episode_chunk_tokens)  # checks them

    def fingerprint(self) -> str:
        """Hash of the settings that change a problem's record (not the number of problems or the tables)."""
        keep = {k: v for k, v in asdict(self).items()
                if k not in ("models", "num_problems", "cutoffs", "target_accuracies", "output_dir",
                             "max_problems_this_run")}
        # Left out at the values records were made with before these fields counted, so that those records resume.
        if keep["problems_per_call"] == 1:  # the draws of one problem per call
            del keep["problems_per_call"]
        if keep["batch_size"] == 64:  # sequences per generate call: another split of a chunk draws other numbers
            del keep["batch_size"]
        return hashlib.sha1(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]


def _check(ok: bool, name: str, value, expected: str) -> None:
    check(ok, "EvalConfig", name, value, expected)


# ---------------------------------------------------------------- one problem


@dataclass
class ProblemSetup:
    """What every problem of one model needs: tokenizer, episode rules, suffix, how answers are scored."""

    tokenizer: object
    rules: EpisodeRules
    suffix: Suffix
    scorer: RewardScorer


def make_setup(config: EvalConfig, tokenizer) -> ProblemSetup:
    tag = resolve_thinking_tag(config.end_of_thinking_tag, tokenizer)
    rules = EpisodeRules(max_episodes=config.max_episodes, min_paragraphs_between=config.min_paragraphs_between,
                         fallback=config.episode_fallback, chunk_tokens=config.episode_chunk_tokens,
                         end_of_thinking_tag=tag)
    return ProblemSetup(tokenizer, rules, make_suffix(tokenizer, config.termination_suffix, tag),
                        RewardScorer(make_accuracy_reward("answer")))


def prompt_ids(tokenizer, prompt) -> list[int]:
    """Token ids of a conversational prompt with the generation prompt, as the trainer feeds it."""
    if isinstance(prompt, list):
        prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def evaluate_problems(config: EvalConfig, setup: ProblemSetup, model, mu, prompts: list[list[int]], golds: list,
                      seed: int) -> list[list[dict]]:
    """The record of every completion of each problem (see the module docstring): one sampling call for all the
    problems, then one prover call (two when mu is another model than the one evaluated)."""
    tok = setup.tokenizer
    k = config.num_samples
    drawn = model.generate([list(p) for p in prompts], k, config.max_tokens, config.temperature, None, seed)
    samples = [s for group in drawn for s in group]
    owner = [p for p, group in enumerate(drawn) for _ in group]  # the problem of each sample
    answer_temperature = config.temperature if config.prover_temperature is None else config.prover_temperature

    rows, episode_prefixes, mu_lengths, budget_lengths = [], [], [], []
    for s, p in zip(samples, owner):
        n = len(s.ids)
        ends = split_completion(s.ids, tok, setup.rules)
        # J before each episode (b_0 = 0 always), and at the end when the model did not finish by itself.
        episode_prefixes.append(prefix_lengths(ends) if ends else [0])
        mu_lengths.append(episode_prefixes[-1] + ([n] if not s.finished else []))
        budget_lengths.append(sorted({min(b, n) for b in config.budgets if b < n or not s.finished}))
        rows.append({"text": s.text, "tokens": n, "finished": s.finished,
                     "outcome": score(s.text, golds[p], s.finished), "episode_ends": ends})

    def ask(generator, lengths, call_seed) -> list[dict[int, float | None]]:
        estimator = ProgressEstimator(generator.prover, tok, setup.rules, setup.suffix, setup.scorer,
                                      num_samples=config.prover_num_samples, max_tokens=config.prover_max_tokens,
                                      temperature=answer_temperature, stop=config.prover_stop)
        # Requests are shared only among the samples of one problem (same prompt and same gold).
        estimate = estimator.estimate([prompts[p] for p in owner], [s.ids for s in samples], [""] * len(samples),
                                      [{"answer": golds[p]} for p in owner], lengths=lengths, seed=call_seed)
        return [{b: estimate.rates[r] for b, r in zip(ls, row)} for ls, row in zip(lengths, estimate.requests.index)]

    if mu is model:  # one batch: episode prefixes and budgets share requests
        both = ask(model, [sorted({*a, *b}) for a, b in zip(mu_lengths, budget_lengths)], seed + 1)
        j_at, forced_at = both, both
    else:
        j_at = ask(mu, mu_lengths, seed + 1)
        forced_at = ask(model, budget_lengths, seed + 2)

    for row, points, j, forced in zip(rows, episode_prefixes, j_at, forced_at):
        n, outcome = row["tokens"], row["outcome"]
        # J_H: the completion's own outcome when it finished, else mu's answer from all of it.
        row["j_tokens"] = points + [n]
        row["j_values"] = [j[b] for b in points] + [outcome if row["finished"] else j[n]]
        row["budget_accuracy"] = [outcome if (b >= n and row["finished"]) else forced[min(b, n)]
                                  for b in config.budgets]
    return [rows[p * k:(p + 1) * k] for p in range(len(prompts))]


def chunk_seed(config: EvalConfig, first: int) -> int:
    """The seed of the chunk that starts at problem `first` (+1, +2: its prover calls)."""
    return config.seed * 1_000_003 + 1000 * first


# ---------------------------------------------------------------- records on disk


def model_label(name: str, taken: set[str]) -> str:
    """A short name for tables and plots: the folder name of a local path, else the name as given."""
    label = Path(name.rstrip("/")).name if os.path.isdir(name) else name
    base, k = label, 2
    while label in taken:
        label, k = f"{base}-{k}", k + 1
    return label


def records_path(output_dir: str | os.PathLike, name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name.rstrip("/")).name)[:60]
    digest = hashlib.sha1(os.path.abspath(name).encode() if os.path.isdir(name) else name.encode()).hexdigest()
    return Path(output_dir) / RECORDS / f"{safe}-{digest[:8]}.jsonl"


def load_records(path: Path, fingerprint: str) -> dict[int, dict]:
    """Finished problems by index. A last line cut short by a kill is dropped from the file."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    good = data[:data.rfind(b"\n") + 1]
    if len(good) < len(data):
        logger.warning("Dropping an unfinished last record of %s", path)
        path.write_bytes(good)
    records = {}
    for line in good.decode().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record["fingerprint"] != fingerprint:
            raise ValueError(f"{path} holds records made with other settings (fingerprint "
                             f"{record['fingerprint']}, now {fingerprint}); use another output_dir or delete it.")
        records[record["index"]] = record
    return records


def append_record(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------- the run


def load_eval_problems(config: EvalConfig):
    from mrt.data import SYSTEM_PROMPT, load_problems

    system = SYSTEM_PROMPT if config.system_prompt is None else (config.system_prompt or None)
    return load_problems(config.dataset, split=config.split, problem_column=config.problem_column,
                         answer_column=config.answer_column, system_prompt=system,
                         num_problems=config.num_problems, seed=config.seed)


def evaluate(config: EvalConfig, make_generator=None, progress_bar: bool = True) -> dict | None:
    """Evaluate every model, write the records, JSON, CSVs and plots; the results dict (None if stopped by
    `max_problems_this_run` before the end)."""
    from tqdm.auto import tqdm

    from mrt.eval_report import write_report
    from mrt.generation import make_generator as default_make_generator
    from mrt.models import resolve_model

    make_generator = make_generator or default_make_generator
    problems = load_eval_problems(config)
    fingerprint = config.fingerprint()
    run_id = f"{os.getpid()}-{time.time():.3f}"
    labels: set[str] = set()
    per_model, budget_left = {}, config.max_problems_this_run
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)

    def build(name):
        return make_generator(resolve_model(name), backend=config.backend, dtype=config.dtype,
                              batch_size=config.batch_size, seed=config.seed)

    for name in config.models:
        label = model_label(name, labels)
        labels.add(label)
        path = records_path(config.output_dir, name)
        done = load_records(path, fingerprint)
        todo = [i for i in range(len(problems)) if i not in done]
        backend = None
        if todo and budget_left != 0:
            model = build(name)
            mu = model if config.prover is None else build(config.prover)
            if mu is not model and mu.tokenizer.get_vocab() != model.tokenizer.get_vocab():
                raise ValueError(f"EvalConfig.prover = {config.prover!r} has another tokenizer than {name!r}; "
                                 "mu must share the evaluated model's tokenizer.")
            backend = model.name
            setup = make_setup(config, model.tokenizer)
            bar = tqdm(desc=label, disable=not progress_bar, initial=len(done), total=len(problems))
            size = config.problems_per_call
            # Chunks fixed by index, each drawn whole: a resumed run draws what an uninterrupted one does.
            chunks = [range(c, min(c + size, len(problems))) for c in range(0, len(problems), size)]
            for chunk in chunks:
                if budget_left == 0:
                    break
                if all(i in done for i in chunk):
                    continue
                start = time.perf_counter()
                results = evaluate_problems(config, setup, model, mu,
                                            [prompt_ids(model.tokenizer, problems[i]["prompt"]) for i in chunk],
                                            [problems[i]["answer"] for i in chunk], chunk_seed(config, chunk.start))
                seconds = round((time.perf_counter() - start) / len(chunk), 3)
                for i, completions in zip(chunk, results):
                    if i in done:
                        continue
                    if budget_left == 0:
                        break
                    row = problems[i]
                    record = {"fingerprint": fingerprint, "index": i, "problem": row[config.problem_column],
                              "answer": row["answer"], "model": name, "backend": backend, "run": run_id,
                              "seconds": seconds, "completions": completions}
                    append_record(path, record)
                    done[i] = record
                    bar.update(1)
                    if budget_left is not None:
                        budget_left -= 1
            bar.close()
            for generator in {id(model): model, id(mu): mu}.values():
                generator.close()
        if len(done) < len(problems):
            logger.info("Stopped after max_problems_this_run=%s; run again to finish.", config.max_problems_this_run)
            return None
        records = [done[i] for i in range(len(problems))]
        for record in records:
            if record["problem"] != problems[i := record["index"]][config.problem_column]:
                raise ValueError(f"{path}: problem {i} differs from the dataset's; use another output_dir.")
        per_model[label] = {"model": name, "records": str(path), **summarize(records, config)}

    results = {"config": asdict(config), "fingerprint": fingerprint, "models": per_model,
               "efficiency": efficiency_table(per_model, config.target_accuracies)}
    write_report(results, config.output_dir)
    return results


# ---------------------------------------------------------------- tables (pure)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(records: list[dict], config: EvalConfig) -> dict:
    """The tables of one model from its problem records."""
    rows = [c for r in records for c in r["completions"]]
    ok = [c for c in rows if c["outcome"] is not None and None not in c["j_values"]
          and None not in c["budget_accuracy"]]
    grid = sorted({round(config.max_tokens * k / (GRID_POINTS - 1)) for k in range(GRID_POINTS)}
                  | set(config.budgets) | set(config.cutoffs))
    by_episode: dict[int, list[float]] = {}
    for c in ok:
        for j, value in enumerate(progress(c["j_values"]), start=1):
            by_episode.setdefault(j, []).append(value)
    return {
        "num_problems": len(records),
        "num_completions": len(rows),
        "unscorable": len(rows) - len(ok),
        "accuracy": _mean(c["outcome"] for c in ok),
        "finished": _mean(float(c["finished"]) for c in rows),
        "mean_tokens": _mean(c["tokens"] for c in rows),
        "mean_episodes": _mean(len(c["episode_ends"]) for c in rows),
        "J_0": _mean(c["j_values"][0] for c in ok),
        "accuracy_vs_budget": [{"budget": b, "accuracy": _mean(c["budget_accuracy"][k] for c in ok)}
                               for k, b in enumerate(config.budgets)],
        "j_curve": [{"tokens": t, "J": _mean(j_at(c["j_tokens"], c["j_values"], t) for c in ok)}
                    for t in grid],
        "regret": [{"cutoff": t, "regret": _mean(regret_at(c["j_tokens"], c["j_values"], t) for c in ok)}
                   for t in config.cutoffs],
        "progress_per_episode": [{"episode": j, "progress": _mean(v), "count": len(v)}
                                 for j, v in sorted(by_episode.items())],
    }


def efficiency_table(per_model: dict[str, dict], targets: list[float] | None = None) -> list[dict]:
    """Tokens each model needs to reach each target accuracy on its accuracy-vs-budget curve, and the ratio to
    the first model's. Default targets: 1/2, 3/4 and all of the first model's best accuracy."""
    if not per_model:
        return []
    curves = {label: ([p["budget"] for p in m["accuracy_vs_budget"] if p["accuracy"] is not None],
                      [p["accuracy"] for p in m["accuracy_vs_budget"] if p["accuracy"] is not None])
              for label, m in per_model.items()}
    if targets is None:
        best = max(next(iter(curves.values()))[1], default=0.0)
        targets = sorted({round(best * f, 6) for f in (0.5, 0.75, 1.0)}) if best > 0 else []
    table = []
    for target in targets:
        needed = [tokens_to_reach(t, v, target) if t else None for t, v in curves.values()]
        for label, n, ratio in zip(curves, needed, efficiency_ratios(needed)):
            table.append({"target_accuracy": target, "model": label, "tokens": n, "ratio_to_first": ratio})
    return table
