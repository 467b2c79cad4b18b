"""Critical memory pressure with requests in flight, in-process on the real
default model: the context is recreated with one KV stream while requests
run (each saves its KV or recomputes, then resumes), and grows back when the
pressure passes. Deterministic requests produce exactly what an undisturbed
run produces, and the process's RSS drops while they still run."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from slmd.core import Engine
from slmd.memory.levels import PressureLevel
from slmd.memory.model import ModelSlot
from slmd.memory.sources import rss_bytes
from slmd.request import FinishReason, Priority, Request, SamplingParams
from slmd.runtime.llama import LlamaRuntime, RuntimeConfig
from slmd.scheduler.scheduler import SchedulerConfig
from tests.integration.streams import collect

STREAMS, CTX = 8, 2048
PROMPTS = ["Once upon a time, in a small village by the sea,", "The three most important inventions are",
           "Dear team, about the meeting tomorrow:", "1, 2, 3, 4, 5, 6,"]


def make_engine(model) -> Engine:
    cfg = RuntimeConfig(model, num_sequences=STREAMS, context_per_sequence=CTX, batch_tokens=64)
    slot = ModelSlot(lambda n: LlamaRuntime(replace(cfg, num_sequences=n or STREAMS)))
    eng = Engine(slot, SchedulerConfig(num_sequences=STREAMS, max_running=4, step_token_budget=64,
                                       context_per_sequence=CTX, kv_bytes_per_token=slot.kv_bytes_per_token))
    eng.start()
    return eng


_n = iter(range(10**9))


def req(tok, text: str, prio: Priority, det: bool, max_tokens: int = 48) -> Request:
    return Request(f"r{next(_n)}", tok(text), SamplingParams(max_tokens=max_tokens, ignore_eos=True),
                   priority=prio, deterministic=det)


async def until(pred, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.01)


async def test_critical_recreates_the_context_in_flight_and_grows_back(default_model):
    from slmd.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(default_model).encode
    eng = make_engine(default_model)
    try:
        prios = [Priority.INTERACTIVE, Priority.NORMAL, Priority.BACKGROUND, Priority.NORMAL]
        cold = [(await collect(eng, req(tok, p, Priority.NORMAL, True)))[0] for p in PROMPTS]
        lc = eng.lifecycle
        full_rss = rss_bytes()

        # critical while 4 run: deterministic ones save their KV, the others by cost
        tasks = [asyncio.create_task(collect(eng, req(tok, p, pr, i % 2 == 0))) for i, (p, pr) in
                 enumerate(zip(PROMPTS, prios))]
        await until(lambda: eng.stats.generation_tokens_total >= 4 * 48 + 20)
        unloads = lc.num_unloads
        eng.set_pressure(PressureLevel.CRITICAL)
        await until(lambda: lc.streams == 1 and eng.runtime.is_loaded)
        small_rss = rss_bytes()
        assert eng.scheduler.has_work  # recreated in flight, not after
        assert lc.num_unloads == unloads + 1
        done = await asyncio.gather(*tasks)
        for i, (ids, last) in enumerate(done):
            assert last.finish_reason == FinishReason.LENGTH and len(ids) == 48
            if i % 2 == 0:
                assert ids == cold[i], i  # deterministic: exact across save, shrink and restore
        print(f"RSS {full_rss >> 20} MiB with {STREAMS} streams, {small_rss >> 20} MiB after the shrink")
        assert small_rss < full_rss - 0.5 * STREAMS * CTX * eng.runtime.kv_bytes_per_token

        # the pressure passes while requests run: the context grows back in flight
        tasks = [asyncio.create_task(collect(eng, req(tok, p, Priority.NORMAL, True))) for p in PROMPTS]
        await until(lambda: eng.stats.generation_tokens_total >= 8 * 48 + 30)
        # (between the two rounds the idle engine may have unloaded the model, as critical asks)
        unloads, loads = lc.num_unloads, eng.runtime.num_loads
        eng.set_pressure(PressureLevel.NONE)
        await until(lambda: lc.streams == STREAMS and eng.runtime.is_loaded)
        assert eng.scheduler.has_work  # grown back in flight
        assert [ids for ids, _ in await asyncio.gather(*tasks)] == cold
        assert lc.num_unloads == unloads + 1 and eng.runtime.num_loads == loads + 1
    finally:
        eng.stop(10)
        eng.runtime.close()
