"""MRT (STaR), the paper's Algorithm 1: generate traces with the model, score every episode prefix with mu, keep the
traces that end correct and make the most progress per token, and fine-tune on them with TRL's SFTTrainer.

One iteration, in `output_dir/iter-<k>/`:
    generate   K traces per problem, batches of `problems_per_batch` problems; every finished problem is appended
               to traces-rank<r>.jsonl at once, so a killed run resumes where it stopped;
    score      episodes (the trainer's rules), J_j for every prefix from one de-duplicated prover call per batch
               (`mrt.prover.ProgressEstimator`), J_H = the trace's own reward; appended to scores-rank<r>.jsonl;
    select     `mrt.star.select` (pure), written to selected.jsonl, with summary.json;
    train      SFTTrainer on the selected traces (prompt ids + completion ids, loss on the completion only).
`iterations: N` repeats this from the newly trained model. Under `accelerate launch` the batches are shared out over
the ranks (batch b on rank b % world); every rank reads every rank's records, so all select the same data.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from trl import SFTConfig

from mrt.checks import check
from mrt.data import SYSTEM_PROMPT
from mrt.fields import EpisodeFields, ProverFields
from mrt.generation import BACKENDS
from mrt.records import append_jsonl, read_jsonl, read_records, write_atomic
from mrt.records import fingerprint as settings_fingerprint
from mrt.star.select import SELECTIONS
from mrt.tokens import eos_ids

logger = logging.getLogger(__name__)

DONE = "mrt_star_done.json"  # written into a model folder once its iteration has finished


@dataclass
class STaRConfig(SFTConfig, EpisodeFields, ProverFields):
    """Configuration of MRT (STaR): TRL's SFTConfig (the fine-tuning step: learning_rate, num_train_epochs, batch
    sizes, output_dir, seed, ...), the episode and prover fields MRT (RL) shares (`mrt.fields`; with `prover:
    policy`, mu is the model being improved through the generation engine), and the fields below."""

    # SFT defaults that differ from TRL's: the paper's learning rate, loss on the completion only.
    learning_rate: float = field(default=1e-6, metadata={"help": "SFT learning rate (the paper: 1e-6)."})
    completion_only_loss: bool | None = field(
        default=True, metadata={"help": "Loss on the trace tokens only, never on the prompt. Keep it True."})

    # Model and data
    model_name_or_path: str = field(default="smollm2-135m", metadata={
        "help": "The model to improve: a local folder, a hub id, or the offline alias smollm2-135m."})
    dtype: str = field(default="float32", metadata={
        "help": "Model dtype for generation and training ('float32', 'bfloat16', 'auto')."})
    dataset_name: str = field(default="arithmetic", metadata={
        "help": "'arithmetic[:difficulty]' (built in), a local JSON/JSONL/Parquet path, or a hub dataset."})
    dataset_train_split: str = field(default="train", metadata={"help": "Dataset split of the training problems."})
    problem_column: str = field(default="problem", metadata={"help": "Column with the problem text."})
    answer_column: str = field(default="answer", metadata={
        "help": "Column with the gold answer (the default reward, math-verify, reads it)."})
    system_prompt: str | None = field(default=SYSTEM_PROMPT, metadata={"help": "System prompt; '' for none."})
    num_train_problems: int | None = field(default=None, metadata={
        "help": "Use this many problems (a seeded shuffle of the dataset). None: all (256 for the built-in task)."})

    # Generation
    num_generations: int = field(default=4, metadata={"help": "Traces K sampled per problem."})
    max_completion_length: int = field(default=256, metadata={
        "help": "Maximum tokens per trace; also the common cutoff of the regret that ranks the traces."})
    temperature: float = field(default=0.9, metadata={"help": "Sampling temperature of the traces."})
    generation_backend: str = field(default="auto", metadata={
        "help": "'auto' (vLLM when it imports, else transformers), 'vllm' or 'transformers'."})
    generation_batch_size: int = field(default=64, metadata={
        "help": "Sequences per generate call (transformers backend)."})
    problems_per_batch: int = field(default=8, metadata={
        "help": "Problems per generation batch and per prover call; a batch is also the unit that a resumed run "
                "regenerates (with the same seed, so the same traces)."})

    # Selection
    selection: str = field(default="progress", metadata={
        "help": "'progress' (MRT-STaR): per problem, the correct traces with the lowest cumulative regret of their J "
                "curve, the first keep_per_problem. 'correct' (plain STaR, the baseline): every correct trace, "
                "whole.", "choices": list(SELECTIONS)})
    keep_per_problem: int = field(default=1, metadata={"help": "selection='progress': traces kept per problem."})
    truncate_at_best: bool = field(default=True, metadata={
        "help": "selection='progress': cut a kept trace after the first episode where J reaches its maximum, then "
                "the termination suffix and one of mu's correct answers from that prefix."})
    min_reward: float = field(default=1.0, metadata={
        "help": "A trace is correct when its own reward is at least this (1.0 for the 0/1 math-verify reward)."})
    iterations: int = field(default=1, metadata={
        "help": "Rounds of generate -> score -> select -> train, each from the model the previous one trained."})

    def __post_init__(self):
        super().__post_init__()
        self.check_episode_fields()
        self.check_prover_fields()
        if self.system_prompt == "":
            self.system_prompt = None
        _check(bool(self.model_name_or_path), "model_name_or_path", self.model_name_or_path, "a model")
        _check(bool(self.dataset_name), "dataset_name", self.dataset_name, "a dataset")
        _check(bool(self.answer_column), "answer_column", self.answer_column, "a column name")
        _check(self.num_train_problems is None or self.num_train_problems >= 1, "num_train_problems",
               self.num_train_problems, "None or >= 1")
        for name in ("num_generations", "max_completion_length", "generation_batch_size", "problems_per_batch",
                     "keep_per_problem", "iterations"):
            _check(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        _check(self.temperature >= 0, "temperature", self.temperature, ">= 0")
        _check(self.generation_backend in BACKENDS, "generation_backend", self.generation_backend,
               f"one of {BACKENDS}")
        _check(self.selection in SELECTIONS, "selection", self.selection, f"one of {SELECTIONS}")
        _check(self.min_reward == self.min_reward, "min_reward", self.min_reward, "a number")
        _check(self.completion_only_loss is not False, "completion_only_loss", self.completion_only_loss,
               "True: MRT-STaR trains on the traces, not on the prompts")

    def fingerprint(self, model: str, iteration: int, part: str) -> str:
        """Hash of the settings that decide the records of one iteration's `part` ('traces' or 'scores')."""
        names = ["dataset_name", "dataset_train_split", "problem_column", "answer_column", "system_prompt",
                 "num_generations", "max_completion_length", "temperature", "problems_per_batch", "seed"]
        if part == "scores":
            names += [f.name for f in (*fields(EpisodeFields), *fields(ProverFields))]
        keep = {n: getattr(self, n) for n in sorted(set(names))}
        keep.update(model=model, iteration=iteration, part=part)
        return settings_fingerprint(keep)


