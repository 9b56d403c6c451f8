"""Text to token ids as the trainer sees them: one prompt-to-ids rule and one end-of-sample id set."""

from collections.abc import Iterable


def is_conversation(prompt) -> bool:
    """Whether a prompt is a list of chat messages (TRL's conversational format)."""
    return isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt)


def prompt_ids(tokenizer, prompts: list, *, chat_template: str | None = None, tools=None,
               chat_template_kwargs: dict | None = None) -> list[list[int]]:
    """Token ids of each prompt as GRPOTrainer tokenizes prompts: a conversation through the tokenizer's chat template
    (or TRL's `chat_template`) with the assistant turn opened, `tools` and `chat_template_kwargs`; a plain text
    through the tokenizer, special tokens included."""
    if not prompts:
        return []
    if is_conversation(prompts[0]):
        return tokenizer.apply_chat_template(
            conversation=prompts, tools=tools or None, chat_template=chat_template, add_generation_prompt=True,
            tokenize=True, return_dict=True, **(chat_template_kwargs or {}))["input_ids"]
    return tokenizer(text=prompts)["input_ids"]


def eos_ids(tokenizer, declared: int | Iterable[int] | None = None) -> set[int]:
    """The ids that end a sample of this model: the tokenizer's EOS, every EOS the model declares (its generation
    config, or a trainer's `eos_token_ids`), and the padding id (finished rows of a batch are padded)."""
    ids = [declared] if isinstance(declared, int) else list(declared or [])
    ids += [tokenizer.eos_token_id, tokenizer.pad_token_id]
    return {int(i) for i in ids if i is not None}
