"""The ask pipeline with fakes: packing, the no-information path, events and citations."""

from __future__ import annotations

import pytest

from kb.models import Passage, SearchFilter
from kb.settings import AnswerSettings, GeneratorSettings, RetrievalSettings
from service.ask.events import Citations, Done, Token
from service.ask.packing import Budget
from service.ask.pipeline import AskPipeline, Question
from service.ask.prompt import no_information_answer
from tests.fakes import FakeConversations, FakeGenerator, FakeRetrieval

pytestmark = pytest.mark.unit


def passage(doc: str, ordinal: int, text: str, score: float = 0.5) -> Passage:
    return Passage(chunk_id=f"{doc}-{ordinal}", document_id=doc, filename=f"{doc}.pdf", text=text, score=score,
                   page=ordinal + 1, ordinal=ordinal)


def service(passages: list[Passage], answer: str, relevant: bool = True, context_tokens: int = 3000) -> tuple[AskPipeline, FakeGenerator]:
    generator = FakeGenerator(answer)
    settings = RetrievalSettings(context_tokens=context_tokens)
    return AskPipeline(FakeRetrieval(passages, relevant=relevant), generator, settings, GeneratorSettings()), generator  # type: ignore[arg-type]


def budget(pipeline: AskPipeline, conversation_tokens: int = 0) -> Budget:
    """The budget of question "q" after a conversation of `conversation_tokens`."""
    whole = pipeline.packer.budget("q")
    return Budget(whole.context - conversation_tokens, whole.window - conversation_tokens)


def test_sources_are_grouped_by_document_in_document_order() -> None:
    passages = [passage("b", 5, "b five"), passage("a", 2, "a two"), passage("b", 1, "b one"), passage("a", 0, "a zero")]
    packed, _ = service(passages, "x")
    assert [p.chunk_id for p in packed.packer.pack(passages, budget(packed))] == ["b-1", "b-5", "a-0", "a-2"]


def test_packing_stops_at_the_token_budget_and_drops_duplicates() -> None:
    long = passage("a", 0, "word " * 200)
    short = passage("b", 0, "short text")
    packed, _ = service([], "x", context_tokens=150)
    assert [p.chunk_id for p in packed.packer.pack([long, short, short], budget(packed))] == ["b-0"]


def test_a_follow_up_keeps_the_previous_sources_while_the_window_holds_them_and_adds_only_within_the_budget() -> None:
    previous = [passage("a", i, "word " * 40) for i in range(3)]  # 3 x 43 tokens, more than this budget holds
    new = passage("b", 0, "fresh passage")
    packed, _ = service([], "x", context_tokens=170)
    assert [p.chunk_id for p in packed.packer.pack([new], budget(packed), previous)] == ["a-0", "a-1", "a-2"]
    # The conversation (reserved) leaves the budget too small for all three: they stay, nothing new comes in.
    assert [p.chunk_id for p in packed.packer.pack([new], budget(packed, 60), previous)] == ["a-0", "a-1", "a-2"]
    # More room: the new passage after them.
    roomy, _ = service([], "x", context_tokens=300)
    assert [p.chunk_id for p in roomy.packer.pack([new], budget(roomy, 60), previous)] == ["a-0", "a-1", "a-2", "b-0"]
    # The window is the limit: the history takes all but room for two of them.
    window = budget(roomy).window
    kept = roomy.packer.pack([new], budget(roomy, window - 2 * 43 - 5), previous)
    assert [p.chunk_id for p in kept] == ["a-0", "a-1"]


async def test_irrelevant_retrieval_answers_no_information_without_the_model() -> None:
    answers, generator = service([passage("a", 0, "Backups run nightly.")], "should not be used", relevant=False)
    answer = await answers.ask("What is the weather on Mars?")
    assert answer.answer == no_information_answer("What is the weather on Mars?")
    assert answer.citations == [] and answer.grounded is False
    assert generator.messages == []


async def test_stream_events_and_the_final_answer_carry_citations() -> None:
    answers, generator = service([passage("a", 0, "Backups run nightly at 02:00.")], "Backups run nightly at 02:00.")
    events = [event async for event in answers.stream(Question("When do backups run?"))]
    kinds = [type(e) for e in events]
    assert kinds[-2:] == [Citations, Done] and set(kinds[:-2]) == {Token}
    assert isinstance(events[-1], Done) and events[-1].answer == "Backups run nightly at 02:00 [1]."
    assert isinstance(events[-2], Citations) and events[-2].citations[0].document_id == "a"
    assert "[1] Backups run nightly at 02:00." in generator.messages[1]["content"]
    assert generator.messages[0]["role"] == "system"


