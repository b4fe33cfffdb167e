"""What the MCP tools return: the API's own response types with the links a reader opens a source by, as text for the
model and as structured content (the tool's output schema) for the client. The MCP SDK describes and validates tool
input and output with pydantic; kb's wire types are msgspec Structs, so `pydantic_view` mirrors a Struct as a pydantic
model instead of declaring its fields a second time."""

from __future__ import annotations

import functools
import operator
import types
import typing
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import quote

import msgspec
from msgspec import Struct
from pydantic import BaseModel, ConfigDict, Field, create_model

from kb.models import Citation
from service.ask.schemas import AskResponse
from service.documents.schemas import DocumentList
from service.search.schemas import PassageOut, SearchResponse

SNIPPET_CHARS = 300  # of a passage, in the text the model reads (the structured content has it whole)


# --- the links ---------------------------------------------------------------------------------------------------


def page_link(base_url: str, document_id: str, chunk_id: str) -> str:
    """The web page opened at a passage (`#doc=…&chunk=…`, as the Slack bot links sources): the page asks for a
    sign-in first, and shows the passage only within the reader's own groups."""
    return f"{base_url.rstrip('/')}/#doc={quote(document_id, safe='')}&chunk={quote(chunk_id, safe='')}"


def original_link(base_url: str, document_id: str, page: int | None) -> str:
    """The original file (`GET /v1/documents/{id}/file`, scope search or ask; a browser signed in to the page sends its
    session); `#page=N` opens a PDF at the cited page (other types ignore it)."""
    url = f"{base_url.rstrip('/')}/v1/documents/{quote(document_id, safe='')}/file"
    return url + (f"#page={page}" if page is not None else "")


# --- the results -------------------------------------------------------------------------------------------------


class LinkedPassage(PassageOut):
    """A passage of /v1/search with its links."""

    url: str  # the web page at this passage
    original_url: str  # the original file (a PDF at the passage's page)

    @classmethod
    def linked(cls, passage: PassageOut, base_url: str) -> LinkedPassage:
        return cls(**msgspec.structs.asdict(passage), url=page_link(base_url, passage.document_id, passage.chunk_id),
                   original_url=original_link(base_url, passage.document_id, passage.page))  # fmt: skip


class SearchResult(Struct):
    passages: list[LinkedPassage]
    relevant: bool  # False: nothing the caller may read is relevant enough to answer from
    latency_ms: float

    @classmethod
    def of(cls, response: SearchResponse, base_url: str) -> SearchResult:
        return cls([LinkedPassage.linked(p, base_url) for p in response.passages], response.relevant,
                   response.latency_ms)  # fmt: skip


class CitationOut(Struct):
    """A citation of an answer (kb.models.Citation) as the reader gets it, with its links."""

    n: int  # the answer's [n]
    document_id: str
    filename: str
    page: int | None
    section: str | None
    snippet: str
    chunk_id: str
    span: tuple[int, int] | None  # the snippet's character range in the chunk
    supported: bool  # False: the sentences citing it share too little with it
    inferred: bool  # the model did not mark it; kb matched the sentence to this source
    url: str  # the web page at the cited passage, the span marked
    original_url: str  # the original file (a PDF at the cited page)

    @classmethod
    def of(cls, citation: Citation, base_url: str) -> CitationOut:
        return cls(
            citation.n, citation.document_id, citation.filename, citation.page, citation.section, citation.snippet,
            citation.chunk_id, citation.span, citation.supported, citation.inferred,
            page_link(base_url, citation.document_id, citation.chunk_id),
            original_link(base_url, citation.document_id, citation.page),
        )  # fmt: skip


class AskResult(Struct):
    answer: str  # with [n] markers, each one of `citations`
    citations: list[CitationOut]
    grounded: bool  # True only when the sources support the answer's claims
    mode: str  # generate | extract (quoted from the sources) | none (no information)
    conversation_id: str | None  # send it with a follow-up question
    unsupported: list[str]  # sentences no cited source supports
    degraded: bool  # written (in part) by the fallback model while the generator server was failing

    @classmethod
    def of(cls, response: AskResponse, base_url: str) -> AskResult:
        return cls(response.answer, [CitationOut.of(c, base_url) for c in response.citations], response.grounded,
                   response.mode, response.conversation_id, response.unsupported, response.degraded)  # fmt: skip


