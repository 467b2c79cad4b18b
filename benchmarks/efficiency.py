"""The SlimLM paper's efficiency protocol (its Table 1), through slmd's gRPC API.

    .venv/bin/python benchmarks/efficiency.py [--model PATH]... [--n-gpu-layers -1]

Per model, one `slmd serve` subprocess and one request at a time (a phone app
asking its on-device model), greedy decoding until end of generation or
--max-tokens:
- 5 short questions (under 12 tokens each);
- 5 documents cut into chunks of about 200 tokens; each document's first 1, 2,
  3 and 4 chunks, followed by a summarize instruction (chat template).

Per request, measured on the client (what an app sees, gRPC included):
- TTFT: request sent -> first generated token received;
- ITPS: prompt tokens / TTFT (the prefill rate);
- OTPS: (output tokens - 1) / (last token - first token) (the decode rate);
- runtime: request sent -> stream finished.
Each row is the mean of its 5 requests. Every request starts with a distinct
tag, so the prefix cache can only reuse the chat template's head (the
"cached" column), as a fresh phone app would; a warm-up request runs first.

The default model (SmolLM2-135M-Instruct) always runs unless --skip-default;
--model adds GGUF files (SlimLM exports from training/export.py), repeatable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import RESULTS, corpus_text, print_table, write_results
from slmd.models import DEFAULT_MODEL
from slmd.paths import default_data_dir
from slmd.testing import start_daemon
from slmd.tokenizer import Tokenizer
from slmd_client import AsyncClient

QUESTIONS = [  # each under 12 tokens, like the paper's "Who was the first president of USA?"
    "Who was the first president of USA?",
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Why is the sky blue?",
    "What is photosynthesis?",
]
SUMMARIZE = "Summarize the document above."
NUM_DOCS = 5
CHUNK_TOKENS = 200
MAX_CHUNKS = 4


@dataclass(frozen=True)
class PaperRow:
    """SmolLM-135M-Instruct on a Samsung Galaxy S24 (SlimLM paper, Table 1).
    Strings, because only the short-prompt row is quoted exactly here; the
    document rows give the published ranges across the table."""

    itps: str
    otps: str
    ttft: str
    runtime: str


PAPER_S24 = {
    "question": PaperRow("68.48", "59.72", "0.46", "1.42"),
    "1 chunk": PaperRow("68-174", "33-61", "-", "-"),
    "2 chunks": PaperRow("68-174", "33-61", "-", "-"),
    "3 chunks": PaperRow("68-174", "33-61", "-", "-"),
    "4 chunks": PaperRow("<=174", ">=33", "-", "8.47"),
}
PAPER_NOTE = (
    "S24 columns: SmolLM-135M-Instruct on a Samsung Galaxy S24 from the SlimLM paper's Table 1 "
    "(arXiv 2411.09944): the short-question row (68.48 input tok/s, 59.72 output tok/s, TTFT 0.46 s, "
    "runtime 1.42 s) is quoted per row; for the document rows only the published ranges are given "
    "(input 68-174 tok/s, output 33-61 tok/s, 8.47 s at 800 tokens of document)."
)


@dataclass
class Sample:
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int
    ttft: float
    runtime: float
    otps: float

    @property
    def itps(self) -> float:
        return self.prompt_tokens / self.ttft


def documents(tok: Tokenizer) -> list[list[list[int]]]:
    """NUM_DOCS documents, each a list of rows: row k holds the token ids of the
    first k+1 chunks. Every (document, row) prompt is cut from its own part of
    the corpus, so no two prompts share more than the chat template's head."""
    ids = tok.encode(corpus_text(), allow_special=False)
    per_prompt = [CHUNK_TOKENS * (k + 1) for k in range(MAX_CHUNKS)]
    need = NUM_DOCS * sum(per_prompt)
    if len(ids) < need:
        raise SystemExit(f"corpus too short: {len(ids)} tokens, need {need}")
    out, at = [], 0
    for _ in range(NUM_DOCS):
        rows = []
        for n in per_prompt:
            rows.append(ids[at : at + n])
            at += n
        out.append(rows)
    return out


