"""Overlapped delivery: with a runtime whose decode returns before the device
finishes (a GPU), the engine delivers step k's tokens while step k+1 computes.
Here a real CPU runtime is told to take that path, so the ordering rules are
checked on any machine: streams carry the same tokens and text as the plain
path, stop strings end requests with the same text, and every token reaches
its stream before the stream's final output."""

from __future__ import annotations

import asyncio

import pytest

from slmd.core import Engine
from slmd.request import Request, SamplingParams
from slmd.runtime.llama import LlamaRuntime, RuntimeConfig
from slmd.scheduler.scheduler import SchedulerConfig


class _AsyncLaunchRuntime(LlamaRuntime):
    @property
    def async_launch(self) -> bool:
        return True


def _engine(cls, model):
    rt = cls(RuntimeConfig(model, num_sequences=8, context_per_sequence=512, batch_tokens=256))
    eng = Engine(rt, SchedulerConfig(num_sequences=8, step_token_budget=256, context_per_sequence=512))
    eng.start()
    return eng, rt


@pytest.fixture(scope="module")
def engines(default_model):
    made = [_engine(LlamaRuntime, default_model), _engine(_AsyncLaunchRuntime, default_model)]
    yield [eng for eng, _ in made]
    for eng, rt in made:
        eng.stop(5)
        rt.close()


async def _stream(engine: Engine, req: Request) -> tuple[list[int], str, object]:
    ids, text, last = [], "", None
    async for out in engine.stream(req):
        assert last is None or not last.finished, "output after the final one"
        ids.extend(out.token_ids)
        text += out.text
        last = out
    return ids, text, last


PROMPTS = ["Count from one to twenty in words:", "List the days of the week:", "Name five colours:",
           "Write the alphabet:", "Say hello in four languages:", "List three fruits:"]


async def _run_all(engine: Engine, tag: str, stop: tuple[str, ...] = ()):
    tok = engine.runtime._loaded.tokenize  # llama.cpp's own tokenizer
    reqs = [Request(f"{tag}{i}", tok(p), SamplingParams(max_tokens=40, stop=stop), deterministic=True)
            for i, p in enumerate(PROMPTS)]
    return await asyncio.gather(*(_stream(engine, r) for r in reqs))


async def test_overlapped_delivery_matches_plain(engines):
    plain, overlapped = engines
    assert overlapped.runtime.async_launch and not plain.runtime.async_launch
    a = await _run_all(plain, "p")
    b = await _run_all(overlapped, "o")
    for (ids_a, text_a, last_a), (ids_b, text_b, last_b) in zip(a, b):
        assert ids_a == ids_b and text_a == text_b
        assert last_a.num_output_tokens == last_b.num_output_tokens == len(ids_b)
        assert last_a.finish_reason == last_b.finish_reason


async def test_overlapped_stop_strings(engines):
    plain, overlapped = engines
    a = await _run_all(plain, "ps", stop=(",", "\n"))
    b = await _run_all(overlapped, "os", stop=(",", "\n"))
    assert any(last.finish_reason.value == "stop" for _, _, last in a)
    for (_, text_a, last_a), (_, text_b, last_b) in zip(a, b):
        assert text_a == text_b and "," not in text_b
        assert last_a.finish_reason == last_b.finish_reason
