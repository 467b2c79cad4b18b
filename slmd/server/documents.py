"""The Documents service: document assistance on top of the engine.

A document (opened, or inline in the request) becomes one prompt prefix:
system prompt + the kept chunks of its text. Every task appends its own
suffix (instruction, question, request), so all tasks on one document share
the prefix ids exactly and the engine's prefix cache serves them from one
prefill; OpenDocument starts that prefill right away (max_tokens=0).

A document longer than its token budget is handled by LongDocuments:
retrieval for answers, map-reduce for summaries, evenly spread chunks for
suggested questions."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable

import grpc
from llama_cpp.llama_grammar import json_schema_to_gbnf
from slmd_client._proto.slmd.v1 import common_pb2, documents_pb2

from slmd.config import DocsConfig
from slmd.core import Engine
from slmd.docassist import prompts
from slmd.docassist.chunking import chunk_document
from slmd.docassist.errors import IngestError
from slmd.docassist.formats import DocFormat
from slmd.docassist.ingest import IngestLimits, extract
from slmd.docassist.intent import INTENT_GRAMMAR, INTENT_MAX_TOKENS, Intent, IntentSource, intent_prompt, \
    parse_intent, rule_intent
from slmd.docassist.prompts import PromptLayout, SummaryLength, SummaryStyle
from slmd.docassist.retrieval import RetrievalMethod
from slmd.docassist.store import DocumentStore, PreparedDocument
from slmd.request import Priority, Request, RequestOutput, SamplingParams
from slmd.server import convert
from slmd.server.identity import IdentityResolver
from slmd.server.long_documents import LongDocuments
from slmd.server.status import RpcError, from_kind, invalid

log = logging.getLogger(__name__)
pb = documents_pb2

_FORMATS = {
    DocFormat.TEXT: pb.DOCUMENT_FORMAT_TEXT, DocFormat.MARKDOWN: pb.DOCUMENT_FORMAT_MARKDOWN,
    DocFormat.HTML: pb.DOCUMENT_FORMAT_HTML, DocFormat.PDF: pb.DOCUMENT_FORMAT_PDF,
    DocFormat.DOCX: pb.DOCUMENT_FORMAT_DOCX, DocFormat.PPTX: pb.DOCUMENT_FORMAT_PPTX,
    DocFormat.XLSX: pb.DOCUMENT_FORMAT_XLSX,
}
_STYLES = {
    pb.SUMMARY_STYLE_UNSPECIFIED: SummaryStyle.TLDR, pb.SUMMARY_STYLE_TLDR: SummaryStyle.TLDR,
    pb.SUMMARY_STYLE_KEY_POINTS: SummaryStyle.KEY_POINTS, pb.SUMMARY_STYLE_TEASER: SummaryStyle.TEASER,
    pb.SUMMARY_STYLE_HEADLINE: SummaryStyle.HEADLINE,
}
_LENGTHS = {
    pb.SUMMARY_LENGTH_UNSPECIFIED: SummaryLength.MEDIUM, pb.SUMMARY_LENGTH_SHORT: SummaryLength.SHORT,
    pb.SUMMARY_LENGTH_MEDIUM: SummaryLength.MEDIUM, pb.SUMMARY_LENGTH_LONG: SummaryLength.LONG,
}
_INTENTS = {Intent.SUMMARIZE: pb.INTENT_SUMMARIZE, Intent.SUGGEST: pb.INTENT_SUGGEST,
            Intent.ANSWER: pb.INTENT_ANSWER, Intent.OTHER: pb.INTENT_OTHER}
_SOURCES = {IntentSource.RULES: pb.INTENT_SOURCE_RULES, IntentSource.MODEL: pb.INTENT_SOURCE_MODEL}
_DETECTORS = (pb.INTENT_DETECTOR_UNSPECIFIED, pb.INTENT_DETECTOR_RULES_THEN_MODEL, pb.INTENT_DETECTOR_MODEL,
              pb.INTENT_DETECTOR_RULES)
DEFAULT_NUM_QUESTIONS = 3
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)+)"')


def _usage(out: RequestOutput) -> common_pb2.Usage:
    return common_pb2.Usage(
        prompt_tokens=out.num_prompt_tokens, completion_tokens=out.num_output_tokens,
        cached_prompt_tokens=out.num_cached_tokens, queue_seconds=out.queue_seconds,
        time_to_first_token_seconds=out.ttft_seconds, total_seconds=out.total_seconds)


def _finish(out: RequestOutput) -> int:
    return convert.FINISH_TO_PROTO.get(out.finish_reason, common_pb2.FINISH_REASON_UNSPECIFIED)


def _info(doc: PreparedDocument) -> pb.DocumentInfo:
    c = doc.chunked
    return pb.DocumentInfo(
        format=_FORMATS[doc.format], num_pages=doc.num_pages, num_tokens=c.num_tokens,
        num_kept_tokens=c.num_kept_tokens, token_budget=c.token_budget, is_truncated=c.is_truncated,
        num_chunks=len(c.chunks), chunk_labels=[ch.label for ch in c.chunks],
        num_prefix_tokens=len(doc.prefix_ids), num_document_chunks=len(c.all_chunks))


def _is_open(source: pb.DocumentSource) -> bool:
    return source.WhichOneof("source") == "document_id"


def parse_questions(text: str) -> list[str]:
    """The JSON list the grammar produced; the complete strings when it was cut short."""
    try:
        value = json.loads(text)
        if isinstance(value, list):
            return [str(q).strip() for q in value if str(q).strip()]
    except json.JSONDecodeError:
        pass
    return [q for q in map(_unquote, _QUOTED.findall(text)) if q]


def _unquote(body: str) -> str:
    # A model cut short or off its grammar may leave raw newlines or bad escapes in a string.
    try:
        return json.loads(f'"{body}"', strict=False).strip()
    except json.JSONDecodeError:
        return body.strip()


class DocumentsServicer:
    def __init__(self, engine: Engine, layout: PromptLayout, limits: convert.Limits, identity: IdentityResolver,
                 context_window: int, cfg: DocsConfig,
                 priority_for: Callable[[str, Priority | None], Priority] | None = None) -> None:
        self.engine = engine
        # the app's requested priority, capped by its policy (the same rule as Generation)
        self.priority_for = priority_for or (lambda app_id, requested: requested or Priority.NORMAL)
        self.layout = layout
        self.limits = limits
        self.identity = identity
        self.context_window = context_window
        self.cfg = cfg
        self.store = DocumentStore(cfg.max_documents_per_app, cfg.document_ttl_seconds,
                                   max_derived_bytes=cfg.max_derived_bytes)
        self.long = LongDocuments(engine, layout, self.store, RetrievalMethod(cfg.retrieval))
        self.ingest_limits = IngestLimits(max_bytes=cfg.max_bytes, max_pages=cfg.max_pages,
                                          max_chars=cfg.max_chars, max_seconds=cfg.max_seconds)
        self.max_token_budget = max(cfg.chunk_tokens, context_window - cfg.reserved_tokens)
        self.default_token_budget = min(cfg.chunk_tokens * cfg.max_chunks, self.max_token_budget)
        self._ingest_slots = asyncio.Semaphore(cfg.max_concurrent_ingests)
        self._warmups: set[asyncio.Task] = set()  # strong references until each one ends
        self._question_grammars: dict[int, str] = {}

    # ---- documents ------------------------------------------------------------

    def _budget(self, value: int, field: str) -> int:
        if value == 0:
            return self.default_token_budget
        if not 1 <= value <= self.max_token_budget:
            raise invalid(f"{field}.token_budget must be in [1, {self.max_token_budget}] (context window "
                          f"{self.context_window} minus docs.reserved_tokens); got {value}")
        return value

    def _prepare_sync(self, text: str | None, file: pb.DocumentFile | None, budget: int) -> PreparedDocument:
        if file is not None:
            doc = extract(file.data, filename=file.filename or None, mime_type=file.mime_type or None,
                          limits=self.ingest_limits)
        else:
            doc = extract(text.encode("utf-8", "surrogatepass"), mime_type="text/plain", limits=self.ingest_limits)
        chunked = chunk_document(doc, self.layout.tokenizer, chunk_tokens=self.cfg.chunk_tokens,
                                 token_budget=budget)
        return PreparedDocument(format=doc.format, num_pages=doc.num_pages, chunked=chunked,
                                prefix_ids=self.layout.prefix_ids(chunked.text))

    async def _prepare(self, which: str, text: str | None, file: pb.DocumentFile | None, budget: int,
                       field: str) -> PreparedDocument:
        if which == "text" and not text:
            raise invalid(f"{field}.text is empty")
        if which == "file" and not file.data:
            raise invalid(f"{field}.file.data is empty")
        async with self._ingest_slots:  # parsing is CPU-bound: off the event loop, a few at a time
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    None, self._prepare_sync, text, file, budget)
            except IngestError as e:
                raise invalid(f"{field}.{which}: {e.message} ({e.reason.value})") from None

    async def _document(self, source: pb.DocumentSource, app_id: str, field: str = "document") -> PreparedDocument:
        which = source.WhichOneof("source")
        if which == "document_id":
            entry = self.store.get(app_id, source.document_id)
            if entry is None:
                raise RpcError(grpc.StatusCode.NOT_FOUND, f"{field}.document_id: no open document "
                               f"{source.document_id[:64]!r} for this app (closed, expired or never opened)")
            if entry.warmup is not None and not entry.warmup.done():
                # Wait for the prefix prefill rather than run a second one beside it: the
                # cache only holds the prefix once that prefill ends. (asyncio.wait never
                # cancels the warm-up when this caller goes away.)
                await asyncio.wait({entry.warmup})
            return entry.doc
        if which is None:
            raise invalid(f"{field}: set document_id, text or file")
        budget = self._budget(source.token_budget, field)
        return await self._prepare(which, source.text, source.file if which == "file" else None, budget, field)

    async def OpenDocument(self, request, context):
        ident = self.identity.resolve(context)
        which = request.WhichOneof("input")
        if which is None:
            raise invalid("input: set text or file")
        prio = self.priority_for(ident.app_id, convert.priority(request.priority))
        doc = await self._prepare(which, request.text, request.file if which == "file" else None,
                                  self._budget(request.token_budget, "request"), "input")
        entry = self.store.add(ident.app_id, doc)
        task = asyncio.create_task(self._warm(entry.document_id, ident.app_id, doc, prio))
        self._warmups.add(task)
        task.add_done_callback(self._warmups.discard)
        entry.on_close, entry.warmup = task.cancel, task
        return pb.OpenDocumentResponse(document_id=entry.document_id, info=_info(doc),
                                       expires_in_seconds=self.cfg.document_ttl_seconds)

    async def _warm(self, document_id: str, app_id: str, doc: PreparedDocument, prio: Priority) -> None:
        """Prefill the shared prefix now, so the first task finds it cached."""
        req = Request(request_id=f"warm-{uuid.uuid4().hex}", prompt_ids=list(doc.prefix_ids),
                      sampling=SamplingParams(max_tokens=0), app_id=app_id, priority=prio)
        async for out in self.engine.stream(req):
            if out.finished and out.error_kind is not None:
                log.debug("warm-up of %s ended: %s", document_id, out.error)

    async def CloseDocument(self, request, context):
        ident = self.identity.resolve(context)
        if not self.store.close(ident.app_id, request.document_id):
            raise RpcError(grpc.StatusCode.NOT_FOUND,
                           f"document_id: no open document {request.document_id[:64]!r} for this app")
        return pb.CloseDocumentResponse()

    async def MeasureInput(self, request, context):
        ident = self.identity.resolve(context)
        doc = await self._document(request.document, ident.app_id)
        return pb.MeasureInputResponse(info=_info(doc), context_window=self.context_window,
                                       max_token_budget=self.max_token_budget)

    # ---- generation -------------------------------------------------------------

    def _sampling(self, sp: common_pb2.SamplingParams, max_tokens: int, grammar: str | None = None) -> SamplingParams:
        if sp.json_schema or sp.grammar:
            raise invalid("sampling: json_schema and grammar are not accepted by document tasks")
        params = convert.sampling(sp, self.limits, json_to_gbnf=json_schema_to_gbnf)
        defaults: dict = {"grammar": grammar}
        if not sp.HasField("max_tokens"):
            defaults["max_tokens"] = max_tokens
        if not sp.HasField("repetition_penalty") and grammar is None:
            defaults["repetition_penalty"] = prompts.REPETITION_PENALTY
        return dataclasses.replace(params, **defaults)

    async def _run(self, ids: list[int], sampling: SamplingParams, app_id: str, prio: Priority,
                   context) -> AsyncIterator[RequestOutput]:
        if len(ids) >= self.context_window:
            raise invalid(f"the prompt is {len(ids)} tokens; the context window is {self.context_window} "
                          f"tokens: lower document.token_budget or shorten the question")
        remaining = context.time_remaining()
        req = Request(request_id=uuid.uuid4().hex, prompt_ids=ids, sampling=sampling, app_id=app_id,
                      priority=prio, deadline=(time.monotonic() + remaining) if remaining is not None else None)
        async for out in self.engine.stream(req):
            if out.finished and out.error_kind is not None:
                raise from_kind(out.error_kind, f"request {req.request_id}: {out.error}")
            yield out

    async def _text_task(self, cls, doc: PreparedDocument, instruction: str, sampling: SamplingParams,
                         app_id: str, prio: Priority, context, first: dict, prefix_ids: list[int] | None = None,
                         finish: Callable[[str], dict] | None = None):
        """Stream `cls` messages: `first` fields at once, then the generation."""
        yield cls(info=_info(doc), **first)
        async for resp in self._generate(cls, (prefix_ids or doc.prefix_ids) + self.layout.suffix_ids(instruction),
                                         sampling, app_id, prio, context, finish):
            yield resp

    async def _generate(self, cls, ids: list[int], sampling: SamplingParams, app_id: str, prio: Priority, context,
                        finish: Callable[[str], dict] | None = None):
        """Text deltas, then finish + usage (+ `finish(whole text)` fields)."""
        parts = []
        async for out in self._run(ids, sampling, app_id, prio, context):
            parts.append(out.text)
            if out.finished:
                extra = finish("".join(parts)) if finish is not None else {}
                yield cls(text=out.text, finish_reason=_finish(out), usage=_usage(out), **extra)
            elif out.text:
                yield cls(text=out.text)

    async def _summary(self, cls, doc: PreparedDocument, instruction: str, sampling: SamplingParams, app_id: str,
                       prio: Priority, context, first: dict, keep: bool):
        """A summary; map-reduce over the whole text when the document is truncated."""
        if not self.long.needs_map_reduce(doc):
            async for resp in self._text_task(cls, doc, instruction, sampling, app_id, prio, context, first):
                yield resp
            return
        yield cls(info=_info(doc), **first)
        prefix_ids: list[int] = []
        async for event in self.long.map_reduce(doc, app_id, prio, keep):
            if isinstance(event, list):
                prefix_ids = event
            else:
                yield cls(progress=event)
        async for resp in self._generate(cls, prefix_ids + self.layout.suffix_ids(instruction), sampling, app_id,
                                         prio, context):
            yield resp

    async def _answer(self, cls, doc: PreparedDocument, query: str, instruction: str, sampling: SamplingParams,
                      app_id: str, prio: Priority, context, first: dict):
        """Generation over the chunks that best match `query`, citing those the answer used."""
        found = await self.long.retrieve(doc, query)
        async for resp in self._text_task(cls, doc, instruction, sampling, app_id, prio, context, first,
                                          prefix_ids=found.prefix_ids,
                                          finish=lambda text: {"citations": self.long.citations(found, query, text)}):
            yield resp

    async def Summarize(self, request, context):
        ident = self.identity.resolve(context)
        if request.style not in _STYLES or request.length not in _LENGTHS:
            raise invalid(f"style/length: unknown value ({request.style}, {request.length})")
        style, length = _STYLES[request.style], _LENGTHS[request.length]
        prio = self.priority_for(ident.app_id, convert.priority(request.priority))
        sampling = self._sampling(request.sampling, prompts.summary_max_tokens(style, length))
        doc = await self._document(request.document, ident.app_id)
        async for resp in self._summary(pb.SummarizeResponse, doc, prompts.summary_instruction(style, length),
                                        sampling, ident.app_id, prio, context, {}, _is_open(request.document)):
            yield resp

    def _check_text(self, text: str, field: str) -> str:
        convert.check_prompt_text(text.strip(), field, self.limits)
        return text.strip()

    async def Ask(self, request, context):
        ident = self.identity.resolve(context)
        question = self._check_text(request.question, "question")
        prio = self.priority_for(ident.app_id, convert.priority(request.priority))
        sampling = self._sampling(request.sampling, prompts.ANSWER_MAX_TOKENS)
        doc = await self._document(request.document, ident.app_id)
        async for resp in self._answer(pb.AskResponse, doc, question, prompts.answer_instruction(question),
                                       sampling, ident.app_id, prio, context, {}):
            yield resp

    def _questions_grammar(self, n: int) -> str:
        grammar = self._question_grammars.get(n)
        if grammar is None:
            grammar = json_schema_to_gbnf(json.dumps(prompts.questions_schema(n)))
            err = self.engine.validate_grammar(grammar)
            if err:
                raise RuntimeError(f"questions grammar for {n}: {err}")
            grammar = self._question_grammars[n] = grammar
        return grammar

    async def _questions(self, doc: PreparedDocument, n: int, sp: common_pb2.SamplingParams, app_id: str,
                         prio: Priority, context) -> tuple[list[str], RequestOutput, list[pb.Citation]]:
        # The token cap comes from the grammar's bound, never the caller: a cut list would not parse.
        capped = common_pb2.SamplingParams()
        capped.CopyFrom(sp)
        capped.ClearField("max_tokens")
        sampling = self._sampling(capped, prompts.questions_max_tokens(n), grammar=self._questions_grammar(n))
        prefix_ids, sources = self.long.spread(doc)  # the whole document, not just its head
        ids = prefix_ids + self.layout.suffix_ids(prompts.questions_instruction(n))
        parts, last = [], None
        async for out in self._run(ids, sampling, app_id, prio, context):
            parts.append(out.text)
            last = out
        return parse_questions("".join(parts)), last, sources

    async def SuggestQuestions(self, request, context):
        ident = self.identity.resolve(context)
        n = request.num_questions or DEFAULT_NUM_QUESTIONS
        if not 1 <= n <= self.cfg.max_questions:
            raise invalid(f"num_questions must be in [1, {self.cfg.max_questions}] (docs.max_questions); got {n}")
        prio = self.priority_for(ident.app_id, convert.priority(request.priority))
        doc = await self._document(request.document, ident.app_id)
        questions, last, sources = await self._questions(doc, n, request.sampling, ident.app_id, prio, context)
        return pb.SuggestQuestionsResponse(questions=questions, finish_reason=_finish(last), usage=_usage(last),
                                           info=_info(doc), citations=sources)

    # ---- assist -------------------------------------------------------------------

    async def detect_intent(self, text: str, detector: int, app_id: str, prio: Priority,
                            context) -> tuple[Intent, IntentSource]:
        if detector != pb.INTENT_DETECTOR_MODEL:
            found = rule_intent(text)
            if found is not None:
                return found, IntentSource.RULES
            if detector == pb.INTENT_DETECTOR_RULES:
                return Intent.ANSWER, IntentSource.RULES
        sampling = SamplingParams(temperature=0.0, max_tokens=INTENT_MAX_TOKENS, grammar=INTENT_GRAMMAR)
        parts = [out.text async for out in self._run(intent_prompt(self.layout, text), sampling, app_id, prio,
                                                     context)]
        return parse_intent("".join(parts)), IntentSource.MODEL

    async def Assist(self, request, context):
        ident = self.identity.resolve(context)
        text = self._check_text(request.request, "request")
        if request.detector not in _DETECTORS:
            raise invalid(f"detector: unknown value {request.detector}")
        prio = self.priority_for(ident.app_id, convert.priority(request.priority))
        doc = None
        if not (request.detect_only and request.document.WhichOneof("source") is None):
            doc = await self._document(request.document, ident.app_id)
        intent, source = await self.detect_intent(text, request.detector, ident.app_id, prio, context)
        first = {"intent": _INTENTS[intent], "intent_source": _SOURCES[source]}
        if request.detect_only:
            resp = pb.AssistResponse(**first)
            if doc is not None:
                resp.info.CopyFrom(_info(doc))
            yield resp
            return
        if intent is Intent.SUGGEST:
            yield pb.AssistResponse(info=_info(doc), **first)
            questions, last, sources = await self._questions(doc, DEFAULT_NUM_QUESTIONS, request.sampling,
                                                             ident.app_id, prio, context)
            listing = "\n".join(f"{i}. {q}" for i, q in enumerate(questions, 1))
            yield pb.AssistResponse(text=listing, questions=questions, finish_reason=_finish(last),
                                    usage=_usage(last), citations=sources)
            return
        if intent is Intent.SUMMARIZE:
            sampling = self._sampling(request.sampling, SummaryLength.MEDIUM.max_tokens)
            instruction = prompts.summary_instruction(SummaryStyle.TLDR, SummaryLength.MEDIUM)
            async for resp in self._summary(pb.AssistResponse, doc, instruction, sampling, ident.app_id, prio,
                                            context, first, _is_open(request.document)):
                yield resp
            return
        if intent is Intent.ANSWER:
            instruction, max_tokens = prompts.answer_instruction(text), prompts.ANSWER_MAX_TOKENS
        else:  # the request as the user wrote it, after the document (Table 13)
            instruction, max_tokens = text, prompts.OTHER_MAX_TOKENS
        sampling = self._sampling(request.sampling, max_tokens)
        async for resp in self._answer(pb.AssistResponse, doc, text, instruction, sampling, ident.app_id, prio,
                                       context, first):
            yield resp
