"""Long documents: retrieval vs plain truncation for answers, and the time of
first and repeated map-reduce summaries.

    .venv/bin/python -m benchmarks.long_documents [--model PATH] [--threads 1]

The document is the tests' 20-page PDF (tests/e2e/long_document.py: over
10,000 tokens, six facts planted on pages 3 to 19, each with a question whose
answer must copy one distinctive token). The token budget is the default
1,000 tokens (the paper's 5 chunks of 200).

- truncation: the question on the document's first 1,000 tokens (what the
  model saw before retrieval): sent inline as the daemon's own head text;
- retrieval: the question on the opened document: BM25 over all chunks, the
  best 1,000 tokens in document order.

For each, "in context" says whether the fact's chunk was in the prompt, and
"correct" whether the answer holds the fact's token (greedy decoding).
Summaries: Summarize on the opened document twice (map-reduce; the second
finds every part summary cached), and once on the head alone for reference.
Times are client wall times; "first text" is when the first summary text
arrived (after all parts)."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.harness import RESULTS, print_table, write_results
from slmd.docassist.chunking import chunk_document
from slmd.docassist.ingest import IngestLimits, extract
from slmd.models import DEFAULT_MODEL
from slmd.paths import default_data_dir
from slmd.testing import start_daemon
from slmd.tokenizer import Tokenizer
from slmd_client import Client
from tests.e2e import long_document
from tests.e2e.long_document import FACTS, TOPICS


def _ask(docs, document, question: str) -> tuple[str, float]:
    started = time.monotonic()
    result = docs.collect(docs.ask(document, question))
    return result.text.strip(), time.monotonic() - started


def _summary(docs, document) -> tuple[str, float, float, int, int]:
    started = time.monotonic()
    first_text = None
    parts, cached, chunks = 0, 0, []
    for chunk in docs.summarize(document):
        if chunk.progress is not None:
            parts, cached = chunk.progress.num_parts, chunk.progress.num_cached_parts
        if chunk.text and first_text is None:
            first_text = time.monotonic() - started
        chunks.append(chunk.text)
    return "".join(chunks).strip(), time.monotonic() - started, first_text or float("nan"), parts, cached


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=default_data_dir() / "models" / DEFAULT_MODEL.filename)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="long_documents")
    args = ap.parse_args()

    pdf = long_document.make_pdf()
    doc = extract(pdf, filename="long.pdf", limits=IngestLimits())
    chunked = chunk_document(doc, Tokenizer.from_gguf(args.model), chunk_tokens=200, token_budget=1000)
    head = chunked.text
    tmp = Path(tempfile.mkdtemp(prefix="slmd-bench-long-"))
    daemon = start_daemon(tmp, args.model, "--threads", str(args.threads), "--max-running", "4")
    rows, summaries = [], []
    try:
        with Client(daemon.target, timeout=900) as client:
            docs = client.documents
            opened = docs.open(pdf, filename="long.pdf")
            for fact in FACTS:
                truncated, t_trunc = _ask(docs, head, fact.question)
                started = time.monotonic()
                result = docs.collect(docs.ask(opened, fact.question))
                t_retr = time.monotonic() - started
                in_context = any(fact.answer in c.snippet for c in result.citations)
                rows.append([fact.page, fact.answer, fact.answer in head, int(fact.answer in truncated),
                             in_context, int(fact.answer in result.text), round(t_trunc, 2), round(t_retr, 2),
                             ", ".join(c.label for c in result.citations)])
            for run in ("first (map-reduce)", "repeated (cached parts)"):
                text, total, first, parts, cached = _summary(docs, opened)
                named = sum(any(w.lower() in text.lower() for w in name.split()) for _, name in TOPICS)
                summaries.append([run, parts, cached, round(first, 1), round(total, 1), f"{named}/3", text])
            text, total, first, parts, cached = _summary(docs, head)
            named = sum(any(w.lower() in text.lower() for w in name.split()) for _, name in TOPICS)
            summaries.append(["head only (truncation)", parts, cached, round(first, 1), round(total, 1),
                              f"{named}/3", text])
    finally:
        daemon.stop()

    header = ["page", "fact", "in head", "truncation correct", "retrieved", "retrieval correct",
              "truncation s", "retrieval s", "cited"]
    print_table(header, rows)
    s_header = ["summary", "parts", "cached parts", "first text s", "total s", "parts named"]
    print_table(s_header, [r[:-1] for r in summaries])
    n = len(FACTS)
    acc_t = sum(r[3] for r in rows) / n
    acc_r = sum(r[5] for r in rows) / n
    notes = [
        "", f"**Answer accuracy on planted facts: truncation {acc_t:.0%} ({sum(r[3] for r in rows)}/{n}), "
        f"retrieval {acc_r:.0%} ({sum(r[5] for r in rows)}/{n}).**", "",
        f"Document: {doc.num_pages} pages, {chunked.num_tokens} tokens, {len(chunked.all_chunks)} chunks of 200; "
        f"budget 1,000 tokens. Daemon --threads {args.threads} --max-running 4, greedy decoding.",
        "", "## Summaries", "",
        "| " + " | ".join(s_header) + " |", "|" + "---|" * len(s_header),
        *["| " + " | ".join(str(c) for c in r[:-1]) + " |" for r in summaries],
        "", "\"parts named\": how many of the document's three places (beginning, middle, end) the summary names.",
        "", "## Summary texts", "", *[f"- {r[0]}: {r[-1]}" for r in summaries],
    ]
    path = write_results(args.name, "Long documents: retrieval vs truncation, map-reduce summaries", header, rows,
                         notes)
    _plot(acc_t, acc_r, summaries, RESULTS / f"{args.name}.png")
    print(f"\nwrote {path} and {path.with_suffix('.png')}")


def _plot(acc_t: float, acc_r: float, summaries: list[list], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(["truncation\n(first 1,000 tokens)", "retrieval\n(BM25, 1,000 tokens)"], [acc_t, acc_r],
            color=["tab:gray", "tab:blue"])
    ax1.set_ylim(0, 1)
    ax1.set_ylabel("answers holding the planted fact")
    ax1.set_title(f"Answer accuracy, {len(FACTS)} facts on pages 3-19")
    names = [r[0] for r in summaries]
    ax2.bar(names, [r[4] for r in summaries], color=["tab:orange", "tab:green", "tab:gray"])
    ax2.set_ylabel("seconds (client wall time)")
    ax2.set_title("Summary of the 20-page document")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
