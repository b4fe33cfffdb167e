"""How an answer is made: the model's own refusals, and the question's language against the model's."""

from __future__ import annotations

import pytest

from kb.settings import AnswerSettings
from service.ask.answerability import asks_for_more, first_mode, says_no_information

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "answer",
    [
        "The context does not mention parental leave.",
        "The text doesn't say how many weeks of leave there are [1].",
        "I cannot find this information in the sources.",
        "There is no information about parental leave in the context.",
        "Parental leave is not mentioned in the policy.",
        "文中没有提到育儿假的天数。",
        "无法回答这个问题。",
    ],
)
def test_the_models_own_no_information_is_recognised(answer: str) -> None:
    assert says_no_information(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "Uploads are limited to 100 MB per file [1].",
        "Backups run nightly at 02:00 [1]. Restores are not tested automatically [2].",  # a caveat after an answer
        "No file may exceed 100 MB [1].",
        "值班时间是工作日的九点到十八点。",
    ],
)
def test_an_answer_is_not_taken_for_a_refusal(answer: str) -> None:
    assert not says_no_information(answer)


def test_the_question_language_decides_whether_the_model_writes() -> None:
    english_only = AnswerSettings(mode="auto", generator_languages=["en"])
    assert first_mode("How large may an upload be?", english_only) == "generate"
    assert first_mode("上传文件的大小限制是多少？", english_only) == "extract"
    assert first_mode("上传文件的大小限制是多少？", AnswerSettings(mode="auto", generator_languages=["*"])) == "generate"
    assert first_mode("上传文件的大小限制是多少？", AnswerSettings(mode="auto", generator_languages=["en", "zh"])) == (
        "generate")  # fmt: skip
    # Configured: always the model, or never.
    assert first_mode("上传文件的大小限制是多少？", AnswerSettings(mode="generate")) == "generate"
    assert first_mode("How large may an upload be?", AnswerSettings(mode="extract")) == "extract"


@pytest.mark.parametrize("question", ["Tell me more about it.", "Go on.", "Can you explain further?", "更多细节？", "继续"])
def test_a_follow_up_asking_for_more_is_recognised(question: str) -> None:
    assert asks_for_more(question)


@pytest.mark.parametrize("question", ["And for PDFs?", "What about parental leave?", "Tell me more about parental leave.",
                                      "需要提前几天申请？"])  # fmt: skip
def test_a_follow_up_with_a_subject_of_its_own_is_not_asking_for_more(question: str) -> None:
    assert not asks_for_more(question)
