"""Sample documents built in memory, each with planted text per page, slide
or sheet, plus helpers that damage them in specific ways."""

from __future__ import annotations

import io
import struct
import zipfile

PDF_PAGES = ("Alpha planted on page one", "Bravo planted on page two", "Charlie planted on page three")


def make_pdf(pages: tuple[str, ...] = PDF_PAGES) -> bytes:
    """One line of text per page; an empty string makes a blank page."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    out = io.BytesIO()
    pdf = canvas.Canvas(out, pagesize=A4, invariant=True)
    for text in pages:
        if text:
            pdf.drawString(72, 720, text)
        pdf.showPage()
    pdf.save()
    return out.getvalue()


def make_encrypted_pdf(user_password: str, owner_password: str = "owner") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf())))
    writer.encrypt(user_password=user_password, owner_password=owner_password, algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_docx() -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("Quarterly Delta Report", level=1)
    document.add_paragraph("Echo paragraph before the table.")
    table = document.add_table(rows=2, cols=3)
    for col, text in enumerate(("Region", "Revenue", "Owner")):
        table.cell(0, col).text = text
    for col, text in enumerate(("Foxtrot North", "1200", "Golf Team")):
        table.cell(1, col).text = text
    document.add_paragraph("Hotel paragraph after the table.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


PPTX_SLIDES = (
    ("Kilo title one", "Lima body one", "Mike notes one"),
    ("November title two", "Oscar body two", "Papa notes two"),
    ("Quebec title three", "Romeo body three", ""),
)


def make_pptx(slides: tuple[tuple[str, str, str], ...] = PPTX_SLIDES, *, table_on_last: bool = True) -> bytes:
    """Title-and-content slides with (title, body, notes); the last gets a table."""
    import pptx
    from pptx.util import Inches

    presentation = pptx.Presentation()
    layout = presentation.slide_layouts[1]
    for title, body, notes in slides:
        slide = presentation.slides.add_slide(layout)
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
        if notes:
            slide.notes_slide.notes_text_frame.text = notes
    if table_on_last and slides:
        shape = slide.shapes.add_table(2, 2, Inches(1), Inches(5.5), Inches(6), Inches(1))
        for (row, col), text in {(0, 0): "Sierra", (0, 1): "Tango", (1, 0): "Uniform", (1, 1): "42"}.items():
            shape.table.cell(row, col).text = text
    out = io.BytesIO()
    presentation.save(out)
    return out.getvalue()


def make_xlsx(num_sheets: int = 2) -> bytes:
    """Sheet "Budget" with a header, numbers and an empty row; sheet "Notes"; more sheets if asked."""
    import openpyxl

    workbook = openpyxl.Workbook()
    budget = workbook.active
    budget.title = "Budget"
    budget.append(["Item", "Cost", "Approved"])
    budget.append(["Victor laptop", 1200, True])
    budget.append(["Whiskey desk", 350.5, False])
    budget.cell(row=6, column=1, value="Xray total")  # rows 4-5 stay empty
    budget.cell(row=6, column=2, value=1550.5)
    notes = workbook.create_sheet("Notes")
    notes["B3"] = "Yankee planted note"
    for index in range(2, num_sheets):
        workbook.create_sheet(f"Extra {index}")["A1"] = f"extra {index}"
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


HTML_PAGE = """<!DOCTYPE html>
<html><head><title>Zulu page</title><style>body { color: red }</style>
<script>var secret = "script text must go";</script></head>
<body><nav><a href="/">Home</a> <a href="/menu">Menu link text</a></nav>
<h1>Alpha heading</h1>
<p>Bravo paragraph
that wraps in the source.</p>
<p>Charlie &amp; <b>bold</b> text.<br>After break.</p>
<ul><li>Delta item</li><li>Echo item</li></ul>
<table><tr><th>Key</th><th>Value</th></tr><tr><td>Foxtrot</td><td>7</td></tr></table>
<!-- a comment that must not appear -->
</body></html>
"""

MARKDOWN_DOC = """# Golf heading #

Hotel paragraph with **bold**, _emphasis_, `code` and a [India link](https://example.invalid/x), \\*stars\\*.

![Juliet image](pic.png)

* Kilo item
* Lima item with snake_case_name

> Mike quote

| Col | Val |
|-----|----:|
| November | 1 |

Setext heading
==============

[ref]: https://example.invalid/ref
"""


def replace_zip_member(data: bytes, name: str, content: bytes) -> bytes:
    """The same zip with one member's content replaced (a valid zip)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, content if info.filename == name else src.read(info.filename))
    return out.getvalue()


def read_zip_member(data: bytes, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.read(name)


def add_zip_member(data: bytes, name: str, content: bytes) -> bytes:
    out = io.BytesIO(data)
    with zipfile.ZipFile(out, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, content)
    return out.getvalue()


def declare_huge_size(data: bytes, name: str, size: int = 0xFFFF_FFF0) -> bytes:
    """Patch the central directory so `name` claims to unpack to `size` bytes (a zip bomb's signature)."""
    patched = bytearray(data)
    encoded = name.encode()
    pos = patched.find(b"PK\x01\x02")
    while pos >= 0:
        name_len = struct.unpack_from("<H", patched, pos + 28)[0]
        if bytes(patched[pos + 46 : pos + 46 + name_len]) == encoded:
            struct.pack_into("<I", patched, pos + 24, size)
            return bytes(patched)
        pos = patched.find(b"PK\x01\x02", pos + 4)
    raise KeyError(name)


def damage_member_data(data: bytes, name: str) -> bytes:
    """Flip bytes inside one member's compressed data, leaving the zip directory intact."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(name)
    header = info.header_offset
    name_len, extra_len = struct.unpack_from("<HH", data, header + 26)
    start = header + 30 + name_len + extra_len
    damaged = bytearray(data)
    for offset in range(start + 2, start + min(info.compress_size, 40)):
        damaged[offset] ^= 0x5A
    return bytes(damaged)
