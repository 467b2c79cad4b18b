"""The pooled KV layout (engine.kv_pool_tokens) on a real daemon.

- A pool of 256 cells, 4 running sequences and 12 requests at once that
  need more than that together: every request completes in full (none fails
  with "no KV cache slot"), some had to wait or were preempted, and the
  greedy outputs agree with the same requests run one at a time on the same
  daemon (the pooled layout batches differently from a solo run, and
  llama.cpp's CPU kernels are not batch invariant, so most, not all, are
  identical token for token).
- The pool is the request window when it is the smaller: a longer prompt gets
  INVALID_ARGUMENT naming engine.kv_pool_tokens; a deterministic request
  gets FAILED_PRECONDITION (bit-identical output needs separate streams).
- Memory: a daemon with one pool of 2048 tokens for 8 sequences has a
  clearly smaller RSS than one with 8 separate streams of 2048."""

from __future__ import annotations

import asyncio

import pytest

from slmd_client import AsyncClient, FailedPrecondition, FinishReason, InvalidArgument
from tests.e2e.test_memory import _free_port, _metric, rss_bytes

pytestmark = [pytest.mark.e2e]

POOL = 256
MAX_TOKENS = 64
PROMPTS = [f"Request {i}: a story about the number {i * 7} and the colour " + "blue " * (i % 5 + 3) for i in range(12)]


def _common_prefix(a, b) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


async def test_more_requests_than_the_pool_holds_all_complete(daemon_factory, tiny_model):
    port = _free_port()
    d = daemon_factory(tiny_model, "--threads", "1", "--kv-pool-tokens", str(POOL), "--max-running", "4",
                       "--metrics-port", str(port), env={"SLMD_MEMORY__PSI": "false"})

    async def one(p: str):
        async with AsyncClient(d.target, timeout=120) as c:
            return await c.complete(p, max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)

    together = await asyncio.gather(*(one(p) for p in PROMPTS))
    # 4 x (about 22 prompt + 64 output) cells > 256: requests wait for room or are preempted
    assert _metric(port, "slmd_preemptions_total") > 0 or any(r.usage.queue_seconds > 0.05 for r in together)
    solo = [await one(p) for p in PROMPTS]
    for r in together:
        assert r.finish_reason == FinishReason.LENGTH and r.usage.completion_tokens == MAX_TOKENS
    same = sum(a.token_ids == b.token_ids for a, b in zip(together, solo))
    agree = sum(_common_prefix(a.token_ids, b.token_ids) for a, b in zip(together, solo)) / (MAX_TOKENS * len(PROMPTS))
    assert same >= 2 * len(PROMPTS) // 3 and agree >= 0.8, (same, agree)
    log = d.log_text()
    assert "no KV cache slot" not in log and "finished_error" not in log


async def test_the_pool_bounds_the_request_window_and_refuses_deterministic(daemon_factory, tiny_model):
    d = daemon_factory(tiny_model, "--threads", "1", "--kv-pool-tokens", str(POOL), env={"SLMD_MEMORY__PSI": "false"})
    async with AsyncClient(d.target, timeout=60) as c:
        n = await c.count_tokens("hello")
        assert n.context_window == POOL
        with pytest.raises(InvalidArgument, match=r"engine\.kv_pool_tokens"):
            await c.complete("word " * (POOL + 10), max_tokens=4)
        with pytest.raises(FailedPrecondition, match=r"engine\.kv_pool_tokens"):
            await c.complete("hello", max_tokens=4, deterministic=True)
        # prompt + max_tokens past the window: the output stops at the window, as with model.context_per_sequence
        long = await c.complete("word " * (POOL - 20), max_tokens=200, temperature=0, ignore_eos=True)
        assert long.finish_reason == FinishReason.LENGTH
        assert long.usage.prompt_tokens + long.usage.completion_tokens == POOL


@pytest.mark.default_model
def test_a_pool_of_one_stream_for_8_sequences_takes_far_less_memory(daemon_factory, default_model):
    common = ("--threads", "1", "--max-running", "8", "--context", "2048")
    env = {"SLMD_MEMORY__PSI": "false", "SLMD_ENGINE__NUM_SEQUENCES": "8"}
    streams = daemon_factory(default_model, *common, env=env)
    rss_streams = rss_bytes(streams.proc.pid)
    streams.stop()
    pooled = daemon_factory(default_model, *common, "--kv-pool-tokens", "2048", env=env)
    rss_pooled = rss_bytes(pooled.proc.pid)
    # 8 x 47.5 MiB of KV against 1 x 47.5 MiB on this model: well over 200 MiB apart
    assert rss_streams - rss_pooled > 200 << 20, (rss_streams >> 20, rss_pooled >> 20)
