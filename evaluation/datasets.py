"""QA sets for retrieval evaluation: their units (what is retrieved), questions and gold units.

Formats (see ../shared/SOURCES.md):
- SQuAD json (XQuAD, CMRC 2018, COVID-QA): each context is a unit and the gold is the context of the question.
  Sets whose contexts are whole documents (COVID-QA papers) are chunked as ingestion chunks them instead, and the
  gold is the chunk(s) holding the answer's start.
- BEIR directory (SciFact): corpus documents (title + text) are units; the questions are the queries of
  qrels/test.tsv, the gold their judged documents.
- TAT-QA json: each context's table (as a Markdown table) and each of its paragraphs are units; the gold is the
  paragraphs of `rel_paragraphs` plus the table when `answer_from` names it.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ingest.chunk import Chunker, chunk_id_for
from ingest.partition import Block

QAFormat = Literal["squad", "beir", "tatqa"]
# SQuAD-format sets whose contexts average more characters than this are documents to chunk (COVID-QA: 23.5k),
# not paragraphs (XQuAD, CMRC: under 1k).
DOCUMENT_CONTEXT_CHARS = 4000


@dataclass(frozen=True)
class Unit:
    """One retrieval unit, indexed as one chunk."""

    unit_id: str
    document_id: str
    text: str


@dataclass(frozen=True)
class Question:
    question_id: str
    text: str
    gold: frozenset[str]  # unit ids


@dataclass
class QASet:
    name: str
    format: QAFormat
    units: list[Unit]
    questions: list[Question]
    chunked: bool = False
    # Questions dropped because they have no gold unit (SQuAD 2.0 unanswerables, TAT-QA without evidence).
    skipped: int = 0


def detect_format(path: Path) -> QAFormat:
    if path.is_dir():
        if any((path / name).is_file() for name in ("corpus.jsonl.gz", "corpus.jsonl")):
            return "beir"
        raise ValueError(f"{path}: a directory but not a BEIR dataset (no corpus.jsonl[.gz])")
    with path.open(encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        return "squad"
    if isinstance(data, list) and data and isinstance(data[0], dict) and {"table", "paragraphs"} <= data[0].keys():
        return "tatqa"
    raise ValueError(f"{path}: neither SQuAD, TAT-QA nor BEIR")


def dataset_name(path: Path) -> str:
    path = path.resolve()
    # ../shared/eval/scifact/beir -> scifact
    return path.parent.name if path.is_dir() and path.name == "beir" else path.stem


def load_qa_set(path: Path, chunker: Chunker | None = None, max_documents: int | None = None) -> QASet:
    """Load a QA set; `chunker` is needed only for SQuAD sets of whole documents, which `max_documents` may cut
    down to their first N documents (and those documents' questions)."""
    fmt = detect_format(path)
    if fmt == "beir":
        return load_beir(path)
    if fmt == "tatqa":
        return load_tatqa(path)
    return load_squad(path, chunker, max_documents)


def load_squad(path: Path, chunker: Chunker | None = None, max_documents: int | None = None) -> QASet:
    name = dataset_name(path)
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    contexts = [(article, paragraph) for article in data for paragraph in article["paragraphs"]]
    mean_chars = sum(len(p["context"]) for _, p in contexts) / max(1, len(contexts))
    chunked = mean_chars > DOCUMENT_CONTEXT_CHARS
    if chunked and chunker is None:
        raise ValueError(f"{path}: contexts are whole documents and need a chunker")
    if chunked and max_documents is not None:
        contexts = contexts[:max_documents]

    units: list[Unit] = []
    questions: list[Question] = []
    skipped = 0
    for number, (_article, paragraph) in enumerate(contexts):
        context = paragraph["context"]
        document_id = f"{name}:{number}"
        if chunked:
            assert chunker is not None
            chunks = chunker.chunk(text_blocks(context), document_id=document_id, filename=name, groups=[])
            spans = locate(context, [c.text for c in chunks])
            context_units = [Unit(c.chunk_id, document_id, c.text) for c in chunks]
        else:
            spans = [(0, len(context))]
            context_units = [Unit(chunk_id_for(document_id, 0), document_id, context)]
        units.extend(context_units)
        for qa in paragraph["qas"]:
            starts = [a["answer_start"] for a in qa.get("answers") or [] if a.get("answer_start", -1) >= 0]
            gold = frozenset(
                unit.unit_id
                for unit, (start, end) in zip(context_units, spans, strict=True)
                if any(start <= s < end for s in starts)
            )
            if qa.get("is_impossible") or not gold:
                skipped += 1
                continue
            questions.append(Question(str(qa["id"]), qa["question"], gold))
    return QASet(name, "squad", units, questions, chunked=chunked, skipped=skipped)


def text_blocks(context: str) -> list[Block]:
    return [Block("text", line.strip()) for line in context.split("\n") if line.strip()]


def locate(source: str, pieces: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans in `source` of `pieces` taken from it in order, possibly overlapping.

    Chunks re-join their sentences with their own separators, so pieces are matched with all whitespace removed.
    A piece that still does not match (the tokenizer dropped a control character) is placed by its first 32
    non-space characters.
    """
    positions = [i for i, ch in enumerate(source) if not ch.isspace()]
    squeezed = "".join(source[i] for i in positions)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for piece in pieces:
        needle = "".join(piece.split())
        if not needle:
            spans.append((0, 0))
            continue
        at = squeezed.find(needle, cursor)
        if at < 0:
            at = squeezed.find(needle[:32], cursor)
        if at < 0:
            raise ValueError(f"chunk not found in its source: {piece[:80]!r}")
        last = min(at + len(needle), len(positions)) - 1
        spans.append((positions[at], positions[last] + 1))
        cursor = at
    return spans


def load_beir(path: Path, split: str = "test") -> QASet:
    corpus_path = path / "corpus.jsonl.gz"
    opener = gzip.open if corpus_path.is_file() else open
    corpus_path = corpus_path if corpus_path.is_file() else path / "corpus.jsonl"
    units: list[Unit] = []
    unit_of: dict[str, str] = {}
    with opener(corpus_path, "rt", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            doc = json.loads(line)
            document_id = str(doc["_id"])
            text = "\n".join(part for part in (doc.get("title") or "", doc.get("text") or "") if part.strip())
            unit = Unit(chunk_id_for(document_id, 0), document_id, text)
            units.append(unit)
            unit_of[document_id] = unit.unit_id

    relevant: dict[str, set[str]] = {}
    with (path / "qrels" / f"{split}.tsv").open(encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 3 or not fields[2].lstrip("-").isdigit():
                continue  # the header
            if int(fields[2]) > 0 and fields[1] in unit_of:
                relevant.setdefault(fields[0], set()).add(unit_of[fields[1]])

    questions: list[Question] = []
    with (path / "queries.jsonl").open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                query = json.loads(line)
                if str(query["_id"]) in relevant:
                    questions.append(Question(str(query["_id"]), query["text"], frozenset(relevant[str(query["_id"])])))
    return QASet(dataset_name(path), "beir", units, questions)


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    if not rows:
        return ""
    width = max(len(r) for r in rows)

    def line(cells: Sequence[str]) -> str:
        cells = [*cells, *[""] * (width - len(cells))]
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ").strip() for c in cells) + " |"

    return "\n".join([line(rows[0]), "| " + " | ".join("---" for _ in range(width)) + " |", *map(line, rows[1:])])


def load_tatqa(path: Path) -> QASet:
    units: list[Unit] = []
    questions: list[Question] = []
    skipped = 0
    for context in json.loads(path.read_text(encoding="utf-8")):
        table = context["table"]
        table_unit = Unit(chunk_id_for(table["uid"], 0), table["uid"], markdown_table(table["table"]))
        units.append(table_unit)
        paragraph_unit: dict[str, str] = {}
        for paragraph in context["paragraphs"]:
            unit = Unit(chunk_id_for(paragraph["uid"], 0), paragraph["uid"], paragraph["text"])
            units.append(unit)
            paragraph_unit[str(paragraph["order"])] = unit.unit_id
        for question in context["questions"]:
            gold = {paragraph_unit[str(o)] for o in question.get("rel_paragraphs") or [] if str(o) in paragraph_unit}
            if "table" in (question.get("answer_from") or ""):
                gold.add(table_unit.unit_id)
            if not gold:
                skipped += 1
                continue
            questions.append(Question(question["uid"], question["question"], frozenset(gold)))
    return QASet(dataset_name(path), "tatqa", units, questions, skipped=skipped)


def sample(questions: Sequence[Question], limit: int | None) -> list[Question]:
    """`limit` questions spread evenly over the set (deterministic; the first N would cover only the first topics)."""
    if limit is None or limit >= len(questions):
        return list(questions)
    return [questions[i * len(questions) // limit] for i in range(max(0, limit))]
