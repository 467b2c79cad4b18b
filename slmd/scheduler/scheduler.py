"""Who runs next. Each step gets one token budget: running sequences first
(higher classes first; a decode costs one token, a prompt a chunk), then
waiting requests by class and fair share. A request's longest cached prefix
is copied into its stream instead of recomputed. An arrival that finds no
room preempts lower-class work. The scheduler knows tokens, priorities and
sequence ids; it asks for runtime work through ops and never calls it."""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Callable

from slmd.cache.prefix_cache import CacheConfig, Hit, PrefixCache
from slmd.request import FinishReason, Priority, Request, RequestStatus
from slmd.runtime.base import SeqWork, StepBatch, StepOutput
from slmd.scheduler import inflight
from slmd.scheduler import ops as O
from slmd.scheduler.admission import AppPolicy, Rejected, RejectReason, TokenMeter, check_admission
from slmd.scheduler.cost import CostModel
from slmd.scheduler.kv_pool import KVRoom, pool_for
from slmd.scheduler.pressure import PressureOps
from slmd.scheduler.queue import WaitQueue


@dataclass(frozen=True)
class SchedulerConfig:
    num_sequences: int = 16  # KV streams: running requests plus idle cache holders
    max_running: int = 0  # 0 = num_sequences
    step_token_budget: int = 512
    context_per_sequence: int = 2048
    max_waiting: int = 256
    kv_bytes_per_token: float = 0.0  # for the save-or-recompute choice; 0 = unknown (always save)
    kv_pool_tokens: int = 0  # one unified KV cache shared by all sequences (see kv_pool.py); 0 = off
    # While an interactive app is active, lower classes prefill at most this many
    # seconds of tokens per step (at the measured speed): a step in progress
    # cannot be interrupted, so its length is the wait of an interactive arrival.
    interactive_step_seconds: float = 0.1  # 0 = off
    interactive_window_seconds: float = 30.0  # "active": an interactive request seen this recently
    cache: CacheConfig = field(default_factory=CacheConfig)


@dataclass
class ScheduledWork:
    request: Request
    num_tokens: int
    sample: bool
    is_prefill: bool


@dataclass
class SchedulerOutput:
    batch: StepBatch
    work: list[ScheduledWork]
    ops: list[O.Op]  # runtime operations to run, in order, before the batch
    hits: list[Hit] = field(default_factory=list)  # cache sources locked for this step


@dataclass
class TokenUpdate:
    request: Request
    new_token_ids: list[int] = field(default_factory=list)


