"""Questions that name a document: does BM25 reading the document's name (IndexSettings.name_weight) find it?

python -m bench.titles [--limit N] [--weights 0 1 2 3] [--label LABEL]

The set: each TAT-QA dev context (a financial table and the paragraphs around it, from an annual report whose company
TAT-QA does not name) is a document, chunked by the real Chunker (table block -> Markdown rows, paragraphs), and
called by a fictional company's file name ("Norwell Industries 2019 Annual Report.pdf", seeded). Its questions are
asked twice:
- named: rewritten by a template to name the company ("For Norwell Industries, what was ...", three templates, seeded):
  the right document should come first;
- plain: TAT-QA's own questions, which name no document (the no-harm check: the name words must not push other
  documents up). With 278 look-alike statements, the document of a plain question is often ambiguous: only the
  difference between weights matters there.

Each name weight gets its own scratch index (evaluation.scratch_index, the container's fusion and BM25 settings) and
the questions go through RetrievalService.search_sync, the service's path. Reported per weight and question kind:
doc_recall@1/@5 (a passage of the right document among the first 1/5 passages), doc_mrr@10 (the right document's
rank among the documents of the first 10 passages) and evidence@5 (a passage of the right document holding the
question's evidence: a paragraph TAT-QA marks, or a table row for a table question, among the first 5).
Writes bench/results/titles_<label>.json with the machine line.
"""

from __future__ import annotations

import argparse
import html
import json
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import describe
from evaluation.datasets import QASet, Question, Unit, sample
from evaluation.entries import IndexEntry
from evaluation.run import RetrievalEvaluation
from evaluation.scratch_index import scratch_index
from evaluation.vector_cache import embed_texts
from ingest.partition import Block
from ingest.pipeline import sentences_to_embed
from ingest.titles import document_title
from kb.ports import Embedder
from kb.settings import Settings
from service.search.service import RetrievalService

ROOT = Path(__file__).resolve().parents[1]
TATQA = ROOT.parent / "shared" / "eval" / "tatqa" / "tatqa_dataset_dev.json"
RESULTS_DIR = ROOT / "bench" / "results"
SEED = 19

_FIRST = (
    "Norwell", "Ashford", "Brookmere", "Calder", "Dunmore", "Elsworth", "Fairhaven", "Glenrock", "Harwick", "Ironvale",
    "Juniper", "Kestrel", "Larkspur", "Marlow", "Northgate", "Oakridge", "Pemberton", "Quillon", "Redfern", "Stanmore",
    "Thornbury", "Upland", "Valemont", "Westbrook", "Yarrow", "Zephyr", "Alder", "Bellamy", "Corwin", "Dresden",
    "Everly", "Falkner", "Greystone", "Halloway", "Inglewood", "Jarrow", "Kingsley", "Lockhart", "Merrow", "Newhall",
)  # fmt: skip
_SECOND = (
    "Industries", "Holdings", "Technologies", "Systems", "Group", "Partners", "Energy", "Logistics", "Foods",
    "Pharmaceuticals", "Semiconductor", "Networks", "Financial", "Materials", "Retail", "Aerospace",
)  # fmt: skip
_TEMPLATES = (
    "For {company}, {question}",
    "In the {company} annual report: {question}",
    "{question_stripped} at {company}?",
)


@dataclass(frozen=True)
class NamedQuestion:
    question_id: str
    document_id: str
    plain: str
    named: str
    evidence: tuple[str, ...]  # starts of the gold paragraphs; "|" for a table question


def companies(count: int, rng: random.Random) -> list[str]:
    names = [f"{a} {b}" for a in _FIRST for b in _SECOND]
    if count > len(names):
        raise ValueError(f"only {len(names)} company names for {count} documents")
    rng.shuffle(names)
    return names[:count]


