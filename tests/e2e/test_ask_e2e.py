"""The whole system, every part real: `kb serve` (Litestar, unstructured, sentence-transformers, Qdrant Edge, SQLite,
vLLM) driven through its HTTP API and CLI. Runs once with the in-process engine and once through `vllm serve`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from httpx_sse import connect_sse

from tests.support import start_kb_serve, stop_process_group

pytestmark = pytest.mark.e2e

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "docs"
# Not among the samples; its "Model Zoo" is described on page 2 only.
PAPER = CORPUS / "pdf" / "layout-parser-paper-fast.pdf"
PAPER_QUESTION = "What is in the LayoutParser Model Zoo?"
UNKNOWN_QUESTION = "What is the recipe for the chocolate cake served at the Mars colony canteen?"
SAMPLES = Path(__file__).resolve().parents[2] / "samples"
SAMPLE_QUESTION = "What is the default upload size limit, and what happens to a larger file?"  # the Makefile's


@dataclass
class Server:
    url: str
    data_dir: Path
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def headers(self) -> dict[str, str]:
        """The local admin key `kb serve` wrote into its data directory."""
        return {"Authorization": f"Bearer {(self.data_dir / 'admin.key').read_text().strip()}"}


@pytest.fixture(scope="module", params=["vllm", "openai"], ids=["in-process-engine", "vllm-serve"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not PAPER.exists():
        pytest.fail(f"test corpus missing: {PAPER} (../shared must be beside the checkout)")
    data_dir = tmp_path_factory.mktemp(f"data-{request.param}")
    env = {k: v for k, v in os.environ.items() if k != "OMP_THREAD_LIMIT"}  # see kb.adapters.vllm_engine
    env.update({"KB_DATA_DIR": str(data_dir), "KB_GENERATOR__BACKEND": request.param})
    if request.param == "openai":
        env["KB_GENERATOR__BASE_URL"] = request.getfixturevalue("vllm_server")
        env["KB_GENERATOR__MAX_MODEL_LEN"] = "4096"  # what the vllm_server fixture serves
    # Samples are ingested first through the CLI on the bare data directory, as `make run` does.
    ingest = subprocess.run(
        [sys.executable, "-m", "service.cli", "ingest", str(SAMPLES)], env=env, capture_output=True, text=True, timeout=600
    )
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    if request.param == "vllm":
        # Then one question, as `make run` asks it, with its output redirected as a script would: stdout must be the
        # JSON alone (the engine's log lines go to stderr).
        asked = subprocess.run([sys.executable, "-m", "service.cli", "ask", SAMPLE_QUESTION, "--json"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)  # fmt: skip
        assert asked.returncode == 0, asked.stderr[-3000:]
        answer = json.loads(asked.stdout)
        assert answer["grounded"] is True and answer["citations"], answer
        assert {c["filename"] for c in answer["citations"]} & {p.name for p in SAMPLES.iterdir()}, answer
        if request.param == "vllm":  # exactly `make run`: its sample answer is a measured good case, not luck
            assert "100 MB" in answer["answer"] and "413" in answer["answer"], answer
            assert answer["mode"] == "generate" and answer["unsupported"] == [], answer
            assert {(c["filename"], c["page"]) for c in answer["citations"]} == {("kb-administrator-guide.pdf", 2)}
    log_path = data_dir.parent / f"serve-{request.param}.log"
    process, url = start_kb_serve(env, log_path)
    try:
        yield Server(url, data_dir, env, log_path, process)
    finally:
        stop_process_group(process)
    shutil.rmtree(data_dir, ignore_errors=True)


def _wait_ready(client: httpx.Client, document_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        document = client.get(f"/v1/documents/{document_id}").json()
        if document["status"] in ("ready", "failed"):
            return document
        assert time.monotonic() < deadline, f"still {document['status']} after {timeout}s"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def paper_id(server: Server) -> str:
    with httpx.Client(base_url=server.url, timeout=60, headers=server.headers) as client:
        with PAPER.open("rb") as fh:
            response = client.post("/v1/documents", files={"files": (PAPER.name, fh, "application/pdf")})
        assert response.status_code == 202, response.text
        (document,) = response.json()["documents"]
        assert document["status"] in ("queued", "processing", "ready")
        document = _wait_ready(client, document["document_id"])
    assert document["status"] == "ready", document
    assert document["pages"] == 2 and document["chunks"] > 0
    return document["document_id"]


def test_answer_cites_the_uploaded_document_and_the_right_page(server: Server, paper_id: str) -> None:
    response = httpx.post(headers=server.headers, url=f"{server.url}/v1/ask", json={"question": PAPER_QUESTION}, timeout=300)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"].strip()
    assert body["grounded"] is True
    numbers = {c["n"] for c in body["citations"]}
    for marker in {int(n) for n in __import__("re").findall(r"\[(\d+)\]", body["answer"])}:
        assert marker in numbers, f"[{marker}] in the answer has no citation: {body}"
    cited = [(c["document_id"], c["page"]) for c in body["citations"]]
    assert (paper_id, 2) in cited, body
    assert all(c["filename"] and c["snippet"] for c in body["citations"])


def test_question_outside_the_knowledge_base_says_so_and_cites_nothing(server: Server, paper_id: str) -> None:
    body = httpx.post(headers=server.headers, url=f"{server.url}/v1/ask", json={"question": UNKNOWN_QUESTION}, timeout=300).json()
    assert "no information" in body["answer"].lower()
    assert body["citations"] == []
    assert body["grounded"] is False


def test_streamed_answer_arrives_as_tokens_then_citations_then_done(server: Server, paper_id: str) -> None:
    events: list[tuple[str, dict]] = []
    with httpx.Client(timeout=300, headers=server.headers) as client, connect_sse(
        client, "POST", f"{server.url}/v1/ask", json={"question": PAPER_QUESTION, "stream": True}
    ) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        events.extend((event.event, json.loads(event.data)) for event in source.iter_sse())
    kinds = [name for name, _ in events]
    assert kinds.count("token") >= 2
    assert kinds[-2:] == ["citations", "done"]
    assert set(kinds[:-2]) == {"token"}
    streamed = "".join(data["text"] for name, data in events if name == "token").strip()
    assert streamed
    assert any(c["document_id"] == paper_id and c["page"] == 2 for c in events[-2][1]["citations"])


def test_a_follow_up_in_the_same_conversation(server: Server, paper_id: str) -> None:
    first = httpx.post(headers=server.headers, url=f"{server.url}/v1/ask", json={"question": PAPER_QUESTION}, timeout=300).json()
    conversation_id = first["conversation_id"]
    assert conversation_id
    follow_up = httpx.post(
        f"{server.url}/v1/ask", json={"question": "Tell me more about it.", "conversation_id": conversation_id},
        timeout=300, headers=server.headers,
    ).json()
    assert follow_up["conversation_id"] == conversation_id and follow_up["answer"].strip()
    # "it" alone retrieves nothing; with the conversation the sources of the first turn are kept.
    assert follow_up["grounded"] is True, follow_up
    turns = httpx.get(headers=server.headers, url=f"{server.url}/v1/conversations/{conversation_id}", timeout=30).json()["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[2]["content"] == "Tell me more about it."
    first_sources = [s["chunk_id"] for s in turns[1]["sources"]]
    assert [s["chunk_id"] for s in turns[3]["sources"]][: len(first_sources)] == first_sources


def test_cli_hands_over_to_the_running_server(server: Server, paper_id: str) -> None:
    api = httpx.post(headers=server.headers, url=f"{server.url}/v1/search", json={"query": PAPER_QUESTION, "top_k": 3}, timeout=60).json()
    cli = subprocess.run(
        [sys.executable, "-m", "service.cli", "search", PAPER_QUESTION, "--top-k", "3", "--json"],
        env=server.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert [p["chunk_id"] for p in json.loads(cli.stdout)["passages"]] == [p["chunk_id"] for p in api["passages"]]
    listing = subprocess.run(
        [sys.executable, "-m", "service.cli", "documents", "--json"], env=server.env, capture_output=True, text=True, timeout=300
    )
    assert listing.returncode == 0, listing.stderr
    names = {d["filename"]: d["status"] for d in json.loads(listing.stdout)["documents"]}
    assert names[PAPER.name] == "ready" and len(names) == 4


def test_original_file_can_be_opened_for_a_citation(server: Server, paper_id: str) -> None:
    response = httpx.get(headers=server.headers, url=f"{server.url}/v1/documents/{paper_id}/file", timeout=60)
    assert response.status_code == 200
    assert response.content == PAPER.read_bytes()
    assert response.headers["content-type"].startswith("application/pdf")


def test_the_official_openai_client_asks_the_knowledge_base(server: Server, paper_id: str) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.headers["Authorization"].split()[1])
    assert [m.id for m in client.models.list()] == ["kb"]
    completion = client.chat.completions.create(model="kb", messages=[{"role": "user", "content": PAPER_QUESTION}])
    text = completion.choices[0].message.content or ""
    citations = (completion.model_extra or {})["citations"]
    assert citations and any(c["document_id"] == paper_id and c["page"] == 2 for c in citations)
    # Chat front ends that only show text still see the numbered sources.
    assert f"[{citations[0]['n']}] {PAPER.name}, page {citations[0]['page']}" in text.split("Sources:")[1]
    chunks = list(client.chat.completions.create(model="kb", messages=[{"role": "user", "content": PAPER_QUESTION}],
                                                 stream=True))  # fmt: skip
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Sources:" in streamed and chunks[-1].choices[0].finish_reason == "stop"
    assert any((c.model_extra or {}).get("citations") for c in chunks)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="kb_wrong").models.list()


def test_logs_are_json_lines_with_request_ids_and_no_secrets_or_document_text(server: Server, paper_id: str) -> None:
    marker = "req-e2e-logs-1"
    response = httpx.post(f"{server.url}/v1/search", json={"query": PAPER_QUESTION}, timeout=60,
                          headers={**server.headers, "X-Request-ID": marker})  # fmt: skip
    assert response.headers["x-request-id"] == marker
    passage_text = response.json()["passages"][0]["text"]
    time.sleep(0.5)
    lines = [line for line in server.log.read_text(errors="replace").splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    access = [r for r in records if r.get("event") == "request" and r.get("request_id") == marker]
    assert access and access[0]["status"] == 200 and access[0]["path"] == "/v1/search" and access[0]["key_id"]
    log_text = server.log.read_text(errors="replace")
    assert server.headers["Authorization"].split()[1] not in log_text
    assert passage_text[:60] not in log_text


def test_zz_kill_9_takes_the_engine_core_and_the_parser_with_it(server: Server, paper_id: str) -> None:
    """Last in the module (it ends the server): the in-process engine's EngineCore (GBs) and the parser process are
    children kb did spawn (or vLLM did); killed with SIGKILL, kb runs no cleanup, yet none of them may live on."""
    import psutil

    children = psutil.Process(server.process.pid).children(recursive=True)
    names = " ".join(" ".join(c.cmdline()) for c in children)
    assert "multiprocessing" in names or "spawn" in names, names  # the parser (and EngineCore) are there to kill
    os.kill(server.process.pid, signal.SIGKILL)  # the server alone, not its process group
    server.process.wait(10)
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [(p.pid, " ".join(p.cmdline())[:120]) for p in alive]
