"""Documents longer than their token budget, for the Documents servicer.

- Ask: the chunks of the whole document are ranked against the question
  (slmd.docassist.retrieval) and the best that fit the budget are the prompt's
  document, in document order; the answer cites the chunks it came from.
- Summarize: map-reduce (slmd.docassist.mapreduce). Parts are summarized
  concurrently as separate engine requests, a few at a time; their summaries
  are kept in the document's derived state, so a second summary of an open
  document only runs the final reduce.
- SuggestQuestions: chunks spread evenly over the whole document.

A document within its budget keeps its shared prefix (one prefill serves all
tasks); retrieval and spreading change the prompt's document, so they apply
only when the document is truncated."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np
from slmd_client._proto.slmd.v1 import documents_pb2 as pb

from slmd.core import Engine
from slmd.docassist import mapreduce, prompts, retrieval
from slmd.docassist.chunking import Chunk, join_chunks
from slmd.docassist.mapreduce import Item, Part
from slmd.docassist.prompts import PromptLayout
from slmd.docassist.retrieval import Bm25Index, Embedder, RetrievalMethod
from slmd.docassist.store import DerivedState, DocumentStore, PreparedDocument
from slmd.request import Priority, Request, SamplingParams
from slmd.server.status import RpcError, from_kind

log = logging.getLogger(__name__)

MAX_PARALLEL_PARTS = 4  # part summaries in the engine at once, over all documents
MAX_LEVELS = 6  # map levels before the reduce: 5 chunks, then 4 summaries to a part: 5 x 4**5 chunks
_PART_SAMPLING = SamplingParams(temperature=0.0, max_tokens=mapreduce.PART_MAX_TOKENS,
                                repetition_penalty=prompts.REPETITION_PENALTY)


@dataclass(frozen=True)
class Retrieval:
    context: list[Chunk]  # what the model sees, in document order
    prefix_ids: list[int]  # system prompt + those chunks
    scores: np.ndarray  # BM25 score of every chunk of the document for the query
    index: Bm25Index


class LongDocuments:
    def __init__(self, engine: Engine, layout: PromptLayout, store: DocumentStore,
                 method: RetrievalMethod = RetrievalMethod.BM25) -> None:
        self.engine = engine
        self.layout = layout
        self.store = store
        self.embedder = Embedder() if method is RetrievalMethod.HYBRID else None
        self._part_slots = asyncio.Semaphore(MAX_PARALLEL_PARTS)

    # ---- retrieval ----------------------------------------------------------------

    async def _index(self, doc: PreparedDocument) -> Bm25Index:
        index = doc.derived.bm25
        if index is None:
            index = await asyncio.get_running_loop().run_in_executor(None, Bm25Index, doc.chunked.all_chunks)
            doc.derived.bm25 = index
            self.store.enforce_derived_bound()
        return index

    async def _similarity(self, doc: PreparedDocument, query: str) -> np.ndarray:
        loop = asyncio.get_running_loop()
        embeddings = doc.derived.embeddings
        if embeddings is None:
            embeddings = await loop.run_in_executor(None, self.embedder.embed,
                                                    [c.text for c in doc.chunked.all_chunks])
            doc.derived.embeddings = embeddings
            self.store.enforce_derived_bound()
        query_vector = await loop.run_in_executor(None, self.embedder.embed, [query])
        return embeddings @ query_vector[0]

    async def retrieve(self, doc: PreparedDocument, query: str) -> Retrieval:
        index = await self._index(doc)
        scores = index.scores(query)  # sparse lookups: well under a millisecond per thousand chunks
        if not doc.chunked.is_truncated:
            return Retrieval(list(doc.chunked.chunks), doc.prefix_ids, scores, index)
        order = None
        if self.embedder is not None:
            order = retrieval.reciprocal_rank_fusion(scores, await self._similarity(doc, query))
        ranked = retrieval.rank(doc.chunked.all_chunks, scores, order)
        context = retrieval.fill_budget(ranked, doc.chunked.token_budget)
        return Retrieval(context, self.layout.prefix_ids(join_chunks(context)), scores, index)

    @staticmethod
    def citations(found: Retrieval, question: str, answer: str) -> list[pb.Citation]:
        cited = retrieval.attribute(answer, found.context, found.index, found.scores)
        return [pb.Citation(chunk_index=r.chunk.index, label=r.chunk.label, score=r.score,
                            snippet=retrieval.snippet(r.chunk.text, f"{answer} {question}")) for r in cited]

    def spread(self, doc: PreparedDocument) -> tuple[list[int], list[pb.Citation]]:
        """Prefix and sources for a task with no query (suggested questions)."""
        if not doc.chunked.is_truncated:
            chosen, prefix = list(doc.chunked.chunks), doc.prefix_ids
        else:
            chosen = retrieval.spread(doc.chunked.all_chunks, doc.chunked.token_budget)
            prefix = self.layout.prefix_ids(join_chunks(chosen))
        return prefix, [pb.Citation(chunk_index=c.index, label=c.label, snippet=retrieval.snippet(c.text))
                        for c in chosen]

    # ---- map-reduce summaries --------------------------------------------------------

    @staticmethod
    def needs_map_reduce(doc: PreparedDocument) -> bool:
        # A budget too small for a few part summaries could never reduce: such a
        # document is summarized from its head, as before.
        return doc.chunked.is_truncated and doc.chunked.token_budget >= 3 * mapreduce.PART_MAX_TOKENS

    async def map_reduce(self, doc: PreparedDocument, app_id: str, prio: Priority,
                         keep: bool) -> AsyncIterator[pb.SummaryProgress | list[int]]:
        """Summarize the parts, yielding progress after each; last, the prefix ids
        of the final summary's prompt (the part summaries as its document).
        `keep`: the document is open, so part summaries outlive this call."""
        state = doc.derived
        budget = doc.chunked.token_budget
        items = mapreduce.chunk_items(doc.chunked.all_chunks)
        progress = pb.SummaryProgress()
        try:
            for level in range(MAX_LEVELS):
                if mapreduce.is_reduced(items, budget):
                    break
                parts = mapreduce.plan_level(items, level, budget)
                progress.num_parts += len(parts)
                pending, texts = {}, {}
                for part in parts:
                    cached = state.part_summaries.get(part.key)
                    if cached is not None:
                        texts[part.key] = cached
                        progress.num_parts_done += 1
                        progress.num_cached_parts += 1
                    else:
                        pending[self._part_task(state, part, app_id, prio)] = part
                if progress.num_cached_parts:
                    yield _copy(progress, part_label="")
                while pending:
                    done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        part = pending.pop(task)
                        texts[part.key] = _result(task)  # raises the part's error
                        progress.num_parts_done += 1
                        yield _copy(progress, part_label=part.label)
                items = [self._summary_item(texts[p.key], p) for p in parts]
            yield _copy(progress, part_label="", is_reducing=True)
            yield self.layout.prefix_ids(mapreduce.reduce_text(items))
        finally:
            if not keep:  # an inline document: nobody will reuse its parts
                for task in state.part_tasks.values():
                    task.cancel()

    def _summary_item(self, text: str, part: Part) -> Item:
        num_tokens = len(self.layout.tokenizer.encode(text, allow_special=False))
        return Item(text, num_tokens, part.items[0].first_label, part.items[-1].last_label)

    def _part_task(self, state: DerivedState, part: Part, app_id: str, prio: Priority) -> asyncio.Task:
        """The task summarizing `part`: a running one (another request started
        it) or a new one. Its result goes into the document's cache."""
        task = state.part_tasks.get(part.key)
        if task is None:
            task = asyncio.create_task(self._summarize_part(part, app_id, prio))
            state.part_tasks[part.key] = task

            def finished(t: asyncio.Task, key=part.key) -> None:
                kept = state.part_tasks.get(key) is t  # not if the state was shed meanwhile (memory pressure)
                if kept:
                    del state.part_tasks[key]
                if kept and not t.cancelled() and t.exception() is None:
                    state.part_summaries[key] = t.result()
                    self.store.enforce_derived_bound()
            task.add_done_callback(finished)
        return task

    async def _summarize_part(self, part: Part, app_id: str, prio: Priority) -> str:
        ids = self.layout.prefix_ids(part.text) + self.layout.suffix_ids(mapreduce.PART_INSTRUCTION)
        req = Request(request_id=f"part-{uuid.uuid4().hex}", prompt_ids=ids, sampling=_PART_SAMPLING,
                      app_id=app_id, priority=prio)
        pieces = []
        async with self._part_slots:
            async for out in self.engine.stream(req):
                if out.finished and out.error_kind is not None:
                    raise from_kind(out.error_kind, f"summary of {part.label}: {out.error}")
                pieces.append(out.text)
        return "".join(pieces).strip()


def _copy(progress: pb.SummaryProgress, **fields) -> pb.SummaryProgress:
    out = pb.SummaryProgress()
    out.CopyFrom(progress)
    for name, value in fields.items():
        setattr(out, name, value)
    return out


def _result(task: asyncio.Task) -> str:
    if task.cancelled():  # the document was closed while its parts were summarized
        raise RpcError(grpc.StatusCode.NOT_FOUND, "document was closed during its summary")
    return task.result()
