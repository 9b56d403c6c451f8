"""Prefix datasets for `progress_mode: branched` with `prefix_source: dataset` (scripts/make_prefixes.py).

K completions per problem from a given model, written as JSONL (one line per finished problem, so an interrupted
run resumes where it stopped) or, at the end, as Parquet. Each row keeps the problem's columns and adds the column
of completions (texts) that the trainer cuts prefixes from.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm.auto import tqdm

from mrt.records import append_jsonl, read_jsonl
from mrt.rl.branched import problem_key
from mrt.tokens import prompt_ids

logger = logging.getLogger(__name__)

OUTPUT_TYPES = (".jsonl", ".parquet")


def work_file(output: Path) -> Path:
    """The JSONL file rows are appended to: the output itself, or a partial file beside a Parquet output."""
    return output if output.suffix == ".jsonl" else output.with_name(output.name + ".partial.jsonl")


def finished_keys(path: Path) -> set[str]:
    """Problem keys already written to a JSONL work file (a last line cut by an interruption is dropped)."""
    return {problem_key(row["prompt"]) for row in read_jsonl(path)}


def write_prefixes(dataset, generator, output, num_prefixes: int, max_tokens: int, temperature: float,
                   column: str = "prefixes", batch_problems: int = 8, seed: int = 0,
                   stop: list[str] | None = None) -> Path:
    """Generate `num_prefixes` completions per problem of `dataset` (a "prompt" column) and write them to `output`.

    `generator` has `generate(prompts, n, max_tokens, temperature, stop, seed)` over token-id prompts (see
    mrt.generation.make_generator). Problems already in the output are skipped; each batch of `batch_problems`
    problems is one call with its own seed, so a resumed run gives the same completions.
    """
    output = Path(output)
    if output.suffix not in OUTPUT_TYPES:
        raise ValueError(f"prefix output {output} must end in one of {OUTPUT_TYPES}")
    if num_prefixes < 1 or batch_problems < 1 or max_tokens < 1:
        raise ValueError(f"num_prefixes, batch_problems and max_tokens must be >= 1, got {num_prefixes}, "
                         f"{batch_problems}, {max_tokens}")
    if column in dataset.column_names:
        raise ValueError(f"The dataset already has a column {column!r}; choose another prefix_column.")
    if output.suffix == ".parquet" and output.exists():
        logger.info("%s exists: nothing to do (delete it to generate again).", output)
        return output
    work = work_file(output)
    done = finished_keys(work)
    todo = [i for i, prompt in enumerate(dataset["prompt"]) if problem_key(prompt) not in done]
    tokenizer = generator.tokenizer
    with tqdm(total=len(dataset), initial=len(dataset) - len(todo), desc="prefixes", unit="problem") as bar:
        for k in range(0, len(todo), batch_problems):
            rows = [dataset[i] for i in todo[k:k + batch_problems]]
            prompts = prompt_ids(tokenizer, [row["prompt"] for row in rows])
            samples = generator.generate(prompts, num_prefixes, max_tokens, temperature, stop, seed=seed + todo[k])
            written = [{**row, column: [s.text for s in outs]} for row, outs in zip(rows, samples, strict=True)]
            append_jsonl(work, *written)
            bar.update(len(rows))
    if output.suffix == ".parquet":
        from datasets import load_dataset

        load_dataset("json", data_files=str(work), split="train").to_parquet(str(output))
        work.unlink()
    return output
