"""Test-time compute evaluation: accuracy against token budget, J against tokens, cumulative regret, progress.

For every model and problem: sample `num_samples` completions of at most `max_tokens` tokens (with
`budget_forcing`, a sample that ends early is made to go on up to `max_tokens`: `mrt.evaluation.forcing`); split
each into episodes with the training rules (`EpisodeFields`); ask mu (`ProverFields`: the model itself, a
`prover_checkpoint` of its own, or a served model) to answer from every episode prefix with the termination suffix
(`prover_num_samples` samples, `mrt.prover`), which gives J after each episode and the tokens spent to reach it;
and force the model's own answer at every token budget. The reward functions (`reward_funcs`, TRL's signature, the
dataset's columns as kwargs) score the completions and mu's answers. Problems go in fixed chunks of
`problems_per_call` (by index), each with one sampling call (plus one per forcing round) and one prover call (two
when mu is another model) and its own seed. Each finished problem is appended to
`output_dir/records/<model>.jsonl` at once, so an interrupted run resumes where it stopped (a chunk begun but not
all written is drawn again whole, the same draws). `summarize` turns the records into the tables (pure),
`mrt.evaluation.report` writes them.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mrt.checks import check
from mrt.episodes import DEFAULT_MARKERS, EpisodeRules, prefix_lengths, resolve_thinking_tag, split_completion
from mrt.evaluation.forcing import FORCING_CUES, cue_ids, first_end, force_budget
from mrt.fields import EpisodeFields, ProverFields
from mrt.generation import BACKENDS
from mrt.progress import efficiency_ratios, j_at, progress, regret_at, tokens_to_reach
from mrt.prover import ProgressEstimator, RewardScorer, Suffix, answer_temperature, as_completion, make_suffix
from mrt.records import append_jsonl, fingerprint, read_records
from mrt.rewards.accuracy import last_box
from mrt.tokens import eos_ids, is_conversation, prompt_ids

logger = logging.getLogger(__name__)

RECORDS = "records"
GRID_POINTS = 33  # tokens at which the mean J curve is tabulated (plus the budgets and cutoffs)
# Fields that do not change a problem's record (the number of problems, the tables, where files go).
NOT_RECORDED = ("models", "num_problems", "cutoffs", "target_accuracies", "output_dir", "max_problems_this_run")
SERVER_FIELDS = ("prover_batch_size", "prover_server_url", "prover_model", "prover_timeout", "prover_max_retries")


@dataclass
class EvalConfig(EpisodeFields, ProverFields):
    """What to evaluate and how; every field is also a command-line flag of scripts/eval_mrt.py. The episode and
    prover fields are training's (`mrt.fields`): a model is evaluated with the rules it was trained with. `prover`:
    'policy' is each evaluated model (or `prover_checkpoint`), 'server' a served mu; `prover_batch_size` applies to
    the server (on transformers one engine samples and answers, in calls of `batch_size`)."""

    models: list[str] = field(
        default_factory=lambda: ["smollm2-135m"],
        metadata={"help": "Models to compare (local folders, hub ids, or the offline alias smollm2-135m); the first "
                  "is the reference of the token-efficiency ratios."})
    dataset: str = field(default="arithmetic:1", metadata={
        "help": "'arithmetic[:difficulty]' or 'reasoning_gym:<task>?...' (built in), a local JSON/JSONL/Parquet "
                "path, or a hub dataset."})
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
    prover_checkpoint: str | None = field(default=None, metadata={
        "help": "With prover='policy': mu as a frozen model of its own (local folder, hub id or alias), loaded beside "
                "each evaluated model; it must share their tokenizer. None: mu is each evaluated model itself."})
    reward_funcs: list[str] | None = field(default=None, metadata={
        "help": "Reward functions scoring the completions and mu's answers, named as `trl grpo` takes them "
                "(mrt.rewards.registry: 'mrt_accuracy', 'reasoning_gym_reward', TRL's names, import paths); the "
                "dataset's columns come in as kwargs. None: the built-in math-verify accuracy on 'answer'."})
    correct_threshold: float = field(default=1.0, metadata={
        "help": "A completion (or a forced answer) counts as correct when its reward is at least this; the mean "
                "reward is reported too (partial credit)."})
    budget_forcing: bool = field(default=False, metadata={
        "help": "Force thinking up to max_tokens: a sample that ends early has its end (EOS; the end-of-thinking "
                "tag and what follows when it wrote one) replaced by the next forcing cue, as a new paragraph, and "
                "goes on; repeated until the budget is used."})
    forcing_cues: list[str] = field(default_factory=lambda: list(FORCING_CUES), metadata={
        "help": "Continuation cues of budget forcing, used in turn (the authors' cycle by default)."})
    budgets: list[int] | None = field(default=None, metadata={
        "help": "Token budgets of the accuracy curve. None: 0 and 4 even steps up to max_tokens."})
    cutoffs: list[int] | None = field(default=None, metadata={
        "help": "Token cutoffs of the cumulative regret. None: the budgets above 0."})
    target_accuracies: list[float] | None = field(default=None, metadata={
        "help": "Accuracies of the token-efficiency table. None: 1/2, 3/4 and all of the first model's best."})
    backend: str = field(default="auto", metadata={
        "help": "'auto' (vLLM when it imports, else transformers), 'vllm' or 'transformers'."})
    dtype: str = field(default="float32", metadata={"help": "Model dtype ('float32', 'bfloat16', 'auto')."})
    batch_size: int = field(default=64, metadata={
        "help": "Sequences per generate call (transformers backend; sampling and mu's answers); it changes the "
                "random draws, so it is part of the records' settings."})
    problems_per_call: int = field(default=16, metadata={
        "help": "Problems sampled together (one generate call and one prover call per chunk of problems, fixed by "
                "index); it changes the random draws, so it is part of the records' settings. 1: one per call."})
    seed: int = field(default=0, metadata={"help": "Seed of the problem shuffle and of every chunk's sampling."})
    output_dir: str = field(default="outputs/eval", metadata={"help": "Where records, JSON, CSVs and plots go."})
    max_problems_this_run: int | None = field(default=None, metadata={
        "help": "Stop after this many newly evaluated problems (the rest is done by the next run)."})

    def __post_init__(self):
        from mrt.rewards.registry import check_reward_names

        if isinstance(self.models, str):
            self.models = [self.models]
        self.check_episode_fields()
        self.check_prover_fields()
        _check(len(self.models) >= 1, "models", self.models, "at least one model")
        for name in ("num_problems", "num_samples", "max_tokens", "batch_size", "problems_per_call"):
            _check(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        _check(self.temperature >= 0, "temperature", self.temperature, ">= 0")
        _check(self.prover_checkpoint is None or self.prover == "policy", "prover_checkpoint",
               self.prover_checkpoint, "None with prover='server' (mu is then the served model)")
        check_reward_names(self.reward_funcs, "EvalConfig")
        _check(self.correct_threshold > 0, "correct_threshold", self.correct_threshold, "> 0")
        self.forcing_cues = list(self.forcing_cues or [])
        _check(not self.budget_forcing or (self.forcing_cues and all(c.strip() for c in self.forcing_cues)),
               "forcing_cues", self.forcing_cues, "non-empty cues when budget_forcing is on")
        _check(self.backend in BACKENDS, "backend", self.backend, f"one of {BACKENDS}")
        _check(self.max_problems_this_run is None or self.max_problems_this_run >= 0, "max_problems_this_run",
               self.max_problems_this_run, "None (no limit) or >= 0")
        if self.budgets is None:
            self.budgets = sorted({round(self.max_tokens * k / 4) for k in range(5)})
        self.budgets = sorted({int(b) for b in self.budgets})
        _check(all(0 <= b <= self.max_tokens for b in self.budgets), "budgets", self.budgets,
               f"token counts between 0 and max_tokens={self.max_tokens}")
        if self.cutoffs is None:
            self.cutoffs = [b for b in self.budgets if b > 0] or [self.max_tokens]
        self.cutoffs = sorted({int(c) for c in self.cutoffs})
        _check(all(c > 0 for c in self.cutoffs), "cutoffs", self.cutoffs, "token counts > 0")

    def settings(self) -> dict:
        """The fields as records know them. Fields added after records were made are left out at the value those
        records were made with, so that they resume; `prover` keeps its old meaning there (mu's model or None)."""
        keep = asdict(self)
        if keep["prover"] == "policy":
            keep["prover"] = keep.pop("prover_checkpoint")
            for name in SERVER_FIELDS:
                del keep[name]
        if not keep["budget_forcing"]:
            del keep["budget_forcing"], keep["forcing_cues"]
        for name, old in (("reward_funcs", None), ("correct_threshold", 1.0), ("episode_markers", DEFAULT_MARKERS)):
            if keep[name] == (list(old) if isinstance(old, tuple) else old):
                del keep[name]
        return keep

    def fingerprint(self) -> str:
        """Hash of the settings that change a problem's record (not the number of problems or the tables)."""
        keep = {k: v for k, v in self.settings().items() if k not in NOT_RECORDED}
        # Left out at the values records were made with before these fields counted, so that those records resume.
        if keep["problems_per_call"] == 1:  # the draws of one problem per call
            del keep["problems_per_call"]
        if keep["batch_size"] == 64:  # sequences per generate call: another split of a chunk draws other numbers
            del keep["batch_size"]
        return fingerprint(keep)


def _check(ok: bool, name: str, value, expected: str) -> None:
    check(ok, "EvalConfig", name, value, expected)


# ---------------------------------------------------------------- one problem


@dataclass
class ProblemSetup:
    """What every problem of one model needs: tokenizer, episode rules, suffix, how answers are scored, EOS ids."""

    tokenizer: object
    rules: EpisodeRules
    suffix: Suffix
    scorer: RewardScorer
    tag: str | None = None  # the resolved end-of-thinking tag
    eos: set[int] = field(default_factory=set)


def make_setup(config: EvalConfig, tokenizer, eos: set[int] | None = None) -> ProblemSetup:
    """`eos`: the model's EOS ids (its generator's); None: the tokenizer's (`mrt.tokens.eos_ids`)."""
    from mrt.rewards.accuracy import make_accuracy_reward, with_eos_ids
    from mrt.rewards.registry import load_reward_funcs

    tag = resolve_thinking_tag(config.end_of_thinking_tag, tokenizer)
    eos = eos_ids(tokenizer) if eos is None else set(eos)
    funcs = load_reward_funcs(config.reward_funcs) or [make_accuracy_reward("answer")]
    scorer = RewardScorer([with_eos_ids(f, eos) for f in funcs])
    return ProblemSetup(tokenizer, config.episode_rules(tag), make_suffix(tokenizer, config.termination_suffix, tag),
                        scorer, tag, eos)


def _reward_ids(ids: list[int], finished: bool, tokenizer, eos: set[int]) -> list[int]:
    """A completion's ids as GRPOTrainer gives them to reward functions: with its EOS when it ended by itself."""
    if finished and not (ids and ids[-1] in eos):
        return [*ids, tokenizer.eos_token_id if tokenizer.eos_token_id is not None else min(eos)]
    return list(ids)


def _correct(reward: float | None, threshold: float) -> float | None:
    return None if reward is None else float(reward >= threshold)


def evaluate_problems(config: EvalConfig, setup: ProblemSetup, model, mu, prompts: list[list[int]], rows: list[dict],
                      seed: int) -> list[list[dict]]:
    """The record of every completion of each problem (see the module docstring): one sampling call for all the
    problems (plus one per round of budget forcing), then one prover call (two when mu is another model than the
    one evaluated). `rows` are the problems' dataset rows (their "prompt" and columns, for the reward functions);
    `mu` is a generator or a prover (`mrt.prover.Prover`)."""
    tok = setup.tokenizer
    k = config.num_samples
    # Budget forcing in one call per chunk, continuing from the cache, where the backend can and the end is an EOS.
    in_one_call = config.budget_forcing and setup.tag is None and hasattr(model, "generate_forced")
    if in_one_call:
        drawn, ends = model.generate_forced([list(p) for p in prompts], k, config.max_tokens, config.temperature,
                                            cue_ids(tok, config.forcing_cues), seed)
        ends_first = [e for group in ends for e in group]
    else:
        drawn = model.generate([list(p) for p in prompts], k, config.max_tokens, config.temperature, None, seed)
        ends_first = [first_end(s, setup.eos) for group in drawn for s in group]
    samples = [s for group in drawn for s in group]
    owner = [p for p, group in enumerate(drawn) for _ in group]  # the problem of each sample
    if config.budget_forcing and not in_one_call:  # rounds draw with seed + 3, + 4, ... (+1, +2: the prover calls)
        samples = force_budget(model.generate, tok, [prompts[p] for p in owner], samples, config.max_tokens,
                               config.temperature, config.forcing_cues, setup.eos, setup.tag, seed + 3)
    temperature = answer_temperature(config.prover_temperature, config.temperature)
    reward_prompts = [rows[p]["prompt"] for p in owner]
    reward_rows = [{c: v for c, v in rows[p].items() if c != "prompt"} for p in owner]
    conversational = is_conversation(reward_prompts[0]) if reward_prompts else False
    rewards = setup.scorer(reward_prompts, [as_completion(s.text, conversational) for s in samples],
                           [_reward_ids(s.ids, s.finished, tok, setup.eos) for s in samples], reward_rows)

    rows_out, episode_prefixes, mu_lengths, budget_lengths = [], [], [], []
    for s, reward, ended in zip(samples, rewards, ends_first):
        n = len(s.ids)
        ends = split_completion(s.ids, tok, setup.rules)
        # J before each episode (b_0 = 0 always), and at the end when the model did not finish by itself.
        episode_prefixes.append(prefix_lengths(ends) if ends else [0])
        mu_lengths.append(episode_prefixes[-1] + ([n] if not s.finished else []))
        budget_lengths.append(sorted({min(b, n) for b in config.budgets if b < n or not s.finished}))
        box = last_box(s.text)
        rows_out.append({"text": s.text, "tokens": n, "finished": s.finished, "outcome": reward,
                         "correct": _correct(reward, config.correct_threshold),
                         "answered": box is not None and box[2], "episodes": len(ends), "first_end": ended,
                         "episode_ends": ends})

    def ask(generator, lengths, call_seed) -> list[tuple[dict, dict]]:
        """(J, share of answers counted correct) at each asked prefix length of each completion."""
        estimator = ProgressEstimator(getattr(generator, "prover", generator), tok, setup.rules, setup.suffix,
                                      setup.scorer, num_samples=config.prover_num_samples,
                                      max_tokens=config.prover_max_tokens, temperature=temperature,
                                      stop=config.prover_stop)
        # Requests are shared only among the samples of one problem (same prompt and same row).
        estimate = estimator.estimate([prompts[p] for p in owner], [s.ids for s in samples], reward_prompts,
                                      reward_rows, lengths=lengths, seed=call_seed)
        correct = [_mean([_correct(v, config.correct_threshold) for v in scores])
                   for scores in estimate.sample_scores]
        return [({b: estimate.rates[r] for b, r in zip(ls, row)}, {b: correct[r] for b, r in zip(ls, row)})
                for ls, row in zip(lengths, estimate.requests.index)]

    if getattr(mu, "prover", mu) is model.prover:  # one batch: episode prefixes and budgets share requests
        both = ask(model, [sorted({*a, *b}) for a, b in zip(mu_lengths, budget_lengths)], seed + 1)
        j_at_prefix, forced_at = both, both
    else:
        j_at_prefix = ask(mu, mu_lengths, seed + 1)
        forced_at = ask(model, budget_lengths, seed + 2)

    for row, points, (j, _), (_, forced) in zip(rows_out, episode_prefixes, j_at_prefix, forced_at):
        n, outcome = row["tokens"], row["outcome"]
        # J_H: the completion's own outcome when it finished, else mu's answer from all of it.
        row["j_tokens"] = points + [n]
        row["j_values"] = [j[b] for b in points] + [outcome if row["finished"] else j[n]]
        row["budget_accuracy"] = [row["correct"] if (b >= n and row["finished"]) else forced[min(b, n)]
                                  for b in config.budgets]
    return [rows_out[p * k:(p + 1) * k] for p in range(len(prompts))]


def chunk_seed(config: EvalConfig, first: int) -> int:
    """The seed of the chunk that starts at problem `first` (+1, +2: its prover calls; +3...: forcing rounds)."""
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
    digest = fingerprint(os.path.abspath(name) if os.path.isdir(name) else name, length=8)
    return Path(output_dir) / RECORDS / f"{safe}-{digest}.jsonl"


def load_records(path: Path, fingerprint: str) -> dict[int, dict]:
    """Finished problems by index. A last line cut short by a kill is dropped from the file."""
    return read_records(path, fingerprint)


# ---------------------------------------------------------------- the run


def load_eval_problems(config: EvalConfig):
    from mrt.data import SYSTEM_PROMPT, load_problems
    from mrt.rewards.registry import uses_default_reward

    system = SYSTEM_PROMPT if config.system_prompt is None else (config.system_prompt or None)
    return load_problems(config.dataset, split=config.split, problem_column=config.problem_column,
                         answer_column=config.answer_column, system_prompt=system,
                         num_problems=config.num_problems, seed=config.seed,
                         require_answer=uses_default_reward(config.reward_funcs))


def make_mu(config: EvalConfig, model, build):
    """mu for `model`: the model itself, a `prover_checkpoint` built by `build`, or the served model."""
    if config.prover == "server":
        from mrt.prover import ServerProver  # needs the `openai` package (the `server` extra)

        return ServerProver.from_fields(config, model.tokenizer, seed=config.seed)  # as the trainer builds it
    if config.prover_checkpoint is None:
        return model
    mu = build(config.prover_checkpoint)
    if mu.tokenizer.get_vocab() != model.tokenizer.get_vocab():
        raise ValueError(f"EvalConfig.prover_checkpoint = {config.prover_checkpoint!r} has another tokenizer than "
                         "the evaluated model; mu must share the evaluated model's tokenizer.")
    return mu


def evaluate(config: EvalConfig, make_generator=None, progress_bar: bool = True) -> dict | None:
    """Evaluate every model, write the records, JSON, CSVs and plots; the results dict (None if stopped by
    `max_problems_this_run` before the end)."""
    from tqdm.auto import tqdm

    from mrt.evaluation.report import write_report
    from mrt.generation import make_generator as default_make_generator
    from mrt.models import resolve_model

    make_generator = make_generator or default_make_generator
    problems = load_eval_problems(config)
    digest = config.fingerprint()
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
        done = load_records(path, digest)
        todo = [i for i in range(len(problems)) if i not in done]
        backend = None
        if todo and budget_left != 0:
            model = build(name)
            mu = make_mu(config, model, build)
            backend = model.name
            setup = make_setup(config, model.tokenizer, model.eos)
            ids = prompt_ids(model.tokenizer, [row["prompt"] for row in problems])  # as GRPOTrainer tokenizes
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
                results = evaluate_problems(config, setup, model, mu, [ids[i] for i in chunk],
                                            [dict(problems[i]) for i in chunk], chunk_seed(config, chunk.start))
                seconds = round((time.perf_counter() - start) / len(chunk), 3)
                for i, completions in zip(chunk, results):
                    if i in done:
                        continue
                    if budget_left == 0:
                        break
                    row = problems[i]
                    record = {"fingerprint": digest, "index": i, "problem": row[config.problem_column],
                              "answer": row.get("answer"), "model": name, "backend": backend, "run": run_id,
                              "seconds": seconds, "completions": completions}
                    append_jsonl(path, record)
                    done[i] = record
                    bar.update(1)
                    if budget_left is not None:
                        budget_left -= 1
            bar.close()
            for generator in {id(model): model, id(mu): mu}.values():
                if hasattr(generator, "close"):
                    generator.close()
        if len(done) < len(problems):
            logger.info("Stopped after max_problems_this_run=%s; run again to finish.", config.max_problems_this_run)
            return None
        records = [done[i] for i in range(len(problems))]
        for record in records:
            if record["problem"] != problems[i := record["index"]][config.problem_column]:
                raise ValueError(f"{path}: problem {i} differs from the dataset's; use another output_dir.")
        per_model[label] = {"model": name, "records": str(path), **summarize(records, config)}

    results = {"config": asdict(config), "fingerprint": digest, "models": per_model,
               "efficiency": efficiency_table(per_model, config.target_accuracies)}
    write_report(results, config.output_dir)
    return results


# ---------------------------------------------------------------- tables (pure)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def facts(c: dict, threshold: float) -> dict:
    """A completion's `correct`, `answered`, `episodes` and `first_end`, also for records made before they were
    written (correct from the outcome; answered from a closed last \\boxed{}; first end from `finished`)."""
    box = last_box(c["text"])
    return {"correct": c.get("correct", _correct(c["outcome"], threshold)),
            "answered": c.get("answered", box is not None and box[2]),
            "episodes": c.get("episodes", len(c["episode_ends"])),
            "first_end": c.get("first_end", c["tokens"] if c["finished"] else None)}


def summarize(records: list[dict], config: EvalConfig) -> dict:
    """The tables of one model from its problem records. `accuracy` counts a completion correct at a reward of at
    least `correct_threshold`, `mean_reward` is the mean reward; `accuracy_at_0` (forced to answer from the prompt
    alone) measures the answer-at-once shortcut."""
    rows = [c for r in records for c in r["completions"]]
    known = [facts(c, config.correct_threshold) for c in rows]
    ok = [c for c in rows if c["outcome"] is not None and None not in c["j_values"]
          and None not in c["budget_accuracy"]]
    grid = sorted({round(config.max_tokens * k / (GRID_POINTS - 1)) for k in range(GRID_POINTS)}
                  | set(config.budgets) | set(config.cutoffs))
    by_episode: dict[int, list[float]] = {}
    for c in ok:
        for j, value in enumerate(progress(c["j_values"]), start=1):
            by_episode.setdefault(j, []).append(value)
    by_budget = [{"budget": b, "accuracy": _mean(c["budget_accuracy"][k] for c in ok), "answer_at_once": b == 0}
                 for k, b in enumerate(config.budgets)]
    return {
        "num_problems": len(records),
        "num_completions": len(rows),
        "unscorable": len(rows) - len(ok),
        "accuracy": _mean(facts(c, config.correct_threshold)["correct"] for c in ok),
        "mean_reward": _mean(c["outcome"] for c in ok),
        "answered": _mean(float(f["answered"]) for f in known),
        "accuracy_given_answered": _mean(f["correct"] for f in known if f["answered"]),
        "accuracy_at_0": next((p["accuracy"] for p in by_budget if p["budget"] == 0), None),
        "finished": _mean(float(c["finished"]) for c in rows),
        "ended_early": _mean(float(f["first_end"] is not None) for f in known),
        "mean_tokens": _mean(c["tokens"] for c in rows),
        "mean_episodes": _mean(f["episodes"] for f in known),
        "J_0": _mean(c["j_values"][0] for c in ok),
        "accuracy_vs_budget": by_budget,
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
