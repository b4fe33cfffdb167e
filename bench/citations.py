"""Answers on the embedded default, measured as a reader judges them: right, cited, not repeating itself, and
refusing when the documents lack the answer. SQuAD-format sets (XQuAD-en, CMRC 2018) in Qdrant Edge shards built
as the service builds its index (kb.container.build_scratch_index, chunk and sentence vectors as ingestion embeds
them), each question asked through the ask pipeline (service.ask.pipeline.AskPipeline) with the real in-process
vLLM engine.

python -m bench.citations [--sets xquad-en cmrc2018] [--questions N] [--seed S] [--mode generate auto extract]
                          [--budgets 1000] [--sampling repetition_penalty=1.1,frequency_penalty=0.3 ...]
                          [--no-refusal] [--with-verifier] [--out bench/results/NAME.json]

One run per set x mode x budget x sampling. Each run asks the sampled questions against the whole set (answerable)
and, unless --no-refusal, the same questions against a second shard built without the sampled questions' gold
paragraphs (unanswerable: only the questions none of whose gold answers occurs in a paragraph left in that shard).

Answerable questions:
- answer_has_gold: share of final answers (Done's text) that contain a gold answer text, case-insensitive;
- citation_precision: share of citations whose passage is the question's gold paragraph or contains a gold answer
  text (a citation of another paragraph that happens to hold the answer counts: it supports the answer too);
- gold_cited: share of answers citing the gold paragraph;
- repeated: share of final answers with a repeated sentence (sentences normalised: case, whitespace, punctuation,
  [n] markers; only sentences of two words and five letters or more count, a Han character two letters);
  repeated_streamed: the same of the text the client was streamed (Token events);
- looped / looped_streamed: the same for a run of LOOP_TOKENS tokens that occurs twice (a loop without sentence
  ends, or a sentence repeated with a small change);
- model_repeated: share of the model's answers (as it wrote them, before the pipeline cut any repetition) that
  repeat themselves as the pipeline's guard (service.ask.generate) sees it: what the sampling settings change;
- answered: share not answered with the no-information text; grounded: share with Done.grounded;
- extract / generate: share answered by quoted evidence / by the model (Done.mode; "generate" before it existed);
- unsupported: share of citations flagged supported=False;
- first_text_ms_p50 (first Token event), first_token_ms_p50 (the model's first token), total_ms_p50 / p95.
Unanswerable questions: refused (the no-information text and no citations), and grounded_unanswerable (answers
claiming grounding, i.e. invented).

--with-verifier also runs bench.verifier.run(set, questions, seed) per set (the labelled check of the citation
verifier), when that module exists. Prints a table and, as its last line, one JSON object (also written to --out).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import inspect
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.machine import describe

REPO = Path(__file__).resolve().parents[1]
EVAL_DIR = REPO.parent / "shared" / "eval"
SETS = {"xquad-en": "xquad/xquad.en.json", "cmrc2018": "cmrc2018/cmrc2018_dev.json"}
# CMRC 2018's dev set has 848 paragraphs: the sampled questions' own plus others up to this many keep indexing (and
# the 2-core development machine) within minutes; XQuAD-en's 240 are all indexed.
MAX_PARAGRAPHS = 300


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


@dataclass
class QASet:
    name: str
    path: Path
    paragraphs: list[Paragraph]
    questions: list[QA]  # the sample
    unanswerable: list[QA] = field(default_factory=list)  # of the sample: no gold answer left in the holdout shard
    holdout: list[Paragraph] = field(default_factory=list)  # the paragraphs without the sample's gold ones


def load(name: str, path: Path, question_count: int, seed: int, max_paragraphs: int = MAX_PARAGRAPHS) -> QASet:
    """One chunk per paragraph (an article is a document whose paragraphs keep their order); the sampled questions'
    paragraphs, and others drawn with the same seed up to `max_paragraphs`."""
    import uuid

    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    paragraphs: list[Paragraph] = []
    questions: list[QA] = []
    for a, article in enumerate(data):
        document_id = f"{name}-{a:04d}"
        for p, paragraph in enumerate(article["paragraphs"]):
            chunk_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{document_id}/{p}"))
            paragraphs.append(Paragraph(chunk_id, document_id, p, article.get("title", ""), paragraph["context"]))
            for qa in paragraph["qas"]:
                answers = tuple(dict.fromkeys(x["text"].strip() for x in qa["answers"] if x["text"].strip()))
                if answers:
                    questions.append(QA(qa["question"], chunk_id, answers))
    rng = random.Random(seed)
    sample = rng.sample(questions, min(question_count, len(questions)))
    if len(paragraphs) > max_paragraphs:
        gold = {q.gold_chunk_id for q in sample}
        others = [p for p in paragraphs if p.chunk_id not in gold]
        keep = gold | {p.chunk_id for p in rng.sample(others, max(0, max_paragraphs - len(gold)))}
        paragraphs = [p for p in paragraphs if p.chunk_id in keep]
    gold = {q.gold_chunk_id for q in sample}
    holdout = [p for p in paragraphs if p.chunk_id not in gold]
    unanswerable = [q for q in sample if not any(contains_answer(p.text, q.answers) for p in holdout)]
    return QASet(name, path, paragraphs, sample, unanswerable, holdout)


def contains_answer(text: str, answers: Sequence[str]) -> bool:
    folded = text.casefold()
    return any(answer.casefold() in folded for answer in answers)


# What a repeated sentence is, independently of the guard in service.ask.generate (a measure must not share the
# code it measures): sentences split after . ! ? followed by space, after 。！？ and at line breaks.
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])|\n+")
_MARKER = re.compile(r"[\[【]\s*(?:sources?\s*)?\d+(?:\s*[,，、]\s*\d+)*\s*[\]】]", re.IGNORECASE)
_TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def repeated_sentence(text: str) -> str | None:
    """The first sentence of `text` that repeats an earlier one (normalised), or None."""
    seen: set[str] = set()
    for sentence in _SENTENCE_SPLIT.split(text):
        tokens = _TOKEN.findall(_MARKER.sub(" ", sentence).casefold())
        if len(tokens) < 2 or sum(2 if _HAN.match(t) else len(t) for t in tokens) < 5:  # "e.g.", "是的。"
            continue
        key = " ".join(tokens)
        if key in seen:
            return sentence.strip()
        seen.add(key)
    return None


# A loop without sentence ends ("? ? ? ?", "in the context of X and Y in the context of X and Y"): a run of this many
# tokens (words, Han characters, punctuation marks; [n] markers left out) that occurs twice.
LOOP_TOKENS = 12
_LOOP_TOKEN = re.compile(_TOKEN.pattern + r"|[^\w\s]")


def looped(text: str, n: int = LOOP_TOKENS) -> str | None:
    """The first run of `n` tokens of `text` that occurred before, or None."""
    tokens = _LOOP_TOKEN.findall(_MARKER.sub(" ", text).casefold())
    seen: set[tuple[str, ...]] = set()
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i : i + n])
        if gram in seen:
            return " ".join(gram)
        seen.add(gram)
    return None


def model_repeats(written: str) -> bool:
    """Whether the model's text repeats itself as the pipeline's guard sees it (where the guard cut it, `written`
    ends just after the repeat began, too early for the measures above); without a guard (the code before issue
    14), as those measures see it."""
    try:
        from service.ask.generate import RepetitionGuard
    except ImportError:
        return (repeated_sentence(written) or looped(written)) is not None
    guard = RepetitionGuard()
    guard.feed(written)
    guard.finish()
    return guard.stopped


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 3) if whole else None


class RecordingGenerator:
    """The real generator, remembering the last prompt it was given (to see whether the gold paragraph was in it)
    and what the model wrote, before the pipeline's repetition guard cut it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.last_messages: list[dict[str, str]] = []
        self.written: list[str] = []

    async def stream(
        self, messages: Sequence[dict[str, str]], max_tokens: int | None = None, **options: Any
    ) -> AsyncIterator[str]:
        self.last_messages = list(messages)
        self.written = []
        inner = self._inner.stream(messages, max_tokens, **options)  # json_schema, session: as the pipeline sent them
        try:
            async for delta in inner:
                self.written.append(delta)
                yield delta
        finally:
            await inner.aclose()  # closing this stream closes the engine's (it aborts the request)

    def __getattr__(self, name: str) -> Any:  # count_tokens(_many), max_model_len, ...: the packer sizes as it would
        return getattr(self._inner, name)