def _check(ok: bool, name: str, value, expected: str) -> None:
    check(ok, "STaRConfig", name, value, expected)


# ---------------------------------------------------------------- problems and records


@dataclass
class Problems:
    """The training problems: dataset rows, the ones used, and the ones skipped because their gold does not parse."""

    rows: list[dict]
    usable: list[int]
    skipped: list[int]


def load_star_problems(config: STaRConfig, check_gold: bool = True) -> Problems:
    """The dataset rows; with `check_gold` (the default reward), problems whose gold math-verify cannot parse are
    skipped and counted."""
    from mrt.data import load_problems
    from mrt.rewards.accuracy import parse_gold

    dataset = load_problems(config.dataset_name, split=config.dataset_train_split,
                            problem_column=config.problem_column, answer_column=config.answer_column,
                            system_prompt=config.system_prompt, num_problems=config.num_train_problems,
                            seed=config.seed)
    rows = list(dataset)
    skipped = [i for i, row in enumerate(rows) if check_gold and parse_gold(row[config.answer_column]) is None]
    if skipped:
        logger.warning("Skipping %d of %d problems whose gold answer does not parse.", len(skipped), len(rows))
    return Problems(rows, [i for i in range(len(rows)) if i not in set(skipped)], skipped)


def batches(usable: list[int], size: int) -> list[list[int]]:
    """Fixed batches of problem indices: the same on every run, so a resumed batch gets the same seed."""
    return [usable[k:k + size] for k in range(0, len(usable), size)]


