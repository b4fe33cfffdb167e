"""Between kb's Markdown answers and Slack's mrkdwn, both ways.

`to_mrkdwn`: an answer (bold, italics, lists, headings, `code`, fenced code, links, [n] markers) as mrkdwn. Every
`&`, `<` and `>` of the text is escaped, so nothing a document or the model wrote becomes a Slack control sequence
(`<!channel>` would notify a whole channel, `<@U…>` a person, `<https://…|label>` a disguised link), and the plain
words "@channel", "@here" and "@everyone" are defused; the only links are the ones built here. (The PyPI package
markdown-to-mrkdwn escapes nothing, formats inside code spans and hides its own errors, so it is not used.)

`plain_text`: the text of an incoming Slack message (mentions, channel names, links, escapes) as the question a
person typed."""

from __future__ import annotations

import re
from collections.abc import Callable

SECTION_LIMIT = 3000  # characters of one section block's text (Slack's limit)

_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_ITALIC = re.compile(r"(?<![\w*])([*_])(?=\S)([^*_\n]+?)(?<=\S)\1(?![\w*])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^\s)]+)\)")
_MARKER = re.compile(r"\[(\d{1,3}(?:\s*[,，、]\s*\d{1,3})*)\]")  # [1], [1, 2]
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+(.*)$")
_NUMBERED = re.compile(r"^(\s*)(\d{1,3})[.)]\s+(.*)$")
_QUOTE = re.compile(r"^\s{0,3}>\s?(.*)$")
_FENCE = re.compile(r"^\s*```")
_RULE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")

# Bold and italics are placeholders while the line is built (their characters are escaped text otherwise).
_B, _I, _S = "\x01", "\x02", "\x03"


# "@channel", "@here" and "@everyone" typed as plain words: Slack turns them into the real mentions where it parses
# a message's text (chat.update parses by default, and a mrkdwn text object unless it is verbatim). A word joiner
# after the "@" keeps the word as it reads and stops that.
_BROADCAST = re.compile(r"([@＠])(?=(?:channel|here|everyone)\b)", re.IGNORECASE)
WORD_JOINER = "\u2060"


