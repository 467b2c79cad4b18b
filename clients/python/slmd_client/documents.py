"""Document assistance: summaries, suggested questions, answers and free-form
requests about a document (the daemon's Documents service).

    async with AsyncClient() as slm:
        docs = slm.documents
        doc = await docs.open(Path("report.pdf"))       # prefill starts now
        async for chunk in docs.summarize(doc, style="key-points"):
            print(chunk.text, end="")
        print((await docs.suggest_questions(doc)).questions)
        answer = await docs.collect(docs.ask(doc, "Who signed it?"))
        await docs.close(doc)

    with Client() as slm:                               # the same, blocking
        print(slm.documents.collect(slm.documents.assist(Path("deck.pptx"), "tl;dr please")).text)

See `slmd_client.doc_types` for what a document argument may be. Sampling
keywords (max_tokens, temperature, top_p, top_k, repetition_penalty, seed,
stop) override the task's defaults."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from slmd_client._proto.slmd.v1 import documents_pb2 as pb
from slmd_client._proto.slmd.v1 import documents_pb2_grpc
from slmd_client.datatypes import PriorityLike
from slmd_client.doc_types import (
    DETECTORS,
    LENGTHS,
    STYLES,
    Citation,
    DocChunk,
    DocResult,
    DocumentId,
    DocumentInfo,
    DocumentLike,
    InputMeasure,
    OpenedDocument,
    Questions,
    SummaryProgress,
    choice,
    sampling,
    source,
)
from slmd_client.doc_types import priority as _prio
from slmd_client.errors import from_rpc_error

if TYPE_CHECKING:
    from slmd_client.client import AsyncClient
    from slmd_client.sync import Client


def _open_request(document: str | bytes | Any, filename: str | None, mime_type: str | None,
                  token_budget: int | None, prio: PriorityLike | None) -> pb.OpenDocumentRequest:
    src = source(document, filename=filename, mime_type=mime_type, token_budget=token_budget)
    which = src.WhichOneof("source")
    if which not in ("text", "file"):
        raise TypeError("open() takes text, bytes or a path")
    req = pb.OpenDocumentRequest(token_budget=src.token_budget, priority=_prio(prio))
    if which == "text":
        req.text = src.text
    else:
        req.file.CopyFrom(src.file)
    return req


def _opened(resp: pb.OpenDocumentResponse) -> OpenedDocument:
    return OpenedDocument(resp.document_id, DocumentInfo.from_proto(resp.info), resp.expires_in_seconds)


def _doc_id(document: OpenedDocument | str) -> str:
    return document.document_id if isinstance(document, OpenedDocument) else str(document)


def _summarize_request(document, style, length, prio, kw) -> pb.SummarizeRequest:
    return pb.SummarizeRequest(document=_source(document, kw), style=choice(STYLES, style, "style"),
                               length=choice(LENGTHS, length, "length"), sampling=sampling(**kw),
                               priority=_prio(prio))


def _source(document, kw: dict) -> pb.DocumentSource:
    return source(document, filename=kw.pop("filename", None), mime_type=kw.pop("mime_type", None),
                  token_budget=kw.pop("token_budget", None))


def _assist_request(document, request, detector, detect_only, prio, kw) -> pb.AssistRequest:
    return pb.AssistRequest(document=_source(document, kw), request=request, sampling=sampling(**kw),
                            priority=_prio(prio), detector=choice(DETECTORS, detector, "detector"),
                            detect_only=detect_only)


class AsyncDocuments:
    """The Documents service on an AsyncClient's channel (`client.documents`)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._stub = documents_pb2_grpc.DocumentsStub(client.channel)

    def _kw(self, timeout: float | None) -> dict[str, Any]:
        return self._client._settings.call_kwargs(timeout)

    async def _unary(self, method, request, timeout):
        try:
            return await method(request, **self._kw(timeout))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    async def _stream(self, method, request, timeout) -> AsyncIterator[DocChunk]:
        call = method(request, **self._kw(timeout))
        try:
            async for resp in call:
                yield DocChunk.from_proto(resp)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        finally:
            call.cancel()

    async def open(self, document: str | bytes | Any, *, filename: str | None = None, mime_type: str | None = None,
                   token_budget: int | None = None, priority: PriorityLike | None = None,
                   timeout: float | None = None) -> OpenedDocument:
        req = _open_request(document, filename, mime_type, token_budget, priority)
        return _opened(await self._unary(self._stub.OpenDocument, req, timeout))

    async def close(self, document: OpenedDocument | str, *, timeout: float | None = None) -> None:
        await self._unary(self._stub.CloseDocument, pb.CloseDocumentRequest(document_id=_doc_id(document)), timeout)

    async def measure(self, document: DocumentLike, *, timeout: float | None = None, **kw: Any) -> InputMeasure:
        resp = await self._unary(self._stub.MeasureInput, pb.MeasureInputRequest(document=_source(document, kw)),
                                 timeout)
        return InputMeasure(DocumentInfo.from_proto(resp.info), resp.context_window, resp.max_token_budget)

    def summarize(self, document: DocumentLike, *, style: str | None = None, length: str | None = None,
                  priority: PriorityLike | None = None, timeout: float | None = None,
                  **kw: Any) -> AsyncIterator[DocChunk]:
        """style: tldr, key-points, teaser, headline; length: short, medium, long."""
        req = _summarize_request(document, style, length, priority, kw)
        return self._stream(self._stub.Summarize, req, timeout)

    async def suggest_questions(self, document: DocumentLike, num_questions: int = 0, *,
                                priority: PriorityLike | None = None, timeout: float | None = None,
                                **kw: Any) -> Questions:
        req = pb.SuggestQuestionsRequest(document=_source(document, kw), num_questions=num_questions,
                                         sampling=sampling(**kw), priority=_prio(priority))
        return Questions.from_proto(await self._unary(self._stub.SuggestQuestions, req, timeout))

    def ask(self, document: DocumentLike, question: str, *, priority: PriorityLike | None = None,
            timeout: float | None = None, **kw: Any) -> AsyncIterator[DocChunk]:
        req = pb.AskRequest(document=_source(document, kw), question=question, sampling=sampling(**kw),
                            priority=_prio(priority))
        return self._stream(self._stub.Ask, req, timeout)

    def assist(self, document: DocumentLike | None, request: str, *, detector: str | None = None,
               detect_only: bool = False, priority: PriorityLike | None = None, timeout: float | None = None,
               **kw: Any) -> AsyncIterator[DocChunk]:
        """detector: rules-then-model (default), model or rules. The first chunk carries the intent."""
        req = _assist_request(document, request, detector, detect_only, priority, kw)
        return self._stream(self._stub.Assist, req, timeout)

    @staticmethod
    async def collect(chunks: AsyncIterator[DocChunk]) -> DocResult:
        result = DocResult()
        async for chunk in chunks:
            result.add(chunk)
        return result


