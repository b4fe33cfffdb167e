"""Running a QA set's questions against its scratch index in each search mode, and the report of a run."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.datasets import QASet, Question, load_qa_set, sample
from evaluation.entries import IndexEntry, index_entries
from evaluation.metrics import TOP_K, percentile, summarize
from evaluation.scratch_index import scratch_index
from evaluation.vector_cache import ProgressCallback, UnitVectors, default_cache_dir, embed_texts, embed_units
from ingest.chunk import Chunker
from ingest.pipeline import sentences_to_embed
from kb.container import build_embedder, embedder_model_path
from kb.languages import embedder_covers, search_mode_for
from kb.ports import Embedder, SearchMode, VectorIndex
from kb.settings import Settings

# Same room as ingest.pipeline leaves in the embedding window for a section heading and special tokens.
_HEADING_RESERVE_TOKENS = 48


@dataclass
class ModeResult:
    mode: SearchMode
    rankings: list[tuple[list[str], frozenset[str]]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        metrics = summarize(self.rankings)
        return {
            "mode": self.mode,
            **{key: round(value, 4) for key, value in metrics.items()},
            "latency_ms_p50": round(percentile(self.latencies_ms, 50), 2),
            "latency_ms_p95": round(percentile(self.latencies_ms, 95), 2),
        }


def run_questions(
    questions: Sequence[Question],
    embedder: Embedder,
    index: VectorIndex,
    modes: Sequence[SearchMode],
    top_k: int = TOP_K,
    on_progress: ProgressCallback | None = None,
    *,
    unit_of: dict[str, str] | None = None,
    languages: Sequence[str] = ("*",),
) -> list[ModeResult]:
    """Each question embedded once and searched in every mode.

    A query's latency in a mode is its embedding time plus that mode's search time: what the service spends on a
    search (it embeds every query, sparse mode included). `unit_of` maps index entries (chunks of long units) to
    their units; the search then asks for more entries and ranks each unit once, at its best chunk. Hybrid mode is
    resolved per question as RetrievalService resolves it (`languages`: what the embedder understands).
    """
    results = [ModeResult(mode) for mode in modes]
    languages = list(languages)
    depth = top_k if not unit_of else top_k * 5

    def ranked_units(passages: Sequence[Any]) -> list[str]:
        if not unit_of:
            return [p.chunk_id for p in passages]
        return list(dict.fromkeys(unit_of.get(p.chunk_id, p.chunk_id) for p in passages))[:top_k]

    if questions:
        # The first call pays one-off costs (allocations, lazy init) that a running service has already paid.
        warm_up = embedder.embed_query(questions[0].text)
        for result in results:
            index.search(warm_up, questions[0].text, top_k, None, result.mode)
    for done, question in enumerate(questions, 1):
        started = time.perf_counter()
        vector = embedder.embed_query(question.text)
        embed_ms = (time.perf_counter() - started) * 1000
        for result in results:
            started = time.perf_counter()
            mode = search_mode_for(question.text, result.mode, languages)
            passages = index.search(vector, question.text, depth, None, mode)
            ranked = ranked_units(passages)
            search_ms = (time.perf_counter() - started) * 1000
            result.rankings.append((ranked, question.gold))
            result.latencies_ms.append(embed_ms + search_ms)
        if on_progress:
            on_progress(done, len(questions))
    return results


@dataclass
class PreparedSet:
    """A loaded QA set whose units are embedded: what every mode's run shares."""

    path: Path
    qa_set: QASet
    vectors: UnitVectors  # of `entries`
    units_truncated: int  # units longer than the embedder's window
    entries: list[IndexEntry] = field(default_factory=list)
    units_split: int = 0  # long units indexed as their chunks (the others: the dense side sees only their start)
    sentence_vectors: UnitVectors | None = None  # of the entries' sentences, in order

    def sentence_vectors_by_entry(self) -> list[np.ndarray] | None:
        if self.sentence_vectors is None:
            return None
        found, first = [], 0
        for entry in self.entries:
            found.append(self.sentence_vectors.vectors[first : first + len(entry.sentences)])
            first += len(entry.sentences)
        return found


