"""The in-process generator's prompt tokens: reused across a conversation's turns, always equal to tokenizing the
whole prompt (real SmolLM2 tokenizer; no engine needed)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from kb.adapters.openai_http import OpenAIHttpGenerator
from kb.adapters.vllm_engine import VllmEngineGenerator
from kb.models import Passage
from kb.prompt_tokens import PromptTokenCache
from kb.settings import GeneratorSettings
from service.ask.prompt import messages as prompt_messages

pytestmark = pytest.mark.integration

WORDS = (
    "upload limit the default is 100 MB per file, naïve café 中文文本。 résumé (see §3) it's 12.50 € --flag\n"
    "  indented:\n\tTabbed\n\n- item"
).split(" ")


def passage(i: int, rng: random.Random) -> Passage:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 160)))
    return Passage(chunk_id=f"c{i}", document_id=f"d{i % 7}", filename="f.pdf", text=text, score=1.0, ordinal=i)


class Spy:
    """The real tokenizer, recording how many characters each call is given."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.chars = 0

    def encode(self, text: str, **kwargs: Any) -> list[int]:
        self.chars += len(text)
        return self.tokenizer.encode(text, **kwargs)

    def __call__(self, texts: list[str], **kwargs: Any) -> Any:
        self.chars += sum(len(t) for t in texts)
        return self.tokenizer(texts, **kwargs)


# Qwen2's (and Llama 3's) pre-tokenizer: newline runs are one pre-token, unlike GPT-2's regex that SmolLM2 uses.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@pytest.fixture(scope="module", params=["gpt2-regex", "qwen-regex"])
def tokenizer(request: pytest.FixtureRequest, generator_model_dir: Path) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(generator_model_dir)
    if request.param == "qwen-regex":
        from tokenizers import Regex, pre_tokenizers

        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        assert tokenizer.encode("a.\n\n[1]", add_special_tokens=False) != AutoTokenizer.from_pretrained(
            generator_model_dir
        ).encode("a.\n\n[1]", add_special_tokens=False)
    return tokenizer


def whole(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def spied_cache(tokenizer: Any, seed: int, sources: int) -> tuple[list[Passage], Spy, PromptTokenCache]:
    """Random sources, and a piece cache over the real tokenizer that records what it is given."""
    rng = random.Random(seed)
    spy = Spy(tokenizer)
    cache = PromptTokenCache(spy)
    assert cache.exact
    return [passage(i, rng) for i in range(sources)], spy, cache


def test_follow_up_reuses_the_sources_tokens_and_matches_the_whole_prompt(tokenizer: Any) -> None:
    sources, spy, cache = spied_cache(tokenizer, 5, 120)
    first = prompt_messages("What is the upload limit?", sources)
    second = prompt_messages(
        "And for PDFs?", sources, [{"role": "user", "content": "What is the upload limit?"},
                                   {"role": "assistant", "content": "100 MB per file [1]."}]  # fmt: skip
    )
    changed_middle = prompt_messages("What is the upload limit?", sources[:60] + sources[61:])
    for messages in (first, second, changed_middle, first):
        spy.chars = 0
        assert cache.encode(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)) == (
            whole(tokenizer, messages)
        )
    prompt_chars = len(tokenizer.apply_chat_template(first, tokenize=False, add_generation_prompt=True))
    spy.chars = 0
    cache.encode(tokenizer.apply_chat_template(second, tokenize=False, add_generation_prompt=True))
    # Only the end (the last piece of sources, the conversation, the question) is tokenized again.
    assert spy.chars < 0.1 * prompt_chars


def test_pieces_join_to_the_whole_text_on_awkward_boundaries(tokenizer: Any) -> None:
    rng = random.Random(7)
    cache = PromptTokenCache(tokenizer)
    assert cache.exact
    for _ in range(50):
        text = "".join(rng.choice(["\n", "\n\n", " ", "  ", "\t", "a", "Ab", ".", "[1]", "中", "é", "e\u0301", "'s"])
                       for _ in range(200))  # fmt: skip
        assert cache.encode(text) == tokenizer.encode(text, add_special_tokens=False)


def test_count_tokens_is_exact_whatever_number_a_source_gets(generator_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(generator_model_dir)
    generator = VllmEngineGenerator(GeneratorSettings(), generator_model_dir)
    rng = random.Random(3)
    for i in range(40):
        text = f"[{rng.randint(1, 300)}] {passage(i % 5, random.Random(i % 5)).text}"
        assert generator.count_tokens(text) == len(tokenizer.encode(text, add_special_tokens=False))
    for text in ("", "x", "[1]", "\n\n[2] a", "中文 文本"):
        assert generator.count_tokens(text) == len(tokenizer.encode(text, add_special_tokens=False))


def test_counting_many_in_one_batch_equals_counting_each(generator_model_dir: Path) -> None:
    texts = [f"[{n}] Source number {n}: the quick brown fox, {'jumps ' * n}over the dog." for n in range(1, 40)]
    texts += ["[7] 知识库中没有关于这个问题的信息。", "[2] ", "", "[12]    spaced  out\n\nlines"]
    batched = VllmEngineGenerator(GeneratorSettings(), generator_model_dir)
    single = VllmEngineGenerator(GeneratorSettings(), generator_model_dir)
    assert batched.count_tokens_many(texts) == [single.count_tokens(t) for t in texts]
    # Under other numbers: still each one's own count.
    renumbered = [t.replace("[1]", "[9]", 1) for t in texts]
    assert batched.count_tokens_many(renumbered) == [single.count_tokens(t) for t in renumbered]


def test_both_generators_count_alike(generator_model_dir: Path) -> None:
    texts = [f"[{n}] Source {n}:\n  indented, {'jumps ' * n}\n\nover 中文文本。" for n in range(1, 30)] + ["[2] ", ""]
    engine = VllmEngineGenerator(GeneratorSettings(), generator_model_dir)
    http = OpenAIHttpGenerator(GeneratorSettings(backend="openai"), generator_model_dir)
    try:
        # The packer picks the same sources whichever generator serves the answers.
        assert http.count_tokens_many(texts, "\n\n") == engine.count_tokens_many(texts, "\n\n")
        assert http.count_tokens_many(texts) == engine.count_tokens_many(texts)
    finally:
        asyncio.run(http.close())


def test_sources_counted_by_the_packer_are_not_tokenized_again_and_their_counts_add_up(tokenizer: Any) -> None:
    sources, spy, cache = spied_cache(tokenizer, 11, 80)
    # The packer counts every candidate as source number 1; the prompt numbers them 1..n.
    counts = cache.count_between([f"[1] {p.text}" for p in sources], "\n\n")
    spy.chars = 0
    messages = prompt_messages("What is the upload limit?", sources)
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert cache.encode(prompt) == whole(tokenizer, messages)
    # Only the chat template, the numbers and the question were tokenized.
    assert spy.chars < 0.05 * len(prompt)

    # What the sources add to a prompt is what the packer counted, whatever the sources and their numbers.
    def rest(chosen: list[Passage]) -> int:
        numbered = cache.count_between([f"[{i + 1}] {p.text}" for i, p in enumerate(chosen)], "\n\n")
        return len(whole(tokenizer, prompt_messages("What is the upload limit?", chosen))) - sum(numbered)

    assert counts[0] == cache.count_between([f"[1] {sources[0].text}"], "\n\n")[0]
    assert len({rest(sources), rest(sources[:1]), rest(sources[5:17]), rest(sources[::-3])}) == 1
