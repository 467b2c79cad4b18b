"""Shared document prefixes across apps (issue 4.6): slmd with its prefix
cache on and off, and llama.cpp's llama-server, on one document-assistant
workload.

    .venv/bin/python -m benchmarks.prefix_cache [--docs 10] [--doc-tokens 800] [--threads 2]

Workload: --docs documents of about --doc-tokens tokens (slices of
harness.corpus_text), five tasks each (a summary, suggested questions, three
questions), every request a chat of system = instructions + document and
user = the task, so a document's requests share their whole document prefix.
Four apps in one sharing group (`[cache] sharing_groups`), each one client
with its own token, run their request lists one request at a time (4 in
flight in all). The requests go round robin over the apps in this order: the
first request of document d (its summary), then the four follow-ups of
document d - --lag; so a document's five requests land on different apps, and
its follow-ups arrive while later documents are being opened (--lag 0 sends
them right behind the first request, concurrently with it). Every request
generates --output-tokens tokens (greedy, ignore_eos).

Systems, one after another on the same GGUF and thread count:
- slmd, prefix cache on (the default);
- slmd, prefix cache off (SLMD_CACHE__ENABLED=false);
- llama-server --parallel 4, prompts rendered with the same chat template and
  sent to its /completion endpoint (cache_prompt on: it reuses a slot's KV).

Measured: time to first token (client side: request sent to first token
received) of follow-up requests versus the first request of each document;
wall time of the whole workload, generated tokens/s and requests/s.
Targets: slmd follow-up TTFT <= 0.2x cold; throughput >= 2x cache off and
>= 1.5x llama-server."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import RESULTS, corpus_text, print_table, write_results
from benchmarks.llama_server import LlamaServer
from benchmarks.multiapp import default_threads, load_averages, percentile, start_slmd, token_of, write_config
from slmd.chat import Prompter
from slmd.models import DEFAULT_MODEL
from slmd.paths import default_data_dir
from slmd.tokenizer import Tokenizer
from slmd_client import AsyncClient

SYSTEM = "You are a helpful assistant. Answer using only the document below.\n\nDocument:\n"
TASKS = (
    ("summary", "Summarize the document in a few sentences."),
    ("suggestions", "Suggest three questions a reader could ask about this document."),
    ("question 1", "What is this document about?"),
    ("question 2", "Which function or class is described first?"),
    ("question 3", "What does the document say about errors?"),
)
SYSTEMS = ("slmd cache on", "slmd cache off", "llama-server")


@dataclass(frozen=True)
class Job:
    doc: int
    task: int
    app: int

    @property
    def is_first(self) -> bool:
        return self.task == 0


@dataclass
class Result:
    job: Job
    start: float
    end: float
    ttft: float
    num_prompt_tokens: int
    num_cached_tokens: int
    num_generated_tokens: int


def documents(tok: Tokenizer, num_docs: int, num_tokens: int) -> list[str]:
    ids = tok.encode(corpus_text(), allow_special=False)
    step = max(num_tokens, (len(ids) - num_tokens) // max(1, num_docs))
    if step * (num_docs - 1) + num_tokens > len(ids):
        raise SystemExit(f"the corpus holds {len(ids)} tokens: too few for {num_docs} documents of {num_tokens}")
    return [tok.decode(ids[i * step : i * step + num_tokens]) for i in range(num_docs)]


def messages(doc: str, task: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM + doc}, {"role": "user", "content": TASKS[task][1]}]


def plan(num_docs: int, num_apps: int, lag: int) -> list[list[Job]]:
    """Per app, its requests in order (see the module docstring)."""
    order: list[tuple[int, int]] = []
    for k in range(num_docs + lag):
        if k < num_docs:
            order.append((k, 0))
        if k - lag >= 0:
            order += [(k - lag, t) for t in range(1, len(TASKS))]
    per_app: list[list[Job]] = [[] for _ in range(num_apps)]
    for i, (d, t) in enumerate(order):
        per_app[i % num_apps].append(Job(d, t, i % num_apps))
    return per_app


async def run_slmd(target: str, app_ids: list[str], docs: list[str], jobs: list[list[Job]],
                   output_tokens: int) -> tuple[list[Result], float]:
    clients = [AsyncClient(target, token=token_of(a)) for a in app_ids]

    async def one(c: AsyncClient, job: Job) -> Result:
        t0 = time.perf_counter()
        ttft, usage = 0.0, None
        async for ch in c.generate(messages=messages(docs[job.doc], job.task), max_tokens=output_tokens,
                                   temperature=0.0, ignore_eos=True):
            if ch.token_ids and not ttft:
                ttft = time.perf_counter() - t0
            usage = ch.usage or usage
        return Result(job, t0, time.perf_counter(), ttft, usage.prompt_tokens, usage.cached_prompt_tokens,
                      usage.completion_tokens)

    try:
        # warm up each connection (and the model's pages) on text that is no document
        await asyncio.gather(*(c.complete("Hello.", max_tokens=2, temperature=0.0) for c in clients))
        return await _drive(jobs, lambda job: one(clients[job.app], job))
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def run_llama_server(srv: LlamaServer, prompter: Prompter, docs: list[str], jobs: list[list[Job]],
                           output_tokens: int) -> tuple[list[Result], float]:
    async def one(job: Job) -> Result:
        t0 = time.perf_counter()
        c = await srv.complete(prompter.render(messages(docs[job.doc], job.task)), max_tokens=output_tokens)
        return Result(job, t0, time.perf_counter(), c.ttft_seconds, c.num_prompt_tokens, c.num_cached_tokens,
                      c.num_generated_tokens)

    await srv.complete("Hello.", max_tokens=2)
    return await _drive(jobs, one)


async def _drive(jobs: list[list[Job]], send) -> tuple[list[Result], float]:
    async def app_loop(mine: list[Job]) -> list[Result]:
        return [await send(job) for job in mine]

    t0 = time.perf_counter()
    per_app = await asyncio.gather(*(app_loop(mine) for mine in jobs))
    return [r for rs in per_app for r in rs], time.perf_counter() - t0


def summarize(name: str, results: list[Result], wall: float) -> dict:
    cold = [r.ttft for r in results if r.job.is_first]
    follow = [r for r in results if not r.job.is_first]
    gen = sum(r.num_generated_tokens for r in results)
    doc_hits = [r for r in follow if r.num_cached_tokens >= 0.9 * r.num_prompt_tokens - 40]
    return {
        "system": name, "requests": len(results), "wall_s": wall, "req_s": len(results) / wall,
        "gen_tok_s": gen / wall, "cold_p50": statistics.median(cold),
        "follow_p50": statistics.median(r.ttft for r in follow), "follow_p90": percentile([r.ttft for r in follow], 90),
        "follow_hit_p50": statistics.median(r.ttft for r in doc_hits) if doc_hits else float("nan"),
        "num_doc_hits": len(doc_hits), "num_follow": len(follow),
        "prompt_tokens": statistics.mean(r.num_prompt_tokens for r in results),
        "cached_share": sum(r.num_cached_tokens for r in results) / sum(r.num_prompt_tokens for r in results),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=default_data_dir() / "models" / DEFAULT_MODEL.filename)
    ap.add_argument("--docs", type=int, default=10)
    ap.add_argument("--doc-tokens", type=int, default=800)
    ap.add_argument("--output-tokens", type=int, default=48)
    ap.add_argument("--apps", type=int, default=4)
    ap.add_argument("--lag", type=int, default=3, help="documents opened before a document's follow-ups are sent")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of: " + ", ".join(SYSTEMS))
    ap.add_argument("--name", default="prefix_cache")
    args = ap.parse_args()
    sys.argv[0] = os.path.relpath(sys.argv[0])  # the command line in the results names no machine paths
    systems = [s.strip() for s in args.systems.split(",")]
    tok = Tokenizer.from_gguf(args.model)
    prompter = Prompter(tok)
    docs = documents(tok, args.docs, args.doc_tokens)
    jobs = plan(args.docs, args.apps, args.lag)
    app_ids = [f"app{i}" for i in range(args.apps)]
    load_before = load_averages()
    summaries, raw = [], {}

    for name in systems:
        t_start = time.perf_counter()
        if name.startswith("slmd"):
            env = {"SLMD_CACHE__ENABLED": "false"} if name == "slmd cache off" else {}
            with tempfile.TemporaryDirectory() as tmp:
                cfg = write_config(Path(tmp) / "slmd.toml", app_ids, sharing_group="docs")
                d = start_slmd(Path(tmp), args.model, cfg, threads=args.threads, env=env,
                               extra=("--max-running", str(args.apps)))
                try:
                    res, wall = asyncio.run(run_slmd(d.target, app_ids, docs, jobs, args.output_tokens))
                finally:
                    d.stop()
        elif name == "llama-server":
            with tempfile.TemporaryDirectory() as tmp:
                with LlamaServer(args.model, parallel=args.apps, threads=args.threads,
                                 log_path=Path(tmp) / "llama-server.log") as srv:
                    res, wall = asyncio.run(run_llama_server(srv, prompter, docs, jobs, args.output_tokens))
        else:
            raise SystemExit(f"unknown system {name!r}; expected one of {SYSTEMS}")
        raw[name] = res
        s = summarize(name, res, wall)
        summaries.append(s)
        print(f"{name}: {wall:.1f}s, {s['gen_tok_s']:.1f} gen tok/s, cold TTFT p50 {s['cold_p50']:.2f}s, "
              f"follow-up p50 {s['follow_p50']:.2f}s ({time.perf_counter() - t_start:.0f}s with start-up)", flush=True)
    load_after = load_averages()

    header = ["system", "requests", "wall s", "req/s", "gen tok/s", "cold TTFT p50 s", "follow-up TTFT p50 s",
              "follow-up / cold", "follow-up TTFT p90 s", "follow-ups with doc cached", "cached share of prompt"]
    rows = [[s["system"], s["requests"], s["wall_s"], s["req_s"], s["gen_tok_s"], s["cold_p50"], s["follow_p50"],
             s["follow_p50"] / s["cold_p50"], s["follow_p90"], f"{s['num_doc_hits']}/{s['num_follow']}",
             s["cached_share"]] for s in summaries]
    print()
    print_table(header, rows)
    by = {s["system"]: s for s in summaries}
    notes = [
        f"Model: {args.model.name}; {args.docs} documents of {args.doc_tokens} tokens, {len(TASKS)} tasks each "
        f"(mean prompt {statistics.mean(s['prompt_tokens'] for s in summaries):.0f} tokens with the chat template); "
        f"{args.apps} apps in one sharing group, one client each, one request in flight per app; lag {args.lag}; "
        f"{args.output_tokens} output tokens per request (greedy, ignore_eos); {args.threads} threads for every system; "
        f"slmd --max-running {args.apps}, llama-server --parallel {args.apps} -c {args.apps * 2048}.",
        "TTFT: client side, request sent to first token received. 'cold' = the first request of each document "
        "(its summary); 'follow-up' = the other four. 'follow-ups with doc cached': the server reported at least "
        "the document's tokens as reused from cache.",
        f"Load average (1, 5, 15 min) before: {load_before}; after: {load_after} (other work shares this machine).",
    ]
    notes += _targets(by)
    path = write_results(args.name, "Shared document prefixes across apps: slmd vs llama-server", header, rows,
                         ["", *[f"- {n}" for n in notes]])
    _plot(summaries, raw, RESULTS / f"{args.name}.png")
    print("\n".join(notes))
    print(f"\nwrote {path} and {path.with_suffix('.png')}")


def _targets(by: dict[str, dict]) -> list[str]:
    out = []
    on, off, ls = by.get("slmd cache on"), by.get("slmd cache off"), by.get("llama-server")
    if on:
        r = on["follow_p50"] / on["cold_p50"]
        out.append(f"Target follow-up TTFT <= 0.2x cold: {r:.2f}x -> {'met' if r <= 0.2 else 'MISSED'}.")
    if on and off:
        r = on["gen_tok_s"] / off["gen_tok_s"]
        out.append(f"Target throughput >= 2x cache off: {r:.2f}x -> {'met' if r >= 2 else 'MISSED'}.")
    if on and ls:
        r = on["gen_tok_s"] / ls["gen_tok_s"]
        out.append(f"Target throughput >= 1.5x llama-server: {r:.2f}x -> {'met' if r >= 1.5 else 'MISSED'}.")
    return out


def _plot(summaries: list[dict], raw: dict[str, list[Result]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    names = [s["system"] for s in summaries]
    x = range(len(names))
    axes[0].bar([i - 0.2 for i in x], [s["cold_p50"] for s in summaries], 0.4, label="first request of a document")
    axes[0].bar([i + 0.2 for i in x], [s["follow_p50"] for s in summaries], 0.4, label="follow-ups")
    axes[0].set_xticks(list(x), names)
    axes[0].set_title("TTFT p50 (s)")
    axes[0].legend()
    axes[1].bar(list(x), [s["gen_tok_s"] for s in summaries])
    axes[1].set_xticks(list(x), names)
    axes[1].set_title("generated tokens/s (whole workload)")
    for name, res in raw.items():
        t0 = min(r.start for r in res)
        pts = sorted((r.start - t0, r.ttft, r.job.is_first) for r in res)
        axes[2].scatter([p[0] for p in pts], [p[1] for p in pts], s=[30 if p[2] else 8 for p in pts], label=name)
    axes[2].set_xlabel("request sent at (s)")
    axes[2].set_ylabel("TTFT (s)")
    axes[2].set_title("TTFT per request (large dots: first of a document)")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
