"""Plain values for the Documents service and the request builders behind
`slmd_client.documents`.

A document argument is one of:
- `OpenedDocument` (from `open`) or `DocumentId("doc-...")`: an open document;
- `str`: inline plain text;
- `bytes`: an inline file (pass `filename=` so the format can be told);
- `pathlib.Path` (any `os.PathLike`): a file read and sent inline."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Union

from slmd_client._proto.slmd.v1 import common_pb2, documents_pb2 as pb
from slmd_client.datatypes import FinishReason, Priority, PriorityLike, Usage

STYLES = {"tldr": pb.SUMMARY_STYLE_TLDR, "key-points": pb.SUMMARY_STYLE_KEY_POINTS,
          "teaser": pb.SUMMARY_STYLE_TEASER, "headline": pb.SUMMARY_STYLE_HEADLINE}
LENGTHS = {"short": pb.SUMMARY_LENGTH_SHORT, "medium": pb.SUMMARY_LENGTH_MEDIUM, "long": pb.SUMMARY_LENGTH_LONG}
DETECTORS = {"rules-then-model": pb.INTENT_DETECTOR_RULES_THEN_MODEL, "model": pb.INTENT_DETECTOR_MODEL,
             "rules": pb.INTENT_DETECTOR_RULES}
_INTENTS = {pb.INTENT_SUMMARIZE: "summarize", pb.INTENT_SUGGEST: "suggest", pb.INTENT_ANSWER: "answer",
            pb.INTENT_OTHER: "other"}
_SOURCES = {pb.INTENT_SOURCE_RULES: "rules", pb.INTENT_SOURCE_MODEL: "model"}


class DocumentId(str):
    """An id from OpenDocument, to tell it apart from inline text."""


@dataclass(frozen=True)
class DocumentInfo:
    format: str  # "pdf", "docx", ...
    num_pages: int
    num_tokens: int
    num_kept_tokens: int
    token_budget: int
    is_truncated: bool
    chunk_labels: tuple[str, ...]
    num_prefix_tokens: int
    num_document_chunks: int = 0  # of the whole text (tasks on a truncated document choose among them)

    @classmethod
    def from_proto(cls, msg: pb.DocumentInfo) -> DocumentInfo:
        name = pb.DocumentFormat.Name(msg.format).removeprefix("DOCUMENT_FORMAT_").lower()
        return cls(format=name, num_pages=msg.num_pages, num_tokens=msg.num_tokens,
                   num_kept_tokens=msg.num_kept_tokens, token_budget=msg.token_budget,
                   is_truncated=msg.is_truncated, chunk_labels=tuple(msg.chunk_labels),
                   num_prefix_tokens=msg.num_prefix_tokens, num_document_chunks=msg.num_document_chunks)


@dataclass(frozen=True)
class Citation:
    """A chunk of the document an answer (or the suggested questions) drew on."""

    chunk_index: int  # 0-based among all chunks of the document
    label: str  # where it starts: "page 14", "slide 3", "document"
    snippet: str
    score: float  # relevance to the question (BM25); 0 where not ranked

    @classmethod
    def from_proto(cls, msg: pb.Citation) -> Citation:
        return cls(chunk_index=msg.chunk_index, label=msg.label, snippet=msg.snippet, score=msg.score)


def _citations(msg: Any) -> tuple[Citation, ...]:
    return tuple(Citation.from_proto(c) for c in getattr(msg, "citations", ()))


@dataclass(frozen=True)
class SummaryProgress:
    """Where a long document's map-reduce summary stands."""

    num_parts: int
    num_parts_done: int
    num_cached_parts: int
    part_label: str  # the part just done: "pages 3-5"
    is_reducing: bool  # all parts done; the final summary streams next

    @classmethod
    def from_proto(cls, msg: pb.SummaryProgress) -> SummaryProgress:
        return cls(num_parts=msg.num_parts, num_parts_done=msg.num_parts_done, num_cached_parts=msg.num_cached_parts,
                   part_label=msg.part_label, is_reducing=msg.is_reducing)


@dataclass(frozen=True)
class OpenedDocument:
    document_id: str
    info: DocumentInfo
    expires_in_seconds: float


@dataclass(frozen=True)
class InputMeasure:
    """Like Chrome's measureInputUsage: tokens, budget, and whether the model
    would see only the first part of the document."""

    info: DocumentInfo
    context_window: int
    max_token_budget: int

    @property
    def num_tokens(self) -> int:
        return self.info.num_tokens

    @property
    def token_budget(self) -> int:
        return self.info.token_budget

    @property
    def would_truncate(self) -> bool:
        return self.info.is_truncated


