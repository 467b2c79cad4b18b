"""slmd.docassist.ingest: planted text comes out under the right section
labels for every format, and every broken, hostile or oversized input gives
an IngestError with the right reason and a message that names the problem."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slmd.docassist.errors import format_sizes
from slmd.docassist.ingest import (
    DocFormat,
    ExtractedDocument,
    IngestError,
    IngestErrorReason,
    IngestLimits,
    extract,
    normalize_text,
)

from . import docfixtures as fx

LIMITS = IngestLimits()
PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01"


def _check_offsets(doc: ExtractedDocument) -> None:
    for section in doc.sections:
        assert doc.text[section.start : section.end] == section.text
        assert doc.section_at(section.start) == section


def _fails(data: bytes, reason: IngestErrorReason, *, limits: IngestLimits = LIMITS, **kw) -> str:
    with pytest.raises(IngestError) as info:
        extract(data, limits=limits, **kw)
    assert info.value.reason is reason, info.value.message
    return info.value.message


# --- formats: planted text under the right labels ----------------------------


def test_pdf_pages_are_sections():
    doc = extract(fx.make_pdf(), filename="report.pdf", limits=LIMITS)
    assert doc.format is DocFormat.PDF and doc.num_pages == 3
    assert [s.label for s in doc.sections] == ["page 1", "page 2", "page 3"]
    for section, planted in zip(doc.sections, fx.PDF_PAGES):
        assert section.text == planted
    _check_offsets(doc)
    assert doc.text == "\n\n".join(fx.PDF_PAGES)


def test_pdf_blank_page_keeps_numbering():
    doc = extract(fx.make_pdf(("first", "", "third")), limits=LIMITS)
    assert [(s.label, s.text) for s in doc.sections] == [("page 1", "first"), ("page 3", "third")]
    assert doc.num_pages == 3


def test_docx_paragraphs_and_table_in_body_order():
    doc = extract(fx.make_docx(), filename="r.docx", limits=LIMITS)
    assert doc.format is DocFormat.DOCX and [s.label for s in doc.sections] == ["document"]
    assert doc.text == (
        "Quarterly Delta Report\n\nEcho paragraph before the table.\n\n"
        "Region | Revenue | Owner\nFoxtrot North | 1200 | Golf Team\n\nHotel paragraph after the table."
    )


def test_pptx_slides_titles_bodies_tables_notes():
    doc = extract(fx.make_pptx(), filename="deck.pptx", limits=LIMITS)
    assert doc.format is DocFormat.PPTX and doc.num_pages == 3
    assert [s.label for s in doc.sections] == ["slide 1", "slide 2", "slide 3"]
    for section, (title, body, notes) in zip(doc.sections, fx.PPTX_SLIDES):
        assert section.text.startswith(f"{title}\n\n{body}")
        if notes:
            assert section.text.endswith(f"Notes: {notes}")
    assert doc.sections[2].text.endswith("Sierra | Tango\nUniform | 42")
    assert "Papa notes two" not in doc.sections[0].text
    _check_offsets(doc)


def test_xlsx_sheets_rows_and_values():
    doc = extract(fx.make_xlsx(), filename="b.xlsx", limits=LIMITS)
    assert doc.format is DocFormat.XLSX and doc.num_pages == 2
    budget, notes = doc.sections
    assert budget.label == "sheet Budget" and notes.label == "sheet Notes"
    assert budget.text.splitlines() == [
        "Item | Cost | Approved",
        "Victor laptop | 1200 | TRUE",
        "Whiskey desk | 350.5 | FALSE",
        "Xray total | 1550.5",
    ]
    assert "Yankee planted note" in notes.text
    _check_offsets(doc)


def test_html_keeps_structure_drops_script_style_nav_comments():
    doc = extract(fx.HTML_PAGE.encode(), limits=LIMITS)  # detected by its doctype, no name needed
    assert doc.format is DocFormat.HTML
    assert doc.text == (
        "Zulu page\n\nAlpha heading\n\nBravo paragraph that wraps in the source.\n\n"
        "Charlie & bold text.\nAfter break.\n\n- Delta item\n- Echo item\n\nKey | Value\nFoxtrot | 7"
    )


def test_html_entity_cannot_fake_a_break_and_pre_keeps_lines():
    doc = extract(b"<p>a&#xe000;b</p><pre>x = 1\ny = 2</pre>", filename="p.html", limits=LIMITS)
    assert doc.text == "a b\n\nx = 1\ny = 2"


def test_markdown_markup_is_stripped_lightly():
    doc = extract(fx.MARKDOWN_DOC.encode(), filename="notes.md", limits=LIMITS)
    assert doc.format is DocFormat.MARKDOWN
    assert doc.text == (
        "Golf heading\n\nHotel paragraph with bold, emphasis, code and a India link, *stars*.\n\nJuliet image\n\n"
        "- Kilo item\n- Lima item with snake_case_name\n\nMike quote\n\n| Col | Val |\n| November | 1 |\n\n"
        "Setext heading"
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a \\*b\\* [c](d)", "a \\*b\\* [c](d)"),  # plain text keeps markdown-looking text
        (b"plain  text\r\nline two\r\n\r\n\r\n\r\nnext para\t end", "plain text\nline two\n\nnext para end"),
        (b"\xef\xbb\xbfUTF-8 with BOM: caf\xc3\xa9", "UTF-8 with BOM: café"),
        ("UTF-16 text: naïve".encode("utf-16"), "UTF-16 text: naïve"),
        (b"legacy cp1252: caf\xe9 \x93quoted\x94", "legacy cp1252: café “quoted”"),
    ],
)
def test_plain_text_decoding_and_whitespace(data, expected):
    doc = extract(data, filename="a.txt", limits=LIMITS)
    assert doc.format is DocFormat.TEXT and doc.text == expected
    assert doc.sections[0].label == "document" and doc.num_pages == 1


def test_content_beats_name_and_mime():
    assert extract(fx.make_pdf(), filename="x.txt", limits=LIMITS).format is DocFormat.PDF
    assert extract(fx.make_docx(), filename="x.xlsx", limits=LIMITS).format is DocFormat.DOCX
    doc = extract(b"# Title\n\ntext", mime_type="text/markdown; charset=utf-8", limits=LIMITS)
    assert doc.format is DocFormat.MARKDOWN and doc.text == "Title\n\ntext"


def test_normalize_text():
    assert normalize_text("a\x00b\u200bc \xa0 d\u2028e\ufb01n\n\n\n\n  f  ") == "abc d\nefin\n\nf"


def test_pdf_with_owner_password_only_opens():
    doc = extract(fx.make_encrypted_pdf(user_password=""), limits=LIMITS)
    assert [s.text for s in doc.sections] == list(fx.PDF_PAGES)


# --- errors -------------------------------------------------------------------


def test_encrypted_pdf():
    message = _fails(fx.make_encrypted_pdf(user_password="secret"), IngestErrorReason.ENCRYPTED)
    assert "password" in message


def test_password_protected_office_file():
    ole2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500)
    assert "password" in _fails(ole2, IngestErrorReason.ENCRYPTED, filename="secret.docx")
    assert ".docx" in _fails(ole2, IngestErrorReason.UNSUPPORTED_FORMAT, filename="old.doc")


def test_truncated_pdf():
    data = fx.make_pdf()
    message = _fails(data[: len(data) // 3], IngestErrorReason.CORRUPT)
    assert "PDF" in message


def test_random_bytes_named_pdf():
    message = _fails(bytes(range(256)) * 4, IngestErrorReason.CORRUPT, filename="scan.pdf")
    assert message == "the file is not a valid PDF: no %PDF- header"


def test_docx_with_damaged_zip_directory():
    data = fx.make_docx()
    message = _fails(data[:-30], IngestErrorReason.CORRUPT, filename="r.docx")
    assert "Word (.docx)" in message and "damaged" in message


def test_docx_with_damaged_member_data():
    data = fx.damage_member_data(fx.make_docx(), "word/document.xml")
    message = _fails(data, IngestErrorReason.CORRUPT, filename="r.docx")
    assert message.startswith("could not read the Word (.docx) file: ")


@pytest.mark.parametrize("member", ["xl/workbook.xml", "xl/worksheets/sheet1.xml", "xl/styles.xml"])
def test_xlsx_with_garbage_xml(member):
    data = fx.replace_zip_member(fx.make_xlsx(), member, b"<<< this is not xml &&&")
    message = _fails(data, IngestErrorReason.CORRUPT, filename="b.xlsx")
    assert message.startswith("could not read the Excel (.xlsx) file: ")


def test_zip_bomb_declared_size():
    data = fx.declare_huge_size(fx.make_docx(), "word/document.xml")
    message = _fails(data, IngestErrorReason.TOO_LARGE, filename="bomb.docx")
    assert message.startswith("document unpacks to 4.0 GiB; the limit is 100 MiB") and "docs.max_unpacked_bytes" in message


def test_zip_bomb_real_compression():
    data = fx.add_zip_member(fx.make_xlsx(), "xl/media/zeros.bin", bytes(3 << 20))
    assert len(data) < 100_000
    limits = IngestLimits(max_unpacked_bytes=2 << 20)
    assert "docs.max_unpacked_bytes" in _fails(data, IngestErrorReason.TOO_LARGE, limits=limits)


def test_empty_inputs():
    assert _fails(b"", IngestErrorReason.EMPTY) == "document is empty (0 bytes)"
    assert "no text" in _fails(b"  \n\t\r\n ", IngestErrorReason.EMPTY, filename="a.txt")
    assert "OCR" in _fails(fx.make_pdf(("", "")), IngestErrorReason.EMPTY)
    assert "no text" in _fails(b"<html><body><script>x()</script></body></html>", IngestErrorReason.EMPTY)


@pytest.mark.parametrize(
    ("data", "filename", "what"),
    [
        (PNG_HEADER, "photo.png", "PNG image"),
        (PNG_HEADER, None, "PNG image"),
        (bytes(range(256)), "blob.bin", "binary data"),
        (fx.add_zip_member(b"", "readme.txt", b"hi"), "a.zip", "zip archive that is not"),
    ],
)
def test_unsupported_lists_supported_formats(data, filename, what):
    message = _fails(data, IngestErrorReason.UNSUPPORTED_FORMAT, filename=filename)
    assert what in message
    assert "supported formats: plain text, Markdown, HTML, PDF, Word (.docx), PowerPoint (.pptx), Excel (.xlsx)" in message


def test_too_large_names_limit_and_size():
    data = b"x" * int(25.3 * (1 << 20))
    assert _fails(data, IngestErrorReason.TOO_LARGE) == "document is 25.3 MiB; the limit is 20 MiB (docs.max_bytes)"
    assert format_sizes(20 * (1 << 20) + 1, 20 * (1 << 20)) == ("20,971,521 bytes", "20,971,520 bytes")


def test_too_many_chars():
    message = _fails(b"word " * 100, IngestErrorReason.TOO_LARGE, limits=IngestLimits(max_chars=200))
    assert message == "document text is 499 characters; the limit is 200 (docs.max_chars)"
    # far over the limit, parsers stop early, before whitespace cleanup
    message = _fails(fx.make_xlsx(), IngestErrorReason.TOO_LARGE, limits=IngestLimits(max_chars=10))
    assert message.startswith("document text is over 40 characters before cleanup; the limit is 10")


@pytest.mark.parametrize(
    ("make", "noun"),
    [(fx.make_pdf, "pages"), (fx.make_pptx, "slides"), (lambda: fx.make_xlsx(num_sheets=3), "sheets")],
)
def test_too_many_pages(make, noun):
    message = _fails(make(), IngestErrorReason.TOO_MANY_PAGES, limits=IngestLimits(max_pages=2))
    assert message == f"document has 3 {noun}; the limit is 2 (docs.max_pages)"


def test_too_slow_is_stopped():
    limits = IngestLimits(max_seconds=1e-9)
    assert "docs.max_seconds" in _fails(fx.make_xlsx(), IngestErrorReason.TOO_LARGE, limits=limits)


@pytest.mark.parametrize(
    "payload",
    ["<a " * 50_000, "<a x='" * 30_000, "<!--x" * 40_000, "<![CDATA[>" * 20_000, "</" * 100_000],
    ids=["open-tags", "open-quotes", "open-comments", "cdata", "end-tags"],
)
def test_html_parser_pathological_input_is_fast(payload):
    # CPython's html.parser is quadratic on these (minutes); defuse_html keeps them linear
    started = time.monotonic()
    try:
        extract(payload.encode(), filename="evil.html", limits=LIMITS)
    except IngestError:
        pass
    assert time.monotonic() - started < 5


def test_markdown_pathological_input_is_fast():
    payload = ("[" * 200_000 + "](x)" + "*" * 200_000 + "_a" * 100_000 + "#" + " " * 100_000 + "x").encode()
    started = time.monotonic()
    extract(payload, filename="evil.md", limits=LIMITS)
    assert time.monotonic() - started < 5


# --- property tests -------------------------------------------------------------

EXTENSIONS = ["a.txt", "a.md", "a.html", "a.pdf", "a.docx", "a.pptx", "a.xlsx", "a.png", None]
PREFIXES = [b"", b"%PDF-1.7\n", b"PK\x03\x04", b"<!doctype html>", b"\xef\xbb\xbf", b"\xff\xfe"]


@settings(max_examples=200, deadline=timedelta(seconds=2), database=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.sampled_from(PREFIXES), body=st.binary(max_size=4096), filename=st.sampled_from(EXTENSIONS))
def test_arbitrary_bytes_only_raise_ingest_error(prefix, body, filename):
    try:
        doc = extract(prefix + body, filename=filename, limits=LIMITS)
    except IngestError as exc:
        assert exc.message
        return
    _check_offsets(doc)


_SAMPLES = {"d.pdf": fx.make_pdf(), "d.docx": fx.make_docx(), "d.pptx": fx.make_pptx(), "d.xlsx": fx.make_xlsx()}
# Damaging the XML inside a valid zip reaches the XML parsers, not just zipfile's CRC check.
_INNER = {"d.docx": "word/document.xml", "d.pptx": "ppt/slides/slide3.xml", "d.xlsx": "xl/worksheets/sheet1.xml"}


@settings(max_examples=150, deadline=timedelta(seconds=3), database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    filename=st.sampled_from(sorted(_SAMPLES)),
    inner=st.booleans(),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=8),
)
def test_damaged_real_documents_only_raise_ingest_error(filename, inner, flips):
    member = _INNER.get(filename) if inner else None
    data = bytearray(fx.read_zip_member(_SAMPLES[filename], member) if member else _SAMPLES[filename])
    for where, xor in flips:
        data[int(where * len(data))] ^= xor
    if member:
        data = bytearray(fx.replace_zip_member(_SAMPLES[filename], member, bytes(data)))
    try:
        _check_offsets(extract(bytes(data), filename=filename, limits=LIMITS))
    except IngestError as exc:
        assert exc.message
