"""Retrieval evaluation: a QA set -> a scratch index of its retrieval units -> recall@k, MRR@10, nDCG@10, latency.

Formats (see ../shared/SOURCES.md):
- SQuAD json (XQuAD, CMRC 2018, COVID-QA): each context is a unit and the gold is the context of the question.
  Sets whose contexts are whole documents (COVID-QA papers) are chunked as ingestion chunks them instead, and the
  gold is the chunk(s) holding the answer's start.
- BEIR directory (SciFact): corpus documents (title + text) are units; the questions are the queries of
  qrels/test.tsv, the gold their judged documents.
- TAT-QA json: each context's table (as a Markdown table) and each of its paragraphs are units; the gold is the
  paragraphs of `rel_paragraphs` plus the table when `answer_from` names it.

The units are embedded with the project's embedder (cached on disk by model and content, so comparing search
modes embeds once) and upserted into a fresh Qdrant Edge shard in a temporary directory. A unit longer than the
embedder's window is indexed as the chunks ingestion would make of it (so the dense side sees all of its text, not
its first 256 tokens) when the embedder knows its language (EmbedderSettings.languages); a unit then scores as its
best chunk: rankings are of units, each once, in the order of its first chunk. Each entry in such a language also
gets its sentences' vectors, as ingestion gives a chunk (IngestSettings.sentence_vectors), for hybrid search's
best-sentence list.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ingest.chunk import Chunker, chunk_id_for
from ingest.partition import Block
from ingest.pipeline import sentences_to_embed
from kb.adapters.bm25 import Bm25Terms, HybridFusion
from kb.languages import embedder_covers, search_mode_for
from kb.models import Chunk
from kb.ports import Embedder, SearchMode, VectorIndex
from kb.settings import Settings

QAFormat = Literal["squad", "beir", "tatqa"]
TOP_K = 10
# SQuAD-format sets whose contexts average more characters than this are documents to chunk (COVID-QA: 23.5k),
# not paragraphs (XQuAD, CMRC: under 1k).
DOCUMENT_CONTEXT_CHARS = 4000
# Same room as ingest.pipeline leaves in the embedding window for a section heading and special tokens.
_HEADING_RESERVE_TOKENS = 48
# Per call to the embedder: sentence-transformers sorts each call's texts by length, so larger calls pad less.
_EMBED_BATCH = 1024

ProgressCallback = Callable[[int, int], None]


# --- QA sets -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One retrieval unit, indexed as one chunk."""

    unit_id: str
    document_id: str
    text: str


@dataclass(frozen=True)
class IndexEntry:
    """What the scratch index holds for a unit: the unit itself, or one of its chunks when it is too long."""

    entry_id: str
    unit_id: str
    document_id: str
    ordinal: int
    text: str
    embed_text: str  # embedded and BM25-encoded (a chunk of a titled unit carries the title, as in ingestion)
    sentences: tuple[str, ...] = ()  # embedded for the sentence side of hybrid search, as ingestion does


def index_entries(
    qa_set: QASet, chunker: Chunker | None, long_units: Collection[str]
) -> tuple[list[IndexEntry], int]:
    """The scratch index's entries and how many of `long_units` (unit ids) were split into chunks (none without
    a chunker)."""
    entries: list[IndexEntry] = []
    split = 0
    for unit in qa_set.units:
        if chunker is None or qa_set.chunked or unit.unit_id not in long_units:
            entries.append(IndexEntry(unit.unit_id, unit.unit_id, unit.document_id, 0, unit.text, unit.text))
            continue
        split += 1
        if qa_set.format == "beir" and "\n" in unit.text:  # title + abstract: the title heads every chunk
            title, body = unit.text.split("\n", 1)
            blocks = [Block("heading", title), *_text_blocks(body)]
        else:
            blocks = _text_blocks(unit.text)
        for chunk in chunker.chunk(blocks, document_id=unit.unit_id, filename=qa_set.name, groups=[]):
            entries.append(
                IndexEntry(
                    chunk.chunk_id, unit.unit_id, unit.document_id, chunk.ordinal, chunk.text,
                    chunk.embed_text or chunk.text,
                )
            )
    return entries, split


@dataclass(frozen=True)
class Question:
    question_id: str
    text: str
    gold: frozenset[str]  # unit ids


