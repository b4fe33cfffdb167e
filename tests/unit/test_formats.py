"""Content-type sniffing, text decoding and bounded zip expansion (ingest.formats), on inputs built here."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import zipfile
from pathlib import Path

import pytest

from ingest.formats import (
    ArchiveLimits,
    ParseError,
    check_zip_container,
    decode_text,
    detect_encoding,
    expand_zip,
    sniff_content_type,
)

pytestmark = pytest.mark.unit

CHINESE = "汉语，又称中文、华语，指整个汉语族或者其语族里的一种语言。"


def tiny_pdf(text: str = "Hello from a tiny PDF") -> bytes:
    """A one-page PDF with a text layer, with a correct xref table."""
    stream = f"BT /F1 24 Tf 72 700 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def make_zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# --- sniffing ---------------------------------------------------------------------------------------------------


def test_a_pdf_named_txt_is_a_pdf() -> None:
    assert sniff_content_type(tiny_pdf(), "notes.txt") == "application/pdf"


def test_text_named_pdf_is_text() -> None:
    assert sniff_content_type(b"Just some plain words.\nAnd a second line.\n", "report.pdf") == "text/plain"


def test_office_containers_are_told_apart_by_their_contents() -> None:
    docx = make_zip({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w:document/>"})
    assert sniff_content_type(docx, "letter.bin").endswith("wordprocessingml.document")
    plain = make_zip({"a.txt": b"hello"})
    assert sniff_content_type(plain, "letter.docx") == "application/zip"


@pytest.mark.parametrize(
    ("data", "name", "expected"),
    [
        (b"# Title\n\nSome *markdown*.\n", "readme.md", "text/markdown"),
        (b"a,b\n1,2\n", "table.csv", "text/csv"),
        (b"<html><body><p>Hi</p></body></html>", "page.html", "text/html"),
        (b'{"a": 1}', "data.json", "application/json"),
        (b"key: value\nother: 2\n", "conf.yaml", "application/yaml"),
        (b"", "picture.txt", "image/png"),  # bytes filled in below: a real PNG
    ],
)
def test_sniffed_types(data: bytes, name: str, expected: str) -> None:
    if expected == "image/png":
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), "white").save(buffer, format="PNG")
        data = buffer.getvalue()
    assert sniff_content_type(data, name) == expected


def test_unknown_binary_is_reported_by_its_magic_type() -> None:
    mime = sniff_content_type(bytes(range(256)) * 64, "mystery.docx")
    assert mime not in ("text/plain", "application/vnd.openxmlformats-officedocument.wordprocessingml.document")


def test_gb2312_text_without_extension_is_text() -> None:
    assert sniff_content_type(CHINESE.encode("gb2312"), "hanyu") == "text/plain"


# --- encodings --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])
def test_unicode_encodings_with_and_without_bom(encoding: str) -> None:
    text = "Grüße aus Zürich. " + CHINESE
    assert decode_text(text.encode(encoding)) == text


def test_gb2312_and_big5_decode_to_the_same_characters() -> None:
    long_text = CHINESE * 4
    assert decode_text(long_text.encode("gb2312")) == long_text
    traditional = "維基大典者，網路為礎；集天下知、四海言、眾人志，書百科焉。始作者，維基媒體基金會也。" * 3
    assert decode_text(traditional.encode("big5")) == traditional


def test_cp1252_western_text() -> None:
    text = "Café “quotes” – naïve résumé costs 5€ in Köln. " * 3
    assert detect_encoding(text.encode("cp1252")) is not None
    assert decode_text(text.encode("cp1252")) == text


def test_binary_is_not_text() -> None:
    with pytest.raises(ParseError, match="unsupported format"):
        decode_text(bytes([0, 159, 146, 150, 0, 255, 254, 0, 1, 2, 3]) * 300)


# --- archives ---------------------------------------------------------------------------------------------------


def test_zip_bomb_by_compression_ratio() -> None:
    bomb = make_zip({"zeros.txt": b"\0" * (5 * 1024 * 1024)})
    assert len(bomb) < 50_000
    with pytest.raises(ParseError, match="^too large when unpacked"):
        expand_zip(bomb)


def test_zip_bomb_by_total_size_and_member_count() -> None:
    text = b"plain text that compresses a little. " * 1000
    archive = make_zip({f"part{i}.txt": text for i in range(5)})
    with pytest.raises(ParseError, match="^too large when unpacked"):
        expand_zip(archive, ArchiveLimits(max_total_bytes=100_000))
    with pytest.raises(ParseError, match="^too large when unpacked"):
        expand_zip(archive, ArchiveLimits(max_members=3))
    assert len(expand_zip(archive)) == 5


def test_understated_sizes_are_enforced_while_reading() -> None:
    archive = bytearray(make_zip({"zeros.txt": b"\0" * (3 * 1024 * 1024)}, zipfile.ZIP_DEFLATED))
    # Rewrite the declared uncompressed size (local header and central directory) to 100 bytes.
    real = (3 * 1024 * 1024).to_bytes(4, "little")
    assert archive.count(real) == 2
    archive = archive.replace(real, (100).to_bytes(4, "little"))
    with pytest.raises(ParseError, match="^too large when unpacked"):
        expand_zip(bytes(archive))


def test_traversal_and_junk_names_are_ignored() -> None:
    archive = make_zip(
        {
            "../evil.txt": b"escape",
            "/etc/passwd.txt": b"absolute",
            "C:/windows.txt": b"drive",
            "__MACOSX/._doc.txt": b"resource fork",
            "docs/ok.txt": b"kept",
        }
    )
    assert expand_zip(archive) == [("docs/ok.txt", b"kept")]


def test_not_a_zip_is_corrupt() -> None:
    with pytest.raises(ParseError, match="^corrupt"):
        expand_zip(b"PK\x03\x04 this is not really a zip")


def test_gb2312_markdown_and_csv_keep_their_format() -> None:
    markdown = f"# 标题\n\n{CHINESE}\n".encode("gb2312")
    assert sniff_content_type(markdown, "说明.md") == "text/markdown"
    assert sniff_content_type(f"列,值\n{CHINESE},1\n".encode("gb2312") * 3, "表.csv") == "text/csv"


# --- zip-based documents (OOXML, ODF, EPUB): check_zip_container ----------------------------------------------------

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "docs"
DOCX_PARTS = {"[Content_Types].xml": b"<Types/>", "_rels/.rels": b"<Relationships/>"}


def understate_sizes(archive: bytes, real_size: int, claimed: int = 100) -> bytes:
    """The archive with the member's declared uncompressed size (local header and central directory) rewritten."""
    real = real_size.to_bytes(4, "little")
    assert archive.count(real) == 2
    return archive.replace(real, claimed.to_bytes(4, "little"))


