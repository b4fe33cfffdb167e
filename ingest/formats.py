"""What a file is, judged from its bytes: content-type sniffing, text decoding, bounded archive expansion.

Nothing here trusts a file name beyond breaking ties between text formats that share the same bytes (a CSV and a
Markdown file are both plain text). Binary formats come from magic numbers and container structure.
"""

from __future__ import annotations

import bz2
import codecs
import io
import lzma
import os
import posixpath
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any


class ParseError(Exception):
    """A document that cannot be parsed, with a reason a user can act on (shown to users, asserted by tests):
    `password protected`, `empty`, `unsupported format: <mime>`, `corrupt: ...`, `too large when unpacked: ...`."""


OCTET_STREAM = "application/octet-stream"
EMPTY = "inode/x-empty"
ZIP = "application/zip"

# Text formats we decode ourselves (any encoding) before handing them to a partitioner.
TEXT_TYPES = {
    "text/plain",
    "text/markdown",
    "text/html",
    "text/csv",
    "text/tsv",
    "text/x-rst",
    "text/org",
    "application/xml",
    "text/xml",
    "application/json",
    "application/x-ndjson",
    "application/yaml",
    "message/rfc822",
}

# The extension unstructured's partitioners expect for each type we hand them.
EXTENSIONS = {
    "application/pdf": ".pdf",
    "application/msword": ".doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/vnd.ms-powerpoint": ".ppt",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": ".pptx",
    "application/vnd.ms-excel": ".xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx",
    "application/vnd.ms-outlook": ".msg",
    "application/vnd.oasis.opendocument.text": ".odt",
    "application/epub": ".epub",
    "text/rtf": ".rtf",
    "text/plain": ".txt",
    "text/markdown": ".md",
    "text/html": ".html",
    "text/csv": ".csv",
    "text/tsv": ".tsv",
    "text/x-rst": ".rst",
    "text/org": ".org",
    "application/xml": ".xml",
    "message/rfc822": ".eml",
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/tiff": ".tiff",
    "image/bmp": ".bmp",
    "image/heic": ".heic",
    "image/webp": ".webp",
}

_TEXT_BY_EXTENSION = {
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".json": "application/json",
    ".ndjson": "application/x-ndjson",
    ".jsonl": "application/x-ndjson",
}

# Text unstructured could not place (an encoding it does not detect): the extension picks among text formats.
_TEXT_FALLBACK_BY_EXTENSION = {
    ".md": "text/markdown", ".markdown": "text/markdown", ".csv": "text/csv", ".tsv": "text/tsv",
    ".html": "text/html", ".htm": "text/html", ".xml": "application/xml", ".rst": "text/x-rst", ".org": "text/org",
    ".eml": "message/rfc822",
}  # fmt: skip

_BOMS = [  # longest first: the UTF-32-LE BOM begins with the UTF-16-LE one
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
]


def _magic(data: bytes) -> str:
    try:
        import magic

        return magic.from_buffer(data[: 1 << 16], mime=True) or OCTET_STREAM
    except Exception:  # libmagic missing or confused: the caller falls back to other evidence
        return OCTET_STREAM


def _utf16_or_32_without_bom(data: bytes) -> str | None:
    """Plain text in UTF-16/32 without a BOM: NUL bytes in a regular pattern, which charset detectors often miss."""
    sample = data[:4096]
    if len(sample) < 8 or sample.count(0) < len(sample) // 4:
        return None
    if len(sample) % 4 == 0:
        quads = [sample[i : i + 4] for i in range(0, len(sample) - 3, 4)]
        if all(q[2:] == b"\0\0" and q[1] == 0 for q in quads[:64]):
            return "utf-32-le"
        if all(q[:2] == b"\0\0" and q[2] == 0 for q in quads[:64]):
            return "utf-32-be"
    even_zero = sum(1 for b in sample[0::2] if b == 0)
    odd_zero = sum(1 for b in sample[1::2] if b == 0)
    half = len(sample) // 2
    if odd_zero > half * 0.6 and even_zero < half * 0.1:
        return "utf-16-le"
    if even_zero > half * 0.6 and odd_zero < half * 0.1:
        return "utf-16-be"
    return None


