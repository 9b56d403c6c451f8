"""`progress_mode: termination_baseline` (the authors' released RL pseudocode): the sequence advantage is r - J_0,
the prover's success from the prompt alone in place of GRPO's group mean, plus the dense bonus."""

import torch

from mrt.progress import termination_advantages
from mrt.rl.modes.base import ProgressMode


class TerminationBaselineMode(ProgressMode):
    """r - J_0 as the sequence advantage: it needs J_0, so mu runs whatever alpha is."""

    name = "termination_baseline"
    needs_prover = True

    def sequence_advantages(self, grpo, outcomes, j_rows, mode):
        """(B,) r - J_0, r and J_0 from the same reward functions (`progress_reward_funcs`). Where J_0 is
        unknown the baseline is the mean r of the completion's group (GRPO's baseline, in the same reward
        units, not divided by a std); 0 where r is unknown."""
        trainer = self.trainer
        nan = float("nan")
        j0 = [js[0] if js else None for js in j_rows]
        success = torch.tensor([nan if v is None else v for v in trainer.reward_scorer.combine(trainer.batch_rewards)])
        G = trainer.num_generations if mode == "train" else trainer.num_generations_eval
        start = trainer.accelerator.process_index * len(outcomes)
        group_mean = success.view(-1, G).nanmean(dim=1).repeat_interleave(G)[start:start + len(outcomes)]
        known = torch.tensor([nan if v is None else v for v in j0])
        baseline = torch.where(torch.isnan(known), group_mean, known)
        r = [nan if v is None else v for v in outcomes]
        return torch.nan_to_num(termination_advantages(r, baseline.tolist()), nan=0.0)
