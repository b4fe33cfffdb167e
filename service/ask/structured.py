"""Structured answers: the answer as JSON that validates against a schema the caller gives ("extract the parties,
dates and amounts of this contract"), with its citations.

The request names the schema as OpenAI's API does (`response_format: {"type": "json_schema", "json_schema": {"name",
"schema"}}`), on POST /v1/ask and on the OpenAI-compatible route alike. The schema is checked before anything runs
(a JSON Schema by its metaschema, jsonschema's Draft 2020-12 validator, then compiled by xgrammar, the grammar
engine vLLM's structured outputs use): an invalid one is a 422, never a failed generation. The generator decodes
under the schema (vLLM's structured outputs: guided decoding on the in-process engine, `response_format` on a vLLM
server), so the text is JSON of the schema's shape; it is parsed and validated again before it is returned (an answer
cut at the token limit is not valid JSON: an error, not a broken object).

Citations: the prompt asks for the source's number in brackets inside each string value that states something from
a source ("Acme Corp [2]"); each string value is then checked and cited like a sentence of a written answer
(service.ask.citations.annotate: its own markers, else the source that evidently supports it), and the answer's
citations are those of all its values. The JSON text is returned as the model wrote it (markers inferred for a value
are not written into it)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from msgspec import Struct

from kb.models import Citation, Passage
from service.ask.citations import annotate

MAX_SCHEMA_BYTES = 16384


class JsonSchemaFormat(Struct):
    schema: dict[str, Any]
    name: str = "answer"
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(Struct):
    """OpenAI's `response_format`: `text` (the default) or `json_schema`."""

    type: str = "text"
    json_schema: JsonSchemaFormat | None = None


class InvalidSchema(ValueError):
    """The response format cannot be answered: not a JSON Schema, or one the grammar engine cannot compile."""


def schema_of(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    """The JSON Schema the answer must follow (None: a written answer), checked; raises InvalidSchema."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type != "json_schema":
        raise InvalidSchema(f"response_format.type must be 'text' or 'json_schema', not {response_format.type!r}")
    if response_format.json_schema is None:
        raise InvalidSchema("response_format.json_schema is required with type 'json_schema'")
    schema = response_format.json_schema.schema
    text = json.dumps(schema, ensure_ascii=False)
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise InvalidSchema(f"the schema is larger than {MAX_SCHEMA_BYTES} bytes")
    remote = _remote_refs(schema)
    if remote:
        raise InvalidSchema(f"only references within the schema (#/...) are allowed, not {remote[0]!r}")
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise InvalidSchema(f"not a valid JSON Schema at {where}: {exc.message}") from exc
    import xgrammar

    try:
        xgrammar.Grammar.from_json_schema(text)
    except Exception as exc:  # noqa: BLE001 - xgrammar raises RuntimeError/ValueError/TypeError by version
        raise InvalidSchema(f"the schema cannot be used for constrained decoding: {str(exc)[:300]}") from exc
    return schema


def instruction(schema: dict[str, Any]) -> str:
    """What the question gains when the answer is JSON: the shape, and where its citations go."""
    return (
        "\n\nAnswer with JSON only, following this JSON Schema:\n"
        + json.dumps(schema, ensure_ascii=False)
        + "\nFill each value from the sources. In every string value that states something from a source, put that "
        "source's number in brackets, like [1]. Where the sources do not say, use null where the schema allows it, "
        "else an empty string."
    )


class StructuredAnswerError(RuntimeError):
    """The generator's text is not JSON valid against the schema (e.g. cut at the answer's token limit)."""


@dataclass
class StructuredAnswer:
    data: Any
    citations: list[Citation] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    grounded: bool = False


def parse(text: str, schema: dict[str, Any], sources: list[Passage]) -> StructuredAnswer:
    """The answer's JSON, validated, and its citations: every string value checked and cited as a sentence is."""
    from jsonschema import Draft202012Validator

    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StructuredAnswerError(f"the answer is not JSON ({exc}); it may have hit the token limit") from exc
    try:
        errors = sorted(Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.path))
    except Exception as exc:  # noqa: BLE001 - a schema jsonschema cannot apply (checked up front, so not expected)
        raise StructuredAnswerError(f"the answer could not be validated: {exc}") from exc
    if errors:
        where = "/".join(str(p) for p in errors[0].path) or "(root)"
        raise StructuredAnswerError(f"the answer does not validate against the schema at {where}: {errors[0].message}")
    cited: dict[int, Citation] = {}
    unsupported: list[str] = []
    claims = supported = 0
    for value in _strings(data):
        checked = annotate(value, sources)
        for citation in checked.citations:
            known = cited.get(citation.n)
            if known is None:
                cited[citation.n] = citation
            elif known.supported and not citation.supported:
                cited[citation.n] = citation  # one value it does not support makes it unsupported
        for claim in checked.claims:
            claims += 1
            supported += claim.supported
            if not claim.supported:
                unsupported.append(checked.text[claim.start : claim.end].strip())
    citations = [cited[n] for n in sorted(cited)]
    return StructuredAnswer(data, citations, unsupported, grounded=bool(citations) and supported == claims)


def _remote_refs(value: Any) -> list[str]:
    """`$ref`s that point outside the schema: never fetched (no request leaves kb for a caller's schema)."""
    if isinstance(value, dict):
        own = [v for k, v in value.items() if k in ("$ref", "$dynamicRef") and not str(v).startswith("#")]
        return own + [r for item in value.values() for r in _remote_refs(item)]
    if isinstance(value, list):
        return [r for item in value for r in _remote_refs(item)]
    return []


def _strings(value: Any) -> list[str]:
    """The non-empty string values of a JSON value, in document order (object keys are the schema's, not claims)."""
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []
