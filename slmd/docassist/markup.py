"""Text, Markdown and HTML to plain text. Markdown loses its markup lightly
(headings, emphasis, links become their text); HTML goes through
BeautifulSoup with the stdlib parser, minus scripts, styles and navigation.
Every regex here has bounded repetition: inputs come from untrusted apps and
a 20 MiB single line must not make a pattern backtrack quadratically."""

from __future__ import annotations

import re

from bs4 import BeautifulSoup, NavigableString

from slmd.docassist.errors import IngestError, IngestErrorReason
from slmd.docassist.limits import Budget

RawSection = tuple[str, str]  # (label, text before normalization)
DOCUMENT_LABEL = "document"


def extract_text(text: str, budget: Budget) -> list[RawSection]:
    budget.spend_chars(len(text))
    return [(DOCUMENT_LABEL, text)]


# --- Markdown ---------------------------------------------------------------

_FENCE = re.compile(r"\s{0,3}(```|~~~)")
_ATX = re.compile(r"\s{0,3}#{1,6}(?:\s|$)")
_QUOTE = re.compile(r"\s{0,3}(?:>\s?)+")
_BULLET = re.compile(r"(\s*)[*+](\s)")
_REF_DEF = re.compile(r"\s{0,3}\[[^\]\n]{1,500}\]:(?:\s|$)")
# Each class excludes its own opening character, so the scans that start at
# successive openers never overlap: linear time even on "[[[[...".
_INLINE = (
    (re.compile(r"!\[([^\[\]\n]{0,500})\]\([^()\n]{0,2000}\)"), r"\1"),  # image -> alt text
    (re.compile(r"\[([^\[\]\n]{0,500})\]\([^()\n]{0,2000}\)"), r"\1"),  # link -> link text
    (re.compile(r"\[([^\[\]\n]{1,500})\]\[[^\[\]\n]{0,500}\]"), r"\1"),  # reference link
    (re.compile(r"<((?:https?|mailto):[^<>\s]{1,2000})>"), r"\1"),  # autolink
    (re.compile(r"`([^`\n]{1,2000})`"), r"\1"),
    (re.compile(r"\*\*([^*\n]{1,500})\*\*"), r"\1"),
    (re.compile(r"(?<!\w)__([^_\n]{1,500})__(?!\w)"), r"\1"),
    (re.compile(r"(?<![\w*])\*([^*\s][^*\n]{0,499})\*(?![\w*])"), r"\1"),
    (re.compile(r"(?<!\w)_([^_\s][^_\n]{0,499})_(?!\w)"), r"\1"),  # not snake_case
    (re.compile(r"~~([^~\n]{1,500})~~"), r"\1"),
)
# Backslash escapes hide their character from the patterns above by moving it
# to the private-use area for the duration.
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|~<>])")
_HIDE_OFFSET = 0xF000
_UNHIDE = re.compile("[\uf021-\uf07e]")


def extract_markdown(text: str, budget: Budget) -> list[RawSection]:
    budget.spend_chars(len(text))
    lines_out: list[str] = []
    in_fence = False
    for num, line in enumerate(text.splitlines()):
        if num % 4096 == 0:
            budget.check_time()
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:  # code stays as written
            lines_out.append(line)
            continue
        stripped = line.strip()
        if _is_rule_or_underline(stripped) or _is_table_separator(stripped) or _REF_DEF.match(line):
            continue
        heading = _ATX.match(line)
        if heading:
            line = _heading_text(line[heading.end() :])
            lines_out.extend(["", line, ""])  # a heading is its own paragraph
            continue
        line = _QUOTE.sub("", line, count=1) if line.lstrip().startswith(">") else line
        line = _BULLET.sub(r"\1-\2", line, count=1) if _BULLET.match(line) else line
        line = _ESCAPE.sub(lambda m: chr(_HIDE_OFFSET + ord(m.group(1))), line)
        for pattern, replacement in _INLINE:
            line = pattern.sub(replacement, line)
        lines_out.append(_UNHIDE.sub(lambda m: chr(ord(m.group()) - _HIDE_OFFSET), line))
    return [(DOCUMENT_LABEL, "\n".join(lines_out))]


def _heading_text(rest: str) -> str:
    rest = rest.strip()
    closed = rest.rstrip("#")
    if closed != rest and (not closed or closed.endswith((" ", "\t"))):  # "## Title ##"
        rest = closed.strip()
    return rest


