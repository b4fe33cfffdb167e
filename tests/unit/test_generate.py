"""The generate stage's repetition guard: a looping answer ends before it repeats, the repetition never reaches the
client, and the model's stream is closed (which aborts the engine's request)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from service.ask.generate import Generation, RepetitionGuard
from tests.fakes import FakeGenerator

MESSAGES = [{"role": "system", "content": "Answer."}, {"role": "user", "content": "Where?"}]


class Watched:
    """What became of the model's stream: how many deltas were read, and whether it was closed before its end."""

    def __init__(self, generator: FakeGenerator) -> None:
        self.read = 0
        self.exhausted = self.closed = False
        inner = generator.stream

        async def stream(messages: Sequence[dict[str, str]], max_tokens: int | None = None) -> AsyncIterator[str]:
            try:
                async for delta in inner(messages, max_tokens):
                    self.read += 1
                    yield delta
                self.exhausted = True
            finally:
                self.closed = True

        generator.stream = stream  # type: ignore[method-assign]


def words(text: str) -> list[str]:
    """Deltas of a word each, as an engine streams them."""
    return [w + " " for w in text.split(" ")]


async def generate(deltas: list[str]) -> tuple[Generation, list[str], Watched, FakeGenerator]:
    generator = FakeGenerator(deltas)
    watched = Watched(generator)
    generation = Generation(generator, MESSAGES, 320)
    released = [delta async for delta in generation.deltas()]
    return generation, released, watched, generator


async def test_a_repeated_sentence_ends_the_answer_before_it_and_closes_the_stream():
    loop = "The capital is Paris [1]. It is an old city. "
    deltas = words(
        "The capital is Paris [1]. It is an old city. " + "The capital is Paris [2]. It is an old city. " * 15
    )

    generation, released, watched, _ = await generate(deltas)

    assert generation.text == loop.strip()
    assert "".join(released).strip() == loop.strip()  # the client saw nothing of the repetition
    assert released[0] == "The"  # streamed as written, not held to the end of the sentence
    assert generation.stopped_repeating
    assert watched.closed and not watched.exhausted
    assert watched.read < len(deltas) / 4  # stopped at the repeat, not at max_tokens


async def test_the_sentences_are_compared_without_case_spacing_or_markers():
    deltas = words("Paris is the capital [1].  PARIS is   the Capital! [2] More text follows here.")

    generation, released, _, _ = await generate(deltas)

    assert generation.text == "Paris is the capital [1]."
    assert "".join(released).strip() == "Paris is the capital [1]."


async def test_markers_after_the_last_good_sentence_stay_with_it():
    generation, _, _, _ = await generate(words("It was stored in 2010. [1] It was stored in 2010. [2] It was"))

    assert generation.text == "It was stored in 2010. [1]"


async def test_a_loop_without_sentence_ends_is_cut_where_it_starts_again():
    phrase = 'in the context of the movie "One Piece" and the movie "The Legend of Zelda" '
    deltas = words(f"The text suggests that the answer is a reference {phrase}{phrase}{phrase}{phrase}")

    generation, released, watched, _ = await generate(deltas)

    assert generation.text == f"The text suggests that the answer is a reference {phrase}".strip()
    assert "".join(released) == generation.text
    assert watched.closed and not watched.exhausted


async def test_a_sentence_repeated_within_a_longer_one_is_cut_where_the_repeat_starts():
    first = "The text states that 40% of the total electorate is required to pass legislation [1]."
    deltas = words(f"{first} Therefore, 40% of the total electorate is required to pass legislation [1].")

    generation, released, _, _ = await generate(deltas)

    assert generation.text == f"{first} Therefore,"
    assert "".join(released) == generation.text


async def test_a_list_that_repeats_an_item_ends_before_it():
    deltas = words("Some large companies: [3]\n1. IBM Corporation [5]\n2. Omnicare [3]\n3. IBM Corporation [5]\n4. Google")

    generation, _, _, _ = await generate(deltas)

    assert generation.text == "Some large companies: [3]\n1. IBM Corporation [5]\n2. Omnicare [3]\n3."


async def test_a_run_of_one_mark_is_a_loop():
    generation, released, watched, _ = await generate(list("什么？" + "？" * 40))

    assert generation.text == "什么？"
    assert "".join(released) == "什么？"
    assert watched.read < 10


async def test_a_chinese_sentence_repeated_with_a_small_change_is_a_loop():
    first = "陈永明在1995年12月15日发行DSD版本唱片，并开始精神游舞曲歌曲 [1]。"
    deltas = list(first + "陈永明在1995年12月15日发行DSD版本唱片，并开始唱歌 [1]。" * 5)

    generation, _, _, _ = await generate(deltas)

    assert generation.text == first


async def test_an_answer_that_does_not_repeat_itself_streams_whole():
    answer = (
        "The answer is 3.5 meters [1]. E.g. the north wall. E.g. the south wall. "
        "It was built by the University of Notre Dame, and the University of Notre Dame still owns it [2].\n"
        "根据《中华人民共和国劳动合同法》第三十九条，公司可以解除合同。根据《中华人民共和国劳动合同法》第四十条，需要提前通知。"
    )
    deltas = words(answer)

    generation, released, watched, _ = await generate(deltas)

    assert generation.text == answer
    assert "".join(released).strip() == answer
    assert not generation.stopped_repeating
    assert watched.exhausted
    assert len(released) > 4  # sentence by sentence, not all at the end


async def test_the_first_words_are_released_as_soon_as_they_come():
    generator = FakeGenerator(words("Paris is the capital [1]. It has many museums and parks."))
    watched = Watched(generator)
    deltas = Generation(generator, MESSAGES, 320).deltas()

    first = await deltas.__anext__()

    assert first == "Paris"
    assert watched.read == 1
    await deltas.aclose()
    assert watched.closed  # the client left: the model's stream is closed too


async def test_the_last_sentence_without_an_end_is_kept_unless_it_repeats():
    kept, _, _, _ = await generate(words("Paris is the capital [1]. It is old"))
    dropped, _, _, _ = await generate(words("Paris is the capital [1]. Paris is the capital"))

    assert kept.text == "Paris is the capital [1]. It is old"
    assert dropped.text == "Paris is the capital [1]."
    assert dropped.stopped_repeating


def test_words_that_may_start_a_repeat_are_held_back_until_they_differ():
    guard = RepetitionGuard()
    fed = [guard.feed(delta) for delta in words("It is old in 1850. It is also big.")]

    # The first sentence goes out word by word: nothing like it came before.
    assert fed[:5] == ["It", " is", " old", " in", " 1850."]
    # The second begins as the first did: "It is" waits until "also" shows it is no repeat.
    assert fed[5:] == ["", "", " It is also", " big."]
    assert guard.finish() == " "
    assert guard.text == "It is old in 1850. It is also big. "


@pytest.mark.parametrize("chunked", [False, True])
def test_the_guard_gives_the_same_text_however_the_deltas_are_cut(chunked: bool):
    text = "One sentence here [1]. Another one here. One sentence here [2]. Another one here."
    guard = RepetitionGuard()
    pieces = [text] if chunked else list(text)
    released = "".join(guard.feed(piece) for piece in pieces) + guard.finish()

    assert released == guard.text == "One sentence here [1]. Another one here."
    assert guard.repetition.strip().startswith("One sentence here [2].")
