"""Walking-skeleton figures on the embedded default: engine start, sample ingest, ask latency.

python -m bench.ask [--questions N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.machine import describe

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
QUESTIONS = [
    "What is the default upload size limit, and what happens to a larger file?",
    "How long are originals kept?",
    "When is the data directory backed up?",
    "Which alert fires when answers are slow?",
    "Who owns the generator component?",
    "工作日值班时间是什么时候？",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(rounds: int) -> dict[str, object]:
    from kb.container import Container
    from kb.settings import Settings
    from service.state import Services

    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(data_dir=Path(data_dir))
        started = time.perf_counter()
        container = await asyncio.to_thread(Container.open, settings)
        open_s = time.perf_counter() - started
        started = time.perf_counter()
        services = await Services.open(container, with_generator=True)
        engine_start_s = time.perf_counter() - started
        try:
            started = time.perf_counter()
            files = sorted(SAMPLES.iterdir())
            for path in files:
                services.pipeline.submit(path.name, path.read_bytes())
            await asyncio.to_thread(services.worker.drain)
            ingest_s = time.perf_counter() - started
            chunks = sum(d.chunks or 0 for d in container.registry.list_documents())

            assert services.answers is not None
            await services.answers.ask(QUESTIONS[0])  # warm-up
            first_token, total, tokens, follow_up_first_token = [], [], [], []
            for _ in range(rounds):
                for question in QUESTIONS:
                    answer = await services.answers.ask(question)
                    first_token.append(answer.timings_ms.get("first_token", answer.timings_ms["total"]))
                    total.append(answer.timings_ms["total"])
                    tokens.append(container.generator.count_tokens(answer.answer))  # type: ignore[union-attr]
                    # Same conversation: the previous sources stay first, so the prompt prefix is cached.
                    follow_up = await services.answers.ask("Tell me more.", conversation_id=answer.conversation_id)
                    if "first_token" in follow_up.timings_ms:
                        follow_up_first_token.append(follow_up.timings_ms["first_token"])
        finally:
            await container.aclose()
    return {
        "bench": "ask",
        "machine": describe(),
        "open_adapters_s": round(open_s, 2),
        "engine_start_s": round(engine_start_s, 2),
        "ingest_samples_s": round(ingest_s, 2),
        "sample_files": len(files),
        "sample_chunks": chunks,
        "asks": len(total),
        "first_token_ms_p50": round(statistics.median(first_token), 1),
        "first_token_ms_p95": round(percentile(first_token, 0.95), 1),
        "total_ms_p50": round(statistics.median(total), 1),
        "total_ms_p95": round(percentile(total, 0.95), 1),
        "answer_tokens_mean": round(statistics.mean(tokens), 1),
        "answer_tokens_per_s": round(sum(tokens) / (sum(total) - sum(first_token)) * 1000, 1),
        "follow_up_first_token_ms_p50": round(statistics.median(follow_up_first_token), 1)
        if follow_up_first_token else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="times each sample question is asked")
    args = parser.parse_args()
    result = asyncio.run(run(args.rounds))
    for key, value in result.items():
        if key != "machine":
            print(f"{key:>22}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
