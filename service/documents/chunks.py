"""A citation as a reader opens it: the cited chunk with its neighbours in document order, read from the index inside
the caller's groups (the same filter as a search), so that a page can show the passage and mark the cited span."""

from __future__ import annotations

from dataclasses import dataclass

from ingest.chunk import chunk_id_for
from kb.models import Document, Passage
from kb.ports import VectorIndex
from service.auth import Principal, scoped_filter
from service.search.filters import visible

MAX_NEIGHBOURS = 5
# Where a chunk id is not one the ingest pipeline derives (older indexes, hand-built chunks), the document is read in
# order up to this many chunks to find it.
SCAN_LIMIT = 20_000


@dataclass
class ChunkView:
    chunk: Passage
    before: list[Passage]
    after: list[Passage]


def _ordinal(document: Document, chunk_id: str) -> int | None:
    """The ordinal of `chunk_id` in the document's live version, where the id is the one ingest derives from
    (document, version, ordinal) (ingest.chunk.chunk_id_for): a few microseconds per chunk, no index read."""
    version = document.live_version or document.version
    for ordinal in range(document.chunks or 0):
        if chunk_id_for(document.document_id, ordinal, version) == chunk_id:
            return ordinal
    return None


def read_chunk(
    index: VectorIndex, principal: Principal, document: Document, chunk_id: str, neighbours: int
) -> ChunkView | None:
    """The chunk `chunk_id` of `document` with up to `neighbours` chunks on each side, all of them inside the
    caller's groups; None when the document has no such live chunk (a citation of a version since replaced)."""
    if not 0 <= neighbours <= MAX_NEIGHBOURS:
        raise ValueError(f"neighbours must be 0 to {MAX_NEIGHBOURS}")
    search_filter = scoped_filter(principal, None)
    search_filter.document_ids = [document.document_id]
    ordinal = _ordinal(document, chunk_id)
    if ordinal is not None:
        probe = Passage(chunk_id, document.document_id, document.filename, "", 0.0, ordinal=ordinal)
        passages = visible(index.neighbours(probe, neighbours, search_filter), search_filter)
    else:
        passages = visible(index.document_chunks(document.document_id, search_filter, SCAN_LIMIT), search_filter)
    at = next((i for i, p in enumerate(passages) if p.chunk_id == chunk_id), None)
    if at is None:
        return None
    cited = passages[at]
    # In ordinal order already; a scan of the whole document is cut to the neighbours here.
    before = [p for p in passages[:at] if p.ordinal >= cited.ordinal - neighbours]
    after = [p for p in passages[at + 1 :] if p.ordinal <= cited.ordinal + neighbours]
    return ChunkView(cited, before, after)