def _state():
    from accelerate import PartialState

    return PartialState()


def load_part(folder: Path, part: str, expected: str) -> dict[int, dict]:
    """Every rank's finished records of one part ('traces' or 'scores'), by problem index; records made with other
    settings (another fingerprint) are an error. Once every rank has stopped writing, the main process drops any
    last line cut short by a kill; then every rank reads all files, and no rank writes again before all have read."""
    state = _state()
    state.wait_for_everyone()
    if state.is_main_process:
        for path in sorted(folder.glob(f"{part}-rank*.jsonl")):
            read_jsonl(path)
    state.wait_for_everyone()
    records: dict[int, dict] = {}
    for path in sorted(folder.glob(f"{part}-rank*.jsonl")):
        records.update(read_records(path, expected))
    state.wait_for_everyone()
    return records


def _my_batches(config: STaRConfig, problems: Problems) -> list[tuple[int, list[int]]]:
    state = _state()
    return [(k, b) for k, b in enumerate(batches(problems.usable, config.problems_per_batch))
            if k % state.num_processes == state.process_index]


def _bar(desc: str, mine, done, progress_bar: bool):
    from tqdm.auto import tqdm

    return tqdm(desc=desc, total=sum(len(b) for _, b in mine), initial=sum(i in done for _, b in mine for i in b),
                disable=not progress_bar or not _state().is_local_main_process)


# ---------------------------------------------------------------- generate


def generate_traces(config: STaRConfig, generator, problems: Problems, folder: Path, expected: str, seed: int,
                    progress_bar: bool = True, stop_after: int | None = None) -> dict[int, dict]:
    """K traces per usable problem, appended per problem to `folder/traces-rank<r>.jsonl` as each batch finishes;
    problems already there are not generated again. `stop_after`: return after writing that many problems (the rest
    is done by the next call). Returns every rank's records by problem index."""
    from mrt.tokens import prompt_ids

    done = load_part(folder, "traces", expected)
    for i, record in done.items():
        if i >= len(problems.rows) or record["problem"] != problems.rows[i][config.problem_column]:
            raise ValueError(f"{folder}: the records of problem {i} belong to another dataset; use another "
                             "output_dir or delete that folder.")
    path = folder / f"traces-rank{_state().process_index}.jsonl"
    mine = _my_batches(config, problems)
    bar, written = _bar("generate", mine, done, progress_bar), 0
    for k, batch in mine:
        if all(i in done for i in batch):
            continue
        if stop_after is not None and written >= stop_after:
            break
        prompts = prompt_ids(generator.tokenizer, [problems.rows[i]["prompt"] for i in batch])
        samples = generator.generate(prompts, config.num_generations, config.max_completion_length,
                                     config.temperature, None, seed + k)
        for i, ids, group in zip(batch, prompts, samples, strict=True):
            if i in done or (stop_after is not None and written >= stop_after):
                continue
            done[i] = {"fingerprint": expected, "index": i, "problem": problems.rows[i][config.problem_column],
                       "prompt_ids": ids,
                       "traces": [{"ids": s.ids, "text": s.text, "finished": s.finished} for s in group]}
            append_jsonl(path, done[i])
            written += 1
            bar.update(1)
    bar.close()
    return load_part(folder, "traces", expected)


# ---------------------------------------------------------------- score