def prompt_sets(tok: Tokenizer) -> dict[str, list[str]]:
    sets = {"question": list(QUESTIONS)}
    docs = documents(tok)
    for k in range(MAX_CHUNKS):
        name = f"{k + 1} chunk" + ("s" if k else "")
        sets[name] = [f"[doc {d + 1}.{k + 1}] {tok.decode(docs[d][k])}\n\n{SUMMARIZE}" for d in range(NUM_DOCS)]
    return sets


async def one_request(client: AsyncClient, text: str, max_tokens: int) -> Sample:
    t0 = time.perf_counter()
    first = last = None
    n_out = 0
    usage = None
    async for ch in client.generate(messages=[{"role": "user", "content": text}], max_tokens=max_tokens,
                                    temperature=0.0):
        if ch.token_ids:
            now = time.perf_counter()
            first = first or now
            last = now
            n_out += len(ch.token_ids)
        if ch.usage is not None:
            usage = ch.usage
    end = time.perf_counter()
    assert usage is not None and first is not None, "stream ended without tokens or usage"
    otps = (n_out - 1) / (last - first) if n_out > 1 and last > first else float("nan")
    return Sample(usage.prompt_tokens, usage.completion_tokens, usage.cached_prompt_tokens,
                  first - t0, end - t0, otps)


async def run_protocol(target: str, sets: dict[str, list[str]], max_tokens: int) -> dict[str, list[Sample]]:
    async with AsyncClient(target) as c:
        await one_request(c, "[warm-up] " + QUESTIONS[0], 8)
        out = {}
        for name, texts in sets.items():
            out[name] = [await one_request(c, t, max_tokens) for t in texts]
            m = _means(out[name])
            print(f"  {name:>9}: {m['prompt']:.0f} prompt tok, ITPS {m['itps']:.1f}, OTPS {m['otps']:.1f}, "
                  f"TTFT {m['ttft']:.3f} s, runtime {m['runtime']:.2f} s", flush=True)
        return out


def _means(samples: list[Sample]) -> dict[str, float]:
    def mean(xs):
        xs = [x for x in xs if x == x]  # drop NaN (a one-token answer has no decode rate)
        return statistics.fmean(xs) if xs else float("nan")

    return {
        "prompt": mean(s.prompt_tokens for s in samples),
        "output": mean(s.output_tokens for s in samples),
        "cached": mean(s.cached_tokens for s in samples),
        "itps": mean(s.itps for s in samples),
        "otps": mean(s.otps for s in samples),
        "ttft": mean(s.ttft for s in samples),
        "runtime": mean(s.runtime for s in samples),
    }


def model_tokenizer(model: Path, fallback: Path) -> Tokenizer:
    """The model's own tokenizer, so "200 tokens" means 200 of its tokens; the
    default model's if this GGUF's vocabulary cannot be read."""
    try:
        return Tokenizer.from_gguf(model)
    except Exception as e:  # an export with a vocabulary the tiktoken builder does not know
        print(f"  ({model.name}: own tokenizer unavailable ({e}); chunking with the default model's)")
        return Tokenizer.from_gguf(fallback)


