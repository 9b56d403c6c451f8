"""Write the prefix dataset of `progress_mode: branched` with `prefix_source: dataset`.

    python scripts/make_prefixes.py --config configs/mrt_branched_smollm2_arithmetic.yaml \
        --prefix_output outputs/prefixes.jsonl [--prefixes_per_problem 4] [--any_field value ...]

K completions per training problem of the config (its dataset, problem column, system prompt, number of problems,
seed, completion length and temperature) from `prefix_model` (default: the config's model), with vLLM when it is
installed, else transformers. Interrupted runs resume; the output (JSONL or Parquet) is a `dataset_name` for
training with `--prefix_source dataset`.
"""

from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, TrlParser

from mrt import MRTConfig
from mrt.cli import MRTScriptArguments
from mrt.data import load_problems
from mrt.experiments.prefix_data import write_prefixes
from mrt.generation import BACKENDS, make_generator
from mrt.models import resolve_model
from mrt.quiet import start_command


@dataclass
class PrefixArguments:
    prefix_output: str = field(
        default="outputs/prefixes.jsonl",
        metadata={"help": "Output file, .jsonl (appended per problem, resumable) or .parquet (written at the end)."},
    )
    prefixes_per_problem: int = field(default=4, metadata={"help": "Completions per problem (K)."})
    prefix_model: str | None = field(
        default=None, metadata={"help": "Model that writes the completions. None: the config's model."})
    prefix_backend: str = field(
        default="auto", metadata={"help": "'auto' (vLLM when installed), 'vllm' or 'transformers'.",
                                  "choices": list(BACKENDS)})
    prefix_batch_problems: int = field(default=8, metadata={"help": "Problems per generate call."})
    prefix_max_tokens: int | None = field(
        default=None, metadata={"help": "Tokens per completion. None: the config's max_completion_length."})
    prefix_temperature: float | None = field(
        default=None, metadata={"help": "Sampling temperature. None: the config's temperature."})


def main(script_args, training_args, model_args, prefix_args) -> Path:
    start_command()
    dataset = load_problems(
        script_args.dataset_name, split=script_args.dataset_train_split, problem_column=script_args.problem_column,
        answer_column=training_args.answer_column, system_prompt=script_args.system_prompt or None,
        num_problems=script_args.num_train_problems, seed=training_args.seed,
    )
    model = resolve_model(prefix_args.prefix_model or model_args.model_name_or_path)
    generator = make_generator(model, backend=prefix_args.prefix_backend, dtype=model_args.dtype or "float32",
                               seed=training_args.seed)
    try:
        return write_prefixes(
            dataset, generator, prefix_args.prefix_output, prefix_args.prefixes_per_problem,
            prefix_args.prefix_max_tokens or training_args.max_completion_length,
            prefix_args.prefix_temperature or training_args.temperature, column=training_args.prefix_column,
            batch_problems=prefix_args.prefix_batch_problems, seed=training_args.seed,
        )
    finally:
        generator.close()


if __name__ == "__main__":
    parser = TrlParser((MRTScriptArguments, MRTConfig, ModelConfig, PrefixArguments))
    print(main(*parser.parse_args_and_config()))
