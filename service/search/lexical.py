"""Language-aware content terms for relevance and support checks: words for Latin scripts, bigrams for CJK."""

from __future__ import annotations

import re

from kb.text import HAN, HAN_RANGES

_WORD = re.compile(rf"[A-Za-z0-9][A-Za-z0-9'\-]*|[{HAN_RANGES}]+")
_STOPWORDS = frozenset(
    """a an and are as at be been but by can could did do does for from had has have how i if in into is it its
    of on or our that the their them then there these they this to was we were what when where which who whom why
    will with would you your about tell me please give list show explain describe does doesn't not no yes""".split()
)
_CJK_STOP = frozenset("的了是在和有我你他她它们这那个吗呢吧啊什么怎么哪里为何如何请问")


def content_terms(text: str) -> set[str]:
    terms: set[str] = set()
    for token in _WORD.findall(text.lower()):
        if HAN.match(token):
            chars = [c for c in token if c not in _CJK_STOP]
            if len(chars) == 1:
                terms.add(chars[0])
            terms.update(a + b for a, b in zip(chars, chars[1:]))
        elif len(token) > 2 and token not in _STOPWORDS:
            terms.add(token)
    return terms


def coverage(query: str, passage: str) -> float:
    """Share of the query's content terms that occur in the passage (0 when the query has none)."""
    wanted = content_terms(query)
    if not wanted:
        return 0.0
    return len(wanted & content_terms(passage)) / len(wanted)
