"""The fakes of the unit tests, one of each, shared: stand-ins for the ports of kb.ports (and the retrieval service
above two of them), plus a loopback server that speaks vLLM's OpenAI protocol and misbehaves on cue.

Each does the least that shows a test what the code under test did: canned answers, every call recorded. They are
deterministic and need no model. Contract and integration tests run the real adapters instead; the conversation
store and the event log here are held to the registry's contracts (tests/contract/test_registry.py), so they cannot
drift."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import socket
import threading
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kb.models import Chunk, Passage, SearchFilter
from kb.ports import SearchMode
from kb.text import HAN_RANGES
from tests.support import free_port

_WORD_OR_HAN = re.compile(f"[{HAN_RANGES}]|[^\\s{HAN_RANGES}]+")


class WordTokens:
    """A tokenizer of one token per word or Han character: enough to size chunks without a model (ingest.chunk
    measures with `token_spans`)."""

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _WORD_OR_HAN.finditer(text)]

    def count_tokens(self, text: str) -> int:
        return len(self.token_spans(text))


# ---------------------------------------------------------------------------------------------------------------
# Embedder


Vector = Callable[[int, int, str], list[float]]


def word_overlap(dimension: int = 256) -> Vector:
    """A `vector` for FakeEmbedder that scores by word overlap: each lowercased word counted on an axis of its own
    (crc32, so the same in every run), normalised; texts that share words are similar, texts that share none are
    orthogonal up to hash collisions."""

    def vector(_call: int, _position: int, text: str) -> list[float]:
        counts = [0.0] * dimension
        for word in re.findall(r"\w+", text.lower()):
            counts[zlib.crc32(word.encode()) % dimension] += 1.0
        norm = math.sqrt(sum(c * c for c in counts)) or 1.0
        return [c / norm for c in counts]

    return vector


class FakeEmbedder:
    """The Embedder port: one token per whitespace-separated word, and by default the same unit vector for every
    text. `vector(call, position, text)` gives another: `call` numbers the embed_documents batches from 1 (0 for a
    query), `position` is the text's place in its batch, so a test can tell which vector went where."""

    def __init__(self, dimension: int = 2, max_tokens: int = 256, vector: Vector | None = None) -> None:
        self._dimension, self._max_tokens = dimension, max_tokens
        self._vector = vector or (lambda _call, _position, _text: [1.0] + [0.0] * (dimension - 1))
        self.calls: list[list[str]] = []  # each embed_documents batch
        self.queries: list[str] = []

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        return [self._vector(len(self.calls), i, text) for i, text in enumerate(texts)]

    def embed_query(self, text: str) -> list[float]:
        self.queries.append(text)
        return self._vector(0, 0, text)


# ---------------------------------------------------------------------------------------------------------------
# Vector index and retrieval


def inside(passage: Passage, search_filter: SearchFilter | None) -> bool:
    """Whether `passage` passes the filter's document and group conditions (the ones unit tests use)."""
    if search_filter is None:
        return True
    if search_filter.document_ids is not None and passage.document_id not in search_filter.document_ids:
        return False
    return passage.visible_to(search_filter.groups)


