"""An interactive arrival interrupts a lower-class llama_decode in progress
(llama.cpp's abort callback) instead of waiting for it; the interrupted work
is rolled back and run again. On the real default model, in-process:

- the runtime: an interrupted step reports its sequences, leaves no KV cells
  behind, and the rerun samples what an uninterrupted step samples;
- the engine: background requests interrupted many times by interactive
  arrivals give, in deterministic mode, exactly their solo outputs."""

from __future__ import annotations

import asyncio

import llama_cpp as L
import pytest

from slmd.core import Engine
from slmd.request import Priority, Request, SamplingParams
from slmd.runtime.base import SeqWork, StepBatch
from slmd.runtime.llama import LlamaRuntime, RuntimeConfig
from slmd.scheduler.scheduler import SchedulerConfig
from tests.integration.streams import collect

CONTEXT = 1024


@pytest.fixture(scope="module")
def runtime(default_model):
    rt = LlamaRuntime(RuntimeConfig(default_model, num_sequences=6, context_per_sequence=CONTEXT, batch_tokens=256))
    yield rt
    rt.close()


def _prefill(rt: LlamaRuntime, tokens: list[int], *, interrupted: bool):
    rt.release(0)
    rt.open(0, SamplingParams(max_tokens=1))
    if interrupted:
        rt.interrupt()  # set before the decode: it stops at its first graph node, whatever the machine's speed
    out = rt.step(StepBatch(((SeqWork(0, tokens, 0, True),),)))
    rt.clear_interrupt()
    return out, L.llama_memory_seq_pos_max(rt.mem, 0)


def test_interrupted_step_rolls_back(runtime):
    tokens = runtime.tokenize("The quick brown fox jumps over the lazy dog. " * 20)[:200]
    full, full_pos = _prefill(runtime, tokens, interrupted=False)
    assert full.interrupted == set() and full_pos == len(tokens) - 1
    cut, cut_pos = _prefill(runtime, tokens, interrupted=True)
    assert cut.interrupted == {0} and cut.sampled == {} and cut.failed == {}
    assert cut_pos == -1, "an interrupted step left KV cells behind"
    again, again_pos = _prefill(runtime, tokens, interrupted=False)
    assert again.sampled == full.sampled and again_pos == full_pos


@pytest.fixture(scope="module")
def engine(runtime):
    eng = Engine(runtime, SchedulerConfig(num_sequences=6, max_running=6, step_token_budget=256,
                                          context_per_sequence=CONTEXT))
    eng.start()
    yield eng
    eng.stop(5)


def _doc(i: int) -> str:
    return " ".join(f"Paragraph {k} of report {i} notes that the {['pump', 'valve', 'meter'][k % 3]} "
                    f"in building {i + k} was inspected and found in order." for k in range(18))


async def test_interactive_arrivals_interrupt_background_without_changing_it(engine, runtime):
    prompts = [runtime.tokenize(f"Summarize: {_doc(i)}") for i in range(3)]

    def bg(i: int, tag: str) -> Request:
        return Request(f"bg{i}-{tag}", prompts[i], SamplingParams(max_tokens=24, ignore_eos=True),
                       app_id=f"bg{i}", priority=Priority.BACKGROUND, deterministic=True)

    solo = [(await collect(engine, bg(i, "solo")))[0] for i in range(3)]
    before = engine.num_interrupts

    async def interactive(k: int) -> list[int]:
        await asyncio.sleep(0.05 + 0.15 * k)
        ids, last = await collect(engine, Request(f"ui{k}", runtime.tokenize(f"Say hello number {k}."),
                                                  SamplingParams(max_tokens=4), app_id="ui",
                                                  priority=Priority.INTERACTIVE))
        assert last.error is None, last.error
        return ids

    results = await asyncio.gather(*(collect(engine, bg(i, "flood")) for i in range(3)),
                                   *(interactive(k) for k in range(8)))
    for i in range(3):
        ids, last = results[i]
        assert last.error is None, last.error
        assert ids == solo[i], f"background request {i} changed after interrupts"
    assert engine.num_interrupts > before, "no interactive arrival interrupted a background step"
