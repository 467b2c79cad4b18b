"""Critical memory pressure on a pooled KV layout (engine.kv_pool_tokens),
in-process on the tiny model: the context is recreated with one sequence
while requests run, its pool shrinking to one request's window (never below
it, so every admitted request still fits), each request saves its KV from
the unified cache or recomputes, resumes in the smaller pool and completes;
when the pressure passes the full pool comes back."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import llama_cpp as L

from slmd.core import Engine
from slmd.memory.levels import PressureLevel
from slmd.memory.model import ModelSlot
from slmd.request import FinishReason, Request, SamplingParams
from slmd.runtime.llama import LlamaRuntime, RuntimeConfig
from slmd.scheduler.scheduler import SchedulerConfig
from tests.integration.streams import collect
from tests.integration.test_pressure_relayout import until

SEQS, CTX, POOL, OUT = 4, 256, 1024, 96


def make_engine(model) -> Engine:
    cfg = RuntimeConfig(model, num_sequences=SEQS, context_per_sequence=CTX, batch_tokens=64, kv_pool_tokens=POOL)
    slot = ModelSlot(lambda n: LlamaRuntime(replace(cfg, num_sequences=n or SEQS)))
    eng = Engine(slot, SchedulerConfig(num_sequences=SEQS, max_running=SEQS, step_token_budget=64,
                                       context_per_sequence=slot.info.context_per_sequence,
                                       kv_bytes_per_token=slot.kv_bytes_per_token, kv_pool_tokens=POOL))
    eng.start()
    return eng


def n_ctx(eng: Engine) -> int:
    return L.llama_n_ctx(eng.runtime._rt.ctx)


async def test_critical_shrinks_the_pool_in_flight_and_grows_it_back(tiny_model):
    eng = make_engine(tiny_model)
    _n = iter(range(10**6))

    def req(i: int) -> Request:
        return Request(f"r{next(_n)}", [1 + (i * 37 + j) % 200 for j in range(40 + 7 * i)],
                       SamplingParams(max_tokens=OUT, ignore_eos=True))

    try:
        lc = eng.lifecycle
        assert n_ctx(eng) == POOL and eng.scheduler.pool.num_cells == POOL
        tasks = [asyncio.create_task(collect(eng, req(i))) for i in range(SEQS)]
        await until(lambda: eng.stats.generation_tokens_total >= SEQS * 20)
        eng.set_pressure(PressureLevel.CRITICAL)
        await until(lambda: lc.streams == 1 and eng.runtime.is_loaded)
        assert eng.scheduler.has_work  # recreated in flight
        assert n_ctx(eng) == CTX and eng.scheduler.pool.num_cells == CTX  # one request's window
        for ids, last in await asyncio.gather(*tasks):
            assert last.finish_reason == FinishReason.LENGTH and len(ids) == OUT and last.error is None

        tasks = [asyncio.create_task(collect(eng, req(i))) for i in range(SEQS)]
        await until(lambda: eng.stats.generation_tokens_total >= SEQS * (OUT + 20))
        eng.set_pressure(PressureLevel.NONE)
        await until(lambda: lc.streams == SEQS and eng.runtime.is_loaded)
        assert eng.scheduler.has_work  # grown back in flight
        assert n_ctx(eng) == POOL and eng.scheduler.pool.num_cells == POOL
        for ids, last in await asyncio.gather(*tasks):
            assert last.finish_reason == FinishReason.LENGTH and len(ids) == OUT and last.error is None
    finally:
        eng.stop(10)
        eng.runtime.close()
