"""Shared fixtures: the converted default generator model, the in-process engine and a vLLM OpenAI-compatible
server (each started once for the session: a start of vLLM on a CPU takes a minute)."""

from __future__ import annotations

import os

# Nothing may be fetched from a hub at run time, in tests least of all.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")

import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import AsyncIterator, Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import pytest  # noqa: E402
import pytest_asyncio  # noqa: E402

from kb.adapters.vllm_engine import VllmEngineGenerator  # noqa: E402
from kb.model_store import ensure_smollm2  # noqa: E402
from kb.ports import Embedder  # noqa: E402
from kb.settings import EmbedderSettings, GeneratorSettings, Settings  # noqa: E402
from tests.support import free_port, log_tail, stop_process_group  # noqa: E402

# The longest modules first (the full run's slowest, measured): `make test` runs modules on two workers
# (pytest-xdist, --dist loadfile --no-loadscope-reorder: modules handed out in collection order, not by their number
# of tests, which put the one-test crash-safety module last), and a long one collected late runs alone at the end
# while the other worker idles.
LONGEST_FIRST = ("test_crash_safety.py", "test_corpus.py", "test_cli_doors.py", "test_ask_e2e.py",
                 "test_generator_fallback.py", "test_access_control.py", "test_ingest_worker.py", "test_scale_out.py",
                 "test_cli_ingest.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: every module keeps its own order


SERVER_START_TIMEOUT_S = 300.0
SERVER_MAX_MODEL_LEN = 4096


@pytest.fixture(scope="session")
def generator_model_dir() -> Path:
    models_dir = Path(os.environ.get("KB_MODELS_DIR") or Path.home() / ".cache" / "kb" / "models")
    return ensure_smollm2(models_dir)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def vllm_engine(generator_model_dir: Path) -> AsyncIterator[VllmEngineGenerator]:
    """The in-process engine with the default settings. Its requests run on the session's event loop: a test that
    uses it runs there too (`@pytest.mark.asyncio(loop_scope="session")`)."""
    generator = VllmEngineGenerator(GeneratorSettings(), generator_model_dir)
    started = time.perf_counter()
    await generator.start()
    print(f"\nin-process engine start: {time.perf_counter() - started:.1f}s")
    yield generator
    await generator.close()
    assert not await generator.ready()


@pytest.fixture(scope="session")
def embedder_on() -> Callable[[str], Embedder]:
    """The default embedding model on a backend ("torch", "onnx" or "onnx-int8"), built through the container once
    per session: loading it takes seconds, and the first ONNX export far longer (then it is kept in the models
    directory, as in production)."""
    from kb.container import build_embedder

    built: dict[str, Embedder] = {}

    def on(backend: str) -> Embedder:
        if backend not in built:
            settings = Settings(embedder=EmbedderSettings(backend=backend))  # type: ignore[arg-type]
            built[backend] = build_embedder(settings)
        return built[backend]

    return on


@pytest.fixture(scope="session")
def vllm_server(generator_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A vLLM OpenAI-compatible server serving the default generator; yields its base_url (…/v1)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm_server") / "server.log"
    env = {
        # Not OMP_THREAD_LIMIT: unstructured's OCR module sets it to 1 in this process, and vLLM then generates nothing.
        **{k: v for k, v in os.environ.items() if k != "OMP_THREAD_LIMIT"},
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
        stop_process_group(process)


def _wait_healthy(process: subprocess.Popen[bytes], health_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"vLLM server exited with {process.returncode}:\n{log_tail(log_path)}")
        try:
            if httpx.get(health_url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"vLLM server not healthy after {SERVER_START_TIMEOUT_S:.0f}s:\n{log_tail(log_path)}")