_SINGLE_BYTE_LATIN = {
    "cp1250", "cp1252", "cp1254", "cp1257", "latin_1", "iso8859_2", "iso8859_3", "iso8859_4", "iso8859_9",
    "iso8859_10", "iso8859_13", "iso8859_14", "iso8859_15", "iso8859_16", "mac_roman", "mac_latin2", "cp850",
}  # fmt: skip


def detect_encoding(data: bytes) -> str | None:
    """The encoding of text bytes, or None when they are not text in any encoding we recognise."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            return name + ("-sig" if name == "utf-8" else "")
    wide = _utf16_or_32_without_bom(data)
    if wide:
        return wide
    try:
        data.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(data[: 1 << 20]).best()
    if best is None:
        return None
    encoding = best.encoding
    if encoding in _SINGLE_BYTE_LATIN and encoding != "cp1252":
        # Single-byte Latin code pages decode the same bytes with equal ease (cp1250 turns "ï" into "ď"); prefer
        # Windows-1252, the legacy default for Western text, unless it reads clearly worse.
        western = from_bytes(data[: 1 << 20], cp_isolation=["cp1252"]).best()
        if western is not None and western.chaos <= best.chaos + 0.02:
            encoding = "cp1252"
    # GB2312 text often contains characters only GB18030 (its superset) can decode; the superset never hurts.
    if encoding.replace("_", "").lower() in {"gb2312", "gbk"}:
        encoding = "gb18030"
    return encoding


def decode_text(data: bytes) -> str:
    """Text in whatever encoding (BOM or not, UTF-16/32, GB2312/GB18030, Big5, cp1252, ...) as a str."""
    encoding = detect_encoding(data)
    if encoding is None:
        raise ParseError("unsupported format: binary data that is not text in any known encoding")
    text = data.decode(encoding, errors="replace")
    return text.lstrip("\ufeff").replace("\r\n", "\n")


def _looks_like_text(data: bytes) -> bool:
    sample = data[: 1 << 14]
    if any(sample.startswith(bom) for bom, _ in _BOMS) or _utf16_or_32_without_bom(sample):
        return True
    if b"\0" in sample:
        return False
    control = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13, 27))
    return control <= len(sample) // 100


def _is_encrypted_ooxml(data: bytes) -> bool:
    """Password-protected DOCX/XLSX/PPTX are OLE containers holding EncryptionInfo + EncryptedPackage."""
    if not data.startswith(_OLE_MAGIC):
        return False
    try:
        import olefile

        with olefile.OleFileIO(io.BytesIO(data)) as ole:
            return ole.exists("EncryptionInfo") and ole.exists("EncryptedPackage")
    except Exception:
        return False


_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_BASED = {
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.oasis.opendocument.text",
    "application/epub",
    ZIP,
}
_OLE_BASED = {"application/msword", "application/vnd.ms-powerpoint", "application/vnd.ms-excel",
              "application/vnd.ms-outlook"}  # fmt: skip


def _consistent(mime: str, data: bytes, magic_type: str) -> bool:
    """Whether the bytes can be `mime` at all: guards against a type taken from the file name alone."""
    if mime in _ZIP_BASED:
        return data.startswith(b"PK\x03\x04")
    if mime in _OLE_BASED:
        return data.startswith(_OLE_MAGIC)
    if mime == "application/pdf":
        return b"%PDF-" in data[:1024]
    if mime == "text/rtf":
        return data.lstrip()[:5] == b"{\\rtf"
    if mime.startswith("image/"):
        return magic_type.startswith("image/")
    if mime in TEXT_TYPES:
        return _looks_like_text(data)
    return True


def sniff_content_type(data: bytes, filename: str) -> str:
    """The MIME type of `data`, from its bytes; the file name only separates text formats with identical bytes."""
    if not data.strip():
        return EMPTY if not data else "text/plain"
    if _is_encrypted_ooxml(data):
        return "application/encrypted"
    from unstructured.file_utils.filetype import detect_filetype
    from unstructured.file_utils.model import FileType

    ext = os.path.splitext(filename)[1].lower()
    detected: str | None = None
    try:
        file_type = detect_filetype(file=io.BytesIO(data), metadata_file_path=filename or None)
        if file_type not in (None, FileType.UNK, FileType.EMPTY):
            detected = file_type.mime_type
    except Exception:  # unstructured gives up on text it cannot decode; we decode better below
        detected = None
    magic_type = _magic(data)
    if detected == "application/json" and ext not in (".json", ".ndjson", ".jsonl"):
        detected = None  # unstructured calls any text that parses as JSON json; the bytes' own kind decides
    if detected is not None and not _consistent(detected, data, magic_type):
        detected = None  # unstructured fell back to the extension for bytes it could not place
    if detected is None:
        if magic_type.startswith("text/") or (magic_type == OCTET_STREAM and _looks_like_text(data)):
            if data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"[") and ext in _TEXT_BY_EXTENSION:
                return _TEXT_BY_EXTENSION[ext]
            if magic_type in ("text/html", "text/xml"):
                return "text/html" if magic_type == "text/html" else "application/xml"
            return _TEXT_BY_EXTENSION.get(ext) or _TEXT_FALLBACK_BY_EXTENSION.get(ext, "text/plain")
        return magic_type
    if detected == "text/plain" and ext in _TEXT_BY_EXTENSION:
        return _TEXT_BY_EXTENSION[ext]
    if detected in ("text/plain", "text/markdown") and magic_type == "text/html" and ext in (".html", ".htm"):
        return "text/html"
    return detected


# --- archives -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 1000
    max_total_bytes: int = 256 * 1024 * 1024
    max_ratio: float = 100.0  # uncompressed / compressed, for members of at least ratio_min_bytes
    ratio_min_bytes: int = 1024 * 1024


DEFAULT_LIMITS = ArchiveLimits()


def _safe_member_name(name: str) -> str | None:
    """The member's path if it is a plain relative path; None for traversal, absolute paths and junk."""
    name = name.replace("\\", "/")
    if not name or name.endswith("/") or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    parts = name.split("/")
    if any(p in ("..", "") for p in parts):
        return None
    if parts[0] == "__MACOSX" or parts[-1] in (".DS_Store", "Thumbs.db"):
        return None
    return posixpath.normpath(name)