@dataclass
class Asked:
    answer: str
    streamed: str
    citations: list[Any]
    grounded: bool
    mode: str
    first_text_ms: float | None
    first_token_ms: float | None
    total_ms: float
    sources: int
    prompt: str
    written: str  # by the model, before any cut


async def ask(pipeline: Any, recording: RecordingGenerator, text: str) -> Asked:
    from service.ask.events import Citations, Done, Failed, Token
    from service.ask.pipeline import Question

    recording.last_messages, recording.written = [], []
    started = time.perf_counter()
    first_text: float | None = None
    streamed: list[str] = []
    citations: list[Any] = []
    done: Any = None
    async for event in pipeline.stream(Question(text)):
        if isinstance(event, Token):
            if first_text is None:
                first_text = (time.perf_counter() - started) * 1000
            streamed.append(event.text)
        elif isinstance(event, Citations):
            citations = list(event.citations)
        elif isinstance(event, Done):
            done = event
        elif isinstance(event, Failed):
            raise RuntimeError(f"{event.title}: {event.detail}")
    if done is None:
        raise RuntimeError("the answer stream ended without its done event")
    return Asked(
        answer=done.answer,
        streamed="".join(streamed),
        citations=citations,
        grounded=done.grounded,
        mode=getattr(done, "mode", "generate" if done.grounded else "none"),
        first_text_ms=first_text,
        first_token_ms=done.timings_ms.get("first_token"),
        total_ms=(time.perf_counter() - started) * 1000,
        sources=getattr(done, "sources", 0),
        prompt="\n".join(m["content"] for m in recording.last_messages),
        written="".join(recording.written),
    )