@dataclass
class QASet:
    name: str
    format: QAFormat
    units: list[Unit]
    questions: list[Question]
    chunked: bool = False
    # Questions dropped because they have no gold unit (SQuAD 2.0 unanswerables, TAT-QA without evidence).
    skipped: int = 0


def detect_format(path: Path) -> QAFormat:
    if path.is_dir():
        if any((path / name).is_file() for name in ("corpus.jsonl.gz", "corpus.jsonl")):
            return "beir"
        raise ValueError(f"{path}: a directory but not a BEIR dataset (no corpus.jsonl[.gz])")
    with path.open(encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        return "squad"
    if isinstance(data, list) and data and isinstance(data[0], dict) and {"table", "paragraphs"} <= data[0].keys():
        return "tatqa"
    raise ValueError(f"{path}: neither SQuAD, TAT-QA nor BEIR")


def dataset_name(path: Path) -> str:
    path = path.resolve()
    # ../shared/eval/scifact/beir -> scifact
    return path.parent.name if path.is_dir() and path.name == "beir" else path.stem


def load_qa_set(path: Path, chunker: Chunker | None = None, max_documents: int | None = None) -> QASet:
    """Load a QA set; `chunker` is needed only for SQuAD sets of whole documents, which `max_documents` may cut
    down to their first N documents (and those documents' questions)."""
    fmt = detect_format(path)
    if fmt == "beir":
        return load_beir(path)
    if fmt == "tatqa":
        return load_tatqa(path)
    return load_squad(path, chunker, max_documents)


def load_squad(path: Path, chunker: Chunker | None = None, max_documents: int | None = None) -> QASet:
    name = dataset_name(path)
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    contexts = [(article, paragraph) for article in data for paragraph in article["paragraphs"]]
    mean_chars = sum(len(p["context"]) for _, p in contexts) / max(1, len(contexts))
    chunked = mean_chars > DOCUMENT_CONTEXT_CHARS
    if chunked and chunker is None:
        raise ValueError(f"{path}: contexts are whole documents and need a chunker")
    if chunked and max_documents is not None:
        contexts = contexts[:max_documents]

    units: list[Unit] = []
    questions: list[Question] = []
    skipped = 0
    for number, (_article, paragraph) in enumerate(contexts):
        context = paragraph["context"]
        document_id = f"{name}:{number}"
        if chunked:
            assert chunker is not None
            chunks = chunker.chunk(_text_blocks(context), document_id=document_id, filename=name, groups=[])
            spans = locate(context, [c.text for c in chunks])
            context_units = [Unit(c.chunk_id, document_id, c.text) for c in chunks]
        else:
            spans = [(0, len(context))]
            context_units = [Unit(chunk_id_for(document_id, 0), document_id, context)]
        units.extend(context_units)
        for qa in paragraph["qas"]:
            starts = [a["answer_start"] for a in qa.get("answers") or [] if a.get("answer_start", -1) >= 0]
            gold = frozenset(
                unit.unit_id
                for unit, (start, end) in zip(context_units, spans, strict=True)
                if any(start <= s < end for s in starts)
            )
            if qa.get("is_impossible") or not gold:
                skipped += 1
                continue
            questions.append(Question(str(qa["id"]), qa["question"], gold))
    return QASet(name, "squad", units, questions, chunked=chunked, skipped=skipped)


def _text_blocks(context: str) -> list[Block]:
    return [Block("text", line.strip()) for line in context.split("\n") if line.strip()]


def locate(source: str, pieces: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans in `source` of `pieces` taken from it in order, possibly overlapping.

    Chunks re-join their sentences with their own separators, so pieces are matched with all whitespace removed.
    A piece that still does not match (the tokenizer dropped a control character) is placed by its first 32
    non-space characters.
    """
    positions = [i for i, ch in enumerate(source) if not ch.isspace()]
    squeezed = "".join(source[i] for i in positions)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for piece in pieces:
        needle = "".join(piece.split())
        if not needle:
            spans.append((0, 0))
            continue
        at = squeezed.find(needle, cursor)
        if at < 0:
            at = squeezed.find(needle[:32], cursor)
        if at < 0:
            raise ValueError(f"chunk not found in its source: {piece[:80]!r}")
        last = min(at + len(needle), len(positions)) - 1
        spans.append((positions[at], positions[last] + 1))
        cursor = at
    return spans


def load_beir(path: Path, split: str = "test") -> QASet:
    corpus_path = path / "corpus.jsonl.gz"
    opener = gzip.open if corpus_path.is_file() else open
    corpus_path = corpus_path if corpus_path.is_file() else path / "corpus.jsonl"
    units: list[Unit] = []
    unit_of: dict[str, str] = {}
    with opener(corpus_path, "rt", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            doc = json.loads(line)
            document_id = str(doc["_id"])
            text = "\n".join(part for part in (doc.get("title") or "", doc.get("text") or "") if part.strip())
            unit = Unit(chunk_id_for(document_id, 0), document_id, text)
            units.append(unit)
            unit_of[document_id] = unit.unit_id

    relevant: dict[str, set[str]] = {}
    with (path / "qrels" / f"{split}.tsv").open(encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 3 or not fields[2].lstrip("-").isdigit():
                continue  # the header
            if int(fields[2]) > 0 and fields[1] in unit_of:
                relevant.setdefault(fields[0], set()).add(unit_of[fields[1]])

    questions: list[Question] = []
    with (path / "queries.jsonl").open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                query = json.loads(line)
                if str(query["_id"]) in relevant:
                    questions.append(Question(str(query["_id"]), query["text"], frozenset(relevant[str(query["_id"])])))
    return QASet(dataset_name(path), "beir", units, questions)


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    if not rows:
        return ""
    width = max(len(r) for r in rows)

    def line(cells: Sequence[str]) -> str:
        cells = [*cells, *[""] * (width - len(cells))]
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ").strip() for c in cells) + " |"

    return "\n".join([line(rows[0]), "| " + " | ".join("---" for _ in range(width)) + " |", *map(line, rows[1:])])


def load_tatqa(path: Path) -> QASet:
    units: list[Unit] = []
    questions: list[Question] = []
    skipped = 0
    for context in json.loads(path.read_text(encoding="utf-8")):
        table = context["table"]
        table_unit = Unit(chunk_id_for(table["uid"], 0), table["uid"], markdown_table(table["table"]))
        units.append(table_unit)
        paragraph_unit: dict[str, str] = {}
        for paragraph in context["paragraphs"]:
            unit = Unit(chunk_id_for(paragraph["uid"], 0), paragraph["uid"], paragraph["text"])
            units.append(unit)
            paragraph_unit[str(paragraph["order"])] = unit.unit_id
        for question in context["questions"]:
            gold = {paragraph_unit[str(o)] for o in question.get("rel_paragraphs") or [] if str(o) in paragraph_unit}
            if "table" in (question.get("answer_from") or ""):
                gold.add(table_unit.unit_id)
            if not gold:
                skipped += 1
                continue
            questions.append(Question(question["uid"], question["question"], frozenset(gold)))
    return QASet(dataset_name(path), "tatqa", units, questions, skipped=skipped)


def sample(questions: Sequence[Question], limit: int | None) -> list[Question]:
    """`limit` questions spread evenly over the set (deterministic; the first N would cover only the first topics)."""
    if limit is None or limit >= len(questions):
        return list(questions)
    return [questions[i * len(questions) // limit] for i in range(max(0, limit))]


# --- Metrics -------------------------------------------------------------------------------------------------


def hit_at(ranked: Sequence[str], gold: Collection[str], k: int) -> float:
    """1.0 if any gold unit is in the top k, else 0.0.

    Averaged over questions this is the recall@k reported here: the share of questions with at least one gold
    unit in the top k (the usual "hit rate" reading for QA retrieval; with one gold per question it equals the
    IR definition, the share of gold units found).
    """
    return 1.0 if any(unit in gold for unit in ranked[:k]) else 0.0


def reciprocal_rank(ranked: Sequence[str], gold: Collection[str], k: int = TOP_K) -> float:
    """1 / rank of the first gold unit within the top k, 0.0 if none is there."""
    for rank, unit in enumerate(ranked[:k], 1):
        if unit in gold:
            return 1.0 / rank
    return 0.0


def ndcg(ranked: Sequence[str], gold: Collection[str], k: int = TOP_K) -> float:
    """nDCG@k with binary relevance: DCG = sum of 1/log2(rank+1) over gold units in the top k, divided by the
    DCG of the ideal ranking (all gold units first, at most k of them)."""
    if not gold:
        return 0.0
    dcg = sum(1.0 / math.log2(rank + 1) for rank, unit in enumerate(ranked[:k], 1) if unit in gold)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(gold), k) + 1))
    return dcg / ideal


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between closest ranks (numpy's default)."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else 0.0


def summarize(rankings: Sequence[tuple[Sequence[str], Collection[str]]]) -> dict[str, float]:
    """Mean recall@1/5/10, MRR@10 and nDCG@10 over (ranked unit ids, gold unit ids) pairs."""
    n = len(rankings)
    if n == 0:
        return {"recall@1": 0.0, "recall@5": 0.0, "recall@10": 0.0, "mrr@10": 0.0, "ndcg@10": 0.0}
    return {
        "recall@1": sum(hit_at(r, g, 1) for r, g in rankings) / n,
        "recall@5": sum(hit_at(r, g, 5) for r, g in rankings) / n,
        "recall@10": sum(hit_at(r, g, 10) for r, g in rankings) / n,
        "mrr@10": sum(reciprocal_rank(r, g, TOP_K) for r, g in rankings) / n,
        "ndcg@10": sum(ndcg(r, g, TOP_K) for r, g in rankings) / n,
    }


# --- Embedding cache and scratch index -----------------------------------------------------------------------


def default_cache_dir(settings: Settings) -> Path:
    return settings.models_dir.expanduser().resolve().parent / "eval-cache"


@dataclass
class UnitVectors:
    vectors: np.ndarray
    seconds: float  # spent embedding now; 0 when read from the cache
    cached: bool


def embed_units(
    units: Sequence[Unit] | Sequence[IndexEntry],
    embedder: Embedder,
    model_key: str,
    cache_dir: Path | None,
    on_progress: ProgressCallback | None = None,
) -> UnitVectors:
    """Unit vectors, from `cache_dir` when this model (`model_key`: path and passage prompt) embedded these texts."""
    texts = [u.embed_text if isinstance(u, IndexEntry) else u.text for u in units]
    return embed_texts(texts, embedder, model_key, cache_dir, on_progress)


def embed_texts(
    texts: Sequence[str],
    embedder: Embedder,
    model_key: str,
    cache_dir: Path | None,
    on_progress: ProgressCallback | None = None,
) -> UnitVectors:
    """Vectors of `texts`, from `cache_dir` when this model (`model_key`: path and passage prompt) embedded them."""
    digest = hashlib.sha256(model_key.encode())
    for text in texts:
        digest.update(b"\0" + text.encode())
    cache_file = cache_dir / f"{digest.hexdigest()[:32]}.npy" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        vectors = np.load(cache_file)
        if vectors.shape == (len(texts), embedder.dimension):
            return UnitVectors(vectors, 0.0, cached=True)

    started = time.perf_counter()
    store = _TextVectorStore(cache_dir, model_key, embedder.dimension) if cache_dir else None
    known = store.get(texts) if store else {}
    missing = list(dict.fromkeys(t for t in texts if t not in known))
    done = len(texts) - len(missing)
    for first in range(0, len(missing), _EMBED_BATCH):
        batch = missing[first : first + _EMBED_BATCH]
        embedded = np.asarray(embedder.embed_documents(batch), dtype=np.float32)
        known.update(zip(batch, embedded, strict=True))
        if store:
            store.put(batch, embedded)
        done += len(batch)
        if on_progress:
            on_progress(done, len(texts))
    vectors = (
        np.stack([known[t] for t in texts]).astype(np.float32)
        if texts
        else np.zeros((0, embedder.dimension), dtype=np.float32)
    )
    seconds = time.perf_counter() - started
    if store:
        store.close()
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_suffix(".partial.npy")
        np.save(partial, vectors)
        partial.replace(cache_file)
    return UnitVectors(vectors, seconds, cached=False)


class _TextVectorStore:
    """Vectors of single texts by model and text, so a set whose units changed re-embeds only the new texts
    (comparing ways of cutting units into entries would otherwise embed a whole set each time)."""

    def __init__(self, cache_dir: Path, model_key: str, dimension: int) -> None:
        import sqlite3

        cache_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(cache_dir / "texts.sqlite3")
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vector BLOB NOT NULL)")
        self._model = model_key.encode()
        self._dimension = dimension

    def _key(self, text: str) -> bytes:
        return hashlib.sha256(self._model + b"\0" + text.encode()).digest()

    def get(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for text in dict.fromkeys(texts):
            row = self._db.execute("SELECT vector FROM vectors WHERE key = ?", (self._key(text),)).fetchone()
            if row is not None:
                vector = np.frombuffer(row[0], dtype=np.float32)
                if vector.shape == (self._dimension,):
                    found[text] = vector
        return found

    def put(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        rows = [(self._key(t), np.asarray(v, dtype=np.float32).tobytes()) for t, v in zip(texts, vectors, strict=True)]
        self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)", rows)
        self._db.commit()

    def close(self) -> None:
        self._db.close()


@contextmanager
def scratch_index(
    qa_set: QASet,
    vectors: np.ndarray,
    fusion: HybridFusion | int,
    batch: int = 512,
    entries: Sequence[IndexEntry] | None = None,
    terms: Bm25Terms | None = None,
    sentence_vectors: Sequence[np.ndarray] | None = None,
) -> Iterator[VectorIndex]:
    """A fresh Qdrant Edge shard in a temporary directory holding the set's units (or `entries`); removed on exit.
    `fusion`: the hybrid fusion, or just its candidate depth; `sentence_vectors`: per entry, its sentences' vectors."""
    from kb.adapters.edge_index import EdgeVectorIndex

    if isinstance(fusion, int):
        fusion = HybridFusion(candidates=fusion)
    if entries is None:
        entries = [IndexEntry(u.unit_id, u.unit_id, u.document_id, 0, u.text, u.text) for u in qa_set.units]
    with tempfile.TemporaryDirectory(prefix="kb-eval-") as directory:
        index = EdgeVectorIndex(Path(directory) / "index", int(vectors.shape[1]), fusion=fusion, terms=terms)
        try:
            for first in range(0, len(entries), batch):
                chunks = [
                    Chunk(
                        chunk_id=e.entry_id, document_id=e.document_id, ordinal=e.ordinal, text=e.text,
                        filename=qa_set.name, embed_text=e.embed_text if e.embed_text != e.text else None,
                    )
                    for e in entries[first : first + batch]
                ]
                index.upsert(
                    chunks,
                    vectors[first : first + len(chunks)].tolist(),
                    [v.tolist() for v in sentence_vectors[first : first + len(chunks)]] if sentence_vectors else None,
                )
            yield index
        finally:
            index.close()


# --- Running the questions -----------------------------------------------------------------------------------


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
        from kb.container import build_embedder

        return cls(settings, build_embedder(settings), cache_dir, split_long_units=split_long_units)

    def chunker(self) -> Chunker:
        max_body = min(self._settings.ingest.chunk_tokens, self._embedder.max_tokens - _HEADING_RESERVE_TOKENS)
        return Chunker(self._embedder, max_body, self._settings.ingest.chunk_overlap_tokens)  # type: ignore[arg-type]

    def _model_key(self) -> str:
        from kb.container import embedder_model_path

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
        # is BM25 alone, which scores a whole unit better than its best chunk (xquad.zh recall@1 .920 vs .903).
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
        fusion = HybridFusion.from_settings(self._settings.index)
        entries = prepared.entries or None
        unit_of = {e.entry_id: e.unit_id for e in prepared.entries if e.entry_id != e.unit_id}
        terms = Bm25Terms.from_settings(self._settings.index)
        with scratch_index(
            qa_set, prepared.vectors.vectors, fusion, entries=entries, terms=terms,
            sentence_vectors=prepared.sentence_vectors_by_entry(),
        ) as index:  # fmt: skip
            index_s = time.perf_counter() - started
            results = run_questions(
                questions, self._embedder, index, modes, TOP_K, on_progress,
                unit_of=unit_of, languages=self._settings.embedder.languages,
            )
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
            "fusion": fusion.method,
            "fusion_weights": {
                "dense": fusion.dense_weight, "sentences": fusion.sentence_weight, "sparse": fusion.sparse_weight,
            },  # fmt: skip
            "bm25_terms": {"pair_weight": terms.pair_weight, "han_bigram_weight": terms.han_bigram_weight},
            "top_k": TOP_K,
            "embedder": self._model_key().split("\0")[0],
            "embed_units_s": round(prepared.vectors.seconds, 2),
            "embeddings_cached": prepared.vectors.cached,
            "sentences": len(prepared.sentence_vectors.vectors) if prepared.sentence_vectors else 0,
            "embed_sentences_s": round(prepared.sentence_vectors.seconds, 2) if prepared.sentence_vectors else 0.0,
            "index_s": round(index_s, 2),
        }
        return [{"dataset": common["dataset"], **result.report(), **common} for result in results]
