"""A document's title, for retrieval: BM25 reads it with the file name (kb.index.plan.sparse_text), so a question that
names a document ("In the Norwell Industries annual report, ...") finds that document's chunks.

The title is the first heading of the first pages when it reads like one. Metadata titles are not used: PDF producers
fill them with the authoring file's name ("Microsoft Word - draft3.docx"), a template's name or nothing, and the
blocks do not carry them anyway. A wrong title costs little (it only adds words to BM25's view of each chunk) but a
generic one ("Table of Contents", "FORM 10-K") would add the same words to many documents, so those are refused and
the file name alone stands for the document.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePath

from ingest.partition import Block

# Headings on these first pages may be the title: a cover page, then perhaps a notice or a contents page first.
TITLE_PAGES = 2
# Documents without page numbers (Word, HTML, text): the first blocks stand for the first pages.
TITLE_BLOCKS = 40
_MIN_LETTERS = 3
_MAX_CHARS = 150

# Headings that name a part of a document or a form, not the document: lowercased, inner whitespace collapsed,
# trailing punctuation dropped. Filings open with the SEC's cover lines; reports with a contents page.
_GENERIC = frozenset(
    {
        "table of contents", "contents", "index", "abstract", "summary", "executive summary", "introduction",
        "preface", "foreword", "acknowledgements", "acknowledgments", "overview", "appendix", "glossary",
        "confidential", "draft", "disclaimer", "notice", "important notice", "cover page", "title page", "title",
        "untitled",
        "united states securities and exchange commission", "securities and exchange commission",
        "form 10-k", "form 10-q", "form 8-k", "form 20-f", "annual report", "washington, d.c. 20549",
        "washington, dc 20549", "part i", "part ii", "item 1", "item 1. business", "目录", "目 录", "摘要",
    }
)  # fmt: skip
# Page markers, dates, numbers and section numbers alone: "Page 3", "3 of 12", "- 2 -", "2019", "March 31, 2020",
# "31/03/2020", "IV", "1.2.3".
_MONTHS = (
    "jan(uary)?|feb(ruary)?|mar(ch)?|apr(il)?|may|june?|july?|aug(ust)?|sep(t(ember)?)?|oct(ober)?|nov(ember)?"
    "|dec(ember)?"
)
_ROMAN = "m{0,3}(c[md]|d?c{0,3})(x[cl]|l?x{0,3})(i[xv]|v?i{0,3})"
_NOT_A_TITLE = re.compile(
    rf"""^(
        (page\s*)?(\d+|{_ROMAN})(\s*(of|/)\s*\d+)?       # page markers, roman numerals
      | [-–—\s\d.,:/()]+                                 # numbers, dates in digits, section numbers
      | ((\d{{1,2}}\s+)?({_MONTHS})\.?\s*(\d{{1,2}},?\s*)?\d{{4}})  # "March 31, 2020", "31 March 2020", "May 2020"
    )$""",
    re.IGNORECASE | re.VERBOSE,
)
_SPACES = re.compile(r"\s+")
_LETTER = re.compile(r"[^\W\d_]")
_WORD = re.compile(r"[^\W_]+")
_HAN_PAIR = re.compile(r"[\u3400-\u9fff]{2}")
# Extracted-text artefacts of a title typeset with letter spacing or dot leaders ("Contents ........ 3").
_DOT_LEADER = re.compile(r"(\.\s*){4,}\d*\s*$")


def _normalised(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def looks_like_title(text: str) -> bool:
    """A heading that can name its document: some letters, not too long, not a generic part of a document, a page
    marker, a number or a date, and not what PDF text extraction makes of other things: a line starting in lowercase
    (the middle of a sentence set large), letters one by one (rotated margin text, letter-spaced type)."""
    text = _normalised(text)
    if not text or len(text) > _MAX_CHARS or _DOT_LEADER.search(text):
        return False
    if len(_LETTER.findall(text)) < _MIN_LETTERS and not _HAN_PAIR.search(text):
        return False
    if _NOT_A_TITLE.match(text) or text.lower().rstrip(" .:;") in _GENERIC:
        return False
    if _HAN_PAIR.search(text):
        return True
    words = _WORD.findall(text)
    if _LETTER.match(words[0]) and words[0].islower():
        return False  # a line's continuation or a phrase set large ("the same", "eastern mediterranean")
    # Letters of rotated margin text or letter-spaced type come out one by one ("n u J", "V C . s c ["): no title.
    single_letters = sum(len(w) == 1 for w in words)
    return single_letters * 2 <= len(words) and any(len(w) >= 3 for w in words)


def document_title(blocks: Sequence[Block], filename: str) -> str | None:
    """The first heading of the first pages that looks like a title (`looks_like_title`); None when there is none, and
    when it only repeats the file name (the file name is read anyway).

    Cheap: it reads headings of the first `TITLE_PAGES` pages (or first `TITLE_BLOCKS` blocks when the format has
    no pages) and stops at the first that qualifies."""
    stem_words = _words(PurePath(filename).stem)
    for position, block in enumerate(blocks):
        if block.page is not None and block.page > TITLE_PAGES:
            break
        if block.page is None and position >= TITLE_BLOCKS:
            break
        if block.kind != "heading" or not looks_like_title(block.text):
            continue
        title = _normalised(block.text)
        return None if _words(title) <= stem_words else title
    return None


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}
