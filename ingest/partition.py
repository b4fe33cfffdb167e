"""Parse a file into blocks (heading / text / table, with page numbers) using unstructured, offline."""

from __future__ import annotations

import contextlib
import email
import email.message
import email.policy
import io
import itertools
import logging
import os
import re
import subprocess
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from ingest.formats import (
    DEFAULT_LIMITS,
    EMPTY,
    EXTENSIONS,
    TEXT_TYPES,
    TOO_LARGE,
    ZIP,
    ArchiveLimits,
    ParseError,
    check_zip_container,
    decode_text,
    detect_encoding,
    expand_zip,
    sniff_content_type,
)
from kb.text import CJK_PUNCTUATION_RANGES, HAN, HAN_RANGES

# unstructured phones home and prints a banner unless told not to; nothing may leave this machine.
os.environ.setdefault("SCARF_NO_ANALYTICS", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class _DropNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No languages specified")


logging.getLogger("unstructured").addFilter(_DropNotice())

BlockKind = Literal["heading", "text", "table"]

# Layout noise that would only pollute retrieval.
_SKIPPED_CATEGORIES = {"PageBreak", "Header", "Footer", "PageNumber", "Image", "Figure", "FigureCaption_"}
_COMPAT_CHARS = re.compile(r"[\u2e80-\u2fdf\ufb00-\ufb06]")
_CJK_OR_PUNCT = f"[{HAN_RANGES}{CJK_PUNCTUATION_RANGES}]"
_CJK_GAP = re.compile(rf"(?<={_CJK_OR_PUNCT})[ \t]+(?={_CJK_OR_PUNCT})")
_SENTENCE_END = re.compile(r"[。！？；.!?;:：]\s*$")


@dataclass
class Block:
    kind: BlockKind
    text: str
    page: int | None = None
    html: str | None = None  # tables: unstructured's text_as_html


def _unwrap(text: str) -> str:
    """Join the hard line breaks of PDF text layers: a space between Latin words, nothing between CJK characters.
    A blank line stays a paragraph break."""
    paragraphs = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in paragraph.splitlines() if line.strip()]
        joined = lines[0] if lines else ""
        for line in lines[1:]:
            joined += ("" if HAN.match(joined[-1]) and HAN.match(line[0]) else " ") + line
        if joined:
            paragraphs.append(joined)
    return "\n".join(paragraphs)


def looks_like_heading(text: str) -> bool:
    """unstructured labels most Chinese paragraphs `Title`; a real heading is short and unpunctuated."""
    stripped = text.strip()
    if not stripped or "\n" in stripped:
        return False
    limit = 40 if HAN.search(stripped) else 120
    return len(stripped) <= limit and not _SENTENCE_END.search(stripped)


_OCR_LANGUAGES = ["eng", "chi_sim"]
_IMAGE_TYPES = {"image/jpeg", "image/png", "image/tiff", "image/bmp", "image/heic", "image/webp"}
_ODT = "application/vnd.oasis.opendocument.text"
_OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# Types partitioned as plain text: unstructured's JSON partitioner reads only its own element schema.
_AS_PLAIN_TEXT = {"application/json", "application/x-ndjson", "application/yaml"}
_SIGNATURES = {"application/pkcs7-signature", "application/x-pkcs7-signature", "application/pgp-signature"}
MAX_NESTING = 1  # a zip (or e-mail) inside a zip (or e-mail) is opened; one level deeper is not
# Text a document may hold: about IngestSettings.max_pages (5000) pages' worth. More would take its single worker
# an hour or more to embed (12-23 chunks/s on 2 cores, bench/RESULTS.md), so it fails at once with this reason.
MAX_TEXT_CHARS = 20_000_000
# unstructured classifies each paragraph with spaCy, whose cost and memory grow faster than the paragraph: a 2 MB
# line of words took 67 s and 2.8 GB to partition (cut into paragraphs of this length: 23 s, 0.5 GB). Longer lines
# are cut into paragraphs of at most this length, at a space where there is one, before any partitioner sees them;
# so is any longer text block a partitioner returns, for the chunker's sake.
MAX_PARAGRAPH_CHARS = 10_000
# Text formats whose paragraphs are blank-line separated, where a cut line is a paragraph break.
_LINE_CUT_TYPES = {"text/plain", "text/markdown", "text/x-rst", "text/org"}


