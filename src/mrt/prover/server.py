"""mu = a frozen model on its own vLLM server, reached over the OpenAI-compatible completions API.

Start the server beside training (it must use the policy's tokenizer):

    vllm serve MODEL --enable-prefix-caching --port 8000

Prompts go out as token ids (they already hold the chat template, so nothing adds a second BOS); vLLM's prefix
cache reads the prompt and earlier episodes shared by a completion's prefixes once. Every rank sends its own
requests: there is no collective call, so ranks with different numbers of prefixes cannot deadlock.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import openai
from openai import OpenAI

from mrt.prover.base import check_answers, chunks, cut_at_eos, draw_seeds, own_generator
from mrt.tokens import eos_ids

API_KEY_VARIABLE = "MRT_PROVER_API_KEY"  # the key of a server started with `--api-key KEY`

# Probe text whose token ids must be the same on both sides: words, digits, spaces, blank lines, unicode.
PROBE = "Time is up.\n\nGiven 12 + 345 = 357, wait: \u00e9\u00e8 \u222b x dx, \\boxed{7}.  Hmm\n"


class ProverServerError(RuntimeError):
    """The prover server is down, unreachable, or serves something that does not fit the policy."""


def serve_command(model: str | None, url: str) -> str:
    """The command that starts the prover server the trainer expects at `url`."""
    port = urlsplit(url).port or 8000
    return f"vllm serve {model or 'MODEL'} --enable-prefix-caching --port {port}"


class ServerProver:
    """mu served by `vllm serve` (a frozen model that shares the policy's tokenizer).

    `generate` sends chunks of `requests_per_call` prompts, a few chunks at a time; `likelihood` reads the answer
    tokens' log-probabilities from vLLM's `prompt_logprobs`. Each call has a timeout; the client retries
    connection errors, timeouts and 5xx answers `max_retries` times with exponential backoff, then the prover
    raises a ProverServerError that names the URL and the command to start the server. Each call carries a seed
    drawn from the prover's own generator (seeded once with `seed`; the prompts of one call share it).
    """

    def __init__(self, url: str, tokenizer, model: str | None = None, timeout: float = 600.0, max_retries: int = 3,
                 requests_per_call: int = 64, parallel_calls: int = 4, api_key: str = "EMPTY", seed: int = 0):
        self.url, self.tokenizer = url.rstrip("/"), tokenizer
        self.requests_per_call, self.parallel_calls = max(1, requests_per_call), max(1, parallel_calls)
        self.client = OpenAI(base_url=self.url, api_key=api_key, timeout=timeout, max_retries=max_retries)
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}  # as the server counted them
        self.rng = own_generator(seed)
        self._lock = threading.Lock()
        self.model = model
        self.model = self._served_model(model, timeout=min(timeout, 10.0))
        self._check_tokenizer()

    @classmethod
    def from_fields(cls, fields, tokenizer, seed: int = 0) -> "ServerProver":
        """mu as the shared prover fields describe it (`mrt.fields.ProverFields`: training's MRTConfig, STaR's
        STaRConfig): `prover_server_url`, `prover_model`, `prover_timeout`, `prover_max_retries`, and
        `prover_batch_size` sequences per request. A server started with `--api-key KEY` wants it: set
        MRT_PROVER_API_KEY (no key: any text will do)."""
        return cls(fields.prover_server_url, tokenizer, model=fields.prover_model,
                   timeout=fields.prover_timeout, max_retries=fields.prover_max_retries,
                   requests_per_call=fields.prover_batch_size, api_key=os.environ.get(API_KEY_VARIABLE, "EMPTY"),
                   seed=seed)

    @classmethod
    def from_trainer(cls, trainer) -> "ServerProver":
        return cls.from_fields(trainer.args, trainer._tokenizer, seed=trainer.args.seed)

    # ------------------------------------------------------------------ Prover protocol

    def generate(self, prompts: list[list[int]], num_samples: int, max_tokens: int, temperature: float,
                 stop: list[str] | None, seed: int | None = None) -> list[list[list[int]]]:
        per_call = max(1, self.requests_per_call // num_samples)
        body = {"include_stop_str_in_output": True, "return_token_ids": True, "add_special_tokens": False}
        eos = eos_ids(self.tokenizer)
        # A seed per prompt, drawn up front (the calls run in parallel threads); a call takes its first prompt's.
        items = list(zip(prompts, draw_seeds(self.rng, len(prompts), seed), strict=True))

        def call(part: list[tuple[list[int], int]]) -> list[list[list[int]]]:
            chunk = [p for p, _ in part]
            response = self._call(prompt=chunk, n=num_samples, max_tokens=max_tokens, temperature=temperature,
                                  stop=list(stop) if stop else None, extra_body={**body, "seed": part[0][1]})
            choices = sorted(response.choices, key=lambda c: c.index)
            if len(choices) != len(chunk) * num_samples:
                raise ProverServerError(f"The prover server at {self.url} answered {len(choices)} choices for "
                                        f"{len(chunk)} prompts x n={num_samples}.")
            rows = [cut_at_eos(_extra(c, "token_ids"), eos) for c in choices]
            return [rows[k * num_samples:(k + 1) * num_samples] for k in range(len(chunk))]

        return self._in_chunks(items, per_call, call)

    def likelihood(self, prompts: list[list[int]], answers: list[list[int]]) -> list[float]:
        check_answers(answers)
        items = [([*p, *a], len(a)) for p, a in zip(prompts, answers, strict=True)]

        def call(chunk: list[tuple[list[int], int]]) -> list[float]:
            response = self._call(prompt=[seq for seq, _ in chunk], n=1, max_tokens=1, temperature=1.0,
                                  extra_body={"prompt_logprobs": 0, "return_token_ids": True,
                                              "add_special_tokens": False})
            out = []
            for (seq, size), choice in zip(chunk, sorted(response.choices, key=lambda c: c.index), strict=True):
                positions = _extra(choice, "prompt_logprobs")[-size:]
                out.append(sum(_logprob(entry, tok) for entry, tok in zip(positions, seq[-size:], strict=True)))
            return out

        return self._in_chunks(items, self.requests_per_call, call)

    # ------------------------------------------------------------------ plumbing

    def _in_chunks(self, items: list, per_call: int, call) -> list:
        parts = chunks(items, per_call)
        if not parts:
            return []
        with ThreadPoolExecutor(max_workers=min(self.parallel_calls, len(parts))) as pool:
            return [row for part in pool.map(call, parts) for row in part]

    def _call(self, **kwargs):
        try:
            response = self.client.completions.create(model=self.model, **kwargs)
        except (openai.APIConnectionError, openai.InternalServerError) as exc:  # APITimeoutError is a connection error
            raise self._down(exc) from exc
        except openai.APIStatusError as exc:
            raise ProverServerError(f"The prover server at {self.url} refused a request ({exc.status_code}): "
                                    f"{_message(exc)}") from exc
        with self._lock:
            self.usage["requests"] += 1
            if response.usage is not None:
                self.usage["prompt_tokens"] += response.usage.prompt_tokens
                self.usage["completion_tokens"] += response.usage.completion_tokens
        return response

    def _down(self, exc: Exception) -> ProverServerError:
        return ProverServerError(
            f"The prover server at {self.url} is not answering ({type(exc).__name__}: {exc}; after "
            f"{self.client.max_retries} retries). Start it with: {serve_command(self.model, self.url)} "
            "(prover_server_url, prover_timeout and prover_max_retries configure the client)."
        )

    def _served_model(self, wanted: str | None, timeout: float) -> str:
        """Health check: the server answers, and serves `wanted` (or exactly one model when `wanted` is None)."""
        try:
            served = [m.id for m in self.client.with_options(timeout=timeout).models.list()]
        except (openai.APIConnectionError, openai.APIStatusError) as exc:
            raise self._down(exc) from exc
        if wanted is None:
            if len(served) != 1:
                raise ProverServerError(f"The prover server at {self.url} serves {served}: set prover_model to "
                                        "one of them.")
            return served[0]
        if wanted not in served:
            raise ValueError(f"MRTConfig.prover_model = {wanted!r} is invalid: the server at {self.url} serves "
                             f"{served}.")
        return wanted

    def _check_tokenizer(self) -> None:
        """mu must read the policy's token ids: compare vLLM's /tokenize of a probe text with the local ids."""
        text = PROBE + "".join(t for t in (self.tokenizer.eos_token, self.tokenizer.bos_token) if t)
        local = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        root = self.url[:-len("/v1")] if self.url.endswith("/v1") else self.url
        try:
            answer = self.client.post(f"{root}/tokenize", cast_to=object,
                                      body={"model": self.model, "prompt": text, "add_special_tokens": False})
        except (openai.APIConnectionError, openai.APIStatusError) as exc:
            raise self._down(exc) from exc
        remote = answer.get("tokens") if isinstance(answer, dict) else None
        if remote != local:
            raise ProverServerError(
                f"The prover server at {self.url} serves {self.model!r}, whose tokenizer does not match the "
                f"policy's ({self.tokenizer.name_or_path}): {text!r} is {remote} there and {local} here. The "
                "prover reads the policy's token ids, so mu must use the same tokenizer."
            )


def _extra(choice, name: str):
    """A vLLM field the OpenAI types do not declare (kept by pydantic as an extra attribute)."""
    value = getattr(choice, name, None)
    if value is None:
        value = (choice.model_extra or {}).get(name)
    if value is None:
        raise ProverServerError(f"The prover server's answer has no {name!r}: it needs vLLM >= 0.10.2.")
    return value


def _logprob(entry: dict, token: int) -> float:
    value = entry[str(token)] if str(token) in entry else entry[token]
    return value["logprob"] if isinstance(value, dict) else value


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        body = body.get("message") or body.get("error") or body
    return str(body)[:500]
