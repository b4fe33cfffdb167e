"""Questions that name a document, and boilerplate that repeats a question's words, with the real parts: ingestion
pipeline (chunker, titles), MiniLM embedder, Qdrant Edge hybrid search and RetrievalService."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ingest.partition import Block
from ingest.pipeline import IngestionPipeline, embed_chunks
from kb.container import build_blob_store, build_index, build_registry
from kb.models import Chunk
from kb.ports import Embedder, VectorIndex
from kb.settings import RetrievalSettings, Settings
from service.search.service import RetrievalService

pytestmark = pytest.mark.integration

# The same statement in two companies' reports: only the name tells them apart.
STATEMENT = (
    "<table><tr><td></td><td>2019</td><td>2018</td></tr>"
    "<tr><td>Total revenue</td><td>4,210</td><td>3,980</td></tr>"
    "<tr><td>Cost of revenue</td><td>2,730</td><td>2,610</td></tr>"
    "<tr><td>Operating income</td><td>880</td><td>760</td></tr></table>"
)
STATEMENT_TEXT = "2019 2018\nTotal revenue 4,210 3,980\nCost of revenue 2,730 2,610\nOperating income 880 760"


def report(cover: list[Block]) -> list[Block]:
    return [
        *cover,
        Block("heading", "Consolidated Statements of Operations", 3),
        Block("table", STATEMENT_TEXT, 3, STATEMENT),
        Block("text", "Revenue grew on higher volumes in every segment, partly offset by lower prices.", 3),
    ]


@dataclass
class Stack:
    settings: Settings
    embedder: Embedder
    index: VectorIndex
    pipeline: IngestionPipeline

    def retrieval(self, **settings: float) -> RetrievalService:
        return RetrievalService(self.embedder, self.index, RetrievalSettings(**settings),  # type: ignore[arg-type]
                                languages=self.settings.embedder.languages)  # fmt: skip

    def ingest(self, filename: str, blocks: list[Block]) -> str:
        # The name in the bytes too: the same bytes under another name would be a duplicate of the first upload.
        original = "\n".join([filename, *(b.text for b in blocks)]).encode()
        document = self.pipeline.submit(filename, original).document
        self.pipeline.index_blocks(document.document_id, blocks)
        return document.document_id


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, embedder_on: Callable[[str], Embedder]) -> Iterator[Stack]:
    settings = Settings(data_dir=Path(tmp_path_factory.mktemp("named")))
    embedder = embedder_on("torch")
    index = build_index(settings, embedder.dimension)
    pipeline = IngestionPipeline(build_registry(settings), build_blob_store(settings), embedder, index,
                                 settings.ingest, settings.embedder.languages)  # fmt: skip
    try:
        yield Stack(settings, embedder, index, pipeline)
    finally:
        index.close()


def test_a_question_naming_a_company_finds_its_report_first(stack: Stack) -> None:
    # Three reports with the same statement, named by the file name, or by the title (the cover page's heading) when
    # the file name says nothing. Without the names the statements tie, and at most one question could find its own.
    cover = "This annual report describes the year's operations, strategy, governance and risks. " * 8
    acme = stack.ingest("Acme Corporation Annual Report 2019.pdf", report([Block("text", cover, 1)]))
    globex = stack.ingest("Globex_Holdings-AR2019.pdf", report([Block("text", cover, 1)]))
    initech = stack.ingest("annual-report-2019.pdf", report([Block("heading", "Initech Industries", 1),
                                                             Block("text", cover, 1)]))  # fmt: skip
    retrieval = stack.retrieval()
    for question, wanted in (
        ("For Acme Corporation, what was total revenue in 2019?", acme),
        ("What was the total revenue of Globex Holdings in 2019?", globex),
        ("Initech Industries: total revenue 2019", initech),
    ):
        statements = [p for p in retrieval.search_sync(question, top_k=10).passages if "Total revenue" in p.text]
        assert sorted(p.document_id for p in statements) == sorted([acme, globex, initech])
        assert statements[0].document_id == wanted, question
        # Initech's statement holds no "Initech" (its section is the statement's heading): the title found it.
        assert wanted != initech or "Initech" not in statements[0].text + (statements[0].section or "")


def test_a_contents_page_flagged_boilerplate_gives_way_to_the_section_it_lists(stack: Stack) -> None:
    document_id = "initrode-10k"
    texts = [
        ("Table of Contents\nItem 7. Liquidity and Capital Resources 45\nItem 7A. Market Risk 52\n"
         "Item 8. Financial Statements 60\nLiquidity and Capital Resources, Capital Resources 47", True),
        ("Our cash and cash equivalents of $412 million and the revolving credit facility are sufficient to fund "
         "operations, capital expenditures and debt service over the next twelve months.", False),
    ]  # fmt: skip
    chunks = [
        Chunk(chunk_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{document_id}/{i}")), document_id=document_id, ordinal=i,
              text=text, filename="Initrode 10-K 2019.pdf", section="Item 7. Liquidity and Capital Resources",
              embed_text=f"Item 7. Liquidity and Capital Resources\n{text}", boilerplate=flagged)
        for i, (text, flagged) in enumerate(texts)
    ]  # fmt: skip
    stack.index.upsert(chunks, *embed_chunks(stack.embedder, chunks, stack.settings.embedder.languages))
    question = "What are Initrode's liquidity and capital resources?"
    contents, content = chunks[0].chunk_id, chunks[1].chunk_id

    def order(retrieval: RetrievalService) -> list[str]:
        found = [p.chunk_id for p in retrieval.search_sync(question).passages]
        return [c for c in found if c in (contents, content)]

    # The contents page matches the question's words best: unweighted, it leads; weighted, the content does.
    assert order(stack.retrieval(boilerplate_weight=1.0)) == [contents, content]
    assert order(stack.retrieval()) == [content, contents]