def partition_file(path: Path, filename: str, *, pdf_tables: bool = True) -> list[Block]:
    """Blocks of the file at `path`; `filename` is the name the user gave it (shown in errors, never trusted for
    the format). Raises ParseError with a user-facing reason. `pdf_tables`: rebuild the tables of text-based PDF
    pages (ingest/pdf_tables.py); False reads PDFs exactly as before that existed."""
    return partition_bytes(path.read_bytes(), filename, pdf_tables=pdf_tables)


def partition_bytes(
    data: bytes,
    filename: str,
    *,
    depth: int = 0,
    limits: ArchiveLimits = DEFAULT_LIMITS,
    pdf_tables: bool = True,
) -> list[Block]:
    """`limits`: how far zip-based files may unpack; for an archive's members, what the archive left of the budget.
    `pdf_tables`: as for partition_file."""
    if not data.strip():
        raise ParseError("empty: the file has no content")
    if data[:4] == b"PK\x03\x04":
        # Every zip-based format (docx/xlsx/pptx, odt/ods/odp, epub, zip, whatever the name says) is measured before
        # a partitioner or converter (python-docx, LibreOffice, pandoc) unpacks it: decompression bombs fail here.
        check_zip_container(data, limits)
    mime = sniff_content_type(data, filename)
    if mime == EMPTY:
        raise ParseError("empty: the file has no content")
    if mime == "application/encrypted":
        raise ParseError("password protected")
    if mime == ZIP:
        return _partition_zip(data, filename, depth, limits)
    if mime not in EXTENSIONS and mime not in _AS_PLAIN_TEXT:
        raise ParseError(f"unsupported format: {mime}")

    encoding = None
    if mime in TEXT_TYPES:
        text = decode_text(data)
        if not text.strip():
            raise ParseError("empty: the file has only whitespace")
        _check_text_length(len(text))
        if mime in _LINE_CUT_TYPES and _has_long_line(text):
            text = cut_long_lines(text)
            data, encoding = text.encode("utf-8"), "utf-8"
        elif mime != "message/rfc822" or not _is_ascii_compatible(data):
            data, encoding = text.encode("utf-8"), "utf-8"
    elif data.startswith(_OLE) and _ole_encrypted(data):
        raise ParseError("password protected")
    if mime == "application/pdf":
        _check_pdf_password(data)
    _check_email_encrypted(data, mime)

    if mime in _AS_PLAIN_TEXT:
        # Data, not prose: one text block; the chunker cuts it at line ends. unstructured would call every short
        # line a title, and its JSON partitioner reads only its own element schema.
        return _bounded([Block("text", text.strip())])
    try:
        elements = _run_unstructured(data, mime, EXTENSIONS[mime], filename, encoding, pdf_tables=pdf_tables)
    except ParseError:
        if mime not in ("text/csv", "text/tsv"):
            raise
        # A ragged CSV pandas refuses is still text.
        elements = _run_unstructured(data, "text/plain", ".txt", filename, encoding)
    blocks = _blocks(elements)
    if mime in ("application/xml", "text/xml") or all(b.kind == "heading" for b in blocks):
        # Nothing but short lines (XML leaves, a one-line file): headings alone would make no chunk at all.
        blocks = [Block("text", b.text, b.page) if b.kind == "heading" else b for b in blocks]
    if mime == "message/rfc822":
        blocks += _email_attachments(data, depth, limits)
    elif mime == "application/vnd.ms-outlook":
        blocks += _msg_attachments(data, depth, limits)
    if not blocks:
        raise ParseError("empty: no text could be extracted")
    return _bounded(blocks)


