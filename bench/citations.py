"""Citation quality of whole answers on the embedded default, per context budget: XQuAD (English) paragraphs in a
Qdrant Edge shard, questions asked through AnswerService with the real in-process vLLM engine.

python -m bench.citations [--questions N] [--budgets 1000 3000 8000] [--seed S]

For each budget (RetrievalSettings.context_tokens):
- gold_cited: share of answers whose citations include the paragraph the question was written from;
- citations_with_answer: share of citations whose passage contains a gold answer text;
- grounded: share of questions the model was asked at all (the rest got "no information");
- gold_in_context: share of prompts that held the gold paragraph; answer_has_gold: share of answers that contain a
  gold answer text (case-insensitive); first token / total latency and prompt size.
Prints a table and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.machine import describe

DATASET = Path(__file__).resolve().parents[2] / "shared" / "eval" / "xquad" / "xquad.en.json"
EMBED_BATCH = 32


@dataclass(frozen=True)
class Paragraph:
    chunk_id: str
    document_id: str
    ordinal: int
    title: str
    text: str


@dataclass(frozen=True)
class QA:
    question: str
    gold_chunk_id: str
    answers: tuple[str, ...]


def load(path: Path) -> tuple[list[Paragraph], list[QA]]:
    """One chunk per paragraph; an article is a document whose paragraphs keep their order."""
    import uuid

    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    paragraphs: list[Paragraph] = []
    questions: list[QA] = []
    for a, article in enumerate(data):
        document_id = f"xquad-{a:03d}"
        for p, paragraph in enumerate(article["paragraphs"]):
            chunk_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{document_id}/{p}"))
            paragraphs.append(Paragraph(chunk_id, document_id, p, article["title"], paragraph["context"]))
            for qa in paragraph["qas"]:
                answers = tuple(dict.fromkeys(x["text"] for x in qa["answers"] if x["text"].strip()))
                if answers:
                    questions.append(QA(qa["question"], chunk_id, answers))
    return paragraphs, questions


class RecordingGenerator:
    """The real generator, remembering the last prompt it was given (to see whether the gold paragraph was in it)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.last_messages: list[dict[str, str]] = []

    def stream(self, messages: Sequence[dict[str, str]], max_tokens: int | None = None) -> AsyncIterator[str]:
        self.last_messages = list(messages)
        return self._inner.stream(messages, max_tokens)

    def count_tokens(self, text: str) -> int:
        return self._inner.count_tokens(text)

    @property
    def max_model_len(self) -> int:
        return self._inner.max_model_len


def contains_answer(text: str, answers: Sequence[str]) -> bool:
    folded = text.casefold()
    return any(answer.casefold() in folded for answer in answers)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


async def run(question_count: int, budgets: list[int], seed: int, max_answer_tokens: int | None) -> dict[str, Any]:
    from kb.adapters.edge_index import EdgeVectorIndex
    from kb.container import build_embedder, build_generator
    from kb.models import Chunk
    from kb.settings import Settings
    from service.ask.pipeline import AskPipeline
    from service.search.service import RetrievalService

    paragraphs, all_questions = load(DATASET)
    sample = random.Random(seed).sample(all_questions, min(question_count, len(all_questions)))
    text_of = {p.chunk_id: p.text for p in paragraphs}

    with tempfile.TemporaryDirectory(prefix="kb-bench-citations-") as data_dir:
        settings = Settings(data_dir=Path(data_dir))
        if max_answer_tokens:
            settings.generator.max_answer_tokens = max_answer_tokens
        embedder = build_embedder(settings)
        started = time.perf_counter()
        index = EdgeVectorIndex(settings.index_path, embedder.dimension, candidates=settings.index.candidates)
        for first in range(0, len(paragraphs), EMBED_BATCH):
            batch = paragraphs[first : first + EMBED_BATCH]
            vectors = embedder.embed_documents([p.text for p in batch])
            chunks = [
                Chunk(chunk_id=p.chunk_id, document_id=p.document_id, ordinal=p.ordinal, text=p.text,
                      filename=f"{p.title}.txt")
                for p in batch
            ]  # fmt: skip
            index.upsert(chunks, vectors)
        index_s = time.perf_counter() - started
        generator = build_generator(settings)
        started = time.perf_counter()
        await generator.start()
        engine_start_s = time.perf_counter() - started
        recording = RecordingGenerator(generator)
        reports: list[dict[str, Any]] = []
        try:
            for budget in budgets:
                retrieval_settings = settings.retrieval.model_copy(update={"context_tokens": budget})
                retrieval = RetrievalService(
                    embedder, index, retrieval_settings, languages=settings.embedder.languages
                )
                answers = AskPipeline(
                    retrieval, recording, retrieval_settings, settings.generator  # type: ignore[arg-type]
                )
                reports.append(await ask_all(answers, recording, sample, text_of, budget))
                print(json.dumps(reports[-1]), file=sys.stderr)
        finally:
            await generator.close()
            index.close()
    return {
        "bench": "citations",
        "machine": describe(),
        "dataset": str(DATASET.relative_to(DATASET.parents[2])),
        "paragraphs": len(paragraphs),
        "questions": len(sample),
        "seed": seed,
        "generator": "SmolLM2-135M-Instruct (in-process vLLM, CPU)",
        "max_model_len": settings.generator.max_model_len,
        "max_answer_tokens": settings.generator.max_answer_tokens,
        "top_k": settings.retrieval.top_k,
        "index_s": round(index_s, 1),
        "engine_start_s": round(engine_start_s, 1),
        "budgets": reports,
    }


