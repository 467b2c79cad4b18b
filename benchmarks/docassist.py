"""Document assistance latency, with and without the shared document prefix.

    .venv/bin/python -m benchmarks.docassist [--model PATH] [--threads 1] [--doc-tokens 900]

For each test document (PDF, DOCX, PPTX, XLSX of about --doc-tokens tokens,
built in memory from standard-library docstrings) and each mode, in one run:
a summary, three suggested questions and three answers, one after another.

- shared: OpenDocument (which starts the prefix prefill at once), then every
  task by document id: all tasks share the prefix ids (system prompt +
  document), so the prefix cache serves them from one prefill;
- unshared: every task sends the document inline as text with a unique nonce
  line in front, so nothing past the system prompt (~35 tokens) can be reused;
  the text is the daemon's own extraction of the file, so both modes see the
  same document.

TTFT is measured by the client (send to first text chunk) for the streamed
tasks and taken from the daemon's usage for the suggestions (a unary call);
total is the client's wall time of the call. Greedy decoding throughout."""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.harness import RESULTS, corpus_text, print_table, write_results
from slmd.docassist.ingest import IngestLimits, extract
from slmd.models import DEFAULT_MODEL
from slmd.paths import default_data_dir
from slmd.testing import start_daemon
from slmd.tokenizer import Tokenizer
from slmd_client import Client

QUESTIONS = ("What is this document about?", "Which function or class is described first?",
             "What does the text say about errors?")


def _paragraphs(tok: Tokenizer, offset: int, num_tokens: int) -> list[str]:
    ids = tok.encode(corpus_text(), allow_special=False)[offset:offset + num_tokens]
    text = tok.decode(ids)
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def _lines(text: str, width: int = 90) -> list[str]:
    import textwrap

    return textwrap.wrap(" ".join(text.split()), width) or [""]


def make_pdf(paras: list[str]) -> bytes:
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    out = io.BytesIO()
    pdf = canvas.Canvas(out, pagesize=A4, invariant=True)
    y = 800
    for para in paras:
        for line in _lines(para):
            if y < 60:
                pdf.showPage()
                y = 800
            pdf.drawString(40, y, line)
            y -= 14
        y -= 10
    pdf.save()
    return out.getvalue()


def make_docx(paras: list[str]) -> bytes:
    import docx

    document = docx.Document()
    for para in paras:
        document.add_paragraph(para)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def make_pptx(paras: list[str]) -> bytes:
    import pptx

    deck = pptx.Presentation()
    for i, para in enumerate(paras):
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = f"Part {i + 1}"
        slide.placeholders[1].text = para
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def make_xlsx(paras: list[str]) -> bytes:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Notes"
    sheet.append(["Item", "Text"])
    for i, para in enumerate(paras):
        sheet.append([i + 1, para])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


BUILDERS = {"report.pdf": make_pdf, "report.docx": make_docx, "deck.pptx": make_pptx, "sheet.xlsx": make_xlsx}


def _stream(chunks) -> tuple[float | None, object, str]:
    t0 = time.perf_counter()
    ttft, usage, parts = None, None, []
    for chunk in chunks:
        if chunk.text and ttft is None:
            ttft = time.perf_counter() - t0
        parts.append(chunk.text)
        usage = chunk.usage or usage
    return ttft, usage, "".join(parts)