def score_traces(config: STaRConfig, estimator, scorer, problems: Problems, traces: dict[int, dict], folder: Path,
                 expected: str, seed: int, progress_bar: bool = True) -> dict[int, dict]:
    """J curve of every trace: J_0..J_{H-1} from mu (one `estimator.estimate` call per batch), J_H = the trace's own
    reward from `scorer`; per prefix, one of mu's best answers (what a cut trace ends with). Appended per problem to
    `folder/scores-rank<r>.jsonl`. Returns every rank's records by problem index."""
    from mrt.prover import as_completion

    done = load_part(folder, "scores", expected)
    ends = eos_ids(estimator.tokenizer)
    path = folder / f"scores-rank{_state().process_index}.jsonl"
    mine = _my_batches(config, problems)
    bar = _bar("score", mine, done, progress_bar)
    for k, batch in mine:
        todo = [i for i in batch if i not in done]
        if not todo:
            continue
        owners = [(i, t) for i in todo for t in range(len(traces[i]["traces"]))]
        rows = [problems.rows[i] for i, _ in owners]
        prompts = [row["prompt"] for row in rows]
        prompt_ids = [traces[i]["prompt_ids"] for i, _ in owners]
        completion_ids = [traces[i]["traces"][t]["ids"] for i, t in owners]
        completions = [as_completion(traces[i]["traces"][t]["text"], isinstance(p, list))
                       for (i, t), p in zip(owners, prompts)]
        generated = [_with_eos(ids, traces[i]["traces"][t]["finished"], estimator.tokenizer.eos_token_id, ends)
                     for ids, (i, t) in zip(completion_ids, owners)]
        outcomes = scorer(prompts, completions, generated, rows)
        estimate = estimator.estimate(prompt_ids, completion_ids, prompts, rows, outcomes=outcomes, seed=seed + k)
        scored: dict[int, list[dict]] = {i: [] for i in todo}
        for n, (i, t) in enumerate(owners):
            best = [_best_answer(estimate.samples[r], estimate.sample_scores[r]) for r in estimate.requests.index[n]]
            scored[i].append({
                "tokens": len(completion_ids[n]), "outcome": outcomes[n], "episode_ends": estimate.ends[n],
                "j_tokens": [*estimate.lengths[n], len(completion_ids[n])], "j_values": estimate.j[n],
                "answer_scores": [s for _, s in best], "answers": [a for a, _ in best]})
        for i in todo:
            done[i] = {"fingerprint": expected, "index": i, "traces": scored[i]}
            append_jsonl(path, done[i])
            bar.update(1)
    bar.close()
    return load_part(folder, "scores", expected)


def _with_eos(ids: list[int], finished: bool, eos_id: int | None, ends: set[int] | None = None) -> list[int]:
    """A trace's ids as GRPOTrainer gives completions to reward functions: ending in EOS when the model ended it (the
    default reward tells a finished trace from one cut at the token limit by that). `ends`: the ids that end a
    sample (`mrt.tokens.eos_ids`; default: `eos_id` alone), stripped first."""
    ids = _strip_eos(ids, {eos_id} if ends is None else ends)
    return ids + [eos_id] if finished and eos_id is not None else ids


def _best_answer(samples: list[list[int]], scores: list[float | None]) -> tuple[list[int] | None, float | None]:
    """mu's first highest-scoring sample from one prefix and its score; (None, None) when none could be scored."""
    known = [(s, -n) for n, s in enumerate(scores) if s is not None]
    if not known:
        return None, None
    score, n = max(known)
    return list(samples[-n]), score


def make_mu(config: STaRConfig, generator):
    """mu: the model being improved through the generation engine (`prover: policy`), or a frozen server."""
    if config.prover == "server":
        from mrt.prover.server import ServerProver  # needs the `openai` package (the `server` extra)

        return ServerProver.from_fields(config, generator.tokenizer, seed=config.seed)  # as the trainer builds it
    return generator.prover  # the model being improved, through its own engine (mrt.generation)


# ---------------------------------------------------------------- select


def _strip_eos(ids: list[int], ends: set[int]) -> list[int]:
    """The ids without the end-of-sample ids (`mrt.tokens.eos_ids`) they end with."""
    ids = list(ids)
    while ids and ids[-1] in ends:
        ids.pop()
    return ids


def training_completion(prompt_ids: list[int], trace_ids: list[int], scored: dict, cut: int | None, suffix,
                        tokenizer) -> list[int]:
    """Completion ids of one training example, ending in EOS: the whole trace, or its prefix up to episode `cut`
    joined to the termination suffix by THE rule of mrt.prover (`prover_prompt`) and followed by mu's answer."""
    from mrt.prover import prover_prompt

    eos, ends = tokenizer.eos_token_id, eos_ids(tokenizer)
    if cut is None:
        completion = _strip_eos(trace_ids, ends)
    else:
        ids, _ = prover_prompt(prompt_ids, trace_ids[:scored["j_tokens"][cut]], suffix, tokenizer)
        completion = ids[len(prompt_ids):] + _strip_eos(scored["answers"][cut], ends)
    return completion + ([eos] if eos is not None else [])


