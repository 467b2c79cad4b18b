"""Memory and time to first token across the model's lifecycle, and one slmd
serving 4 apps versus 4 separate llama.cpp processes on the same model.

    .venv/bin/python -m benchmarks.memory [--model PATH] [--threads 2]

Lifecycle (one daemon, default engine settings): cold start (spawn to
SERVING, then the first request), warm (the next request), unloaded (a
request with keep_alive=0, then idle), after the lazy reload (the next
request pays the reload) and warm again. RSS is the daemon's VmRSS from
/proc/<pid>/status; TTFT is measured by the client (request sent to first
token) with distinct prompts, so no prefix cache helps.

4 apps: one slmd with 4 KV streams of 2048 tokens (the same KV as the 4
processes) and with its default 16 streams, each serving one request per app
(4 bearer tokens = 4 apps), against 4 Python processes that each load the
model with llama-cpp-python's low-level API and one 2048-token context and
generate once. RSS counts the memory-mapped weights in every process that
touched them; PSS (/proc/<pid>/smaps_rollup) splits shared pages among the
processes that share them, so the PSS sum is the physical memory used.

Writes benchmarks/results/memory.md and memory.png."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.harness import RESULTS, print_table, write_results
from benchmarks.multiapp import start_slmd, token_of, write_config
from slmd.paths import default_data_dir
from slmd_client import AsyncClient, Client

MIB = 1 << 20
GEN_TOKENS = 32
PROMPT = "Write a short note about {topic} for a colleague. Keep it friendly and clear."
TOPICS = ["the weather", "a meeting", "lunch plans", "a book", "the garden", "a train trip", "a concert",
          "a bicycle", "the office", "a recipe"]


def mem_of(pid: int) -> tuple[int, int, int]:
    """(RSS, PSS, anonymous RSS) in bytes."""
    rss = pss = anon = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("RssAnon:"):
                anon = int(line.split()[1]) * 1024
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    return rss, pss, anon


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


# ---- 4 apps ----------------------------------------------------------------------

WORKER = r'''
import sys, ctypes, numpy as np, llama_cpp as L
model_path, n_ctx, threads, prompt, n_gen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
L.llama_backend_init()
mp = L.llama_model_default_params()  # weights memory-mapped, as slmd loads them
model = L.llama_model_load_from_file(model_path.encode(), mp)
cp = L.llama_context_default_params()
cp.n_ctx, cp.n_batch, cp.n_threads, cp.n_threads_batch, cp.n_seq_max = n_ctx, 512, threads, threads, 1
ctx = L.llama_init_from_model(model, cp)
vocab = L.llama_model_get_vocab(model)
n_vocab = L.llama_vocab_n_tokens(vocab)
data = prompt.encode()
arr = (L.llama_token * (len(data) + 8))()
n = L.llama_tokenize(vocab, data, len(data), arr, len(arr), True, True)
batch = L.llama_batch_get_one(arr, n)
L.llama_decode(ctx, batch)
for _ in range(n_gen):
    logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
    tok = (L.llama_token * 1)(int(logits.argmax()))
    L.llama_decode(ctx, L.llama_batch_get_one(tok, 1))
print("ready", flush=True)
sys.stdin.readline()  # hold the memory until the parent has measured
'''


def separate_processes(model: Path, threads: int, n: int = 4) -> tuple[int, int, int, float]:
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(model), "2048", str(threads),
                               PROMPT.format(topic=TOPICS[i]), str(GEN_TOKENS)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for i in range(n)]
    t0 = time.perf_counter()
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", "worker failed"
        secs = time.perf_counter() - t0
        mems = [mem_of(p.pid) for p in procs]
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(30)
    return sum(m[0] for m in mems), sum(m[1] for m in mems), sum(m[2] for m in mems), secs


def one_slmd(model: Path, threads: int, tmp: Path, streams: int | None, n: int = 4) -> tuple[int, int, int, float]:
    apps = [f"app{i}" for i in range(n)]
    cfg = write_config(tmp / f"apps{streams}.toml", apps)
    env = {"SLMD_MEMORY__PSI": "false"}
    extra: tuple[str, ...] = ("--metrics-port", "0")
    if streams:
        env["SLMD_ENGINE__NUM_SEQUENCES"] = str(streams)
        extra += ("--max-running", str(streams))
    work = Path(tempfile.mkdtemp(dir=tmp))
    d = start_slmd(work, model, cfg, threads=threads, env=env, extra=extra)

    async def serve_all() -> None:
        async def one(i: int) -> None:
            async with AsyncClient(d.target, token=token_of(apps[i])) as c:
                await c.complete(PROMPT.format(topic=TOPICS[i]), max_tokens=GEN_TOKENS)
        await asyncio.gather(*(one(i) for i in range(n)))

    try:
        t0 = time.perf_counter()
        asyncio.run(serve_all())
        secs = time.perf_counter() - t0
        mem = mem_of(d.proc.pid)
    finally:
        d.stop()
    return (*mem, secs)


def _median(values: list) -> float | str:
    return "-" if None in values else statistics.median(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=default_data_dir() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="lifecycle runs; the table shows medians")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        runs = [lifecycle(args.model, args.threads, tmp) for _ in range(args.repeat)]
        life = [[rs[0][0], *(_median([r[i] for r in rs]) for i in range(1, 5))] for rs in zip(*runs)]
        sep = separate_processes(args.model, 1)  # 4 processes on a small machine: one thread each
        small = one_slmd(args.model, args.threads, tmp, 4)
        default = one_slmd(args.model, args.threads, tmp, None)
    apps = [[name, m[0] / MIB, m[1] / MIB, m[2] / MIB, m[3]] for name, m in (
        ("4 llama.cpp processes, 1 ctx x 2048 each", sep), ("1 slmd, 4 streams x 2048", small),
        ("1 slmd, default 16 streams x 2048", default))]

    h1 = ["phase", "start s", "TTFT s", "RSS before MiB", "RSS after MiB"]
    print_table(h1, life)
    h2 = ["4 apps served by", "RSS sum MiB", "PSS sum MiB", "anon RSS sum MiB", "wall s"]
    print()
    print_table(h2, apps)
    notes = [
        "", "## 4 apps, one model", "",
        "| " + " | ".join(h2) + " |", "|" + "---|" * len(h2),
        *["| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in a) + " |" for a in apps],
        "",
        f"Lifecycle rows: medians of {args.repeat} runs. TTFT: client-side, request sent to first token, {GEN_TOKENS} tokens generated, distinct prompts "
        f"(no prefix-cache hits), `--threads {args.threads}`. 'start s' is spawn to gRPC health SERVING "
        "(process start, imports, model load, context creation). The first request after an unload pays "
        "the lazy reload (weights still in the page cache: a warm start).",
        "RSS of the processes counts the memory-mapped weights in each; PSS splits shared pages, so the "
        "PSS sum is the physical memory; anonymous RSS is private memory (KV, compute buffers, heap), the "
        "rest is file pages (weights, libraries) that the page cache shares. The 4-process wall time is spawn to all 4 generations done; "
        "slmd's is the 4 concurrent requests only (the daemon was already up). Each separate process "
        "ran with 1 thread (4 processes sharing the cores).",
        "Under critical pressure the idle model is unloaded; the next request reloads it with one KV "
        "stream (engine.max_running 1); when the pressure passes the idle engine reloads the configured "
        "16 streams. With requests in flight (the 'busy' row: 4 requests of 160 tokens running), the "
        "context is recreated with one stream at once: each request saves its KV to host memory or "
        "drops it for recompute, resumes on the new context and completes in full.",
        "Other jobs shared this 2-core machine during the run: times are indicative, memory is not affected.",
    ]
    path = write_results("memory", "Memory across the model lifecycle, and 4 apps on one model",
                         h1, life, notes)
    _plot(life, apps, RESULTS / "memory.png")
    print(f"\nwrote {path} and {path.with_suffix('.png')}")


def _plot(life: list[list], apps: list[list], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(17, 5.5))
    names = [r[0].split(" (")[0].replace("first request ", "") for r in life]
    a1.bar(names, [r[4] for r in life], color="tab:blue")
    a1.set_title("daemon RSS after each phase (MiB)")
    a1.tick_params(axis="x", rotation=30)
    t = [(n, r[2]) for n, r in zip(names, life) if r[2] != "-"]
    a2.bar([n for n, _ in t], [v for _, v in t], color="tab:orange")
    a2.set_title("time to first token (s)")
    a2.tick_params(axis="x", rotation=30)
    labels = ["4 processes", "slmd 4 streams", "slmd 16 streams"]
    x = range(len(apps))
    a3.bar([i - 0.2 for i in x], [a[1] for a in apps], width=0.4, label="RSS sum")
    a3.bar([i + 0.2 for i in x], [a[2] for a in apps], width=0.4, label="PSS sum")
    a3.set_xticks(list(x), labels)
    a3.set_title("4 apps: memory (MiB)")
    a3.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
