"""Generate: the model's answer, streamed as it is written, until it starts repeating itself.

Small models loop: the same sentence again and again, or a phrase without end ("? ? ? ?"). Sampling penalties
(GeneratorSettings) make loops rarer; the guard here ends them. Text that may be the start of a repeat is held back
until it is known not to be one, so that the repetition never reaches the client; when a sentence does repeat an
earlier one, or a long run of words occurs a second time, the answer ends before it and the engine's request is
aborted."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Sequence

from kb.ports import Generator
from kb.text import HAN_RANGES

# [1], [1, 2], 【2】, [source 1]: left out when sentences are compared (a loop renumbers its citations).
_MARKER = re.compile(r"[\[【]\s*(?:sources?\s*)?\d+(?:\s*[,，、]\s*\d+)*\s*[\]】]", re.IGNORECASE)
_LEADING_MARKERS = re.compile(rf"\s*(?:{_MARKER.pattern}\s*)+", re.IGNORECASE)
# A sentence ends at . ! ? before white space (not "3.5"), at 。！？ before what follows (no space follows in Chinese;
# a run of marks is seen whole) and at a line break.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s)|[。！？]+[」』”’）]*(?=[^。！？」』”’）])|\n")
# Words, and each Han character (Chinese has no spaces between words).
_TOKEN = re.compile(rf"[{HAN_RANGES}]|[^\W{HAN_RANGES}]+")
_HAN = re.compile(f"[{HAN_RANGES}]")
# Words seen twice in a row this long are a loop (a sentence repeated with a small change, or one without an end);
# a Han character counts half a word. Long enough that an answer naming the same thing twice is not one.
LOOP_WORDS = 10
# The same mark four times or more ("？？？？", "!!!!", ",,,,"): a loop from its second mark on.
_MARK_RUN = re.compile(r"([。！？!?，,、；;：:])\1{3,}")
# A sentence counts as a repeat from two words and five letters (a Han character: two) on: shorter ones may recur
# without being a loop ("e.g.", "i.e.", "是的。").
MIN_SENTENCE_WORDS = 2
MIN_SENTENCE_LETTERS = 5


def sentence_key(sentence: str) -> str:
    """A sentence as a repetition is recognised: case, white space, punctuation and [n] markers left out."""
    return " ".join(_TOKEN.findall(_MARKER.sub(" ", sentence).casefold()))


def counts_as_sentence(key: str) -> bool:
    """Whether a sentence (its sentence_key) is long enough that its repeat is a loop."""
    words = key.split()
    letters = sum(2 if _HAN.match(w) else len(w) for w in words)
    return len(words) >= MIN_SENTENCE_WORDS and letters >= MIN_SENTENCE_LETTERS


def _run_at(words: Sequence[str], start: int, length: float) -> tuple[str, ...] | None:
    """The words from `start` on that make up `length` words (a Han character: half), or None where they run out."""
    weight = 0.0
    for end in range(start, len(words)):
        weight += 0.5 if _HAN.match(words[end]) else 1.0
        if weight >= length:
            return tuple(words[start : end + 1])
    return None


class RepetitionGuard:
    """Releases an answer's text as soon as it is known not to begin a repetition, and tells where one begins.

    A word is held back while the words from it to the end of what the model wrote so far occur earlier in the
    answer (they may be the start of a repeat): most words go out one word late, a sentence that repeats an earlier
    one not at all. `feed` takes the next delta and returns the text that may reach the client now; once `stopped`,
    the rest of the answer is the repetition and `feed` returns nothing more. `finish` releases the rest at the end."""

    def __init__(self, loop_words: float = LOOP_WORDS) -> None:
        self._loop_words = loop_words
        self._text = ""  # what the model wrote, up to a cut
        self._released = 0  # characters of it that reached the client
        self._sentence = 0  # where the sentence being written starts
        self._sentences: set[str] = set()  # keys of the finished sentences
        self._words: list[str] = []  # of the finished sentences
        self._runs: set[tuple[str, ...]] = set()  # loop_words long, starting and ending in the finished sentences
        self._open = 0  # the first start whose run goes on past them
        # The unfinished sentence, scanned as it grows: the next start to check, and the runs from the ones before.
        self._scan = 0
        self._scan_runs: set[tuple[str, ...]] = set()
        self.stopped = False
        self.repetition = ""  # the text dropped as repetition (for logs and tests)

    @property
    def text(self) -> str:
        return self._text[: self._released]

    def feed(self, delta: str) -> str:
        if self.stopped:
            return ""
        before = self._released
        self._text += delta
        while not self.stopped and (end := _SENTENCE_END.search(self._text, self._sentence)) is not None:
            self._finish_sentence(end.end())
        if not self.stopped:
            # No sentence end yet: a loop inside the sentence still ends it (it may never end).
            loop = self._scan_pending()
            if loop is not None:
                self._stop(loop)
            else:
                self._release_what_cannot_repeat()
        return self._text[before : self._released]

    def finish(self) -> str:
        """The end of the model's answer: its last sentence, unless that repeats too."""
        before = self._released
        if not self.stopped and self._sentence < len(self._text):
            self._finish_sentence(len(self._text))
        return self._text[before : self._released]

    def _finish_sentence(self, end: int) -> None:
        start = self._sentence
        key = sentence_key(self._text[start:end])
        if counts_as_sentence(key) and key in self._sentences:
            self._stop(start)
            return
        tokens = _tokens(self._text, start, end)
        loop = self._loop_start(tokens, end)
        if loop is not None:
            self._stop(loop)
            return
        if counts_as_sentence(key):
            self._sentences.add(key)
        self._words += [t for t, _, _ in tokens]
        while (run := _run_at(self._words, self._open, self._loop_words)) is not None:
            self._runs.add(run)
            self._open += 1
        self._scan, self._scan_runs = self._open, set()
        self._sentence = self._released = end

    def _loop_start(self, tokens: list[tuple[str, int, int]], end: int) -> int | None:
        """Where among `tokens` (of the unfinished sentence, up to `end`) a run of loop_words words begins that
        occurred before: the offset of its second occurrence (the sentence's start where that lies before it); or
        where a mark starts to repeat itself."""
        marks = _MARK_RUN.search(self._text, self._sentence, end)
        if marks is not None:
            tokens = [t for t in tokens if t[1] <= marks.start()]
        words = self._words + [t for t, _, _ in tokens]
        seen = set(self._runs)
        for i in range(self._open, len(words)):
            run = _run_at(words, i, self._loop_words)
            if run is None:
                break
            if run in seen:
                at = i - len(self._words)
                return tokens[at][1] if at >= 0 else self._sentence
            seen.add(run)
        return None if marks is None else marks.start() + 1

    def _scan_pending(self) -> int | None:
        """_loop_start of the unfinished sentence, checking only the runs that the last delta completed (so that
        a long sentence costs time in proportion to its length, not its square)."""
        if _MARK_RUN.search(self._text, self._sentence):
            return self._loop_start(_tokens(self._text, self._sentence), len(self._text))
        # The last word is left for later: the next delta may go on with it.
        tokens = _tokens(self._text, self._sentence, self._settled())[:-1]
        words = self._words + [t for t, _, _ in tokens]
        while (run := _run_at(words, self._scan, self._loop_words)) is not None:
            if run in self._runs or run in self._scan_runs:
                at = self._scan - len(self._words)
                return tokens[at][1] if at >= 0 else self._sentence
            self._scan_runs.add(run)
            self._scan += 1
        return None

    def _settled(self) -> int:
        """The end of the text whose words are known: before an unclosed "[" (the start of a marker, whose number
        is no word)."""
        opened = max(self._text.rfind("[", self._sentence), self._text.rfind("【", self._sentence))
        closed = max(self._text.rfind("]", self._sentence), self._text.rfind("】", self._sentence))
        return opened if opened > closed else len(self._text)

    def _release_what_cannot_repeat(self) -> None:
        """Release the unfinished sentence up to its first word from which on the words so far occur earlier in
        the answer (the last one as a prefix: it may go on); the rest may yet turn out to be a repeat."""
        tokens = [t for t in _tokens(self._text, self._sentence, self._settled()) if t[1] >= self._released]
        if not tokens:
            return
        words = self._words + [t for t, _, _ in _tokens(self._text, self._sentence, tokens[0][1])]
        first = len(words)
        words += [t for t, _, _ in tokens]
        joined = "\0" + "\0".join(words)
        at = len(joined) - sum(len(w) + 1 for w in words[first:])  # where the first unreleased word's "\0" stands
        released = self._released
        for word, _, end in tokens:
            pattern = joined[at:]
            if joined.find(pattern, 0, at + len(pattern) - 1) >= 0:  # an occurrence that starts before this word
                break
            released, at = end, at + len(word) + 1
        self._released = released  # up to the end of a word: the space after it goes with the next

    def _stop(self, keep: int) -> None:
        """End the answer at `keep` (without the white space before it). Markers at the start of the sentence
        belong to the one before ("... stored. [1] ..."): they stay."""
        markers = _LEADING_MARKERS.match(self._text, self._sentence)
        keep = max(keep, markers.end() if markers else 0)
        kept = max(len(self._text[:keep].rstrip()), self._released)
        self.stopped = True
        self.repetition = self._text[kept:]
        self._text = self._text[:kept]
        self._released = kept


