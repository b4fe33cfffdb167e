"""service.ask.structured: the schema checked before anything runs, the answer parsed, validated and cited."""

from __future__ import annotations

import json

import pytest

from kb.models import Passage
from service.ask.structured import (
    InvalidSchema,
    JsonSchemaFormat,
    ResponseFormat,
    StructuredAnswerError,
    instruction,
    parse,
    schema_of,
)

pytestmark = pytest.mark.unit

SCHEMA = {"type": "object", "properties": {"parties": {"type": "array", "items": {"type": "string"}},
                                          "amount": {"type": ["string", "null"]}}, "required": ["parties", "amount"]}
SOURCES = [
    Passage(chunk_id="a-0", document_id="a", filename="agreement.txt", score=0.9,
            text="This agreement is made between Acme Corporation and Globex Limited."),
    Passage(chunk_id="b-0", document_id="b", filename="invoice.txt", score=0.8,
            text="Acme Corporation pays Globex Limited 120,000 euros a year."),
]  # fmt: skip


def fmt(schema: object) -> ResponseFormat:
    return ResponseFormat("json_schema", JsonSchemaFormat(schema))  # type: ignore[arg-type]


def test_text_or_no_format_asks_for_a_written_answer() -> None:
    assert schema_of(None) is None
    assert schema_of(ResponseFormat("text")) is None
    assert schema_of(fmt(SCHEMA)) == SCHEMA


@pytest.mark.parametrize(("response_format", "reason"), [
    (ResponseFormat("json_object"), "must be 'text' or 'json_schema'"),
    (ResponseFormat("json_schema"), "json_schema is required"),
    (fmt({"type": "nonsense"}), "not a valid JSON Schema"),
    (fmt({"properties": {"a": {"minLength": -1}}}), "not a valid JSON Schema at properties/a/minLength"),
    (fmt({"type": "object", "properties": {str(i): {"description": "x" * 400} for i in range(50)}}), "larger than"),
])  # fmt: skip
def test_a_schema_that_cannot_be_answered_is_refused_with_its_reason(response_format: ResponseFormat,
                                                                     reason: str) -> None:  # fmt: skip
    with pytest.raises(InvalidSchema) as raised:
        schema_of(response_format)
    assert reason in str(raised.value)


def test_the_prompt_carries_the_schema_and_asks_for_markers_in_values() -> None:
    text = instruction(SCHEMA)
    assert json.dumps(SCHEMA) in text and "[1]" in text


def test_values_are_cited_as_sentences_and_the_json_is_kept_as_written() -> None:
    answer = json.dumps({"parties": ["Acme Corporation [1]", "Globex Limited"], "amount": "120,000 euros a year [2]"})
    parsed = parse(answer, SCHEMA, SOURCES)
    assert parsed.data == json.loads(answer)
    assert [(c.n, c.document_id) for c in parsed.citations] == [(1, "a"), (2, "b")]
    assert parsed.grounded and parsed.unsupported == []


def test_a_value_no_source_supports_is_reported() -> None:
    parsed = parse(json.dumps({"parties": ["Acme Corporation [1]"], "amount": "95,000 dollars a month [2]"}),
                   SCHEMA, SOURCES)  # fmt: skip
    assert not parsed.grounded
    assert parsed.unsupported == ["95,000 dollars a month [2]"]
    assert not next(c for c in parsed.citations if c.n == 2).supported


@pytest.mark.parametrize(("text", "reason"), [
    ('{"parties": ["Acme Corporation"], "amount": "120,0', "not JSON"),
    ('{"parties": "Acme Corporation", "amount": null}', "does not validate against the schema at parties"),
])  # fmt: skip
def test_an_answer_that_is_not_valid_json_of_the_schema_is_an_error(text: str, reason: str) -> None:
    with pytest.raises(StructuredAnswerError) as raised:
        parse(text, SCHEMA, SOURCES)
    assert reason in str(raised.value)


def test_a_reference_outside_the_schema_is_refused_not_fetched() -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": "https://attacker.example/schema.json"}}}
    with pytest.raises(InvalidSchema) as raised:
        schema_of(fmt(schema))
    assert "only references within the schema" in str(raised.value)
    local = {"$defs": {"name": {"type": "string"}}, "type": "object", "properties": {"a": {"$ref": "#/$defs/name"}}}
    assert schema_of(fmt(local)) == local
