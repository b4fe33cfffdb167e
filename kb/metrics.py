"""The service's own Prometheus metrics (kb_*, with unit suffixes), in prometheus_client's default registry, which
Litestar's PrometheusController exposes at /metrics. Defined once per process: several apps (tests) share them."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

INGEST_QUEUE_DEPTH = Gauge("kb_ingest_queue_depth", "Ingestion jobs queued or running")
INGEST_DOCUMENTS = Counter(
    "kb_ingest_documents_total", "Documents that finished ingestion, by outcome (ready, failed, retried, cancelled)", ["outcome"]
)
INGEST_DURATION = Histogram(
    "kb_ingest_document_duration_seconds", "Parse + chunk + embed + index time per document",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)  # fmt: skip
RETRIEVAL_LATENCY = Histogram(
    "kb_retrieval_latency_seconds", "Query embedding + hybrid search (+ rerank) time",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)  # fmt: skip
TIME_TO_FIRST_TOKEN = Histogram(
    "kb_time_to_first_token_seconds", "From the question to the answer's first token (retrieval included)",
    ["door"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
)  # fmt: skip
ANSWER_DURATION = Histogram(
    "kb_answer_duration_seconds", "From the question to the end of the answer", ["door"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128),
)  # fmt: skip
GENERATED_TOKENS = Counter("kb_generated_tokens_total", "Answer tokens generated", ["door"])
ANSWERS = Counter("kb_answers_total", "Answers given, by door and whether sources grounded them", ["door", "grounded"])


def record_answer(door: str, timings: dict[str, float], grounded: bool, tokens: int) -> None:
    """`timings`: those of an answer's Done event (ms)."""
    if "first_token" in timings:
        TIME_TO_FIRST_TOKEN.labels(door).observe(timings["first_token"] / 1000)
    if "total" in timings:
        ANSWER_DURATION.labels(door).observe(timings["total"] / 1000)
    GENERATED_TOKENS.labels(door).inc(tokens)
    ANSWERS.labels(door, str(grounded).lower()).inc()

# Degrade, don't die (kb/adapters/fallback_generator.py): the circuit breaker around a generator server.
BREAKER_STATES = {"closed": 0, "half-opened": 1, "opened": 2}
GENERATOR_BREAKER_STATE = Gauge(
    "kb_generator_breaker_state",
    "The circuit breaker around a generator server: 0 closed (the server answers), 1 half-open (a question probes "
    "it), 2 open (the fallback generator answers)", ["generator"],
)  # fmt: skip
GENERATOR_BREAKER_TRANSITIONS = Counter(
    "kb_generator_breaker_transitions_total", "Changes of the generator breaker's state, by the state it changed to "
    "(closed, half-opened, opened)", ["generator", "state"],
)  # fmt: skip
GENERATOR_FALLBACK_ANSWERS = Counter(
    "kb_generator_fallback_answers_total", "Answers the fallback generator wrote, by why: the breaker was open "
    "(open), the server failed before its first token (failed) or in the middle of its answer (failed_mid_answer)",
    ["generator", "fallback", "reason"],
)  # fmt: skip
WARM_START_SECONDS = Gauge(
    "kb_warm_start_seconds", "How long this process took to load and warm each part before /readyz turned ready "
    "(retrieval: one embedding and one index query; generator: start and one generation)", ["part"],
)  # fmt: skip
