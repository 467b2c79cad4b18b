"""Which document format a blob of bytes is. Content wins over names: magic
bytes first (PDF header, OOXML zip members, HTML doctype), then the filename
extension or MIME type the app sent; text must decode as UTF-8 (or, failing
that, look like legacy 8-bit text), so binary garbage gets a clear error."""

from __future__ import annotations

import codecs
import io
import re
import zipfile
from dataclasses import dataclass
from enum import Enum

from slmd.docassist.errors import IngestError, IngestErrorReason, short_complaint


class DocFormat(Enum):
    TEXT = "text"
    MARKDOWN = "markdown"
    HTML = "html"
    PDF = "pdf"
    DOCX = "docx"
    PPTX = "pptx"
    XLSX = "xlsx"

    @property
    def display_name(self) -> str:
        return _DISPLAY_NAMES[self]

    @property
    def is_text(self) -> bool:
        return self in (DocFormat.TEXT, DocFormat.MARKDOWN, DocFormat.HTML)


_DISPLAY_NAMES = {
    DocFormat.TEXT: "plain text",
    DocFormat.MARKDOWN: "Markdown",
    DocFormat.HTML: "HTML",
    DocFormat.PDF: "PDF",
    DocFormat.DOCX: "Word (.docx)",
    DocFormat.PPTX: "PowerPoint (.pptx)",
    DocFormat.XLSX: "Excel (.xlsx)",
}
SUPPORTED = ", ".join(_DISPLAY_NAMES[f] for f in DocFormat)

_EXTENSIONS = {
    "txt": DocFormat.TEXT,
    "text": DocFormat.TEXT,
    "md": DocFormat.MARKDOWN,
    "markdown": DocFormat.MARKDOWN,
    "htm": DocFormat.HTML,
    "html": DocFormat.HTML,
    "xhtml": DocFormat.HTML,
    "pdf": DocFormat.PDF,
    "docx": DocFormat.DOCX,
    "pptx": DocFormat.PPTX,
    "xlsx": DocFormat.XLSX,
    "xlsm": DocFormat.XLSX,
}
_MIME_TYPES = {
    "text/plain": DocFormat.TEXT,
    "text/markdown": DocFormat.MARKDOWN,
    "text/x-markdown": DocFormat.MARKDOWN,
    "text/html": DocFormat.HTML,
    "application/xhtml+xml": DocFormat.HTML,
    "application/pdf": DocFormat.PDF,
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": DocFormat.DOCX,
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": DocFormat.PPTX,
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": DocFormat.XLSX,
}
# Formats people often send that we recognize only to name them in the error.
_UNSUPPORTED_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "a legacy Office file (.doc/.xls/.ppt); save it as .docx/.xlsx/.pptx"),
    (b"{\\rtf", "an RTF file; save it as .docx"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x7fELF", "an executable"),
)
_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_OOXML_PREFIXES = (("word/", DocFormat.DOCX), ("ppt/", DocFormat.PPTX), ("xl/", DocFormat.XLSX))
_HTML_START = re.compile(r"\s*(?:<!--[^>]{0,200}-->\s*)*<(?:!doctype\s+html|html|head|body)[\s>]", re.IGNORECASE)
_SNIFF_CHARS = 8192
_MAX_CONTROL_RATIO = 0.1


@dataclass(frozen=True)
class Detection:
    format: DocFormat
    text: str | None = None  # the decoded text, for TEXT, MARKDOWN and HTML


def detect(data: bytes, *, filename: str | None, mime_type: str | None) -> Detection:
    hint = _format_from_name(filename, mime_type)
    if b"%PDF-" in data[:1024]:
        return Detection(DocFormat.PDF)
    if data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return Detection(_ooxml_format(data, hint))
    if data.startswith(_OLE2_MAGIC) and hint in (DocFormat.DOCX, DocFormat.PPTX, DocFormat.XLSX):
        # Office wraps password-protected .docx/.xlsx/.pptx in an OLE2 container
        raise IngestError(
            IngestErrorReason.ENCRYPTED,
            f"the {hint.display_name} file is password-protected; remove the password and send it again",
        )
    for magic, what in _UNSUPPORTED_MAGIC:
        if data.startswith(magic):
            raise _unsupported(what)
    if hint in (DocFormat.PDF, DocFormat.DOCX, DocFormat.PPTX, DocFormat.XLSX):
        why = "no %PDF- header" if hint is DocFormat.PDF else "not a zip archive"
        raise IngestError(IngestErrorReason.CORRUPT, f"the file is not a valid {hint.display_name}: {why}")
    text = decode_text(data)
    if _HTML_START.match(text[:1024]):
        return Detection(DocFormat.HTML, text)
    return Detection(hint if hint is not None else DocFormat.TEXT, text)


def decode_text(data: bytes) -> str:
    """UTF-8 (BOM or not), UTF-16/32 with a BOM, else cp1252 if it looks like text."""
    for bom, codec in (
        (codecs.BOM_UTF32_LE, "utf-32-le"),
        (codecs.BOM_UTF32_BE, "utf-32-be"),
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ):
        if data.startswith(bom):
            # a BOM says "text" firmly enough to replace the odd bad byte
            text = data[len(bom) :].decode(codec, errors="replace")
            break
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("cp1252", errors="replace")
    if _looks_binary(text[:_SNIFF_CHARS]):
        raise _unsupported("binary data")
    return text


def _looks_binary(sample: str) -> bool:
    if "\x00" in sample:
        return True
    num_controls = sum(1 for ch in sample if ch < " " and ch not in "\t\n\r\f\v\x1b")
    return num_controls > _MAX_CONTROL_RATIO * max(len(sample), 1)


def _format_from_name(filename: str | None, mime_type: str | None) -> DocFormat | None:
    if filename:
        base = re.split(r"[/\\]", filename)[-1]
        if "." in base:
            found = _EXTENSIONS.get(base.rsplit(".", 1)[1].strip().lower())
            if found is not None:
                return found
    if mime_type:
        return _MIME_TYPES.get(mime_type.split(";", 1)[0].strip().lower())
    return None


def _ooxml_format(data: bytes, hint: DocFormat | None) -> DocFormat:
    """Which Office format a zip holds, from its member names (the central directory only)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
            if "mimetype" in names and archive.getinfo("mimetype").file_size < 200:
                kind = archive.read("mimetype").decode("ascii", errors="replace").strip()
                raise _unsupported(f"a zip-based document of type {kind[:100]!r} (OpenDocument or EPUB?)")
    except IngestError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile raises many types on damaged input
        what = f"{hint.display_name} file" if hint is not None and not hint.is_text else "zip archive"
        raise IngestError(IngestErrorReason.CORRUPT, f"the {what} is damaged: {short_complaint(exc)}") from None
    for prefix, found in _OOXML_PREFIXES:
        if any(name.startswith(prefix) for name in names):
            return found
    raise _unsupported("a zip archive that is not a Word, PowerPoint or Excel file")


def _unsupported(what: str) -> IngestError:
    return IngestError(
        IngestErrorReason.UNSUPPORTED_FORMAT, f"unsupported document: {what}; supported formats: {SUPPORTED}"
    )