TOO_LARGE = "too large when unpacked"
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile's own layout of a member's local file header
_BLOCK = 1 << 20


def _too_large(detail: str) -> ParseError:
    return ParseError(f"{TOO_LARGE}: {detail} (a decompression bomb?)")


def check_zip_container(data: bytes, limits: ArchiveLimits = DEFAULT_LIMITS) -> int:
    """Refuse a zip-based file (.zip, and the OOXML/ODF/EPUB containers: docx, xlsx, pptx, odt, ods, odp, epub, ...)
    that would unpack to more than `limits` allow, before any partitioner or converter opens it. Returns the bytes
    it really unpacks to.

    The central directory is read first (member count, declared sizes and ratios: a bomb with honest headers costs
    nothing to refuse). Declared sizes can lie, and the readers downstream (python-docx, LibreOffice, pandoc) trust
    the compressed stream rather than the header, so every compressed member is then inflated here, in blocks that
    are counted and dropped, until its stream ends or the budget is spent: total and per-member ratio limits apply
    to the real sizes. Stored members cannot expand and are not read."""
    _, infos = _open_zip(data)
    _check_declared(infos, limits)
    total = 0
    for info in infos:
        if info.flag_bits & 0x1:
            raise ParseError("password protected")
        total += _inflated_size(data, info, limits, limits.max_total_bytes - total)
    return total


def expand_zip(
    data: bytes, limits: ArchiveLimits = DEFAULT_LIMITS, *, checked: bool = False
) -> list[tuple[str, bytes]]:
    """The (name, bytes) members of a zip archive, refusing decompression bombs: check_zip_container first (skipped
    when `checked`: the caller just ran it with the same limits), then the members are read with the sizes enforced
    again while reading."""
    if not checked:
        check_zip_container(data, limits)
    archive, infos = _open_zip(data)
    members: list[tuple[str, bytes]] = []
    total = 0
    for info in infos:
        name = _safe_member_name(info.filename)
        if name is None:
            continue
        chunks: list[bytes] = []
        size = 0
        try:
            with archive.open(info) as stream:
                while block := stream.read(_BLOCK):
                    size += len(block)
                    total += len(block)
                    if total > limits.max_total_bytes:
                        raise _too_large(f"more than {limits.max_total_bytes} bytes")
                    _check_ratio(info.filename, size, info.compress_size, limits)
                    chunks.append(block)
        except ParseError:
            raise
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as exc:
            raise ParseError(f"corrupt: zip member {name}: {exc}") from exc
        members.append((name, b"".join(chunks)))
    return members


