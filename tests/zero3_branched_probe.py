"""Test-only launcher for tests/test_branched.py: branched training (`prefix_source: rollouts`) as
scripts/train_mrt_rl.py runs it, under `accelerate launch` on 2 ZeRO-3 CPU ranks.

Writes $MRT_PROBE_DIR/rank<r>.json on every rank: the world, every generation batch's plan (problem key, half, cut
prefix ids, whether it had a source), the advantages the loss saw, the number of model.generate calls and this
rank's prefix store at the end.
"""

import json
import os
from pathlib import Path

from transformers import TrainerCallback
from zero3_probe import leave

from mrt.cli import build_trainer, parser


class Probe(TrainerCallback):
    def __init__(self, trainer, out_dir: Path):
        self.trainer, self.out_dir = trainer, out_dir
        self.record = {"batches": [], "generate_calls": 0}
        t, record = trainer, self.record
        tokenize, batch, generate = t._tokenize_prompts, t._generate_and_score_completions, t.model.generate

        def probed_tokenize(prompts):
            if t.progress_mode.plan is not None:
                record["batches"].append({"step": t.state.global_step + 1, "plan": [
                    [b.key, b.terminating, b.cut.ids, b.has_source] for b in t.progress_mode.plan]})
            return tokenize(prompts)

        def probed_batch(inputs):
            output = batch(inputs)
            record["batches"][-1]["advantages"] = output["advantages"].tolist()
            return output

        def counted_generate(*args, **kwargs):
            record["generate_calls"] += 1
            return generate(*args, **kwargs)

        t._tokenize_prompts, t._generate_and_score_completions = probed_tokenize, probed_batch
        t.model.generate = counted_generate

    def on_train_end(self, args, state, control, **kwargs):
        acc = self.trainer.accelerator
        self.record.update(rank=acc.process_index, world_size=acc.num_processes, global_step=state.global_step,
                           distributed_type=str(acc.distributed_type), log_history=state.log_history,
                           store=self.trainer.progress_mode.prefix_store.state_dict())
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{acc.process_index}.json").write_text(json.dumps(self.record))


def main():
    script_args, training_args, model_args = parser().parse_args_and_config()
    trainer = build_trainer(script_args, training_args, model_args)
    out_dir = Path(os.environ.get("MRT_PROBE_DIR") or Path(training_args.output_dir) / "probe")
    trainer.add_callback(Probe(trainer, out_dir))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    leave(trainer)


if __name__ == "__main__":
    main()
