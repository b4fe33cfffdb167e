"""The MCP door's own logic, with a fake door behind the real MCP server (the SDK's in-process client): what each tool
returns as text and as structured content (checked against the tool's published output schema), how a refusal or a
dependency that is down reaches the caller, the pydantic mirrors of kb's Structs, the links, the Host/Origin policy,
and the layout rule that this door imports no other door."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jsonschema
import msgspec
import pydantic
import pytest
from litestar.exceptions import NotFoundException
from mcp import Client
from mcp.server.mcpserver.exceptions import ToolError

from kb.models import Citation
from kb.ports import GeneratorUnavailable
from kb.settings import AuthSettings, McpSettings, Settings
from service.ask.events import AnswerFailed, Failed
from service.ask.schemas import AskResponse
from service.auth import Principal
from service.documents.schemas import DocumentList, DocumentOut
from service.mcp.doors import ServerDoor, ServiceDoor, refusals_as_tool_errors
from service.mcp.http import LOOPBACK_HOSTS, _origin_allowed, allowed_origins, transport_security
from service.mcp.schemas import original_link, page_link, pydantic_view
from service.mcp.tools import build_server
from service.search.filters import SearchFilters
from service.search.schemas import PassageOut, SearchResponse
from tests.support import free_port
from tests.unit.test_architecture import DOORS, imports, module_name, sources

pytestmark = pytest.mark.unit

BASE = "https://kb.example.com"
PASSAGE = PassageOut("c-1", "doc/1", "handbook.pdf", 2, 2, "Uploads", "Uploads are limited to 100 MB.", 0.83)
CITATION = Citation(1, "doc/1", "handbook.pdf", 2, "Uploads are limited to 100 MB", "c-1", "Uploads", 0.83,
                    span=(0, 29))  # fmt: skip
DOCUMENT = DocumentOut("doc/1", "handbook.pdf", "application/pdf", "ab", 10, "ready", None, 3, 7, ["staff"], {}, 1, 1,
                       {"stage": "done"}, None, None)  # fmt: skip


@dataclass
class FakeDoor:
    """Canned answers, every call recorded; `fail` raised instead when set."""

    base_url: str = BASE
    fail: BaseException | None = None
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    async def _answer(self, name: str, args: tuple[Any, ...], value: Any) -> Any:
        self.calls.append((name, args))
        if self.fail is not None:
            raise self.fail
        return value

    async def search(self, *args: Any) -> SearchResponse:
        return await self._answer("search", args, SearchResponse([PASSAGE], True, 3.2))

    async def ask(self, *args: Any) -> AskResponse:
        answer = AskResponse("Uploads may be 100 MB [1].", [CITATION], True, {"total": 5.0}, "conv-1")
        return await self._answer("ask", args, answer)

    async def documents(self) -> DocumentList:
        return await self._answer("documents", (), DocumentList([DOCUMENT]))


async def _call(door: FakeDoor, tool: str, arguments: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The tool's result through the SDK's in-process client, and the tool's published output schema."""
    async with Client(build_server(lambda _: door)) as client:
        schemas = {t.name: t.output_schema for t in (await client.list_tools()).tools}
        return await client.call_tool(tool, arguments), schemas[tool]


def _text(result: Any) -> str:
    return "\n".join(c.text for c in result.content)


async def test_search_returns_passages_with_links_as_text_and_as_structured_content() -> None:
    door = FakeDoor()
    filters = {"groups": ["staff"], "metadata": {"team": "ops"}}
    result, schema = await _call(door, "search", {"query": "upload limit", "top_k": 3, "filters": filters})
    assert not result.is_error
    jsonschema.validate(result.structured_content, schema)
    [passage] = result.structured_content["passages"]
    assert passage["url"] == f"{BASE}/#doc=doc%2F1&chunk=c-1"
    assert passage["original_url"] == f"{BASE}/v1/documents/doc%2F1/file#page=2"
    assert "[1] handbook.pdf, page 2" in _text(result) and passage["url"] in _text(result)
    # The door got the API's own filter Struct, validated.
    assert door.calls == [("search", ("upload limit", 3, SearchFilters(groups=["staff"], metadata={"team": "ops"}),
                                      None))]  # fmt: skip


async def test_ask_returns_numbered_citations_with_links() -> None:
    door = FakeDoor()
    result, schema = await _call(door, "ask", {"question": "How large may an upload be?", "conversation_id": "conv-1"})
    jsonschema.validate(result.structured_content, schema)
    [citation] = result.structured_content["citations"]
    assert {k: citation[k] for k in ("n", "document_id", "filename", "page", "snippet", "span")} == {
        "n": 1, "document_id": "doc/1", "filename": "handbook.pdf", "page": 2,
        "snippet": "Uploads are limited to 100 MB", "span": [0, 29]}  # fmt: skip
    assert citation["url"] == f"{BASE}/#doc=doc%2F1&chunk=c-1"
    text = _text(result)
    assert text.startswith("Uploads may be 100 MB [1].")
    assert f'[1] handbook.pdf, page 2: "Uploads are limited to 100 MB" {citation["url"]}' in text
    assert "conversation_id: conv-1" in text
    assert door.calls == [("ask", ("How large may an upload be?", "conv-1", None))]


