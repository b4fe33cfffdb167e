"""What the scratch index holds for each unit of a QA set.

A unit longer than the embedder's window is indexed as the chunks ingestion would make of it (so the dense side
sees all of its text, not its first 256 tokens) when the embedder knows its language
(EmbedderSettings.languages); a unit then scores as its best chunk: rankings are of units, each once, in the order
of its first chunk. Each entry in such a language also gets its sentences' vectors, as ingestion gives a chunk
(IngestSettings.sentence_vectors), for hybrid search's best-sentence list.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from evaluation.datasets import QASet, text_blocks
from ingest.chunk import Chunker
from ingest.partition import Block


@dataclass(frozen=True)
class IndexEntry:
    """What the scratch index holds for a unit: the unit itself, or one of its chunks when it is too long."""

    entry_id: str
    unit_id: str
    document_id: str
    ordinal: int
    text: str
    embed_text: str  # embedded and BM25-encoded (a chunk of a titled unit carries the title, as in ingestion)
    sentences: tuple[str, ...] = ()  # embedded for the sentence side of hybrid search, as ingestion does


def index_entries(qa_set: QASet, chunker: Chunker | None, long_units: Collection[str]) -> tuple[list[IndexEntry], int]:
    """The scratch index's entries and how many of `long_units` (unit ids) were split into chunks (none without
    a chunker)."""
    entries: list[IndexEntry] = []
    split = 0
    for unit in qa_set.units:
        if chunker is None or qa_set.chunked or unit.unit_id not in long_units:
            entries.append(IndexEntry(unit.unit_id, unit.unit_id, unit.document_id, 0, unit.text, unit.text))
            continue
        split += 1
        if qa_set.format == "beir" and "\n" in unit.text:  # title + abstract: the title heads every chunk
            title, body = unit.text.split("\n", 1)
            blocks = [Block("heading", title), *text_blocks(body)]
        else:
            blocks = text_blocks(unit.text)
        for chunk in chunker.chunk(blocks, document_id=unit.unit_id, filename=qa_set.name, groups=[]):
            entries.append(
                IndexEntry(
                    chunk.chunk_id,
                    unit.unit_id,
                    unit.document_id,
                    chunk.ordinal,
                    chunk.text,
                    chunk.embed_text or chunk.text,
                )
            )
    return entries, split