class FakeIndex:
    """The VectorIndex port in memory. `passages` are the live chunks, and a search returns them in that order (a
    canned ranking: neither the vector nor the text is scored), inside the filter, as copies; every call is recorded
    in `calls` as (method, ...)."""

    def __init__(self, passages: Sequence[Passage] = ()) -> None:
        self.passages = list(passages)
        self.staged: list[tuple[Chunk, Passage]] = []
        self.calls: list[tuple[Any, ...]] = []

    def upsert(
        self,
        chunks: Sequence[Chunk],
        vectors: Sequence[Sequence[float]],
        sentence_vectors: Sequence[Sequence[Sequence[float]]] | None = None,
    ) -> None:
        self.calls.append(("upsert", [c.chunk_id for c in chunks]))
        for chunk in chunks:
            passage = Passage.from_payload(chunk.payload(), 0.0)
            if chunk.staged:
                self.staged.append((chunk, passage))
            else:
                self.passages = [p for p in self.passages if p.chunk_id != chunk.chunk_id] + [passage]

    def delete_document(self, document_id: str) -> None:
        self.calls.append(("delete_document", document_id))
        self.passages = [p for p in self.passages if p.document_id != document_id]
        self.discard_staged(document_id)

    def discard_staged(self, document_id: str) -> None:
        self.staged = [(c, p) for c, p in self.staged if c.document_id != document_id]

    def publish(self, document_id: str, version: int) -> None:
        self.calls.append(("publish", document_id, version))
        published = [p for c, p in self.staged if c.document_id == document_id and c.version == version]
        self.passages = [p for p in self.passages if p.document_id != document_id] + published
        self.discard_staged(document_id)

    def search(
        self,
        vector: Sequence[float],
        text: str,
        limit: int,
        filter: SearchFilter | None = None,
        mode: SearchMode = "hybrid",
    ) -> list[Passage]:
        self.calls.append(("search", limit, mode))
        return [dataclasses.replace(p) for p in self.passages if inside(p, filter)][:limit]

    def neighbours(self, passage: Passage, radius: int, filter: SearchFilter | None = None) -> list[Passage]:
        self.calls.append(("neighbours", passage.chunk_id, radius, filter))
        low, high = passage.ordinal - radius, passage.ordinal + radius
        return [
            p
            for p in self.passages
            if p.document_id == passage.document_id and low <= p.ordinal <= high and inside(p, filter)
        ]

    def document_chunks(self, document_id: str, filter: SearchFilter | None = None, limit: int = 1000) -> list[Passage]:
        self.calls.append(("document_chunks", document_id, filter, limit))
        chunks = [p for p in self.passages if p.document_id == document_id and inside(p, filter)]
        return sorted(chunks, key=lambda p: p.ordinal)[:limit]

    def count(self, filter: SearchFilter | None = None) -> int:
        return sum(inside(p, filter) for p in self.passages)

    def close(self) -> None:
        pass


class FakeRetrieval:
    """The retrieval service (service.search.service.RetrievalService) with canned hits: each search returns
    `hits`, or with `rounds` the next list of them, inside the search's filter, cut at top_k (5, the default
    top_k, when none is given); relevant when `relevant` and something was found. `documents` are the whole
    documents that document_chunks serves, as lists of chunks. Every search is recorded in `searches`."""

    def __init__(
        self,
        hits: Sequence[Passage] = (),
        *,
        relevant: bool = True,
        documents: dict[str, list[Passage]] | None = None,
        rounds: Sequence[Sequence[Passage]] | None = None,
    ) -> None:
        self.hits, self.relevant, self.documents = list(hits), relevant, documents or {}
        self.rounds = [list(r) for r in rounds] if rounds is not None else None
        self.searches: list[tuple[str, SearchFilter | None, int | None]] = []

    @property
    def queries(self) -> list[str]:
        return [query for query, _, _ in self.searches]

    async def search(self, query: str, top_k: int | None = None, filter: SearchFilter | None = None, **_: Any) -> Any:
        from service.search.service import RetrievalResult

        self.searches.append((query, filter, top_k))
        hits = self.rounds.pop(0) if self.rounds is not None else self.hits
        found = [p for p in hits if inside(p, filter)][: top_k or 5]
        relevant = self.relevant and bool(found)
        return RetrievalResult(found, relevant, 0.8 if relevant else 0.1, 1.0, 1.0)

    def document_chunks(self, document_id: str, filter: SearchFilter | None = None, limit: int = 1000) -> list[Passage]:
        return [p for p in self.documents.get(document_id, []) if inside(p, filter)][:limit]


# ---------------------------------------------------------------------------------------------------------------
# Generator


