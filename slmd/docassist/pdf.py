"""PDF to text, page by page, with pypdf (pure Python, well kept, handles the
common encryptions). An encrypted PDF is tried with the empty password, which
is how "no password to open, restrictions only" PDFs are made."""

from __future__ import annotations

import io

from pypdf import PdfReader
from pypdf.errors import DependencyError, FileNotDecryptedError

from slmd.docassist.errors import IngestError, IngestErrorReason, short_complaint
from slmd.docassist.limits import Budget

RawSection = tuple[str, str]


def extract_pdf(data: bytes, budget: Budget) -> list[RawSection]:
    reader = PdfReader(io.BytesIO(data), strict=False)
    if reader.is_encrypted:
        _decrypt(reader)
    num_pages = len(reader.pages)
    if num_pages == 0:
        raise IngestError(IngestErrorReason.CORRUPT, "the PDF has no readable pages")
    budget.check_pages(num_pages, "pages")
    sections: list[RawSection] = []
    for number, page in enumerate(reader.pages, start=1):
        text = page.extract_text() or ""
        budget.spend_chars(len(text))
        sections.append((f"page {number}", text))
    return sections


def _decrypt(reader: PdfReader) -> None:
    try:
        opened = reader.decrypt("")
    except DependencyError as exc:  # AES needs the optional `cryptography` package
        raise IngestError(
            IngestErrorReason.ENCRYPTED, f"the PDF is encrypted in a way slmd cannot open ({short_complaint(exc)})"
        ) from None
    except FileNotDecryptedError:
        opened = 0
    if not opened:
        raise IngestError(
            IngestErrorReason.ENCRYPTED,
            "the PDF is password-protected; send a copy without a password to open it",
        )
