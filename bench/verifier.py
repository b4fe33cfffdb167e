"""The citation verifier (service/ask/verify.py) on labelled sentences: does it pass true sentences and flag invented
facts?

python -m bench.verifier [--set xquad-en|cmrc] [--n 300] [--seed 0 1]

From a SQuAD-format set (XQuAD English, CMRC 2018), the sentence of each gold paragraph that holds a gold answer
span is a true answer sentence; checked against its paragraph it must pass. The same sentence with ONE number, date
or name changed (another number, a shifted date, a name swapped for another name of the same set: capitalised
words, and in Chinese the words jieba tags as people, places or organisations) is an altered sentence; checked
against the same paragraph it must be flagged. A third kind, the true sentence with one number or date written
another way (1870 -> 1,870, 12 -> twelve, 三个 -> 3个, 12 May 1940 -> May 12, 1940, full-width
digits), must pass too: it measures the normalisation, which verbatim sentences never exercise.

Flagging is the positive class: precision = altered flagged / all flagged (true and altered sentences), recall =
altered flagged / altered. Articles are split by the seed's parity, so seed 0 (development) and seed 1 (held out)
share no paragraph, and the alterations a seed draws come from its own half.

The alterations are found here with their own simple patterns, not with the verifier's (a measure must not share the
code it measures). Prints a table and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.machine import describe

SHARED = Path(__file__).resolve().parents[2] / "shared" / "eval"
SETS = {"xquad-en": SHARED / "xquad" / "xquad.en.json", "cmrc": SHARED / "cmrc2018" / "cmrc2018_dev.json"}
TARGET = 0.9


@dataclass(frozen=True)
class Item:
    paragraph: str
    sentence: str


@dataclass(frozen=True)
class Alteration:
    kind: str  # number, date, name
    start: int
    end: int
    replacement: str

    def apply(self, sentence: str) -> str:
        return sentence[: self.start] + self.replacement + sentence[self.end :]


# --- sentences -------------------------------------------------------------------------------------------------

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "prof", "gen", "col", "lt", "sgt", "jr", "sr", "mt", "no", "vs",
                  "etc", "inc", "ltd", "co", "u.s", "e.g", "i.e", "c", "ca", "approx", "fig", "jan", "feb", "aug",
                  "sept", "oct", "nov", "dec", "rev", "gov"}  # fmt: skip


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """English: after . ! ? and a space before a capital, digit or quote, unless the word is an abbreviation or an
    initial; Chinese: after 。！？ (and a closing quote)."""
    cuts = []
    for m in re.finditer(r"[.!?]+[\"'”’)\]]*\s+(?=[A-Z0-9\"“‘(])|[。！？]+[”」』）)]*", text):
        if m.group(0)[0] == ".":
            word = re.search(r"([A-Za-z.]+)$", text[: m.start()])
            if word and (word.group(1).lower().rstrip(".") in _ABBREVIATIONS or len(word.group(1)) == 1):
                continue
        cuts.append(m.end())
    spans, start = [], 0
    for cut in [*cuts, len(text)]:
        if text[start:cut].strip():
            left = len(text[start:cut]) - len(text[start:cut].lstrip())
            spans.append((start + left, start + len(text[start:cut].rstrip())))
        start = cut
    return spans


def load(set_name: str, seed: int) -> tuple[list[Item], list[str]]:
    """The answer sentences of the seed's half of the articles (in the seed's order), and the paragraphs of that
    half (where swapped-in names come from)."""
    data = json.loads(SETS[set_name].read_text(encoding="utf-8"))["data"]
    items: dict[tuple[int, int, int], Item] = {}
    paragraphs: list[str] = []
    for a, article in enumerate(data):
        if a % 2 != seed % 2:
            continue
        for p, paragraph in enumerate(article["paragraphs"]):
            context = paragraph["context"]
            paragraphs.append(context)
            spans = sentence_spans(context)
            for qa in paragraph["qas"]:
                for answer in qa["answers"][:1]:
                    at = answer["answer_start"]
                    for start, end in spans:
                        if start <= at < end:
                            items.setdefault((a, p, start), Item(context, context[start:end]))
    ordered = list(items.values())
    random.Random(seed).shuffle(ordered)
    return ordered, paragraphs


# --- alterations ----------------------------------------------------------------------------------------------

_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]  # fmt: skip
_WORDS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen",
          "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]  # fmt: skip
_DIGITS_RE = re.compile(r"(?<![\w.,\-])(?:\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?![\d,.]?\d)(?!\w*[_@])")
_WORD_RE = re.compile(rf"\b(?:{'|'.join(_WORDS)})\b", re.IGNORECASE)
_MONTH_RE = re.compile(rf"\b(?:{'|'.join(_MONTHS)})\b")
_CAPITAL_RE = re.compile(
    r"(?<![A-Za-z\u00c0-\u024f'\-])[A-Z][a-zA-Z\u00c0-\u024f'\-]*(?:\s+(?:of\s+|de\s+|von\s+)?[A-Z][a-zA-Z\u00c0-\u024f'\-]*)*"
)
_CN_DIGIT = "零一二三四五六七八九"
_CN_RUN_RE = re.compile(r"[一二三四五六七八九十两百千]+(?=[个年月日天人名位次届种部座家条项倍岁年代世纪米公里元万亿])")
_CN_DATE_RE = re.compile(r"(\d{1,2})(?=[月日])")


def _chinese(n: int) -> str:
    """2..999 in Chinese numerals."""
    hundreds, rest = divmod(n, 100)
    tens, ones = divmod(rest, 10)
    out = _CN_DIGIT[hundreds] + "百" if hundreds else ""
    if tens:
        out += ("" if tens == 1 and not hundreds else _CN_DIGIT[tens]) + "十"
    elif hundreds and ones:
        out += "零"
    return out + (_CN_DIGIT[ones] if ones else "")


def _chinese_value(run: str) -> int | None:
    if any(c in "百千" for c in run) and len(run) > 4:
        return None
    values = {c: i for i, c in enumerate(_CN_DIGIT)} | {"两": 2}
    total, number = 0, 0
    for c in run:
        if c in values:
            number = values[c]
        elif c in "十百千":
            total += (number or 1) * {"十": 10, "百": 100, "千": 1000}[c]
            number = 0
        else:
            return None
    return total + number


def _other_number(text: str, rng: random.Random) -> tuple[str, bool]:
    """A different number written the same way, and whether it is a year (so the change shifts a date)."""
    commas = "," in text
    digits = text.replace(",", "")
    if "." in digits:
        whole, fraction = digits.split(".")
        last = int(fraction[-1])
        return f"{whole}.{fraction[:-1]}{(last + rng.randint(1, 9)) % 10}", False
    value = int(digits)
    year = len(digits) == 4 and 1000 <= value <= 2100
    if year:
        new = value + rng.choice([-1, 1]) * rng.randint(1, 15)
    else:
        step = rng.randint(1, max(3, value // 4))
        new = value + step if value - step < 0 or rng.random() < 0.5 else value - step
    new = max(new, 0) if new != value else value + 1
    out = f"{new:,}" if commas else str(new)
    if len(digits) > 1 and digits.startswith("0"):
        out = out.zfill(len(digits))
    return out, year


def _sentence_start(sentence: str, at: int) -> bool:
    before = sentence[:at].rstrip(" \"'“‘(")
    return not before or before[-1] in ".!?:;"


def names_of(text: str) -> list[str]:
    """Capitalised word sequences that do not open a sentence, months left out."""
    found = []
    for m in _CAPITAL_RE.finditer(text):
        name = m.group(0).rstrip("'-")
        if _sentence_start(text, m.start()) or name in _MONTHS or name in ("I", "A"):
            continue
        found.append(name)
    return found


_HAN_TAGS = ("nr", "ns", "nt")  # people, places, organisations


def han_names_of(text: str) -> list[tuple[int, int, str, str]]:
    """Chinese proper nouns by jieba's tagger: (start, end, word, tag), 2 characters or more."""
    import logging

    import jieba
    import jieba.posseg

    jieba.setLogLevel(logging.WARNING)
    out, at = [], 0
    for word, tag in jieba.posseg.cut(text):
        if tag in _HAN_TAGS and len(word) >= 2 and _HAN.match(word):
            out.append((at, at + len(word), word, tag))
        at += len(word)
    return out


