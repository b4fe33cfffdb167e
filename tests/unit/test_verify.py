import pytest

from service.ask.verify import check_claim, facts, makes_claim

pytestmark = pytest.mark.unit

TRAVEL = (
    "Business travel must be approved by a manager two weeks in advance. Economy class is booked for flights under "
    "six hours. Expenses are reimbursed within 30 days of the trip."
)


# --- the facts of a text, one kind at a time ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The archive holds 1870 boxes.", {"1870"}),
        ("Prices rose 3% last year.", {"3%"}),
        ("Each upload may be 100 MB.", {"100 MB"}),
        ("The grant was $5 million.", {"5000000 USD"}),
        ("The office opened on 1 March 2024.", {"2024-03-01"}),
        ("Write to ops@example.com for access.", {"ops@example.com"}),
        ("Set KB_INGEST__MAX_UPLOAD_BYTES first.", {"kbingestmaxuploadbytes"}),
        ("Install version v2.3.1 today.", {"2.3.1"}),
        ("The plant is certified to ISO-9001.", {"iso9001"}),
        ("Order SKU-42 again.", {"sku42"}),
        ("The theatre of Leon Schiller opened.", {"leon schiller"}),
    ],
)
def test_each_kind_of_fact_is_read(text: str, expected: set[str]) -> None:
    assert facts(text) == expected


@pytest.mark.parametrize(
    "forms",
    [
        ("1,000 files", "1000 files", "1 000 files", "１，０００ files"),  # thousands separators, full width
        ("100 MB", "100MB", "100 megabytes", "１００ MB"),  # units
        ("12 weeks", "twelve weeks", "12-week", "十二周"),  # number words, Chinese numerals
        ("3%", "3 percent", "3 per cent", "百分之三", "３％"),  # percentages
        ("2024-03-01", "1 March 2024", "March 1, 2024", "1st of March 2024", "2024年3月1日", "2024/3/1"),  # dates
        ("5 million dollars", "$5,000,000", "US$5m"),  # amounts
        ("3000000元", "300万元"),  # 万 as a scale
        ("1.2 million", "1,200,000"),
    ],
)
def test_one_fact_written_many_ways_has_one_normal_form(forms: tuple[str, ...]) -> None:
    normal = {form: facts(form) for form in forms}
    assert len({frozenset(f) for f in normal.values()}) == 1, normal
    assert next(iter(normal.values()))


@pytest.mark.parametrize(
    ("chinese", "arabic"),
    [("三个人", "3个人"), ("十二个月", "12个月"), ("两所学校", "2所学校"), ("三百人", "300人"), ("一万人", "10000人"),
     ("第二十一届", "第21届"), ("二〇二四年三月一日", "2024年3月1日")],
)  # fmt: skip
def test_chinese_numerals_where_simple(chinese: str, arabic: str) -> None:
    assert facts(chinese) == facts(arabic) != set()


def test_words_that_only_look_like_numbers_or_names_are_no_claims() -> None:
    # "one of", "at first", 一个, 统一, 十分: numbers in passing; a sentence's capitalised first word: any word.
    assert facts("One of the first buildings was a second home.") == set()
    assert facts("这是一个统一的十分重要的国家。") == set()
    assert facts("Backups run nightly.") == set()
    assert facts("Warsaw is large.") == set()  # a single capitalised first word could be any word
    assert facts("In Warsaw it rains.") == {"warsaw"}  # ... not after an opener
    assert facts("Leon Schiller founded it.") == {"leon schiller"}  # a name of two words opening a sentence
    assert facts("He arrived in May.") == {"-05"}  # a month alone
    assert facts("Parental leave is 12 weeks [1].") == {"12 week"}  # the marker is no number


def test_names_in_chinese_text() -> None:
    # Latin names need no position rule in Chinese; Chinese names are the words tagged as people and places.
    assert {"nba", "姚明", "上海", "2.26 m"} <= facts("NBA球员姚明生于上海，身高2.26米。")
    assert "neosebastes" in facts("长鳍新平鲉（学名：Neosebastes entaxis）为鲉科的一种。")


# --- the check ------------------------------------------------------------------------------------------------


def test_an_invented_number_against_a_source_about_something_else_is_unsupported() -> None:
    """The issue's case: 'How many weeks of parental leave' against a travel policy got '12 weeks [1]'."""
    assert check_claim("Parental leave is 12 weeks [1].", [TRAVEL]) == (False, ["12 weeks"])


def test_the_same_number_in_other_words_is_supported() -> None:
    assert check_claim("Parental leave is 12 weeks [1].", ["Parental leave is twelve weeks."]) == (True, [])
    assert check_claim("The limit is 1,000 files [1].", ["The limit is 1000 files per user."]) == (True, [])
    assert check_claim("Uploads may be 100 megabytes [1].", ["Uploads may be 100 MB each."]) == (True, [])
    assert check_claim("The office opened on March 1, 2024.", ["The office opened on 2024-03-01."]) == (True, [])