class Documents:
    """The Documents service on a blocking Client's channel (`client.documents`)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._stub = documents_pb2_grpc.DocumentsStub(client.channel)

    def _kw(self, timeout: float | None) -> dict[str, Any]:
        return self._client._settings.call_kwargs(timeout)

    def _unary(self, method, request, timeout):
        try:
            return method(request, **self._kw(timeout))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    def _stream(self, method, request, timeout) -> Iterator[DocChunk]:
        call = method(request, **self._kw(timeout))
        try:
            for resp in call:
                yield DocChunk.from_proto(resp)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        finally:
            call.cancel()

    def open(self, document: str | bytes | Any, *, filename: str | None = None, mime_type: str | None = None,
             token_budget: int | None = None, priority: PriorityLike | None = None,
             timeout: float | None = None) -> OpenedDocument:
        req = _open_request(document, filename, mime_type, token_budget, priority)
        return _opened(self._unary(self._stub.OpenDocument, req, timeout))

    def close(self, document: OpenedDocument | str, *, timeout: float | None = None) -> None:
        self._unary(self._stub.CloseDocument, pb.CloseDocumentRequest(document_id=_doc_id(document)), timeout)

    def measure(self, document: DocumentLike, *, timeout: float | None = None, **kw: Any) -> InputMeasure:
        resp = self._unary(self._stub.MeasureInput, pb.MeasureInputRequest(document=_source(document, kw)), timeout)
        return InputMeasure(DocumentInfo.from_proto(resp.info), resp.context_window, resp.max_token_budget)

    def summarize(self, document: DocumentLike, *, style: str | None = None, length: str | None = None,
                  priority: PriorityLike | None = None, timeout: float | None = None,
                  **kw: Any) -> Iterator[DocChunk]:
        req = _summarize_request(document, style, length, priority, kw)
        return self._stream(self._stub.Summarize, req, timeout)

    def suggest_questions(self, document: DocumentLike, num_questions: int = 0, *,
                          priority: PriorityLike | None = None, timeout: float | None = None,
                          **kw: Any) -> Questions:
        req = pb.SuggestQuestionsRequest(document=_source(document, kw), num_questions=num_questions,
                                         sampling=sampling(**kw), priority=_prio(priority))
        return Questions.from_proto(self._unary(self._stub.SuggestQuestions, req, timeout))

    def ask(self, document: DocumentLike, question: str, *, priority: PriorityLike | None = None,
            timeout: float | None = None, **kw: Any) -> Iterator[DocChunk]:
        req = pb.AskRequest(document=_source(document, kw), question=question, sampling=sampling(**kw),
                            priority=_prio(priority))
        return self._stream(self._stub.Ask, req, timeout)

    def assist(self, document: DocumentLike | None, request: str, *, detector: str | None = None,
               detect_only: bool = False, priority: PriorityLike | None = None, timeout: float | None = None,
               **kw: Any) -> Iterator[DocChunk]:
        req = _assist_request(document, request, detector, detect_only, priority, kw)
        return self._stream(self._stub.Assist, req, timeout)

    @staticmethod
    def collect(chunks: Iterator[DocChunk]) -> DocResult:
        result = DocResult()
        for chunk in chunks:
            result.add(chunk)
        return result


__all__ = ["AsyncDocuments", "Citation", "DocChunk", "DocResult", "DocumentId", "DocumentInfo", "Documents",
           "InputMeasure", "OpenedDocument", "Questions", "SummaryProgress"]
