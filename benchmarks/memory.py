"""Memory and time to first token across the model's lifecycle, and SLMaaS
versus one model per app: N apps (default 8) each loading their own model in
N processes versus one slmd serving the N apps, total memory and aggregate
throughput in one run.

    .venv/bin/python -m benchmarks.memory [--model PATH] [--threads 2] [--apps 8]

Lifecycle (one daemon, default engine settings): cold start (spawn to
SERVING, then the first request), warm (the next request), unloaded (a
request with keep_alive=0, then idle), after the lazy reload (the next
request pays the reload) and warm again. RSS is the daemon's VmRSS from
/proc/<pid>/status; TTFT is measured by the client (request sent to first
token) with distinct prompts, so no prefix cache helps.

N apps: see benchmarks/per_app.py. N llama-cpp-python processes (each with its
own copy of the GGUF, and again all mapping one file) against one slmd with
--max-running N and its default 2N KV streams, with N streams, and with one
KV pool of 2048 tokens shared by its 2N sequences (engine.kv_pool_tokens); the same
prompts, greedy, the same output token counts (EOS ignored). PSS
(/proc/<pid>/smaps_rollup) splits shared pages among the processes that share
them, so the PSS sum is the physical memory used.

Writes benchmarks/results/memory.md and memory.png."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks import per_app
from benchmarks.harness import RESULTS, print_table, write_results
from benchmarks.multiapp import start_slmd, write_config
from benchmarks.per_app import MIB, PROMPT, TOPICS, mem_of
from slmd.paths import default_data_dir
from slmd_client import Client

GEN_TOKENS = 32


def ttft(client: Client, prompt: str, **kw) -> float:
    t0 = time.perf_counter()
    for chunk in client.generate(prompt, max_tokens=GEN_TOKENS, **kw):
        if chunk.token_ids:
            return time.perf_counter() - t0
    raise RuntimeError("no token")


def _wait(pred, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.05)


def lifecycle(model: Path, threads: int, tmp: Path) -> list[list]:
    cfg = write_config(tmp / "life.toml", ["bench"])
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(dir=tmp))
    d = start_slmd(tmp, model, cfg, threads=threads, env={"SLMD_MEMORY__PSI": "false"},
                   extra=("--metrics-port", "0"))
    start_s = time.perf_counter() - t0
    rows = []
    try:
        with Client(d.target) as c:
            topics = iter(TOPICS)
            rss_idle = mem_of(d.proc.pid)[0]
            cold = ttft(c, PROMPT.format(topic=next(topics)))
            rows.append(["cold start", start_s, cold, rss_idle / MIB, mem_of(d.proc.pid)[0] / MIB])
            warm = ttft(c, PROMPT.format(topic=next(topics)))
            rows.append(["warm", None, warm, mem_of(d.proc.pid)[0] / MIB, mem_of(d.proc.pid)[0] / MIB])
            ttft(c, PROMPT.format(topic=next(topics)), keep_alive=0)
            _wait(lambda: not c.status().model_loaded)
            time.sleep(0.5)
            unloaded = mem_of(d.proc.pid)[0]
            rows.append(["unloaded (keep_alive=0)", None, None, unloaded / MIB, unloaded / MIB])
            reload = ttft(c, PROMPT.format(topic=next(topics)))
            rows.append(["first request after unload", None, reload, unloaded / MIB, mem_of(d.proc.pid)[0] / MIB])
            again = ttft(c, PROMPT.format(topic=next(topics)))
            rows.append(["warm after reload", None, again, mem_of(d.proc.pid)[0] / MIB, mem_of(d.proc.pid)[0] / MIB])
            busy = _critical_while_busy(c, d.proc.pid)
            rows.append(["critical pressure, busy (1-stream context at once)", None, None, *busy])
            before = mem_of(d.proc.pid)[0]
            c.signal_memory_pressure("running_critical")
            _wait(lambda: not c.status().model_loaded)
            time.sleep(0.5)
            crit = mem_of(d.proc.pid)[0]
            rows.append(["critical pressure, idle (unloaded)", None, None, before / MIB, crit / MIB])
            small = ttft(c, PROMPT.format(topic=next(topics)))
            rows.append(["request under critical (1-stream context)", None, small, crit / MIB,
                         mem_of(d.proc.pid)[0] / MIB])
            c.signal_memory_pressure("none")
            _wait(lambda: (lambda s: s.model_loaded and s.num_sequences == 16)(c.status()))
            full = ttft(c, PROMPT.format(topic=next(topics)))
            rows.append(["pressure passed (full context back)", None, full, crit / MIB, mem_of(d.proc.pid)[0] / MIB])
    finally:
        d.stop()
    return rows


def _critical_while_busy(c: Client, pid: int) -> tuple[float, float]:
    """RSS (MiB) before critical pressure and after the context was recreated
    with one stream, with 4 requests in flight; all must complete in full.
    Then the pressure passes and the idle engine goes back to 16 streams."""
    n = 160
    with ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(c.complete, PROMPT.format(topic=t), max_tokens=n, ignore_eos=True) for t in TOPICS[:4]]
        _wait(lambda: c.status().running_requests == 4)
        time.sleep(0.5)
        before = mem_of(pid)[0]
        c.signal_memory_pressure("running_critical")
        _wait(lambda: (lambda s: s.num_sequences == 1 and s.model_loaded and s.running_requests == 1)(c.status()))
        time.sleep(0.5)
        after = mem_of(pid)[0]
        assert all(f.result().usage.completion_tokens == n for f in futs), "a request was lost"
    c.signal_memory_pressure("none")
    _wait(lambda: (lambda s: s.model_loaded and s.num_sequences == 16)(c.status()))
    return before / MIB, after / MIB


def _median(values: list) -> float | str:
    return "-" if None in values else statistics.median(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=default_data_dir() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--threads", type=int, default=2, help="slmd's threads (each per-app process: threads // apps, >= 1)")
    ap.add_argument("--repeat", type=int, default=3, help="lifecycle runs; the table shows medians")
    ap.add_argument("--apps", type=int, default=8, help="apps (per-app processes; slmd clients and --max-running)")
    ap.add_argument("--requests", type=int, default=2, help="requests per app, one after another")
    ap.add_argument("--gen-tokens", type=int, default=64, help="generated tokens per request (greedy, EOS ignored)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        runs = [lifecycle(args.model, args.threads, tmp) for _ in range(args.repeat)]
        life = [[rs[0][0], *(_median([r[i] for r in rs]) for i in range(1, 5))] for rs in zip(*runs)]
        apps, ratios, labels = per_app.compare(args.model, args.apps, threads=args.threads, requests=args.requests,
                                               gen=args.gen_tokens, tmp=tmp, max_running=args.apps)

    h1 = ["phase", "start s", "TTFT s", "RSS before MiB", "RSS after MiB"]
    print_table(h1, life)
    print()
    print_table(per_app.APP_HEADER, apps)
    print()
    print_table(per_app.RATIO_HEADER, ratios)
    n, own, shared = args.apps, apps[0], apps[1]
    met = {r[0]: (r[3], r[6]) for r in ratios}
    verdict = "; ".join(f"{name}: {'met' if m[0] == 'yes' else 'NOT met'} against own copies, "
                        f"{'met' if m[1] == 'yes' else 'NOT met'} against the shared file" for name, m in met.items())
    notes = [
        "", f"## SLMaaS versus one model per app: {n} apps", "",
        *per_app.md_table(per_app.APP_HEADER, apps), "",
        "Ratios slmd / per-app (target: PSS <= 0.25x with tok/s >= 1.00x):", "",
        *per_app.md_table(per_app.RATIO_HEADER, ratios), "",
        f"**Target (slmd <= 0.25x the per-app memory at {n} apps with equal or better throughput)**: {verdict}.",
        "",
        per_app.why(apps, n), "",
        f"Workload: {n} apps x {args.requests} requests, one after another per app and all apps at once, "
        f"{args.gen_tokens} generated tokens each (greedy, EOS ignored), distinct short prompts (about "
        f"{own[5] // (n * args.requests)} tokens; slmd counts {apps[2][5] // (n * args.requests)}), the same prompts on "
        "every side. Memory: the sample with the largest PSS sum, taken every 0.2 s from the first request to the "
        "last token and once after it with everything still loaded; sums over the per-app processes or the one "
        "daemon (the benchmark process, which holds slmd's 8 gRPC clients, is not counted on either side). "
        "Throughput: generated tokens / wall time from the first request to the last token (the per-app processes "
        "had loaded their model before; the daemon was up).",
        f"Per-app processes: llama-cpp-python low-level API, weights memory-mapped, one context of 1 sequence x "
        f"2048 tokens, flash attention off as slmd has it on the CPU, {max(1, args.threads // n)} thread each ({n} processes share {args.threads} cores). 'Own copy' "
        f"copies the GGUF to {n} distinct files first: the page cache shares nothing between them, as apps that "
        "ship their own model in their own package or sandbox; 'shared file' maps one file, so the weights are in "
        "memory once (the best case for per-app). Each process also carries its own Python interpreter and "
        "llama.cpp runtime, which an app embedding llama.cpp in-process would partly share with itself.",
        f"slmd: `--max-running {n} --context 2048 --threads {args.threads}`, apps told apart by bearer tokens, other "
        f"settings default (prefix cache on, host tier up to 512 MiB). engine.num_sequences defaults to 2 x max_running "
        f"= {2 * n} KV streams of 2048 tokens ({n} for running requests, {n} for idle cache holders); the second slmd "
        f"row sets SLMD_ENGINE__NUM_SEQUENCES={n}, the same KV as the {n} processes; the pooled row sets "
        f"SLMD_ENGINE__KV_POOL_TOKENS={per_app.POOL}: one unified KV cache of {per_app.POOL} cells shared by the "
        f"{2 * n} sequences (running requests and cache holders), the KV of ONE per-app process, sized for the "
        "workload's aggregate demand (requests wait or are preempted when it is full).",
        "",
        f"Lifecycle rows: medians of {args.repeat} runs. TTFT: client-side, request sent to first token, {GEN_TOKENS} tokens generated, distinct prompts "
        f"(no prefix-cache hits), `--threads {args.threads}`. 'start s' is spawn to gRPC health SERVING "
        "(process start, imports, model load, context creation). The first request after an unload pays "
        "the lazy reload (weights still in the page cache: a warm start).",
        "Under critical pressure the idle model is unloaded; the next request reloads it with one KV "
        "stream (engine.max_running 1); when the pressure passes the idle engine reloads the configured "
        "16 streams. With requests in flight (the 'busy' row: 4 requests of 160 tokens running), the "
        "context is recreated with one stream at once: each request saves its KV to host memory or "
        "drops it for recompute, resumes on the new context and completes in full.",
        "Other jobs may share this 2-core machine during the run: times are indicative, memory is not affected.",
    ]
    path = write_results("memory", f"Memory across the model lifecycle, and {n} apps: slmd versus one model per app",
                         h1, life, notes)
    _plot(life, apps, labels, n, RESULTS / "memory.png")
    print(f"\nwrote {path} and {path.with_suffix('.png')}")


def _plot(life: list[list], apps: list[list], labels: list[str], n: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ((a1, a2), (a3, a4)) = plt.subplots(2, 2, figsize=(15, 10))
    names = [r[0].split(" (")[0].replace("first request ", "") for r in life]
    a1.bar(names, [r[4] for r in life], color="tab:blue")
    a1.set_title("daemon RSS after each phase (MiB)")
    a1.tick_params(axis="x", rotation=30)
    t = [(n_, r[2]) for n_, r in zip(names, life) if r[2] != "-"]
    a2.bar([n_ for n_, _ in t], [v for _, v in t], color="tab:orange")
    a2.set_title("time to first token (s)")
    a2.tick_params(axis="x", rotation=30)
    per_app.plot(a3, a4, apps, labels, n)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