async def ask_all(
    answers: Any, recording: RecordingGenerator, sample: Sequence[QA], text_of: dict[str, str], budget: int
) -> dict[str, Any]:
    grounded = gold_cited = gold_in_context = answer_has_gold = 0
    citations = citations_with_answer = unsupported = 0
    first_token: list[float] = []
    total: list[float] = []
    prompt_tokens: list[int] = []
    sources: list[int] = []
    started = time.perf_counter()
    for qa in sample:
        recording.last_messages = []
        answer = await answers.ask(qa.question)
        total.append(answer.timings_ms["total"])
        if not answer.grounded:
            continue
        grounded += 1
        first_token.append(answer.timings_ms.get("first_token", answer.timings_ms["total"]))
        prompt = "\n".join(m["content"] for m in recording.last_messages)
        prompt_tokens.append(recording.count_tokens(prompt))
        sources.append(prompt.count("\n\n[") + 1)
        gold_in_context += text_of[qa.gold_chunk_id] in prompt
        gold_cited += any(c.chunk_id == qa.gold_chunk_id for c in answer.citations)
        answer_has_gold += contains_answer(answer.answer, qa.answers)
        for citation in answer.citations:
            citations += 1
            citations_with_answer += contains_answer(text_of[citation.chunk_id], qa.answers)
            unsupported += not citation.supported
    asked = len(sample)
    return {
        "context_tokens": budget,
        "questions": asked,
        "grounded": round(grounded / asked, 3),
        "gold_in_context": round(gold_in_context / asked, 3),
        "gold_cited": round(gold_cited / asked, 3),
        "citations_with_answer": round(citations_with_answer / citations, 3) if citations else None,
        "citations_per_answer": round(citations / grounded, 2) if grounded else None,
        "citations_unsupported": round(unsupported / citations, 3) if citations else None,
        "answer_has_gold": round(answer_has_gold / asked, 3),
        "sources_mean": round(statistics.mean(sources), 1) if sources else 0,
        "prompt_tokens_mean": round(statistics.mean(prompt_tokens)) if prompt_tokens else 0,
        "first_token_ms_p50": round(statistics.median(first_token), 1) if first_token else None,
        "total_ms_p50": round(statistics.median(total), 1),
        "total_ms_p95": round(percentile(total, 0.95), 1),
        "seconds": round(time.perf_counter() - started, 1),
    }


COLUMNS = ("context_tokens", "grounded", "gold_in_context", "gold_cited", "citations_with_answer",
           "citations_per_answer", "citations_unsupported", "answer_has_gold", "sources_mean", "prompt_tokens_mean",
           "first_token_ms_p50", "total_ms_p50", "total_ms_p95")  # fmt: skip


def markdown(reports: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in reports]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000, 3000, 8000])
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--max-answer-tokens", type=int, default=None, help="default: the setting")
    args = parser.parse_args()
    result = asyncio.run(run(args.questions, args.budgets, args.seed, args.max_answer_tokens))
    print(markdown(result["budgets"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
