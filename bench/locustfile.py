"""Realistic kb users for Locust: search, ask streamed over SSE (read to the end), follow-ups in the same
conversation, uploads of small text files, document lists.

    locust -f bench/locustfile.py --headless -u 50 -r 10 -t 60s --host http://127.0.0.1:8000

Keys: KB_LOAD_KEYS (comma-separated; user n takes key n modulo their number, so that each key's rate limit sees one
user's pace) or KB_LOAD_KEY. `python -m bench.load` starts a fresh `kb serve`, creates the keys and runs this.
KB_LOAD_STATUS_FILE: where to write each request type's count per HTTP status when Locust quits.

Streamed asks are recorded twice: "/v1/ask stream (headers)" is the time to the response headers, which kb sends
with the first answer token (retrieval done, the request through vLLM's queue and prefill); "/v1/ask stream (done)"
is the time to the last event.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
import uuid
from collections import Counter
from typing import Any

from locust import HttpUser, between, events, task

QUESTIONS = [
    "What is the default upload size limit, and what happens to a larger file?",
    "How long are originals kept?",
    "When is the data directory backed up?",
    "Which alert fires when answers are slow?",
    "Who owns the generator component?",
    "工作日值班时间是什么时候？",
]
FOLLOW_UPS = ["And for PDFs?", "Who do I ask about it?", "Tell me more."]
QUERIES = ["upload size limit", "backup schedule", "alert slow answers", "generator owner", "值班时间", "retention"]
KEYS = [k for k in os.environ.get("KB_LOAD_KEYS", os.environ.get("KB_LOAD_KEY", "")).split(",") if k]
ASK_TIMEOUT_S = 600
STATUSES: Counter[str] = Counter()
_next_user = itertools.count()


@events.request.add_listener
def _count_status(name: str, response: Any, exception: BaseException | None, **_: Any) -> None:
    status = getattr(response, "status_code", None) if response is not None else None
    STATUSES[f"{name} {status if status else type(exception).__name__ if exception else 'none'}"] += 1


@events.quitting.add_listener
def _write_statuses(**_: Any) -> None:
    path = os.environ.get("KB_LOAD_STATUS_FILE")
    if path:
        with open(path, "w") as fh:
            json.dump(dict(sorted(STATUSES.items())), fh, indent=1)


class KbUser(HttpUser):
    wait_time = between(1, 5)

    def on_start(self) -> None:
        if KEYS:
            self.client.headers["Authorization"] = f"Bearer {KEYS[next(_next_user) % len(KEYS)]}"
        self.conversation_id: str | None = None

    @task(5)
    def search(self) -> None:
        self.client.post("/v1/search", json={"query": random.choice(QUERIES), "top_k": 5}, name="/v1/search")

    @task(2)
    def list_documents(self) -> None:
        self.client.get("/v1/documents", name="/v1/documents")

    @task(3)
    def ask(self) -> None:
        done = self._ask_stream(random.choice(QUESTIONS), None)
        self.conversation_id = done.get("conversation_id") if done else None

    @task(2)
    def follow_up(self) -> None:
        if self.conversation_id is None:
            return self.ask()
        self._ask_stream(random.choice(FOLLOW_UPS), self.conversation_id)

    @task(1)
    def upload(self) -> None:
        note = f"Load test note {uuid.uuid4().hex}: the canteen opens at {random.randint(6, 10)} am on weekdays.\n"
        self.client.post("/v1/documents", files=[("files", (f"note-{uuid.uuid4().hex[:8]}.txt", note.encode(),
                                                             "text/plain"))], name="/v1/documents upload")  # fmt: skip

    def _ask_stream(self, question: str, conversation_id: str | None) -> dict[str, Any] | None:
        body: dict[str, Any] = {"question": question, "stream": True}
        if conversation_id:
            body["conversation_id"] = conversation_id
        name = "/v1/ask stream follow-up" if conversation_id else "/v1/ask stream"
        started = time.perf_counter()
        done: dict[str, Any] | None = None
        failure: Exception | None = None
        with self.client.post("/v1/ask", json=body, stream=True, timeout=ASK_TIMEOUT_S, name=f"{name} (headers)",
                              catch_response=True) as response:  # fmt: skip
            if response.status_code != 200:
                # Status 0: no HTTP answer at all (the connection failed or was closed): say how.
                response.failure(f"{response.status_code}: {response.error!r} {(response.text or '')[:200]}")
                return None
            event = None
            try:
                for line in response.iter_lines(decode_unicode=True):
                    if line.startswith("event:"):
                        event = line[len("event:"):].strip()
                    elif line.startswith("data:") and event in ("done", "error"):
                        data = json.loads(line[len("data:"):])
                        if event == "error":
                            failure = RuntimeError(f"error event: {data.get('detail')}")
                        else:
                            done = data
                if done is None and failure is None:
                    failure = RuntimeError("the stream ended without a done event")
            except Exception as exc:  # the connection broke mid-answer
                failure = exc
            response.success()
        events.request.fire(
            request_type="POST", name=f"{name} (done)", response_time=(time.perf_counter() - started) * 1000,
            response_length=0, response=None, context={}, exception=failure,
        )  # fmt: skip
        return done