def test_a_docx_that_expands_too_far_is_refused_from_its_central_directory() -> None:
    bomb = make_zip({**DOCX_PARTS, "word/document.xml": b"<w:p/>" * 3_000_000})  # 18 MB of markup
    assert len(bomb) < 100_000
    with pytest.raises(ParseError, match=r"^too large when unpacked: word/document.xml expands \d+x"):
        check_zip_container(bomb)


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_lying_sizes_are_caught_by_inflating_with_a_budget(method: int) -> None:
    size = 30 * 1024 * 1024
    honest = make_zip({**DOCX_PARTS, "word/document.xml": b"\0" * size}, method)
    liar = understate_sizes(honest, size)
    with pytest.raises(ParseError, match="^too large when unpacked: word/document.xml expands"):
        check_zip_container(liar)


def test_the_total_budget_counts_real_bytes_not_declared_ones() -> None:
    size = 3 * 1024 * 1024
    members = {f"xl/worksheets/sheet{i}.xml": os.urandom(size) for i in range(3)}  # incompressible: ratio 1
    archive = make_zip(members)
    assert check_zip_container(archive) == 3 * size
    lying = archive
    for data in members.values():  # every declared size says 100 bytes; the real 9 MB still counts
        lying = lying.replace(len(data).to_bytes(4, "little"), (100).to_bytes(4, "little"))
    with pytest.raises(ParseError, match="^too large when unpacked: more than"):
        check_zip_container(lying, ArchiveLimits(max_total_bytes=8 * 1024 * 1024))


def test_too_many_members_and_corrupt_containers() -> None:
    with pytest.raises(ParseError, match=r"^too large when unpacked: 1001 members \(limit 1000\)"):
        check_zip_container(make_zip({f"OEBPS/p{i}.xhtml": b"<p/>" for i in range(1001)}))
    docx = make_zip({**DOCX_PARTS, "word/document.xml": os.urandom(50_000)})
    with pytest.raises(ParseError, match="^corrupt: "):
        check_zip_container(docx[: len(docx) // 2])


def test_stored_members_cannot_expand() -> None:
    archive = make_zip({"mimetype": b"application/epub+zip", "big.bin": b"\0" * (2 * 1024 * 1024)}, zipfile.ZIP_STORED)
    assert check_zip_container(archive) == 2 * 1024 * 1024 + 20


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress])
def test_stream_compressed_files_are_not_a_supported_format(compress) -> None:  # type: ignore[no-untyped-def]
    # gzip/bz2/xz files are never unpacked: the partitioners get no such input (partition_bytes says unsupported).
    mime = sniff_content_type(compress(b"\0" * 1_000_000), "notes.txt")
    assert mime.startswith("application/") and mime != "application/zip"


def test_every_zip_based_corpus_file_passes_the_check() -> None:
    """Real documents unpack to at most ~23x their size; no member of 1 MB or more expands beyond ~14x (limit 100x)."""
    checked = 0
    for path in sorted(CORPUS.rglob("*")):
        data = path.read_bytes() if path.is_file() else b""
        if data[:4] == b"PK\x03\x04":
            assert check_zip_container(data) >= len(data) // 2, path
            checked += 1
    assert checked >= 40  # docx, xlsx, pptx, odt, epub, zip (and a .doc/.ppt that are really OOXML)


# --- long lines and long texts (ingest.partition: the parts that need no partitioner) ------------------------------


def test_long_lines_are_cut_into_paragraphs_at_spaces() -> None:
    from ingest.partition import MAX_PARAGRAPH_CHARS, cut_long_lines

    line = "word " * (3 * MAX_PARAGRAPH_CHARS // 5)
    text = cut_long_lines(f"Title\n{line}\nshort line")
    paragraphs = text.split("\n\n")
    assert text.startswith("Title\n") and text.endswith("\nshort line")
    assert len(paragraphs) >= 3 and all(len(p) <= MAX_PARAGRAPH_CHARS for p in paragraphs[1:-1])
    assert text.replace("\n", " ").split() == f"Title {line} short line".split()  # nothing lost
    unbroken = "x" * (MAX_PARAGRAPH_CHARS * 2 + 5)  # no space at all: cut at the limit
    assert [len(p) for p in cut_long_lines(unbroken).split("\n\n")] == [MAX_PARAGRAPH_CHARS] * 2 + [5]


def test_a_text_past_the_character_limit_fails_before_any_partitioner() -> None:
    from ingest.partition import MAX_TEXT_CHARS, partition_bytes

    with pytest.raises(ParseError, match=r"^too long: \d+ characters of text \(the limit is"):
        partition_bytes(b"a" * (MAX_TEXT_CHARS + 1), "one-line.txt")