def _tokens(text: str, start: int = 0, end: int | None = None) -> list[tuple[str, int, int]]:
    """The words of text[start:end] (casefolded) with their spans in `text`, markers left out."""
    piece = text[start:end]
    masked = _MARKER.sub(lambda m: " " * len(m.group(0)), piece)
    return [(m.group(0).casefold(), start + m.start(), start + m.end()) for m in _TOKEN.finditer(masked)]


class Generation:
    """One answer being written: its text as it comes, less any repetition (RepetitionGuard); then the whole text
    and when the first token came."""

    def __init__(self, generator: Generator, messages: Sequence[dict[str, str]], max_tokens: int) -> None:
        self._generator = generator
        self._messages = messages
        self._max_tokens = max_tokens
        self._guard = RepetitionGuard()
        self.first_token_at: float | None = None  # the model's first token (the guard may hold it back a little)

    async def deltas(self) -> AsyncIterator[str]:
        stream = self._generator.stream(self._messages, self._max_tokens)
        try:
            async for delta in stream:
                if self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
                released = self._guard.feed(delta)
                if released:
                    yield released
                if self._guard.stopped:
                    return
            released = self._guard.finish()
            if released:
                yield released
        finally:
            # Closing the model's stream aborts the engine's work: when the answer repeats itself, and when this
            # iterator is closed early (the client left).
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    @property
    def stopped_repeating(self) -> bool:
        """Whether the answer was cut where it started repeating itself."""
        return self._guard.stopped

    @property
    def text(self) -> str:
        return self._guard.text.strip()