class FakeGenerator:
    """The Generator port: streams a scripted answer, and counts one token per whitespace-separated word.

    `answer`: a string is streamed a word at a time (each delta the word and a space); a list is the deltas as they
    are. With a `separator`, count_tokens_many adds `separator_tokens` per text for the separator around it: the
    estimate the answering service uses for a generator without a batched counter, so packing budgets come out the
    same either way. `messages` is the last request's prompt; `requests` every (messages, max_tokens)."""

    def __init__(
        self, answer: str | Sequence[str] = "An answer.", max_model_len: int = 4096, separator_tokens: int = 2
    ) -> None:
        self.deltas = [word + " " for word in answer.split(" ")] if isinstance(answer, str) else list(answer)
        self._max_model_len, self.separator_tokens = max_model_len, separator_tokens
        self.messages: list[dict[str, str]] = []
        self.requests: list[tuple[list[dict[str, str]], int | None]] = []
        self.json_schemas: list[dict[str, Any] | None] = []  # each request's schema (a structured answer's)
        self.sessions: list[str | None] = []  # each request's conversation (Generator.stream's `session`)
        self.started = self.closed = False

    async def start(self) -> None:
        self.started = True

    async def stream(
        self, messages: Sequence[dict[str, str]], max_tokens: int | None = None, *,
        json_schema: dict[str, Any] | None = None, session: str | None = None,
    ) -> AsyncIterator[str]:  # fmt: skip
        self.messages = list(messages)
        self.requests.append((self.messages, max_tokens))
        self.json_schemas.append(json_schema)
        self.sessions.append(session)
        for delta in self.deltas:
            yield delta

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def count_tokens_many(self, texts: Sequence[str], separator: str | None = None) -> list[int]:
        extra = self.separator_tokens if separator is not None else 0
        return [self.count_tokens(text) + extra for text in texts]

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def prompt(self) -> str:
        """The last request's user message (the sources and the question)."""
        return self.messages[1]["content"] if len(self.messages) > 1 else ""

    async def ready(self) -> bool:
        return not self.closed

    async def close(self) -> None:
        self.closed = True


# ---------------------------------------------------------------------------------------------------------------
# Registry: the conversation store and the event log


class FakeConversations:
    """The ConversationStore port in memory, with the registry's semantics (last `limit` messages oldest first; a
    conversation belongs to whoever claimed it first)."""

    def __init__(self) -> None:
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self.owners: dict[str, str] = {}
        self._claimed_at: dict[str, datetime] = {}
        self._lock = threading.Lock()
        self._order = itertools.count()

    def add_message(
        self, conversation_id: str, role: str, content: str, sources: list[dict[str, Any]] | None = None,
        owner: str | None = None,
    ) -> bool:
        message = {"role": role, "content": content, "sources": list(sources or [])}
        message |= {"_at": datetime.now(UTC), "_order": next(self._order)}  # for list_conversations
        with self._lock:
            if owner is not None and self.owners.get(conversation_id) != owner:
                return False
            self.messages.setdefault(conversation_id, []).append(message)
            return True

    def conversation(self, conversation_id: str, limit: int = 20, sources: str = "all") -> list[dict[str, Any]]:
        messages = self.messages.get(conversation_id, [])[-limit:] if limit > 0 else []
        answers = [m for m in messages if m["role"] == "assistant"]
        last = answers[-1] if answers else None
        return [
            {"role": m["role"], "content": m["content"],
             "sources": list(m["sources"]) if sources == "all" or m is last else []}
            for m in messages
        ]  # fmt: skip

    def claim_conversation(self, conversation_id: str, owner: str) -> bool:
        with self._lock:
            if conversation_id not in self.owners and self.messages.get(conversation_id):
                return False  # messages nobody owns (a Slack thread's)
            self._claimed_at.setdefault(conversation_id, datetime.now(UTC))
            return self.owners.setdefault(conversation_id, owner) == owner

    def conversation_owner(self, conversation_id: str) -> str | None:
        return self.owners.get(conversation_id)

    def list_conversations(self, owner: str, limit: int = 50) -> list[dict[str, Any]]:
        mine = [c for c, o in self.owners.items() if o == owner and self.messages.get(c)]
        mine.sort(key=lambda c: self.messages[c][-1]["_order"], reverse=True)
        out = []
        for conversation_id in mine[: max(0, limit)]:
            messages = self.messages[conversation_id]
            questions = [m["content"] for m in messages if m["role"] == "user"]
            title = " ".join((questions[0] if questions else "").split())
            out.append({
                "conversation_id": conversation_id,
                "title": title if len(title) <= 80 else title[:79].rstrip() + "…",
                "updated_at": messages[-1]["_at"],
                "turns": len(questions),
            })  # fmt: skip
        return out

    def delete_conversation(self, conversation_id: str, owner: str) -> bool:
        with self._lock:
            if self.owners.get(conversation_id) != owner:
                return False
            del self.owners[conversation_id]
            self.messages.pop(conversation_id, None)
            return True

    def forget_conversations(self, before: datetime) -> int:
        with self._lock:
            last = {c: m[-1]["_at"] for c, m in self.messages.items() if m}
            stale = {c for c in {*self.messages, *self.owners} if last.get(c, self._claimed_at.get(c, before)) < before}
            for conversation_id in stale:
                self.messages.pop(conversation_id, None)
                self.owners.pop(conversation_id, None)
                self._claimed_at.pop(conversation_id, None)
            return len(stale)


