"""SLMaaS versus one model per app, for benchmarks/memory.py.

Per-app side: N Python processes, each loading the model with llama-cpp-python's
low-level API (weights memory-mapped), one context of 1 sequence x 2048 tokens,
1 thread, and running its app's requests one after another with greedy decoding
(EOS ignored). Either every process maps its own copy of the GGUF (distinct
files share no page cache, as apps that ship their own model in their own
package or sandbox) or all map the same file (the page cache shares the
weights: the best case for per-app).

slmd side: one daemon, N apps told apart by bearer tokens, each app's requests
sent one after another, all apps at once (the engine batches them).

Memory: the sum over the processes of PSS (/proc/<pid>/smaps_rollup, shared
pages split among their users, so the sum is the physical memory), RSS and
anonymous RSS, sampled every 0.2 s from the first request to the last token and
once more after it with everything still loaded; the row shows the sample with
the largest PSS sum. Throughput: generated tokens / wall time from the first
request to the last token."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.multiapp import start_slmd, token_of, write_config
from slmd_client import AsyncClient

MIB = 1 << 20
POOL = 2048  # the pooled slmd row: one KV pool as large as ONE per-app process's context
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


def app_prompts(n_apps: int, requests: int) -> list[list[str]]:
    """Distinct prompts (no prefix shared across apps), `requests` per app."""
    return [[f"[app {i}, request {j}] " + PROMPT.format(topic=TOPICS[(i * requests + j) % len(TOPICS)])
             for j in range(requests)] for i in range(n_apps)]


class PeakSampler:
    """Samples the summed (RSS, PSS, anon) of some processes in a thread and
    keeps the sample with the largest PSS sum."""

    def __init__(self, pids: list[int], every: float = 0.2) -> None:
        self.pids, self.every = pids, every
        self.peak = (0, 0, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        mems = [mem_of(p) for p in self.pids]
        s = tuple(sum(m[k] for m in mems) for k in range(3))
        if s[1] > self.peak[1]:
            self.peak = s

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # everything still loaded, the workload done


WORKER = r'''
import sys, json, numpy as np, llama_cpp as L
model_path, n_ctx, threads, n_gen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
prompts = json.loads(sys.argv[5])
L.llama_backend_init()
mp = L.llama_model_default_params()
if hasattr(L, "LLAMA_LOAD_MODE_MMAP"):
    mp.load_mode = L.LLAMA_LOAD_MODE_MMAP  # weights memory-mapped, as slmd loads them
model = L.llama_model_load_from_file(model_path.encode(), mp)
cp = L.llama_context_default_params()
cp.n_ctx, cp.n_batch, cp.n_threads, cp.n_threads_batch, cp.n_seq_max = n_ctx, 512, threads, threads, 1
cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as slmd runs on the CPU (model.flash_attn auto)
ctx = L.llama_init_from_model(model, cp)
assert model and ctx, "load failed"
mem = L.llama_get_memory(ctx)
vocab = L.llama_model_get_vocab(model)
n_vocab = L.llama_vocab_n_tokens(vocab)
print("loaded", flush=True)
assert sys.stdin.readline().strip() == "go"
n_prompt = n_out = 0
for prompt in prompts:
    L.llama_memory_clear(mem, True)
    data = prompt.encode()
    arr = (L.llama_token * (len(data) + 8))()
    n = L.llama_tokenize(vocab, data, len(data), arr, len(arr), True, False)
    assert L.llama_decode(ctx, L.llama_batch_get_one(arr, n)) == 0
    n_prompt += n
    for _ in range(n_gen):  # greedy, EOS ignored
        logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
        tok = (L.llama_token * 1)(int(logits.argmax()))
        n_out += 1
        assert L.llama_decode(ctx, L.llama_batch_get_one(tok, 1)) == 0
print("done", n_prompt, n_out, flush=True)
sys.stdin.readline()  # hold the memory until the parent has measured
'''


def per_app_processes(model: Path, n_apps: int, prompts: list[list[str]], gen: int, *, own_copies: bool,
                      tmp: Path, context: int = 2048, threads: int = 1) -> dict:
    files = [model] * n_apps
    if own_copies:  # every app ships its own copy: N files, N copies of the weights in the page cache
        d = Path(tempfile.mkdtemp(dir=tmp))
        files = [d / f"app{i}-{model.name}" for i in range(n_apps)]
        for f in files:
            shutil.copyfile(model, f)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(files[i]), str(context), str(threads), str(gen),
                               json.dumps(prompts[i])],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for i in range(n_apps)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "loaded", "worker failed to load"
        with PeakSampler([p.pid for p in procs]) as s:
            t0 = time.perf_counter()
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            done = [p.stdout.readline().split() for p in procs]
            secs = time.perf_counter() - t0
        assert all(d and d[0] == "done" for d in done), f"worker failed: {done}"
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(30)
        if own_copies:
            shutil.rmtree(files[0].parent, ignore_errors=True)
    return {"mem": s.peak, "secs": secs, "prompt_tokens": sum(int(d[1]) for d in done),
            "tokens": sum(int(d[2]) for d in done), "procs": n_apps}


def one_slmd(model: Path, n_apps: int, prompts: list[list[str]], gen: int, *, tmp: Path, threads: int,
             max_running: int, num_sequences: int = 0, context: int = 2048, kv_pool_tokens: int = 0) -> dict:
    apps = [f"app{i}" for i in range(n_apps)]
    cfg = write_config(tmp / f"apps{n_apps}-{max_running}-{num_sequences}-{kv_pool_tokens}.toml", apps)
    env = {"SLMD_MEMORY__PSI": "false"}
    if num_sequences:
        env["SLMD_ENGINE__NUM_SEQUENCES"] = str(num_sequences)
    if kv_pool_tokens:
        env["SLMD_ENGINE__KV_POOL_TOKENS"] = str(kv_pool_tokens)
    work = Path(tempfile.mkdtemp(dir=tmp))
    d = start_slmd(work, model, cfg, threads=threads, context=context, env=env,
                   extra=("--metrics-port", "0", "--max-running", str(max_running)))

    async def serve_all() -> list:
        async def app(i: int) -> list:
            out = []
            async with AsyncClient(d.target, token=token_of(apps[i])) as c:
                for p in prompts[i]:
                    out.append(await c.complete(p, max_tokens=gen, temperature=0.0, ignore_eos=True))
            return out
        return await asyncio.gather(*(app(i) for i in range(n_apps)))

    try:
        with PeakSampler([d.proc.pid]) as s:
            t0 = time.perf_counter()
            results = [c for per_app in asyncio.run(serve_all()) for c in per_app]
            secs = time.perf_counter() - t0
    finally:
        d.stop()
    assert all(c.usage.completion_tokens == gen for c in results), "short completion"
    return {"mem": s.peak, "secs": secs, "prompt_tokens": sum(c.usage.prompt_tokens for c in results),
            "tokens": sum(c.usage.completion_tokens for c in results), "procs": 1}


def compare(model: Path, n_apps: int, *, threads: int, requests: int, gen: int, tmp: Path,
            max_running: int) -> tuple[list[list], list[list], list[str]]:
    """Runs the five setups; returns (rows, ratio rows, labels)."""
    prompts = app_prompts(n_apps, requests)
    app_threads = max(1, threads // n_apps)
    runs = [
        (f"{n_apps} processes, own copy of the GGUF each (1 ctx x 2048, {app_threads} thread)",
         per_app_processes(model, n_apps, prompts, gen, own_copies=True, tmp=tmp, threads=app_threads)),
        (f"{n_apps} processes, one shared GGUF file (1 ctx x 2048, {app_threads} thread)",
         per_app_processes(model, n_apps, prompts, gen, own_copies=False, tmp=tmp, threads=app_threads)),
        (f"1 slmd, --max-running {max_running}, default num_sequences {2 * max_running} x 2048",
         one_slmd(model, n_apps, prompts, gen, tmp=tmp, threads=threads, max_running=max_running)),
        (f"1 slmd, --max-running {max_running}, num_sequences {max_running} x 2048",
         one_slmd(model, n_apps, prompts, gen, tmp=tmp, threads=threads, max_running=max_running,
                  num_sequences=max_running)),
        (f"1 slmd, --max-running {max_running}, pooled KV (kv_pool_tokens {POOL})",
         one_slmd(model, n_apps, prompts, gen, tmp=tmp, threads=threads, max_running=max_running,
                  kv_pool_tokens=POOL)),
    ]
    rows = [[name, r["procs"], r["mem"][0] / MIB, r["mem"][1] / MIB, r["mem"][2] / MIB, r["prompt_tokens"],
             r["tokens"], r["secs"], r["tokens"] / r["secs"]] for name, r in runs]
    ratios = []
    for s in rows[2:]:
        row = [s[0]]
        for p in rows[:2]:
            mem, tput = s[3] / p[3], s[8] / p[8]
            row += [f"{mem:.2f}x", f"{tput:.2f}x", "yes" if mem <= 0.25 and tput >= 1.0 else "no"]
        ratios.append(row)
    labels = [f"{n_apps} proc\nown copies", f"{n_apps} proc\nshared file", f"slmd\n{2 * max_running} seq",
              f"slmd\n{max_running} seq", f"slmd\npool {POOL}"]
    return rows, ratios, labels


APP_HEADER = ["served by", "processes", "RSS sum MiB", "PSS sum MiB", "anon RSS sum MiB", "prompt tokens",
              "generated tokens", "wall s", "tok/s"]
RATIO_HEADER = ["slmd setup", "PSS vs own copies", "tok/s vs own copies", "target met (own copies)",
                "PSS vs shared file", "tok/s vs shared file", "target met (shared file)"]


def md_table(header: list[str], rows: list[list]) -> list[str]:
    def f(v) -> str:
        return f"{v:.1f}" if isinstance(v, float) else str(v)
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(f(v) for v in r) + " |" for r in rows]]


def plot(ax_mem, ax_tput, rows: list[list], labels: list[str], n_apps: int) -> None:
    x = list(range(len(rows)))
    ax_mem.bar([i - 0.2 for i in x], [r[2] for r in rows], width=0.4, label="RSS sum")
    ax_mem.bar([i + 0.2 for i in x], [r[3] for r in rows], width=0.4, label="PSS sum")
    for i, r in enumerate(rows[2:], 2):
        ax_mem.annotate(f"{r[3] / rows[0][3]:.2f}x / {r[3] / rows[1][3]:.2f}x", (i + 0.2, r[3]),
                        ha="center", va="bottom", fontsize=8)
    ax_mem.axhline(0.25 * rows[0][3], color="tab:red", ls="--", lw=1, label="0.25x per-app PSS (own copies)")
    ax_mem.set_xticks(x, labels)
    ax_mem.set_title(f"{n_apps} apps: peak memory (MiB); PSS ratio vs own / shared")
    ax_mem.legend(fontsize=8)
    ax_tput.bar(x, [r[8] for r in rows], color="tab:green")
    for i, r in enumerate(rows[2:], 2):
        ax_tput.annotate(f"{r[8] / rows[0][8]:.2f}x / {r[8] / rows[1][8]:.2f}x", (i, r[8]),
                         ha="center", va="bottom", fontsize=8)
    ax_tput.set_xticks(x, labels)
    ax_tput.set_title(f"{n_apps} apps: aggregate throughput (tok/s)")


def why(rows: list[list], n: int) -> str:
    """Where the memory goes, from the measured rows: weights W (the own-copies
    minus shared-file PSS, per extra copy), KV per 2048-token stream (the anon
    difference of the two slmd rows per stream), the rest of a per-app process
    P and of the daemon D; and the weights that 0.25x against own copies needs."""
    own, shared, s16, s8 = rows[0][3], rows[1][3], rows[2][4], rows[3][3]
    w = (own - shared) / (n - 1)
    kv = (s16 - rows[3][4]) / n
    p = own / n - w - kv
    d = s8 - w - n * kv
    need = (n * kv + d - 0.25 * n * (kv + p)) / (0.25 * n - 1) if n > 4 else float("inf")
    return (f"Where the memory goes (derived from the rows above): weights W = {w:.0f} MiB, KV = {kv:.1f} MiB per "
            f"2048-token stream, the rest of each per-app process (interpreter, llama.cpp buffers) P = {p:.0f} MiB, the "
            f"rest of the daemon D = {d:.0f} MiB. slmd saves the {n - 1} extra copies of W and of P, but each running "
            f"request keeps its own KV, so slmd's floor is W + {n} x KV + D; with this small model {n} x KV "
            f"= {n * kv:.0f} MiB outweighs W. Against own copies, 0.25x at {n} apps with the same KV and D needs "
            f"W >= {need:.0f} MiB (an estimate: a model of that size with the same KV per token). Against one shared "
            f"file per-app already shares W, and even a daemon with no overhead (D = 0) stays at or above (W + {n}·KV) / "
            f"(W + {n}·KV + {n}·P) = {(w + n * kv) / (w + n * kv + n * p):.2f}x unless KV per request shrinks (shorter context per sequence, a "
            f"quantized KV cache) or fewer streams than apps are kept.")