class Scheduler(KVRoom, PressureOps):
    def __init__(self, cfg: SchedulerConfig, is_eog: Callable[[int], bool],
                 policy_of: Callable[[str], AppPolicy] = lambda app: AppPolicy()) -> None:
        self.cfg = cfg
        self.max_running = cfg.max_running or cfg.num_sequences
        self.is_eog = is_eog
        self.policy_of = policy_of
        self.cache = PrefixCache(cfg.cache)
        self.cost = CostModel()
        self.meter = TokenMeter()
        self.waiting = WaitQueue(lambda app: policy_of(app).weight,
                                 lambda app: sum(1 for r in self.running if r.app_id == app))
        self.running: list[Request] = []
        self.num_preemptions = 0
        # Running requests use the low stream ids [0, max_running), cache holders
        # the rest: llama.cpp attends over the contiguous range of streams in a
        # batch, so idle holders interleaved with running streams would be
        # computed (and masked) in every step. A finished request's stream is
        # copied up into a holder slot.
        self._free_run = list(range(self.max_running))  # a heap: lowest id first
        self._free_hold = list(range(cfg.num_sequences - 1, self.max_running - 1, -1))
        self._fresh_holders: set[int] = set()  # their copy runs in the next decode: not savable yet
        self.pool = pool_for(cfg)
        self._started: set[str] = set()  # requests started in the current schedule()
        self._finished: list[Request] = []
        self._by_id: dict[str, Request] = {}
        self._with_deadline: dict[str, Request] = {}  # (expired() looks at these only, every step)
        self._active_per_app: dict[str, int] = {}
        self._last_interactive = float("-inf")
        self._yield_left: int | None = None  # lower-class prefill tokens left this step; None = no cap
        self.last_charges: dict[str, int] = {}  # app -> tokens computed in the last step

    # ---- requests in and out ----------------------------------------------

    def add(self, req: Request) -> None:
        """Admit to the queue or raise `Rejected` (a subclass names the limit)."""
        check_admission(self.policy_of(req.app_id), req.app_id, num_waiting_total=len(self.waiting),
                        max_waiting_total=self.cfg.max_waiting, num_waiting_app=self.waiting.count(app_id=req.app_id),
                        num_active_app=self._active_per_app.get(req.app_id, 0), meter=self.meter)
        if req.deadline is not None:
            eta = self.predicted_ttft(req)
            if time.monotonic() + eta > req.deadline:
                raise Rejected(RejectReason.DEADLINE, f"predicted time to first token {eta:.2f}s exceeds the "
                               f"deadline ({max(0.0, req.deadline - time.monotonic()):.2f}s left)", retry_after=eta)
        req.namespace = req.namespace or self.cache.namespace_for(req.app_id)
        self._by_id[req.request_id] = req
        if req.deadline is not None:
            self._with_deadline[req.request_id] = req
        self._active_per_app[req.app_id] = self._active_per_app.get(req.app_id, 0) + 1
        if req.priority >= Priority.INTERACTIVE:
            self._last_interactive = time.monotonic()
        self.waiting.push(req, idle=self._active_per_app[req.app_id] == 1)

    def predicted_ttft(self, req: Request) -> float:
        """Prefill work queued at this class or above, plus this prompt, at the measured speed."""
        ahead = sum(r.num_pending_tokens for r in (*self.running, *self.waiting) if r.priority >= req.priority)
        return self.cost.recompute_seconds(ahead + req.num_pending_tokens)

    def get(self, request_id: str) -> Request | None:
        return self._by_id.get(request_id)

    def finish(self, request_id: str, status: RequestStatus, reason: FinishReason, error: str | None = None) -> None:
        req = self._by_id.get(request_id)
        if req is None or req.is_finished:
            return
        if req in self.running:
            self.running.remove(req)
        else:
            self.waiting.remove(req)
        req.status, req.finish_reason, req.error = status, reason, error
        req.finish_time = time.monotonic()
        self._finished.append(req)

    def take_finished(self) -> tuple[list[Request], list[O.Op]]:
        """Finished requests since the last call, and the runtime ops for their
        streams: copied into a prefix-cache holder slot when worth keeping,
        then released."""
        done, self._finished = self._finished, []
        ops: list[O.Op] = []
        for req in done:
            self._by_id.pop(req.request_id, None)
            self._with_deadline.pop(req.request_id, None)
            self._active_per_app[req.app_id] -= 1
            self.meter.add(req.app_id, req.num_computed_tokens - req.num_cached_tokens)
            req.saved_state = None
            if req.seq_id is None:
                continue
            if req.status != RequestStatus.FINISHED_ERROR:
                self._keep(req, ops)
            ops.append(O.Release(req.seq_id))
            heapq.heappush(self._free_run, req.seq_id)
        return done, ops

    def _keep(self, req: Request, ops: list[O.Op]) -> None:
        tokens = req.all_ids[: req.num_computed_tokens]
        if len(tokens) < self.cache.cfg.min_tokens or not self.cache.cfg.enabled:
            return
        if self.cache.covers(tokens, req.namespace):
            self.cache.touch(tokens, req.namespace, int(req.priority))
            return
        hold = self._free_hold.pop() if self._free_hold else self._evict_cache_holder(ops)
        if hold is None:
            return
        ops.append(O.Copy(req.seq_id, hold, len(tokens)))
        if not self.pool.is_on:  # (a copy within one unified cache is done at once)
            self._fresh_holders.add(hold)
        for seq in self.cache.insert(tokens, req.namespace, hold, int(req.priority), self._exact_len(req)):
            ops.append(O.Release(seq))
            self._fresh_holders.discard(seq)
            self._free_hold.append(seq)

    def expired(self, now: float) -> list[Request]:
        """Waiting or running requests whose deadline has passed."""
        return [r for r in self._with_deadline.values() if not r.is_finished and now >= r.deadline]

    @property
    def has_work(self) -> bool:
        return bool(self.running or len(self.waiting))

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    # ---- one step ---------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        self._started.clear()
        budget = self.cfg.step_token_budget
        self._yield_left = self._lower_class_cap()
        self._begin_pool()
        out = SchedulerOutput(StepBatch(()), [], [])
        planned: dict[str, tuple[Request, int]] = {}  # request id -> (request, tokens this step)
        deferred: list[Request] = []

        # A waiting request of a higher class than some running one goes first,
        # before lower classes spend the budget: it may preempt them.
        while budget > 0 and len(self.waiting) and self.running \
                and self.waiting.peek().priority > min(r.priority for r in self.running):
            budget, ok = self._admit_next(out, budget, planned, deferred)
            if not ok:
                break

        # Decodes first (one token each); then prompts, least-served app first
        # (its fair share), shortest first within an app.
        served = self.waiting.served
        for req in sorted(self.running, key=lambda r: (-r.priority, r.num_pending_tokens > 1, served(r.app_id),
                                                      r.num_pending_tokens)):
            if budget <= 0:
                break
            if req.request_id in planned or req.status != RequestStatus.RUNNING:  # (preempted for cells)
                continue
            num, refund = self._fit(req, n, out.ops, planned) if (n := self._chunk(req, budget)) else (0, 0)
            budget += refund - num
            if num == 0:
                continue
            planned[req.request_id] = (req, num)

        while budget > 0 and len(self.waiting):
            budget, ok = self._admit_next(out, budget, planned, deferred)
            if not ok:
                break
        for req in reversed(deferred):
            self.waiting.push(req, front=True, idle=False)

        if self._yield_left is not None and any(
                r.priority >= Priority.INTERACTIVE and r.num_pending_tokens > 1 for r, _ in planned.values()):
            # An interactive prompt's step is its time to first token: lower
            # classes skip it (their decodes wait one step, their KV stays).
            planned = {k: v for k, v in planned.items() if v[0].priority >= Priority.INTERACTIVE}

        shared: list[SeqWork] = []
        solo: list[tuple[SeqWork, ...]] = []
        for req, num in planned.values():
            start, total = req.num_computed_tokens, req.num_tokens
            sample = start + num == total and req.sampling.max_tokens > 0
            w = SeqWork(req.seq_id, _tokens(req, start, num), start, sample)
            (solo.append((w,)) if req.deterministic else shared.append(w))
            out.work.append(ScheduledWork(req, num, sample, total - start > 1 or not req.output_ids))
        out.batch = StepBatch(((tuple(shared),) if shared else ()) + tuple(solo))
        return out

    def _admit_next(self, out: SchedulerOutput, budget: int, planned: dict, deferred: list) -> tuple[int, bool]:
        """Start the head of the queue if there is room (preempting lower
        classes if need be). Returns the budget left and whether to go on."""
        req = self.waiting.peek()
        # match first: the hit's source is locked, so making room cannot evict it
        hit = self._match(req)
        live = None
        if self.cache.cfg.enabled and not req.deterministic and req.seq_id is None and not req.num_computed_tokens:
            best = max(hit.num_tokens if hit else 0, self.cache.cfg.min_tokens - 1)
            if inflight.should_wait(req, self.running, best):
                if hit is not None:
                    self.cache.release_hit(hit)
                self.waiting.remove(req)
                deferred.append(req)
                return budget, True
            live = inflight.running_source(req, self.running, best)
            if live is not None and hit is not None:
                self.cache.release_hit(hit)
                hit = None
        fits, refund, held, hit, live = self._room_to_start(req, hit, live, budget, out.ops, planned)
        preempted = self._make_room(req, out.ops, live) if fits else None
        if preempted is None:
            if hit is not None:
                self.cache.release_hit(hit)
            return budget + refund, False
        for victim in preempted:  # its planned work is off: refund the budget
            _, num = planned.pop(victim.request_id, (None, 0))
            self.pool.give(num)
            budget += num
        # (not pop(): making room pushed victims back and changed who is at the head)
        self.waiting.remove(req)
        self._start(req, out, hit, live)
        num = self._chunk(req, budget)  # (<= first)
        self.pool.take(held + num)
        if num:
            planned[req.request_id] = (req, num)
        return budget + refund - num, True

    def _chunk(self, req: Request, budget: int) -> int:
        if req.deterministic:
            # A fixed chunk size whatever else runs, so the numerics match a solo
            # run; it is a llama_decode of its own, so it may overdraw the budget.
            return min(req.num_pending_tokens, self.cfg.step_token_budget)
        num = min(req.num_pending_tokens, budget)
        if num > 1 and self._yield_left is not None and req.priority < Priority.INTERACTIVE:
            num = min(num, self._yield_left)
            self._yield_left -= num
        return num

    def _lower_class_cap(self) -> int | None:
        """Prefill tokens lower classes may take this step: none while an
        interactive prompt waits or prefills, a short step's worth while an
        interactive app has been active within the window, else None (no cap)."""
        if not self.cfg.interactive_step_seconds:
            return None
        now = time.monotonic()
        interactive = [r for r in (*self.running, *self.waiting) if r.priority >= Priority.INTERACTIVE]
        if interactive:
            self._last_interactive = now
            if any(r.num_pending_tokens > 1 for r in interactive):
                return 0  # an interactive prompt is waiting or prefilling: its step carries no lower-class prompt
        if now - self._last_interactive > self.cfg.interactive_window_seconds:
            return None
        return max(16, int(self.cost.prefill_tps * self.cfg.interactive_step_seconds))

    def _make_room(self, req: Request, ops: list[O.Op], live: tuple[int, int] | None) -> list[Request] | None:
        """A running slot and a KV stream for `req`, preempting lower classes if
        need be (not the stream it copies from). Returns the preempted
        requests, or None if there is no room."""
        need_stream = req.seq_id is None and not self._free_run
        if need_stream:  # a paused request of this class or below gives its stream up first
            donor = next((r for r in self.waiting if r.seq_id is not None and r is not req
                          and r.priority <= req.priority), None)
            if donor is not None:
                self._release_stream(donor, ops)
                need_stream = False
        need = max(len(self.running) - self.max_running + 1, 1 if need_stream else 0)
        if need <= 0:
            return []
        # the lowest class first; within it the most-served app's newest request
        served = self.waiting.served
        lower = sorted(self._yielders(req, live), key=lambda r: (r.priority, -served(r.app_id), -r.arrival_time))
        if len(lower) < need:
            return None  # not enough lower-class work to make room: nobody is paused for nothing
        for i, victim in enumerate(lower[:need]):
            self._preempt(victim, ops, need_stream=need_stream and i == 0)
        return lower[:need]

    def _exact_len(self, req: Request) -> int:
        """Tokens of a finished request's KV computed as a cold solo run would:
        a deterministic request's prompt, in whole aligned chunks."""
        if not req.deterministic:
            return 0
        c = self.cfg.step_token_budget
        return min(req.num_computed_tokens, req.num_prompt_tokens) // c * c

    def _match(self, req: Request) -> Hit | None:
        if req.seq_id is not None or req.saved_state is not None or req.num_computed_tokens:
            return None  # resuming with its own KV
        hit = self.cache.match(req.all_ids, req.namespace, max_tokens=req.num_tokens - 1, priority=int(req.priority))
        if hit is None or not req.deterministic:
            return hit
        # Deterministic: only exact KV, cut at a chunk boundary, so the rest is
        # prefilled in the same chunks as a cold run.
        c = self.cfg.step_token_budget
        n = min(hit.num_tokens, hit.exact) // c * c
        self.cache.release_hit(hit)
        if n == 0:
            return None
        return self.cache.match(req.all_ids, req.namespace, max_tokens=n, priority=int(req.priority))

    def _start(self, req: Request, out: SchedulerOutput, hit: Hit | None,
               live: tuple[int, int] | None = None) -> None:
        resumed = req.status == RequestStatus.PREEMPTED
        req.status = RequestStatus.RUNNING
        req.first_scheduled_time = req.first_scheduled_time or time.monotonic()
        self.running.append(req)
        if req.seq_id is not None:  # paused with its KV in place
            return
        req.seq_id = heapq.heappop(self._free_run)
        self._started.add(req.request_id)
        out.ops.append(O.Open(req.seq_id, req.sampling, req.request_id, tuple(req.output_ids) if resumed else ()))
        if req.saved_state is not None:
            out.ops.append(O.Restore(req.saved_state, req.seq_id, req.num_computed_tokens))
            req.saved_state = None
            return
        if live is not None:  # copy from a running stream (see inflight.py)
            out.ops.append(O.Copy(live[0], req.seq_id, live[1]))
            req.num_computed_tokens = live[1]
            req.num_cached_tokens = min(live[1], req.num_prompt_tokens)
            self.cache.stats.hit_tokens += live[1]
            return
        if hit is None:
            return
        out.hits.append(hit)
        if hit.device_seq is not None:
            out.ops.append(O.Copy(hit.device_seq, req.seq_id, hit.num_tokens))
        else:
            out.ops.append(O.Restore(hit.host_data, req.seq_id, hit.num_tokens))
        req.num_computed_tokens = hit.num_tokens
        if not resumed:
            req.num_cached_tokens = min(hit.num_tokens, req.num_prompt_tokens)

    def update(self, out: SchedulerOutput, step: StepOutput) -> list[TokenUpdate]:
        for hit in out.hits:
            self.cache.release_hit(hit)
        if not out.batch.is_empty:  # that decode ran the pending stream copies
            self._fresh_holders.clear()
        now = time.monotonic()
        updates: list[TokenUpdate] = []
        prefill = decode = 0
        charges: dict[str, int] = {}  # one fair-share charge per app and step
        for sw in out.work:
            req = sw.request
            if req.seq_id in step.interrupted:
                continue  # rolled back: as if not scheduled
            prefill += sw.num_tokens if sw.is_prefill else 0
            decode += 0 if sw.is_prefill else sw.num_tokens
            charges[req.app_id] = charges.get(req.app_id, 0) + sw.num_tokens
            if req.is_finished:
                continue
            if req.seq_id in step.failed:
                self.finish(req.request_id, RequestStatus.FINISHED_ERROR, FinishReason.ERROR, step.failed[req.seq_id])
                continue
            req.num_computed_tokens += sw.num_tokens
            if not sw.sample:
                if req.sampling.max_tokens == 0 and req.num_pending_tokens == 0:
                    self.finish(req.request_id, RequestStatus.FINISHED_LENGTH, FinishReason.LENGTH)
                continue
            token = step.sampled[req.seq_id]
            if req.teacher_ids is not None:
                req.argmax_ids.append(token)
                if len(req.output_ids) >= len(req.teacher_ids):
                    self.finish(req.request_id, RequestStatus.FINISHED_LENGTH, FinishReason.LENGTH)
                    continue
                token = req.teacher_ids[len(req.output_ids)]
            req.first_token_time = req.first_token_time or now
            if self.is_eog(token) and not req.sampling.ignore_eos:
                self.finish(req.request_id, RequestStatus.FINISHED_STOPPED, FinishReason.STOP)
                continue
            req.output_ids.append(token)
            updates.append(TokenUpdate(req, [token]))
            if len(req.output_ids) >= req.sampling.max_tokens or req.num_tokens >= self.cfg.context_per_sequence:
                self.finish(req.request_id, RequestStatus.FINISHED_LENGTH, FinishReason.LENGTH)
        for app_id, num in charges.items():
            self.waiting.charge(app_id, num)
        self.last_charges = charges
        if not step.interrupted:  # (a cut-short step's time says nothing of its tokens)
            self.cost.observe_step(prefill, decode, step.decode_seconds)
        return updates


def _tokens(req: Request, start: int, num: int) -> list[int]:
    """`req.all_ids[start : start + num]` without building all_ids (a copy of
    the whole prompt per request and step)."""
    p = len(req.prompt_ids)
    if start >= p:
        return req.output_ids[start - p : start - p + num]
    if start + num <= p:
        return req.prompt_ids[start : start + num]
    return req.all_ids[start : start + num]
