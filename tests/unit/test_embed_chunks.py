"""Chunk and sentence vectors for the index (ingest.pipeline.embed_chunks)."""

from __future__ import annotations

from ingest.pipeline import embed_chunks
from kb.models import Chunk
from tests.fakes import FakeEmbedder


def recording_embedder() -> FakeEmbedder:
    """Each text's vector names its batch and its place in it, so the test can tell which vector went where."""
    return FakeEmbedder(vector=lambda call, position, _text: [float(call), float(position)])


def _chunk(text: str, ordinal: int, embed_text: str | None = None) -> Chunk:
    return Chunk(chunk_id=f"c{ordinal}", document_id="d", ordinal=ordinal, text=text, filename="d.txt",
                 embed_text=embed_text)  # fmt: skip


def test_sentences_are_embedded_with_their_chunks_in_one_call() -> None:
    embedder = recording_embedder()
    chunks = [
        _chunk("The first point. The second point.", 0, embed_text="Intro\nThe first point. The second point."),
        _chunk("只有中文。第二句。", 1),
        _chunk("One sentence only", 2),
    ]

    vectors, sentence_vectors = embed_chunks(embedder, chunks, ["en"])  # type: ignore[arg-type]

    [texts] = embedder.calls
    # The chunks' embedded texts first, then the sentences of the English one (its heading line included).
    assert texts == [
        "Intro\nThe first point. The second point.", "只有中文。第二句。", "One sentence only",
        "Intro", "The first point.", "The second point.",
    ]  # fmt: skip
    assert vectors == [[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]]
    # The Chinese chunk gets none with an English-only embedder; a single sentence is its chunk's own vector.
    assert sentence_vectors == [[[1.0, 3.0], [1.0, 4.0], [1.0, 5.0]], [], []]


def test_a_multilingual_embedder_gets_chinese_sentences_and_none_turns_them_off() -> None:
    chunks = [_chunk("只有中文。第二句。", 0)]

    _, multilingual = embed_chunks(recording_embedder(), chunks, ["*"])  # type: ignore[arg-type]
    embedder = recording_embedder()
    _, off = embed_chunks(embedder, chunks, None)  # type: ignore[arg-type]

    assert len(multilingual[0]) == 2
    assert off == [[]]
    assert embedder.calls == [["只有中文。第二句。"]]