def named(question: str, company: str, rng: random.Random) -> str:
    """The question rewritten by a template (chosen by `rng`) to name `company`."""
    template = rng.choice(_TEMPLATES)
    # Lowercase a capitalised first word ("What" -> "what"), never an acronym ("EBITDA").
    first = question[:1].lower() + question[1:] if question[1:2].islower() else question
    return template.format(company=company, question=first, question_stripped=question.rstrip(" ?"))


def table_html(rows: Sequence[Sequence[str]]) -> str:
    return "<table>" + "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    ) + "</table>"


def table_text(rows: Sequence[Sequence[str]]) -> str:
    return "\n".join(" ".join(str(c) for c in row if str(c).strip()) for row in rows)


Built = tuple[QASet, list[IndexEntry], dict[str, str], dict[str, str | None], list[NamedQuestion]]


def build(path: Path, evaluation: RetrievalEvaluation, rng: random.Random) -> Built:
    """The documents (chunked), their file names and titles, and the questions."""
    contexts = json.loads(path.read_text(encoding="utf-8"))
    names = companies(len(contexts), rng)
    chunker = evaluation.chunker()
    units: list[Unit] = []
    entries: list[IndexEntry] = []
    filenames: dict[str, str] = {}
    titles: dict[str, str | None] = {}
    questions: list[NamedQuestion] = []
    for context, company in zip(contexts, names, strict=True):
        document_id = context["table"]["uid"]
        rows = context["table"]["table"]
        years = sorted({y for row in rows[:2] for y in re.findall(r"\b(?:19|20)\d\d\b", " ".join(map(str, row)))})
        filename = f"{company} {years[-1] if years else 2019} Annual Report.pdf"
        paragraphs = sorted(context["paragraphs"], key=lambda p: int(p["order"]))
        blocks = [Block("table", table_text(rows), 1, table_html(rows))]
        blocks += [Block("text", p["text"], 1) for p in paragraphs]
        filenames[document_id] = filename
        titles[document_id] = document_title(blocks, filename)
        for chunk in chunker.chunk(blocks, document_id=document_id, filename=filename, groups=[]):
            text = chunk.embed_text or chunk.text
            units.append(Unit(chunk.chunk_id, document_id, chunk.text))
            entries.append(IndexEntry(chunk.chunk_id, chunk.chunk_id, document_id, chunk.ordinal, chunk.text, text))
        by_order = {str(p["order"]): p["text"] for p in paragraphs}
        for question in context["questions"]:
            evidence = [by_order[str(o)][:60] for o in question.get("rel_paragraphs") or [] if str(o) in by_order]
            if "table" in (question.get("answer_from") or ""):
                evidence.append("|")
            questions.append(
                NamedQuestion(question["uid"], document_id, question["question"],
                              named(question["question"], company, rng), tuple(evidence))
            )  # fmt: skip
    qa_set = QASet("tatqa-named", "tatqa", units, [Question(q.question_id, q.plain, frozenset()) for q in questions])
    return qa_set, entries, filenames, titles, questions