def refused(asked: Asked) -> bool:
    from service.ask.prompt import NO_INFORMATION

    return not asked.citations and (asked.mode == "none" or asked.answer.strip() in NO_INFORMATION.values())


async def ask_answerable(pipeline: Any, recording: RecordingGenerator, qa_set: QASet) -> dict[str, Any]:
    text_of = {p.chunk_id: p.text for p in qa_set.paragraphs}
    n = len(qa_set.questions)
    has_gold = cited_gold = in_context = asked_model = answered = grounded = 0
    repeated = repeated_streamed = loops = loops_streamed = model_repeated = 0
    citations = precise = unsupported = 0
    modes: dict[str, int] = {}
    first_text: list[float] = []
    first_token: list[float] = []
    total: list[float] = []
    examples: list[dict[str, Any]] = []
    started = time.perf_counter()
    for i, qa in enumerate(qa_set.questions, 1):
        asked = await ask(pipeline, recording, qa.question)
        if i % 20 == 0:
            print(
                f"{qa_set.name}: {i} of {n} answerable asked in {time.perf_counter() - started:.0f} s", file=sys.stderr
            )
        total.append(asked.total_ms)
        if asked.first_text_ms is not None:
            first_text.append(asked.first_text_ms)
        if asked.first_token_ms is not None:
            first_token.append(asked.first_token_ms)
        modes[asked.mode] = modes.get(asked.mode, 0) + 1
        answered += not refused(asked)
        grounded += asked.grounded
        correct = contains_answer(asked.answer, qa.answers)
        has_gold += correct
        cited_gold += any(c.chunk_id == qa.gold_chunk_id for c in asked.citations)
        if asked.prompt:
            asked_model += 1
            in_context += text_of[qa.gold_chunk_id] in asked.prompt
        loop = repeated_sentence(asked.answer)
        repeated += loop is not None
        repeated_streamed += repeated_sentence(asked.streamed) is not None
        loop = loop or looped(asked.answer)
        loops += looped(asked.answer) is not None
        loops_streamed += looped(asked.streamed) is not None
        model_repeated += asked.prompt != "" and model_repeats(asked.written)
        for citation in asked.citations:
            citations += 1
            precise += citation.chunk_id == qa.gold_chunk_id or contains_answer(
                text_of.get(citation.chunk_id, ""), qa.answers
            )
            unsupported += not citation.supported
        if len(examples) < 5 or loop is not None and len(examples) < 8:
            examples.append({"question": qa.question, "gold": qa.answers[0], "answer": asked.answer[:400],
                             "mode": asked.mode, "correct": correct, "repeated": loop})  # fmt: skip
    return {
        "questions": n,
        "answer_has_gold": ratio(has_gold, n),
        "citation_precision": ratio(precise, citations),
        "gold_cited": ratio(cited_gold, n),
        "repeated": ratio(repeated, n),
        "repeated_streamed": ratio(repeated_streamed, n),
        "looped": ratio(loops, n),
        "looped_streamed": ratio(loops_streamed, n),
        "model_repeated": ratio(model_repeated, asked_model),
        "answered": ratio(answered, n),
        "grounded": ratio(grounded, n),
        "modes": {k: ratio(v, n) for k, v in sorted(modes.items())},
        "extract": ratio(modes.get("extract", 0), n),
        "gold_in_context": ratio(in_context, asked_model),
        "citations_per_answer": ratio(citations, answered),
        "unsupported": ratio(unsupported, citations),
        "first_text_ms_p50": round(statistics.median(first_text), 1) if first_text else None,
        "first_token_ms_p50": round(statistics.median(first_token), 1) if first_token else None,
        "total_ms_p50": round(statistics.median(total), 1),
        "total_ms_p95": round(percentile(total, 0.95), 1),
        "seconds": round(time.perf_counter() - started, 1),
        "examples": examples,
    }


