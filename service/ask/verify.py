"""Whether the sources an answer sentence cites state the facts in it, not only share its words.

Word overlap passes a sentence that copies a source's words and changes its number ("Parental leave is 12 weeks"
against a policy that speaks of leave and weeks): small models do exactly that, and mark it [n]. So every number,
date, amount, percentage, e-mail, code-like token and capitalised name of a sentence must also occur in a source it
cites, compared in one normal form: 1,000 = 1 000 = 1000 = 一千, 100 MB = 100MB = 100 megabytes, 3% = 3 percent =
百分之三, 1 March 2024 = March 1, 2024 = 2024-03-01 = 2024年3月1日, １００ = 100, twelve = 12.

Chinese has no capitals: its names are the words jieba tags as people, places and organisations, and a number is
tied to its measure word (第四次 is not supported by 第二次 and 四川) as an English one is to its unit. A fact must
also stand in the part of the source the sentence is about, not merely somewhere in it (LOCAL_SHARE).

A sentence is read cautiously and a source generously: a word that may or may not state a fact ("one of", 一个,
"May" opening a sentence, a capitalised first word) is no claim to check, yet counts as evidence where a source
holds it. A sentence copied from its source therefore passes, and a changed fact in it is missing.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache

from kb.text import HAN, HAN_RUN
from service.search.lexical import content_terms

# [1], [1, 2], [1][3], 【2】, [source 1]
MARKER = re.compile(r"[\[【]\s*(?:sources?\s*)?(\d+(?:\s*[,，、]\s*\d+)*)\s*[\]】]", re.IGNORECASE)
# Share of a sentence's content terms that must occur in the sources it cites (paraphrase shares fewer than a copy).
MIN_SUPPORT_MARKED = 0.34
# A fact must also stand where the source speaks of the sentence's subject: in a stretch of it (its sentence and
# the next and previous ones) that shares at least this share of the sentence's terms that the best such stretch
# shares. "Parental leave is 12 weeks" is not supported by "Sick leave is 12 weeks. ... Parental leave is 16 weeks."
LOCAL_SHARE = 0.5
LOCAL_REACH = 1  # sentences on either side


@dataclass
class ClaimCheck:
    start: int  # the sentence's span in the answer text
    end: int
    cited: list[int]  # source numbers (1-based) the sentence cites, explicit or inferred
    supported: bool
    missing: list[str]  # facts in the sentence, as written there, found in none of its cited sources


@dataclass(frozen=True)
class _Fact:
    kind: str  # number, percent, quantity, amount, date, email, code, name, han_name
    key: str  # the normal form: what facts() returns
    text: str  # as written
    value: Decimal | None = None
    unit: str | None = None  # quantity: canonical unit; amount: currency
    date: tuple[int | None, int | None, int | None] | None = None
    words: tuple[str, ...] = ()  # name: its words, normalised
    alt: tuple[str, ...] = ()  # name opening a sentence: the words after its first, which may be an ordinary word


# ---------------------------------------------------------------------------------------------------------------
# Vocabulary

_WORD_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_WORD_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
              "ninety": 90}  # fmt: skip
_WORD_SCALES = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_WORD_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8, "ninth": 9,
    "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14, "fifteenth": 15,
    "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19, "twentieth": 20,
}  # fmt: skip
# Words that state 1 or 2 in passing more often than as a fact ("one of the", "at first", "a second look").
_WORDS_IN_PASSING = {"one", "first", "second"}

_CN_DIGITS = {
    "零": 0,
    "〇": 0,
    "一": 1,
    "二": 2,
    "两": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_CN_UNITS = {"十": 10, "百": 100, "千": 1000}
_CN_BIG = {"万": 10**4, "亿": 10**8}
_CN_NUMERAL = "零〇一二两三四五六七八九十百千万亿"
# Numeral runs that are words: 十分 "very", 万一 "in case", 千万 "by all means", 一一 "one by one".
_CN_IDIOMS = {"十分", "万一", "千万", "一一", "万万", "三三两两", "一五一十", "七七八八", "乱七八糟", "一心一意"}
# Measure words: a numeral before one counts something, so it is a claim.
_CN_CLASSIFIERS = (
    "世纪 小时 分钟 年代 个 年 月 日 号 天 周 岁 人 名 位 次 届 倍 元 米 度 家 座 种 部 本 条 项 只 头 张 件 层 场 "
    "支 首 篇 章 集 季 期 代 轮 局 级 艘 架 辆 门 间 户 栋 份 枚 颗 株 棵 句 段 册 卷 所 分 秒 斤 亩 吨 克 队 军 "
    "师 团 省 州 县 国 字 声 点 回 遍 套 台"
).split()

# Canonical unit -> the ways it is written (lower case; Chinese as is).
_UNIT_FORMS = {
    "KB": ["kb", "kib", "kilobyte", "kilobytes"],
    "MB": ["mb", "mib", "megabyte", "megabytes"],
    "GB": ["gb", "gib", "gigabyte", "gigabytes"],
    "TB": ["tb", "tib", "terabyte", "terabytes"],
    "byte": ["byte", "bytes"],
    "ms": ["ms", "millisecond", "milliseconds", "毫秒"],
    "s": ["sec", "secs", "second", "seconds", "秒钟", "秒"],
    "min": ["min", "mins", "minute", "minutes", "分钟"],
    "h": ["h", "hr", "hrs", "hour", "hours", "个小时", "小时", "钟头"],
    "day": ["day", "days", "天"],
    "week": ["week", "weeks", "个星期", "星期", "周"],
    "month": ["month", "months", "个月"],
    "year": ["year", "years", "yr", "yrs"],
    "decade": ["decade", "decades"],
    "century": ["century", "centuries", "世纪"],
    "mm": ["mm", "millimetre", "millimetres", "millimeter", "millimeters", "毫米"],
    "cm": ["cm", "centimetre", "centimetres", "centimeter", "centimeters", "厘米"],
    "km2": ["km2", "sq km", "square kilometres", "square kilometers", "平方公里", "平方千米"],
    "m2": ["m2", "sq m", "square metres", "square meters", "平方米"],
    "mi2": ["sq mi", "square miles", "square mile"],
    "km": ["km", "kilometre", "kilometres", "kilometer", "kilometers", "公里", "千米"],
    "m": ["m", "metre", "metres", "meter", "meters", "米"],
    "mi": ["mi", "mile", "miles", "英里"],
    "ft": ["ft", "foot", "feet", "英尺"],
    "yd": ["yd", "yds", "yard", "yards"],
    "inch": ["inch", "inches", "英寸"],
    "ha": ["ha", "hectare", "hectares", "公顷"],
    "acre": ["acre", "acres", "英亩"],
    "kg": ["kg", "kilogram", "kilograms", "kilo", "kilos", "公斤", "千克"],
    "g": ["g", "gram", "grams", "克"],
    "t": ["tonne", "tonnes", "ton", "tons", "吨"],
    "lb": ["lb", "lbs"],
    "°C": ["°c", "degrees celsius", "degree celsius", "摄氏度"],
    "°F": ["°f", "degrees fahrenheit", "degree fahrenheit"],
    "km/h": ["km/h", "kph", "kilometres per hour", "kilometers per hour"],
    "mph": ["mph", "miles per hour"],
    "kW": ["kw", "kilowatt", "kilowatts", "千瓦"],
    "MW": ["mw", "megawatt", "megawatts", "兆瓦"],
    "GW": ["gw", "gigawatt", "gigawatts"],
    "kWh": ["kwh", "kilowatt-hour", "kilowatt-hours", "kilowatt hours"],
    "Hz": ["hz", "hertz"],
    "MHz": ["mhz", "megahertz"],
    "GHz": ["ghz", "gigahertz"],
    "am": ["am", "a.m."],
    "pm": ["pm", "p.m."],
}
_UNIT_OF = {form: unit for unit, forms in _UNIT_FORMS.items() for form in forms}

_CURRENCY_PREFIX = {
    "us$": "USD", "$": "USD", "hk$": "HKD", "a$": "AUD", "c$": "CAD", "€": "EUR", "£": "GBP", "¥": "CNY",
    "usd": "USD", "eur": "EUR", "gbp": "GBP", "rmb": "CNY", "cny": "CNY", "jpy": "JPY",
}  # fmt: skip
_CURRENCY_SUFFIX = {
    "us dollars": "USD", "dollars": "USD", "dollar": "USD", "euros": "EUR", "euro": "EUR", "pounds sterling": "GBP",
    "pounds": "GBP", "pound": "GBP", "yen": "JPY", "yuan": "CNY", "renminbi": "CNY", "rupees": "INR", "usd": "USD",
    "eur": "EUR", "gbp": "GBP", "cny": "CNY", "rmb": "CNY", "jpy": "JPY", "美元": "USD", "欧元": "EUR", "英镑": "GBP",
    "日元": "JPY", "港元": "HKD", "港币": "HKD", "人民币": "CNY", "元": "CNY", "块钱": "CNY", "块": "CNY",
}  # fmt: skip

_MONTHS = {
    "january": 1, "february": 2, "march": 3, "april": 4, "may": 5, "june": 6, "july": 7, "august": 8,
    "september": 9, "october": 10, "november": 11, "december": 12,
}  # fmt: skip
_MONTH_ABBR = {"jan": 1, "feb": 2, "mar": 3, "apr": 4, "jun": 6, "jul": 7, "aug": 8, "sep": 9, "sept": 9, "oct": 10,
               "nov": 11, "dec": 12}  # fmt: skip

# First words of a sentence that are never part of a name after it ("In Warsaw", "The Summer Theatre").
_OPENERS = frozenset(
    """a an the in on at for from by with after before during since until this that these those it its he she they
    we you his her their our there here when while although though however as if but and or so then also both each
    every all some many most much today yesterday according despite unlike like following between under over about
    around to of into onto within without near nearby across along among through throughout against beyond
    meanwhile moreover furthermore nevertheless thus hence therefore yes no not only even later earlier once
    what which who whom whose where why how is are was were be has have had do does did can could will would may
    might must shall should its one two three several other another such such no none neither either my your
    i""".split()
)
_CONNECTORS = frozenset("of de da del della der den van von la le du di al el bin ibn y dos das do".split())
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st prof gen col lt sgt capt cpt jr sr mt ft no vs etc inc ltd co corp dept univ fig approx est "
    "rev hon gov sen rep pres u.s e.g i.e a.m p.m ca c".split()
)
# jieba's part-of-speech tags of proper nouns: people (nr, nrfg; nrt transliterated), places (ns), organisations (nt).
_HAN_NAME_TAGS = frozenset({"nr", "nrt", "nrfg", "ns", "nt"})
_LATIN = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u0370-\u03ff\u0400-\u04ff\u1e00-\u1eff"

# ---------------------------------------------------------------------------------------------------------------
# Patterns

_ARABIC = (
    r"(?<![A-Za-z0-9_.])(?:\d{1,3}(?:,\d{3})+(?![\d])|\d{1,3}(?:[ \u00a0\u202f]\d{3})+(?![\d,.])|\d+)(?:\.\d+)?"
    r"(?![.,]?\d)"
)
_WORDNUM_WORD = "|".join(sorted([*_WORD_UNITS, *_WORD_TENS], key=len, reverse=True))
_WORDNUM = (
    rf"\b(?:{_WORDNUM_WORD})(?:(?:\s+|-)(?:and\s+)?(?:{_WORDNUM_WORD}|{'|'.join(_WORD_SCALES)}))*\b"
    rf"|\b(?:{'|'.join(sorted(_WORD_ORDINALS, key=len, reverse=True))})\b"
)
_CHN = rf"[{_CN_NUMERAL}]+"
_SCALE = r"\s*(?:thousand|million|billion|trillion)\b|\s?(?:bn|mn)\b|k\b|[万亿](?!分)|千(?![米克瓦])|百(?![分万])"
# A number as written: digits (with a scale word or 万), words, or Chinese numerals; group "n".
_NUMBER = rf"(?P<n>(?:{_ARABIC})(?:{_SCALE})?|(?i:{_WORDNUM})|{_CHN})"


def _alternation(forms: Iterable[str]) -> str:
    return "|".join(re.escape(f).replace(r"\ ", r"\s+") for f in sorted(forms, key=len, reverse=True))


_LATIN_UNIT_FORMS = [f for f in _UNIT_OF if not HAN.search(f)]
_CJK_UNIT_FORMS = [f for f in _UNIT_OF if HAN.search(f)]
_UNIT_RE = re.compile(
    rf"{_NUMBER}(?:st|nd|rd|th)?(?:[ \t\u00a0]?-?[ \t\u00a0]?(?P<u>(?i:{_alternation(_LATIN_UNIT_FORMS)}))"
    rf"(?![A-Za-z0-9])|\s*(?P<cu>{_alternation(_CJK_UNIT_FORMS)}))"
)
_PERCENT_RE = re.compile(
    rf"{_NUMBER}\s*(?:%|(?i:per\s*cent\b|percent\b|pct\b|percentage\s+points?\b)|个百分点)"
    rf"|百分之(?P<zn>(?:{_ARABIC})|[{_CN_NUMERAL}点]+)"
)
_CURRENCY_BEFORE = _alternation([k for k in _CURRENCY_PREFIX if not k.isalpha()])
_CURRENCY_CODES = _alternation([k for k in _CURRENCY_PREFIX if k.isalpha()])
_AMOUNT_RE = re.compile(
    rf"(?P<cp>(?i:{_CURRENCY_BEFORE})|(?i:\b(?:{_CURRENCY_CODES})\b))\s?(?P<pn>{_ARABIC})"
    rf"(?P<ps>{_SCALE}|(?i:m|b)\b)?"
    rf"|{_NUMBER}\s*(?P<cs>(?i:{_alternation([k for k in _CURRENCY_SUFFIX if not HAN.search(k)])})\b"
    rf"|{_alternation([k for k in _CURRENCY_SUFFIX if HAN.search(k)])})"
)
_PLAIN_RE = re.compile(rf"{_NUMBER}(?P<suffix>st\b|nd\b|rd\b|th\b|'?s\b)?")

_MONTH_NAME = (
    r"(?P<mon>(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sept?(?:ember)?"
    r"|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?)"
)
_DAY = r"(?P<d>[0-3]?\d)(?:st|nd|rd|th)?"
_YEAR = r"(?P<y>\d{3,4})(?![\d])"
_CN_SMALL = "一二三四五六七八九十"
_DATE_RES = [
    # 2024-03-01, 2024/3/1, 2024.03.01
    re.compile(r"(?<![\d.])(?P<y>\d{4})(?P<sep>[-/.])(?P<m>[01]?\d)(?P=sep)(?P<d>[0-3]?\d)(?![\d])"),
    # 2024年3月1日, 3月1日, 二〇二四年三月, 三月一日
    re.compile(
        rf"(?<![\d{_CN_NUMERAL}])(?:(?P<y>\d{{2,4}}|[〇零一二三四五六七八九]{{2,4}})\s*年\s*)?(?P<m>1[0-2]|0?[1-9]|十[一二]?|[{_CN_SMALL}])\s*月"
        rf"(?:\s*(?P<d>[0-3]?\d|[二三]?十[{_CN_SMALL}]?|[{_CN_SMALL}])\s*[日号])?"
    ),
    # 1 March 2024, 1st of March, 2024
    re.compile(rf"\b{_DAY}\s+(?:of\s+)?{_MONTH_NAME},?\s+{_YEAR}"),
    # March 1, 2024; March 1st 2024
    re.compile(rf"\b{_MONTH_NAME}\s+{_DAY},?\s+{_YEAR}"),
    # March 2024, March of 2024
    re.compile(rf"\b{_MONTH_NAME},?\s+(?:of\s+)?{_YEAR}"),
    # 1 March, 1st of March
    re.compile(rf"\b{_DAY}\s+(?:of\s+)?{_MONTH_NAME}(?![A-Za-z])"),
    # March 1, March 1st (not "March 12,000")
    re.compile(rf"\b{_MONTH_NAME}\s+{_DAY}\b(?![,.]?\d)"),
]
_MONTH_ALONE = re.compile(r"\b(?P<mon>January|February|March|April|May|June|July|August|September|October|November"
                          r"|December)\b")  # fmt: skip

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_URL = re.compile(r"\bhttps?://[^\s<>\"'\]】）)]+[^\s<>\"'\]】）).,;:!?。，]")
_CODE_RES = [
    re.compile(r"(?<![\w.])[A-Za-z_][A-Za-z0-9]*_[A-Za-z0-9_]*[A-Za-z0-9](?![\w])"),  # KB_INGEST__MAX_UPLOAD_BYTES
    re.compile(r"(?<![\w.])(?:v\d+(?:\.\d+)*|\d+(?:\.\d+){2,})(?![\w.]?\d)", re.IGNORECASE),  # v2, v2.3.1, 10.0.0.1
    re.compile(r"(?<![\w.])[\w]+\.(?:py|js|ts|json|ya?ml|toml|ini|cfg|conf|txt|md|csv|pdf|docx?|xlsx?|sh|html?)\b"),
    re.compile(r"(?<![\w.])(?:/[A-Za-z_][\w.\-]*){2,}"),  # /etc/kb/kb.toml
    re.compile(r"(?<![A-Za-z0-9_\-])[A-Za-z0-9]+(?:[-/][A-Za-z0-9]+)*(?![A-Za-z0-9_])"),  # SKU-42, ISO-9001, A380
]
_NUMBER_LIKE = re.compile(
    rf"^(?:\d+(?:\.\d+)?(?:st|nd|rd|th|s|{_alternation(_LATIN_UNIT_FORMS)}|k|bn|mn|m|b)?|[a-z]+)$", re.IGNORECASE
)
_NAME_TOKEN = re.compile(rf"[{_LATIN}](?:[{_LATIN}0-9'’\-]*[{_LATIN}0-9])?")
_PIECE_END = re.compile(r"[.!?]+[\"'”’)\]]*\s+(?=[^a-z\s])|[。！？]+[”」』）)]*|\n+")


# ---------------------------------------------------------------------------------------------------------------
# Normal forms


def _prepare(text: str) -> str:
    """NFKC: full-width digits and letters to ASCII (１００ -> 100, ％ -> %), ligatures and superscripts undone."""
    return unicodedata.normalize("NFKC", text)


def _plain_word(word: str) -> str:
    """A word as names are compared: case and accents off, a possessive off (Schiller's -> schiller)."""
    word = unicodedata.normalize("NFKD", word.casefold())
    word = "".join(c for c in word if not unicodedata.combining(c))
    word = word.replace("’", "'")
    if word.endswith("'s"):
        word = word[:-2]
    return word.rstrip("'")


def _format(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _chinese_value(run: str) -> Decimal | None:
    if all(c in _CN_DIGITS for c in run):  # 二〇二四 is written digit by digit
        return Decimal("".join(str(_CN_DIGITS[c]) for c in run))
    total, section, number = 0, 0, 0
    for c in run:
        if c in _CN_DIGITS:
            number = _CN_DIGITS[c]
        elif c in _CN_UNITS:
            section += (number or (1 if c == "十" else 0) or 1) * _CN_UNITS[c]
            number = 0
        elif c in _CN_BIG:
            section += number
            total += (section or 1) * _CN_BIG[c]
            section, number = 0, 0
        else:
            return None
    return Decimal(total + section + number)


def _words_value(text: str) -> Decimal | None:
    words = [w for w in re.split(r"[\s-]+", text.lower()) if w and w != "and"]
    if len(words) == 1 and words[0] in _WORD_ORDINALS:
        return Decimal(_WORD_ORDINALS[words[0]])
    total, current = 0, 0
    for word in words:
        if word in _WORD_UNITS:
            current += _WORD_UNITS[word]
        elif word in _WORD_TENS:
            current += _WORD_TENS[word]
        elif word == "hundred":
            current = (current or 1) * 100
        elif word in _WORD_SCALES:
            total += (current or 1) * _WORD_SCALES[word]
            current = 0
        else:
            return None
    return Decimal(total + current)


def _scale_value(scale: str | None) -> int:
    scale = (scale or "").strip().lower()
    return {
        "": 1, "thousand": 10**3, "k": 10**3, "million": 10**6, "mn": 10**6, "m": 10**6, "billion": 10**9,
        "bn": 10**9, "b": 10**9, "trillion": 10**12, "万": 10**4, "亿": 10**8, "千": 10**3, "百": 100,
    }.get(scale, 1)  # fmt: skip


_ARABIC_AT_START = re.compile(_ARABIC)


def _number_value(written: str) -> Decimal | None:
    """The value of a _NUMBER match: digits with their scale, number words, or Chinese numerals."""
    written = written.strip()
    arabic = _ARABIC_AT_START.match(written)
    if arabic:
        digits = re.sub(r"[,\s\u00a0\u202f]", "", arabic.group(0))
        try:
            return Decimal(digits) * _scale_value(written[arabic.end() :])
        except InvalidOperation:
            return None
    if re.match(r"[A-Za-z]", written):
        return _words_value(written)
    whole, _, fraction = written.partition("点")  # 三点五 = 3.5
    value = _chinese_value(whole)
    if value is None or not fraction:
        return value
    digits = "".join(str(_CN_DIGITS.get(c, "")) for c in fraction)
    return value + Decimal(f"0.{digits}") if len(digits) == len(fraction) else value


def _small_value(text: str | None) -> int | None:
    if not text:
        return None
    if text.isdigit():
        return int(text)
    value = _chinese_value(text)
    return int(value) if value is not None else None


def _date_key(y: int | None, m: int | None, d: int | None) -> str:
    return "-".join(["" if y is None else f"{y:04d}", "" if m is None else f"{m:02d}"] + ([] if d is None else
                                                                                          [f"{d:02d}"]))  # fmt: skip


def _code_key(token: str) -> str:
    key = re.sub(r"[\s_\-/]", "", token.casefold())
    return key[1:] if re.match(r"v\d", key) else key


# ---------------------------------------------------------------------------------------------------------------
# Reading facts


class _Scan:
    """One pass over a text: each finder takes what it recognises and blanks it, so a later one cannot read a
    date's day as a plain number or an amount's digits as a code."""

    def __init__(self, text: str, generous: bool) -> None:
        self.text = _prepare(MARKER.sub(" ", text))
        self.free = list(self.text)
        self.generous = generous
        self.facts: list[_Fact] = []
        self.plain_values: list[Decimal] = []  # numbers with no unit, currency or percent: a table cell's value

    def view(self) -> str:
        return "".join(self.free)

    def take(self, start: int, end: int) -> None:
        for i in range(start, end):
            self.free[i] = "\x00"

    def add(self, start: int, end: int, shown: int | None = None, **fact: object) -> None:
        """`shown`: where the fact as written ends, if past what is taken (第四次 for the 四 of it)."""
        text = self.text[start : max(end, shown or 0)].strip()
        self.facts.append(_Fact(text=text, **fact))  # type: ignore[arg-type]
        self.take(start, end)

    def at_sentence_start(self, pos: int) -> bool:
        i = pos - 1
        while i >= 0 and self.text[i] in " \t\u00a0\"“”‘'«»([{*•–—-":
            i -= 1
        if i < 0:
            return True
        c = self.text[i]
        if c == ".":
            before = re.search(r"([A-Za-z.]+)\.$", self.text[max(0, i - 12) : i + 1])
            return not (before and before.group(1).lower() in _ABBREVIATIONS)
        return c in "!?:;\n。！？；："

    def run(self) -> _Scan:
        for finder in (self.emails, self.iso_dates, self.codes, self.dates, self.percents, self.amounts,
                       self.quantities, self.numbers):  # fmt: skip
            finder()
        self.words_view = self.view()  # what names are read from
        self.names()
        return self

    def emails(self) -> None:
        for m in _EMAIL.finditer(self.view()):
            self.add(m.start(), m.end(), kind="email", key=m.group(0).lower())
        for m in _URL.finditer(self.view()):
            self.add(m.start(), m.end(), kind="code", key=m.group(0).lower().rstrip("/"))

    def iso_dates(self) -> None:
        self._dates(_DATE_RES[:1])

    def dates(self) -> None:
        self._dates(_DATE_RES[1:])
        for m in _MONTH_ALONE.finditer(self.view()):
            if self.generous or not self.at_sentence_start(m.start()):
                self._date(m, None, _MONTHS[m.group("mon").lower()], None)

    def _dates(self, patterns: Sequence[re.Pattern[str]]) -> None:
        for pattern in patterns:
            for m in pattern.finditer(self.view()):
                groups = m.groupdict()
                if groups.get("mon"):
                    name = groups["mon"].rstrip(".").lower()
                    month = _MONTHS.get(name) or _MONTH_ABBR.get(name[:4]) or _MONTH_ABBR.get(name[:3])
                else:
                    month = _small_value(groups.get("m"))
                year, day = _small_value(groups.get("y")), _small_value(groups.get("d"))
                if month is None or not 1 <= month <= 12 or (day is not None and not 1 <= day <= 31):
                    continue
                self._date(m, year, month, day)

    def _date(self, m: re.Match[str], y: int | None, mo: int | None, d: int | None) -> None:
        self.add(m.start(), m.end(), kind="date", key=_date_key(y, mo, d), date=(y, mo, d))

    def codes(self) -> None:
        for i, pattern in enumerate(_CODE_RES):
            for m in pattern.finditer(self.view()):
                token = m.group(0)
                if i == len(_CODE_RES) - 1 and not _is_code(token):
                    continue
                self.add(m.start(), m.end(), kind="code", key=_code_key(token))

    def percents(self) -> None:
        for m in _PERCENT_RE.finditer(self.view()):
            written = m.group("n") or m.group("zn")
            value = _number_value(written) if written else None
            if value is not None:
                self.add(m.start(), m.end(), kind="percent", key=f"{_format(value)}%", value=value)

    def amounts(self) -> None:
        for m in _AMOUNT_RE.finditer(self.view()):
            if m.group("cp"):
                currency = _CURRENCY_PREFIX[m.group("cp").lower()]
                value = _number_value(m.group("pn") + (m.group("ps") or ""))
                if value is not None and m.group("ps") and m.group("ps").lower() in ("m", "b"):
                    value = _number_value(m.group("pn")) * _scale_value(m.group("ps"))  # type: ignore[operator]
            else:
                currency = _CURRENCY_SUFFIX[re.sub(r"\s+", " ", m.group("cs").lower())]
                value = _number_value(m.group("n"))
            if value is not None:
                self.add(m.start(), m.end(), kind="amount", key=f"{_format(value)} {currency}", value=value,
                         unit=currency)  # fmt: skip

    def quantities(self) -> None:
        for m in _UNIT_RE.finditer(self.view()):
            value = _number_value(m.group("n"))
            written = re.sub(r"\s+", " ", (m.group("u") or m.group("cu")).lower())
            unit = _UNIT_OF.get(written)
            if value is None or unit is None:
                continue
            self.add(m.start(), m.end(), kind="quantity", key=f"{_format(value)} {unit}", value=value, unit=unit)

    def numbers(self) -> None:
        view = self.view()
        for m in _PLAIN_RE.finditer(view):
            written = m.group("n")
            value = _number_value(written)
            if value is None:
                continue
            # In Chinese a number counts with a measure word (三个, 4所, 第二次): the pair is the fact, as a unit is.
            after = view[m.end() : m.end() + 3].lstrip(" ")
            counts = next((c for c in _CN_CLASSIFIERS if after.startswith(c)), None) if not m.group("suffix") else None
            claims = self._claims_number(view, m, written, value)
            if counts is None and claims:  # not a numeral inside a word (四川, 统一)
                self.plain_values.append(value)
            if not self.generous and not claims:
                self.take(m.start(), m.end())
                continue
            key = _format(value) + (counts or "")
            shown = view.index(counts, m.end()) + len(counts) if counts else None
            start = m.start() - 1 if view[max(0, m.start() - 1) : m.start()] == "第" else m.start()
            self.add(start, m.end(), shown, kind="number", key=key, value=value, unit=counts)

    def _claims_number(self, view: str, m: re.Match[str], written: str, value: Decimal) -> bool:
        if written.lower() in _WORDS_IN_PASSING:
            return False
        if not re.match(rf"[{_CN_NUMERAL}]", written):
            return True
        # A Chinese numeral states a number where it counts something, is an ordinal, or is one like 十二 or 三百;
        # elsewhere it is part of a word (三国, 一些, 统一).
        if value == 1 or any(view.startswith(idiom, m.start()) for idiom in _CN_IDIOMS):
            return False
        after = view[m.end() : m.end() + 2]
        if any(after.startswith(c) for c in _CN_CLASSIFIERS):
            return True
        if view[max(0, m.start() - 1) : m.start()] == "第":
            return True
        return len(written) >= 2 and any(c in "十百千万亿" for c in written)

    def names(self) -> None:
        view = self.view()
        tokens = [(m.start(), m.end(), m.group(0)) for m in _NAME_TOKEN.finditer(view)]
        groups: list[list[tuple[int, int, str]]] = []
        i = 0
        while i < len(tokens):
            if not _capitalised(tokens[i][2]):
                i += 1
                continue
            group = [tokens[i]]
            j = i + 1
            while j < len(tokens):
                gap = view[group[-1][1] : tokens[j][0]]
                if not re.fullmatch(r"[ \u00a0]", gap):
                    break
                if _capitalised(tokens[j][2]):
                    group.append(tokens[j])
                    j += 1
                elif (
                    tokens[j][2] in _CONNECTORS
                    and j + 1 < len(tokens)
                    and _capitalised(tokens[j + 1][2])
                    and re.fullmatch(r"[ \u00a0]", view[tokens[j][1] : tokens[j + 1][0]])
                ):
                    group.extend(tokens[j : j + 2])
                    j += 2
                else:
                    break
            groups.append(group)
            i = j
        for group in groups:
            self._name(view, group)
        if not self.generous:  # a source is searched for the name as written
            self._han_names()

    def _han_names(self) -> None:
        """Chinese has no capitals: its proper nouns are the words jieba tags as names of people, places and
        organisations (2 characters or more; one alone is mostly a surname or an abbreviation)."""
        for run in HAN_RUN.finditer(self.view()):
            if len(run.group(0)) < 2:
                continue
            at = run.start()
            for word, tag in _tagger().cut(run.group(0)):
                if tag in _HAN_NAME_TAGS and len(word) >= 2:
                    self.add(at, at + len(word), kind="han_name", key=word)
                at += len(word)

    def _name(self, view: str, group: list[tuple[int, int, str]]) -> None:
        words = [w for _, _, w in group]
        if all(w.casefold() in _MONTHS or w.casefold() in _MONTH_ABBR for w in words):
            return
        alt: tuple[str, ...] = ()
        if self.at_sentence_start(group[0][0]) and not self._among_han(view, group):
            dropped = 0
            while dropped < len(group) and (words[dropped].casefold() in _OPENERS or words[dropped] in _CONNECTORS):
                dropped += 1
            group, words = group[dropped:], words[dropped:]
            while words and words[0] in _CONNECTORS:
                group, words = group[1:], words[1:]
            if not group:
                return
            if not dropped:
                if len(words) == 1 and not _acronym(words[0]):
                    return  # a capitalised first word: maybe a name, maybe any word
                if len(words) > 1:
                    alt = tuple(_plain_word(w) for w in words[1:] if w not in _CONNECTORS)
        plain = tuple(_plain_word(w) for w in words)
        if plain == ("i",):
            return
        self.add(group[0][0], group[-1][1], kind="name", key=" ".join(plain), words=plain, alt=alt)

    @staticmethod
    def _among_han(view: str, group: list[tuple[int, int, str]]) -> bool:
        """Chinese does not capitalise: a Latin word opening a Chinese sentence or clause (学名：Neosebastes) is a
        name."""
        after = view[group[-1][1] :].lstrip()
        before = view[: group[0][0]].rstrip(" \t\u00a0\"“”‘'«»([{:：,，、;；。！？!?")
        return bool(after and HAN.match(after[0])) or bool(before and HAN.match(before[-1]))


_tagger_lock = threading.Lock()
_tagger_instance = None


def _tagger():  # type: ignore[no-untyped-def]
    # jieba's tagger loads its dictionary (~1 s) once per process, on the first Chinese sentence checked.
    global _tagger_instance
    with _tagger_lock:
        if _tagger_instance is None:
            import logging

            import jieba
            import jieba.posseg

            jieba.setLogLevel(logging.WARNING)
            tokenizer = jieba.Tokenizer()
            tokenizer.initialize()
            _tagger_instance = jieba.posseg.POSTokenizer(tokenizer)
    return _tagger_instance


def _capitalised(word: str) -> bool:
    """Proper: "Warsaw", and the name in "non-Hispanic", "al-Qasim"."""
    return word != "I" and any(part[:1].isupper() for part in word.split("-"))


def _acronym(word: str) -> bool:
    letters = [c for c in word if c.isalpha()]
    return len(letters) >= 2 and all(c.isupper() for c in letters)


def _is_code(token: str) -> bool:
    """SKU-42, ISO-9001, COVID-19, A380, x86: letters and digits in one token, but not 100MB, 1930s, 12-week."""
    has_letter = any(c.isalpha() for c in token)
    has_digit = any(c.isdigit() for c in token)
    if not (has_letter and has_digit):
        return False
    parts = re.split(r"[-/]", token)
    # A letters part written like an identifier (ISO, COVID, UDFy), not a word (mid-1930s, Type-2, 12-week).
    return not all(_NUMBER_LIKE.match(p) for p in parts) or any(
        p.isalpha() and sum(c.isupper() for c in p) >= min(2, len(p)) for p in parts
    )


def _scan(text: str, generous: bool) -> _Scan:
    return _Scan(text, generous).run()


def facts(text: str) -> set[str]:
    """The normalised facts a text states: '1000', '3个' (a Chinese number and its measure word), '3%', '100 MB',
    '5000000 USD', '2024-03-01' ('-03-01' without a year, '-03' a month alone), 'a@b.org', 'iso9001',
    'leon schiller', '姚明'."""
    return {f.key for f in _scan(text, generous=False).facts}


# ---------------------------------------------------------------------------------------------------------------
# Evidence


class _Evidence:
    """What one source states, read generously, in the forms a sentence's facts are looked up in."""

    def __init__(self, text: str, whole: bool = True) -> None:
        scan = _scan(text, generous=True)
        self.text = scan.text
        self.lower = scan.text.casefold()
        self.numbers: set[Decimal] = set(scan.plain_values)
        self.plain: set[Decimal] = set(scan.plain_values)
        self.percents: set[Decimal] = set()
        self.measures: set[tuple[Decimal, str]] = set()  # quantities, amounts, numbers with a measure word
        self.dates: list[tuple[int | None, int | None, int | None]] = []
        self.codes: set[str] = set()
        for fact in scan.facts:
            if fact.value is not None:
                self.numbers.add(fact.value)
            if fact.kind == "percent":
                self.percents.add(fact.value)  # type: ignore[arg-type]
            elif fact.kind in ("quantity", "amount") or (fact.kind == "number" and fact.unit):
                self.measures.add((fact.value, fact.unit))  # type: ignore[arg-type]
            elif fact.kind == "date":
                self.dates.append(fact.date)  # type: ignore[arg-type]
                self.numbers.update(Decimal(v) for v in fact.date if v is not None)  # type: ignore[union-attr]
            elif fact.kind == "code":
                self.codes.add(fact.key)
        tokens = [t.strip(",;:()[]{}\"'“”‘’<>「」《》") for t in self.text.split()]
        tokens = [t for t in tokens if t]
        self.codes.update(_code_key(t) for t in tokens)
        self.codes.update(_code_key(a + b) for a, b in zip(tokens, tokens[1:]))
        self.sentences: list[list[str]] = []
        # Names are read where the scan left words, as in a sentence (UDFy in UDFy-38135539, a code's letters).
        for sentence in re.split(r"(?<=[.!?。！？;；])\s*|\n", scan.words_view):
            words = [_plain_word(w) for w in _NAME_TOKEN.findall(sentence)]
            if words:
                self.sentences.append(words)
        self.words = [w for s in self.sentences for w in s]
        # The source's sentences, each read alone, and the terms of the stretch around each: where a fact stands.
        self.pieces: list[_Evidence] = []
        self.stretch_terms: list[set[str]] = []
        if whole:
            texts = _pieces(self.text)
            self.pieces = [_Evidence(t, whole=False) for t in texts]
            terms = [content_terms(t) for t in texts]
            self.stretch_terms = [set().union(*terms[max(0, i - LOCAL_REACH) : i + LOCAL_REACH + 1])
                                  for i in range(len(terms))]  # fmt: skip

    def local(self, fact: _Fact, terms: set[str]) -> bool:
        """Whether the fact stands in a stretch of the source about the sentence (`terms`: the sentence's terms
        other than the fact's own), not only somewhere in it."""
        if not terms or len(self.pieces) < 2:
            return True
        shares = [len(terms & stretch) / len(terms) for stretch in self.stretch_terms]
        where = [i for i, piece in enumerate(self.pieces) if piece.states(fact)]
        if not where or max(shares) == 0:
            return True  # the fact spans sentences, or the sentence shares no term: overlap decides
        return max(shares[i] for i in where) >= LOCAL_SHARE * max(shares)

    def states(self, fact: _Fact) -> bool:
        if fact.kind == "number" and fact.unit:
            # 四次 is not supported by 第二次 and 四川; it is by 四次, by 四个 (the general measure word), or by a 4
            # that counts nothing (a table's cell).
            return (
                (fact.value, fact.unit) in self.measures
                or (fact.value, "个") in self.measures
                or (fact.unit == "个" and fact.value in self.numbers)
                or fact.value in self.plain
            )
        if fact.kind == "number":
            return fact.value in self.numbers
        if fact.kind == "percent":
            return fact.value in self.percents or (fact.value in self.plain and self._mentions("%", "percent", "百分"))
        if fact.kind in ("quantity", "amount"):
            if (fact.value, fact.unit) in self.measures:
                return True
            forms = _UNIT_FORMS.get(fact.unit or "") or [k for k, v in {**_CURRENCY_PREFIX, **_CURRENCY_SUFFIX}.items()
                                                          if v == fact.unit]  # fmt: skip
            return fact.value in self.plain and self._mentions(*forms)
        if fact.kind == "date":
            return self._has_date(fact.date)  # type: ignore[arg-type]
        if fact.kind == "email":
            return fact.key in self.lower
        if fact.kind == "code":
            return fact.key in self.codes or (len(fact.key) > 6 and fact.key in self.lower)
        if fact.kind == "name":
            return self._has_name(fact.words) or (bool(fact.alt) and self._has_name(fact.alt))
        if fact.kind == "han_name":
            return fact.key in self.text
        return False

    def _mentions(self, *forms: str) -> bool:
        for form in forms:
            if HAN.search(form) or not form.isalnum():
                if form in self.lower:
                    return True
            elif re.search(rf"(?<![a-z]){re.escape(form)}(?![a-z])", self.lower):
                return True
        return False

    def _has_date(self, date: tuple[int | None, int | None, int | None]) -> bool:
        y, m, d = date

        def matches(have: tuple[int | None, int | None, int | None], ignore_year: bool) -> bool:
            return all(want is None or (ignore_year and i == 0) or have[i] == want for i, want in enumerate((y, m, d)))

        if any(matches(have, False) for have in self.dates):
            return True
        # The year said apart from the day ("On 1 March the board ... in 2024").
        return y is not None and Decimal(y) in self.numbers and any(matches(have, True) for have in self.dates)

    def _has_name(self, words: tuple[str, ...]) -> bool:
        if not words:
            return False
        n = len(words)
        if any(tuple(self.words[i : i + n]) == words for i in range(len(self.words) - n + 1)):
            return True
        # The same name in another order or inflection ("University of Warsaw" for "Warsaw University", "German"
        # for "Germany"): each of its words in one sentence of the source.
        wanted = [w for w in words if w not in _CONNECTORS]
        return any(all(any(_same_word(w, have) for have in sentence) for w in wanted) for sentence in self.sentences)


def _same_word(a: str, b: str) -> bool:
    if a == b:
        return True
    short, long = sorted((a, b), key=len)
    return len(short) >= 5 and long.startswith(short) and len(long) - len(short) <= 3


def _pieces(text: str) -> list[str]:
    """A source's sentences; not cut after an initial (Malcolm K. Hughes), an abbreviation or an ellipsis."""
    out, start = [], 0
    for m in _PIECE_END.finditer(text):
        if m.group(0)[0] == ".":
            word = re.search(r"(\S+)$", text[start : m.start()])
            last = word.group(1) if word else ""
            letters = last.strip("\"'“‘(").rstrip(".")
            if len(letters) < 2 or letters.lower() in _ABBREVIATIONS or last.endswith("."):
                continue
        if text[start : m.end()].strip():
            out.append(text[start : m.end()])
        start = m.end()
    if text[start:].strip():
        out.append(text[start:])
    return out


@lru_cache(maxsize=512)
def _evidence(text: str) -> _Evidence:
    return _Evidence(text)


# ---------------------------------------------------------------------------------------------------------------
# The check


def check_claim(sentence: str, cited_texts: Sequence[str]) -> tuple[bool, list[str]]:
    """Whether the cited sources support the sentence, and the facts of it (as written) that none of them states.

    Supported: its content terms mostly occur in the sources (MIN_SUPPORT_MARKED), and each fact occurs in one.
    A sentence that states nothing (no content term, no fact) is supported by anything; one that states something
    and cites nothing is not.
    """
    plain = MARKER.sub(" ", sentence)
    claimed = _scan(plain, generous=False).facts
    terms = content_terms(plain)
    if not cited_texts:
        return not claimed and not terms, _unique(f.text for f in claimed)
    evidence = [_evidence(text) for text in cited_texts]
    missing = _unique(f.text for f in claimed if not _stated(f, terms, evidence))
    overlap = True
    if terms:
        known = set().union(*(content_terms(text) for text in cited_texts))
        overlap = len(terms & known) / len(terms) >= MIN_SUPPORT_MARKED
    return overlap and not missing, missing


def _stated(fact: _Fact, terms: set[str], evidence: Sequence[_Evidence]) -> bool:
    context = terms - content_terms(fact.text)
    return any(e.states(fact) and e.local(fact, context) for e in evidence)


# The facts of a question its answer must be about: "How many ... by 1991?" is not answered by a passage that gives
# another year's figure. Names are left out: a question's names are often paraphrased ("the SP" for "the Scottish
# Parliament"), its numbers and dates rarely.
_QUESTION_FACT_KINDS = frozenset({"number", "percent", "quantity", "amount", "date"})


def unstated_facts(question: str, texts: Sequence[str]) -> list[str]:
    """The numbers, amounts and dates of a question (as written there) that none of `texts` states."""
    # Written in digits only: a number word in a question more often counts what the answer lists ("Which two
    # rivers…", "哪两件事…", "哪一天") than names a figure the passage must state.
    asked = [f for f in _scan(MARKER.sub(" ", question), generous=False).facts
             if f.kind in _QUESTION_FACT_KINDS and any(c.isdigit() for c in f.text)]  # fmt: skip
    if not asked:
        return []
    evidence = [_evidence(text) for text in texts]
    return _unique(f.text for f in asked if not any(e.states(f) for e in evidence))


def makes_claim(sentence: str) -> bool:
    """Whether a sentence states anything to check: a content term or a fact ("Yes." and "See [2]." do not)."""
    plain = MARKER.sub(" ", sentence)
    return bool(content_terms(plain)) or bool(_scan(plain, generous=False).facts)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
