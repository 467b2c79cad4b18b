"""Word, PowerPoint and Excel (OOXML) to text with python-docx, python-pptx and
openpyxl. All three are zip archives of XML, so before any of them is parsed
the zip's declared member sizes are checked against a cap (Python's zipfile
never inflates a member past its declared size, so the check is sound)."""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from collections.abc import Iterable, Iterator

import docx
import openpyxl
import pptx
from docx.table import Table
from pptx.enum.shapes import MSO_SHAPE_TYPE

from slmd.docassist.errors import IngestError, IngestErrorReason
from slmd.docassist.limits import Budget

RawSection = tuple[str, str]
MAX_ZIP_MEMBERS = 10_000
MAX_CELL_CHARS = 1_000  # one spreadsheet cell; longer values end with "…"
MAX_COLUMNS = 256  # spreadsheet columns read per row
MAX_GROUP_DEPTH = 32  # nested shape groups in a slide
CELL_SEPARATOR = " | "


def check_zip(data: bytes, budget: Budget) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = archive.infolist()
    if len(members) > MAX_ZIP_MEMBERS:
        raise IngestError(
            IngestErrorReason.TOO_LARGE,
            f"the document has {len(members):,} zip members; the limit is {MAX_ZIP_MEMBERS:,}",
        )
    budget.check_unpacked(sum(member.file_size for member in members))


# --- Word ---------------------------------------------------------------------


def extract_docx(data: bytes, budget: Budget) -> list[RawSection]:
    check_zip(data, budget)
    document = docx.Document(io.BytesIO(data))
    blocks: list[str] = []
    for num, item in enumerate(document.iter_inner_content()):
        if num % 256 == 0:
            budget.check_time()
        if isinstance(item, Table):
            block = "\n".join(_row_line(cell.text for cell in _unique_cells(row.cells)) for row in item.rows)
            blocks.append(f"\n{block}\n")  # a table is its own paragraph
        else:
            block = item.text
            style = item.style.name if item.style is not None else ""
            blocks.append(f"\n{block}\n" if style.startswith(("Heading", "Title")) else block)
        budget.spend_chars(len(block))
    return [("document", "\n".join(blocks))]


def _unique_cells(cells: Iterable) -> Iterator:
    """A merged cell appears once per grid column it spans; keep it once."""
    previous = None
    for cell in cells:
        if previous is None or cell._tc is not previous._tc:
            yield cell
        previous = cell


# --- PowerPoint -------------------------------------------------------------


def extract_pptx(data: bytes, budget: Budget) -> list[RawSection]:
    check_zip(data, budget)
    presentation = pptx.Presentation(io.BytesIO(data))
    budget.check_pages(len(presentation.slides), "slides")
    sections: list[RawSection] = []
    for number, slide in enumerate(presentation.slides, start=1):
        blocks = [_shape_text(shape) for shape in _reading_order(slide)]
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            notes = slide.notes_slide.notes_text_frame.text
            if notes.strip():
                blocks.append(f"Notes: {notes}")
        text = "\n\n".join(block for block in blocks if block.strip()).replace("\v", "\n")
        budget.spend_chars(len(text))
        sections.append((f"slide {number}", text))
    return sections


def _reading_order(slide) -> list:
    """Title first, then shapes top to bottom, left to right (XML order is z-order)."""
    title = slide.shapes.title
    others = [shape for shape in _flatten_groups(slide.shapes) if title is None or shape.shape_id != title.shape_id]
    others.sort(key=lambda shape: (shape.top if shape.top is not None else 1 << 62, shape.left or 0))
    return ([title] if title is not None else []) + others


def _flatten_groups(shapes) -> Iterator:
    stack = [iter(shapes)]
    while stack:
        shape = next(stack[-1], None)
        if shape is None:
            stack.pop()
        elif shape.shape_type == MSO_SHAPE_TYPE.GROUP and len(stack) <= MAX_GROUP_DEPTH:
            stack.append(iter(shape.shapes))
        else:
            yield shape


def _shape_text(shape) -> str:
    if shape.has_text_frame:
        return shape.text_frame.text
    if getattr(shape, "has_table", False) and shape.has_table:
        return "\n".join(_row_line(cell.text for cell in row.cells) for row in shape.table.rows)
    return ""


# --- Excel ------------------------------------------------------------------


def extract_xlsx(data: bytes, budget: Budget) -> list[RawSection]:
    check_zip(data, budget)
    workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        sheets = workbook.worksheets  # chart sheets hold no text
        budget.check_pages(len(sheets), "sheets")
        sections: list[RawSection] = []
        for sheet in sheets:
            lines: list[str] = []
            for num, row in enumerate(sheet.iter_rows(max_col=MAX_COLUMNS, values_only=True)):
                if num % 1024 == 0:
                    budget.check_time()
                line = _row_line(_cell_text(value) for value in row)
                if line:
                    lines.append(line)
                    budget.spend_chars(len(line))
            sections.append((f"sheet {sheet.title}", "\n".join(lines)))
        return sections
    finally:
        workbook.close()


def _cell_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        text = "TRUE" if value else "FALSE"
    elif isinstance(value, float):
        text = str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.15g}"
    elif isinstance(value, dt.datetime):
        text = value.date().isoformat() if value.time() == dt.time() else value.isoformat(sep=" ")
    elif isinstance(value, (dt.date, dt.time)):
        text = value.isoformat()
    else:
        text = str(value)
    text = " ".join(text.split())  # a cell is one line
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"


def _row_line(cells: Iterable[str]) -> str:
    """Cells joined by ' | ', trailing empty cells dropped; '' for an empty row."""
    values = [" ".join(text.split()) for text in cells]
    while values and not values[-1]:
        values.pop()
    return CELL_SEPARATOR.join(values) if any(values) else ""
