"""Turn an uploaded document (bytes from an untrusted app) into normalized
text with labelled sections, so later steps can say "page 3" or "slide 2".

    doc = extract(data, filename="deck.pptx", limits=IngestLimits())
    doc.text                   # whole text, sections separated by blank lines
    doc.sections[1].label      # "slide 2"
    doc.section_at(offset)     # the section a chunk starting at `offset` is in

Every failure is an IngestError with a reason; no parser exception escapes.
Limits are checked between pages and rows, so a hostile file costs bounded
time and memory; a hard kill, if wanted, belongs to the caller (a worker
process), since a parser cannot be interrupted from inside its own thread."""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from slmd.docassist.errors import IngestError, IngestErrorReason, format_sizes, short_complaint
from slmd.docassist.formats import DocFormat, detect
from slmd.docassist.limits import Budget, IngestLimits
from slmd.docassist.markup import extract_html, extract_markdown, extract_text
from slmd.docassist.office import extract_docx, extract_pptx, extract_xlsx
from slmd.docassist.pdf import extract_pdf

__all__ = [
    "DocFormat",
    "ExtractedDocument",
    "IngestError",
    "IngestErrorReason",
    "IngestLimits",
    "Section",
    "extract",
    "normalize_text",
]

SECTION_SEPARATOR = "\n\n"
_PAGED_FORMATS = (DocFormat.PDF, DocFormat.PPTX, DocFormat.XLSX)
_TEXT_EXTRACTORS: dict[DocFormat, Callable[[str, Budget], list[tuple[str, str]]]] = {
    DocFormat.TEXT: extract_text,
    DocFormat.MARKDOWN: extract_markdown,
    DocFormat.HTML: extract_html,
}
_BINARY_EXTRACTORS: dict[DocFormat, Callable[[bytes, Budget], list[tuple[str, str]]]] = {
    DocFormat.PDF: extract_pdf,
    DocFormat.DOCX: extract_docx,
    DocFormat.PPTX: extract_pptx,
    DocFormat.XLSX: extract_xlsx,
}


@dataclass(frozen=True)
class Section:
    label: str  # "page 3", "slide 2", "sheet Budget", "document"
    text: str
    start: int  # offset of `text` in ExtractedDocument.text

    @property
    def end(self) -> int:
        return self.start + len(self.text)


@dataclass(frozen=True)
class ExtractedDocument:
    format: DocFormat
    text: str
    sections: tuple[Section, ...]
    num_pages: int  # pages, slides or sheets, empty ones included; 1 for other formats
    _starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", tuple(section.start for section in self.sections))

    def section_at(self, offset: int) -> Section | None:
        """The section holding character `offset` (a separator belongs to the section before it)."""
        index = bisect.bisect_right(self._starts, offset) - 1
        return self.sections[index] if index >= 0 else None


def extract(
    data: bytes, *, filename: str | None = None, mime_type: str | None = None, limits: IngestLimits
) -> ExtractedDocument:
    if len(data) > limits.max_bytes:
        actual, limit = format_sizes(len(data), limits.max_bytes)
        raise IngestError(IngestErrorReason.TOO_LARGE, f"document is {actual}; the limit is {limit} (docs.max_bytes)")
    if not data:
        raise IngestError(IngestErrorReason.EMPTY, "document is empty (0 bytes)")
    budget = Budget(limits)
    detection = _guarded("document", lambda: detect(bytes(data), filename=filename, mime_type=mime_type))
    fmt = detection.format
    if fmt.is_text:
        text = detection.text or ""
        raw_sections = _guarded(fmt.display_name, lambda: _TEXT_EXTRACTORS[fmt](text, budget))
    else:
        raw_sections = _guarded(fmt.display_name, lambda: _BINARY_EXTRACTORS[fmt](bytes(data), budget))
    return _assemble(fmt, raw_sections, budget)


def _guarded(what: str, parse: Callable):
    """Run a parser; anything it raises becomes an IngestError."""
    try:
        return parse()
    except IngestError:
        raise
    except RecursionError:
        raise IngestError(IngestErrorReason.CORRUPT, f"the {what} file is nested too deeply to read") from None
    except MemoryError:
        raise IngestError(IngestErrorReason.TOO_LARGE, f"ran out of memory reading the {what} file") from None
    except Exception as exc:  # noqa: BLE001 - parsers of hostile input raise anything
        raise IngestError(
            IngestErrorReason.CORRUPT, f"could not read the {what} file: {short_complaint(exc)}"
        ) from exc


def _assemble(fmt: DocFormat, raw_sections: list[tuple[str, str]], budget: Budget) -> ExtractedDocument:
    sections: list[Section] = []
    offset = 0
    for label, raw in raw_sections:
        text = normalize_text(raw)
        if not text:  # an empty page keeps its number but gets no section
            continue
        if sections:
            offset += len(SECTION_SEPARATOR)
        sections.append(Section(label=label, text=text, start=offset))
        offset += len(text)
        budget.check_chars(offset)
    if not sections:
        raise IngestError(IngestErrorReason.EMPTY, _empty_message(fmt, len(raw_sections)))
    num_pages = len(raw_sections) if fmt in _PAGED_FORMATS else 1
    full_text = SECTION_SEPARATOR.join(section.text for section in sections)
    return ExtractedDocument(format=fmt, text=full_text, sections=tuple(sections), num_pages=num_pages)


def _empty_message(fmt: DocFormat, num_pages: int) -> str:
    if fmt is DocFormat.PDF:
        return (
            f"the PDF has no extractable text on its {num_pages} page(s); scanned PDFs need OCR, "
            "which slmd does not do"
        )
    return f"the {fmt.display_name} document contains no text"


# --- whitespace ---------------------------------------------------------------

_CHAR_MAP: dict[int, str | None] = {code: None for code in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0))}
_CHAR_MAP.update({ord(ch): "\n" for ch in "\n\r\v\f\x85\u2028\u2029"})
_CHAR_MAP.update({ord("\t"): " ", 0x00A0: " ", 0x00AD: None, 0x200B: None, 0x2060: None, 0xFEFF: None})
# PDFs often keep typographic ligatures, which tokenizers split badly.
_CHAR_MAP.update({0xFB00: "ff", 0xFB01: "fi", 0xFB02: "fl", 0xFB03: "ffi", 0xFB04: "ffl", 0xFB05: "st", 0xFB06: "st"})
_SURROGATES = re.compile("[\ud800-\udfff]")
_SPACES = re.compile(r"[^\S\n]+")
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_text(raw: str) -> str:
    """Unix newlines, no control characters, single spaces, at most one blank
    line in a row, no spaces at line ends."""
    text = raw.replace("\r\n", "\n").translate(_CHAR_MAP)
    text = _SURROGATES.sub("\ufffd", text)  # lone surrogates cannot be sent as UTF-8
    text = _SPACES.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()
