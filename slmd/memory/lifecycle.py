"""The model's lifecycle on the engine thread: the pressure plan in force,
keep-alive, unload when idle and lazy reload before the next step.

The engine calls four hooks: `apply` (a new pressure level), `refuse`
(admission of one request), `on_idle` (nothing to run) and `before_step`
(there is work: make sure the model is loaded, at the size the plan wants).
Requests that arrive while the model is unloaded wait in the queue; the
reload runs before their first step, so nothing is dropped.

Critical pressure gives KV memory back at once, not only when idle: the
context is recreated with one stream while requests are in flight. Each
gives its stream up (KV saved to host memory or dropped for recompute, by
cost) and resumes on the new context; when the pressure has passed the
context grows back the same way."""

from __future__ import annotations

import logging
import time
from typing import Callable

from slmd.memory.levels import PressureLevel
from slmd.memory.model import ModelSlot
from slmd.memory.reactor import Plan, plan_for
from slmd.metrics import Metrics
from slmd.request import ErrorKind, FinishReason, Priority, Request, RequestStatus
from slmd.scheduler import ops as O
from slmd.scheduler.scheduler import Scheduler

log = logging.getLogger(__name__)


class Lifecycle:
    def __init__(self, slot: ModelSlot, scheduler: Scheduler, metrics: Metrics,
                 run_ops: Callable[[list[O.Op]], None], keep_alive_seconds: float = -1,
                 retry_after: float = 30.0) -> None:
        self.slot = slot
        self.scheduler = scheduler
        self.metrics = metrics
        self.run_ops = run_ops
        self.default_keep_alive = keep_alive_seconds
        self.keep_alive = keep_alive_seconds  # the latest request's, as Ollama does; < 0 = forever
        self.retry_after = retry_after  # told to shed requests: about one calm period
        self.full = scheduler.cfg  # the configured layout; a reload under pressure may be smaller
        self.streams = self.full.num_sequences  # KV streams the context was last loaded with
        self.base_max_running = scheduler.max_running
        self.level = PressureLevel.NONE
        self.plan: Plan = plan_for(self.level, self.base_max_running)
        self.idle_since = time.monotonic()
        self.num_unloads = 0
        self.unloaded_by_pressure = False  # reload when the pressure passes, not on the next request

    # ---- pressure ---------------------------------------------------------------

    def apply(self, level: PressureLevel) -> None:
        self.level = level
        self.plan = p = plan_for(level, self.base_max_running)
        sched = self.scheduler
        ops = sched.set_max_running(p.max_running)
        freed = sched.cache.clear_host() if p.clear_host else 0
        ops += sched.drop_device_cache() if p.evict_device else []
        if self.slot.is_loaded:
            self.run_ops(ops)
        shed = [r for r in sched.waiting if p.shed_background and r.priority == Priority.BACKGROUND
                and r.status == RequestStatus.WAITING and not r.num_computed_tokens]
        for req in shed:  # not started: it ends now with a retry delay, not later with nothing
            req.error_kind, req.retry_after = ErrorKind.QUEUE_FULL, self.retry_after
            sched.finish(req.request_id, RequestStatus.FINISHED_ABORTED, FinishReason.ABORT,
                         f"memory pressure ({level.label}): background work is paused; retry later")
        log.info("memory pressure %s: batch %d, host tier %d bytes freed, %d cache holders dropped, "
                 "%d background requests shed", level.label, sched.max_running, freed,
                 sum(isinstance(o, O.Release) for o in ops), len(shed))

    def refuse(self, req: Request) -> str | None:
        """Why `req` is not admitted now (None: admit). Also records its keep-alive."""
        if self.plan.shed_background and req.priority == Priority.BACKGROUND:
            return f"memory pressure ({self.level.label}): background work is not accepted now; retry later"
        self.keep_alive = self.default_keep_alive if req.keep_alive is None else req.keep_alive
        return None

    # ---- loaded or not ----------------------------------------------------------

    def before_step(self) -> str | None:
        """Load the model if it is unloaded; recreate the context first if it has
        another size than the plan wants. Returns an error message if loading failed."""
        streams = self.plan.reload_streams or self.full.num_sequences
        if self.slot.is_loaded and self.slot.can_unload and streams != self.streams:
            self._release_context(streams)
        if self.slot.is_loaded:
            return None
        try:
            self.scheduler.resize(streams, self.full)
            secs = self.slot.load(streams)
            self.streams = streams
        except Exception as e:  # out of memory, file gone: the queued requests end cleanly
            log.exception("model reload failed")
            return f"the model could not be loaded: {e}"
        self.scheduler.set_max_running(self.plan.max_running)
        self.metrics.on_model_loaded()
        log.info("model reloaded in %.2f s with %d KV streams (%d waiting)", secs, streams,
                 self.scheduler.num_waiting)
        return None

    def on_idle(self, now: float) -> float:
        """Unload when the keep-alive has passed or pressure is critical; come
        back at the configured size once the pressure has passed. Returns the
        seconds until the next check is due."""
        if not self.slot.can_unload:
            return 0.5
        if not self.slot.is_loaded:
            if self.unloaded_by_pressure and self.level == PressureLevel.NONE:
                self._back_to_full()
            return 0.5
        if self.plan.unload_when_idle:
            self.unload(f"memory pressure {self.level.label}", by_pressure=True)
            return 0.5
        if self.plan.reload_streams is None and self.streams < self.full.num_sequences:
            self.unload("the pressure has passed")
            self._back_to_full()
            return 0.5
        if self.keep_alive < 0:
            return 0.5
        left = self.idle_since + self.keep_alive - now
        if left <= 0:
            self.unload(f"idle for {self.keep_alive:g} s (keep_alive)")
            return 0.5
        return min(0.5, left)

    def _back_to_full(self) -> None:
        """Reload at the configured size now, while nothing runs (a request
        arriving meanwhile waits in the queue)."""
        self.unloaded_by_pressure = False
        if self.before_step() is None:
            log.info("back to the configured size after memory pressure")
        self.idle_since = time.monotonic()

    def on_busy(self, now: float) -> None:
        self.idle_since = now

    def _release_context(self, streams: int) -> None:
        """Free the context (and the weights' mapping) while requests are in
        flight, so that `before_step` loads it again with `streams` streams."""
        sched = self.scheduler
        held = sched.num_running + sum(r.seq_id is not None for r in sched.waiting)
        self.run_ops(sched.release_streams())  # saves run now, while the old context exists
        self.slot.unload()
        self.unloaded_by_pressure = False
        self.num_unloads += 1
        self.metrics.on_model_unloaded()
        log.info("KV context recreated: %d -> %d streams (memory pressure %s); %d requests in flight "
                 "saved or set to recompute, they resume", self.streams, streams, self.level.label, held)

    def unload(self, why: str, *, by_pressure: bool = False) -> None:
        """Free the context and the model. Only when nothing runs or waits:
        every KV stream is then a cache holder, dropped with the context."""
        sched = self.scheduler
        assert not sched.has_work, "unload with work in flight"
        sched.drop_device_cache()  # no ops to run: the context goes away
        sched.cache.clear_host()  # restorable, but the point is to give memory back
        self.slot.unload()
        self.unloaded_by_pressure = by_pressure
        self.num_unloads += 1
        self.metrics.on_model_unloaded()
        log.info("model unloaded: %s", why)
