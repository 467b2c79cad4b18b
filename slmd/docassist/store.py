"""The per-app registry of open documents: id -> prepared prompt prefix and
metadata. Every lookup names the calling app; another app's id is reported
exactly like an unknown one, so ids never leak across apps.

Bounded per app (least recently used documents are closed first) and in time
(a document expires `ttl_seconds` after its last use). What tasks derive from
a document (its retrieval index, chunk embeddings, part summaries) lives in
the document's `DerivedState` and goes with it; when all documents' derived
state passes `max_derived_bytes`, or a memory-pressure source calls `shed`,
that of the least recently used documents is dropped first (it is rebuilt
on the next use). Used only from the server's event loop, so it needs no
lock."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slmd.docassist.chunking import ChunkedDocument
from slmd.docassist.formats import DocFormat


@dataclass
class DerivedState:
    """What tasks computed from a document, kept for the next task on it."""

    bm25: Any = None  # retrieval.Bm25Index over all chunks
    embeddings: np.ndarray | None = None  # one unit row per chunk (hybrid retrieval)
    part_summaries: dict[tuple, str] = field(default_factory=dict)  # map-reduce parts, by part key
    part_tasks: dict[tuple, Any] = field(default_factory=dict)  # asyncio.Tasks summarizing a part now

    @property
    def num_bytes(self) -> int:
        size = self.bm25.num_bytes if self.bm25 is not None else 0
        size += self.embeddings.nbytes if self.embeddings is not None else 0
        return size + sum(len(s.encode("utf-8")) + 64 for s in self.part_summaries.values())

    def clear(self) -> int:
        """Drop everything (in-flight part summaries finish for their callers but
        are not kept); returns the bytes freed."""
        freed = self.num_bytes
        self.bm25, self.embeddings = None, None
        self.part_summaries = {}
        self.part_tasks = {}
        return freed


@dataclass
class PreparedDocument:
    """A document ready for the task prompts: its shared prefix and what it holds."""

    format: DocFormat
    num_pages: int
    chunked: ChunkedDocument
    prefix_ids: list[int]  # system prompt + document; identical for every task
    derived: DerivedState = field(default_factory=DerivedState)


@dataclass
class StoredDocument:
    document_id: str
    app_id: str
    doc: PreparedDocument
    last_used: float = field(default_factory=time.monotonic)
    on_close: Callable[[], None] | None = None  # e.g. cancel the warm-up prefill
    warmup: Any = None  # the asyncio.Task prefilling the prefix, while it runs


class DocumentStore:
    def __init__(self, max_per_app: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic,
                 max_derived_bytes: int | None = None) -> None:
        self.max_per_app = max_per_app
        self.ttl_seconds = ttl_seconds
        self.max_derived_bytes = max_derived_bytes
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

    def derived_bytes(self) -> int:
        return sum(e.doc.derived.num_bytes for docs in self._apps.values() for e in docs.values())

    def shed(self, num_bytes: int) -> int:
        """Drop derived state, least recently used documents first, until
        `num_bytes` are freed (or none is left); returns the bytes freed. The
        documents stay open: their state is rebuilt when next used."""
        entries = sorted((e for docs in self._apps.values() for e in docs.values()), key=lambda e: e.last_used)
        freed = 0
        for entry in entries:
            if freed >= num_bytes:
                break
            freed += entry.doc.derived.clear()
        return freed

    def enforce_derived_bound(self) -> int:
        """Shed down to `max_derived_bytes` (after a task added state); returns bytes freed."""
        if self.max_derived_bytes is None:
            return 0
        excess = self.derived_bytes() - self.max_derived_bytes
        return self.shed(excess) if excess > 0 else 0

    def num_documents(self, app_id: str | None = None) -> int:
        if app_id is not None:
            return len(self._apps.get(app_id, ()))
        return sum(len(d) for d in self._apps.values())


def _closed(entry: StoredDocument) -> None:
    for task in entry.doc.derived.part_tasks.values():
        task.cancel()
    entry.doc.derived.clear()
    if entry.on_close is not None:
        entry.on_close()