# --- as text, for the model --------------------------------------------------------------------------------------


def _where(filename: str, page: int | None) -> str:
    return filename + (f", page {page}" if page is not None else "")


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def search_text(result: SearchResult) -> str:
    if not result.passages:
        return "No passage of the documents you may read matches this query."
    lines = [] if result.relevant else ["(None of these passages is a strong match.)", ""]
    for i, p in enumerate(result.passages, 1):
        lines += [f"[{i}] {_where(p.filename, p.page)} (score {p.score:.3f}; document_id {p.document_id}) {p.url}",
                  _one_line(p.text, SNIPPET_CHARS * 2), ""]  # fmt: skip
    return "\n".join(lines).rstrip()


def ask_text(result: AskResult) -> str:
    lines = [result.answer]
    if result.degraded:
        lines += ["", "(Answered by the small fallback model: the main generator is failing right now.)"]
    if result.unsupported:
        lines += ["", "Not supported by the cited sources: " + " | ".join(result.unsupported)]
    if result.citations:
        lines += ["", "Sources:"]
        lines += [f"[{c.n}] {_where(c.filename, c.page)}: \"{_one_line(c.snippet, SNIPPET_CHARS)}\" {c.url}"
                  for c in result.citations]  # fmt: skip
    if result.conversation_id:
        lines += ["", f"conversation_id: {result.conversation_id} (send it with a follow-up question)"]
    return "\n".join(lines)


def documents_text(result: DocumentList) -> str:
    if not result.documents:
        return "No documents that you may read."
    lines = []
    for d in result.documents:
        counts = ", ".join(f"{n} {what}" for n, what in ((d.pages, "pages"), (d.chunks, "chunks")) if n is not None)
        error = f"; error: {d.error}" if d.error else ""
        lines.append(f"{d.document_id}  {d.filename}  [{d.status}{'; ' + counts if counts else ''}{error}]")
    return "\n".join(lines)


# --- msgspec Struct -> pydantic model ----------------------------------------------------------------------------


@functools.cache
def pydantic_view(struct: type[Struct], extra: Literal["allow", "forbid"] = "allow") -> type[BaseModel]:
    """A pydantic model with the fields, types and defaults of `struct` (nested Structs mirrored too; msgspec's `Meta`
    constraints dropped: msgspec validates, pydantic describes). `extra`: "allow" for results (a field the API adds
    later still reaches the client), "forbid" for input (a misspelt filter is an error, not silently ignored)."""
    hints = typing.get_type_hints(struct)
    fields: dict[str, Any] = {}
    for field in msgspec.structs.fields(struct):
        annotation = _pydantic_type(hints[field.name], extra)
        if field.required:
            fields[field.encode_name] = (annotation, ...)
        elif field.default_factory is not msgspec.NODEFAULT:
            fields[field.encode_name] = (annotation, Field(default_factory=field.default_factory))
        else:
            fields[field.encode_name] = (annotation, field.default)
    return create_model(struct.__name__, __doc__=struct.__doc__, __config__=ConfigDict(extra=extra), **fields)


def _pydantic_type(annotation: Any, extra: Literal["allow", "forbid"]) -> Any:
    origin, args = get_origin(annotation), get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, Struct):
        return pydantic_view(annotation, extra)
    if origin is Annotated:
        return _pydantic_type(args[0], extra)
    if origin in (Union, types.UnionType):
        return functools.reduce(operator.or_, (_pydantic_type(a, extra) for a in args))
    if origin in (list, dict, tuple, set, frozenset):
        return origin[tuple(_pydantic_type(a, extra) if a is not Ellipsis else a for a in args)]
    return annotation
