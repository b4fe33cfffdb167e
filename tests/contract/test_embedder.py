"""One contract for every Embedder adapter: the default model on sentence-transformers (torch) and on ONNX Runtime
(fp32 and int8), each built through the container once per session (tests/conftest.py: embedder_on)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from kb.ports import Embedder

pytestmark = pytest.mark.contract

TEXTS = [
    "The default upload size limit is 100 MB per file.",
    "Originals are kept for seven years after the last update of a document.",
    "知识库根据公司自己的文档回答问题。",
    "Backups",
]
# How close (cosine) the same text's vectors must be across batches: int8 quantises each batch's activations with a
# scale of its own, so its vectors move with what else is in the batch (as far as from torch's: test_onnx_embedder).
SAME = {"torch": 0.9999, "onnx": 0.9999, "onnx-int8": 0.98}


@pytest.fixture(params=["torch", "onnx", "onnx-int8"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def embedder(embedder_on: Callable[[str], Embedder], backend: str) -> Embedder:
    return embedder_on(backend)


def cosines(a: list[list[float]], b: list[list[float]]) -> np.ndarray:
    return (np.array(a) * np.array(b)).sum(axis=1)


def test_the_adapter_implements_the_port(embedder: Embedder) -> None:
    assert isinstance(embedder, Embedder)


def test_vectors_have_the_dimension_and_unit_length(embedder: Embedder) -> None:
    vectors = np.array(embedder.embed_documents(TEXTS))
    query = np.array(embedder.embed_query("What is the upload limit?"))

    assert embedder.dimension == 384  # all-MiniLM-L6-v2, whichever runtime
    assert vectors.shape == (len(TEXTS), embedder.dimension) and query.shape == (embedder.dimension,)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert np.linalg.norm(query) == pytest.approx(1.0, abs=1e-4)
    assert all(type(x) is float for x in embedder.embed_query("plain floats")[:3])


def test_no_texts_no_vectors_and_an_empty_text_still_gets_one(embedder: Embedder) -> None:
    assert embedder.embed_documents([]) == []
    [empty] = embedder.embed_documents([""])
    assert len(empty) == embedder.dimension and np.linalg.norm(empty) == pytest.approx(1.0, abs=1e-4)
    assert np.allclose(embedder.embed_query(""), empty, atol=1e-3)


def test_the_same_text_gets_the_same_vector_whatever_its_batch(embedder: Embedder, backend: str) -> None:
    # More texts than one batch (batch_size 32), of different lengths: batched and padded in another order.
    many = [f"Document number {i} says " + "something " * (i % 7) for i in range(40)]
    batched = embedder.embed_documents(many)
    again = embedder.embed_documents(many)
    alone = [embedder.embed_documents([text])[0] for text in (many[0], many[33], many[39])]

    assert np.allclose(batched, again, atol=1e-6)  # deterministic
    assert cosines([batched[0], batched[33], batched[39]], alone).min() >= SAME[backend]
    assert cosines(embedder.embed_documents(TEXTS[::-1])[::-1], embedder.embed_documents(TEXTS)).min() >= SAME[backend]


def test_a_query_without_a_prompt_is_embedded_as_a_document_is(embedder: Embedder, backend: str) -> None:
    # The default settings give neither side a prompt (bge-style models set query_prompt).
    assert cosines([embedder.embed_query(TEXTS[0])], [embedder.embed_documents([TEXTS[0]])[0]])[0] >= SAME[backend]


def test_similar_meaning_is_nearer(embedder: Embedder) -> None:
    query = embedder.embed_query("How large may an uploaded file be?")
    upload, retention = embedder.embed_documents(TEXTS[:2])
    assert float(np.dot(query, upload)) > float(np.dot(query, retention)) + 0.1


def test_tokens_are_counted_with_the_models_own_tokenizer_special_tokens_included(embedder: Embedder) -> None:
    assert embedder.max_tokens == 256  # the model's window (sentence_bert_config.json)
    assert embedder.count_tokens("hello world") == 4  # [CLS] hello world [SEP]
    assert embedder.count_tokens("") == 2
    assert embedder.count_tokens("知识库") == 5  # one token per Han character here
    assert embedder.count_tokens("word " * 300) == 302


def test_max_tokens_is_the_window_beyond_which_text_is_cut(embedder: Embedder, backend: str) -> None:
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    text = " ".join(words[i % len(words)] for i in range(embedder.max_tokens - 3))
    assert embedder.count_tokens(text) == embedder.max_tokens - 1

    full = text + " file"  # exactly the window
    beyond = full + " retention policy of seven years"
    assert embedder.count_tokens(full) == embedder.max_tokens
    [v_text, v_full, v_beyond] = embedder.embed_documents([text, full, beyond])

    assert cosines([v_beyond], [v_full])[0] >= SAME[backend]  # what lies beyond the window is not read
    assert cosines([v_full], [v_text])[0] < 0.99999  # the window's last token is
