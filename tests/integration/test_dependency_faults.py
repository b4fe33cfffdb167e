"""Dependency faults on real parts: the generator (vLLM's OpenAI protocol over HTTP) refused, silent, slow or
failing; the registry (PostgreSQL, behind a TCP proxy the test stops) and the index (a Qdrant server URL nobody
answers) unreachable. Each request fails within its timeout with a 503/504 problem naming the dependency, /readyz
names it, nothing is half-written, and the service recovers by itself when the dependency is back.

The generator here is a small server speaking the OpenAI streaming protocol (tests.fakes.FakeOpenAIServer), so
that it can be made to fail on cue; the real vLLM server path is covered by tests/e2e."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from httpx_sse import EventSource
from sqlalchemy import create_engine, text

from kb.adapters import openai_http
from kb.settings import GeneratorSettings, IndexSettings, RateLimitSettings, Settings
from service.app import create_app
from tests.fakes import FakeOpenAIServer
from tests.support import free_port

pytestmark = pytest.mark.integration

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
FACT = "The default upload size limit of the knowledge base is 100 MB per file."
QUESTION = "What is the default upload size limit?"
ANSWER = ["The default upload ", "size limit is ", "100 MB per file."]
# Small, so that every failure below is over in seconds; the client's own timeout is far longer, and a request that
# outlived it would fail the test as hung.
REQUEST_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 0.5
CLIENT_TIMEOUT_S = 60.0


# ---------------------------------------------------------------------------------------------------------------
# A TCP proxy in front of PostgreSQL: stopping it is the database going away (connections cut, new ones refused).


class TcpProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # stopped
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        if self._listener is not None:
            try:  # wakes the accepting thread: a plain close would leave the socket listening under it
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


# ---------------------------------------------------------------------------------------------------------------
# The app under uvicorn on loopback, in a thread of its own (its own event loop), with sync clients in the tests.


@contextmanager
def running(settings: Settings) -> Iterator[tuple[httpx.Client, Any]]:
    """(client with the admin key, app) once /healthz answers and the lifespan has finished starting."""
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while not server.started:
            assert thread.is_alive(), "the server stopped while starting"
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        key = settings.admin_key_path.read_text().strip()
        with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S, headers={"Authorization": f"Bearer {key}"}) as client:
            yield client, app
    finally:
        server.should_exit = True
        thread.join(timeout=120)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.3)


def upload(client: httpx.Client, name: str, content: str) -> httpx.Response:
    return client.post("/v1/documents", files=[("files", (name, content.encode(), "text/plain"))])


def wait_ready(client: httpx.Client, document_id: str) -> None:
    def ready() -> bool:
        status = client.get(f"/v1/documents/{document_id}").json()["status"]
        assert status != "failed"
        return status == "ready"

    wait_until(ready, f"document {document_id} ready")


def assert_dependency_problem(response: httpx.Response, dependency: str, statuses: tuple[int, ...] = (503,)) -> dict:
    assert response.status_code in statuses, (response.status_code, response.text)
    assert int(response.headers["retry-after"]) > 0
    if response.request.url.path == "/v1/chat/completions":  # OpenAI's error shape, for its SDKs
        assert response.headers["content-type"] == "application/json", response.text
        error = response.json()["error"]
        assert dependency in error["message"] and error["type"] == "server_error", error
        expected_code = "timeout" if response.status_code == 504 else f"{dependency}_unavailable"
        assert error["code"] == expected_code, error
        # The fields the callers check, where the problem document has them.
        return {"detail": error["message"], "instance": response.request.url.path}
    assert response.headers["content-type"] == "application/problem+json", response.text
    body = response.json()
    assert body["status"] == response.status_code and body["dependency"] == dependency, body
    assert dependency in body["detail"], body
    return body


def sse_events(response: httpx.Response) -> list[tuple[str, str]]:
    """(event, data) of each event of a text/event-stream body, read by httpx-sse as a client would."""
    return [(event.event, event.data) for event in EventSource(response).iter_sse()]


# ---------------------------------------------------------------------------------------------------------------
# Generator faults


@pytest.fixture(scope="module")
def fake_generator() -> Iterator[FakeOpenAIServer]:
    fake = FakeOpenAIServer(deltas=ANSWER, slow_s=REQUEST_TIMEOUT_S * 4)
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def generator_app(
    fake_generator: FakeOpenAIServer, generator_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[httpx.Client, Any]]:
    """kb with the HTTP generator pointed at the fake's port (nothing listens there yet) and one document."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("generator_faults"),
        generator=GeneratorSettings(
            backend="openai", model=str(generator_model_dir), base_url=fake_generator.base_url,
            request_timeout_s=REQUEST_TIMEOUT_S, connect_timeout_s=CONNECT_TIMEOUT_S,
        ),
        rate_limit=RateLimitSettings(enabled=False),
    )  # fmt: skip
    with running(settings) as (client, app):
        wait_until(lambda: app.state.services.answers is not None, "the generator client started")
        response = upload(client, "limits.txt", f"Upload limits\n\n{FACT}\n")
        assert response.status_code == 202, response.text
        wait_ready(client, response.json()["documents"][0]["document_id"])
        yield client, app


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openai_http, "BACKOFF_BASE_S", 0.1)


