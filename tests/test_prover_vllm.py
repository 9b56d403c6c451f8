"""mu = the current policy through TRL's own vLLM (real vLLM on CPU: the `vllm-cpu` package).

CPU settings: TRL builds the colocated `vllm.LLM` itself and exposes no `enforce_eager`, so `VLLM_CPU_CI_ENV=1`
makes vLLM's CPU platform trace the model once with the eager backend instead of compiling it with inductor (minutes
on 2 cores). The model is served in float32 (a float32 view of the SmolLM2 folder): without AVX-512 bf16, vLLM's CPU
matmuls in bfloat16 are slow, and float32 is what the trainer trains in.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_CI_ENV", "1")

import torch  # noqa: E402

from mrt import MRTConfig, MRTTrainer  # noqa: E402
from mrt.data import arithmetic_dataset, format_prompt  # noqa: E402
from mrt.experiments.vllm_server import VLLMServer, free_port  # noqa: E402
from mrt.prover import RewardScorer, TransformersProver, VLLMPolicyProver, build_requests, sample_success  # noqa: E402
from mrt.rewards.accuracy import make_accuracy_reward  # noqa: E402

pytestmark = pytest.mark.slow

COMMON = dict(
    use_cpu=True, bf16=False, report_to="none", gradient_checkpointing=False, save_strategy="no",
    per_device_train_batch_size=8, num_generations=4, max_completion_length=8, logging_steps=1,
    learning_rate=1e-5, beta=0.0, seed=0, model_init_kwargs={"dtype": torch.float32},
    alpha=1.0, prover_num_samples=4, prover_max_tokens=4, termination_suffix="boxed", prover_stop=["}"],
    use_vllm=True, vllm_gpu_memory_utilization=0.1, vllm_enable_sleep_mode=False,
)


@pytest.fixture(scope="module")
def float32_model(smollm2_path, tmp_path_factory) -> str:
    """The SmolLM2 folder with its config's dtype set to float32 (the weights are linked, not copied)."""
    folder = tmp_path_factory.mktemp("smollm2-fp32")
    for item in Path(smollm2_path).iterdir():
        if item.name != "config.json":
            (folder / item.name).symlink_to(item)
    config = json.loads((Path(smollm2_path) / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "dtype": "float32"}))
    return str(folder)


@pytest.fixture(scope="module")
def colocate(float32_model, tmp_path_factory, monkeypatch_module):
    """An MRTTrainer in vllm_mode='colocate', with every vllm.LLM construction counted."""
    import vllm

    # vLLM's colocate mode in TRL needs the torch.distributed variables even for one process.
    for name, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(free_port())).items():
        monkeypatch_module.setenv(name, value)
    built = []
    init = vllm.LLM.__init__

    def counting_init(self, *args, **kwargs):
        built.append(self)
        init(self, *args, **kwargs)

    monkeypatch_module.setattr(vllm.LLM, "__init__", counting_init)
    # vllm-cpu 0.32 repacks each linear weight for oneDNN after loading and leaves an empty tensor, so TRL's weight push
    # into the colocated engine fails ("'Parameter' object has no attribute 'weight_loader'"; with the packages
    # installed here, on a719d53 too). Keep the weights and use vLLM's own F.linear fallback (the GPU build does
    # not repack); see tests/zero3_probe.py.
    from vllm.model_executor.layers import utils

    monkeypatch_module.setattr(utils, "dispatch_cpu_unquantized_gemm",
                               lambda layer, remove_weight: setattr(layer, "cpu_linear", torch.nn.functional.linear))
    args = MRTConfig(output_dir=str(tmp_path_factory.mktemp("out")), vllm_mode="colocate", max_steps=1, **COMMON)
    trainer = MRTTrainer(model=float32_model, args=args, train_dataset=arithmetic_dataset(8, seed=0))
    trainer.built_llms = built
    return trainer


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def boxed_batch(trainer):
    """A handful of prover requests whose success rates are not all 0 or 1: prefixes with and without the work;
    also their prompts and rows."""
    tok = trainer._tokenizer
    problems = [("What is 7 + 5?", "12", "7 + 5 = 12."), ("What is 9 + 8?", "17", "9 + 8 = 17.")]
    prompts, completions, lengths, rows = [], [], [], []
    for problem, gold, work in problems:
        prompts.append(tok.apply_chat_template(format_prompt(problem), add_generation_prompt=True, tokenize=True,
                                               return_dict=False))
        work_ids = tok(work, add_special_tokens=False)["input_ids"]
        completions.append(work_ids)
        lengths.append([0, len(work_ids)])
        rows.append({"answer": gold})
    requests = build_requests(prompts, completions, lengths, trainer.progress_estimator.suffix, tok)
    return requests, prompts, rows


