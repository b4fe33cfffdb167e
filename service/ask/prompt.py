"""The words the model reads: the system prompt, numbered sources, the conversation and the question; and the texts
the service answers with itself."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kb.models import Passage
from kb.text import HAN

# Fixed first so that vLLM's prefix cache reuses it across every question. Kept short and plain: the default
# 135M-parameter model follows it; larger models need no more.
SYSTEM_PROMPT = (
    "You are the company knowledge base assistant. Answer the question briefly using only the context. "
    "Cite the sources you use like [1]."
)
REWRITE_PROMPT = (
    "Rewrite the last question of the conversation as one standalone question that can be understood without the "
    "conversation. Reply with the question only."
)
NO_INFORMATION = {
    "en": "The knowledge base has no information on this question.",
    "zh": "知识库中没有关于这个问题的信息。",
}
# Between a written answer that failed the citation check and what replaces it (quoted evidence or no information).
REPLACED_NOTE = "\n\n(The answer above is not supported by the sources.)\n\n"
# Sources are joined by a blank line, and a blank line follows the last one.
SOURCE_SEPARATOR = "\n\n"
# Each turn of the conversation as the prompt quotes it.
TURN_CHARS = 600
# Prompt tokens beyond the system prompt, the question and the sources (chat template, instruction words).
PROMPT_OVERHEAD_TOKENS = 64


def no_information_answer(question: str) -> str:
    return NO_INFORMATION["zh" if HAN.search(question) else "en"]


def format_source(n: int, passage: Passage) -> str:
    # Only the number and the text: small models copy any header into the answer. The citation carries the rest.
    return f"[{n}] {passage.text}"


def messages(question: str, sources: Sequence[Passage], history: Sequence[dict[str, Any]] = ()) -> list[dict[str, str]]:
    """System prompt, sources, conversation, question: the stable parts first, for the prefix cache."""
    context = SOURCE_SEPARATOR.join(format_source(i + 1, p) for i, p in enumerate(sources))
    conversation = ""
    if history:
        turns = "\n".join(
            f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content'][:TURN_CHARS]}" for m in history
        )
        conversation = f"\n\nThe conversation so far:\n{turns}"
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"{context}{conversation}\n\nUsing the text above, answer briefly: {question}"},
    ]


def rewrite_messages(question: str, history: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    transcript = "\n".join(f"{m['role']}: {m['content'][:500]}" for m in history[-4:])
    return [
        {"role": "system", "content": REWRITE_PROMPT},
        {"role": "user", "content": f"{transcript}\nuser: {question}"},
    ]
