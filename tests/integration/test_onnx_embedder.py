"""The ONNX Runtime embedder against sentence-transformers on the same model."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from kb.adapters.onnx_embedder import OnnxEmbedder
from kb.adapters.st_embedder import SentenceTransformersEmbedder
from kb.container import embedder_model_path
from kb.ports import Embedder
from kb.settings import EmbedderSettings, Settings

pytestmark = pytest.mark.integration

TEXTS = [
    "The default upload size limit is 100 MB per file.",
    "Originals are kept for seven years after the last update of a document.",
    "知识库根据公司自己的文档回答问题。",
    "A much longer passage " * 80,  # beyond the 256-token window: truncated the same way
]


@pytest.fixture(scope="module")
def reference(embedder_on: Callable[[str], Embedder]) -> np.ndarray:
    embedder = embedder_on("torch")
    assert isinstance(embedder, SentenceTransformersEmbedder)
    return np.array(embedder.embed_documents(TEXTS))


@pytest.mark.parametrize(("quantize", "min_cosine"), [(False, 0.9999), (True, 0.98)])
def test_onnx_matches_sentence_transformers(reference: np.ndarray, tmp_path: Path, quantize: bool, min_cosine: float) -> None:
    embedder = OnnxEmbedder(EmbedderSettings(), embedder_model_path(Settings()), tmp_path, quantize=quantize)
    vectors = np.array(embedder.embed_documents(TEXTS))
    assert vectors.shape == reference.shape and embedder.dimension == reference.shape[1]
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert (vectors * reference).sum(axis=1).min() >= min_cosine
    assert embedder.max_tokens == 256 and embedder.count_tokens("hello world") == 4
    # Exported once: a second embedder reuses the file.
    assert len(list(tmp_path.rglob("*.onnx"))) == 1
    OnnxEmbedder(EmbedderSettings(), embedder_model_path(Settings()), tmp_path, quantize=quantize)
    assert len(list(tmp_path.rglob("*.onnx"))) == 1
