"""The CJK character classes, defined once for ingestion, BM25, language guessing and answering.

Each *_RANGES string is the body of a regex character class (no brackets), so a site can combine them
(f"[{HAN_RANGES}{CJK_PUNCTUATION_RANGES}]"); the compiled patterns below cover the common uses.
"""

from __future__ import annotations

import re

# Han ideographs: CJK Unified Ideographs Extension A (U+3400-4DBF), the main block (U+4E00-9FFF) and the
# Compatibility Ideographs (U+F900-FAFF). These are what Chinese (and Japanese kanji) text is written in without
# spaces between words: a line break between two of them joins without a space, each counts about a word, and
# jieba cuts their runs into words. Left out: the Yijing hexagram symbols between Extension A and the main block
# (U+4DC0-4DFF, symbols rather than words) and the supplementary-plane extensions B and later (U+20000 and up:
# rare characters that jieba's dictionary does not hold).
HAN_RANGES = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# Hiragana and Katakana (U+3040-30FF): Japanese beside Han.
KANA_RANGES = r"\u3040-\u30ff"
# Hangul syllables (U+AC00-D7AF): Korean.
HANGUL_RANGES = r"\uac00-\ud7af"
# CJK Symbols and Punctuation (U+3000-303F: the ideographic space, 。、「」) and the Halfwidth and Fullwidth Forms
# (U+FF00-FFEF: ，！？ and fullwidth Latin): the punctuation CJK text is set with, which needs no space around it.
CJK_PUNCTUATION_RANGES = r"\u3000-\u303f\uff00-\uffef"

HAN = re.compile(f"[{HAN_RANGES}]")
HAN_RUN = re.compile(f"[{HAN_RANGES}]+")
KANA = re.compile(f"[{KANA_RANGES}]")
HANGUL = re.compile(f"[{HANGUL_RANGES}]")
# Any character of a CJK script or its punctuation: what a query's language guess counts (kb.languages).
CJK = re.compile(f"[{CJK_PUNCTUATION_RANGES}{KANA_RANGES}{HAN_RANGES}{HANGUL_RANGES}]")
