"""Prefix cache and scheduling on the real default model, in-process.

Deterministic requests throughout, so "identical" means token for token:
a cache hit (device copy or host-tier restore) and a preempted-and-resumed
request must produce exactly what a cold, solo run produces."""

from __future__ import annotations

import asyncio

import pytest

from slmd.cache.prefix_cache import CacheConfig
from slmd.chat import Prompter
from slmd.core import Engine
from slmd.request import ErrorKind, Priority, Request, SamplingParams
from slmd.runtime.llama import LlamaRuntime, RuntimeConfig
from slmd.scheduler.scheduler import SchedulerConfig
from slmd.tokenizer import Tokenizer
from tests.integration.prompts import CHAT_PROMPTS
from tests.integration.streams import collect

DOC = ("The Arctic tern migrates from the Arctic to the Antarctic every year, about 70,000 km round trip. "
       "It weighs around 100 grams and can live more than 30 years. Terns feed on small fish and krill. ") * 4


@pytest.fixture(scope="module")
def prompter(default_model):
    return Prompter(Tokenizer.from_gguf(default_model))


def make_engine(model, *, streams: int, running: int, budget: int = 128, cache: CacheConfig | None = None):
    rt = LlamaRuntime(RuntimeConfig(model, num_sequences=streams, context_per_sequence=1024, batch_tokens=budget))
    eng = Engine(rt, SchedulerConfig(num_sequences=streams, max_running=running, step_token_budget=budget,
                                     context_per_sequence=1024, kv_bytes_per_token=rt.kv_bytes_per_token,
                                     cache=cache or CacheConfig(min_tokens=8)))
    eng.start()
    return eng, rt


_n = iter(range(10**9))


def req(ids, *, app="a", prio=Priority.NORMAL, max_tokens=24, det=True, deadline=None, ignore_eos=False) -> Request:
    return Request(f"r{next(_n)}", list(ids), SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos),
                   app_id=app, priority=prio, deterministic=det, deadline=deadline)


def doc_prompt(prompter, question: str, doc: str = DOC) -> list[int]:
    # system + document first, the question last: requests on one document share a prefix
    return prompter.encode_chat([{"role": "system", "content": f"Answer from this document.\n{doc}"},
                                 {"role": "user", "content": question}])


QUESTIONS = ["How far does the tern fly?", "How much does it weigh?", "What does it eat?", "How long does it live?"]


async def test_hit_equals_cold_and_isolation(default_model, prompter):
    eng, rt = make_engine(default_model, streams=8, running=4)
    cold_eng, cold_rt = make_engine(default_model, streams=2, running=1, cache=CacheConfig(enabled=False))
    try:
        prompts = [doc_prompt(prompter, q) for q in QUESTIONS]
        prompts += [prompter.encode_chat([{"role": "user", "content": c}]) for c in CHAT_PROMPTS[:4]]
        cold = [(await collect(cold_eng, req(p)))[0] for p in prompts]
        first = [await collect(eng, req(p)) for p in prompts]
        assert [ids for ids, _ in first] == cold
        # the 2nd..4th questions on the document already hit the 1st one's prefix
        # (deterministic requests reuse whole aligned chunks of exact KV: 128 here)
        assert all(last.num_cached_tokens >= 128 for _, last in first[1:4])
        again = await asyncio.gather(*(collect(eng, req(p)) for p in prompts))
        assert [ids for ids, _ in again] == cold
        assert all(last.num_cached_tokens % 128 == 0 for _, last in again)
        assert all(last.num_cached_tokens >= 128 for _, last in again[:4]), \
            [(last.num_cached_tokens, last.num_prompt_tokens) for _, last in again]
        # isolation: app b asks the identical questions and gets no hit at all
        b = [await collect(eng, req(p, app="b")) for p in prompts[:2]]
        assert [last.num_cached_tokens for _, last in b] == [0, b[1][1].num_cached_tokens]
        assert b[1][1].num_cached_tokens >= 128  # ... b's second question hits b's own first
        assert [ids for ids, _ in b] == cold[:2]
    finally:
        eng.stop(5), cold_eng.stop(5), rt.close(), cold_rt.close()