async def ask_unanswerable(
    pipeline: Any, recording: RecordingGenerator, qa_set: QASet, limit: int | None = None
) -> dict[str, Any]:
    n = len(qa_set.unanswerable[:limit])
    refusals = grounded = 0
    modes: dict[str, int] = {}
    examples: list[dict[str, Any]] = []
    started = time.perf_counter()
    for qa in qa_set.unanswerable[:limit]:
        asked = await ask(pipeline, recording, qa.question)
        modes[asked.mode] = modes.get(asked.mode, 0) + 1
        refusals += refused(asked)
        grounded += asked.grounded
        if not refused(asked) and len(examples) < 5:
            examples.append({"question": qa.question, "answer": asked.answer[:300], "mode": asked.mode})
    return {
        "questions": n,
        "refused": ratio(refusals, n),
        "grounded": ratio(grounded, n),
        "modes": {k: ratio(v, n) for k, v in sorted(modes.items())},
        "seconds": round(time.perf_counter() - started, 1),
        "examples": examples,
    }


def parse_sampling(spec: str) -> dict[str, float]:
    """'repetition_penalty=1.1,frequency_penalty=0.3' -> GeneratorSettings fields; '' -> the settings as they are."""
    values: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, _, value = item.partition("=")
        values[key.strip()] = float(value)
    return values


def build_pipeline(retrieval: Any, generator: Any, settings: Any, extractor: Any) -> Any:
    """The pipeline as service.state builds it, with whichever answer settings this version of the code takes."""
    from service.ask.pipeline import AskPipeline

    parameters = inspect.signature(AskPipeline).parameters
    extra: dict[str, Any] = {}
    if "answer_settings" in parameters:
        extra["answer_settings"] = settings.answers
    if "extractor" in parameters and extractor is not None:
        extra["extractor"] = extractor
    return AskPipeline(retrieval, generator, settings.retrieval, settings.generator, **extra)


