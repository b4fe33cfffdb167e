"""Property-based tests of the HTTP API from its own OpenAPI description (schemathesis over hypothesis): for every
operation, generated inputs (valid ones and ones that break the schema: wrong types, missing fields, odd strings and
path parameters) never get a 5xx, with the local admin key and without any key. The served app is real (uvicorn on
loopback, MiniLM, Qdrant Edge, SQLite) with the generator off: its routes answer 503 by design, which is allowed for
them alone. Bounded and reproducible: few examples per operation, derandomized, no example database.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from bench.hostile_files import served
from kb.settings import Settings
from service.app import create_app

pytestmark = pytest.mark.integration

# The generator is off (create_app(with_generator=False)): these answer 503 "generator unavailable" by design.
GENERATOR_ROUTES = {"/v1/ask", "/v1/chat/completions", "/v1/models", "/v1/conversations/{conversation_id}"}
PUBLIC = {"GET /healthz", "GET /readyz"}
OPENAI_ROUTES = {"/v1/chat/completions", "/v1/models"}
# Operations where generated valid input must get through to the handler (2xx) with the admin key: the fuzzer is
# reaching the code, not only the validators.
REACHED = {"POST /v1/search", "GET /v1/documents", "GET /v1/keys", "POST /v1/keys", "GET /healthz"}
MAX_EXAMPLES = 40  # per operation and identity: 18 operations x 2 identities, ~45 s here (the budget is 90 s)
FUZZ = settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))  # fmt: skip


@pytest.fixture(scope="module")
def served_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("fuzz"),
        generator={"enabled": False},
        # The point is what each input does, not the rate limiter (tests/integration/test_api_product.py has that).
        rate_limit={"requests": 1_000_000, "failed_auth_requests": 0},
    )
    with served(create_app(settings, with_generator=False)) as url:
        yield url, settings.admin_key_path.read_text().strip()


def _operations() -> dict[str, Any]:
    """The app's operations, from the OpenAPI description it generates (no server needed to collect the tests)."""
    with tempfile.TemporaryDirectory(prefix="kb-fuzz-schema-") as tmp:
        app = create_app(Settings(data_dir=Path(tmp), generator={"enabled": False}), with_generator=False)
        description = app.openapi_schema.to_schema()
    return {op.label: op for op in (r.ok() for r in schemathesis.openapi.from_dict(description).get_all_operations())}


OPERATIONS = _operations()


def _cases(operation: Any) -> Any:
    """Inputs valid by the schema and inputs that break it (wrong types, missing or extra fields, odd strings)."""
    strategies = [operation.as_strategy(GenerationMode.POSITIVE)]
    with contextlib.suppress(Exception):  # an operation with nothing to get wrong (no parameters, no body)
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
    return st.one_of(strategies)


def check_no_server_error(case: Any, url: str, key: str | None) -> int:
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() not in ("authorization", "cookie")}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    case.headers = headers
    response = case.call(base_url=url, timeout=60)
    allowed_503 = case.path in GENERATOR_ROUTES and response.status_code == 503
    assert response.status_code < 500 or allowed_503, (
        f"{case.method} {case.formatted_path} -> {response.status_code}\n{case.as_curl_command()}\n"
        f"{response.text[:2000]}"
    )
    if response.status_code >= 400 and case.path in OPENAI_ROUTES:
        # OpenAI's error shape there, for its SDKs (service/ask/openai.py), whatever the input.
        error = response.json().get("error")
        assert isinstance(error, dict) and set(error) == {"message", "type", "code", "param"}, response.text[:500]
    elif response.status_code >= 400:
        # Every other error is RFC 9457 problem JSON (service/problems.py), whatever the input.
        content_type = next((v[0] for k, v in response.headers.items() if k.lower() == "content-type"), "")
        assert content_type.startswith("application/problem+json"), (case.formatted_path, response.text[:500])
    return response.status_code


@pytest.mark.parametrize("identity", ["admin key", "no key"])
@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_no_input_gets_a_server_error(label: str, identity: str, served_api: tuple[str, str]) -> None:
    url, admin_key = served_api
    key = admin_key if identity == "admin key" else None

    statuses: set[int] = set()

    @FUZZ
    @given(case=_cases(OPERATIONS[label]))
    def fuzz(case: Any) -> None:
        statuses.add(check_no_server_error(case, url, key))

    fuzz()
    if identity == "no key" and label not in PUBLIC:
        assert statuses <= {401, 403, 429}, statuses  # nothing but a refusal without a key, whatever the input
    if identity == "admin key" and label in REACHED:
        assert any(200 <= status < 300 for status in statuses), statuses


def _multipart(fields: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body built by hand, so that names and values reach the server exactly as generated."""
    boundary = "kb-fuzz-boundary-7c1f"
    parts = []
    for name, filename, value in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode("utf-8", "surrogatepass")
                     + value + b"\r\n")  # fmt: skip
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


_NAME = st.text(st.characters(blacklist_characters='"\r\n'), max_size=40)  # what a client could send as a name
_UPLOAD_FIELDS = st.tuples(
    st.lists(st.tuples(_NAME, st.binary(max_size=512)), min_size=0, max_size=3),
    st.one_of(st.none(), _NAME),  # groups
    st.one_of(st.none(), _NAME, st.just('{"team": "ops"}'), st.just("[1, 2]")),  # metadata
    st.one_of(st.none(), _NAME, st.just("0" * 32)),  # document_id
)


def test_uploads_with_arbitrary_names_fields_and_bytes_get_no_server_error(served_api: tuple[str, str]) -> None:
    """The upload route reads its multipart form by hand, so the schema says nothing the fuzzer above could use."""
    url, admin_key = served_api
    statuses: set[int] = set()

    @FUZZ
    @given(fields=_UPLOAD_FIELDS)
    def fuzz(fields: tuple[list[tuple[str, bytes]], str | None, str | None, str | None]) -> None:
        files, groups, metadata, document_id = fields
        form = [("files", name, data) for name, data in files]
        form += [
            (key, None, value.encode())
            for key, value in (("groups", groups), ("metadata", metadata), ("document_id", document_id))
            if value is not None
        ]
        body, content_type = _multipart(form)
        headers = {"Authorization": f"Bearer {admin_key}", "Content-Type": content_type}
        response = httpx.post(f"{url}/v1/documents", content=body, headers=headers, timeout=60)
        assert response.status_code < 500, (form, response.text[:1000])
        statuses.add(response.status_code)

    fuzz()
    assert 202 in statuses and statuses & {400, 403, 404}, statuses


def test_the_schema_is_this_apps(served_api: tuple[str, str]) -> None:
    """The operations fuzzed are exactly the served ones, with the security scheme every route but health uses."""
    url, _ = served_api
    description = httpx.get(f"{url}/schema/openapi.json", timeout=30).json()
    assert {f"{m.upper()} {path}" for path, ops in description["paths"].items() for m in ops} == set(OPERATIONS)
    assert "ApiKey" in description["components"]["securitySchemes"]
    assert {"/v1/search", "/v1/documents", "/v1/keys"} <= set(description["paths"])
