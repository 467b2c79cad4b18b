"""The DocAssist dataset (SlimLM paper, section 3.2): documents annotated by a teacher served by slmd.

    python -m training.docassist build --target unix:/run/slmd.sock --teacher qwen2.5-coder-1.5b-instruct-q4_k_m \\
        --data-dir build/data/pretrain --num-docs 200 --out training/datasets/docassist/records.jsonl

Documents come from training/data.py's documents.jsonl (Wikipedia summaries
and manual pages), cut as the paper does: the first 5 chunks of 200 tokens at
most. For each document the teacher writes one summary, three suggested
questions and three question-answer pairs; all three requests go to the
daemon at once and share the document's prefix in its cache, and several
documents are in flight together, so the daemon batches them. The builder is
a plain client: whichever model the daemon serves is the teacher.

Records are validated with pydantic and appended to the JSONL one by one, so
an interrupted build resumes and skips the documents already done. Each
document's id decides its split (train or test), so no test document is ever
seen in fine-tuning. `sft_examples` turns a record into fine-tuning examples
in the paper's Table 13 layout: system prompt and document, a user request in
varied wording (so the model learns the intent from the request), and the
response; plus examples of the daemon's intent classifier prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field, field_validator

from slmd.docassist import prompts
from slmd.docassist.intent import Intent
from slmd.tokenizer import Tokenizer
from training.data import Document, read_documents

CHUNK_TOKENS = 200
MAX_CHUNKS = 5
NUM_QUESTIONS = 3
SUMMARY_STYLE, SUMMARY_LENGTH = prompts.SummaryStyle.TLDR, prompts.SummaryLength.MEDIUM
# Below this, a "document" is a stub with nothing to ask about.
MIN_DOCUMENT_TOKENS = 60
QA_INSTRUCTION = (f"Write {NUM_QUESTIONS} questions whose answers are stated in the document, each with its "
                  f"answer in one or two sentences. Reply with a JSON list of objects with keys "
                  f'"question" and "answer".')
QA_MAX_TOKENS = 400


def qa_schema(n: int) -> dict:
    pair = {"type": "object", "properties": {
        "question": {"type": "string", "minLength": 8, "maxLength": 160},
        "answer": {"type": "string", "minLength": 1, "maxLength": 400}},
        "required": ["question", "answer"]}
    return {"type": "array", "minItems": n, "maxItems": n, "items": pair}


class QAPair(BaseModel):
    question: str = Field(min_length=8)
    answer: str = Field(min_length=1)


class Split(str, enum.Enum):
    TRAIN = "train"
    TEST = "test"


class DocAssistRecord(BaseModel):
    doc_id: str
    source: str
    title: str
    split: Split
    document: str = Field(min_length=1)  # the kept chunks, as the model sees them
    num_tokens: int = Field(ge=1, le=CHUNK_TOKENS * MAX_CHUNKS)
    num_chunks: int = Field(ge=1, le=MAX_CHUNKS)
    summary: str = Field(min_length=1)
    suggested_questions: list[str] = Field(min_length=NUM_QUESTIONS, max_length=NUM_QUESTIONS)
    qa_pairs: list[QAPair] = Field(min_length=NUM_QUESTIONS, max_length=NUM_QUESTIONS)
    teacher: str
    teacher_seconds: float

    @field_validator("suggested_questions")
    @classmethod
    def _questions(cls, v: list[str]) -> list[str]:
        if any(not q.strip().endswith("?") for q in v):
            raise ValueError("every suggested question ends with '?'")
        return v


def split_of(doc_id: str, test_fraction: float) -> Split:
    h = int.from_bytes(hashlib.sha256(("docassist:" + doc_id).encode()).digest()[:8], "big")
    return Split.TEST if h / 2**64 < test_fraction else Split.TRAIN


def cut(text: str, tokenizer: Tokenizer) -> tuple[str, int, int]:
    """The first MAX_CHUNKS chunks of CHUNK_TOKENS tokens: (text, tokens, chunks)."""
    ids = tokenizer.encode(text, allow_special=False)[: CHUNK_TOKENS * MAX_CHUNKS]
    # Decoding whole tokens may end inside a multi-byte character; drop that piece.
    kept = tokenizer.decode_bytes(ids).decode("utf-8", errors="ignore").strip()
    return kept, len(ids), -(-len(ids) // CHUNK_TOKENS)


def select_documents(documents: Iterable[Document], num_docs: int, tokenizer: Tokenizer) -> list[Document]:
    """num_docs documents, half Wikipedia and half manuals (round-robin over sources), in a fixed order."""
    by_source: dict[str, list[Document]] = {}
    for doc in documents:
        by_source.setdefault(doc.source.value, []).append(doc)
    for docs in by_source.values():  # a fixed, content-independent shuffle
        docs.sort(key=lambda d: hashlib.sha256(d.doc_id.encode()).digest())
    wiki = by_source.pop("wikipedia", [])
    manuals = [d for group in zip(*by_source.values()) for d in group] if by_source else []
    picked: list[Document] = []
    for group in zip(wiki, manuals) if manuals else ((d,) for d in wiki):
        for doc in group:
            if len(picked) < num_docs and len(tokenizer.encode(doc.text, allow_special=False)) >= MIN_DOCUMENT_TOKENS:
                picked.append(doc)
        if len(picked) >= num_docs:
            break
    return picked


def document_messages(document: str, request: str) -> list[dict[str, str]]:
    """Table 13's layout, as slmd's Documents service prompts: system + document, then the request."""
    return [{"role": "system", "content": prompts.SYSTEM_PROMPT + prompts.DOCUMENT_HEADER + document},
            {"role": "user", "content": request}]


def _as_text(item) -> str:
    """A list item as text: without a grammar a teacher may wrap each in an object ({"question": ...})."""
    if isinstance(item, dict):
        item = next((v for v in item.values() if isinstance(v, str)), "")
    if not isinstance(item, str) or not item.strip():
        raise ValueError(f"not a question: {item!r}")
    return item.strip()


def _json_list(text: str) -> list:
    # A grammar-constrained reply is JSON already; the slice guards against trailing text.
    return json.loads(text[text.index("[") : text.rindex("]") + 1])


@dataclass(frozen=True)
class TeacherSettings:
    name: str
    summary_max_tokens: int = 160
    qa_max_tokens: int = QA_MAX_TOKENS
    repetition_penalty: float = prompts.REPETITION_PENALTY
    timeout: float = 1800.0
    # JSON-schema grammars for the lists. Off: the reply is parsed leniently and a
    # malformed one fails that document (llama.cpp's grammar sampler checks every
    # token of a 152k vocabulary on the CPU: it dominates a GPU teacher's steps).
    grammar: bool = True


async def annotate(client, doc: Document, tokenizer: Tokenizer, teacher: TeacherSettings,
                   test_fraction: float) -> tuple[DocAssistRecord, int]:
    """Three requests at once for one document (greedy, so a rebuild asks the same questions);
    returns the record and the number of tokens the teacher wrote."""
    text, num_tokens, num_chunks = cut(doc.text, tokenizer)
    common = dict(temperature=0.0, timeout=teacher.timeout)
    t0 = time.perf_counter()
    summary, questions, qa = await asyncio.gather(
        client.complete(messages=document_messages(text, prompts.summary_instruction(SUMMARY_STYLE, SUMMARY_LENGTH)),
                        max_tokens=teacher.summary_max_tokens, repetition_penalty=teacher.repetition_penalty,
                        **common),
        client.complete(messages=document_messages(text, prompts.questions_instruction(NUM_QUESTIONS)),
                        max_tokens=prompts.questions_max_tokens(NUM_QUESTIONS),
                        json_schema=prompts.questions_schema(NUM_QUESTIONS) if teacher.grammar else None, **common),
        client.complete(messages=document_messages(text, QA_INSTRUCTION), max_tokens=teacher.qa_max_tokens,
                        json_schema=qa_schema(NUM_QUESTIONS) if teacher.grammar else None, **common),
    )
    record = DocAssistRecord(
        doc_id=doc.doc_id, source=doc.source.value, title=doc.title, split=split_of(doc.doc_id, test_fraction),
        document=text, num_tokens=num_tokens, num_chunks=num_chunks, summary=summary.text.strip(),
        suggested_questions=[_as_text(q) for q in _json_list(questions.text)],
        qa_pairs=[QAPair(**p) for p in _json_list(qa.text)],
        teacher=teacher.name, teacher_seconds=round(time.perf_counter() - t0, 2),
    )
    return record, sum(c.usage.completion_tokens for c in (summary, questions, qa) if c.usage is not None)


def read_records(path: Path) -> list[DocAssistRecord]:
    if not Path(path).exists():
        return []
    return [DocAssistRecord.model_validate_json(line) for line in Path(path).read_text().splitlines() if line.strip()]


@dataclass
class BuildReport:
    num_done: int = 0
    num_skipped: int = 0  # already in the file
    num_failed: int = 0
    seconds: float = 0.0
    completion_tokens: int = 0


async def build(client, docs: list[Document], out: Path, tokenizer: Tokenizer, teacher: TeacherSettings, *,
                test_fraction: float = 0.2, concurrency: int = 4, log=print) -> BuildReport:
    """Annotate docs not yet in `out`, appending each record as it completes."""
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {r.doc_id for r in read_records(out)}
    todo = [d for d in docs if d.doc_id not in done]
    report = BuildReport(num_skipped=len(docs) - len(todo))
    gate = asyncio.Semaphore(concurrency)
    t0 = time.perf_counter()

    async def one(doc: Document) -> None:
        from slmd_client.errors import ResourceExhausted

        async with gate:
            try:
                for attempt in range(8):  # the daemon at capacity (an app's max_concurrent): wait as told
                    try:
                        record, num_generated = await annotate(client, doc, tokenizer, teacher, test_fraction)
                        break
                    except ResourceExhausted as e:
                        if attempt == 7:
                            raise
                        await asyncio.sleep(e.retry_after or 1.0)
            except (ValueError, KeyError, TypeError, AttributeError) as e:  # malformed JSON, a record pydantic rejects
                report.num_failed += 1
                log(f"skip {doc.doc_id}: {str(e)[:200]}")
                return
        with open(out, "a") as f:
            f.write(record.model_dump_json() + "\n")
        report.num_done += 1
        report.completion_tokens += num_generated
        log(f"[{report.num_done}/{len(todo)}] {doc.doc_id} ({record.teacher_seconds:.1f} s)")

    await asyncio.gather(*(one(d) for d in todo))
    report.seconds = time.perf_counter() - t0
    return report


# -- fine-tuning examples ------------------------------------------------------------------------

# Varied wordings of each request; the first is what slmd's Documents service sends.
SUMMARY_REQUESTS = (prompts.summary_instruction(SUMMARY_STYLE, SUMMARY_LENGTH), "Give me a short summary of this.",
                    "What is this document about?", "Summarize this text for me.", "Can you sum this up?")
SUGGEST_REQUESTS = (prompts.questions_instruction(NUM_QUESTIONS), "What questions could I ask about this document?",
                    "Suggest three questions about this text.", "Give me 3 questions to explore this document.")


class SftExample(BaseModel):
    """One prompt/response pair. DOCUMENT examples are prompted as slmd's Documents service
    does (PromptLayout.prefix_ids + suffix_ids); INTENT ones with its intent classifier prompt."""

    doc_id: str
    intent: Intent
    kind: str = Field(pattern="^(document|intent)$")
    document: str = ""
    request: str
    response: str


def _pick(options: tuple[str, ...], key: str) -> str:
    return options[int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % len(options)]


def sft_examples(record: DocAssistRecord) -> list[SftExample]:
    doc = dict(doc_id=record.doc_id, kind="document", document=record.document)
    summary_request = _pick(SUMMARY_REQUESTS, record.doc_id + "/summary")
    suggest_request = _pick(SUGGEST_REQUESTS, record.doc_id + "/suggest")
    examples = [
        SftExample(intent=Intent.SUMMARIZE, request=summary_request, response=record.summary, **doc),
        SftExample(intent=Intent.SUGGEST, request=suggest_request, response=json.dumps(record.suggested_questions),
                   **doc),
    ]
    examples += [SftExample(intent=Intent.ANSWER, request=prompts.answer_instruction(p.question) if i == 0
                            else p.question, response=p.answer, **doc)
                 for i, p in enumerate(record.qa_pairs)]
    intent = dict(doc_id=record.doc_id, kind="intent")
    examples += [
        SftExample(intent=Intent.SUMMARIZE, request=summary_request, response=Intent.SUMMARIZE.value, **intent),
        SftExample(intent=Intent.SUGGEST, request=suggest_request, response=Intent.SUGGEST.value, **intent),
        SftExample(intent=Intent.ANSWER, request=record.qa_pairs[-1].question, response=Intent.ANSWER.value,
                   **intent),
    ]
    return examples


def examples_of(records: Iterable[DocAssistRecord], split: Split) -> Iterator[SftExample]:
    for record in records:
        if record.split is split:
            yield from sft_examples(record)


# -- the datasheet -------------------------------------------------------------------------------


def datasheet(records: list[DocAssistRecord], licences: dict[str, str]) -> str:
    counts: dict[tuple[str, str], int] = {}
    for r in records:
        counts[(r.source, r.split.value)] = counts.get((r.source, r.split.value), 0) + 1
    sources = sorted({s for s, _ in counts})
    teachers = sorted({r.teacher for r in records})
    rows = "\n".join(f"| {s} | {counts.get((s, 'train'), 0)} | {counts.get((s, 'test'), 0)} | {licences.get(s, '?')} |"
                     for s in sources)
    seconds = sum(r.teacher_seconds for r in records)
    tokens = sum(r.num_tokens for r in records)
    return f"""# DocAssist dataset (slmd)

