"""The prover's constants: its backends, estimators and named termination suffixes (pure; no torch)."""

AUTHORS_SUFFIX = (
    "Time is up.\n\nGiven the time I've spent and the approaches I've tried, I should stop thinking and "
    "formulate a final answer based on what I already have.\n"
)

# Named termination suffixes: (text before the end-of-thinking tag, text after it).
SUFFIX_PRESETS = {
    # The authors' suffix: mu then writes a whole answer.
    "authors": (AUTHORS_SUFFIX, ""),
    # Ends at the answer slot, so mu writes only the answer (a handful of tokens).
    "boxed": (AUTHORS_SUFFIX, "\nThe final answer is $\\boxed{"),
}

PROVERS = ("policy", "server")  # mu = the policy being trained, or a frozen model on its own vLLM server
ESTIMATORS = ("sampling", "likelihood")  # J from mu's sampled answers, or from the gold answer's likelihood


def answer_temperature(prover_temperature: float | None, temperature: float) -> float:
    """The temperature of mu's answers: `prover_temperature`, or the policy's `temperature` when it is None."""
    return temperature if prover_temperature is None else prover_temperature
