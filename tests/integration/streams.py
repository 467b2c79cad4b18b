"""Reading an in-process Engine's stream, for the integration tests."""

from __future__ import annotations

from slmd.core import Engine
from slmd.request import Request, RequestOutput


async def collect(engine: Engine, req: Request) -> tuple[list[int], RequestOutput | None]:
    """All token ids the request streamed, and its last (finishing) output."""
    ids, last = [], None
    async for out in engine.stream(req):
        ids.extend(out.token_ids)
        last = out
    return ids, last
