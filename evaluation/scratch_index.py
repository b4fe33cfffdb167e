"""A throwaway index of a QA set's entries: built as the container builds the service's index, so an evaluation
measures the fusion and BM25 settings the service would search with."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from evaluation.datasets import QASet
from evaluation.entries import IndexEntry
from kb.container import build_scratch_index
from kb.models import Chunk
from kb.ports import VectorIndex
from kb.settings import Settings


@contextmanager
def scratch_index(
    settings: Settings,
    qa_set: QASet,
    vectors: np.ndarray,
    entries: Sequence[IndexEntry] | None = None,
    sentence_vectors: Sequence[np.ndarray] | None = None,
    batch: int = 512,
    *,
    filenames: Mapping[str, str] | None = None,
    titles: Mapping[str, str | None] | None = None,
) -> Iterator[VectorIndex]:
    """A fresh Qdrant Edge shard in a temporary directory holding the set's units (or `entries`), with the fusion
    and BM25 settings of `settings.index`; removed on exit. `sentence_vectors`: per entry, its sentences' vectors.

    `filenames` and `titles`, by document id: what each document is called (Chunk.filename, Chunk.title), which BM25
    reads (IndexSettings.name_weight); a document without a file name is called by the set's name, the same for
    all, which names none of them."""
    filenames, titles = filenames or {}, titles or {}
    if entries is None:
        entries = [IndexEntry(u.unit_id, u.unit_id, u.document_id, 0, u.text, u.text) for u in qa_set.units]
    with tempfile.TemporaryDirectory(prefix="kb-eval-") as directory:
        index = build_scratch_index(settings, int(vectors.shape[1]), Path(directory) / "index")
        try:
            for first in range(0, len(entries), batch):
                chunks = [
                    Chunk(
                        chunk_id=e.entry_id, document_id=e.document_id, ordinal=e.ordinal, text=e.text,
                        filename=filenames.get(e.document_id, qa_set.name), title=titles.get(e.document_id),
                        embed_text=e.embed_text if e.embed_text != e.text else None,
                    )
                    for e in entries[first : first + batch]
                ]  # fmt: skip
                index.upsert(
                    chunks,
                    vectors[first : first + len(chunks)].tolist(),
                    [v.tolist() for v in sentence_vectors[first : first + len(chunks)]] if sentence_vectors else None,
                )
            yield index
        finally:
            index.close()
