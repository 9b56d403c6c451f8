"""How several reward functions make one reward: the weighted sum GRPO takes (pure tensors)."""

import torch


def weighted_sum(per_function: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N, F) rewards and F weights -> N: the weighted sum over the functions that returned a value (a NaN is a
    function that returned None), as GRPOTrainer's `sum` aggregation; NaN where no function returned one."""
    part, weights = per_function.float().cpu(), weights.float().cpu()
    total = (part * weights).nansum(dim=1)
    total[torch.isnan(part).all(dim=1)] = float("nan")
    return total
