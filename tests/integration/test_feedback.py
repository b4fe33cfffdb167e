"""Feedback on answers through the API, on the real app (SQLite, Qdrant Edge, MiniLM; no generator): readers with the
ask scope rate answers; administrators read them back newest first, by rating and page, each only within its own
groups; the web page's session marks its feedback as the page's. (Feedback on an answer of a conversation, which
needs answers: tests/integration/test_conversation_list.py; the store on SQLite and PostgreSQL:
tests/contract/test_registry.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from litestar.testing import TestClient

from kb.settings import GeneratorSettings, RateLimitSettings, Settings
from service.app import create_app
from tests.support import bearer

pytestmark = pytest.mark.integration

KB_REQUEST = {"X-KB-Request": "1"}
CITATIONS = [
    {"n": 1, "document_id": "0123456789abcdef", "filename": "运维手册.pdf", "page": 2, "snippet": "每晚 02:00"}
]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("feedback"), generator=GeneratorSettings(enabled=False),
                    rate_limit=RateLimitSettings(enabled=False))  # fmt: skip


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(app=create_app(settings), timeout=120) as test_client:
        yield test_client


def new_key(client: TestClient, settings: Settings, scopes: list[str], groups: list[str]) -> tuple[str, str]:
    admin = settings.admin_key_path.read_text().strip()
    created = client.post("/v1/keys", json={"name": "t", "scopes": scopes, "groups": groups}, headers=bearer(admin))
    assert created.status_code == 201, created.text
    return created.json()["key"], created.json()["key_id"]


def give(client: TestClient, key: str, **body: object) -> dict:
    values = {"rating": "down", "question": "When do backups run?", "answer": "Nightly at 02:00 [1].", **body}
    given = client.post("/v1/feedback", json=values, headers=bearer(key))
    assert given.status_code == 201, given.text
    return given.json()


def test_a_reader_rates_an_answer_and_an_administrator_reads_it_back(client: TestClient, settings: Settings) -> None:
    reader, reader_id = new_key(client, settings, ["ask"], ["eng"])
    before = datetime.now(UTC) - timedelta(seconds=1)
    given = give(client, reader, comment="Backups moved to 03:00 in March.", citations=CITATIONS)
    assert set(given) == {"feedback_id", "created_at"}
    created = datetime.fromisoformat(given["created_at"])
    assert created.utcoffset() == timedelta(0) and before <= created <= datetime.now(UTC) + timedelta(seconds=1)

    admin = settings.admin_key_path.read_text().strip()
    listed = client.get("/v1/feedback", headers=bearer(admin))
    assert listed.status_code == 200, listed.text
    record = next(f for f in listed.json()["feedback"] if f["feedback_id"] == given["feedback_id"])
    assert record == {
        "feedback_id": given["feedback_id"], "created_at": given["created_at"], "principal_id": reader_id,
        "rating": "down", "comment": "Backups moved to 03:00 in March.", "question": "When do backups run?",
        "answer": "Nightly at 02:00 [1].", "citations": CITATIONS, "conversation_id": None, "source": "api",
        "groups": ["eng"],
    }  # fmt: skip
    # The reader itself may not read feedback (admin only), and a key without ask may not give any.
    assert client.get("/v1/feedback", headers=bearer(reader)).status_code == 403
    searcher, _ = new_key(client, settings, ["search"], ["eng"])
    refused = client.post("/v1/feedback", json={"rating": "up", "question": "q", "answer": "a"},
                          headers=bearer(searcher))  # fmt: skip
    assert refused.status_code == 403 and "ask" in refused.json()["detail"]


def test_what_a_reader_sends_is_checked(client: TestClient, settings: Settings) -> None:
    reader, _ = new_key(client, settings, ["ask"], ["eng"])
    good = {"rating": "up", "question": "q?", "answer": "a"}
    for body, reason in (
        ({**good, "rating": "meh"}, "rating"),
        ({**good, "comment": "x" * 2001}, "comment"),
        ({**good, "question": "   "}, "question"),
        ({**good, "question": ""}, "question"),
        ({"rating": "up", "question": "q?"}, "answer"),
        ({**good, "citations": [{"n": i} for i in range(101)]}, "citations"),
        ({**good, "citations": [{"snippet": "x" * 300_000}]}, "citations"),
        ({**good, "citations": "[1]"}, "citations"),
        ({**good, "question": "q\x00?"}, "NUL"),  # PostgreSQL's text refuses it: a 400, never a 500
    ):
        refused = client.post("/v1/feedback", json=body, headers=bearer(reader))
        assert refused.status_code == 400 and reason in refused.text, (reason, refused.text)
    assert give(client, reader, comment="x" * 2000)  # the longest comment
    # A conversation must be the reader's own: one that does not exist (or another's) is not found.
    unknown = client.post("/v1/feedback", json={**good, "conversation_id": "c" * 32}, headers=bearer(reader))
    assert unknown.status_code == 404


def test_an_administrator_of_some_groups_reads_and_deletes_only_their_feedback(
    client: TestClient, settings: Settings
) -> None:
    eng_reader, _ = new_key(client, settings, ["ask"], ["eng"])
    hr_reader, _ = new_key(client, settings, ["ask"], ["hr"])
    eng_admin, _ = new_key(client, settings, ["admin"], ["eng"])
    eng = give(client, eng_reader, question="Where is the eng runbook?")
    hr = give(client, hr_reader, question="How many vacation days?")

    seen = {
        f["feedback_id"] for f in client.get("/v1/feedback?limit=500", headers=bearer(eng_admin)).json()["feedback"]
    }
    assert eng["feedback_id"] in seen and hr["feedback_id"] not in seen
    assert client.delete(f"/v1/feedback/{hr['feedback_id']}", headers=bearer(eng_admin)).status_code == 404
    assert client.delete(f"/v1/feedback/{eng['feedback_id']}", headers=bearer(eng_admin)).status_code == 204
    assert client.delete(f"/v1/feedback/{eng['feedback_id']}", headers=bearer(eng_admin)).status_code == 404
    admin = settings.admin_key_path.read_text().strip()
    everything = {
        f["feedback_id"] for f in client.get("/v1/feedback?limit=500", headers=bearer(admin)).json()["feedback"]
    }
    assert hr["feedback_id"] in everything and eng["feedback_id"] not in everything


def test_bad_answers_are_found_newest_first_page_by_page(client: TestClient, settings: Settings) -> None:
    reader, _ = new_key(client, settings, ["ask"], ["sales"])
    sales_admin, _ = new_key(client, settings, ["admin"], ["sales"])
    given = [give(client, reader, rating="down" if i % 3 else "up", question=f"question {i}") for i in range(7)]
    downs = [g["feedback_id"] for i, g in enumerate(given) if i % 3][::-1]  # newest first

    pages, before = [], None
    while True:
        query = {"rating": "down", "limit": 2, **({"before": before} if before else {})}
        page = client.get("/v1/feedback", params=query, headers=bearer(sales_admin))
        assert page.status_code == 200, page.text
        pages.append([f["feedback_id"] for f in page.json()["feedback"]])
        assert all(f["rating"] == "down" for f in page.json()["feedback"])
        before = page.json()["next_before"]
        if before is None:
            break
    assert [i for p in pages for i in p] == downs and all(len(p) <= 2 for p in pages)
    ups = client.get("/v1/feedback", params={"rating": "up"}, headers=bearer(sales_admin)).json()["feedback"]
    assert [f["question"] for f in ups] == ["question 6", "question 3", "question 0"]
    # Moments at the calendar's edges: before everything, after everything.
    edges = [("0001-01-01T00:00:00+05:00", 0), ("9999-12-31T23:59:59-05:00", len(downs))]
    for edge, count in edges:
        page = client.get("/v1/feedback", params={"rating": "down", "before": edge}, headers=bearer(sales_admin))
        assert page.status_code == 200 and len(page.json()["feedback"]) == count, (edge, page.text)
    for query in ({"rating": "sideways"}, {"limit": 0}, {"limit": 501}, {"before": "yesterday"}):
        assert client.get("/v1/feedback", params=query, headers=bearer(sales_admin)).status_code == 400, query


def test_feedback_from_the_web_pages_session_is_marked_as_the_pages(client: TestClient, settings: Settings) -> None:
    key, key_id = new_key(client, settings, ["ask"], ["support"])
    page = TestClient(app=client.app, base_url=str(client.base_url), timeout=120)  # a browser of its own
    assert page.post("/v1/session", headers=bearer(key)).status_code == 200
    body = {"rating": "up", "question": "Who is on call?", "answer": "The support rota [1]."}
    assert page.post("/v1/feedback", json=body).status_code == 403  # a cross-site form could not add the header
    given = page.post("/v1/feedback", json=body, headers=KB_REQUEST)
    assert given.status_code == 201, given.text
    admin = settings.admin_key_path.read_text().strip()
    listed = client.get("/v1/feedback", params={"rating": "up", "limit": 500}, headers=bearer(admin)).json()
    record = next(f for f in listed["feedback"] if f["feedback_id"] == given.json()["feedback_id"])
    assert (record["source"], record["principal_id"], record["groups"]) == ("web", key_id, ["support"])


def test_the_feedback_routes_are_described_with_examples(client: TestClient) -> None:
    paths = client.get("/schema/openapi.json").json()["paths"]
    give_, list_ = paths["/v1/feedback"]["post"], paths["/v1/feedback"]["get"]
    assert give_["responses"]["201"]["content"]["application/json"]["examples"]
    assert list_["responses"]["200"]["content"]["application/json"]["examples"]
    assert {p["name"] for p in list_["parameters"]} == {"rating", "limit", "before"}
    assert "delete" in paths["/v1/feedback/{feedback_id}"]