def select_examples(config: STaRConfig, problems: Problems, traces: dict[int, dict], scores: dict[int, dict],
                    tokenizer, suffix) -> tuple[list[dict], dict]:
    """The training examples of one iteration and its summary (see mrt.star.select)."""
    from mrt.star.select import select_problem, summarize, trace_regret

    order = [i for i in problems.usable if i in scores]
    chosen = [select_problem(scores[i]["traces"], config.selection, config.keep_per_problem,
                             config.max_completion_length, config.min_reward, config.truncate_at_best)
              for i in order]
    examples = []
    for i, choices in zip(order, chosen):
        row, generated, scored = problems.rows[i], traces[i], scores[i]["traces"]
        for choice in choices:
            trace, s = generated["traces"][choice.trace], scored[choice.trace]
            completion = training_completion(generated["prompt_ids"], trace["ids"], s, choice.cut, suffix, tokenizer)
            examples.append({
                "index": i, "problem": row[config.problem_column], "answer": row[config.answer_column],
                "trace": choice.trace, "cut_after_episode": choice.cut,
                "regret": trace_regret(s, config.max_completion_length) if None not in s["j_values"] else None,
                "j_values": s["j_values"], "tokens_before": s["tokens"], "tokens_after": len(completion),
                "prompt": row["prompt"], "completion": tokenizer.decode(completion, skip_special_tokens=False),
                "prompt_ids": generated["prompt_ids"], "completion_ids": completion})
    summary = summarize([scores[i]["traces"] for i in order], chosen, [e["tokens_after"] for e in examples],
                        config.max_completion_length, config.min_reward)
    summary.update(problems_skipped_unparsable_gold=len(problems.skipped), selection=config.selection,
                   truncate_at_best=config.truncate_at_best and config.selection == "progress")
    return examples, summary


# ---------------------------------------------------------------- train


def train_sft(config: STaRConfig, model: str, examples: list[dict], save_to: Path, work_dir: Path):
    """TRL's SFTTrainer on the examples (prompt ids + completion ids; the loss on the completion only), saved to
    `save_to` as a normal model folder."""
    from datasets import Dataset
    from trl import SFTTrainer

    args = copy.copy(config)
    args.output_dir = str(work_dir)
    args.model_init_kwargs = {**(config.model_init_kwargs or {}), "dtype": config.dtype}
    data = Dataset.from_dict({
        "input_ids": [e["prompt_ids"] + e["completion_ids"] for e in examples],
        "completion_mask": [[0] * len(e["prompt_ids"]) + [1] * len(e["completion_ids"]) for e in examples]})
    trainer = SFTTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    trainer.save_model(str(save_to))
    return trainer


# ---------------------------------------------------------------- the run