def index_set(settings: Any, embedder: Any, qa_set: QASet, directory: Path) -> tuple[Any, Any, float]:
    """Two shards of the set: all its paragraphs, and all but the sampled questions' gold paragraphs."""
    from ingest.pipeline import embed_chunks
    from kb.container import build_scratch_index
    from kb.models import Chunk

    started = time.perf_counter()
    languages = settings.embedder.languages if settings.ingest.sentence_vectors else None
    chunks = [
        Chunk(chunk_id=p.chunk_id, document_id=p.document_id, ordinal=p.ordinal, text=p.text,
              filename=f"{p.title or p.document_id}.txt")
        for p in qa_set.paragraphs
    ]  # fmt: skip
    vectors: list[list[float]] = []
    sentence_vectors: list[list[list[float]]] = []
    for first in range(0, len(chunks), 64):
        found, sentences = embed_chunks(embedder, chunks[first : first + 64], languages)
        vectors += found
        sentence_vectors += sentences
    full = build_scratch_index(settings, embedder.dimension, directory / f"{qa_set.name}-full")
    full.upsert(chunks, vectors, sentence_vectors)
    holdout_ids = {p.chunk_id for p in qa_set.holdout}
    keep = [i for i, c in enumerate(chunks) if c.chunk_id in holdout_ids]
    holdout = build_scratch_index(settings, embedder.dimension, directory / f"{qa_set.name}-holdout")
    holdout.upsert([chunks[i] for i in keep], [vectors[i] for i in keep], [sentence_vectors[i] for i in keep])
    return full, holdout, time.perf_counter() - started


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.mode:
        os.environ["KB_ANSWERS__MODE"] = args.mode[0]  # for anything that reads the settings itself
    from kb.container import build_embedder, build_generator
    from kb.settings import Settings

    load_start = os.getloadavg()
    eval_dir = Path(args.eval_dir)
    sets = [load(name, eval_dir / SETS[name], args.questions, args.seed, args.max_paragraphs) for name in args.sets]
    samplings = [parse_sampling(s) for s in args.sampling] or [{}]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kb-bench-citations-") as data_dir:
        settings = Settings(data_dir=Path(data_dir))
        if args.max_answer_tokens:
            settings.generator.max_answer_tokens = args.max_answer_tokens
        embedder = build_embedder(settings)
        extractor = None
        if importlib.util.find_spec("service.ask.extract") is not None:
            from service.ask.extract import Extractor

            extractor = Extractor(embedder, settings.embedder.languages)
        indexes = {}
        for qa_set in sets:
            full, holdout, seconds = index_set(settings, embedder, qa_set, Path(data_dir))
            indexes[qa_set.name] = (full, holdout)
            print(f"{qa_set.name}: {len(qa_set.paragraphs)} paragraphs indexed in {seconds:.0f} s", file=sys.stderr)
        generator = build_generator(settings)
        started = time.perf_counter()
        await generator.start()
        engine_start_s = time.perf_counter() - started
        recording = RecordingGenerator(generator)
        sampling_defaults = sampling_of(settings)
        defaults = {k: getattr(settings.generator, k) for s in samplings for k in s}
        try:
            for sampling in samplings:
                for key, value in {**defaults, **sampling}.items():
                    setattr(settings.generator, key, value)  # the adapter reads its settings at every request
                for mode in args.mode or [settings.answers.mode]:
                    settings.answers.mode = mode
                    for budget in args.budgets:
                        settings.retrieval = settings.retrieval.model_copy(update={"context_tokens": budget})
                        for qa_set in sets:
                            runs.append(await run_one(args, settings, embedder, recording, extractor, qa_set,
                                                      indexes[qa_set.name], mode, budget, sampling))  # fmt: skip
                            print(json.dumps({k: v for k, v in runs[-1].items() if k != "examples"}), file=sys.stderr)
                            if args.out:  # so far, in case the run is cut short
                                write(Path(args.out), {"partial": True, "runs": runs})
        finally:
            await generator.close()
            for full, holdout in indexes.values():
                full.close()
                holdout.close()
    verifier = None
    if args.with_verifier:
        if importlib.util.find_spec("bench.verifier") is None:
            verifier = {"error": "bench.verifier does not exist yet"}
        else:
            from bench import verifier as verifier_module

            known = getattr(verifier_module, "SETS", {})
            verifier = {
                name: verifier_module.run(
                    name if name in known else name.removesuffix("2018"), args.questions, args.seed
                )
                for name in args.sets
            }
    return {
        "bench": "citations",
        "machine": describe(),
        "load_average": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]},
        "sets": {
            s.name: {
                "dataset": str(s.path.relative_to(eval_dir.parent)),
                "paragraphs": len(s.paragraphs),
                "questions": len(s.questions),
                "unanswerable": len(s.unanswerable),
            }
            for s in sets
        },  # fmt: skip
        "seed": args.seed,
        "generator": "SmolLM2-135M-Instruct (in-process vLLM, CPU)"
        if not settings.generator.model
        else settings.generator.model,
        "max_model_len": settings.generator.max_model_len,
        "max_answer_tokens": settings.generator.max_answer_tokens,
        "sampling_defaults": sampling_defaults,
        "engine_start_s": round(engine_start_s, 1),
        "runs": runs,
        "verifier": verifier,
    }


SAMPLING_FIELDS = ("temperature", "top_p", "repetition_penalty", "frequency_penalty", "presence_penalty")


def sampling_of(settings: Any) -> dict[str, float]:
    return {k: getattr(settings.generator, k) for k in SAMPLING_FIELDS if hasattr(settings.generator, k)}


