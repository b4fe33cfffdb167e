"""Quoted evidence (service.ask.extract) on XQuAD-en and CMRC 2018: does the extract hold the answer, and does its score
tell answerable questions from unanswerable ones?

python -m bench.extract [--questions 200] [--seed 0] [--held-out-seed 1] [--sets xquad-en cmrc] [--max-sentences 3]

Each set's paragraphs go into a scratch index (evaluation.scratch_index: the service's fusion, BM25 terms and
sentence vectors, the default embedder on the CPU). For each of N seeded questions the extractor gets the gold
paragraph and the 4 best other paragraphs the hybrid search finds (as the service would resolve it: BM25 alone for a
Chinese question), the gold at the rank the search gave it (last when it is not in the top 10): the answerable case.
The unanswerable case is the same question with the gold paragraph removed (the 4 others alone).

Reported per set and seed:
- contains_gold: share of extracts whose text holds a gold answer (case-insensitive); best_sentence_gold: the best
  sentence alone holds one; answered_with_gold: answerable() said yes and the text holds one;
- score percentiles (10/25/50/75/90) on answerable and unanswerable cases;
- at ANSWERABLE_SCORE: kept (answerable cases answered: recall), refused (unanswerable cases refused), precision
  (answered cases that were answerable, over both sets of cases together);
- feasible: the range of thresholds that keep >= 90% of answerable cases while refusing >= 80% of unanswerable ones
  on this sample (null: none);
- extract_ms p50/p95 per answerable case (CPU; the machine's load average beside it), candidate sentences and the
  sentences embedded per case;
- lexical_only: the same with no embedder (how the pipeline extracts without one), for sets whose language the
  embedder knows.
Prints a table and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.machine import describe

EVAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "eval"
SETS = {"xquad-en": EVAL_DIR / "xquad" / "xquad.en.json", "cmrc": EVAL_DIR / "cmrc2018" / "cmrc2018_dev.json"}
OTHERS = 4
SEARCH_DEPTH = 10
KEEP, REFUSE = 0.9, 0.8


@dataclass
class Case:
    question: str
    answers: list[str]
    with_gold: list[Any]  # Passage
    without_gold: list[Any]


def contains_answer(text: str, answers: Sequence[str]) -> bool:
    folded = text.casefold()
    return any(answer.casefold() in folded for answer in answers)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def _answers(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                found[str(qa["id"])] = list(dict.fromkeys(a["text"] for a in qa["answers"] if a["text"].strip()))
    return found


def build_cases(set_name: str, n: int, seed: int, settings: Any, embedder: Any) -> list[Case]:
    """The seeded questions with their sources, from a scratch index of the set (vectors cached on disk)."""
    from evaluation.run import RetrievalEvaluation
    from evaluation.scratch_index import scratch_index
    from kb.languages import search_mode_for
    from kb.models import Passage

    path = SETS[set_name]
    prepared = RetrievalEvaluation(settings, embedder).prepare(path)
    qa_set = prepared.qa_set
    answers = _answers(path)
    questions = random.Random(seed).sample(qa_set.questions, min(n, len(qa_set.questions)))
    units = {u.unit_id: u for u in qa_set.units}
    unit_of = {e.entry_id: e.unit_id for e in prepared.entries}

    def passage(unit_id: str, score: float) -> Passage:
        unit = units[unit_id]
        return Passage(chunk_id=unit_id, document_id=unit.document_id, filename=set_name, text=unit.text, score=score)

    cases: list[Case] = []
    with scratch_index(
        settings, qa_set, prepared.vectors.vectors, entries=prepared.entries or None,
        sentence_vectors=prepared.sentence_vectors_by_entry(),
    ) as index:  # fmt: skip
        for question in questions:
            mode = search_mode_for(question.text, settings.retrieval.mode, settings.embedder.languages)
            vector = embedder.embed_query(question.text)
            ranked: dict[str, float] = {}
            for hit in index.search(vector, question.text, SEARCH_DEPTH, None, mode):
                ranked.setdefault(unit_of.get(hit.chunk_id, hit.chunk_id), hit.score)  # a long unit: its best chunk
            (gold,) = question.gold
            others = [passage(u, s) for u, s in ranked.items() if u != gold][:OTHERS]
            at = min(list(ranked).index(gold), OTHERS) if gold in ranked else OTHERS
            gold_passage = passage(gold, ranked.get(gold, 0.0))
            cases.append(Case(question.text, answers[question.question_id],
                              [*others[:at], gold_passage, *others[at:]], others))  # fmt: skip
    return cases


class CountingEmbedder:
    """The real embedder, counting the sentences each extraction embeds."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.embedded = 0

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        self.embedded += len(texts)
        return self._inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self._inner.embed_query(text)