def run_tasks(docs, document, mode: str, name: str, rows: list[list], max_tokens: int) -> float:
    """The five tasks on `document` (an id, or a function giving fresh inline text)."""
    start = time.perf_counter()

    def doc():
        return document() if callable(document) else document

    def add(task, ttft, usage, total):
        rows.append([name, mode, task, usage.prompt_tokens, usage.cached_prompt_tokens, usage.completion_tokens,
                     ttft if ttft is not None else float("nan"), total])

    t0 = time.perf_counter()
    ttft, usage, _ = _stream(docs.summarize(doc(), max_tokens=max_tokens))
    add("summary", ttft, usage, time.perf_counter() - t0)
    t0 = time.perf_counter()
    questions = docs.suggest_questions(doc())
    add("suggest", questions.usage.time_to_first_token_seconds, questions.usage, time.perf_counter() - t0)
    for i, question in enumerate(QUESTIONS):
        t0 = time.perf_counter()
        ttft, usage, _ = _stream(docs.ask(doc(), question, max_tokens=max_tokens))
        add(f"answer {i + 1}", ttft, usage, time.perf_counter() - t0)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=default_data_dir() / "models" / DEFAULT_MODEL.filename)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--doc-tokens", type=int, default=900)
    ap.add_argument("--max-tokens", type=int, default=48, help="cap of the summary and the answers")
    ap.add_argument("--name", default="docassist")
    args = ap.parse_args()

    tok = Tokenizer.from_gguf(args.model)
    files = {name: build(_paragraphs(tok, i * 5000, args.doc_tokens)) for i, (name, build) in
             enumerate(BUILDERS.items())}
    rows: list[list] = []
    totals: list[list] = []
    d = start_daemon(Path(tempfile.mkdtemp()), args.model, "--threads", str(args.threads), "--max-running", "4")
    try:
        with Client(d.target, timeout=600) as client:
            docs = client.documents
            docs.collect(docs.summarize("Warm-up.", max_tokens=2))  # model pages in, grammar compiled
            for name, data in files.items():
                text = extract(data, filename=name, limits=IngestLimits()).text

                def inline(text=text):
                    return f"[request {uuid.uuid4().hex}]\n{text}"

                unshared = run_tasks(docs, inline, "unshared", name, rows, args.max_tokens)
                t0 = time.perf_counter()
                opened = docs.open(data, filename=name)
                open_s = time.perf_counter() - t0
                shared = open_s + run_tasks(docs, opened, "shared", name, rows, args.max_tokens)
                docs.close(opened)
                totals.append([name, opened.info.num_kept_tokens, opened.info.num_prefix_tokens, unshared, shared,
                               unshared / shared])
    finally:
        d.stop()

    header = ["document", "mode", "task", "prompt tok", "cached tok", "output tok", "TTFT s", "total s"]
    print_table(header, rows)
    total_header = ["document", "doc tokens", "prefix tokens", "unshared s (5 tasks)", "shared s (open + 5 tasks)",
                    "speed-up"]
    print()
    print_table(total_header, totals)
    ttft = _mean_ttft(rows)
    notes = [
        "", "## Per document, all five tasks", "",
        "| " + " | ".join(total_header) + " |", "|" + "---|" * len(total_header),
        *["| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r) + " |" for r in totals],
        "", "## Mean TTFT by task (seconds)", "",
        "| task | unshared | shared |", "|---|---|---|",
        *[f"| {task} | {u:.3f} | {s:.3f} |" for task, (u, s) in ttft.items()],
        "",
        f"Documents of about {args.doc_tokens} tokens (the default budget keeps 1,000); summary and answers "
        f"capped at {args.max_tokens} tokens, greedy; daemon with --threads {args.threads} --max-running 4.",
        "unshared: inline text with a unique nonce line before the document, so only the system prompt "
        "(cached tok column) can be reused; shared: OpenDocument then the document id.",
        "TTFT: client-measured for streamed tasks, the daemon's usage for suggestions (unary).",
    ]
    path = write_results(args.name, "Document assistance: shared document prefix vs none", header, rows, notes)
    _plot(ttft, totals, RESULTS / f"{args.name}.png")
    print(f"\nwrote {path} and {path.with_suffix('.png')}")


def _mean_ttft(rows: list[list]) -> dict[str, tuple[float, float]]:
    out = {}
    for task in ("summary", "suggest", "answer 1", "answer 2", "answer 3"):
        per_mode = []
        for mode in ("unshared", "shared"):
            values = [r[6] for r in rows if r[1] == mode and r[2] == task and r[6] == r[6]]
            per_mode.append(statistics.mean(values) if values else float("nan"))
        out[task] = tuple(per_mode)
    return out


def _plot(ttft: dict[str, tuple[float, float]], totals: list[list], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    tasks = list(ttft)
    x = range(len(tasks))
    ax1.bar([i - 0.2 for i in x], [ttft[t][0] for t in tasks], 0.4, label="unshared (inline + nonce)")
    ax1.bar([i + 0.2 for i in x], [ttft[t][1] for t in tasks], 0.4, label="shared (document id)")
    ax1.set_xticks(list(x), tasks)
    ax1.set_ylabel("mean time to first token (s)")
    ax1.set_title("TTFT per task, mean over documents")
    ax1.legend()
    names = [r[0] for r in totals]
    y = range(len(names))
    ax2.bar([i - 0.2 for i in y], [r[3] for r in totals], 0.4, label="unshared")
    ax2.bar([i + 0.2 for i in y], [r[4] for r in totals], 0.4, label="shared (incl. open)")
    ax2.set_xticks(list(y), names)
    ax2.set_ylabel("seconds for summary + suggestions + 3 answers")
    ax2.set_title("Total per document")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
