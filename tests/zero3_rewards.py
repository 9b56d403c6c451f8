"""Test-only reward for the 2-rank runs, loaded by the ranks as `zero3_rewards:parity_reward` (the launch puts tests/
on PYTHONPATH). No imports: the rank processes load it beside the trainer."""


def parity_reward(completions, **kwargs) -> list[float]:
    """A reward a random model earns half the time (an even number of characters): J varies from prefix to prefix
    (mu's text is scored with the prefix and suffix), so the progress bonus is not 0."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(len(text) % 2 == 0) for text in texts]