def _is_rule_or_underline(stripped: str) -> bool:
    """`---`, `***`, `___` rules and `===`/`---` setext underlines."""
    marks = set(stripped) - {" ", "\t"}
    return len(marks) == 1 and marks <= {"-", "*", "_", "="} and len(stripped) >= 3


def _is_table_separator(stripped: str) -> bool:
    return "|" in stripped and "-" in stripped and set(stripped) <= set("|:- \t")


# --- HTML -------------------------------------------------------------------

_DROP_TAGS = ["script", "style", "nav", "noscript", "template", "svg", "canvas", "iframe", "object", "embed", "select"]
_PARAGRAPH_TAGS = [
    "p", "h1", "h2", "h3", "h4", "h5", "h6", "title", "blockquote", "pre", "table", "ul", "ol", "dl",
    "section", "article", "header", "footer", "main", "aside", "figure", "hr", "form", "fieldset",
]  # fmt: skip
_LINE_TAGS = ["div", "tr", "dt", "dd", "figcaption", "caption", "address", "details", "summary", "label"]
# Private-use characters mark breaks while all source whitespace is collapsed.
_PARA, _LINE = "\ue000", "\ue001"
MAX_HTML_TAGS = 250_000
_MARKERS = re.compile(f"[{_PARA}{_LINE}]")
_BREAK_RUN = re.compile(f"[ {_PARA}{_LINE}]*[{_PARA}{_LINE}][ {_PARA}{_LINE}]*")


def extract_html(text: str, budget: Budget) -> list[RawSection]:
    budget.spend_chars(len(text))
    text = defuse_html(text)
    num_tags = text.count("<")
    if num_tags > MAX_HTML_TAGS:  # about 25 us and 1 KB per tag in BeautifulSoup
        raise IngestError(
            IngestErrorReason.TOO_LARGE, f"the HTML has about {num_tags:,} tags; the limit is {MAX_HTML_TAGS:,}"
        )
    soup = BeautifulSoup(text, "html.parser")
    budget.check_time()
    for tag in soup.find_all(_DROP_TAGS):
        tag.decompose()
    for string in soup.find_all(string=_MARKERS):  # entities such as &#xe000; must not fake a break
        string.replace_with(type(string)(_MARKERS.sub(" ", str(string))))
    for pre in soup.find_all("pre"):  # the only place where source newlines mean something
        for string in pre.find_all(string=True):
            string.replace_with(type(string)(str(string).replace("\n", _LINE)))
    budget.check_time()
    for tag in soup.find_all(_PARAGRAPH_TAGS):
        tag.insert(0, NavigableString(_PARA))
        tag.append(NavigableString(_PARA))
    for tag in soup.find_all(_LINE_TAGS):
        tag.insert(0, NavigableString(_LINE))
        tag.append(NavigableString(_LINE))
    for tag in soup.find_all("li"):
        tag.insert(0, NavigableString(_LINE + "- "))
    for tag in soup.find_all("br"):
        tag.insert_before(NavigableString(_LINE))
    for row in soup.find_all("tr"):
        for cell in row.find_all(["td", "th"], recursive=False)[1:]:
            cell.insert(0, NavigableString(" | "))
    budget.check_time()
    flat = re.sub(r"\s+", " ", soup.get_text())
    # a run of breaks is one break: a paragraph break if any of them is one
    flat = _BREAK_RUN.sub(lambda run: "\n\n" if _PARA in run.group() else "\n", flat)
    return [(DOCUMENT_LABEL, flat)]


def defuse_html(html: str) -> str:
    """Remove the inputs on which CPython's html.parser is quadratic, in linear
    passes: comments and `<![CDATA[...]]>` sections go (an unclosed one runs to
    the end, as in browsers), and a `<` that never reaches a `>` before the
    next `<` becomes `&lt;` (browsers show such a `<` as text too)."""
    html = _drop_spans(html, "<!--", "-->")
    html = _drop_spans(html, "<![", "]]>")
    pieces = html.split("<")
    out = [pieces[0]]
    for piece in pieces[1:]:
        out.append(("<" if ">" in piece and not piece.startswith("![") else "&lt;") + piece)
    return "".join(out)


def _drop_spans(text: str, opener: str, closer: str) -> str:
    kept: list[str] = []
    pos = 0
    while (start := text.find(opener, pos)) >= 0:
        kept.append(text[pos:start])
        end = text.find(closer, start + len(opener))
        if end < 0:
            return "".join(kept)
        pos = end + len(closer)
    kept.append(text[pos:])
    return "".join(kept)
