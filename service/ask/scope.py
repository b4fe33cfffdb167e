"""Scope: what the question is about. Documents the request names, or, for "this document" in a follow-up, the
documents the previous answer was about."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

from kb.models import Passage, SearchFilter
from service.ask.citations import parse_markers
from service.ask.conversation import Conversation

# A question about what the conversation was already about ("summarise this document", "这份文件的结论是什么").
_THIS_DOCUMENT = re.compile(
    r"\b(?:this|that|these|those|the same|the above|the previous)\s+"
    r"(?:documents?|docs?|files?|papers?|reports?|pdfs?|articles?|texts?|manuals?|policy|policies)\b"
    r"|(?:这|那|该|此|本|上述)(?:个|份|篇|些)?(?:文档|文件|文章|报告|手册|资料)",
    re.IGNORECASE,
)


@dataclass
class Scope:
    filter: SearchFilter | None  # the caller's filter, with the documents asked about
    document_ids: list[str] | None  # asked about: read whole where they fit, searched inside otherwise


def refers_to_previous_documents(question: str) -> bool:
    return bool(_THIS_DOCUMENT.search(question))


def documents_of_previous_turn(answer: str, sources: Sequence[Passage]) -> list[str]:
    """The documents the previous answer cited, in order of citation; all it was given when it cited none."""
    cited = [sources[n - 1] for n in parse_markers(answer, len(sources)).cited]
    return list(dict.fromkeys(p.document_id for p in cited or sources))


def resolve_scope(question: str, filter: SearchFilter | None, conversation: Conversation) -> Scope:
    document_ids = filter.document_ids if filter is not None else None
    if document_ids is None and conversation.previous_sources and refers_to_previous_documents(question):
        document_ids = documents_of_previous_turn(conversation.previous_answer, conversation.previous_sources)
        filter = dataclasses.replace(filter or SearchFilter(), document_ids=document_ids)
    return Scope(filter, document_ids)