async def test_host_tier_restore_equals_cold(default_model, prompter):
    # 2 streams for 1 running request: holders are pushed to the host tier constantly
    eng, rt = make_engine(default_model, streams=2, running=1)
    try:
        docs = [DOC.replace("tern", name) for name in ("tern", "gull", "puffin")]
        prompts = [doc_prompt(prompter, "Summarize it.", d) for d in docs]
        first = [(await collect(eng, req(p)))[0] for p in prompts]
        stats = eng.scheduler.cache.stats
        assert stats.saves >= 1 and stats.host_bytes > 0
        again = [await collect(eng, req(p)) for p in prompts]
        assert [ids for ids, _ in again] == first
        assert stats.restores >= 1 and stats.host_hit_tokens > 0
        assert any(last.num_cached_tokens >= 128 for _, last in again)
    finally:
        eng.stop(5), rt.close()


@pytest.mark.parametrize("streams", [2, 1], ids=["kv-stays", "saved-to-host"])
async def test_preemption_keeps_greedy_output_identical(default_model, prompter, streams):
    eng, rt = make_engine(default_model, streams=streams, running=1)
    try:
        bg_ids = prompter.encode_chat([{"role": "user", "content": CHAT_PROMPTS[4]}])
        ui_ids = prompter.encode_chat([{"role": "user", "content": CHAT_PROMPTS[6]}])
        solo_bg, _ = await collect(eng, req(bg_ids, app="bg", max_tokens=256, ignore_eos=True))
        solo_ui, _ = await collect(eng, req(ui_ids, app="ui", max_tokens=16))
        eng.scheduler.cache.cfg = CacheConfig(enabled=False)  # cold runs from here on, to exercise preemption only
        decoded = eng.stats.generation_tokens_total
        bg_task = asyncio.create_task(collect(eng, req(bg_ids, app="bg", prio=Priority.BACKGROUND, max_tokens=256,
                                                       ignore_eos=True)))
        while eng.stats.generation_tokens_total < decoded + 8:  # the background request is decoding
            await asyncio.sleep(0.005)
        ui, ui_last = await collect(eng, req(ui_ids, app="ui", prio=Priority.INTERACTIVE, max_tokens=16))
        bg, bg_last = await bg_task
        assert eng.scheduler.num_preemptions >= 1
        assert ui == solo_ui and bg == solo_bg
        assert ui_last.total_seconds < bg_last.total_seconds
    finally:
        eng.stop(5), rt.close()


async def test_queued_request_past_deadline_is_dropped_before_prefill(default_model, prompter):
    import time

    eng, rt = make_engine(default_model, streams=1, running=1)
    try:
        busy = Request("busy", prompter.encode_chat([{"role": "user", "content": "Count to 100."}]),
                       SamplingParams(max_tokens=1000, ignore_eos=True))
        long = asyncio.create_task(collect(eng, busy))
        await asyncio.sleep(0.3)
        r = req(prompter.encode_chat([{"role": "user", "content": "Hi"}]), det=False, deadline=time.monotonic() + 30)
        task = asyncio.create_task(collect(eng, r))
        await asyncio.sleep(0.05)
        r.deadline = time.monotonic()  # the deadline passes while it waits
        _, last = await task
        assert last.error_kind == ErrorKind.DEADLINE and r.num_computed_tokens == 0
        eng.abort("busy")
        _, busy_last = await long
        assert busy_last.error_kind == ErrorKind.CANCELLED
    finally:
        eng.stop(5), rt.close()


async def test_flood_from_one_app_changes_nothing_for_another(default_model, prompter):
    eng, rt = make_engine(default_model, streams=8, running=4, cache=CacheConfig(enabled=False))
    try:
        mine = [prompter.encode_chat([{"role": "user", "content": c}]) for c in CHAT_PROMPTS[:3]]
        alone = [(await collect(eng, req(p, app="quiet")))[0] for p in mine]
        flood = [asyncio.create_task(collect(eng, req(prompter.encode_chat([{"role": "user", "content": f"Story {i}"}]),
                                                  app="flood", det=False, max_tokens=24))) for i in range(12)]
        await asyncio.sleep(0.2)
        under = await asyncio.gather(*(collect(eng, req(p, app="quiet")) for p in mine))
        await asyncio.gather(*flood)
        assert [ids for ids, _ in under] == alone
    finally:
        eng.stop(5), rt.close()