def _open_zip(data: bytes) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        return archive, [i for i in archive.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise ParseError(f"corrupt: not a readable zip archive ({exc})") from exc


def _check_declared(infos: list[zipfile.ZipInfo], limits: ArchiveLimits) -> None:
    if len(infos) > limits.max_members:
        raise _too_large(f"{len(infos)} members (limit {limits.max_members})")
    declared = sum(i.file_size for i in infos)
    if declared > limits.max_total_bytes:
        raise _too_large(f"{declared} bytes (limit {limits.max_total_bytes})")
    for info in infos:
        _check_ratio(info.filename, info.file_size, info.compress_size, limits)


def _decompressor(info: zipfile.ZipInfo, raw: memoryview) -> tuple[Any, int]:
    """A streaming decompressor for the member's method whose `decompress(data, max_length)` bounds its output, and
    how many leading bytes of `raw` belong to the method's own header."""
    if info.compress_type == zipfile.ZIP_DEFLATED:
        return zlib.decompressobj(-15), 0
    if info.compress_type == zipfile.ZIP_BZIP2:
        return bz2.BZ2Decompressor(), 0
    if info.compress_type == zipfile.ZIP_LZMA:
        # APPNOTE 5.8.8: a 4-byte header (version, properties size) and the LZMA1 properties, then the raw stream.
        if len(raw) < 4:
            raise ParseError(f"corrupt: zip member {info.filename} is truncated")
        (size,) = struct.unpack("<H", raw[2:4])
        props = bytes(raw[4 : 4 + size])
        filters = [lzma._decode_filter_properties(lzma.FILTER_LZMA1, props)]  # type: ignore[attr-defined]
        return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=filters), 4 + size
    raise ParseError(f"unsupported format: zip member {info.filename} uses compression method {info.compress_type}")


def _inflated_size(data: bytes, info: zipfile.ZipInfo, limits: ArchiveLimits, budget: int) -> int:
    """The bytes the member's compressed stream really inflates to; raises ParseError past `budget` or the ratio.
    The stream is read from the member's local header to wherever it ends, whatever the headers declare."""
    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size > budget:
            raise _too_large(f"more than {limits.max_total_bytes} bytes")
        return info.compress_size
    header = data[info.header_offset : info.header_offset + _LOCAL_HEADER.size]
    if len(header) < _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise ParseError(f"corrupt: zip member {info.filename} has no local header")
    fields = _LOCAL_HEADER.unpack(header)
    start = info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1]  # name and extra field lengths
    raw = memoryview(data)[start:]
    declared = min(info.compress_size, len(raw))
    try:
        decompressor, position = _decompressor(info, raw)
        size = 0
        while not decompressor.eof:
            pending = getattr(decompressor, "unconsumed_tail", b"")  # zlib keeps input it had no room for
            if pending:
                chunk: bytes | memoryview = pending
            elif getattr(decompressor, "needs_input", True) is False:  # bz2/lzma buffer it inside
                chunk = b""
            elif position < len(raw):
                chunk, position = raw[position : position + _BLOCK], position + _BLOCK
            else:
                raise ParseError(f"corrupt: zip member {info.filename} is truncated")
            size += len(decompressor.decompress(chunk, _BLOCK))
            if size > budget:
                raise _too_large(f"more than {limits.max_total_bytes} bytes")
            consumed = min(position, len(raw)) - len(getattr(decompressor, "unconsumed_tail", b""))
            _check_ratio(info.filename, size, max(declared, consumed), limits)
    except ParseError:
        raise
    except (zlib.error, OSError, EOFError, ValueError, lzma.LZMAError) as exc:
        raise ParseError(f"corrupt: zip member {info.filename}: {exc}") from exc
    # Against the stream's real length: a member that declares a long compressed size it does not have.
    _check_ratio(info.filename, size, min(position, len(raw)) - len(decompressor.unused_data), limits)
    return size


def _check_ratio(name: str, size: int, compressed: int, limits: ArchiveLimits) -> None:
    if size >= limits.ratio_min_bytes and size > limits.max_ratio * max(compressed, 1):
        ratio = size / max(compressed, 1)
        raise _too_large(f"{name} expands {ratio:.0f}x (limit {limits.max_ratio:.0f}x)")
