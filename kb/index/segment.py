"""Chinese word segmentation (jieba) ahead of BM25: runs of Han characters have no spaces to split on."""

from __future__ import annotations

import re
import threading

from kb.text import HAN_RUN

_jieba_lock = threading.Lock()
_jieba = None


def _segmenter():  # type: ignore[no-untyped-def]
    # jieba loads its dictionary (shipped in the package) in ~1 s: once per process, on first Chinese text.
    global _jieba
    with _jieba_lock:
        if _jieba is None:
            import logging

            import jieba

            jieba.setLogLevel(logging.WARNING)
            tokenizer = jieba.Tokenizer()
            tokenizer.initialize()
            _jieba = tokenizer
    return _jieba


def segment_chinese(text: str, *, for_index: bool = False) -> str:
    """`text` with every run of Han characters cut into jieba words separated by spaces; other text unchanged.

    `for_index`: also the shorter words inside long ones (jieba's search mode: 人民检察院 -> 人民, 检察, 察院, 检察院,
    人民检察院), so a query for 检察院 finds it; queries are cut plainly, or a query's sub-words would all count
    again. Dictionary words only, no HMM guesses for unknown ones: the HMM joins rare characters into words that
    questions phrase differently (it scored lower on xquad.zh: bench/RESULTS.md, "Earlier experiments").
    """
    if not HAN_RUN.search(text):
        return text
    tokenizer = _segmenter()

    def words(match: re.Match[str]) -> str:
        run = match.group()
        cut = tokenizer.cut_for_search(run, HMM=False) if for_index else tokenizer.cut(run, HMM=False)
        return " " + " ".join(cut) + " "

    return HAN_RUN.sub(words, text)
