"""Token ids of prompt pieces, shared by the generators that hold the model's tokenizer: the packer's count of each
source is what that source adds to a prompt, and the prompt's encoding reuses the tokens counted for it."""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import regex

# Text that exercises the places where cutting a prompt could change its tokens: newline runs, indentation, tabs,
# punctuation glued to newlines, digits, accents, CJK, the chat markers, a source number before a digit, a bracket,
# a quote. Checked once per tokenizer.
_PROBE = (
    "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\n[1] Hello world.\n\n[12] naïve café costs "
    "12.50 €, see §3.\n  indented line\n\tTabbed:\n\n\n[3] 中文文本。第二句！\n- item one\n- item two\n"
    "def f(x):\n    return x  # comment\n\n[4]  double  space ,punct!?\n\n[5] 2024 revenue\n\n[6] (see) x\n\n"
    "[7] 'quoted' it's\n\n[8] \u00e9t\u00e9\n\n[9] .\n\nUsing the text above, answer: what? "
    "<|im_end|>\n<|im_start|>assistant\n"
)
# What follows a source's closing separator in a prompt is never blank (the next "[n]", or the question's line).
_NEXT = "["
# Where a prompt may be cut: at a newline that meets a non-blank character that is no combining mark, after the
# newline (Qwen's and Llama 3's pre-tokenizer) or before it (GPT-2's); group 1 is a source's number "[n]" that
# starts the piece there, after which it may be cut too.
_CUTS = regex.compile(r"\n(?=[^\s\x1c-\x1f\p{M}])(\[\d+\](?= ))?")
_NUMBER = regex.compile(r"\[\d+\](?= )")


class PromptTokenCache:
    """Token ids of prompt pieces, so that no text is tokenized twice: not a source the packer has just counted,
    nor the 100k+ tokens of sources a follow-up question repeats.

    Tokenizing a prompt's 100k tokens of text takes longer than vLLM then needs to prefill a follow-up's
    new end against its prefix cache. The text is cut into pieces at places where the tokenizer starts a new
    pre-token whatever is on either side: where a newline meets a non-blank character (after the run of newlines
    for Qwen's and Llama 3's pre-tokenizer regex, before its last newline for GPT-2's, SmolLM2's), and after a
    source's number "[n]". Which rules hold is checked against the real tokenizer once (`exact` is False when none
    does: that tokenizer is always given the whole text). Byte-level BPE never merges across pre-tokens, so each
    piece tokenized alone gives the tokens the whole text has there: pieces are remembered by their text, wherever
    they stand, and the tokens of a prompt are its pieces' tokens joined."""

    def __init__(self, tokenizer: Any, max_tokens: int = 1 << 20) -> None:
        self._tokenizer = tokenizer
        # About as many tokens as an H100's KV cache holds for Qwen2.5-7B at the full window: prompts older
        # than that are out of vLLM's prefix cache too.
        self._max_tokens = max_tokens
        self._pieces: OrderedDict[str, list[int]] = OrderedDict()
        self._counted: OrderedDict[tuple[str, str], int] = OrderedDict()  # count_between's answers
        self._lock = threading.Lock()
        self._tokens = 0
        self.exact = False
        for before_newline, cut_numbers in ((False, True), (True, True), (False, False), (True, False)):
            self._cut_before_newline, self._cut_numbers = before_newline, cut_numbers
            if self._pieces_match_whole(_PROBE):
                self.exact = True
                break

    def encode(self, text: str) -> list[int]:
        if not self.exact:
            return self._encode_whole(text)
        return list(itertools.chain.from_iterable(self._ids(self._split(text))))

    def count_between(self, texts: Sequence[str], separator: str) -> list[int]:
        """Tokens each text adds to a prompt in which it stands between two `separator`s (the packer's sources),
        its pieces kept for when that prompt is encoded."""
        if not self.exact:
            return [len(ids) for ids in self.encode_many([t + separator for t in texts])] if texts else []
        with self._lock:
            known = [self._counted.get((t, separator)) for t in texts]
            for text, count in zip(texts, known):
                if count is not None:
                    self._counted.move_to_end((text, separator))
        if None not in known:  # a follow-up question's sources: counted on the previous turn
            return known  # type: ignore[return-value]
        framed: list[list[str] | None] = []
        for text in texts:
            pieces = self._split(f"{separator}{text}{separator}{_NEXT}")
            # The first piece must hold only (part of) the opening separator, the last only the closing one's end
            # and what follows it; otherwise the text's edges join its neighbours' tokens (a text starting blank).
            ok = len(pieces) > 2 and len(pieces[0]) <= len(separator) and len(pieces[-1]) <= len(separator) + 1
            framed.append(pieces[1:-1] if ok else None)
        ids = self._ids([p for pieces in framed if pieces for p in pieces])
        counts, at = [], 0
        for text, pieces in zip(texts, framed):
            if pieces is None:
                counts.append(len(self._encode_whole(text + separator)))
            else:
                counts.append(sum(len(i) for i in ids[at : at + len(pieces)]))
                at += len(pieces)
        with self._lock:
            self._counted.update(((t, separator), n) for t, n in zip(texts, counts))
            while len(self._counted) > 16384:
                self._counted.popitem(last=False)
        return counts

    def _ids(self, pieces: list[str]) -> list[list[int]]:
        """Each piece's ids: remembered ones, the rest tokenized in one batch call (outside the lock, so that the
        Rust tokenizer of another thread's call runs meanwhile)."""
        with self._lock:  # the packer on the event loop, prompts in worker threads: the table is shared
            found = [self._pieces.get(p) for p in pieces]
            for piece, ids in zip(pieces, found):
                if ids is not None:
                    self._pieces.move_to_end(piece)
        missing = list(dict.fromkeys(p for p, ids in zip(pieces, found) if ids is None))
        if not missing:
            return found  # type: ignore[return-value]
        encoded = dict(zip(missing, self.encode_many(missing)))
        with self._lock:
            for piece, ids in encoded.items():
                if piece not in self._pieces:
                    self._pieces[piece] = ids
                    self._tokens += len(ids)
            while self._tokens > self._max_tokens and self._pieces:
                self._tokens -= len(self._pieces.popitem(last=False)[1])
        return [ids if ids is not None else encoded[p] for p, ids in zip(pieces, found)]

    def _pieces_match_whole(self, text: str) -> bool:
        try:
            pieces = self._split(text)
            return len(pieces) > 3 and sum(self.encode_many(pieces), []) == self._encode_whole(text)
        except Exception:
            return False

    def _encode_whole(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        if len(texts) == 1:
            return [self._encode_whole(texts[0])]
        # A list goes to the Rust tokenizer's batch encode, which spreads the pieces over the cores.
        backend = getattr(self._tokenizer, "backend_tokenizer", None)
        if backend is not None:  # without transformers' per-text bookkeeping (~10 us a piece)
            return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=False)]
        return [list(ids) for ids in self._tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _split(self, text: str) -> list[str]:
        # One pass of a compiled pattern: a 100k-token prompt has thousands of lines.
        shift = 0 if self._cut_before_newline else 1
        starts = [0]
        if self._cut_numbers and (number := _NUMBER.match(text)):
            starts.append(number.end())
        for match in _CUTS.finditer(text):
            starts.append(match.start() + shift)
            if self._cut_numbers and match.group(1):
                starts.append(match.end())
        return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)]) if b > a]
