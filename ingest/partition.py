"""Parse a file into blocks (heading / text / table, with page numbers) using unstructured, offline."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_SENTENCE_END = re.compile(r"[。！？；.!?;:：]\s*$")


class ParseError(Exception):
    """A document that cannot be parsed, with a reason a user can act on."""


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
            joined += ("" if _CJK.match(joined[-1]) and _CJK.match(line[0]) else " ") + line
        if joined:
            paragraphs.append(joined)
    return "\n".join(paragraphs)


def looks_like_heading(text: str) -> bool:
    """unstructured labels most Chinese paragraphs `Title`; a real heading is short and unpunctuated."""
    stripped = text.strip()
    if not stripped or "\n" in stripped:
        return False
    limit = 40 if _CJK.search(stripped) else 120
    return len(stripped) <= limit and not _SENTENCE_END.search(stripped)


def _partition(path: Path, filename: str, strategy: str) -> list:
    from unstructured.partition.auto import partition

    return partition(
        filename=str(path),
        metadata_filename=filename,
        strategy=strategy,
        # OCR needs the scripts named; for text layers languages only feed metadata.
        languages=["eng", "chi_sim"] if strategy == "ocr_only" else None,
        infer_table_structure=True,
    )


def partition_file(path: Path, filename: str) -> list[Block]:
    try:
        elements = _partition(path, filename, "fast")
        is_pdf = path.read_bytes()[:5] == b"%PDF-"
        if is_pdf and not any(e.text.strip() for e in elements):
            # No text layer: a scanned PDF. OCR it (tesseract) rather than report it empty.
            elements = _partition(path, filename, "ocr_only")
    except ParseError:
        raise
    except Exception as exc:  # unstructured raises many types; the reason must reach the user
        message = str(exc).strip() or type(exc).__name__
        if "password" in message.lower() or "encrypt" in message.lower():
            raise ParseError("password protected") from exc
        raise ParseError(f"cannot parse {filename}: {message[:300]}") from exc

    blocks: list[Block] = []
    for element in elements:
        category = getattr(element, "category", "")
        text = (element.text or "").strip()
        if category in _SKIPPED_CATEGORIES or not text:
            continue
        page = getattr(element.metadata, "page_number", None)
        if category == "Table":
            blocks.append(Block("table", text, page, getattr(element.metadata, "text_as_html", None)))
        elif category == "Title" and looks_like_heading(text):
            blocks.append(Block("heading", text, page))
        else:
            blocks.append(Block("text", _unwrap(text), page))
    if not blocks:
        raise ParseError("empty: no text could be extracted")
    return blocks