Built by `python -m training.docassist build`; regenerate this sheet with `python -m training.docassist datasheet`.

- Records: {len(records)} documents ({sum(r.split is Split.TRAIN for r in records)} train, {sum(r.split is Split.TEST for r in records)} test); {tokens:,} document tokens (SmolLM2 tokenizer), at most {MAX_CHUNKS} chunks of {CHUNK_TOKENS} tokens each.
- Per document: one summary, {NUM_QUESTIONS} suggested questions, {NUM_QUESTIONS} question-answer pairs (SlimLM paper, section 3.2).
- Teacher: {', '.join(teachers)}, served by slmd, greedy decoding; questions and QA pairs asked for as JSON lists (under a JSON-schema grammar unless built with `--no-grammar`, when replies that do not parse are skipped). Teacher time per document (three concurrent requests, with other documents in flight): {seconds / max(1, len(records)):.1f} s on average.
- Split: by document id hash (`split_of`), so no test document appears in fine-tuning.
- Annotations are machine-written and unchecked beyond schema validation and a read of a sample; they inherit the teacher's errors (in the sample read, summaries and questions were faithful; some answers restate the document rather than answer the question asked).

| source | train | test | licence of the document text |
|---|---|---|---|
{rows}

Annotations are derived from the documents and carry their licences (CC BY-SA for Wikipedia text: attribute Wikipedia's authors, share alike).
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="annotate documents with the daemon's model")
    p_build.add_argument("--target", default=None, help="daemon socket or gRPC target (default: the client's default)")
    p_build.add_argument("--serve", type=Path, default=None, metavar="GGUF",
                         help="start a daemon on this model for the build instead of using --target")
    p_build.add_argument("--threads", type=int, default=0, help="with --serve: llama.cpp threads (0 = all cores)")
    p_build.add_argument("--teacher", required=True, help="name recorded with each record (the served model)")
    p_build.add_argument("--data-dir", type=Path, default=Path("build/data/pretrain"))
    p_build.add_argument("--out", type=Path, default=Path("training/datasets/docassist/records.jsonl"))
    p_build.add_argument("--num-docs", type=int, default=200)
    p_build.add_argument("--test-fraction", type=float, default=0.2)
    p_build.add_argument("--concurrency", type=int, default=4, help="documents in flight (3 requests each)")
    p_build.add_argument("--no-grammar", action="store_true", help="no JSON-schema grammar (lenient parsing)")
    p_sheet = sub.add_parser("datasheet", help="write DATASHEET.md next to the records")
    p_sheet.add_argument("--records", type=Path, default=Path("training/datasets/docassist/records.jsonl"))
    args = parser.parse_args(argv)

    from training.data import SOURCES, default_tokenizer

    licences = {s.value: spec.licence for s, spec in SOURCES.items()}
    if args.command == "datasheet":
        sheet = args.records.parent / "DATASHEET.md"
        sheet.write_text(datasheet(read_records(args.records), licences))
        print(f"wrote {sheet}")
        return

    from slmd_client import AsyncClient

    tokenizer = default_tokenizer()
    docs = select_documents(read_documents(args.data_dir), args.num_docs, tokenizer)

    async def run(target) -> BuildReport:
        async with AsyncClient(target, app_name="docassist-builder") as client:
            return await build(client, docs, args.out, tokenizer, TeacherSettings(args.teacher, grammar=not args.no_grammar),
                               test_fraction=args.test_fraction, concurrency=args.concurrency)

    if args.serve is None:
        report = asyncio.run(run(args.target))
    else:
        import tempfile

        from slmd.testing import start_daemon

        daemon = start_daemon(Path(tempfile.mkdtemp(prefix="slmd-docassist-")), args.serve, "--threads",
                              str(args.threads), "--max-running", str(3 * args.concurrency), timeout=300)
        try:
            report = asyncio.run(run(daemon.target))
        finally:
            daemon.stop()
    print(f"{report.num_done} annotated, {report.num_skipped} already done, {report.num_failed} failed "
          f"in {report.seconds:.0f} s ({report.completion_tokens / max(report.seconds, 1e-9):.1f} generated "
          f"tokens/s) -> {args.out}")


if __name__ == "__main__":
    main()