async def test_list_documents_as_the_api_lists_them() -> None:
    result, schema = await _call(FakeDoor(), "list_documents", {})
    jsonschema.validate(result.structured_content, schema)
    assert result.structured_content == {"documents": [msgspec.to_builtins(DOCUMENT)]}
    assert _text(result) == "doc/1  handbook.pdf  [ready; 3 pages, 7 chunks]"


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        (NotFoundException("no conversation c-9"), "no conversation c-9"),
        (AnswerFailed(Failed(status=504, title="Gateway Timeout", detail="the generator did not answer in time: x")),
         "the generator did not answer in time: x"),
        (GeneratorUnavailable("503 from the server"), "the generator is unavailable: 503 from the server"),
    ],
)
async def test_a_refusal_or_a_dependency_down_is_a_tool_error_with_the_apis_reason(failure: Exception,
                                                                                  said: str) -> None:  # fmt: skip
    result, _ = await _call(FakeDoor(fail=failure), "ask", {"question": "q"})
    assert result.is_error and said in _text(result)


async def test_a_crash_is_a_tool_error_that_keeps_its_text_on_the_server() -> None:
    result, _ = await _call(FakeDoor(fail=RuntimeError("secret internals")), "search", {"query": "q"})
    assert result.is_error and "secret internals" not in _text(result)


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [({"query": "q", "top_k": 0}, "top_k"), ({"query": "q", "filters": {"document_id": ["x"]}}, "document_id"),
     ({"query": "q", "filters": {"created_after": "yesterday"}}, "created_after"), ({"query": "q" * 4001}, "query")],
)
async def test_invalid_arguments_never_reach_the_door(arguments: dict[str, Any], reason: str) -> None:
    door = FakeDoor()
    result, _ = await _call(door, "search", arguments)
    assert result.is_error and reason in _text(result)
    assert door.calls == []


async def test_the_service_door_checks_the_scope_before_anything_else() -> None:
    ask_only = Principal("k1", "ask only", frozenset({"ask"}), ("staff",))
    door = ServiceDoor(services=None, principal=ask_only)  # type: ignore[arg-type]  # never reached
    for work in (door.search("q", 5, None, None), door.documents()):
        with pytest.raises(ToolError, match="this key lacks the scope search"):
            await refusals_as_tool_errors(work)


def test_pydantic_views_mirror_the_structs_they_describe() -> None:
    view = pydantic_view(SearchFilters, "forbid")
    assert list(view.model_fields) == [f.name for f in msgspec.structs.fields(SearchFilters)]
    with pytest.raises(pydantic.ValidationError):
        view.model_validate({"document_id": ["x"]})  # misspelt: refused, not ignored
    search = pydantic_view(SearchResponse)
    nested = search.model_fields["passages"].annotation.__args__[0]  # type: ignore[union-attr]
    assert list(nested.model_fields) == [f.name for f in msgspec.structs.fields(PassageOut)]


def test_links_quote_what_they_carry() -> None:
    assert page_link("https://kb/", "a b", "c&d") == "https://kb/#doc=a%20b&chunk=c%26d"
    assert original_link("", "x/y", None) == "/v1/documents/x%2Fy/file"  # relative without a known address


def test_host_and_origin_policy() -> None:
    keyed = Settings(public_url="https://kb.example.com/app")
    assert allowed_origins(keyed) == ["https://kb.example.com"]
    assert not transport_security(keyed).enable_dns_rebinding_protection  # every request needs a key anyway
    open_door = Settings(auth=AuthSettings(enabled=False))
    security = transport_security(open_door)
    assert security.enable_dns_rebinding_protection and security.allowed_hosts == LOOPBACK_HOSTS
    listed = Settings(mcp=McpSettings(allowed_hosts=["kb.example.com"], allowed_origins=["http://localhost:*"]))
    assert transport_security(listed).allowed_hosts == ["kb.example.com"]
    assert _origin_allowed("http://localhost:6274", ["http://localhost:*"])
    assert not _origin_allowed("http://localhost.evil.example", ["http://localhost:*"])
    assert not _origin_allowed("https://evil.example", allowed_origins(keyed))


def test_the_mcp_door_imports_no_other_door() -> None:
    offenders = {module_name(p): sorted(imports(p) & DOORS) for p in sources("service/mcp")}
    assert len(offenders) >= 5
    assert {name: found for name, found in offenders.items() if found} == {}


async def test_a_server_that_does_not_answer_is_a_tool_error_that_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import service.cli_backends

    monkeypatch.setattr(service.cli_backends, "SERVER_START_TIMEOUT_S", 0.5)
    door = ServerDoor(f"http://127.0.0.1:{free_port()}", "kb_x", say=lambda _: None)  # nothing listens there
    with pytest.raises(ToolError, match="was not ready after"):
        await refusals_as_tool_errors(door.documents())