class QueryCache:
    """The embedder with each query embedded once: every weight asks the same questions."""

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder
        self._vectors: dict[str, list[float]] = {}
        self.dimension = embedder.dimension
        self.max_tokens = embedder.max_tokens

    def prefill(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        self._vectors.update(zip(texts, (v.tolist() for v in vectors), strict=True))

    def embed_query(self, text: str) -> list[float]:
        if text not in self._vectors:
            self._vectors[text] = self._embedder.embed_query(text)
        return self._vectors[text]

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        return self._embedder.embed_documents(texts)

    def count_tokens(self, text: str) -> int:
        return self._embedder.count_tokens(text)


def score(service: RetrievalService, questions: Sequence[NamedQuestion], kind: str) -> dict[str, float]:
    at1 = at5 = mrr = evidence = 0.0
    for q in questions:
        passages = service.search_sync(q.named if kind == "named" else q.plain, top_k=10).passages
        documents = list(dict.fromkeys(p.document_id for p in passages))
        at1 += bool(passages) and passages[0].document_id == q.document_id
        at5 += any(p.document_id == q.document_id for p in passages[:5])
        mrr += 1 / (documents.index(q.document_id) + 1) if q.document_id in documents else 0.0
        evidence += any(
            p.document_id == q.document_id and any(e in p.text for e in q.evidence) for p in passages[:5]
        )
    n = max(1, len(questions))
    return {"doc_recall@1": round(at1 / n, 4), "doc_recall@5": round(at5 / n, 4), "doc_mrr@10": round(mrr / n, 4),
            "evidence@5": round(evidence / n, 4)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=TATQA)
    parser.add_argument("--limit", type=int, default=None, help="questions, spread evenly over the set")
    parser.add_argument("--weights", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--label", default="run")
    args = parser.parse_args()

    settings = Settings()
    evaluation = RetrievalEvaluation.open(settings)
    embedder = evaluation._embedder  # noqa: SLF001 (the evaluation's embedder, loaded once)
    rng = random.Random(SEED)
    qa_set, entries, filenames, titles, questions = build(args.dataset, evaluation, rng)
    chosen_ids = {q.question_id for q in sample(qa_set.questions, args.limit)}
    chosen = [q for q in questions if q.question_id in chosen_ids]

    started = time.perf_counter()
    model_key = evaluation._model_key()  # noqa: SLF001
    cache = evaluation._cache_dir  # noqa: SLF001
    vectors = embed_texts([e.embed_text for e in entries], embedder, model_key, cache).vectors
    languages = settings.embedder.languages
    per_entry = [sentences_to_embed(e.embed_text, languages) if settings.ingest.sentence_vectors else []
                 for e in entries]  # fmt: skip
    flat = embed_texts([s for found in per_entry for s in found], embedder, model_key, cache).vectors
    sentence_vectors, first = [], 0
    for found in per_entry:
        sentence_vectors.append(flat[first : first + len(found)] if len(found) else np.zeros((0, vectors.shape[1])))
        first += len(found)
    embed_s = time.perf_counter() - started

    queries = QueryCache(embedder)
    if settings.embedder.query_prompt == settings.embedder.passage_prompt:
        # One batch (and the evaluation's cache) instead of one call per question: the same prompt, the same vectors
        # up to float rounding.
        asked = [q.named for q in chosen] + [q.plain for q in chosen]
        queries.prefill(asked, embed_texts(asked, embedder, model_key, cache).vectors)
    runs: list[dict[str, Any]] = []
    for weight in args.weights:
        weighted = settings.model_copy(update={"index": settings.index.model_copy(update={"name_weight": weight})})
        with scratch_index(
            weighted, qa_set, vectors, entries=entries,
            sentence_vectors=sentence_vectors if settings.ingest.sentence_vectors else None,
            filenames=filenames, titles=titles,
        ) as index:  # fmt: skip
            service = RetrievalService(queries, index, weighted.retrieval, languages=languages)
            for kind in ("named", "plain"):
                started = time.perf_counter()
                metrics = score(service, chosen, kind)
                runs.append({"name_weight": weight, "questions": kind, **metrics,
                             "seconds": round(time.perf_counter() - started, 1)})  # fmt: skip
                print(json.dumps(runs[-1]), flush=True)

    report = {
        "benchmark": "titles",
        "label": args.label,
        "date": date.today().isoformat(),
        "machine": describe(),
        "dataset": str(args.dataset),
        "documents": len(filenames),
        "documents_with_title": sum(1 for t in titles.values() if t),
        "chunks": len(entries),
        "questions": len(chosen),
        "questions_total": len(questions),
        "templates": list(_TEMPLATES),
        "seed": SEED,
        "example": {"filename": filenames[chosen[0].document_id], "plain": chosen[0].plain, "named": chosen[0].named}
        if chosen
        else None,
        "fusion": settings.index.fusion,
        "embed_s": round(embed_s, 1),
        "runs": runs,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"titles_{args.label}.json"
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
