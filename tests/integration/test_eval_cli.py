"""`kb eval retrieval` on a tiny, easy SQuAD set: the JSON contract and a perfect recall@5."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PARAGRAPHS = [
    ("The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889 for the World's Fair.",
     "When was the Eiffel Tower in Paris completed?", "1889"),
    ("Photosynthesis lets green plants turn sunlight, water and carbon dioxide into glucose and oxygen.",
     "What do plants make from sunlight in photosynthesis?", "glucose and oxygen"),
    ("The Great Barrier Reef off Queensland, Australia, is the largest coral reef system in the world.",
     "Where is the Great Barrier Reef coral system?", "Queensland, Australia"),
    ("Python is a programming language created by Guido van Rossum and first released in 1991.",
     "Who created the Python programming language?", "Guido van Rossum"),
    ("The mitochondrion is the organelle that produces most of a cell's energy as ATP.",
     "Which organelle produces the cell's energy?", "mitochondrion"),
    ("Mount Everest, on the border of Nepal and China, is the highest mountain above sea level.",
     "What is the highest mountain above sea level?", "Mount Everest"),
]  # fmt: skip


def write_squad(path: Path) -> None:
    paragraphs = [
        {"context": context, "qas": [{"id": f"q{i}", "question": question,
                                      "answers": [{"text": answer, "answer_start": context.index(answer)}]}]}
        for i, (context, question, answer) in enumerate(PARAGRAPHS)
    ]  # fmt: skip
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "easy", "paragraphs": paragraphs}]}))


def test_eval_retrieval_json(tmp_path: Path) -> None:
    dataset = tmp_path / "easy.json"
    write_squad(dataset)
    # KB_MODELS_DIR stays as it is: the default models must remain reachable.
    env = {**os.environ, "KB_DATA_DIR": str(tmp_path / "data")}
    command = [sys.executable, "-m", "service.cli", "eval", "retrieval", "--dataset", str(dataset),
               "--cache-dir", str(tmp_path / "eval-cache"), "--json"]  # fmt: skip

    result = subprocess.run([*command, "--mode", "hybrid"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("dataset", "questions", "recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10",
                "latency_ms_p50", "latency_ms_p95", "mode", "units"):
        assert key in report, key  # fmt: skip
    assert report["questions"] == 6 and report["units"] == 6 and report["mode"] == "hybrid"
    assert report["recall@5"] == 1.0
    assert report["latency_ms_p50"] > 0 and report["embeddings_cached"] is False
    assert list((tmp_path / "eval-cache").glob("*.npy"))

    dense = subprocess.run([*command, "--mode", "dense", "--limit", "3"], env=env, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert dense.returncode == 0, dense.stderr
    report = json.loads(dense.stdout)
    assert report["mode"] == "dense" and report["questions"] == 3 and report["recall@5"] == 1.0
    assert report["embeddings_cached"] is True


def test_eval_retrieval_rejects_an_unknown_format(tmp_path: Path) -> None:
    dataset = tmp_path / "other.json"
    dataset.write_text('{"something": []}')
    env = {**os.environ, "KB_DATA_DIR": str(tmp_path / "data")}
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "eval", "retrieval", "--dataset", str(dataset),
         "--cache-dir", str(tmp_path / "eval-cache"), "--json"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 2
    assert "neither SQuAD" in result.stderr
