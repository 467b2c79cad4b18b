"""The default model over the real socket: 8 apps' clients streaming at once.
Deterministic requests give exactly their solo output while batched with the
others; streams deliver every token once, in order."""

from __future__ import annotations

import asyncio

from slmd_client import AsyncClient
from tests.integration.prompts import CHAT_PROMPTS


async def _complete(target: str, prompt: str, **kw):
    async with AsyncClient(target, timeout=180) as c:
        return await c.complete(messages=[{"role": "user", "content": prompt}], max_tokens=32, temperature=0, **kw)


async def test_eight_concurrent_deterministic_streams_equal_solo(default_daemon):
    t = default_daemon.target
    solo = [await _complete(t, p, deterministic=True) for p in CHAT_PROMPTS]
    together = await asyncio.gather(*(_complete(t, p, deterministic=True) for p in CHAT_PROMPTS))
    for s, b in zip(solo, together):
        assert b.token_ids == s.token_ids and b.text == s.text
        assert b.usage.completion_tokens == len(b.token_ids) > 0


async def test_streaming_text_matches_tokens_and_usage(default_daemon):
    async with AsyncClient(default_daemon.target, timeout=120) as c:
        chunks = [ch async for ch in c.generate(messages=[{"role": "user", "content": "Name three colors."}],
                                                max_tokens=24, temperature=0)]
        n = await c.count_tokens(messages=[{"role": "user", "content": "Name three colors."}])
    last = chunks[-1]
    assert last.finish_reason is not None and last.usage is not None
    ids = [t for ch in chunks for t in ch.token_ids]
    assert last.usage.completion_tokens == len(ids) and last.usage.prompt_tokens == n.num_tokens
    assert len({ch.request_id for ch in chunks}) == 1
    assert "".join(ch.text for ch in chunks).strip()


async def test_repeated_document_prompt_hits_the_prefix_cache(default_daemon):
    doc = "Slmd serves one small model to many apps. " * 40
    msgs = lambda q: [{"role": "system", "content": doc}, {"role": "user", "content": q}]  # noqa: E731
    async with AsyncClient(default_daemon.target, timeout=120) as c:
        first = await c.complete(messages=msgs("What does slmd serve?"), max_tokens=8, temperature=0)
        second = await c.complete(messages=msgs("To whom?"), max_tokens=8, temperature=0)
    assert first.usage.cached_prompt_tokens < 100
    assert second.usage.cached_prompt_tokens > 300