ASK = {"question": QUESTION}
CHAT = {"model": "kb", "messages": [{"role": "user", "content": QUESTION}]}


def assert_answers(client: httpx.Client) -> None:
    """Every door answers from the generator: /v1/ask as JSON and SSE, /v1/chat/completions as JSON and SSE."""
    asked = client.post("/v1/ask", json=ASK)
    assert asked.status_code == 200, asked.text
    assert "100 MB" in asked.json()["answer"] and asked.json()["grounded"]
    streamed = client.post("/v1/ask", json={**ASK, "stream": True})
    assert streamed.status_code == 200, streamed.text
    events = sse_events(streamed)
    assert [e for e, _ in events if e != "token"] == ["citations", "done"]
    assert "100 MB" in json.loads(events[-1][1])["answer"]
    chat = client.post("/v1/chat/completions", json=CHAT)
    assert chat.status_code == 200 and "100 MB" in chat.json()["choices"][0]["message"]["content"], chat.text
    chat_stream = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert chat_stream.status_code == 200 and sse_events(chat_stream)[-1][1] == "[DONE]", chat_stream.text


@pytest.mark.parametrize(
    ("fault", "status"),
    [("refused", 503), ("hang", 504), ("slow", 504), ("500", 503), ("502", 503)],
)
def test_a_generator_down_or_slow_fails_each_door_with_its_reason_then_recovers_by_itself(
    generator_app: tuple[httpx.Client, Any], fake_generator: FakeOpenAIServer, fault: str, status: int
) -> None:
    client, _ = generator_app
    fake_generator.stop()
    if fault != "refused":
        fake_generator.mode = fault
        fake_generator.start()
    try:
        for path, body in (("/v1/ask", ASK), ("/v1/chat/completions", CHAT)):
            for stream in (False, True):
                # Before any answer text exists, a streamed request fails like a plain one: a problem, not a 200.
                response = client.post(path, json={**body, "stream": stream})
                problem = assert_dependency_problem(response, "generator", (status,))
                assert problem["instance"] == path
        if fault == "refused":
            assert "cannot reach" in problem["detail"] and str(fake_generator.port) in problem["detail"]
        elif status == 504:
            assert "did not answer in time" in problem["detail"]
        else:
            assert fault in problem["detail"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["generator"] != "ok", ready.text
        assert ready.json()["checks"]["registry"] == ready.json()["checks"]["index"] == "ok"
    finally:
        fake_generator.stop()
    # The server comes back, answering: the next questions succeed without a restart of kb.
    fake_generator.mode = "stream"
    fake_generator.start()
    assert_answers(client)
    assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize(("fault", "status"), [("half", 503), ("stall", 504)])
def test_a_generator_failing_mid_answer_ends_the_stream_with_an_error_event(
    generator_app: tuple[httpx.Client, Any], fake_generator: FakeOpenAIServer, fault: str, status: int
) -> None:
    client, _ = generator_app
    fake_generator.stop()
    fake_generator.mode = fault
    fake_generator.start()
    try:
        streamed = client.post("/v1/ask", json={**ASK, "stream": True})
        assert streamed.status_code == 200  # the answer had begun
        events = sse_events(streamed)
        # The first delta, or its start: the repetition guard holds back a trailing space until the next one.
        assert events[0][0] == "token" and json.loads(events[0][1])["text"].strip()
        assert ANSWER[0].startswith(json.loads(events[0][1])["text"])
        assert events[-1][0] == "error" and len(events) == 2, events
        error = json.loads(events[-1][1])
        assert error["status"] == status and error["dependency"] == "generator" and "generator" in error["detail"]

        chat = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert chat.status_code == 200
        data = [json.loads(d) for _, d in sse_events(chat)]
        assert data[1]["choices"][0]["delta"]["content"].strip()
        assert ANSWER[0].startswith(data[1]["choices"][0]["delta"]["content"])
        expected_code = "timeout" if status == 504 else "generator_unavailable"  # as the same failure unstreamed
        assert data[-1]["error"]["code"] == expected_code and "generator" in data[-1]["error"]["message"], data
        assert not any(d.get("choices", [{}])[0].get("finish_reason") == "stop" for d in data[:-1])

        plain = client.post("/v1/ask", json=ASK)  # nothing streamed yet: the whole request fails
        assert_dependency_problem(plain, "generator", (status,))
    finally:
        fake_generator.stop()
    fake_generator.mode = "stream"
    fake_generator.start()
    assert_answers(client)


# ---------------------------------------------------------------------------------------------------------------
# Registry faults (PostgreSQL behind a proxy)


@pytest.fixture
def postgres_schema() -> Iterator[str]:
    """A schema of its own on the test database; its URL's search_path points there."""
    schema = f"kb_faults_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    yield schema
    with admin.begin() as connection:
        connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def blob_files(settings: Settings) -> set[str]:
    return {str(p.relative_to(settings.blob_dir)) for p in settings.blob_dir.rglob("*") if p.is_file()}


def test_registry_unreachable_answers_503_writes_nothing_half_and_recovers(
    postgres_schema: str, tmp_path: Path
) -> None:
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.start()
    settings = Settings(
        data_dir=tmp_path / "data",
        registry_url=f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/test"
        f"?options=-csearch_path%3D{postgres_schema}",
        generator=GeneratorSettings(enabled=False),
        rate_limit=RateLimitSettings(enabled=False),
    )
    try:
        with running(settings) as (client, _):
            first = upload(client, "before.txt", f"Before the outage\n\n{FACT}\n")
            assert first.status_code == 202, first.text
            wait_ready(client, first.json()["documents"][0]["document_id"])
            assert client.get("/readyz").status_code == 200
            blobs_before = blob_files(settings)

            proxy.stop()
            during = [("files", ("during.txt", b"Written during the outage.", "text/plain"))]
            for method, path, kwargs in (
                ("GET", "/v1/documents", {}),
                ("GET", f"/v1/documents/{first.json()['documents'][0]['document_id']}", {}),
                ("POST", "/v1/documents", {"files": during}),
            ):
                response = client.request(method, path, **kwargs)
                problem = assert_dependency_problem(response, "registry")
                assert "registry" in problem["detail"] and "unavailable" in problem["detail"]
            # The upload stored no original without its registry row.
            assert blob_files(settings) == blobs_before
            ready = client.get("/readyz")
            assert ready.status_code == 503, ready.text
            checks = ready.json()["checks"]
            assert checks["registry"].startswith("error") and checks["index"] == "ok"
            assert "generator" not in checks  # an ingest-and-search node has none

            proxy.start()
            wait_until(lambda: client.get("/readyz").status_code == 200, "/readyz 200 once the database is back")
            listed = client.get("/v1/documents")
            assert listed.status_code == 200 and len(listed.json()["documents"]) == 1, listed.text
            after = upload(client, "after.txt", "After the outage\n\nUploads work again.\n")
            assert after.status_code == 202, after.text
            wait_ready(client, after.json()["documents"][0]["document_id"])
            # Every original belongs to a document the registry holds.
            ids = {d["document_id"] for d in client.get("/v1/documents").json()["documents"]}
            assert len(ids) == 2 and {Path(b).name.rsplit("-v", 1)[0] for b in blob_files(settings)} == ids
    finally:
        proxy.stop()


# ---------------------------------------------------------------------------------------------------------------
# Index faults (a Qdrant server URL where nothing listens)


@pytest.mark.parametrize("fault", ["refused", "502"])
def test_index_unreachable_answers_503_naming_the_index(
    fake_generator: FakeOpenAIServer, generator_model_dir: Path, tmp_path: Path, fault: str
) -> None:
    fake_generator.stop()
    fake_generator.mode = "stream"
    fake_generator.start()
    # Nothing listening, or a gateway in front of a Qdrant that is down (502 to everything).
    gateway = FakeOpenAIServer()
    if fault == "502":
        gateway.mode = "502"
        gateway.start()
    settings = Settings(
        data_dir=tmp_path / "data",
        index=IndexSettings(backend="qdrant", url=f"http://127.0.0.1:{gateway.port}"),
        generator=GeneratorSettings(
            backend="openai", model=str(generator_model_dir), base_url=fake_generator.base_url,
            request_timeout_s=REQUEST_TIMEOUT_S, connect_timeout_s=CONNECT_TIMEOUT_S,
        ),
        rate_limit=RateLimitSettings(enabled=False),
    )  # fmt: skip
    with running(settings) as (client, app), contextlib.ExitStack() as cleanup:  # it starts although the index is down
        cleanup.callback(gateway.stop)
        wait_until(lambda: app.state.services.answers is not None, "the generator client started")
        asked_before = len(fake_generator.requests)
        for path, body in (
            ("/v1/search", {"query": QUESTION}),
            ("/v1/ask", ASK),
            ("/v1/ask", {**ASK, "stream": True}),
            ("/v1/chat/completions", {**CHAT, "stream": True}),
        ):
            problem = assert_dependency_problem(client.post(path, json=body), "index")
            assert "the index is unavailable" in problem["detail"]
            if fault == "502":
                assert "502" in problem["detail"]
        ready = client.get("/readyz")
        assert ready.status_code == 503, ready.text
        checks = ready.json()["checks"]
        assert checks["index"].startswith("error") and checks["registry"] == "ok" and checks["generator"] == "ok"
        assert len(fake_generator.requests) == asked_before  # no source: the generator was never asked