async def test_a_follow_up_keeps_the_previous_sources_first_and_retrieves_with_context() -> None:
    first = [passage("a", 0, "Backups run nightly at 02:00."), passage("a", 1, "A restore takes two hours.")]
    second = [passage("b", 0, "Restores are tested every quarter."), passage("a", 1, "A restore takes two hours.")]
    retrieval = FakeRetrieval(rounds=[first, second])
    generator = FakeGenerator("Backups run nightly at 02:00.")
    conversations = FakeConversations()
    answers = AskPipeline(retrieval, generator, RetrievalSettings(), GeneratorSettings(), conversations)  # type: ignore[arg-type]

    one = await answers.ask("When do backups run?")
    prompt_one = generator.messages[1]["content"]
    two = await answers.ask("And restores?", conversation_id=one.conversation_id)
    prompt_two = generator.messages[1]["content"]

    assert one.conversation_id and two.conversation_id == one.conversation_id
    assert retrieval.queries == ["When do backups run?", "When do backups run? And restores?"]
    sources_one = prompt_one.split("\n\nUsing the text above")[0]
    assert prompt_two.startswith(sources_one)  # same prefix: the prefix cache skips its prefill
    assert "[3] Restores are tested every quarter." in prompt_two
    assert "The conversation so far:\nUser: When do backups run?\nAssistant: Backups run nightly" in prompt_two
    assert [m["role"] for m in conversations.messages[one.conversation_id]] == ["user", "assistant"] * 2


def auto(passages: list[Passage], answer: str, **answer_settings: object) -> tuple[AskPipeline, FakeGenerator]:
    generator = FakeGenerator(answer)
    settings = AnswerSettings(**{"mode": "auto", **answer_settings})  # type: ignore[arg-type]
    pipeline = AskPipeline(FakeRetrieval(passages), generator, RetrievalSettings(), GeneratorSettings(),  # type: ignore[arg-type]
                           answer_settings=settings)  # fmt: skip
    return pipeline, generator


TRAVEL = passage("travel", 0, "Travel costs are reimbursed within 30 days of the trip. Economy class is the rule for "
                 "flights under six hours.")  # fmt: skip


async def test_an_invented_fact_is_not_passed_off_as_grounded() -> None:
    """"How many weeks of parental leave…" against a travel policy got "12 weeks" with grounded: true."""
    answers, _ = auto([TRAVEL], "Parental leave is 12 weeks [1].")
    events = [e async for e in answers.stream(Question("How many weeks of parental leave do employees get?"))]
    done = events[-1]
    assert isinstance(done, Done) and done.mode == "none" and done.grounded is False
    assert done.answer == no_information_answer("How many weeks of parental leave do employees get?")
    assert isinstance(events[-2], Citations) and events[-2].citations == []
    # A client that only appends tokens reads the replacement after a note, not the invented answer alone.
    streamed = "".join(e.text for e in events if isinstance(e, Token))
    assert streamed.index("not supported by the sources") < streamed.index(done.answer)


async def test_generate_mode_keeps_the_answer_and_names_its_unsupported_sentence() -> None:
    answers, _ = auto([TRAVEL], "Travel costs are reimbursed within 30 days [1]. Parental leave is 12 weeks [1].",
                      mode="generate")  # fmt: skip
    answer = await answers.ask("How fast are travel costs reimbursed, and how long is parental leave?")
    assert answer.mode == "generate" and answer.grounded is False
    assert answer.unsupported == ["Parental leave is 12 weeks [1]."]
    assert answer.citations and answer.citations[0].supported is False


async def test_a_question_in_a_language_the_model_does_not_write_gets_quoted_evidence() -> None:
    duty = passage("duty", 0, "值班安排如下。工作日值班时间为早上九点到晚上六点。周末由轮值工程师负责。")
    answers, generator = auto([duty], "should not be used")
    answer = await answers.ask("工作日值班时间是什么时候？")
    assert generator.messages == []  # the model was not asked
    assert answer.mode == "extract" and answer.grounded is True
    assert "工作日值班时间为早上九点到晚上六点" in answer.answer and "[1]" in answer.answer
    assert [c.document_id for c in answer.citations] == ["duty"]


async def test_a_supported_written_answer_stays() -> None:
    answers, _ = auto([TRAVEL], "Travel costs are reimbursed within 30 days of the trip [1].")
    answer = await answers.ask("How fast are travel costs reimbursed?")
    assert answer.mode == "generate" and answer.grounded is True and answer.unsupported == []
    assert answer.answer.startswith("Travel costs are reimbursed within 30 days")


async def test_a_checked_answer_to_a_question_the_sources_do_not_answer_gives_way_to_no_information() -> None:
    """A small model writes a sentence the check passes (every word and number is in the source) for a question the
    sources do not answer: the quoted evidence's measure decides, and it finds nothing that answers."""
    question = "How many days of sick leave do employees get?"
    answers, _ = auto([TRAVEL], "Travel costs are reimbursed within 30 days of the trip [1].")
    done = [e async for e in answers.stream(Question(question))][-1]
    assert isinstance(done, Done) and done.mode == "none" and done.grounded is False
    assert done.answer == no_information_answer(question)

    # Configured off (a model whose answers combine passages), the checked answer stands.
    answers, _ = auto([TRAVEL], "Travel costs are reimbursed within 30 days of the trip [1].", require_evidence=False)
    answer = await answers.ask(question)
    assert answer.mode == "generate" and answer.grounded is True


