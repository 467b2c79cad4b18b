"""The per-app registry of open documents: id -> prepared prompt prefix and
metadata. Every lookup names the calling app; another app's id is reported
exactly like an unknown one, so ids never leak across apps.

Bounded per app (least recently used documents are closed first) and in time
(a document expires `ttl_seconds` after its last use). Used only from the
server's event loop, so it needs no lock."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slmd.docassist.chunking import ChunkedDocument
from slmd.docassist.formats import DocFormat


@dataclass
class PreparedDocument:
    """A document ready for the task prompts: its shared prefix and what it holds."""

    format: DocFormat
    num_pages: int
    chunked: ChunkedDocument
    prefix_ids: list[int]  # system prompt + document; identical for every task


@dataclass
class StoredDocument:
    document_id: str
    app_id: str
    doc: PreparedDocument
    last_used: float = field(default_factory=time.monotonic)
    on_close: Callable[[], None] | None = None  # e.g. cancel the warm-up prefill
    warmup: Any = None  # the asyncio.Task prefilling the prefix, while it runs


class DocumentStore:
    def __init__(self, max_per_app: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_per_app = max_per_app
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._apps: dict[str, OrderedDict[str, StoredDocument]] = {}

    def add(self, app_id: str, doc: PreparedDocument) -> StoredDocument:
        self.expire()
        docs = self._apps.setdefault(app_id, OrderedDict())
        while len(docs) >= self.max_per_app:
            _, oldest = docs.popitem(last=False)
            _closed(oldest)
        entry = StoredDocument(document_id="doc-" + secrets.token_urlsafe(18), app_id=app_id, doc=doc,
                               last_used=self._clock())
        docs[entry.document_id] = entry
        return entry

    def get(self, app_id: str, document_id: str) -> StoredDocument | None:
        """The app's document, touched; None for unknown, expired or foreign ids."""
        self.expire()
        docs = self._apps.get(app_id)
        entry = docs.get(document_id) if docs is not None else None
        if entry is None:
            return None
        entry.last_used = self._clock()
        docs.move_to_end(document_id)
        return entry

    def close(self, app_id: str, document_id: str) -> bool:
        docs = self._apps.get(app_id)
        entry = docs.pop(document_id, None) if docs is not None else None
        if entry is None:
            return False
        _closed(entry)
        if not docs:
            del self._apps[app_id]
        return True

    def expire(self) -> int:
        """Close documents unused for longer than the TTL; returns how many."""
        cutoff = self._clock() - self.ttl_seconds
        num_closed = 0
        for app_id in list(self._apps):
            docs = self._apps[app_id]
            # OrderedDict order is last use: stop at the first fresh one.
            while docs:
                document_id, entry = next(iter(docs.items()))
                if entry.last_used > cutoff:
                    break
                del docs[document_id]
                _closed(entry)
                num_closed += 1
            if not docs:
                del self._apps[app_id]
        return num_closed

    def num_documents(self, app_id: str | None = None) -> int:
        if app_id is not None:
            return len(self._apps.get(app_id, ()))
        return sum(len(d) for d in self._apps.values())


def _closed(entry: StoredDocument) -> None:
    if entry.on_close is not None:
        entry.on_close()
