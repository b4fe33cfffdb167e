"""Where to set the evidence an answer needs (service.ask.extract.ANSWERABLE_SCORE), measured through the pipeline.

python -m bench.answerability [--sets xquad-en cmrc2018] [--questions 200] [--seed 7]

For each set (bench.citations' shards: all paragraphs, and all but the sampled questions' gold paragraphs) every
sampled question is asked through the ask pipeline in extract mode, its quotable sources packed as the service
packs them (the default generator's tokenizer; the engine is not started), and the best quoted sentence's score is
recorded, with whether the quoted passages state the question's numbers and dates (Extraction.unstated): answerable
questions against the whole set, unanswerable ones (no gold answer left anywhere) against the shard without their
paragraphs. A question for which retrieval finds nothing relevant scores 0. A question counts as answered at a
threshold when its score reaches it and its passages state its facts. Prints, per
threshold, the share of answerable questions answered and of unanswerable ones refused, and as its last line one
JSON object with the scores. Use a seed other than bench.citations' (5), so that the threshold is not chosen on the
questions that then measure it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.citations import EVAL_DIR, SETS, index_set, load
from bench.machine import describe

THRESHOLDS = [round(0.20 + 0.02 * i, 2) for i in range(11)]


async def scores_of(name: str, questions: int, seed: int) -> dict[str, list[float]]:
    """Each question's best score, negative where the quoted passages miss the question's numbers or dates (a
    question refused whatever the threshold)."""
    from kb.container import build_embedder, build_generator
    from kb.settings import AnswerSettings, Settings
    from service.ask.extract import Extraction, Extractor
    from service.ask.pipeline import AskPipeline, Question
    from service.search.service import RetrievalService

    qa_set = load(name, EVAL_DIR / SETS[name], questions, seed)
    found: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="kb-bench-answerability-") as directory:
        settings = Settings(data_dir=Path(directory))
        embedder = build_embedder(settings)
        generator = build_generator(settings)  # its tokenizer only: the packer counts with it
        full, holdout, _ = index_set(settings, embedder, qa_set, Path(directory))
        extractor = Extractor(embedder, settings.embedder.languages)
        seen: list[float] = []
        judge = extractor.answerable

        def recording(extraction: Extraction) -> bool:
            seen.append(-extraction.score if extraction.unstated else extraction.score)
            return judge(extraction)

        extractor.answerable = recording  # type: ignore[method-assign]
        try:
            for label, index, asked in (("answerable", full, qa_set.questions),
                                        ("unanswerable", holdout, qa_set.unanswerable)):  # fmt: skip
                retrieval = RetrievalService(embedder, index, settings.retrieval, languages=settings.embedder.languages)
                pipeline = AskPipeline(retrieval, generator, settings.retrieval, settings.generator,
                                       answer_settings=AnswerSettings(mode="extract"), extractor=extractor)  # fmt: skip
                values = []
                for qa in asked:
                    seen.clear()
                    await pipeline.ask(Question(qa.question))
                    values.append(seen[0] if seen else 0.0)
                found[label] = values
        finally:
            full.close()
            holdout.close()
    return found


def curve(scores: dict[str, list[float]]) -> list[dict[str, float]]:
    answerable, unanswerable = scores["answerable"], scores["unanswerable"]
    return [
        {"threshold": t, "answered": round(sum(v >= t for v in answerable) / max(1, len(answerable)), 3),
         "refused": round(sum(v < t for v in unanswerable) / max(1, len(unanswerable)), 3)}
        for t in THRESHOLDS
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(SETS))
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    result: dict[str, Any] = {"bench": "answerability", "machine": describe(), "seed": args.seed, "sets": {}}
    for name in args.sets:
        scores = asyncio.run(scores_of(name, args.questions, args.seed))
        rows = curve(scores)
        result["sets"][name] = {"questions": {k: len(v) for k, v in scores.items()}, "curve": rows, "scores": scores}
        print(f"{name}: {len(scores['answerable'])} answerable, {len(scores['unanswerable'])} unanswerable")
        for row in rows:
            print(f"  threshold {row['threshold']:.2f}: answered {row['answered']:.3f}  refused {row['refused']:.3f}")
        sys.stdout.flush()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
