"""Sharing prefixes that are still being computed. The prefix cache only
knows finished sequences; when several requests on one document arrive
together, the later ones would prefill the same document again beside the
first. Instead they wait for the first one's prefill to pass the shared part,
then copy it from its (running) stream."""

from __future__ import annotations

import numpy as np

from slmd.request import Request

MIN_GAIN = 64  # tokens worth waiting for


def lcp(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def _peers(req: Request, running: list[Request]):
    return (r for r in running if r.namespace == req.namespace and r.seq_id is not None and r is not req)


def should_wait(req: Request, running: list[Request], best: int) -> bool:
    """A running request is still prefilling a prefix this one shares, longer
    than what it could reuse now by at least MIN_GAIN tokens."""
    for r in _peers(req, running):
        if r.num_computed_tokens < r.num_prompt_tokens:
            shared = min(lcp(req.all_ids, r.prompt_ids), req.num_tokens - 1)
            if shared >= best + MIN_GAIN and r.num_computed_tokens < shared:
                return True
    return False


def running_source(req: Request, running: list[Request], best: int) -> tuple[int, int] | None:
    """(sequence id, tokens) of the running stream holding the longest computed
    prefix of `req`, when it beats `best`."""
    found = None
    for r in _peers(req, running):
        n = min(lcp(req.all_ids, r.all_ids[: r.num_computed_tokens]), req.num_tokens - 1)
        if n > best and (found is None or n > found[1]):
            found = (r.seq_id, n)
    return found