def success_rates(trainer, batch, samples):
    requests, prompts, rows = batch
    rates, _ = sample_success(requests, samples, trainer._tokenizer.decode, trainer.progress_estimator.suffix.text,
                              RewardScorer(make_accuracy_reward("answer")), [""] * len(prompts), prompts, rows, False)
    return rates


def prover_of(trainer):
    return trainer.progress_estimator.prover


@pytest.fixture(scope="module")
def reference(float32_model, tmp_path_factory):
    """The transformers prover on the same model (TRL sets up transformers generation only without vLLM)."""
    args = MRTConfig(output_dir=str(tmp_path_factory.mktemp("ref")), **{**COMMON, "use_vllm": False})
    trainer = MRTTrainer(model=float32_model, args=args, train_dataset=arithmetic_dataset(8, seed=0))
    return TransformersProver.from_trainer(trainer)


# These two run before the training test: the colocated engine still holds the weights it loaded, which are the
# reference model's.
def test_vllm_success_rates_match_the_transformers_prover(colocate, reference):
    trainer, n = colocate, 16
    batch = boxed_batch(trainer)
    requests = batch[0]
    ask = dict(num_samples=n, max_tokens=4, temperature=1.0, stop=["}"])
    by_vllm = success_rates(trainer, batch, prover_of(trainer).generate(requests.prompts, **ask))
    torch.manual_seed(0)
    by_transformers = success_rates(trainer, batch, reference.generate(requests.prompts, **ask))
    assert 0 < sum(by_vllm) < len(by_vllm), f"success rates all 0 or all 1, nothing to compare: {by_vllm}"
    # Two independent means of m Bernoulli draws differ with standard error sqrt(2 p (1-p) / m): per request
    # (m = n) and pooled over the requests (m = n * requests).
    pairs = list(zip(by_vllm, by_transformers)) + [(sum(by_vllm) / len(by_vllm),
                                                     sum(by_transformers) / len(by_transformers))]
    sizes = [n] * len(by_vllm) + [n * len(by_vllm)]
    for (v, t), m in zip(pairs, sizes):
        p = (v + t) / 2
        assert abs(v - t) <= 4 * math.sqrt(2 * p * (1 - p) / m) + 1.5 / m, (by_vllm, by_transformers)


def test_vllm_likelihood_matches_the_transformers_prover(colocate, reference):
    trainer = colocate
    tok = trainer._tokenizer
    requests, _, rows = boxed_batch(trainer)
    answers = [tok(f"{rows[o]['answer']}}}$", add_special_tokens=False)["input_ids"] for o in requests.owner]
    by_vllm = prover_of(trainer).likelihood(requests.prompts, answers)
    by_transformers = reference.likelihood(requests.prompts, answers)
    # vLLM's CPU engine runs the float32 folder in bfloat16 (its default downcast; the engine reports bfloat16), the
    # reference in float32: 0.09 to 0.22 nats apart over these 2-4 tokens here. An answer token read at the wrong
    # position would be several nats off.
    assert by_vllm == pytest.approx(by_transformers, abs=0.35)
    with pytest.raises(ValueError, match="at least one token"):
        prover_of(trainer).likelihood(requests.prompts[:1], [[]])


def test_colocate_trains_with_mu_from_the_trainers_own_engine(colocate):
    trainer = colocate
    assert isinstance(prover_of(trainer), VLLMPolicyProver)
    assert len(trainer.built_llms) == 1, "a second vllm.LLM was built"
    assert prover_of(trainer).llm is trainer.vllm_generation.llm is trainer.built_llms[0]

    llm, calls = trainer.vllm_generation.llm, []
    generate = llm.generate

    def recording_generate(prompts, sampling_params=None, **kwargs):
        calls.append((len(prompts), sampling_params))
        return generate(prompts, sampling_params=sampling_params, **kwargs)

    llm.generate = recording_generate
    try:
        trainer.train()
    finally:
        del llm.generate
    assert len(trainer.built_llms) == 1

    # One engine call for the rollouts (TRL asks n=1 per completion), then ONE for all prover requests (n = samples).
    # TRL sizes the engine's max_num_seqs as per_device_train_batch_size * steps_per_generation: 8 here.
    logs = trainer.state.log_history[0]
    assert len(calls) == 2
    (rollouts, policy_params), (requests, prover_params) = calls
    assert rollouts == 8 and policy_params.n == 1
    # One SamplingParams per request, each with its own seed from the prover's generator (issue 21: one RNG).
    assert requests == logs["mrt/prover_requests"] == len(prover_params)
    assert len({p.seed for p in prover_params}) == requests
    for params in prover_params:
        assert params.n == 4 and params.max_tokens == 4 and params.stop == ["}"]
        assert params.include_stop_str_in_output

    record = trainer.last_progress
    for ends, js in zip(record.ends, record.j_values):
        assert len(js) == len(ends) + 1
        assert all(0.0 <= j <= 1.0 and math.isclose(j * 4, round(j * 4)) for j in js[:-1])
    # The advantages carry the bonus: sequence advantage + alpha * progress of each token's episode.
    adv = record.advantages
    assert adv.shape[0] == 8 and torch.isfinite(adv).all()
    for row, seq, ends, js in zip(adv, record.sequence_advantages, record.ends, record.j_values):
        assert row[0].item() == pytest.approx(seq.item() + (js[1] - js[0]), abs=1e-5)
    assert math.isfinite(logs["loss"])
    assert logs["mrt/prover_requests"] <= logs["mrt/prover_requests_asked"]