class FakeEventLog:
    """The EventLog port in memory, with the registry's semantics (an id is claimed once, until forgotten); held to
    the registry's event-log contract (tests/contract/test_registry.py)."""

    def __init__(self) -> None:
        self.claimed: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def claim_event(self, event_id: str) -> bool:
        with self._lock:
            if event_id in self.claimed:
                return False
            self.claimed[event_id] = datetime.now(UTC)
            return True

    def forget_events(self, before: datetime) -> int:
        before = before if before.tzinfo else before.replace(tzinfo=UTC)
        with self._lock:
            old = [event_id for event_id, at in self.claimed.items() if at < before]
            for event_id in old:
                del self.claimed[event_id]
            return len(old)


# ---------------------------------------------------------------------------------------------------------------
# A generator server on loopback


Plan = Callable[[int], str]


def sse_delta(text: str) -> bytes:
    """One server-sent event of an OpenAI chat-completions stream carrying `text`."""
    payload = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


class FakeOpenAIServer:
    """A server on 127.0.0.1 speaking the OpenAI chat-completions streaming protocol as a vLLM server does, told how
    to fail the way one does while it restarts or is overloaded.

    `plan(n)` says what to do with the n-th chat request (1-based): "stream" (the `deltas`, then [DONE]), "half" (one
    delta, then drop the connection), "stall" (one delta, then silence), "drop" (close the connection without an
    answer), "hang" (say nothing), "slow" (a 500, `slow_s` later), or an HTTP status to answer with ("503").
    Setting `mode` plans the same for every request. GET …/models (what a readiness probe reads) answers the model
    list while the next request would stream, the status when it would get one, nothing while it would hang or be
    slow, and 503 otherwise. Whatever waits ends at stop(); the server can start again on the same port."""

    def __init__(
        self,
        plan: Plan | str = "stream",
        *,
        deltas: Sequence[str] = ("Hello", ", wor", "ld!"),
        port: int | None = None,
        slow_s: float = 8.0,
        hang_s: float = 30.0,
    ) -> None:
        self.plan: Plan = (lambda _n: plan) if isinstance(plan, str) else plan
        self.deltas, self.slow_s, self.hang_s = list(deltas), slow_s, hang_s
        self.port = port or free_port()
        self.requests: list[dict[str, Any]] = []  # the chat requests' bodies
        self._release = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def mode(self) -> str:
        return self.plan(len(self.requests) + 1)

    @mode.setter
    def mode(self, mode: str) -> None:
        self.plan = lambda _n: mode

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass  # no access line per request in the test output

            def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _drop(self) -> None:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                mode = server.mode
                if mode == "stream":
                    self._send(200, json.dumps({"object": "list", "data": [{"id": "kb-generator"}]}).encode())
                elif mode in ("hang", "slow"):
                    server._release.wait(server.hang_s)
                elif mode.isdigit():
                    self._send(int(mode), json.dumps({"error": f"status {mode}"}).encode())
                else:
                    self._send(503, b'{"error": "down"}')

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers["content-length"]))
                try:
                    body = json.loads(raw)
                except ValueError:  # not a chat request (a gateway in front of something else gets anything)
                    body = {"raw": raw.decode(errors="replace")}
                server.requests.append(body)
                action = server.plan(len(server.requests))
                if action == "drop":
                    self._drop()
                    return
                if action == "hang":
                    server._release.wait(server.hang_s)
                    return
                if action == "slow":
                    server._release.wait(server.slow_s)
                    self._send(500, b'{"error": {"message": "too late"}}')
                    return
                if action.isdigit():
                    self._send(int(action), json.dumps({"error": {"message": f"status {action}"}}).encode())
                    return
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                for delta in server.deltas[:1] if action in ("half", "stall") else server.deltas:
                    self.wfile.write(sse_delta(delta))
                    self.wfile.flush()
                if action == "half":
                    self._drop()
                    return
                if action == "stall":
                    server._release.wait(server.hang_s)
                    return
                self.wfile.write(b"data: [DONE]\n\n")
                self.close_connection = True

        self._release.clear()
        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # a burst of connections, as a vLLM server takes them (the default is 5)

        self._httpd = Server(("127.0.0.1", self.port), Handler)  # allow_reuse_address: restartable
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
