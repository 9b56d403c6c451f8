"""mrt.tokens: prompts to token ids as GRPOTrainer tokenizes them, and the ids that end a sample."""

import pytest
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from mrt.tokens import eos_ids, is_conversation, prompt_ids

CHATS = [
    [{"role": "system", "content": "Answer in a box."}, {"role": "user", "content": "What is 7 + 5?"}],
    [{"role": "user", "content": "Is 91 prime? Think first."}],
]
TEXTS = ["What is 7 + 5? Answer:", "Is 91 prime?\n\nLet me think."]


@pytest.fixture(scope="module")
def trl_trainer(tiny_model_path, tmp_path_factory):
    args = GRPOConfig(output_dir=str(tmp_path_factory.mktemp("grpo")), use_cpu=True, bf16=False,
                      report_to="none", per_device_train_batch_size=2, num_generations=2,
                      max_completion_length=4)
    def no_reward(completions, **kwargs):
        return [0.0] * len(completions)

    return GRPOTrainer(model=tiny_model_path, reward_funcs=no_reward, args=args,
                       train_dataset=Dataset.from_dict({"prompt": CHATS}))


@pytest.mark.parametrize("prompts", [CHATS, TEXTS], ids=["conversational", "text"])
def test_prompt_ids_are_trls_own_tokenization(trl_trainer, prompts):
    expected = trl_trainer._tokenize_prompts(prompts)[0]
    ids = prompt_ids(trl_trainer.processing_class, prompts, chat_template=trl_trainer.chat_template,
                     tools=trl_trainer.tools, chat_template_kwargs=trl_trainer.chat_template_kwargs)
    assert ids == [list(row) for row in expected]
    assert prompt_ids(trl_trainer.processing_class, []) == []


def test_chat_template_kwargs_reach_the_template(tokenizer):
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if shout %}!{% endif %}"
    quiet = prompt_ids(tokenizer, CHATS[1:], chat_template=template)
    loud = prompt_ids(tokenizer, CHATS[1:], chat_template=template, chat_template_kwargs={"shout": True})
    assert loud[0][:len(quiet[0])] == quiet[0] and tokenizer.decode(loud[0][len(quiet[0]):]) == "!"


def test_is_conversation():
    assert is_conversation(CHATS[0]) and not is_conversation(TEXTS[0])
    assert not is_conversation([{"content": "no role"}])


def test_eos_ids_hold_the_tokenizers_eos_the_declared_ones_and_padding(tokenizer):
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert eos_ids(tokenizer) == {eos, pad}
    assert eos_ids(tokenizer, 7) == {7, eos, pad}
    assert eos_ids(tokenizer, [7, 8, None]) == {7, 8, eos, pad}
    assert all(isinstance(i, int) for i in eos_ids(tokenizer, [7]))