def alterations(
    sentence: str, names: dict[int, list[str]], han_names: dict[tuple[str, int], list[str]], rng: random.Random
) -> list[Alteration]:
    out: list[Alteration] = []
    for m in _DIGITS_RE.finditer(sentence):
        new, year = _other_number(m.group(0), rng)
        near_month = bool(_MONTH_RE.search(sentence[max(0, m.start() - 12) : m.end() + 12]))
        after = sentence[m.end() : m.end() + 1]
        kind = "date" if year or near_month or after in ("年", "月", "日") else "number"
        out.append(Alteration(kind, m.start(), m.end(), new))
    for m in _WORD_RE.finditer(sentence):
        choice = rng.choice([w for w in _WORDS if w != m.group(0).lower()])
        out.append(Alteration("number", m.start(), m.end(), choice.capitalize() if m.group(0)[0].isupper() else choice))
    for m in _CN_RUN_RE.finditer(sentence):
        value = _chinese_value(m.group(0))
        if value is None or value < 2 or value > 999 or m.group(0) in ("十分",):
            continue
        new = value
        while new == value:
            new = max(2, value + rng.choice([-1, 1]) * rng.randint(1, max(2, value // 3)))
        kind = "date" if sentence[m.end() : m.end() + 1] in ("年", "月", "日") else "number"
        out.append(Alteration(kind, m.start(), m.end(), _chinese(new)))
    for m in _MONTH_RE.finditer(sentence):
        if m.group(0) == "May" and _sentence_start(sentence, m.start()):
            continue
        index = _MONTHS.index(m.group(0))
        out.append(Alteration("date", m.start(), m.end(), _MONTHS[(index + rng.randint(1, 11)) % 12]))
    for m in _CAPITAL_RE.finditer(sentence):
        name = m.group(0).rstrip("'-")
        if _sentence_start(sentence, m.start()) or name in _MONTHS or name in ("I", "A"):
            continue
        pool = [n for n in names.get(len(name.split()), []) if n.casefold() not in sentence.casefold()]
        if pool:
            out.append(Alteration("name", m.start(), m.start() + len(name), rng.choice(pool)))
    if _HAN.search(sentence):
        for start, end, word, tag in han_names_of(sentence):
            pool = [n for n in han_names.get((tag, len(word)), []) if n not in sentence]
            if pool:
                out.append(Alteration("name-zh", start, end, rng.choice(pool)))
    # A value the sentence already states elsewhere ("10 to 12" -> "12 to 12") changes no fact it claims.
    return [a for a in out if not _states(sentence, a.replacement)]


def _states(sentence: str, value: str) -> bool:
    if _HAN.search(value):
        return value in sentence
    return re.search(rf"(?<![\w.,]){re.escape(value)}(?![\w]|[.,]\d)", sentence, re.IGNORECASE) is not None


def reformat(sentence: str, rng: random.Random) -> str | None:
    """The sentence with one number or date written another way (same value), or None if it has none."""
    options: list[Callable[[], str]] = []
    for m in _DIGITS_RE.finditer(sentence):
        text = m.group(0)
        digits = text.replace(",", "")
        if "," in text:
            options.append(lambda m=m, d=digits: sentence[: m.start()] + d + sentence[m.end() :])
        elif digits.isdigit() and int(digits) >= 10000:
            options.append(lambda m=m, d=digits: sentence[: m.start()] + f"{int(d):,}" + sentence[m.end() :])
        elif digits.isdigit() and 2 <= int(digits) <= 20 and not _HAN.search(sentence):
            word = _WORDS[int(digits) - 2]
            options.append(lambda m=m, w=word: sentence[: m.start()] + w + sentence[m.end() :])
        if digits.isdigit():
            wide = "".join(chr(ord(c) + 0xFEE0) for c in text)  # full-width digits
            options.append(lambda m=m, w=wide: sentence[: m.start()] + w + sentence[m.end() :])
    for m in _WORD_RE.finditer(sentence):
        value = _WORDS.index(m.group(0).lower()) + 2
        options.append(lambda m=m, v=value: sentence[: m.start()] + str(v) + sentence[m.end() :])
    for m in re.finditer(rf"\b(\d{{1,2}}) ({'|'.join(_MONTHS)}) (\d{{4}})\b", sentence):
        options.append(lambda m=m: sentence[: m.start()] + f"{m.group(2)} {m.group(1)}, {m.group(3)}"
                       + sentence[m.end() :])  # fmt: skip
    for m in re.finditer(rf"\b({'|'.join(_MONTHS)}) (\d{{1,2}}), (\d{{4}})\b", sentence):
        options.append(lambda m=m: sentence[: m.start()] + f"{m.group(2)} {m.group(1)} {m.group(3)}"
                       + sentence[m.end() :])  # fmt: skip
    for m in _CN_RUN_RE.finditer(sentence):
        value = _chinese_value(m.group(0))
        if value is not None and value >= 2:
            options.append(lambda m=m, v=value: sentence[: m.start()] + str(v) + sentence[m.end() :])
    return rng.choice(options)() if options else None


# --- the run --------------------------------------------------------------------------------------------------


def run(set_name: str, n: int, seed: int) -> dict[str, Any]:
    """Check up to `n` answer sentences of `set_name` (its articles of the seed's parity), their altered and
    reformatted twins; the figures as a dict."""
    from service.ask.verify import check_claim

    items, paragraphs = load(set_name, seed)
    items = items[:n]
    names: dict[int, list[str]] = {}
    for paragraph in paragraphs:
        for name in names_of(paragraph):
            names.setdefault(len(name.split()), []).append(name)
    han_names: dict[tuple[str, int], list[str]] = {}
    if set_name == "cmrc":
        for paragraph in paragraphs:
            for _, _, word, tag in han_names_of(paragraph):
                han_names.setdefault((tag, len(word)), []).append(word)
    for bucket in [*names.values(), *han_names.values()]:
        bucket[:] = sorted(set(bucket))
    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    flagged_kind: Counter[str] = Counter()
    examples: dict[str, list[dict[str, Any]]] = {"true_flagged": [], "altered_passed": [], "reformatted_flagged": []}
    started = time.perf_counter()
    for item in items:
        ok, missing = check_claim(item.sentence, [item.paragraph])
        counts["true"] += 1
        counts["true_passed"] += ok
        if not ok and len(examples["true_flagged"]) < 5:
            examples["true_flagged"].append({"sentence": item.sentence, "missing": missing})
        candidates = alterations(item.sentence, names, han_names, rng)
        if candidates:
            kinds = sorted({c.kind for c in candidates})
            kind = rng.choice(kinds)
            change = rng.choice([c for c in candidates if c.kind == kind])
            altered = change.apply(item.sentence)
            ok, missing = check_claim(altered, [item.paragraph])
            counts["altered"] += 1
            counts["altered_flagged"] += not ok
            by_kind[kind] += 1
            flagged_kind[kind] += not ok
            counts["altered_in_paragraph"] += change.replacement.casefold() in item.paragraph.casefold()
            if ok and len(examples["altered_passed"]) < 8:
                examples["altered_passed"].append({"altered": altered, "was": item.sentence[change.start : change.end],
                                                   "now": change.replacement})  # fmt: skip
        twin = reformat(item.sentence, rng)
        if twin is not None:
            ok, missing = check_claim(twin, [item.paragraph])
            counts["reformatted"] += 1
            counts["reformatted_passed"] += ok
            if not ok and len(examples["reformatted_flagged"]) < 5:
                examples["reformatted_flagged"].append({"sentence": twin, "missing": missing})
    flagged = counts["altered_flagged"] + (counts["true"] - counts["true_passed"])
    return {
        "set": set_name,
        "seed": seed,
        "split": "development" if seed % 2 == 0 else "held out",
        "true": counts["true"],
        "altered": counts["altered"],
        "reformatted": counts["reformatted"],
        "true_pass_rate": _share(counts["true_passed"], counts["true"]),
        "reformatted_pass_rate": _share(counts["reformatted_passed"], counts["reformatted"]),
        "recall": _share(counts["altered_flagged"], counts["altered"]),
        "precision": _share(counts["altered_flagged"], flagged),
        "recall_by_kind": {k: _share(flagged_kind[k], by_kind[k]) for k in sorted(by_kind)},
        "altered_by_kind": dict(sorted(by_kind.items())),
        "altered_value_elsewhere_in_paragraph": counts["altered_in_paragraph"],
        "targets_met": _share(counts["altered_flagged"], counts["altered"]) >= TARGET
        and _share(counts["true_passed"], counts["true"]) >= TARGET,
        "seconds": round(time.perf_counter() - started, 2),
        "examples": examples,
    }


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="sets", action="append", choices=sorted(SETS), help="default: both")
    parser.add_argument("--n", type=int, default=300, help="answer sentences per set and seed")
    parser.add_argument("--seed", type=int, nargs="+", default=[0, 1], help="0: development half, 1: held-out half")
    parser.add_argument("--examples", action="store_true", help="print misses and false flags")
    args = parser.parse_args()
    results = [run(name, args.n, seed) for name in (args.sets or list(SETS)) for seed in args.seed]
    header = (f"{'set':9} {'seed':>4} {'split':12} {'true':>5} {'pass':>6} {'altered':>7} {'recall':>7} "
              f"{'precision':>9} {'reform':>6} {'pass':>6}  recall by kind")  # fmt: skip
    print(header)
    for r in results:
        kinds = " ".join(f"{k} {v:.2f} ({r['altered_by_kind'][k]})" for k, v in r["recall_by_kind"].items())
        print(f"{r['set']:9} {r['seed']:>4} {r['split']:12} {r['true']:>5} {r['true_pass_rate']:>6.3f} "
              f"{r['altered']:>7} {r['recall']:>7.3f} {r['precision']:>9.3f} {r['reformatted']:>6} "
              f"{r['reformatted_pass_rate']:>6.3f}  {kinds}")  # fmt: skip
        if args.examples:
            print(json.dumps(r["examples"], ensure_ascii=False, indent=1))
    for r in results:
        r.pop("examples")
    print(json.dumps({"bench": "verifier", "machine": describe(), "results": results}, ensure_ascii=False))


if __name__ == "__main__":
    main()
