"""A tiny corpus for the training tests: a few hundred tokens of plain English."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data import Document, Source, build
from training.export import default_tokenizer_gguf

TOKENIZER_GGUF = default_tokenizer_gguf()
needs_tokenizer = pytest.mark.skipif(
    not TOKENIZER_GGUF.exists(), reason=f"default model {TOKENIZER_GGUF} (the tokenizer) is absent; run `slmd pull`"
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps in the sun all afternoon.",
    "Water boils at one hundred degrees Celsius at sea level, and freezes at zero degrees.",
    "Paris is the capital of France. Rome is the capital of Italy. Berlin is the capital of Germany.",
    "A small language model runs on the device, close to the data, and answers questions about documents.",
    "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday are the days of the week.",
    "To retrieve data from a table, the table is queried with a SELECT statement and a list of columns.",
    "git commit records changes to the repository; git log shows the history of commits.",
    "Python is a programming language that lets you work quickly and integrate systems effectively.",
]


def tiny_documents(copies: int = 6) -> list[Document]:
    return [Document(f"wikipedia/t{c}-{i}", Source.WIKIPEDIA, f"t{i}", text)
            for c in range(copies) for i, text in enumerate(TEXTS)]


def build_tiny_memmap(out: Path, val_fraction: float = 0.25) -> dict:
    from slmd.tokenizer import Tokenizer

    return build(tiny_documents(), out, Tokenizer.from_gguf(TOKENIZER_GGUF), val_fraction=val_fraction)


def tiny_records():
    """Hand-written DocAssist records (no teacher needed): three train documents, one test."""
    from training.docassist import DocAssistRecord, QAPair, Split, split_of

    records = []
    for i, text in enumerate(TEXTS[:4]):
        first = text.split(". ")[0].rstrip(".") + "."
        records.append(DocAssistRecord(
            doc_id=f"wikipedia/r{i}", source="wikipedia", title=f"r{i}", split=Split.TEST if i == 3 else Split.TRAIN,
            document=text, num_tokens=len(text.split()), num_chunks=1, summary=first,
            suggested_questions=["What is this about?", "Why does it matter?", "Where is it true?"],
            qa_pairs=[QAPair(question="What does the text say first?", answer=first)] * 3,
            teacher="hand-written", teacher_seconds=0.0))
    assert split_of  # the split here is set by hand, not hashed
    return records


def write_records(path: Path, records) -> Path:
    path.write_text("".join(r.model_dump_json() + "\n" for r in records))
    return path