def measure(
    extractor: Any, cases: Sequence[Case], max_sentences: int, counter: CountingEmbedder | None
) -> dict[str, Any]:
    from service.ask import extract

    kept_scores, refused_scores, times, embedded, candidates = [], [], [], [], []
    has_gold = best_gold = answered_gold = 0
    for case in cases:
        before = counter.embedded if counter else 0
        started = time.perf_counter()
        extraction = extractor.extract(case.question, case.with_gold, max_sentences)
        times.append((time.perf_counter() - started) * 1000)
        embedded.append((counter.embedded if counter else 0) - before)
        candidates.append(len(extractor._candidates(case.with_gold)))
        kept_scores.append(extraction.score)
        holds = contains_answer(extraction.text, case.answers)
        has_gold += holds
        answered_gold += holds and extractor.answerable(extraction)
        if extraction.quotes:
            best = max(extraction.quotes, key=lambda q: q.score)
            best_gold += contains_answer(best.sentence, case.answers)
        refused_scores.append(extractor.extract(case.question, case.without_gold, max_sentences).score)
    count = len(cases)
    threshold = extract.ANSWERABLE_SCORE
    kept = sum(s >= threshold for s in kept_scores)
    false_answers = sum(s >= threshold for s in refused_scores)
    return {
        "contains_gold": round(has_gold / count, 3),
        "best_sentence_gold": round(best_gold / count, 3),
        "answered_with_gold": round(answered_gold / count, 3),
        "score_answerable": [round(percentile(kept_scores, q), 3) for q in (0.1, 0.25, 0.5, 0.75, 0.9)],
        "score_unanswerable": [round(percentile(refused_scores, q), 3) for q in (0.1, 0.25, 0.5, 0.75, 0.9)],
        "threshold": threshold,
        "kept": round(kept / count, 3),
        "refused": round(1 - false_answers / count, 3),
        "precision": round(kept / (kept + false_answers), 3) if kept + false_answers else 0.0,
        "feasible": feasible(kept_scores, refused_scores),
        "extract_ms_p50": round(percentile(times, 0.5), 1),
        "extract_ms_p95": round(percentile(times, 0.95), 1),
        "candidates_mean": round(sum(candidates) / count, 1),
        "embedded_mean": round(sum(embedded) / count, 1),
    }


def feasible(answerable: Sequence[float], unanswerable: Sequence[float]) -> list[float] | None:
    """The lowest and highest threshold that keep >= KEEP of answerable scores and refuse >= REFUSE of the others."""
    ok = [
        t
        for t in sorted(set(answerable) | set(unanswerable))
        if sum(s >= t for s in answerable) >= KEEP * len(answerable)
        and sum(s < t for s in unanswerable) >= REFUSE * len(unanswerable)
    ]
    return [round(ok[0], 3), round(ok[-1], 3)] if ok else None


def run(set_name: str, n: int, seed: int, max_sentences: int = 3) -> dict[str, Any]:
    from kb.container import build_embedder
    from kb.languages import embedder_covers
    from kb.settings import Settings
    from service.ask.extract import Extractor

    settings = Settings()
    embedder = build_embedder(settings)
    started = time.perf_counter()
    cases = build_cases(set_name, n, seed, settings, embedder)
    prepare_s = time.perf_counter() - started
    languages = settings.embedder.languages
    counter = CountingEmbedder(embedder)
    extractor = Extractor(counter, languages)  # type: ignore[arg-type]
    extractor.extract(cases[0].question, cases[0].with_gold)  # the first call pays one-off costs
    load_before = os.getloadavg()[0]
    print(f"{set_name} seed {seed}: {len(cases)} cases in {prepare_s:.0f} s, extracting", file=sys.stderr, flush=True)
    report: dict[str, Any] = {
        "set": set_name,
        "seed": seed,
        "questions": len(cases),
        "max_sentences": max_sentences,
        "dense": embedder_covers(languages, cases[0].question),
        **measure(extractor, cases, max_sentences, counter),
        "load_average": round((load_before + os.getloadavg()[0]) / 2, 1),
        "prepare_s": round(prepare_s, 1),
    }
    if report["dense"]:
        lexical = measure(Extractor(None, languages), cases, max_sentences, None)
        report["lexical_only"] = {k: lexical[k] for k in ("contains_gold", "kept", "refused", "precision", "feasible",
                                                           "score_answerable", "score_unanswerable")}  # fmt: skip
    return report


COLUMNS = ("set", "seed", "dense", "contains_gold", "best_sentence_gold", "answered_with_gold", "kept", "refused",
           "precision", "feasible", "extract_ms_p50", "extract_ms_p95", "load_average")  # fmt: skip


def table(reports: Sequence[dict[str, Any]]) -> str:
    rows = [list(COLUMNS)]
    for report in reports:
        rows.append([str(report[c]) for c in COLUMNS])
        if "lexical_only" in report:
            lexical = report["lexical_only"]
            rows.append([str(report["set"]), str(report["seed"]), "False (lexical only)",
                         *(str(lexical.get(c, "")) for c in COLUMNS[3:])])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="the sample the threshold was chosen on")
    parser.add_argument("--held-out-seed", type=int, default=1)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--max-sentences", type=int, default=3)
    args = parser.parse_args()
    reports = [
        run(name, args.questions, seed, args.max_sentences)
        for name in args.sets
        for seed in (args.seed, args.held_out_seed)
    ]
    print(table(reports))
    for report in reports:
        print(f"{report['set']} seed {report['seed']}: scores answerable {report['score_answerable']}, "
              f"unanswerable {report['score_unanswerable']} (p10 p25 p50 p75 p90)")  # fmt: skip
    print(json.dumps({"machine": describe(), "reports": reports}))


if __name__ == "__main__":
    main()
