"""How an original is sent: its name in Content-Disposition and, for plain text, the charset its bytes are in."""

from __future__ import annotations

import codecs
from urllib.parse import quote

from ingest.formats import detect_encoding

# Plain-text originals: sent with the charset detected in their bytes (ingest.formats.detect_encoding, through
# charset-normalizer), not Litestar's default UTF-8, so that GB2312, Big5 or Windows-1252 text reads right.
PLAIN_TEXT_TYPES = {"text/plain", "text/markdown", "text/csv", "text/tsv", "text/x-rst", "text/org"}

# Python's codec (its canonical name) -> the label browsers decode it by (the WHATWG Encoding Standard).
_WEB_LABELS = {
    "utf-8": "utf-8", "utf-8-sig": "utf-8", "ascii": "utf-8",
    "utf-16-le": "utf-16le", "utf-16-be": "utf-16be",
    "gb18030": "gb18030", "gbk": "gbk", "gb2312": "gbk", "big5": "big5", "cp950": "big5", "big5hkscs": "big5",
    "shift_jis": "shift_jis", "cp932": "shift_jis", "euc_jp": "euc-jp", "iso2022_jp": "iso-2022-jp",
    "euc_kr": "euc-kr", "cp949": "euc-kr",
    "iso8859-1": "windows-1252", "iso8859-15": "iso-8859-15", "koi8-r": "koi8-r", "koi8-u": "koi8-u",
    "mac-roman": "macintosh", "cp866": "ibm866", "cp874": "windows-874",
    **{f"cp125{n}": f"windows-125{n}" for n in range(9)},
    **{f"iso8859-{n}": f"iso-8859-{n}" for n in (2, 3, 4, 5, 6, 7, 8, 10, 13, 14, 16)},
}  # fmt: skip


def text_with_charset(data: bytes) -> tuple[bytes, str | None]:
    """The bytes to send and their charset label. The original bytes where a browser can decode their encoding
    (GB2312 stays GB2312, labelled gb18030, its superset); otherwise (UTF-32, a rare code page) the text
    transcoded to UTF-8. (data, None) for bytes that are no text in any known encoding."""
    encoding = detect_encoding(data)
    if encoding is None:
        return data, None
    try:
        canonical = codecs.lookup(encoding).name
    except LookupError:
        return data, None
    label = _WEB_LABELS.get(canonical)
    if label is not None:
        return data, label
    return data.decode(encoding, errors="replace").lstrip("\ufeff").encode("utf-8"), "utf-8"


def content_disposition(disposition: str, filename: str) -> str:
    """RFC 6266 with RFC 5987's `filename*=UTF-8''…`: every byte outside unreserved characters percent-encoded, so a
    Chinese name arrives whole and no quote, semicolon or line break can end the header value."""
    return f"{disposition}; filename*=UTF-8''{quote(filename or 'original', safe='')}"