async def test_an_answer_for_another_year_than_the_question_asks_is_refused() -> None:
    """The quoted sentence scores well on its words, but the question's year is nowhere in its passage."""
    report = passage("report", 0, "The annual revenue in 2023 was 4.2 million euros. The company employed 40 people "
                     "at the end of the year.")  # fmt: skip
    answers, _ = auto([report], "The annual revenue in 2023 was 4.2 million euros [1].")
    assert (await answers.ask("What was the annual revenue in 2023?")).mode == "generate"
    answer = await answers.ask("What was the annual revenue in 2021?")
    assert answer.mode == "none" and answer.citations == []


async def test_a_chinese_follow_up_is_quoted_for_its_own_words_not_only_with_the_previous_question() -> None:
    """Asked after another question, the standalone query (previous + this) diluted the follow-up's own words below
    the evidence threshold: "no information" where the same question alone was answered."""
    policy = passage("policy", 0, "出差住宿标准为每晚五百元。出差需要提前三天在系统中提交申请。报销在出差结束后十天内完成。")
    retrieval = FakeRetrieval(rounds=[[policy], [policy], [policy]])
    answers = AskPipeline(retrieval, FakeGenerator("unused"), RetrievalSettings(), GeneratorSettings(),  # type: ignore[arg-type]
                          FakeConversations(), answer_settings=AnswerSettings(mode="auto"))  # fmt: skip

    alone = await answers.ask("出差需要提前几天申请？")
    first = await answers.ask("会议室怎么预订？")
    follow_up = await answers.ask("需要提前几天申请？", conversation_id=first.conversation_id)

    assert alone.mode == "extract" and "提前三天" in alone.answer
    assert retrieval.queries[-1] == "会议室怎么预订？ 需要提前几天申请？"
    assert follow_up.mode == "extract" and "提前三天" in follow_up.answer and follow_up.grounded


async def test_a_question_about_chosen_documents_as_a_whole_quotes_their_opening() -> None:
    """"What does this document say?" about a document the reader chose: its opening sentences, not "no
    information" (no sentence answers such a question by its words)."""
    handbook = [passage("handbook", 0, "Leave policy. Every employee accrues two days of paid leave per month."),
                passage("handbook", 1, "Unused leave expires at the end of March of the following year.")]  # fmt: skip
    retrieval = FakeRetrieval(documents={"handbook": handbook})
    answers = AskPipeline(retrieval, FakeGenerator("unused"), RetrievalSettings(), GeneratorSettings(),  # type: ignore[arg-type]
                          answer_settings=AnswerSettings(mode="extract"))  # fmt: skip

    answer = await answers.ask(Question("总结一下这份文件。", SearchFilter(document_ids=["handbook"])))
    unscoped = await AskPipeline(FakeRetrieval(handbook), FakeGenerator("unused"), RetrievalSettings(),  # type: ignore[arg-type]
                                 GeneratorSettings(), answer_settings=AnswerSettings(mode="extract")).ask("总结一下这份文件。")  # fmt: skip

    # In document order, from its first sentence long enough to say something.
    assert answer.mode == "extract" and answer.answer.startswith("Every employee accrues two days of paid leave")
    assert answer.answer.index("[1]") < answer.answer.index("Unused leave expires") < answer.answer.index("[2]")
    assert {c.document_id for c in answer.citations} == {"handbook"} and answer.grounded
    assert unscoped.mode == "none"  # not chosen: a question its sources do not answer is still refused


async def test_every_turn_of_a_conversation_reaches_the_generator_under_one_session_that_hides_its_id() -> None:
    retrieval = FakeRetrieval(rounds=[[passage("a", 0, "Backups run nightly at 02:00.")]] * 3)
    generator = FakeGenerator("Backups run nightly at 02:00.")
    answers = AskPipeline(retrieval, generator, RetrievalSettings(), GeneratorSettings(), FakeConversations())  # type: ignore[arg-type]

    one = await answers.ask("When do backups run?")
    await answers.ask("And on Sundays?", conversation_id=one.conversation_id)
    other = await answers.ask("When do backups run?")

    first, second, third = generator.sessions
    assert first and first == second  # one conversation, one server behind a session-routing router
    assert third and third != first and other.conversation_id != one.conversation_id
    assert one.conversation_id not in first  # a hash of the id, not the id


async def test_a_follow_up_rewritten_by_the_model_goes_to_the_conversations_session_too() -> None:
    retrieval = FakeRetrieval(rounds=[[passage("a", 0, "Backups run nightly at 02:00.")]] * 2)
    generator = FakeGenerator("Backups run nightly at 02:00.")
    answers = AskPipeline(retrieval, generator, RetrievalSettings(followup_rewrite="llm"), GeneratorSettings(),  # type: ignore[arg-type]
                          FakeConversations())  # fmt: skip

    one = await answers.ask("When do backups run?")
    await answers.ask("And on Sundays?", conversation_id=one.conversation_id)

    answer, rewrite, follow_up = generator.sessions  # the first answer, the follow-up's rewrite, its answer
    assert answer and answer == rewrite == follow_up