def _check_text_length(chars: int) -> None:
    if chars > MAX_TEXT_CHARS:
        raise ParseError(f"too long: {chars} characters of text (the limit is {MAX_TEXT_CHARS}, about 5000 pages)")


def _has_long_line(text: str) -> bool:
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        if end - start > MAX_PARAGRAPH_CHARS:
            return True
        start = end + 1
    return False


def _cut_points(text: str, limit: int) -> list[int]:
    """Where to cut `text` into pieces of at most `limit` characters: after the last space in each window, or at
    the limit itself where a window has no space (a single 50 MB "word")."""
    cuts, start = [], 0
    while len(text) - start > limit:
        space = text.rfind(" ", start + limit // 2, start + limit)
        start = space + 1 if space > 0 else start + limit
        cuts.append(start)
    return cuts


def cut_long_lines(text: str, limit: int = MAX_PARAGRAPH_CHARS) -> str:
    """`text` with every line longer than `limit` cut into paragraphs (blank lines) of at most `limit` characters."""
    lines = []
    for line in text.split("\n"):
        if len(line) <= limit:
            lines.append(line)
            continue
        bounds = [0, *_cut_points(line, limit), len(line)]
        lines.append("\n\n".join(line[a:b].strip() for a, b in itertools.pairwise(bounds)))
    return "\n".join(lines)


def _bounded(blocks: list[Block]) -> list[Block]:
    """Text blocks longer than MAX_PARAGRAPH_CHARS cut into several; the document's whole text within MAX_TEXT_CHARS."""
    _check_text_length(sum(len(b.text) for b in blocks))
    out: list[Block] = []
    for block in blocks:
        if block.kind != "text" or len(block.text) <= MAX_PARAGRAPH_CHARS:
            out.append(block)
            continue
        bounds = [0, *_cut_points(block.text, MAX_PARAGRAPH_CHARS), len(block.text)]
        pieces = (block.text[a:b].strip() for a, b in itertools.pairwise(bounds))
        out += [Block("text", piece, block.page) for piece in pieces if piece]
    return out


def _is_ascii_compatible(data: bytes) -> bool:
    return (detect_encoding(data[:4096]) or "").lower().replace("_", "-") not in {
        "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be", "utf-16", "utf-32",
    }  # fmt: skip


def _ole_encrypted(data: bytes) -> bool:
    """Legacy Office files (.doc/.xls/.ppt) with a password to open."""
    try:
        import msoffcrypto

        return bool(msoffcrypto.OfficeFile(io.BytesIO(data)).is_encrypted())
    except Exception:  # not an Office file msoffcrypto knows (e.g. Outlook .msg): not encrypted as far as we know
        return False


def _check_pdf_password(data: bytes) -> None:
    """A PDF that needs a password to open fails; one with only an owner password (copy protection) opens with ""."""
    try:
        from pypdf import PdfReader

        reader = PdfReader(io.BytesIO(data), strict=False)
        if not reader.is_encrypted:
            return
        opened = reader.decrypt("")
    except Exception:  # malformed: leave it to pdfminer, which repairs what it can
        return
    if not opened:
        raise ParseError("password protected")


def _run_unstructured(
    data: bytes, mime: str, extension: str, filename: str, encoding: str | None, *, pdf_tables: bool = True
) -> list:
    with tempfile.TemporaryDirectory(prefix="kb-partition-") as tmp:
        path = Path(tmp) / f"document{extension}"
        path.write_bytes(data)
        try:
            if mime == "application/pdf":
                return _partition_pdf(path, filename, pdf_tables=pdf_tables)
            if mime in _IMAGE_TYPES:
                return _ocr(path, filename, mime)
            return _partition(path, filename, mime, "fast", encoding)
        except ParseError:
            raise
        except Exception as exc:  # unstructured raises many types; the reason must reach the user
            message = (str(exc).strip() or type(exc).__name__).splitlines()[0].replace(str(path), filename)
            lowered = message.lower()
            if "password" in lowered or "encrypt" in lowered:
                raise ParseError("password protected") from exc
            raise ParseError(f"corrupt: {message[:300]}") from exc


def _has_text(elements: list) -> bool:
    return any((e.text or "").strip() for e in elements)


def _partition_pdf(path: Path, filename: str, *, pdf_tables: bool = True) -> list:
    """pdfminer's text layer; where pdfminer reads nothing (it gives up on some damaged files), poppler's
    pdftotext; where there is no text layer at all (a scan), OCR. With `pdf_tables`, the tables of the text layer
    are rebuilt (_with_pdf_tables); the fallbacks are read as they always were."""
    failure: Exception | None = None
    try:
        with _page_words_capture(pdf_tables) as captured:
            elements = _partition(path, filename, "application/pdf", "fast", None)
        if _has_text(elements):
            return _with_pdf_tables(path, elements, captured) if pdf_tables else elements
    except Exception as exc:  # noqa: BLE001 - poppler may still read it
        failure = exc
    elements = _pdftotext(path, filename)
    if _has_text(elements):
        return elements
    elements = _ocr(path, filename, "application/pdf")
    if not _has_text(elements) and failure is not None:
        raise failure
    return elements


# A page is searched for tables only when pdfminer's elements on it hold this many numbers in elements that are
# mostly numbers: a statement read column by column leaves dozens; prose pages, even with figures in the sentences,
# leave none, and skipping them keeps table detection's cost to the pages that have tables.
_TABLE_PAGE_MIN_NUMBERS = 6
_NUMBER_TOKEN = re.compile(r"^[($€£¥]*[-+−]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)[)%]*$|^[—–]$")


def _numeric_tokens(text: str) -> int:
    """How many numbers `text` holds when it is mostly numbers ("$ 1,234", "(56)", "2019 2018"), else 0."""
    tokens = [t for t in text.split() if t not in ("$", "€", "£", "¥", "%")]
    numbers = sum(1 for t in tokens if _NUMBER_TOKEN.match(t))
    return numbers if tokens and numbers >= 0.6 * len(tokens) else 0


def _table_pages(elements: list) -> list[int]:
    counts: dict[int, int] = {}
    for element in elements:
        page = getattr(element.metadata, "page_number", None)
        if page is not None and getattr(element.metadata, "coordinates", None) is not None:
            counts[page] = counts.get(page, 0) + _numeric_tokens(element.text or "")
    return sorted(page for page, count in counts.items() if count >= _TABLE_PAGE_MIN_NUMBERS)


def _is_table_page(page_elements: list) -> bool:
    """The gate of _table_pages for the elements of one page, as unstructured builds them."""
    return bool(_table_pages(page_elements))


@contextlib.contextmanager
def _page_words_capture(pdf_tables: bool) -> Iterator[dict]:
    """The words of the pages that pass the table gate, kept from unstructured's own pdfminer pass while inside
    (ingest.pdf_tables.capture_words), so table detection does not interpret those pages a second time. Nothing
    is captured without `pdf_tables`, or where capturing is not possible (table detection then reads the pages)."""
    if not pdf_tables:
        yield {}
        return
    from ingest.pdf_tables import capture_words

    with capture_words(_is_table_page) as captured:
        yield captured


def _with_pdf_tables(path: Path, elements: list, captured: dict | None = None) -> list:
    """`elements` with each table found on the pages that look like they hold one (ingest/pdf_tables.py) in
    place of the elements it was read from: one Table element (text_as_html = its rows) where the first of them
    stood, so reading order holds and the numbers are not indexed a second time as loose columns. Elements
    without coordinates stay. `captured`: words of pages kept from unstructured's pass (_page_words_capture).
    Table detection is an improvement, never a reason to fail a document: any error leaves the elements as
    pdfminer read them."""
    pages = _table_pages(elements)
    if not pages:
        return elements
    try:
        from ingest.pdf_tables import find_tables

        return _replace_with_tables(elements, find_tables(path, pages, captured))
    except Exception:  # noqa: BLE001 - pdfplumber on a damaged file, or a bug here: keep today's reading
        logger = logging.getLogger(__name__)
        logger.warning("PDF table detection failed; the text is kept as pdfminer read it", exc_info=True)
        return elements


def _element_box(element, width: float, height: float) -> tuple[float, float, float, float] | None:
    """The element's box in points from the page's top-left corner (the tables' space), or None."""
    from unstructured.documents.coordinates import PixelSpace

    coordinates = getattr(element.metadata, "coordinates", None)
    if coordinates is None or not coordinates.points or coordinates.system is None:
        return None
    points = coordinates.system.convert_multiple_coordinates_to_new_system(
        PixelSpace(width=width, height=height), coordinates.points
    )
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def _share_inside(box: tuple[float, float, float, float], bbox: tuple[float, float, float, float]) -> float:
    """How much of `box` lies in `bbox` (1 pt of slack), 0..1; a box without area counts by its centre."""
    x0, top, x1, bottom = bbox[0] - 1, bbox[1] - 1, bbox[2] + 1, bbox[3] + 1
    area = (box[2] - box[0]) * (box[3] - box[1])
    if area <= 0:
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        return 1.0 if x0 <= cx <= x1 and top <= cy <= bottom else 0.0
    inter = max(0.0, min(box[2], x1) - max(box[0], x0)) * max(0.0, min(box[3], bottom) - max(box[1], top))
    return inter / area


# An element this much inside a table is the table's; one partly inside (pdfminer joined a table's labels and the
# paragraph after it) keeps only its words outside the table.
_INSIDE = 0.95
_TOUCHING = 0.05


def _replace_with_tables(elements: list, found: dict) -> list:
    from unstructured.documents.elements import ElementMetadata, Table

    out: list = []
    placed: set[int] = set()

    def place(table, element) -> None:
        if id(table) in placed:
            return
        placed.add(id(table))
        metadata = ElementMetadata(
            page_number=table.page,
            filename=element.metadata.filename,
            filetype=element.metadata.filetype,
            text_as_html=table.html,
        )
        out.append(Table(text=table.text, metadata=metadata))

    for element in elements:
        page = getattr(element.metadata, "page_number", None)
        entry = found.get(page) if getattr(element, "category", "") != "Table" else None
        box = _element_box(element, *entry.size) if entry else None
        shares = [(_share_inside(box, t.bbox), t) for t in entry.tables] if box is not None else []
        share, table = max(shares, key=lambda s: s[0], default=(0.0, None))
        if table is None or share < _TOUCHING:
            out.append(element)
        elif share >= _INSIDE:
            place(table, element)
        else:
            rest = entry.text_outside(box, table)
            above = box[1] < table.bbox[1]
            if rest and above:
                element.text = rest
                out.append(element)
            place(table, element)
            if rest and not above:
                element.text = rest
                out.append(element)
    return out


def _pdftotext(path: Path, filename: str) -> list:
    """Text of each page from poppler's pdftotext (pages split at form feeds), as unstructured elements."""
    from unstructured.documents.elements import ElementMetadata, NarrativeText

    try:
        result = subprocess.run(
            ["pdftotext", "-enc", "UTF-8", str(path), "-"], capture_output=True, timeout=600, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if result.returncode != 0:
        return []
    elements = []
    for number, page in enumerate(result.stdout.decode("utf-8", errors="replace").split("\f"), start=1):
        for paragraph in re.split(r"\n\s*\n", page):
            if paragraph.strip():
                metadata = ElementMetadata(page_number=number, filename=filename)
                elements.append(NarrativeText(text=paragraph.strip(), metadata=metadata))
    return elements


def _ocr(path: Path, filename: str, mime: str) -> list:
    elements = _partition(path, filename, mime, "ocr_only", None)
    for element in elements:
        # Tesseract's chi_sim puts a space between every few characters: "新 鲜 甘 草 黄酮" -> "新鲜甘草黄酮".
        if element.text and HAN.search(element.text):
            element.text = _CJK_GAP.sub("", element.text)
    return elements


def _partition(path: Path, filename: str, mime: str, strategy: str, encoding: str | None) -> list:
    from unstructured.partition.auto import partition

    if mime == _ODT:
        # unstructured converts ODT with pandoc, whose sandbox (2.17, Debian 12) cannot write .docx; LibreOffice
        # converts it like a .doc.
        from unstructured.partition.doc import partition_doc

        return partition_doc(filename=str(path), metadata_filename=filename, infer_table_structure=True)
    return partition(
        filename=str(path),
        content_type=mime,
        metadata_filename=filename,
        encoding=encoding,
        strategy=strategy,
        # OCR needs the scripts named; for text layers languages only feed metadata.
        languages=_OCR_LANGUAGES if strategy == "ocr_only" else None,
        infer_table_structure=True,
        process_attachments=False,  # e-mail attachments go through partition_bytes (sniffing, OCR, limits)
    )


def _normalize(text: str) -> str:
    """PDF fonts often map CJK characters to their Kangxi radical look-alikes (⽤ U+2F64 for 用) and Latin letter
    pairs to ligatures (ﬁ): both break search. NFKC folds exactly these back; the rest of the text is untouched."""
    return _COMPAT_CHARS.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)


def _blocks(elements: list) -> list[Block]:
    blocks = _blocks_skipping(elements, _SKIPPED_CATEGORIES)
    if not blocks:
        # Everything was classed header/footer (it happens with unusual page coordinates): better than nothing.
        blocks = _blocks_skipping(elements, _SKIPPED_CATEGORIES - {"Header", "Footer"})
    return blocks


def _blocks_skipping(elements: list, skipped: set[str]) -> list[Block]:
    blocks: list[Block] = []
    for element in elements:
        category = getattr(element, "category", "")
        text = _normalize((element.text or "").strip())
        if category in skipped or not text:
            continue
        page = getattr(element.metadata, "page_number", None)
        if category == "Table":
            blocks.append(Block("table", text, page, getattr(element.metadata, "text_as_html", None)))
        elif category == "Title" and looks_like_heading(text):
            blocks.append(Block("heading", text, page))
        else:
            blocks.append(Block("text", _unwrap(text), page))
    return blocks


def _sectioned(name: str, blocks: list[Block]) -> list[Block]:
    """An attachment's or archive member's blocks under a heading with its name; its own headings keep the name as a
    prefix so every chunk says where it came from. Pages belong to the member, not the container: dropped."""
    out = [Block("heading", name)]
    for block in blocks:
        text = f"{name} — {block.text}" if block.kind == "heading" else block.text
        out.append(Block(block.kind, text, None, block.html))
    return out


def _embedded(name: str, data: bytes, depth: int, limits: ArchiveLimits) -> list[Block]:
    """An attachment or archive member: partitioned like a file; unreadable ones are skipped, not fatal, but a
    member too large when unpacked fails the whole file."""
    try:
        return _sectioned(name, partition_bytes(data, name, depth=depth + 1, limits=limits))
    except ParseError as exc:
        if str(exc).startswith(TOO_LARGE):
            raise
        logging.getLogger(__name__).info("skipping embedded %s: %s", name, exc)
        return []


def _partition_zip(data: bytes, filename: str, depth: int, limits: ArchiveLimits) -> list[Block]:
    if depth > MAX_NESTING:
        raise ParseError(f"unsupported format: archive nested more than {MAX_NESTING} level deep")
    members = expand_zip(data, limits, checked=True)  # partition_bytes checked it
    # One budget for the whole upload: what the members hold counts against what any of them may unpack to.
    inner = replace(limits, max_total_bytes=max(limits.max_total_bytes - sum(len(m) for _, m in members), 0))
    blocks: list[Block] = []
    for name, member in members:
        if depth + 1 > MAX_NESTING and member[:4] == b"PK\x03\x04" and name.lower().endswith(".zip"):
            continue
        blocks += _embedded(name, member, depth, inner)
    if not blocks:
        raise ParseError("empty: the archive holds no readable documents")
    return blocks


_ENCRYPTED_PARTS = {"application/pgp-encrypted", "application/pkcs7-mime", "application/x-pkcs7-mime"}


def _parse_email(data: bytes) -> email.message.Message | None:
    try:
        return email.message_from_bytes(data, policy=email.policy.compat32)
    except Exception:
        return None


def _check_email_encrypted(data: bytes, mime: str) -> None:
    """S/MIME- or PGP-encrypted mail: the body needs the recipient's key, which is as good as a password."""
    if mime == "message/rfc822":
        message = _parse_email(data)
        if message is None:
            return
        ctype = message.get_content_type()
        smime = (message.get_param("smime-type") or "").lower()
        if ctype == "multipart/encrypted" or (ctype in _ENCRYPTED_PARTS and smime != "signed-data"):
            raise ParseError("password protected: the message is encrypted")
    elif mime == "application/vnd.ms-outlook":
        try:
            from oxmsg import Message

            message = Message.load(io.BytesIO(data))
            kinds = {a.mime_type for a in message.attachments}
            smime = (message.message_class or "").upper().startswith("IPM.NOTE.SMIME") and not (
                message.message_class or ""
            ).upper().endswith("SIGNED")
        except Exception:
            return
        if smime or kinds & _ENCRYPTED_PARTS:
            raise ParseError("password protected: the message is encrypted")


def _email_attachments(data: bytes, depth: int, limits: ArchiveLimits) -> list[Block]:
    """Attachments and forwarded messages (message/rfc822 parts, digests) of an e-mail, each sectioned by name."""
    message = _parse_email(data)
    if message is None:
        return []
    blocks: list[Block] = []

    def visit(part: email.message.Message, index: str) -> None:
        nonlocal blocks
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            inner = part.get_payload()
            inner = inner[0] if isinstance(inner, list) and inner else inner
            if isinstance(inner, email.message.Message):
                name = part.get_filename() or str(inner.get("Subject") or f"message {index}")
                blocks += _embedded(name, inner.as_bytes(), depth, limits)
            return
        if part.is_multipart():
            for n, sub in enumerate(part.get_payload()):
                visit(sub, f"{index}.{n + 1}" if index else str(n + 1))
            return
        if ctype in _SIGNATURES:
            return
        name = part.get_filename()
        disposition = (part.get("Content-Disposition") or "").split(";")[0].strip().lower()
        if not name and disposition != "attachment":
            return  # a body part: partition_email has it already
        try:
            payload = part.get_payload(decode=True)
        except Exception:
            return
        if payload:
            blocks += _embedded(str(name or f"attachment {index}"), payload, depth, limits)

    if depth <= MAX_NESTING:
        visit(message, "")
    return blocks


def _msg_attachments(data: bytes, depth: int, limits: ArchiveLimits) -> list[Block]:
    if depth > MAX_NESTING:
        return []
    try:
        from oxmsg import Message

        message = Message.load(io.BytesIO(data))
        attachments = [(a.file_name or "attachment", a.file_bytes) for a in message.attachments]
    except Exception:
        return []
    blocks: list[Block] = []
    for name, payload in attachments:
        if payload:
            blocks += _embedded(name, payload, depth, limits)
    return blocks
