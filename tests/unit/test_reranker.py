"""The cross-encoder reranker's code path, on a small randomly initialised BERT cross-encoder (no weights to download)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kb.adapters.st_reranker import SentenceTransformersReranker
from kb.container import build_reranker
from kb.models import Passage
from kb.ports import Reranker
from kb.settings import Settings

pytestmark = pytest.mark.unit

_WORDS = "the a of leave policy holiday revenue report sales team employees accrue monthly outage billing".split()


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-cross-encoder")
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_WORDS]) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def passage(text: str, n: int) -> Passage:
    return Passage(chunk_id=f"c{n}", document_id="d", filename="f.txt", text=text, score=0.0, ordinal=n)


def test_reranks_by_cross_encoder_scores_and_keeps_top_k(tiny_cross_encoder: Path) -> None:
    from sentence_transformers import CrossEncoder

    reranker = SentenceTransformersReranker(str(tiny_cross_encoder))
    assert isinstance(reranker, Reranker)
    candidates = [passage(t, i) for i, t in enumerate(
        ["leave policy", "revenue report", "holiday sales team", "billing outage", "employees accrue monthly"]
    )]

    ranked = reranker.rerank("leave policy holiday", candidates, 3)

    expected = CrossEncoder(str(tiny_cross_encoder)).predict([("leave policy holiday", p.text) for p in candidates])
    order = sorted(range(len(candidates)), key=lambda i: float(expected[i]), reverse=True)[:3]
    assert [p.chunk_id for p in ranked] == [f"c{i}" for i in order]
    assert [p.score for p in ranked] == pytest.approx([float(expected[i]) for i in order], rel=1e-4)
    assert candidates[0].score == 0.0  # the inputs are not modified
    assert reranker.rerank("anything", [], 3) == []


def test_off_by_default_and_built_from_settings(tiny_cross_encoder: Path) -> None:
    assert build_reranker(Settings()) is None
    settings = Settings(retrieval={"reranker_model": str(tiny_cross_encoder)})  # type: ignore[arg-type]
    assert isinstance(build_reranker(settings), SentenceTransformersReranker)
