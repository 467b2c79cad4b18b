"""KV memory: giving it up, and the pooled layout's cell accounting. A mixin
of `Scheduler`, kept apart so the per-step scheduling stays in scheduler.py.

The primitives that give KV up: a cache holder goes to the host tier or is
dropped, a paused request's stream is saved or dropped for recompute, a
running request is preempted.

With `engine.kv_pool_tokens` the context is one unified llama.cpp cache of
that many cells, which any sequence may use: memory sized for aggregate
demand instead of num_sequences x context. llama_decode fails the whole
batch ("no KV slot") when the cells run out, so the scheduler never plans
past the pool. It keeps an upper bound of the cells in use: the computed
tokens of every request that holds a sequence (running, paused with its KV,
finished but not yet released) plus every device cache holder's tokens. A
copy inside a unified cache shares cells, so the true use is at most that.
Room is made in order of cost: cache holders first, then paused requests'
KV, then a prefill chunk shrinks, and only then is running work preempted,
the lowest class and the newest first (perhaps the request asking)."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slmd.request import Request, RequestStatus
from slmd.runtime.base import kv_cells
from slmd.scheduler import ops as O

if TYPE_CHECKING:
    from slmd.cache.prefix_cache import Hit
    from slmd.scheduler.scheduler import SchedulerConfig


@dataclass
class KVPool:
    """Cells of the pool and, while a step is planned, how many are left.
    `num_cells` 0 is the per-sequence layout: a stream each, never full."""

    num_cells: int = 0
    free: int = 0

    @property
    def is_on(self) -> bool:
        return self.num_cells > 0

    def fits(self, num: int) -> bool:
        return not self.is_on or num <= self.free

    def take(self, num: int) -> None:
        self.free -= num

    def give(self, num: int) -> None:
        self.free += num


def pool_for(cfg: SchedulerConfig) -> KVPool:
    """The pool of a context laid out for `cfg.num_sequences` (smaller when
    memory pressure reloads it with fewer sequences)."""
    pool = cfg.kv_pool_tokens
    return KVPool(kv_cells(cfg.num_sequences, cfg.context_per_sequence, pool) if pool else 0)


def victim_order(r: Request) -> tuple:
    return (r.priority, -r.arrival_time)  # lowest class, newest first


class KVRoom:
    # ---- giving KV up -------------------------------------------------------

    def _evict_cache_holder(self, ops: list[O.Op]) -> int | None:
        """Free a holder slot: the LRU (or lowest-priority) unlocked holder goes
        to the host tier or is dropped. Returns its stream id."""
        picked = self.cache.evict_device(skip=self._fresh_holders)
        if picked is None:
            return None
        ns, node, seq = picked
        if self.cache.wants_host_tier and self._worth_saving(node.depth):
            ops.append(O.Save(seq, ns, node))  # the core demotes the node to the host tier
        else:
            self.cache.drop(ns, node)
            ops.append(O.Release(seq))
        self.pool.give(node.depth)
        return seq

    def _worth_saving(self, num_tokens: int) -> bool:
        if not self.cfg.kv_bytes_per_token:
            return True
        return self.cost.save_beats_recompute(num_tokens, self.cfg.kv_bytes_per_token)

    def _preempt(self, victim: Request, ops: list[O.Op], *, need_stream: bool) -> None:
        """Pause `victim`. Its KV stays in its stream unless the stream is needed;
        then it is saved to host memory or dropped for recompute, by cost."""
        self.running.remove(victim)
        victim.status = RequestStatus.PREEMPTED
        victim.num_preemptions += 1
        self.num_preemptions += 1
        if need_stream:
            self._release_stream(victim, ops)
        self.waiting.push(victim, front=True, idle=False)

    def _release_stream(self, req: Request, ops: list[O.Op]) -> None:
        self.pool.give(req.num_computed_tokens)
        if req.deterministic or self._worth_saving(req.num_computed_tokens):
            ops.append(O.SaveRequest(req.seq_id, req.request_id))  # sets saved_state
        else:
            req.num_computed_tokens = 0
        ops.append(O.Release(req.seq_id))
        heapq.heappush(self._free_run, req.seq_id)
        req.seq_id = None

    # ---- the pool's accounting ------------------------------------------------

    def _cells_in_use(self) -> int:
        held = (*self.running, *self.waiting, *self._finished)  # finished ones release after the step
        return sum(r.num_computed_tokens for r in held if r.seq_id is not None) + self.cache.cached_tokens()

    def _begin_pool(self) -> None:
        if self.pool.is_on:
            self.pool.free = self.pool.num_cells - self._cells_in_use()

    def _free_cells(self, num: int, ops: list[O.Op], keep: Request) -> bool:
        """Evict cache holders, then release paused requests' KV (not `keep`'s),
        until `num` cells are free."""
        if self.pool.fits(num):  # (always, without a pool: this runs for every request every step)
            return True
        while not self.pool.fits(num) and (seq := self._evict_cache_holder(ops)) is not None:
            self._free_hold.append(seq)
        paused = sorted((r for r in self.waiting if r.seq_id is not None and r is not keep), key=victim_order)
        for req in paused:
            if self.pool.fits(num):
                break
            self._release_stream(req, ops)
        return self.pool.fits(num)

    def _preempt_for_cells(self, victim: Request, ops: list[O.Op], planned: dict) -> int:
        """Preempt running `victim`, giving its KV and its planned tokens back.
        Returns the budget its planned work had taken."""
        _, num = planned.pop(victim.request_id, (None, 0))
        self.pool.give(num)
        self._preempt(victim, ops, need_stream=True)  # (its KV's cells are given back there)
        return num

    def _yielders(self, req: Request, live: tuple[int, int] | None):
        """Running requests that may be preempted for `req`: of a lower class,
        not started in this step, not the stream `req` copies from."""
        source = live[0] if live is not None else None
        return (r for r in self.running if r.priority < req.priority and r.request_id not in self._started
                and r.seq_id != source)

    def _fit(self, req: Request, num: int, ops: list[O.Op], planned: dict) -> tuple[int, int]:
        """Cells for `num` tokens of running `req` this step. Returns (tokens
        it may compute, budget given back by requests preempted to make room)."""
        pool = self.pool
        least = num if req.deterministic else 1  # a deterministic chunk is fixed: all or nothing
        refund = 0
        if not self._free_cells(num, ops, req):
            while not pool.fits(least):
                victims = [r for r in self.running if r.request_id not in self._started or r is req]
                victim = min(victims, key=victim_order, default=None)
                if victim is None or victim is req:
                    if victim is req and req.num_computed_tokens:  # its KV is worth more to the others
                        refund += self._preempt_for_cells(req, ops, planned)
                    return 0, refund
                refund += self._preempt_for_cells(victim, ops, planned)
            num = min(num, pool.free) if pool.is_on else num
        pool.take(num)
        return num, refund

    def _start_cells(self, req: Request, hit: Hit | None, live: tuple[int, int] | None) -> tuple[int, int]:
        """Cells that starting `req` adds to the pool: (at the peak, once its
        ops ran). A host-tier state is restored whole before its tail is cut;
        a request paused with its KV in place is already counted."""
        if req.seq_id is not None:
            return 0, 0
        if live is not None:
            return live[1], live[1]
        if hit is not None and req.saved_state is None:
            holder = hit.source.holder
            return (hit.num_tokens if hit.device_seq is not None else holder.num_tokens), hit.num_tokens
        return req.num_computed_tokens, req.num_computed_tokens  # a saved state, or nothing yet

    def _room_to_start(self, req: Request, hit: Hit | None, live: tuple[int, int] | None, budget: int,
                       ops: list[O.Op], planned: dict) -> tuple[bool, int, int, Hit | None, tuple[int, int] | None]:
        """Room in the pool for `req` to start with its first chunk. A copied
        prefix counts as cells of its own; when that is what does not fit, it
        starts without the copy (its source can then give way, else a pool
        full of holders that the head of the queue matches would deadlock).
        Returns (whether it fits, budget given back by preempted requests,
        cells it holds once started, and the hit and live source it keeps)."""
        if req.seq_id is None and req.saved_state is None and req.num_computed_tokens:
            return False, 0, 0, hit, live  # preempted in this step: its KV is saved by the ops, it resumes next step
        refund = 0
        while True:
            peak, held = self._start_cells(req, hit, live)
            first = min(req.num_tokens - max(held, req.num_computed_tokens),
                        self.cfg.step_token_budget if req.deterministic else budget + refund)
            fits, more = self._make_cells(req, max(peak, held + first), ops, planned, live)
            refund += more
            if fits or (hit is None and live is None):
                return fits, refund, held, hit, live
            if hit is not None:
                self.cache.release_hit(hit)
            hit = live = None

    def _make_cells(self, req: Request, num: int, ops: list[O.Op], planned: dict,
                    live: tuple[int, int] | None) -> tuple[bool, int]:
        """`num` free cells for a request to start: holders and paused KV give
        way, then lower-class running work if that makes enough room (nobody
        is paused for nothing). Returns (whether they are free, budget given
        back by preempted requests)."""
        if self._free_cells(num, ops, req):
            return True, 0
        lower = sorted(self._yielders(req, live), key=victim_order)
        gain = sum(r.num_computed_tokens + planned.get(r.request_id, (None, 0))[1] for r in lower)
        if not self.pool.fits(num - gain):
            return False, 0
        refund = 0
        for victim in lower:
            if self.pool.fits(num):
                break
            refund += self._preempt_for_cells(victim, ops, planned)
        return True, refund