@dataclass(frozen=True)
class DocChunk:
    """One streamed message of Summarize, Ask or Assist. The first carries
    `info` (and for Assist the intent); the last `finish_reason` and `usage`."""

    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    info: DocumentInfo | None = None
    intent: str | None = None  # Assist: "summarize", "suggest", "answer" or "other"
    intent_source: str | None = None  # "rules" or "model"
    questions: tuple[str, ...] = ()  # Assist with intent "suggest", last message
    citations: tuple[Citation, ...] = ()  # Ask/Assist, last message: the chunks the answer came from
    progress: SummaryProgress | None = None  # Summarize/Assist on a long document, before the text

    @classmethod
    def from_proto(cls, msg: Any) -> DocChunk:
        intent = getattr(msg, "intent", 0)
        has_progress = "progress" in msg.DESCRIPTOR.fields_by_name and msg.HasField("progress")
        return cls(text=msg.text, finish_reason=FinishReason.from_proto(msg.finish_reason),
                   usage=Usage.from_proto(msg.usage) if msg.HasField("usage") else None,
                   info=DocumentInfo.from_proto(msg.info) if msg.HasField("info") else None,
                   intent=_INTENTS.get(intent), intent_source=_SOURCES.get(getattr(msg, "intent_source", 0)),
                   questions=tuple(getattr(msg, "questions", ())), citations=_citations(msg),
                   progress=SummaryProgress.from_proto(msg.progress) if has_progress else None)


@dataclass
class DocResult:
    """A whole stream of DocChunks joined."""

    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    info: DocumentInfo | None = None
    intent: str | None = None
    intent_source: str | None = None
    questions: tuple[str, ...] = ()
    citations: tuple[Citation, ...] = ()
    progress: list[SummaryProgress] = field(default_factory=list)
    parts: list[str] = field(default_factory=list, repr=False)

    def add(self, chunk: DocChunk) -> None:
        self.parts.append(chunk.text)
        self.text = "".join(self.parts)
        for name in ("finish_reason", "usage", "info", "intent", "intent_source"):
            if getattr(chunk, name) is not None:
                setattr(self, name, getattr(chunk, name))
        if chunk.questions:
            self.questions = chunk.questions
        if chunk.citations:
            self.citations = chunk.citations
        if chunk.progress is not None:
            self.progress.append(chunk.progress)


@dataclass(frozen=True)
class Questions:
    questions: tuple[str, ...]
    finish_reason: FinishReason | None
    usage: Usage | None
    info: DocumentInfo | None
    citations: tuple[Citation, ...] = ()  # the chunks the questions were drawn from

    @classmethod
    def from_proto(cls, msg: pb.SuggestQuestionsResponse) -> Questions:
        return cls(questions=tuple(msg.questions), finish_reason=FinishReason.from_proto(msg.finish_reason),
                   usage=Usage.from_proto(msg.usage) if msg.HasField("usage") else None,
                   info=DocumentInfo.from_proto(msg.info) if msg.HasField("info") else None,
                   citations=_citations(msg))


DocumentLike = Union[OpenedDocument, DocumentId, str, bytes, "os.PathLike[str]"]


def document_file(data: bytes, filename: str | None, mime_type: str | None) -> pb.DocumentFile:
    return pb.DocumentFile(data=data, filename=filename or "", mime_type=mime_type or "")


def source(document: DocumentLike | None, *, filename: str | None = None, mime_type: str | None = None,
           token_budget: int | None = None) -> pb.DocumentSource:
    out = pb.DocumentSource(token_budget=token_budget or 0)
    if document is None:
        return out
    if isinstance(document, OpenedDocument):
        out.document_id = document.document_id
    elif isinstance(document, DocumentId):
        out.document_id = str(document)
    elif isinstance(document, str):
        out.text = document
    elif isinstance(document, (bytes, bytearray, memoryview)):
        out.file.CopyFrom(document_file(bytes(document), filename, mime_type))
    elif isinstance(document, os.PathLike):
        path = os.fspath(document)
        with open(path, "rb") as f:
            out.file.CopyFrom(document_file(f.read(), filename or os.path.basename(path), mime_type))
    else:
        raise TypeError(f"a document is an OpenedDocument, DocumentId, str, bytes or path; got {type(document)}")
    return out


def sampling(max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
             top_k: int | None = None, repetition_penalty: float | None = None, seed: int | None = None,
             stop: str | Iterable[str] | None = None) -> common_pb2.SamplingParams:
    out = common_pb2.SamplingParams()
    for name, value in (("max_tokens", max_tokens), ("temperature", temperature), ("top_p", top_p),
                        ("top_k", top_k), ("repetition_penalty", repetition_penalty), ("seed", seed)):
        if value is not None:
            setattr(out, name, value)
    if stop is not None:
        out.stop.extend([stop] if isinstance(stop, str) else list(stop))
    return out


def priority(value: PriorityLike | None) -> int:
    return Priority.parse(value).to_proto() if value is not None else common_pb2.PRIORITY_UNSPECIFIED


def choice(table: dict[str, int], value: str | None, what: str) -> int:
    if value is None:
        return 0
    try:
        return table[value.strip().lower().replace("_", "-")]
    except KeyError:
        raise ValueError(f"unknown {what} {value!r}; expected one of: {', '.join(table)}") from None