def run_iteration(config: STaRConfig, model: str, iteration: int, problems: Problems, scorer,
                  progress_bar: bool = True) -> tuple[list[dict], dict]:
    """Generate, score and select one iteration from `model`; writes selected.jsonl and summary.json into
    `output_dir/iter-<k>` and returns the examples and the summary. Stops with NoCorrectTraces on an empty set."""
    from mrt.episodes import resolve_thinking_tag
    from mrt.generation import make_generator
    from mrt.memory import without_zero3
    from mrt.prover import ProgressEstimator, make_suffix
    from mrt.prover.presets import answer_temperature
    from mrt.star.select import check_not_empty

    folder = Path(config.output_dir) / f"iter-{iteration}"
    folder.mkdir(parents=True, exist_ok=True)
    seed = config.seed * 1_000_003 + iteration * 100_003
    start = time.perf_counter()
    with without_zero3():  # each rank works on its own problems
        generator = make_generator(model, backend=config.generation_backend, dtype=config.dtype,
                                   batch_size=config.generation_batch_size, seed=config.seed)
        try:
            tokenizer = generator.tokenizer
            tag = resolve_thinking_tag(config.end_of_thinking_tag, tokenizer)
            suffix = make_suffix(tokenizer, config.termination_suffix, tag)
            traces = generate_traces(config, generator, problems, folder,
                                     config.fingerprint(model, iteration, "traces"), seed, progress_bar)
            seconds_generate = time.perf_counter() - start
            temperature = answer_temperature(config.prover_temperature, config.temperature)
            estimator = ProgressEstimator(make_mu(config, generator), tokenizer, config.episode_rules(tag), suffix,
                                          scorer, config.prover_num_samples, config.prover_max_tokens, temperature,
                                          config.prover_stop, answer_column=config.answer_column)
            scores = score_traces(config, estimator, scorer, problems, traces, folder,
                                  config.fingerprint(model, iteration, "scores"), seed + 50_000, progress_bar)
        finally:
            generator.close()
    examples, summary = select_examples(config, problems, traces, scores, tokenizer, suffix)
    _check_same_on_every_rank(examples, folder)
    summary.update(iteration=iteration, model=model, seconds_generate_and_score=round(time.perf_counter() - start, 1),
                   seconds_generate=round(seconds_generate, 1))
    if _state().is_main_process:
        write_atomic(folder / "selected.jsonl", "".join(json.dumps(e) + "\n" for e in examples))
        write_atomic(folder / "summary.json", json.dumps(summary, indent=2))
    check_not_empty(summary, iteration, len(problems.skipped))
    return examples, summary


def _check_same_on_every_rank(examples: list[dict], folder: Path) -> None:
    """Every rank must train on the same examples, or the ranks' SFT steps fall out of step and hang."""
    state = _state()
    if state.num_processes == 1:
        return
    from accelerate.utils import gather_object

    digest = settings_fingerprint([e["completion_ids"] for e in examples], length=40)
    if len(set(gather_object([digest]))) > 1:
        raise RuntimeError(f"MRT-STaR: the ranks selected different training examples from the records in {folder}; "
                           "all ranks must see the same files (a shared file system). Nothing was trained.")


def run(config: STaRConfig, reward_funcs=None, reward_weights=None, progress_bar: bool = True) -> list[dict]:
    """`iterations` rounds of generate -> score -> select -> train; the summaries. The model of the last round is
    saved to output_dir, earlier ones to output_dir/iter-<k>/model. A finished round is not run again."""
    from mrt.models import resolve_model
    from mrt.prover import RewardScorer
    from mrt.rewards.accuracy import make_accuracy_reward

    model = resolve_model(config.model_name_or_path)
    if reward_funcs is None:  # knows a trace cut at max_completion_length by its ids (`_with_eos`)
        from transformers import AutoTokenizer

        finished_by = eos_ids(AutoTokenizer.from_pretrained(model))
    scorer = RewardScorer(reward_funcs if reward_funcs is not None else
                          [make_accuracy_reward(config.answer_column, finished_by)], reward_weights)
    problems = load_star_problems(config, check_gold=reward_funcs is None)
    summaries = []
    for k in range(1, config.iterations + 1):
        folder = Path(config.output_dir) / f"iter-{k}"
        save_to = Path(config.output_dir) if k == config.iterations else folder / "model"
        if (save_to / DONE).exists():
            logger.info("Iteration %d already done: %s", k, save_to)
            summaries.append(json.loads((folder / "summary.json").read_text()))
            model = str(save_to)
            continue
        examples, summary = run_iteration(config, model, k, problems, scorer, progress_bar)
        logger.info("Iteration %d: %d traces generated, %d kept; mean tokens %.1f before, %.1f trained", k,
                    summary["traces_generated"], summary["traces_kept"], summary["mean_tokens_generated"] or 0,
                    summary["mean_tokens_trained"] or 0)
        start = time.perf_counter()
        train_sft(config, model, examples, save_to, folder / "sft")
        summary["seconds_train"] = round(time.perf_counter() - start, 1)
        if _state().is_main_process:
            write_atomic(folder / "summary.json", json.dumps(summary, indent=2))
            write_atomic(save_to / DONE, json.dumps({"iteration": k, "from_model": model}))
        _state().wait_for_everyone()
        summaries.append(summary)
        model = str(save_to)
    return summaries