async def run_one(
    args: argparse.Namespace, settings: Any, embedder: Any, recording: RecordingGenerator, extractor: Any,
    qa_set: QASet, indexes: tuple[Any, Any], mode: str, budget: int, sampling: dict[str, float],
) -> dict[str, Any]:  # fmt: skip
    from service.ask.pipeline import AskPipeline
    from service.search.service import RetrievalService

    full, holdout = indexes

    def pipeline(index: Any) -> Any:
        retrieval = RetrievalService(embedder, index, settings.retrieval, languages=settings.embedder.languages)
        return build_pipeline(retrieval, recording, settings, extractor)

    report: dict[str, Any] = {
        "set": qa_set.name,
        "mode": mode,
        "context_tokens": budget,
        "sampling": sampling_of(settings),
        "mode_wired": "answer_settings" in inspect.signature(AskPipeline).parameters,
        "load_average": round(os.getloadavg()[0], 2),
    }
    report["answerable"] = await ask_answerable(pipeline(full), recording, qa_set)
    if not args.no_refusal:
        report["unanswerable"] = await ask_unanswerable(pipeline(holdout), recording, qa_set, args.max_unanswerable)
    return report


COLUMNS = (
    ("set", lambda r: r["set"]),
    ("mode", lambda r: r["mode"]),
    ("sampling", lambda r: " ".join(f"{k[:3]}={v}" for k, v in r["sampling"].items() if k.endswith("penalty"))),
    ("budget", lambda r: r["context_tokens"]),
    ("contains gold", lambda r: r["answerable"]["answer_has_gold"]),
    ("citation precision", lambda r: r["answerable"]["citation_precision"]),
    ("gold cited", lambda r: r["answerable"]["gold_cited"]),
    ("repeated", lambda r: r["answerable"]["repeated"]),
    ("repeated (streamed)", lambda r: r["answerable"]["repeated_streamed"]),
    ("looped", lambda r: r["answerable"].get("looped")),
    ("looped (streamed)", lambda r: r["answerable"].get("looped_streamed")),
    ("model repeated", lambda r: r["answerable"].get("model_repeated")),
    ("answered", lambda r: r["answerable"]["answered"]),
    ("grounded", lambda r: r["answerable"]["grounded"]),
    ("extract", lambda r: r["answerable"]["extract"]),
    ("unanswerable refused", lambda r: r.get("unanswerable", {}).get("refused")),
    ("unanswerable grounded", lambda r: r.get("unanswerable", {}).get("grounded")),
    ("first text p50 ms", lambda r: r["answerable"]["first_text_ms_p50"]),
    ("total p50 / p95 ms", lambda r: f"{r['answerable']['total_ms_p50']} / {r['answerable']['total_ms_p95']}"),
)  # fmt: skip


def markdown(runs: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(value(r)) for _, value in COLUMNS) + " |" for r in runs]
    return "\n".join(lines)


def write(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(SETS))
    parser.add_argument("--questions", type=int, default=100, help="sampled per set")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--mode", nargs="+", choices=["generate", "extract", "auto"], default=None,
                        help="KB_ANSWERS__MODE per run (default: the setting)")  # fmt: skip
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000], help="RetrievalSettings.context_tokens")
    parser.add_argument("--sampling", nargs="*", default=[],
                        help="per run: repetition_penalty=1.1,frequency_penalty=0.3")  # fmt: skip
    parser.add_argument("--no-refusal", action="store_true", help="skip the unanswerable questions")
    parser.add_argument("--max-unanswerable", type=int, default=None, help="at most this many unanswerable per set")
    parser.add_argument("--with-verifier", action="store_true", help="also run bench.verifier per set")
    parser.add_argument("--max-paragraphs", type=int, default=MAX_PARAGRAPHS, help="indexed per set")
    parser.add_argument("--max-answer-tokens", type=int, default=None, help="default: the setting")
    parser.add_argument("--eval-dir", default=str(EVAL_DIR), help="the shared evaluation sets")
    parser.add_argument("--out", default=None, help="also write the JSON here (e.g. bench/results/NAME.json)")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(markdown(result["runs"]))
    line = json.dumps(result, ensure_ascii=False)
    if args.out:
        write(Path(args.out), result)
    print(line)


if __name__ == "__main__":
    main()
