"""Python cost of one engine step, with a runtime that computes nothing.

    .venv/bin/python -m benchmarks.step_overhead [--ns 16,64] [--prompt-tokens 800] [--decode-tokens 256]

N requests decode through the real Engine (scheduler, text, metrics, asyncio
hand-over) in this process; the runtime samples a fixed token at once. What is
left is the per-step Python work that competes with llama_decode for the
engine thread and with the gRPC side for the GIL (issue 12). Prints, per N,
the best of --repeats runs: tokens/s, and wall and engine-thread CPU
microseconds per step (prefill steps included).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from slmd.core import Engine
from slmd.request import Request, SamplingParams
from slmd.runtime.base import ModelInfo, StepDefaults, StepOutput
from slmd.scheduler.scheduler import SchedulerConfig


class NullRuntime(StepDefaults):
    kv_bytes_per_token = 0.0

    def __init__(self, num_sequences: int) -> None:
        self.info = ModelInfo("null", "null", "null", 1000, 4096, 1, 1, 4096, num_sequences)

    def token_bytes(self, t: int) -> bytes:
        return b" w%d" % t

    def is_eog(self, t: int) -> bool:
        return False

    def step(self, batch) -> StepOutput:
        return StepOutput(sampled={w.seq_id: 100 + w.start_pos % 500 for g in batch.groups for w in g if w.sample})

    def save(self, seq_id: int) -> bytes:
        return b""

    def validate_grammar(self, grammar: str) -> None:
        return None

    def __getattr__(self, name):  # open, release, copy_prefix, truncate, restore, ...
        return lambda *a, **k: None


class TimedEngine(Engine):
    cpu_seconds = 0.0

    def _run(self) -> None:  # the engine thread's own CPU time
        t = time.thread_time()
        super()._run()
        self.cpu_seconds = time.thread_time() - t


async def run(n: int, prompt_tokens: int, decode_tokens: int) -> tuple[float, float, float]:
    """Tokens/s through the streams, wall and engine-thread CPU microseconds per step."""
    eng = TimedEngine(NullRuntime(2 * n), SchedulerConfig(num_sequences=2 * n, max_running=n,
                                                          context_per_sequence=4096))
    eng.start()

    async def one(i: int) -> int:
        # distinct from the first token on: no prefix sharing between requests
        req = Request(f"r{i}", [10 + i] + [(i * 31 + k * 7) % 997 + 100 for k in range(prompt_tokens - 1)],
                      SamplingParams(max_tokens=decode_tokens, ignore_eos=True))
        return sum([len(out.token_ids) async for out in eng.stream(req)])

    t0 = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(i) for i in range(n))))
    wall = time.perf_counter() - t0
    eng.stop(10)
    steps = eng.stats.num_steps
    return tokens / wall, wall / steps * 1e6, eng.cpu_seconds / steps * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", default="16,64")
    ap.add_argument("--prompt-tokens", type=int, default=800)
    ap.add_argument("--decode-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    for n in (int(x) for x in args.ns.split(",")):
        res = [asyncio.run(run(n, args.prompt_tokens, args.decode_tokens)) for _ in range(args.repeats)]
        tps, wall, cpu = max(r[0] for r in res), min(r[1] for r in res), min(r[2] for r in res)
        print(f"N={n}: {tps:.0f} tok/s, {wall:.0f} us/step wall, {cpu:.0f} us/step engine-thread CPU "
              f"(best of {args.repeats})")


if __name__ == "__main__":
    main()
