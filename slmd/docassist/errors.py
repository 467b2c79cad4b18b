"""The one exception document ingestion raises, with a reason the server maps
to a status code and a message meant for the app developer who sent the file."""

from __future__ import annotations

from enum import Enum


class IngestErrorReason(Enum):
    UNSUPPORTED_FORMAT = "unsupported_format"
    TOO_LARGE = "too_large"  # bytes, unpacked bytes, characters or reading time
    TOO_MANY_PAGES = "too_many_pages"
    CORRUPT = "corrupt"
    ENCRYPTED = "encrypted"
    EMPTY = "empty"


class IngestError(ValueError):
    """A document that cannot be turned into text; `reason` says why."""

    def __init__(self, reason: IngestErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __repr__(self) -> str:
        return f"IngestError({self.reason.name}, {self.message!r})"


_UNITS = (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def format_size(num_bytes: int) -> str:
    """`25.3 MiB`, `20 MiB`, `512 bytes`: short, for error messages."""
    for unit, scale in _UNITS:
        if num_bytes >= scale:
            value = num_bytes / scale
            return f"{value:.0f} {unit}" if num_bytes % scale == 0 else f"{value:.1f} {unit}"
    return f"{num_bytes} bytes"


def format_sizes(actual: int, limit: int) -> tuple[str, str]:
    """Both sizes short, unless rounding would make them look equal."""
    shown_actual, shown_limit = format_size(actual), format_size(limit)
    (a_value, a_unit), (l_value, l_unit) = shown_actual.split(), shown_limit.split()
    if a_unit == l_unit and float(a_value) == float(l_value):
        return f"{actual:,} bytes", f"{limit:,} bytes"
    return shown_actual, shown_limit


def short_complaint(exc: BaseException, max_chars: int = 160) -> str:
    """A parser's exception as one short line: 'BadZipFile: File is not a zip file'."""
    text = " ".join(str(exc).split())
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