class RetrievalEvaluation:
    """Evaluates retrieval on QA sets with the embedder and index settings of `settings`."""

    def __init__(
        self, settings: Settings, embedder: Embedder, cache_dir: Path | None = None, *, split_long_units: bool = True
    ) -> None:
        self._settings = settings
        self._embedder = embedder
        self._cache_dir = cache_dir if cache_dir is not None else default_cache_dir(settings)
        self._split_long_units = split_long_units

    @classmethod
    def open(
        cls, settings: Settings, cache_dir: Path | None = None, *, split_long_units: bool = True
    ) -> RetrievalEvaluation:
        return cls(settings, build_embedder(settings), cache_dir, split_long_units=split_long_units)

    def chunker(self) -> Chunker:
        max_body = min(self._settings.ingest.chunk_tokens, self._embedder.max_tokens - _HEADING_RESERVE_TOKENS)
        return Chunker(self._embedder, max_body, self._settings.ingest.chunk_overlap_tokens)  # type: ignore[arg-type]

    def _model_key(self) -> str:
        model = embedder_model_path(self._settings)
        if Path(model).exists():
            model = str(Path(model).resolve())
        # The backend too: ONNX int8 vectors differ from torch's, and comparing them is what the cache must not hide.
        backend = self._settings.embedder.backend
        return f"{model}\0{self._settings.embedder.passage_prompt}" + (f"\0{backend}" if backend != "torch" else "")

    def prepare(
        self, path: Path, max_documents: int | None = None, on_progress: ProgressCallback | None = None
    ) -> PreparedSet:
        """Load and embed a QA set; `max_documents` limits sets of whole documents (COVID-QA) to their first N."""
        chunker = self.chunker()
        qa_set = load_qa_set(path, chunker, max_documents)
        window = self._embedder.max_tokens
        long_units = {u.unit_id for u in qa_set.units if self._embedder.count_tokens(u.text) > window}
        # Splitting is for the dense side to see the whole unit; in a language the embedder lacks, hybrid search
        # is BM25 alone, which scores a whole unit better than its best chunk (xquad.zh: compare with --whole-units).
        languages = self._settings.embedder.languages
        to_split = {u.unit_id for u in qa_set.units if u.unit_id in long_units and embedder_covers(languages, u.text)}
        entries, split = index_entries(qa_set, chunker if self._split_long_units else None, to_split)
        vectors = embed_units(entries, self._embedder, self._model_key(), self._cache_dir, on_progress)
        sentence_vectors = None
        if self._settings.ingest.sentence_vectors:
            # As ingestion does (ingest.pipeline.embed_chunks): sentences of entries in a language the embedder knows.
            entries = [replace(e, sentences=tuple(sentences_to_embed(e.embed_text, languages))) for e in entries]
            texts = [s for e in entries for s in e.sentences]
            sentence_vectors = embed_texts(texts, self._embedder, self._model_key(), self._cache_dir, on_progress)
        return PreparedSet(path, qa_set, vectors, len(long_units), entries, split, sentence_vectors)

    def evaluate(
        self,
        prepared: PreparedSet,
        modes: Sequence[SearchMode],
        limit: int | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> list[dict[str, Any]]:
        """One report per mode, in the shape of `kb eval retrieval --json`."""
        qa_set = prepared.qa_set
        questions = sample(qa_set.questions, limit)
        started = time.perf_counter()
        entries = prepared.entries or None
        unit_of = {e.entry_id: e.unit_id for e in prepared.entries if e.entry_id != e.unit_id}
        with scratch_index(
            self._settings, qa_set, prepared.vectors.vectors, entries=entries,
            sentence_vectors=prepared.sentence_vectors_by_entry(),
        ) as index:  # fmt: skip
            index_s = time.perf_counter() - started
            results = run_questions(
                questions,
                self._embedder,
                index,
                modes,
                TOP_K,
                on_progress,
                unit_of=unit_of,
                languages=self._settings.embedder.languages,
            )
        index_settings = self._settings.index
        common = {
            "dataset": str(prepared.path),
            "name": qa_set.name,
            "format": qa_set.format,
            "questions": len(questions),
            "questions_total": len(qa_set.questions),
            "questions_skipped": qa_set.skipped,
            "units": len(qa_set.units),
            "units_chunked": qa_set.chunked,
            "units_truncated": prepared.units_truncated,
            "units_split": prepared.units_split,
            "entries": len(prepared.entries) or len(qa_set.units),
            # What the scratch index was built with (kb.container.build_scratch_index reads the same settings).
            "fusion": index_settings.fusion,
            "fusion_weights": {
                "dense": index_settings.dense_weight,
                "sentences": index_settings.sentence_weight,
                "sparse": index_settings.sparse_weight,
            },
            "bm25_terms": {
                "pair_weight": index_settings.bm25_pair_weight,
                "han_bigram_weight": index_settings.bm25_han_bigram_weight,
            },
            "top_k": TOP_K,
            "embedder": self._model_key().split("\0")[0],
            "embed_units_s": round(prepared.vectors.seconds, 2),
            "embeddings_cached": prepared.vectors.cached,
            "sentences": len(prepared.sentence_vectors.vectors) if prepared.sentence_vectors else 0,
            "embed_sentences_s": round(prepared.sentence_vectors.seconds, 2) if prepared.sentence_vectors else 0.0,
            "index_s": round(index_s, 2),
        }
        return [{"dataset": common["dataset"], **result.report(), **common} for result in results]