def gpu_name() -> str:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, action="append", default=[], help="another GGUF to measure (repeatable)")
    ap.add_argument("--skip-default", action="store_true", help="measure only the --model files")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads of the daemon (0 = all cores)")
    ap.add_argument("--n-gpu-layers", type=int, default=0, help="layers on the GPU (-1 = all)")
    ap.add_argument("--max-tokens", type=int, default=256, help="output cap per request")
    ap.add_argument("--name", default="efficiency", help="results file name under benchmarks/results/")
    args = ap.parse_args()

    default = default_data_dir() / "models" / DEFAULT_MODEL.filename
    models = ([] if args.skip_default else [default]) + list(args.model)
    if not models:
        raise SystemExit("no model to measure")
    threads = args.threads or os.cpu_count() or 1
    load_before = os.getloadavg()

    results: dict[str, dict[str, list[Sample]]] = {}
    for model in models:
        print(f"{model.name}:", flush=True)
        sets = prompt_sets(model_tokenizer(model, default))
        with tempfile.TemporaryDirectory() as tmp:
            d = start_daemon(Path(tmp), model, "--threads", str(threads), "--n-gpu-layers", str(args.n_gpu_layers),
                             "--max-running", "1", "--log-level", "warning")
            try:
                results[model.name] = asyncio.run(run_protocol(d.target, sets, args.max_tokens))
            finally:
                d.stop()
    load_after = os.getloadavg()

    header = ["model", "prompt", "prompt tok", "output tok", "cached tok", "ITPS tok/s", "OTPS tok/s",
              "TTFT s", "runtime s", "S24 ITPS", "S24 OTPS", "S24 TTFT s", "S24 runtime s"]
    rows = []
    for model_name, per_set in results.items():
        for name, samples in per_set.items():
            m, p = _means(samples), PAPER_S24[name]
            rows.append([model_name, name, round(m["prompt"]), round(m["output"]), round(m["cached"]),
                         m["itps"], m["otps"], m["ttft"], m["runtime"], p.itps, p.otps, p.ttft, p.runtime])
    print()
    print_table(header, rows)
    gpu = gpu_name() if args.n_gpu_layers else ""
    where = f"GPU {gpu}, all layers offloaded" if gpu else f"CPU, {threads} threads"
    notes = [
        f"slmd over gRPC on a Unix socket, one request at a time; {where} (n_gpu_layers {args.n_gpu_layers}); "
        f"greedy, up to {args.max_tokens} output tokens; each row is the mean of {NUM_DOCS} requests.",
        "TTFT: request sent to first token received (client side); ITPS = prompt tokens / TTFT; "
        "OTPS = (output tokens - 1) / (last token - first token); runtime = request sent to stream end. "
        "Prompt tokens include the chat template.",
        f"Load average (1, 5, 15 min) before: {_load(load_before)}; after: {_load(load_after)}.",
        PAPER_NOTE,
    ]
    path = write_results(args.name, "SlimLM efficiency protocol (paper Table 1) through slmd", header, rows, notes)
    _plot(results, RESULTS / f"{args.name}.png", where)
    print(f"\nwrote {path} and {path.with_suffix('.png')}")


def _load(la: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.2f}" for x in la)


def _plot(results: dict[str, dict[str, list[Sample]]], path: Path, where: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(PAPER_S24)
    x = np.arange(len(names))
    width = 0.8 / max(1, len(results))
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    panels = [("itps", "input tokens/s (ITPS)", (68, 174)), ("otps", "output tokens/s (OTPS)", (33, 61)),
              ("ttft", "time to first token, s", None), ("runtime", "runtime, s", None)]
    for ax, (key, title, band) in zip(axes.flat, panels):
        for i, (model_name, per_set) in enumerate(results.items()):
            vals = [_means(per_set[n])[key] for n in names]
            ax.bar(x + (i - (len(results) - 1) / 2) * width, vals, width, label=f"slmd: {model_name}")
        if band:
            ax.axhspan(*band, color="tab:red", alpha=0.15, label="S24 range (paper)")
        if key == "ttft":
            ax.plot([0], [0.46], "r*", markersize=12, label="S24 (paper)")
        if key == "runtime":
            ax.plot([0, len(names) - 1], [1.42, 8.47], "r*", markersize=12, label="S24 (paper)")
        ax.set_xticks(x, names)
        ax.set_title(title)
        if key in ("itps", "otps"):
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle(f"SlimLM Table 1 protocol through slmd ({where})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