def escape(text: str) -> str:
    """Slack's three escapes, and the broadcast words defused: the text then reads as itself, never as a mention, a
    link or a command."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _BROADCAST.sub(lambda m: m.group(1) + WORD_JOINER, escaped)


def link(url: str, label: str) -> str:
    """A link with a label; `|` and `>` in the URL would end it early, so they are percent-encoded."""
    safe_url = url.replace("&", "&amp;").replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")
    return f"<{safe_url}|{escape(label)}>"


MarkerLink = Callable[[int], str | None]


def _inline(text: str, marker_link: MarkerLink | None) -> str:
    """One line of Markdown outside code blocks: code spans kept verbatim (escaped), emphasis and links converted."""
    pieces: list[str] = []
    position = 0
    for match in _CODE_SPAN.finditer(text):
        pieces.append(_formatted(text[position : match.start()], marker_link))
        pieces.append(f"`{escape(match.group(2))}`")
        position = match.end()
    pieces.append(_formatted(text[position:], marker_link))
    return "".join(pieces)


def _formatted(text: str, marker_link: MarkerLink | None) -> str:
    links: list[str] = []

    def keep_link(match: re.Match[str]) -> str:
        links.append(link(match.group(2), match.group(1)))
        return f"\x04{len(links) - 1}\x04"

    def keep_marker(match: re.Match[str]) -> str:
        numbers = [int(n) for n in re.split(r"\s*[,，、]\s*", match.group(1))]
        urls = [marker_link(n) if marker_link is not None else None for n in numbers]
        if not any(urls):
            return match.group(0)
        if len(numbers) == 1:
            links.append(link(urls[0], match.group(0)))  # type: ignore[arg-type]
        else:
            links.append("[" + ", ".join(link(u, str(n)) if u else str(n) for n, u in zip(numbers, urls)) + "]")
        return f"\x04{len(links) - 1}\x04"

    text = _LINK.sub(keep_link, text)
    text = _MARKER.sub(keep_marker, text)
    text = _BOLD.sub(lambda m: f"{_B}{m.group(2)}{_B}", text)
    text = _STRIKE.sub(lambda m: f"{_S}{m.group(1)}{_S}", text)
    text = _ITALIC.sub(lambda m: f"{_I}{m.group(2)}{_I}", text)
    text = escape(text).replace(_B, "*").replace(_I, "_").replace(_S, "~")
    return re.sub("\x04(\\d+)\x04", lambda m: links[int(m.group(1))], text)


def to_mrkdwn(markdown: str, marker_link: MarkerLink | None = None) -> str:
    """`marker_link(n)`: the URL an [n] marker links to (None: plain text)."""
    lines: list[str] = []
    in_fence = False
    markdown = re.sub("[\x01-\x04]", "", markdown)  # the placeholders' characters; no text means them
    for line in markdown.strip("\n").splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            lines.append("```")
            continue
        if in_fence:
            lines.append(escape(line))
        elif heading := _HEADING.match(line):
            lines.append(f"*{_inline(heading.group(1), marker_link)}*")
        elif _RULE.match(line):
            lines.append("──────────")
        elif bullet := _BULLET.match(line):
            indent = "    " * (len(bullet.group(1).expandtabs(4)) // 2)
            lines.append(f"{indent}• {_inline(bullet.group(2), marker_link)}")
        elif numbered := _NUMBERED.match(line):
            indent = "    " * (len(numbered.group(1).expandtabs(4)) // 2)
            lines.append(f"{indent}{numbered.group(2)}. {_inline(numbered.group(3), marker_link)}")
        elif quote := _QUOTE.match(line):
            lines.append(f">{_inline(quote.group(1), marker_link)}")  # a literal ">" at the start: Slack's quote
        else:
            lines.append(_inline(line, marker_link))
    if in_fence:
        lines.append("```")  # an unfinished block (a partial answer while it streams) is closed
    return "\n".join(lines)


def split_sections(mrkdwn: str, limit: int = SECTION_LIMIT) -> list[str]:
    """Pieces of at most `limit` characters, cut between paragraphs, else lines, else words; a code block cut in two
    is closed and reopened, so each piece renders on its own. Never cuts inside an escape (`&amp;`) or a link."""
    pieces: list[str] = []
    rest = mrkdwn.strip()
    reopen = ""
    while rest:
        rest = reopen + rest
        if len(rest) <= limit:
            pieces.append(rest)
            break
        window = rest[: limit - 4]  # room to close a code block
        cut = next((at for sep in ("\n\n", "\n", " ") if (at := window.rfind(sep)) >= limit // 3), -1)
        if cut < 0:
            cut = _safe_cut(window)
        opened, closed = rest.rfind("<", 0, cut), rest.rfind(">", 0, cut)
        if opened > closed and opened > 0:  # inside a link (its label may hold spaces): cut before it
            cut = opened
        piece, rest = rest[:cut].rstrip(), rest[cut:].lstrip()
        reopen = ""
        if piece.count("```") % 2:
            piece += "\n```"
            reopen = "```\n"
        pieces.append(piece)
    return pieces


def _safe_cut(window: str) -> int:
    """The end of `window`, or before an escape (`&amp;`) the end would split."""
    cut = len(window)
    amp, semicolon = window.rfind("&", max(0, cut - 6)), window.rfind(";", max(0, cut - 6))
    return amp if amp > semicolon and amp > 0 else cut


_SLACK_USER = re.compile(r"<@([UW][A-Z0-9]+)(?:\|([^>]*))?>")
_SLACK_CHANNEL = re.compile(r"<#(C[A-Z0-9]+)(?:\|([^>]*))?>")
_SLACK_SPECIAL = re.compile(r"<!([a-z]+)(?:\^[^|>]*)?(?:\|([^>]*))?>")
_SLACK_LINK = re.compile(r"<((?:https?|mailto):[^|>]+)(?:\|([^>]*))?>")


def plain_text(text: str, drop_user: str | None = None) -> str:
    """A Slack message's text as typed: `<@U…>` mentions as @name (`drop_user`'s, the bot's own, removed), `<#C…|x>`
    as #x, links as their label (else the URL), Slack's escapes undone, white space collapsed."""
    text = _SLACK_USER.sub(lambda m: "" if m.group(1) == drop_user else f"@{m.group(2) or m.group(1)}", text)
    text = _SLACK_CHANNEL.sub(lambda m: f"#{m.group(2) or m.group(1)}", text)
    text = _SLACK_SPECIAL.sub(lambda m: f"@{m.group(2) or m.group(1)}", text)
    text = _SLACK_LINK.sub(lambda m: m.group(2) or m.group(1).removeprefix("mailto:"), text)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return re.sub(r"[ \t]+", " ", text).strip()
