"""Interactive latency under a background flood, and fair shares between
background apps (issue 5.6): slmd with priorities and per-app fairness versus
llama.cpp's llama-server (which has neither).

    .venv/bin/python -m benchmarks.serving [--turns 20] [--flood-apps 3] [--in-flight 4] [--threads 2]

One interactive app asks --turns short questions one after another
(max_tokens --chat-tokens, priority INTERACTIVE): first alone (idle), then
while --flood-apps background apps each keep --in-flight summary requests of
--doc-tokens-token documents in flight (max_tokens --summary-tokens, priority
BACKGROUND; every request a different document, so no cache helps them).
Everything greedy with ignore_eos, so every request has a known length.

slmd runs with a config whose `[apps.*]` tables cap the interactive app at
`max_priority = "interactive"` and the background apps at "background" (equal
weights); tokens tell the apps apart. llama-server runs with --parallel 4
(slmd with --max-running 4, the same number of sequences decoded together)
and serves requests in arrival order.

Measured: interactive TTFT (client side) p50/p99 idle and under the flood;
tokens generated per background app in the flood window (from the first
interactive request under flood to the last one's end) as shares.
Targets: slmd interactive p99 under flood <= 1.5x its idle p99;
equal-weight background apps within 10% of each other (max/min <= 1.1)."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness import RESULTS, corpus_text, print_table, write_results
from benchmarks.llama_server import LlamaServer
from benchmarks.multiapp import default_threads, load_averages, percentile, start_slmd, token_of, write_config
from slmd.chat import Prompter
from slmd.models import DEFAULT_MODEL
from slmd.paths import default_data_dir
from slmd.tokenizer import Tokenizer
from slmd_client import AsyncClient, Priority

QUESTIONS = ("What is the capital of France?", "Name three primary colours.", "How many legs does a spider have?",
             "What is two plus two?", "Give me a synonym for happy.", "What does a thermometer measure?",
             "Which planet is closest to the sun?", "What is the boiling point of water?")
SYSTEMS = ("slmd", "llama-server")
CHAT_APP = "chat"


@dataclass
class Stream:
    """What the client saw of one request: when it was sent, when each token came."""
    app: str
    start: float
    token_times: list[float] = field(default_factory=list)
    queue_seconds: float = float("nan")  # the server's own account, where it gives one (slmd's usage)
    server_ttft: float = float("nan")

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.start if self.token_times else float("nan")


def question(phase: str, i: int) -> list[dict[str, str]]:
    # a different first line per phase and turn: the idle pass must not warm the cache for the flood pass
    return [{"role": "user", "content": f"({phase} {i}) {QUESTIONS[i % len(QUESTIONS)]}"}]


class Documents:
    """Distinct documents of a fixed token length (different start offsets)."""

    def __init__(self, tok: Tokenizer, num_tokens: int) -> None:
        self.ids = tok.encode(corpus_text(), allow_special=False)
        self.tok, self.num_tokens, self.next = tok, num_tokens, 0

    def summary_request(self) -> list[dict[str, str]]:
        start = (self.next * 211) % (len(self.ids) - self.num_tokens)
        self.next += 1
        doc = self.tok.decode(self.ids[start : start + self.num_tokens])
        return [{"role": "system", "content": "You summarize documents.\n\nDocument:\n" + doc},
                {"role": "user", "content": "Summarize the document."}]


class Backend:
    """One way of sending a chat request: returns the Stream as it fills."""

    async def send(self, app: str, messages: list[dict[str, str]], max_tokens: int, priority: Priority,
                   stream: Stream) -> None:
        raise NotImplementedError

    async def scheduled_tokens(self) -> dict[str, int] | None:
        """Tokens the server computed per app so far (prompt and generated), if it says."""
        return None

    async def running(self) -> dict[str, int] | None:
        """Requests running per app now, if the server says."""
        return None


class SlmdBackend(Backend):
    def __init__(self, target: str, app_ids: list[str]) -> None:
        self.clients = {a: AsyncClient(target, token=token_of(a)) for a in app_ids}

    async def send(self, app, messages, max_tokens, priority, stream):
        async for ch in self.clients[app].generate(messages=messages, max_tokens=max_tokens, temperature=0.0,
                                                    ignore_eos=True, priority=priority):
            now = time.perf_counter()
            stream.token_times.extend([now] * len(ch.token_ids))
            if ch.usage is not None:
                stream.queue_seconds, stream.server_ttft = ch.usage.queue_seconds, ch.usage.time_to_first_token_seconds

    async def scheduled_tokens(self) -> dict[str, int] | None:
        st = await self.clients[CHAT_APP].status()
        return {a.app_id: a.scheduled_tokens for a in st.apps}

    async def running(self) -> dict[str, int] | None:
        st = await self.clients[CHAT_APP].status()
        return {a.app_id: a.running for a in st.apps}

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients.values()))


class LlamaServerBackend(Backend):
    def __init__(self, srv: LlamaServer, prompter: Prompter) -> None:
        self.srv, self.prompter = srv, prompter

    async def send(self, app, messages, max_tokens, priority, stream):
        c = await self.srv.complete(self.prompter.render(messages), max_tokens=max_tokens)
        stream.token_times = c.token_times  # llama-server streams one token per event

    async def close(self) -> None:
        pass


async def chat_turns(be: Backend, phase: str, turns: int, max_tokens: int, pause: float) -> list[Stream]:
    out = []
    for i in range(turns):
        s = Stream(CHAT_APP, time.perf_counter())
        out.append(s)
        await be.send(CHAT_APP, question(phase, i), max_tokens, Priority.INTERACTIVE, s)
        await asyncio.sleep(pause)  # a person reads the answer
    return out


async def workload(be: Backend, args, docs: Documents, flood_apps: list[str]) -> dict:
    await be.send(CHAT_APP, question("warm-up", 0), 2, Priority.INTERACTIVE, Stream(CHAT_APP, 0.0))
    idle = await chat_turns(be, "idle", args.turns, args.chat_tokens, args.pause)

    flood: list[Stream] = []
    stop = asyncio.Event()

    async def keep_busy(app: str) -> None:
        while not stop.is_set():
            s = Stream(app, time.perf_counter())
            flood.append(s)
            await be.send(app, docs.summary_request(), args.summary_tokens, Priority.BACKGROUND, s)

    workers = [asyncio.create_task(keep_busy(a)) for a in flood_apps for _ in range(args.in_flight)]
    # let the flood fill the server (every background app has a request producing tokens) before measuring
    t_wait = time.perf_counter()
    while not all(any(s.token_times for s in flood if s.app == a) for a in flood_apps):
        if time.perf_counter() - t_wait > args.max_fill_seconds:
            break
        await asyncio.sleep(0.1)
    samples: list[dict[str, int]] = []

    async def sample_running() -> None:  # how many requests each app had running, once a second
        while True:
            got = await be.running()
            if got is None:
                return
            samples.append(got)
            await asyncio.sleep(1.0)

    sched0 = await be.scheduled_tokens()
    sampler = asyncio.create_task(sample_running())
    busy = await chat_turns(be, "busy", args.turns, args.chat_tokens, args.pause)
    sampler.cancel()
    sched1 = await be.scheduled_tokens()
    stop.set()
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)

    w0, w1 = busy[0].start, busy[-1].token_times[-1] if busy[-1].token_times else time.perf_counter()
    per_app = {a: sum(1 for s in flood if s.app == a for t in s.token_times if w0 <= t <= w1) for a in flood_apps}
    # what the fair share equalizes: tokens computed per app (prompt chunks and decodes) in the window
    computed = {a: sched1.get(a, 0) - sched0.get(a, 0) for a in flood_apps} if sched0 is not None else None
    mean_running = {a: round(sum(x.get(a, 0) for x in samples) / len(samples), 2) for a in flood_apps} \
        if samples else None
    return {"idle": [s.ttft for s in idle], "busy": [s.ttft for s in busy], "per_app": per_app, "computed": computed,
            "mean_running": mean_running,
            "busy_queue": [s.queue_seconds for s in busy], "busy_server_ttft": [s.server_ttft for s in busy],
            "window": w1 - w0, "fill_seconds": w0 - t_wait}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=default_data_dir() / "models" / DEFAULT_MODEL.filename)
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--chat-tokens", type=int, default=24)
    ap.add_argument("--pause", type=float, default=0.5, help="seconds between chat turns")
    ap.add_argument("--flood-apps", type=int, default=3)
    ap.add_argument("--in-flight", type=int, default=4, help="requests each background app keeps in flight")
    ap.add_argument("--doc-tokens", type=int, default=800)
    ap.add_argument("--summary-tokens", type=int, default=64)
    ap.add_argument("--parallel", type=int, default=4, help="llama-server --parallel and slmd --max-running")
    ap.add_argument("--max-fill-seconds", type=float, default=120)
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--name", default="serving")
    args = ap.parse_args()
    sys.argv[0] = os.path.relpath(sys.argv[0])  # the command line in the results names no machine paths
    tok = Tokenizer.from_gguf(args.model)
    prompter = Prompter(tok)
    flood_apps = [f"bg{i}" for i in range(args.flood_apps)]
    load_before = load_averages()
    res = {}
    for name in [s.strip() for s in args.systems.split(",")]:
        t_start = time.perf_counter()
        docs = Documents(tok, args.doc_tokens)  # the same documents, in the same order, for every system
        if name == "slmd":
            with tempfile.TemporaryDirectory() as tmp:
                policies = {CHAT_APP: {"max_priority": "interactive", "default_priority": "interactive"},
                            **{a: {"max_priority": "background", "default_priority": "background", "weight": 1.0}
                               for a in flood_apps}}
                cfg = write_config(Path(tmp) / "slmd.toml", [CHAT_APP, *flood_apps], apps=policies)
                d = start_slmd(Path(tmp), args.model, cfg, threads=args.threads,
                               extra=("--max-running", str(args.parallel)))
                be = SlmdBackend(d.target, [CHAT_APP, *flood_apps])
                try:
                    res[name] = asyncio.run(_run(be, args, docs, flood_apps))
                finally:
                    d.stop()
        elif name == "llama-server":
            with tempfile.TemporaryDirectory() as tmp:
                with LlamaServer(args.model, parallel=args.parallel, threads=args.threads,
                                 log_path=Path(tmp) / "llama-server.log") as srv:
                    res[name] = asyncio.run(_run(LlamaServerBackend(srv, prompter), args, docs, flood_apps))
        else:
            raise SystemExit(f"unknown system {name!r}; expected one of {SYSTEMS}")
        r = res[name]
        print(f"{name}: idle p50/p99 {percentile(r['idle'], 50):.2f}/{percentile(r['idle'], 99):.2f}s, "
              f"flood p50/p99 {percentile(r['busy'], 50):.2f}/{percentile(r['busy'], 99):.2f}s, "
              f"shares {r['per_app']} ({time.perf_counter() - t_start:.0f}s with start-up)", flush=True)
    load_after = load_averages()

    header = ["system", "idle TTFT p50 s", "idle TTFT p99 s", "flood TTFT p50 s", "flood TTFT p99 s",
              "flood p99 / idle p99", *[f"{a} share" for a in flood_apps], "max/min share", "bg tok/s in window"]
    rows = []
    for name, r in res.items():
        total = sum(r["per_app"].values()) or 1
        shares = [r["per_app"][a] / total for a in flood_apps]
        rows.append([name, percentile(r["idle"], 50), percentile(r["idle"], 99), percentile(r["busy"], 50),
                     percentile(r["busy"], 99), percentile(r["busy"], 99) / percentile(r["idle"], 99), *shares,
                     max(shares) / min(shares) if min(shares) else float("inf"), total / r["window"]])
    print()
    print_table(header, rows)
    notes = [
        f"Model: {args.model.name}; {args.threads} threads for every system. Interactive app: {args.turns} turns "
        f"(one short question each, {args.chat_tokens} output tokens, {args.pause}s between turns), alone and then "
        f"under the flood; {args.flood_apps} background apps x {args.in_flight} requests in flight, each a summary of "
        f"a distinct {args.doc_tokens}-token document with {args.summary_tokens} output tokens. Greedy, ignore_eos. "
        f"slmd --max-running {args.parallel}; llama-server --parallel {args.parallel} -c {args.parallel * 2048}.",
        f"TTFT: client side, request sent to first token received; p99 of {args.turns} samples is their maximum. "
        "Shares: tokens "
        "each background app received inside the flood window (first interactive request under flood to the last "
        "one's last token) over all background tokens in it.",
        *[f"{n}: flood window {r['window']:.1f}s, filled after {r['fill_seconds']:.1f}s, background tokens per app "
          f"{r['per_app']}." + _server_view(r) for n, r in res.items()],
        f"Load average (1, 5, 15 min) before: {load_before}; after: {load_after} (other work shares this machine).",
    ]
    if "slmd" in res:
        r = res["slmd"]
        ratio = percentile(r["busy"], 99) / percentile(r["idle"], 99)
        shares = [r["per_app"][a] for a in flood_apps]
        spread = max(shares) / min(shares) if min(shares) else float("inf")
        notes += [f"Target slmd interactive p99 under flood <= 1.5x idle p99: {ratio:.2f}x -> "
                  f"{'met' if ratio <= 1.5 else 'MISSED'}.",
                  f"Target equal-weight background apps within 10%: generated tokens max/min {spread:.3f} -> "
                  f"{'met' if spread <= 1.1 else 'MISSED'}."]
        if r.get("computed"):
            c = [r["computed"][a] for a in flood_apps]
            cspread = max(c) / min(c) if min(c) else float("inf")
            notes += [f"slmd tokens computed per background app in the window (prompt + generated, the unit its "
                      f"weighted fair share equalizes; Admin.Status scheduled_tokens): {r['computed']}, max/min "
                      f"{cspread:.3f} -> {'within' if cspread <= 1.1 else 'NOT within'} 10%. Generated tokens "
                      f"alone come in 64-token requests, a few per app in the window: one request is a large "
                      f"part of an app's count. Requests running per app, mean of 1 s samples: "
                      f"{r.get('mean_running')}."]
    path = write_results(args.name, "Interactive latency under a background flood: slmd vs llama-server", header,
                         rows, ["", *[f"- {n}" for n in notes]])
    _plot(res, flood_apps, RESULTS / f"{args.name}.png")
    print("\n".join(notes))
    print(f"\nwrote {path} and {path.with_suffix('.png')}")


def _server_view(r: dict) -> str:
    q = [x for x in r["busy_queue"] if x == x]
    if not q:
        return ""
    t = r["busy_server_ttft"]
    return (f" Under flood the daemon reported interactive queue time p50/max {percentile(q, 50):.2f}/{max(q):.2f}s "
            f"and TTFT p50/max {percentile(t, 50):.2f}/{max(t):.2f}s.")


async def _run(be: Backend, args, docs: Documents, flood_apps: list[str]) -> dict:
    try:
        return await workload(be, args, docs, flood_apps)
    finally:
        await be.close()


def _plot(res: dict, flood_apps: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    names = list(res)
    x = range(len(names))
    for k, (key, q, label) in enumerate((("idle", 50, "idle p50"), ("idle", 99, "idle p99"),
                                         ("busy", 50, "flood p50"), ("busy", 99, "flood p99"))):
        axes[0].bar([i + (k - 1.5) * 0.2 for i in x], [percentile(res[n][key], q) for n in names], 0.2, label=label)
    axes[0].set_xticks(list(x), names)
    axes[0].set_yscale("log")
    axes[0].set_title("interactive TTFT (s, log scale)")
    axes[0].legend()
    for j, a in enumerate(flood_apps):
        shares = [res[n]["per_app"][a] / (sum(res[n]["per_app"].values()) or 1) for n in names]
        axes[1].bar([i + (j - (len(flood_apps) - 1) / 2) * 0.25 for i in x], shares, 0.25, label=a)
    axes[1].axhline(1 / len(flood_apps), color="grey", linestyle="--", linewidth=1)
    axes[1].set_xticks(list(x), names)
    axes[1].set_title("background token share in the flood window")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
