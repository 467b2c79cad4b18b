"""The scheduler's side of memory pressure (driven by slmd/memory/lifecycle.py):
shrink or restore the running set, lay the streams out for a smaller or full
context, and give KV streams and cache holders up. A mixin of `Scheduler`, kept
apart so the per-step scheduling stays in scheduler.py."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from slmd.scheduler import ops as O
from slmd.scheduler.kv_pool import pool_for, victim_order

if TYPE_CHECKING:
    from slmd.scheduler.scheduler import SchedulerConfig


class PressureOps:
    def set_max_running(self, n: int) -> list[O.Op]:
        """Shrink the running set (memory pressure) or restore it, up to the
        configured size. The excess, lowest class and newest first, is paused
        with its KV in place and resumes when there is room."""
        self.max_running = max(1, min(n, self.cfg.max_running or self.cfg.num_sequences))
        excess = len(self.running) - self.max_running
        ops: list[O.Op] = []
        for victim in sorted(self.running, key=victim_order)[: max(0, excess)]:
            self._preempt(victim, ops, need_stream=False)
        return ops

    def resize(self, num_sequences: int, full: SchedulerConfig) -> None:
        """Lay the streams out for a context of `num_sequences` (the model is
        reloaded smaller under memory pressure, or at `full` size again). Only
        while unloaded: no request holds a stream and no holder is cached."""
        assert not self.running and not self.cache.device_holders()
        assert all(r.seq_id is None for r in self.waiting)
        run = min(full.max_running or full.num_sequences, num_sequences)
        self.cfg = replace(self.cfg, num_sequences=num_sequences, max_running=run)
        self.max_running = min(self.max_running, run)
        self._free_run = list(range(run))
        self._free_hold = list(range(num_sequences - 1, run - 1, -1))
        self._fresh_holders.clear()
        self.pool = pool_for(self.cfg)  # a pool shrinks with the streams it replaces

    def drop_device_cache(self) -> list[O.Op]:
        """Give up every unlocked device cache holder (memory pressure, unload).
        Fresh holders too: a drop never reads the stream, and a pending copy
        into a released stream only writes cells nobody owns."""
        ops: list[O.Op] = []
        while (picked := self.cache.evict_device()) is not None:
            ns, node, seq = picked
            self.cache.drop(ns, node)
            ops.append(O.Release(seq))
            self._fresh_holders.discard(seq)
            self._free_hold.append(seq)
        return ops

    def release_streams(self) -> list[O.Op]:
        """Every request and cache holder gives its KV stream up, so the context
        can be recreated at another size while requests are in flight (memory
        pressure). Each request is paused, its KV saved to host memory or
        dropped for recompute by cost (a deterministic one always saved), and
        resumes on the new context."""
        ops: list[O.Op] = []
        # lowest class first: each goes to the front of its queue, so the highest resumes first
        for victim in sorted(self.running, key=victim_order):
            self._preempt(victim, ops, need_stream=True)
        for req in self.waiting:
            if req.seq_id is not None:  # paused with its KV in place
                self._release_stream(req, ops)
        return ops + self.drop_device_cache()

