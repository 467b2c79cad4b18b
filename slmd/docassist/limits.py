"""Limits on what one document may cost, and the running account a parser
keeps against them while it reads. Documents come from untrusted apps, so
every parser checks the budget between pages, rows and paragraphs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from slmd.docassist.errors import IngestError, IngestErrorReason, format_sizes

MIB = 1 << 20


@dataclass(frozen=True)
class IngestLimits:
    max_bytes: int = 20 * MIB  # the file as sent
    max_pages: int = 200  # PDF pages, slides or sheets
    max_chars: int = 2_000_000  # extracted text after whitespace normalization
    max_unpacked_bytes: int = 100 * MIB  # sum of declared zip member sizes (OOXML)
    max_seconds: float = 30.0  # checked between pages/rows, not a hard kill

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pages", "max_chars", "max_unpacked_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"IngestLimits.{name} must be >= 1")
        if self.max_seconds <= 0:
            raise ValueError("IngestLimits.max_seconds must be > 0")


# Raw text may be mostly whitespace that normalization removes, so parsers stop
# only at this multiple of max_chars; the exact check runs on the final text.
RAW_CHARS_FACTOR = 4


@dataclass
class Budget:
    """What one `extract` call has spent so far; raises IngestError when over."""

    limits: IngestLimits
    started: float = field(default_factory=time.monotonic)
    num_raw_chars: int = 0

    def check_pages(self, num_pages: int, noun: str) -> None:
        if num_pages > self.limits.max_pages:
            raise IngestError(
                IngestErrorReason.TOO_MANY_PAGES,
                f"document has {num_pages:,} {noun}; the limit is {self.limits.max_pages:,} (docs.max_pages)",
            )

    def check_unpacked(self, num_bytes: int) -> None:
        if num_bytes > self.limits.max_unpacked_bytes:
            actual, limit = format_sizes(num_bytes, self.limits.max_unpacked_bytes)
            raise IngestError(
                IngestErrorReason.TOO_LARGE,
                f"document unpacks to {actual}; the limit is {limit} (docs.max_unpacked_bytes)",
            )

    def check_time(self) -> None:
        elapsed = time.monotonic() - self.started
        if elapsed > self.limits.max_seconds:
            raise IngestError(
                IngestErrorReason.TOO_LARGE,
                f"reading the document took over {elapsed:.1f} s; the limit is "
                f"{self.limits.max_seconds:g} s (docs.max_seconds)",
            )

    def spend_chars(self, num_chars: int) -> None:
        """Count raw text as it is produced; also a good moment to check the clock."""
        self.num_raw_chars += num_chars
        if self.num_raw_chars > self.limits.max_chars * RAW_CHARS_FACTOR:
            raise IngestError(
                IngestErrorReason.TOO_LARGE,
                f"document text is over {self.limits.max_chars * RAW_CHARS_FACTOR:,} characters "
                f"before cleanup; the limit is {self.limits.max_chars:,} (docs.max_chars)",
            )
        self.check_time()

    def check_chars(self, num_chars: int) -> None:
        """The exact check, on normalized text."""
        if num_chars > self.limits.max_chars:
            raise IngestError(
                IngestErrorReason.TOO_LARGE,
                f"document text is {num_chars:,} characters; the limit is {self.limits.max_chars:,} (docs.max_chars)",
            )
