"""Which search sides suit a query: the dense side only where the embedder knows the query's language."""

from __future__ import annotations

import re

from kb.ports import SearchMode
from kb.text import CJK, HANGUL, KANA

_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u024f]+")
MULTILINGUAL = "*"


def query_language(text: str) -> str:
    """A coarse script-level guess: "zh" / "ja" / "ko" when there are at least as many CJK characters (each about a
    word) as Latin-script words, else "en" (any Latin-script query; the default embedder is English-only, so finer
    detection would change nothing)."""
    cjk = len(CJK.findall(text))
    if cjk == 0 or cjk < len(_LATIN_WORD.findall(text)):
        return "en"
    if KANA.search(text):
        return "ja"
    if HANGUL.search(text):
        return "ko"
    return "zh"


def embedder_covers(languages: list[str], text: str) -> bool:
    return MULTILINGUAL in languages or query_language(text) in languages


def search_mode_for(text: str, mode: SearchMode, languages: list[str]) -> SearchMode:
    """Hybrid becomes BM25 alone for a query in a language the embedder lacks; other modes stay as asked."""
    if mode == "hybrid" and not embedder_covers(languages, text):
        return "sparse"
    return mode
