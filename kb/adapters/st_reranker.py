"""Reranker on a sentence-transformers CrossEncoder (e.g. BAAI/bge-reranker-v2-m3 in production; off by default)."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Sequence

from kb.models import Passage


class SentenceTransformersReranker:
    """Scores (query, passage) pairs with a cross-encoder and keeps the best `top_k`, best first."""

    def __init__(self, model_path: str, *, device: str = "cpu", batch_size: int = 16, max_length: int = 512) -> None:
        # Nothing may be fetched from a hub at run time: the model must be a local directory.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import CrossEncoder

        self._model = CrossEncoder(model_path, device=device, max_length=max_length)
        self._batch_size = batch_size
        # torch inference from several threads at once only competes for the same cores.
        self._lock = threading.Lock()

    def rerank(self, query: str, passages: Sequence[Passage], top_k: int) -> list[Passage]:
        if not passages or top_k <= 0:
            return []
        pairs = [(query, passage.text) for passage in passages]
        with self._lock:
            scores = self._model.predict(pairs, batch_size=self._batch_size, show_progress_bar=False)
        ranked = sorted(zip(passages, scores, strict=True), key=lambda item: float(item[1]), reverse=True)
        return [dataclasses.replace(passage, score=float(score)) for passage, score in ranked[:top_k]]
