"""Shared fixtures for integration tests: the converted default generator model and a vLLM OpenAI server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kb.model_store import ensure_smollm2
from kb.settings import GeneratorSettings

SERVER_START_TIMEOUT_S = 300.0
SERVER_MAX_MODEL_LEN = 4096


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs real models/engines (slow)")


@pytest.fixture(scope="session")
def generator_model_dir() -> Path:
    models_dir = Path(os.environ.get("KB_MODELS_DIR") or Path.home() / ".cache" / "kb" / "models")
    return ensure_smollm2(models_dir)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(log_path: Path, lines: int = 40) -> str:
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def vllm_server(generator_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A vLLM OpenAI-compatible server serving the default generator; yields its base_url (…/v1)."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("vllm_server") / "server.log"
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }
    # The `vllm` console script is broken under vllm-cpu (it looks up metadata of a package named `vllm`).
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(generator_model_dir),
        "--served-model-name", GeneratorSettings().served_model_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "bfloat16", "--max-model-len", str(SERVER_MAX_MODEL_LEN), "--enforce-eager",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        # Own session: teardown can signal the server together with the EngineCore process it spawns.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_healthy(process, f"http://127.0.0.1:{port}/health", log_path)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        _stop(process)


def _wait_healthy(process: subprocess.Popen[bytes], health_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"vLLM server exited with {process.returncode}:\n{_log_tail(log_path)}")
        try:
            if httpx.get(health_url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"vLLM server not healthy after {SERVER_START_TIMEOUT_S:.0f}s:\n{_log_tail(log_path)}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    # Whatever of the group outlived the server (e.g. its EngineCore) goes too.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)
