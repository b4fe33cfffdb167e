"""The MCP server's tools, declared once for both transports: `search`, `ask`, `list_documents`. Each asks the caller's
`Door` (service/mcp/doors.py) and returns its result twice: as text the model reads (the answer, then its numbered
sources with their links) and as structured content matching the tool's output schema (the API's response fields,
each passage and citation with `url`, the web page at the passage, and `original_url`, the original file)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Annotated, Any, Literal

import msgspec
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from service.ask.access import MAX_CONVERSATION_ID_CHARS
from service.ask.schemas import MAX_QUESTION_CHARS
from service.documents.schemas import DocumentList
from service.mcp.doors import Door, refusals_as_tool_errors
from service.mcp.schemas import AskResult, SearchResult, ask_text, documents_text, pydantic_view, search_text
from service.search.filters import SearchFilters
from service.search.schemas import MAX_QUERY_CHARS, MAX_TOP_K

INSTRUCTIONS = """kb answers questions from a company's own documents, with citations. `ask` answers a question
in a few sentences citing its sources as [n] (each with a link that opens the cited passage); `search` returns the
best-matching passages; `list_documents` lists the documents you may read. Only documents shared with your key's
groups are ever searched, cited or listed."""

# The tools read, never change anything, and reach nothing beyond kb's own documents.
READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)

DoorOf = Callable[[Context], Door]

# The tools' arguments, as the JSON schema the client reads them by. `filters` is /v1/search's, described by the
# Struct's own fields.
Filters = pydantic_view(SearchFilters, "forbid")
FiltersArg = Annotated[Filters | None, Field(description=(  # type: ignore[valid-type]
    "only these documents, as /v1/search's `filters`: document_ids, groups (within your own), metadata "
    "({\"team\": \"ops\"}), created_after, created_before"))]  # fmt: skip
Query = Annotated[str, Field(max_length=MAX_QUERY_CHARS, description="what to look for: a question or words")]
TopK = Annotated[int, Field(ge=1, le=MAX_TOP_K, description="number of passages")]
Mode = Annotated[Literal["dense", "sparse", "hybrid"] | None, Field(description="retrieval mode (default: hybrid)")]
Question = Annotated[str, Field(max_length=MAX_QUESTION_CHARS, description="the question, in your words")]
ConversationId = Annotated[str | None, Field(max_length=MAX_CONVERSATION_ID_CHARS, description=(
    "the conversation_id of an earlier answer, to ask a follow-up question in that conversation"))]  # fmt: skip
Lifespan = Callable[[MCPServer[Any]], AbstractAsyncContextManager[Any]]


def _result(text: str, structured: msgspec.Struct) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)],
                          structured_content=msgspec.to_builtins(structured))  # fmt: skip


def _filters(filters: Any) -> SearchFilters | None:
    """The tool's `filters` as the API's Struct (msgspec checks it as /v1/search does: a bad value is the caller's
    error, with the field it is in)."""
    if filters is None:
        return None
    try:
        return msgspec.convert(filters.model_dump(exclude_none=True), SearchFilters)
    except msgspec.ValidationError as exc:
        raise ToolError(f"filters: {exc}") from exc


@contextmanager
def _sdk_logging_left_alone() -> Iterator[None]:
    """MCPServer() calls logging.basicConfig with a rich handler when the root logger has none yet; kb configures its
    own logging (service.observability), before or after, and must not find a stray handler."""
    placeholder = None
    if not logging.root.handlers:
        placeholder = logging.NullHandler()
        logging.root.addHandler(placeholder)
    try:
        yield
    finally:
        if placeholder is not None:
            logging.root.removeHandler(placeholder)


def build_server(door_of: DoorOf, *, lifespan: Lifespan | None = None) -> MCPServer[Any]:
    """The MCP server with kb's tools; `door_of(ctx)`: the caller's door for one tool call."""
    with _sdk_logging_left_alone():
        server: MCPServer[Any] = MCPServer("kb", title="kb: answers from your documents", instructions=INSTRUCTIONS,
                                           lifespan=lifespan, log_level="WARNING")  # fmt: skip

    def tool(title: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """server.tool with the docstring as the description, its indentation removed (the model reads it)."""
        return lambda fn: server.tool(title=title, description=inspect.cleandoc(fn.__doc__ or ""),
                                      annotations=READ_ONLY)(fn)  # fmt: skip

    @tool("Search the documents")
    async def search(query: Query, ctx: Context, top_k: TopK = 5, filters: FiltersArg = None, mode: Mode = None
                     ) -> Annotated[CallToolResult, pydantic_view(SearchResult)]:  # fmt: skip
        """The passages of the documents you may read that best match `query`, best first, each with its document,
        page, score and a link that opens it. Use it to find where something is written; use `ask` for an answer."""
        door = door_of(ctx)
        response = await refusals_as_tool_errors(door.search(query, top_k, _filters(filters), mode))
        result = SearchResult.of(response, door.base_url)
        return _result(search_text(result), result)

    @tool("Ask the documents")
    async def ask(question: Question, ctx: Context, conversation_id: ConversationId = None, filters: FiltersArg = None
                  ) -> Annotated[CallToolResult, pydantic_view(AskResult)]:  # fmt: skip
        """An answer from the documents you may read, every statement cited as [n]: each source with its file, page,
        the supporting snippet and a link that opens the cited passage. When the documents do not answer the
        question, it says so and cites nothing. Send the returned conversation_id with a follow-up question."""
        door = door_of(ctx)
        response = await refusals_as_tool_errors(door.ask(question, conversation_id, _filters(filters)))
        result = AskResult.of(response, door.base_url)
        return _result(ask_text(result), result)

    @tool("List the documents")
    async def list_documents(ctx: Context) -> Annotated[CallToolResult, pydantic_view(DocumentList)]:
        """The documents you may read: id, file name, status (queued, processing, ready, failed), pages and chunks."""
        listed = await refusals_as_tool_errors(door_of(ctx).documents())
        return _result(documents_text(listed), listed)

    return server