def test_a_changed_unit_is_a_missing_fact() -> None:
    assert check_claim("Parental leave is 12 days.", ["Parental leave is 12 weeks."]) == (False, ["12 days"])
    assert check_claim("Uploads may be 100 GB.", ["Uploads may be 100 MB each."]) == (False, ["100 GB"])


def test_a_number_from_another_part_of_the_source_is_missing() -> None:
    """12 occurs in the source, but where it speaks of sick leave, not of parental leave."""
    source = (
        "Sick leave is 12 days a year and needs a doctor's note after three days. Offices close at six. "
        "Lunch is served in the canteen. Parental leave is 16 weeks for every employee."
    )
    assert check_claim("Parental leave is 16 weeks for every employee.", [source]) == (True, [])
    assert check_claim("Parental leave is 12 weeks for every employee.", [source]) == (False, ["12 weeks"])


def test_dates_partial_and_shifted() -> None:
    source = "The board met on 1 March 2024 in Geneva."
    assert check_claim("The board met in March 2024.", [source]) == (True, [])
    assert check_claim("The board met on 2 March 2024.", [source]) == (False, ["2 March 2024"])
    assert check_claim("The board met in April 2024.", [source]) == (False, ["April 2024"])
    assert check_claim("The board met on 1 March.", [source]) == (True, [])


def test_percent_amount_email_and_code_must_match() -> None:
    source = "Churn fell to 3 percent. The budget is $5 million. Mail ops@example.com. Set KB_MODE=extract (v2.3.1)."
    assert check_claim("Churn fell to 3%.", [source])[0] is True
    assert check_claim("Churn fell to 4%.", [source]) == (False, ["4%"])
    assert check_claim("The budget is 5 million dollars.", [source])[0] is True
    assert check_claim("The budget is 6 million dollars.", [source]) == (False, ["6 million dollars"])
    assert check_claim("Mail ops@example.com.", [source])[0] is True
    assert check_claim("Mail admin@example.com.", [source]) == (False, ["admin@example.com"])
    assert check_claim("Set KB_MODE to extract in v2.3.1.", [source])[0] is True
    assert check_claim("Set KB_MODE to extract in v2.4.0.", [source]) == (False, ["v2.4.0"])


def test_names_must_be_in_the_source_in_some_form() -> None:
    source = "Nearby, in Ogród Saski, the University of Warsaw ran Leon Schiller's musical theatre."
    assert check_claim("Leon Schiller's theatre was run by the University of Warsaw.", [source]) == (True, [])
    assert check_claim("The theatre of Ogrod Saski was run by Warsaw University.", [source]) == (True, [])
    assert check_claim("Leon Kantor's theatre was run by the University of Warsaw.", [source]) == (
        False,
        ["Leon Kantor's"],
    )
    assert check_claim("The University of Krakow ran the musical theatre.", [source]) == (
        False,
        ["University of Krakow"],
    )


def test_chinese_sentences() -> None:
    source = "工作日值班时间为北京时间下午三点至晚上十二点。周末由张伟负责，电话为010-12345678。"
    assert check_claim("值班时间为下午3点至晚上12点 [1]。", [source]) == (True, [])
    assert check_claim("值班时间为下午四点至晚上十二点 [1]。", [source]) == (False, ["四点"])
    assert check_claim("周末由张伟负责。", [source]) == (True, [])
    assert check_claim("周末由李明负责。", [source]) == (False, ["李明"])


def test_a_measure_word_ties_a_chinese_number_to_what_it_counts() -> None:
    source = "这是高盛在中国的第二次收购，工厂位于四川。"
    assert check_claim("这是高盛在中国的第二次收购。", [source]) == (True, [])
    assert check_claim("这是高盛在中国的第四次收购。", [source]) == (False, ["第四次"])


def test_word_overlap_still_decides_when_there_are_no_facts() -> None:
    assert check_claim("Originals are kept forever in a vault.", ["Backups run nightly."]) == (False, [])
    assert check_claim("Backups run nightly.", ["Backups run nightly at two."]) == (True, [])


def test_facts_may_come_from_any_cited_source() -> None:
    sources = ["The Summer Theatre opened in 1870.", "The Summer Theatre closed in 1939."]
    assert check_claim("The Summer Theatre ran from 1870 to 1939.", sources) == (True, [])
    assert check_claim("The Summer Theatre ran from 1870 to 1939.", sources[:1]) == (False, ["1939"])


def test_a_claim_that_cites_nothing_is_unsupported_and_a_sentence_without_one_is_not_a_claim() -> None:
    assert check_claim("Parental leave is 12 weeks.", []) == (False, ["12 weeks"])
    assert check_claim("Yes.", []) == (True, [])
    assert makes_claim("Parental leave is 12 weeks.") and makes_claim("12.")
    assert not makes_claim("Yes [1].")
