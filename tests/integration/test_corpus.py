"""Every file of the shared ingestion corpus has an expected outcome, and partition + chunk produce it.

The table is tests/integration/corpus_expectations.json: per file (path relative to corpus/docs) either
`{"status": "ready", "pages": [min, max] | null, "chunks": [min, max], "contains": [...]?}` or
`{"status": "failed", "error": "<substring of the ParseError reason>"}`; `"slow": true` marks files that take tens of
seconds (OCR, the 600-800 page documents). They run in the default test run too; `-m "not slow"` skips them.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from ingest.chunk import Chunker
from ingest.partition import ParseError, partition_bytes, partition_file

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "docs"
EXPECTATIONS = json.loads((Path(__file__).parent / "corpus_expectations.json").read_text(encoding="utf-8"))
# The pipeline keeps this many tokens of a chunk for its section heading (ingest.pipeline).
HEADING_RESERVE_TOKENS = 48


def corpus_files() -> list[str]:
    return sorted(p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*") if p.is_file())


@pytest.fixture(scope="session")
def chunker() -> Chunker:
    from kb.container import build_embedder
    from kb.settings import Settings

    settings = Settings()
    embedder = build_embedder(settings)  # only its tokenizer is used: chunk sizes are counted in its tokens
    max_body = min(settings.ingest.chunk_tokens, embedder.max_tokens - HEADING_RESERVE_TOKENS)
    return Chunker(embedder, max_body, settings.ingest.chunk_overlap_tokens)  # type: ignore[arg-type]


def test_every_corpus_file_has_an_expectation_and_every_expectation_a_file() -> None:
    # No skip when the corpus is missing: a walk over nothing would pass and prove nothing.
    assert CORPUS.is_dir(), f"test corpus missing: {CORPUS} (../shared must be beside the checkout)"
    files = set(corpus_files())
    assert sorted(files - set(EXPECTATIONS)) == [], "corpus files without an expected outcome"
    assert sorted(set(EXPECTATIONS) - files) == [], "expectations for files that do not exist"


def _params() -> list:
    return [
        pytest.param(name, spec, id=name, marks=[pytest.mark.slow] if spec.get("slow") else [])
        for name, spec in sorted(EXPECTATIONS.items())
    ]


@pytest.mark.parametrize(("name", "spec"), _params())
def test_corpus_file(name: str, spec: dict, chunker: Chunker) -> None:
    path = CORPUS / name
    if spec["status"] == "failed":
        with pytest.raises(ParseError) as caught:
            partition_file(path, path.name)
        assert spec["error"] in str(caught.value)
        return

    blocks = partition_file(path, path.name)
    chunks = chunker.chunk(blocks, document_id="corpus", filename=path.name, groups=[])
    pages = [b.page for b in blocks if b.page is not None]
    page_count = max(pages) if pages else None
    if spec["pages"] is None:
        assert page_count is None
    else:
        assert page_count is not None and spec["pages"][0] <= page_count <= spec["pages"][1]
    assert spec["chunks"][0] <= len(chunks) <= spec["chunks"][1]
    # Headings become chunk sections (embedded with the text), so they count as found too.
    text = "\n".join(f"{c.section or ''}\n{c.text}" for c in chunks)
    for needle in spec.get("contains", []):
        assert needle in text, f"{needle!r} missing from {name}"


# --- files whose name lies, archives -----------------------------------------------------------------------------


def test_a_pdf_named_txt_is_read_as_a_pdf(tmp_path: Path) -> None:
    disguised = tmp_path / "notes.txt"
    disguised.write_bytes((CORPUS / "pdf" / "fake-memo.pdf").read_bytes())
    blocks = partition_file(disguised, disguised.name)
    assert blocks and blocks[0].page == 1
    assert not any("%PDF" in b.text for b in blocks)


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_zip_members_are_sectioned_by_name_and_nesting_is_bounded() -> None:
    innermost = _zip({"deep.txt": b"Three levels down: never read."})
    inner = _zip({"inner.txt": b"One level down: read.", "innermost.zip": innermost})
    outer = _zip({"top.txt": b"At the top: read.", "nested.zip": inner, "../escape.txt": b"Never read."})
    blocks = partition_bytes(outer, "bundle.zip")
    text = "\n".join(b.text for b in blocks)
    assert "At the top" in text and "One level down" in text
    assert "Three levels down" not in text and "Never read" not in text
    headings = [b.text for b in blocks if b.kind == "heading"]
    assert "top.txt" in headings and "nested.zip" in headings


def test_zip_bomb_through_partition() -> None:
    bomb = _zip({"zeros.txt": b"\0" * (4 * 1024 * 1024)})
    with pytest.raises(ParseError, match="^too large when unpacked"):
        partition_bytes(bomb, "harmless.zip")


def test_unknown_binary_is_unsupported() -> None:
    with pytest.raises(ParseError, match="^unsupported format: "):
        partition_bytes(bytes(range(256)) * 64, "mystery.docx")


def test_damaged_files_are_corrupt_and_say_so() -> None:
    docx = (CORPUS / "docx" / "fake.docx").read_bytes()
    for name, data in [
        ("half.docx", docx[: len(docx) // 2]),
        ("garbage.pdf", b"%PDF-1.4\n" + bytes(range(256)) * 20),
        ("broken.zip", b"PK\x03\x04" + b"x" * 500),
    ]:
        with pytest.raises(ParseError, match="^corrupt: ") as caught:
            partition_bytes(data, name)
        assert "kb-partition-" not in str(caught.value)  # no temporary paths in what users read
