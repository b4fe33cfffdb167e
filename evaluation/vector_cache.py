"""Embeddings of a QA set's texts, cached on disk by model and content, so comparing search modes or settings
embeds a set once."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.datasets import Unit
from evaluation.entries import IndexEntry
from kb.ports import Embedder
from kb.settings import Settings

# Per call to the embedder: sentence-transformers sorts each call's texts by length, so larger calls pad less.
_EMBED_BATCH = 1024

ProgressCallback = Callable[[int, int], None]


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
