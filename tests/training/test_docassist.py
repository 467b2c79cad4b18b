"""The DocAssist builder: chunking, split, fine-tuning examples, and a real build through a daemon.

The end-to-end test serves the default SmolLM2 model as a stand-in teacher
(the real teacher, a 1.5B model, is far too slow for a test) and annotates
two short documents, then checks that a second build resumes and skips them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from slmd.docassist import prompts
from slmd.docassist.intent import Intent
from tests.training.corpus import TOKENIZER_GGUF, needs_tokenizer
from training.data import Document, Source
from training.docassist import (
    CHUNK_TOKENS, MAX_CHUNKS, DocAssistRecord, QAPair, Split, TeacherSettings, build, cut, examples_of,
    read_records, select_documents, sft_examples, split_of,
)

pytestmark = needs_tokenizer

WIKI = [
    ("Water", "Water is an inorganic compound with the chemical formula H2O. It is a transparent, tasteless, odorless, "
              "and nearly colorless chemical substance. It is the main constituent of Earth's hydrosphere and the "
              "fluids of all known living organisms, in which it acts as a solvent. Water boils at 100 degrees Celsius."),
    ("Paris", "Paris is the capital and largest city of France. With an estimated population of two million "
              "residents, it is the centre of the Ile-de-France region. Paris is known for its museums, such as the "
              "Louvre, and for landmarks such as the Eiffel Tower, built in 1889 for the World's Fair."),
]


@pytest.fixture(scope="module")
def tokenizer():
    from slmd.tokenizer import Tokenizer

    return Tokenizer.from_gguf(TOKENIZER_GGUF)


def wiki_docs() -> list[Document]:
    return [Document(f"wikipedia/{t}", Source.WIKIPEDIA, t, text) for t, text in WIKI]


def record(doc_id: str = "wikipedia/Water", split: Split = Split.TRAIN) -> DocAssistRecord:
    return DocAssistRecord(
        doc_id=doc_id, source="wikipedia", title="Water", split=split, document="Water is H2O.", num_tokens=6,
        num_chunks=1, summary="Water is a compound.", suggested_questions=["What is water?", "Is it wet?", "Why?"],
        qa_pairs=[QAPair(question="What is the formula?", answer="H2O.")] * 3, teacher="t", teacher_seconds=1.0)


def test_cut_keeps_at_most_five_chunks_of_200_tokens(tokenizer):
    long_text = " ".join(f"word{i}" for i in range(3000))
    text, num_tokens, num_chunks = cut(long_text, tokenizer)
    assert num_tokens == CHUNK_TOKENS * MAX_CHUNKS and num_chunks == MAX_CHUNKS
    assert long_text.startswith(text)
    assert len(tokenizer.encode(text, allow_special=False)) <= CHUNK_TOKENS * MAX_CHUNKS
    short, n, chunks = cut(WIKI[0][1], tokenizer)
    assert short == WIKI[0][1] and chunks == 1 and n < CHUNK_TOKENS


def test_select_documents_mixes_sources_and_drops_stubs(tokenizer):
    manuals = [Document(f"git-docs/{i}", Source.GIT_DOCS, str(i), "git commit records changes. " * 30)
               for i in range(5)]
    stub = Document("wikipedia/stub", Source.WIKIPEDIA, "stub", "Too short.")
    picked = select_documents(wiki_docs() + [stub] + manuals, 4, tokenizer)
    assert len(picked) == 4 and stub not in picked
    assert {d.source for d in picked} == {Source.WIKIPEDIA, Source.GIT_DOCS}
    assert picked == select_documents(manuals + [stub] + wiki_docs(), 4, tokenizer)  # order-independent


def test_split_is_stable_and_examples_skip_test_documents():
    ids = [f"wikipedia/{i}" for i in range(200)]
    splits = [split_of(i, 0.2) for i in ids]
    assert splits == [split_of(i, 0.2) for i in ids]
    assert 20 < splits.count(Split.TEST) < 60
    records = [record("a", Split.TRAIN), record("b", Split.TEST)]
    assert {e.doc_id for e in examples_of(records, Split.TRAIN)} == {"a"}
    assert {e.doc_id for e in examples_of(records, Split.TEST)} == {"b"}


def test_sft_examples_cover_every_intent():
    examples = sft_examples(record())
    document = [e for e in examples if e.kind == "document"]
    assert [e.intent for e in document] == [Intent.SUMMARIZE, Intent.SUGGEST] + [Intent.ANSWER] * 3
    assert document[0].response == "Water is a compound." and document[0].document == "Water is H2O."
    assert json.loads(document[1].response) == ["What is water?", "Is it wet?", "Why?"]
    assert document[2].request == prompts.answer_instruction("What is the formula?")
    intents = [e for e in examples if e.kind == "intent"]
    assert {(e.intent, e.response) for e in intents} == {(i, i.value) for i in (Intent.SUMMARIZE, Intent.SUGGEST,
                                                                                 Intent.ANSWER)}


def test_record_validation_rejects_bad_annotations():
    with pytest.raises(ValueError):
        DocAssistRecord.model_validate({**record().model_dump(), "suggested_questions": ["What is it?"]})
    with pytest.raises(ValueError):
        DocAssistRecord.model_validate({**record().model_dump(), "suggested_questions": ["no mark", "b?", "c?"]})


@pytest.mark.e2e
@pytest.mark.default_model
@pytest.mark.slow
def test_build_through_daemon_and_resume(daemon_factory, default_model, tokenizer, tmp_path: Path):
    from slmd_client import AsyncClient

    daemon = daemon_factory(default_model, "--threads", "1", "--max-running", "8")
    out = tmp_path / "records.jsonl"
    teacher = TeacherSettings("SmolLM2-135M-Instruct (stand-in)", summary_max_tokens=48)

    async def run():
        async with AsyncClient(daemon.target) as client:
            first = await build(client, wiki_docs(), out, tokenizer, teacher, test_fraction=0.5, concurrency=2,
                                log=lambda _: None)
            again = await build(client, wiki_docs(), out, tokenizer, teacher, test_fraction=0.5, concurrency=2,
                                log=lambda _: None)
            return first, again

    first, again = asyncio.run(run())
    assert (first.num_done, first.num_failed) == (2, 0)
    assert (again.num_done, again.num_skipped) == (0, 2)
    records = read_records(out)
    assert sorted(r.doc_id for r in records) == ["wikipedia/Paris", "wikipedia/Water"]
    for r in records:
        assert r.split is split_of(r.doc_id, 0.5)
        assert r.summary and len(r.suggested_questions) == 3 and len(r.qa_pairs) == 3
        assert all(q.endswith("?") for q in r.suggested_questions)
        assert r.teacher.startswith("SmolLM2")