# ---------------------------------------------------------------- vllm_mode="server"


@pytest.fixture(scope="module")
def server(float32_model, tmp_path_factory):
    """A real vLLM server on CPU with the dev-mode endpoints TRL's VLLMClient uses, on a free localhost port."""
    args = ["--host", "127.0.0.1", "--enforce-eager", "--gpu-memory-utilization", "0.1", "--max-model-len", "1024",
            "--max-num-seqs", "16", "--logprobs-mode", "processed_logprobs", "--max-logprobs", "-1"]
    served = VLLMServer(float32_model, name=float32_model, args=args, env={"VLLM_SERVER_DEV_MODE": "1"},
                        log_path=tmp_path_factory.mktemp("server") / "server.log")
    try:
        served.start(timeout=480)
        yield f"http://127.0.0.1:{served.port}"
    finally:
        served.stop()


def test_server_mode_trains_with_mu_from_the_trainers_client(server, float32_model, tmp_path, monkeypatch):
    """A whole MRT step in vllm_mode='server' against the real CPU server. TRL's weight push to the server runs on
    vLLM's NCCL weight-transfer engine, which needs CUDA: only that part (init_communicator, sync_weights) is stubbed,
    so the server keeps the initial weights, which are also the trainer's at step 0."""
    from trl.generation.vllm_client import VLLMClient
    from trl.generation.vllm_generation import VLLMGeneration

    monkeypatch.setattr(VLLMClient, "init_communicator", lambda self, device=0: None)
    monkeypatch.setattr(VLLMGeneration, "sync_weights", lambda self: None)
    args = MRTConfig(output_dir=str(tmp_path / "out"), vllm_mode="server", vllm_server_base_url=server,
                     max_steps=1, **COMMON)
    trainer = MRTTrainer(model=float32_model, args=args, train_dataset=arithmetic_dataset(8, seed=0))
    assert isinstance(prover_of(trainer), VLLMPolicyProver)
    client, calls = trainer.vllm_generation.vllm_client, []
    generate = client.generate

    def recording_generate(**kwargs):
        calls.append(kwargs)
        return generate(**kwargs)

    client.generate = recording_generate
    trainer.train()
    logs = trainer.state.log_history[0]
    # The rollouts (2 prompts, n=4), then ONE call for all prover requests with the prover's settings.
    assert len(calls) == 2 and calls[0]["n"] == 4
    prover = calls[1]
    assert len(prover["prompts"]) == logs["mrt/prover_requests"] and prover["n"] == 4
    assert prover["max_tokens"] == 4 and prover["logprobs"] is None
    assert prover["generation_kwargs"]["stop"] == ["}"] and prover["generation_kwargs"]["include_stop_str_in_output"]
    for ends, js in zip(trainer.last_progress.ends, trainer.last_progress.j_values):
        assert len(js) == len(ends) + 1 and all(0.0 <= j <= 1.0 for j in js)
    assert math.isfinite(logs["loss"])


def test_server_mode_gathers_every_ranks_requests_into_one_call(server, tmp_path):
    """2 gloo ranks with unequal requests: one server call on the main process, each rank gets its own share back
    (checked against asking the server for each rank's requests alone, greedily)."""
    from trl.generation.vllm_client import VLLMClient

    script = Path(__file__).with_name("vllm_server_ranks.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(free_port()), str(script), server, str(tmp_path)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    # 2 + 3 requests, one call per generate, on the main process only.
    assert ranks[0]["calls"] == [5, 5] and ranks[1]["calls"] == []
    client = VLLMClient(base_url=server)
    for record in ranks:
        alone = client.generate(prompts=record["requests"], n=1, temperature=0.0, max_tokens=5, logprobs=None)
        expected = [[ids[:ids.index(2)] if 2 in ids else ids] for ids in alone["completion_ids"]]
        assert record["greedy"] == expected
        assert [len(group) for group in record["sampled"]] == [3] * len(record["requests"])
        assert all(1 <= len(s) <= 5 for group in record["sampled"] for s in group)
        assert len(record["logps"]) == len(record["requests"]) and all(v < 0 for v in record["logps"])
        direct = client.get_sequence_logprobs([r + [28, 30] for r in record["requests"]],
                                              [len(r) for r in record["requests"]], top_logprobs=0)
        assert record["logps"] == pytest.approx([sum(lp[0] for lp in row) for row in direct["actual_logprobs"]])
