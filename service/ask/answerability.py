"""Which way an answer is made, and whether the sources answer the question at all.

The model writes ("generate") when it writes the question's language and the mode allows; otherwise the quoted
evidence answers ("extract"). In "auto" mode a written answer that fails the citation check gives way to the quoted
evidence, and where the evidence is too weak too, or the model itself says the sources do not answer, the answer is
the no-information text, citing nothing ("none")."""

from __future__ import annotations

import re
from typing import Literal

from kb.languages import MULTILINGUAL, query_language
from kb.settings import AnswerSettings
from service.search.lexical import content_terms

Mode = Literal["generate", "extract", "none"]

# The model's own "not in the sources" (English and Chinese), as small and large models phrase it.
_NO_INFORMATION = re.compile(
    r"\b(?:(?:does|do|did)\s+not|doesn't|don't|cannot|can't|no)\s+(?:\w+\s+){0,3}?"
    r"(?:mention|say|state|specify|provide|contain|include|information|answer|find|know)"
    r"|\bnot\s+(?:mentioned|stated|specified|provided|included|available|found|given)\b"
    r"|\bno\s+(?:information|mention|details?)\b"
    r"|(?:没有|未|并未|无)(?:提到|提及|说明|提供|相关信息|信息|记载)|无法(?:回答|确定|找到)",
    re.IGNORECASE,
)


def says_no_information(answer: str) -> bool:
    """Whether the answer's first sentence declines (a refusal later in an answer that first answers is a caveat)."""
    first = re.split(r"(?<=[.!?。！？])\s*", answer.strip(), maxsplit=1)[0]
    return bool(_NO_INFORMATION.search(first))


def first_mode(question: str, settings: AnswerSettings) -> Mode:
    """How to try first: the model, unless configured otherwise or the question is in a language it does not write."""
    if settings.mode == "extract":
        return "extract"
    if settings.mode == "auto" and MULTILINGUAL not in settings.generator_languages:
        if query_language(question) not in settings.generator_languages:
            return "extract"
    return "generate"


# Words a follow-up uses to ask for more of the same (as content_terms reads them, Chinese by its bigrams).
_MORE = frozenset({
    "more", "further", "detail", "details", "elaborate", "continue", "else", "expand", "explain", "go",
    "更多", "多细", "细节", "详细", "继续", "展开", "解释", "多说", "说说",
})  # fmt: skip


def asks_for_more(question: str) -> bool:
    """"Tell me more about it.", "Go on.", "更多细节？": a follow-up with no subject of its own but the previous turn's."""
    return content_terms(question) <= _MORE
