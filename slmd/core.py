"""The engine loop, on its own thread: inbox -> schedule -> runtime.step ->
outputs. The asyncio side submits requests and receives each request's outputs
on an asyncio.Queue; one `call_soon_threadsafe` per loop per step hands them
over. Cancellations and aborts are applied at the start of the next step, so a
vanished client's sequence is freed within one step."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from slmd.memory.levels import PressureLevel
from slmd.memory.lifecycle import Lifecycle
from slmd.memory.model import ModelSlot
from slmd.metrics import Metrics
from slmd.output import TextState, feed, flush, merge_deltas
from slmd.request import ErrorKind, FinishReason, Priority, Request, RequestOutput, RequestStatus
from slmd.runtime.base import Runtime, StepOutput
from slmd.scheduler import ops as O
from slmd.scheduler.admission import AppPolicy, Rejected, RejectReason
from slmd.scheduler.scheduler import Scheduler, SchedulerConfig, TokenUpdate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Submit:
    req: Request
    loop: asyncio.AbstractEventLoop
    sink: asyncio.Queue


@dataclass(frozen=True)
class _Abort:
    request_id: str
    kind: ErrorKind
    reason: str


@dataclass(frozen=True)
class _Pressure:
    level: PressureLevel


@dataclass
class EngineStats:
    started_at: float = field(default_factory=time.monotonic)
    num_steps: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    cached_tokens_total: int = 0
    requests_finished_total: int = 0


class Engine:
    def __init__(self, runtime: Runtime, cfg: SchedulerConfig,
                 policy_of: Callable[[str], AppPolicy] = lambda app: AppPolicy(),
                 metrics: Metrics | None = None, keep_alive_seconds: float = -1) -> None:
        # a ModelSlot (built with a factory) can be unloaded and reloaded; a bare runtime stays loaded
        self.runtime = runtime if isinstance(runtime, ModelSlot) else ModelSlot(None, runtime)
        self.metrics = metrics or Metrics()  # metrics hook: events pushed from this thread
        self.scheduler = Scheduler(cfg, self.runtime.is_eog, policy_of)
        self.lifecycle = Lifecycle(self.runtime, self.scheduler, self.metrics, self._run_ops, keep_alive_seconds)
        self.stats = EngineStats()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._sinks: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._text: dict[str, TextState] = {}
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, RequestOutput]]] = {}
        self._copies_pending = False  # stream copies wait for the next llama_decode
        # The step in progress carries no interactive work: an interactive
        # arrival interrupts it instead of waiting for it to end.
        self._interruptible = False
        self.num_interrupts = 0
        self._held: list[TokenUpdate] = []  # a step's tokens not yet delivered (async_launch runtimes)
        self._thread = threading.Thread(target=self._run, name="slmd-engine", daemon=True)

    # ---- called from any thread -------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, req: Request, loop: asyncio.AbstractEventLoop, sink: asyncio.Queue) -> None:
        self._inbox.put(_Submit(req, loop, sink))
        self._wake.set()
        if req.priority >= Priority.INTERACTIVE and self._interruptible:
            # The rest of a lower-class step would be this request's wait; the
            # step's work is rolled back and scheduled again with this one first.
            self.runtime.interrupt()

    def abort(self, request_id: str, kind: ErrorKind = ErrorKind.CANCELLED, reason: str = "cancelled") -> None:
        self._inbox.put(_Abort(request_id, kind, reason))
        self._wake.set()

    def set_pressure(self, level: PressureLevel) -> None:
        """Apply a memory-pressure level (slmd/memory/reactor.py) on the engine thread."""
        self._inbox.put(_Pressure(level))
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued and running, then end the thread."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)

    async def stream(self, req: Request) -> AsyncIterator[RequestOutput]:
        """Submit and yield the request's outputs; leaving early (the caller was
        cancelled or stopped iterating) aborts the request."""
        sink: asyncio.Queue = asyncio.Queue()
        self.submit(req, asyncio.get_running_loop(), sink)
        finished = False
        try:
            while not finished:
                outs = [await sink.get()]
                # An event loop behind the engine finds several steps' outputs
                # queued: one delivery (one gRPC message) for all of them.
                while not outs[-1].finished and not sink.empty():
                    outs.append(sink.get_nowait())
                for out in merge_deltas(outs):
                    finished = out.finished
                    yield out
        finally:
            if not finished:
                self.abort(req.request_id)

    def validate_grammar(self, grammar: str) -> str | None:
        return self.runtime.validate_grammar(grammar)

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    # ---- the engine thread ------------------------------------------------

    def _run(self) -> None:
        while True:
            self._drain_inbox()
            if not self.scheduler.has_work:
                self._flush_held()
                # An abort or a refusal can leave nothing to run: deliver its
                # final output now, not after some later step.
                self._collect_finished()
                self._dispatch()
                if self._stopping.is_set():
                    break
                wait = self.lifecycle.on_idle(time.monotonic())
                self._wake.wait(wait)
                self._wake.clear()
                continue
            self.lifecycle.on_busy(time.monotonic())
            error = self.lifecycle.before_step()
            if error is not None:
                for req in [*self.scheduler.running, *self.scheduler.waiting]:
                    req.error_kind = ErrorKind.INTERNAL
                    self.scheduler.finish(req.request_id, RequestStatus.FINISHED_ERROR, FinishReason.ERROR, error)
                self._collect_finished()
                self._dispatch()
                continue
            try:
                self._step()
            except Exception:  # never let one bad step take the daemon down
                log.exception("engine step failed; failing the running requests")
                for req in list(self.scheduler.running):
                    req.error_kind = ErrorKind.INTERNAL
                    self.scheduler.finish(req.request_id, RequestStatus.FINISHED_ERROR, FinishReason.ERROR, "internal engine error")
            self._collect_finished()
            self._dispatch()

    def _drain_inbox(self) -> None:
        self._interruptible = False
        self.runtime.clear_interrupt()  # (arrivals from here on are in this drain or interrupt the next step)
        while True:
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(msg, _Submit):
                self._admit(msg)
            elif isinstance(msg, _Pressure):
                self.lifecycle.apply(msg.level)
            else:
                req = self.scheduler.get(msg.request_id)
                if req is not None and not req.is_finished:
                    req.error_kind = msg.kind
                    self.scheduler.finish(msg.request_id, RequestStatus.FINISHED_ABORTED, FinishReason.ABORT, msg.reason)
        # (finished requests are collected after the step)

    def _admit(self, msg: _Submit) -> None:
        req = msg.req
        self._sinks[req.request_id] = (msg.loop, msg.sink)
        if self._stopping.is_set():
            self.metrics.on_rejected("shutdown")  # metrics hook
            self._reject(req, ErrorKind.SHUTDOWN, "slmd is shutting down")
            return
        refusal = self.lifecycle.refuse(req)
        if refusal is not None:
            req.retry_after = self.lifecycle.retry_after
            self.metrics.on_rejected("memory_pressure")  # metrics hook
            self._reject(req, ErrorKind.QUEUE_FULL, refusal)
            return
        try:
            self.scheduler.add(req)
        except Rejected as e:
            req.retry_after = e.retry_after
            self.metrics.on_rejected(e.reason.value)  # metrics hook
            kind = ErrorKind.DEADLINE if e.reason == RejectReason.DEADLINE else ErrorKind.QUEUE_FULL
            self._reject(req, kind, str(e))
            return
        self._text[req.request_id] = TextState(req.sampling.stop)

    def _reject(self, req: Request, kind: ErrorKind, why: str) -> None:
        req.error_kind = kind
        req.status, req.finish_reason, req.error = RequestStatus.FINISHED_ABORTED, FinishReason.ABORT, why
        req.finish_time = time.monotonic()
        self._emit_final(req)

    def _step(self) -> None:
        sched = self.scheduler
        now = time.monotonic()
        for req in sched.expired(now):
            req.error_kind = ErrorKind.DEADLINE
            sched.finish(req.request_id, RequestStatus.FINISHED_ABORTED, FinishReason.ABORT, "deadline exceeded")
        out = sched.schedule()
        self._run_ops(out.ops)
        self._interruptible = bool(out.work) and sched.cfg.interactive_step_seconds > 0 and \
            all(w.request.priority < Priority.INTERACTIVE for w in out.work)
        if out.batch.is_empty:
            step = StepOutput()
        else:
            launched = self.runtime.launch(out.batch)
            # A GPU computes this step now: the last step's tokens go out meanwhile
            self._flush_held()
            step = self.runtime.collect(launched)
            self._copies_pending = False  # that decode ran them
        self._interruptible = False
        if step.interrupted:
            self.num_interrupts += 1
        self.stats.num_steps += 1
        self.stats.prompt_tokens_total += sum(sw.num_tokens for sw in out.work if sw.is_prefill)
        updates = sched.update(out, step)
        self.metrics.on_scheduled(sched.last_charges)  # metrics hook
        for seq_id, why in step.failed.items():
            log.error("sequence %d failed: %s", seq_id, why)
        if self.runtime.async_launch:
            self._held = updates  # delivered while the next step computes, or before a request's final output
        else:
            self._deliver_tokens(updates)

    def _flush_held(self, only: set[str] | None = None) -> None:
        """Deliver held tokens: all, or those of the requests in `only`."""
        if not self._held:
            return
        if only is None:
            held, self._held = self._held, []
        else:
            held = [u for u in self._held if u.request.request_id in only]
            self._held = [u for u in self._held if u.request.request_id not in only]
        self._deliver_tokens(held)
        self._dispatch()

    def _deliver_tokens(self, updates: list[TokenUpdate]) -> None:
        """Text (stop strings end a request here) and metrics for new tokens."""
        sched = self.scheduler
        token_bytes = self.runtime.token_bytes
        for upd in updates:
            req, ids = upd.request, upd.new_token_ids
            state = self._text[req.request_id]
            text = feed(state, token_bytes(ids[0])) if len(ids) == 1 else \
                "".join(feed(state, token_bytes(t)) for t in ids)
            self.stats.generation_tokens_total += len(ids)
            if state.stopped:
                sched.finish(req.request_id, RequestStatus.FINISHED_STOPPED, FinishReason.STOP)
            self._emit(req, RequestOutput(req.request_id, text, tuple(ids)))
        # metrics hook: inter-token latency, one call per step
        self.metrics.on_step_tokens([(u.request, len(u.new_token_ids)) for u in updates])

    def _run_ops(self, ops: list[O.Op]) -> None:
        rt, sched = self.runtime, self.scheduler
        for op in ops:
            if isinstance(op, O.Open):
                try:
                    rt.open(op.seq_id, op.sampling, op.replay)
                except Exception as e:  # this request's sampler only: the others go on
                    log.exception("could not set up sampling", extra={"request_id": op.request_id})
                    req = sched.get(op.request_id)
                    if req is not None:
                        req.error_kind = ErrorKind.INTERNAL
                        sched.finish(op.request_id, RequestStatus.FINISHED_ERROR, FinishReason.ERROR,
                                     f"sampler set-up failed: {type(e).__name__}")
            elif isinstance(op, O.Release):
                rt.release(op.seq_id)
            elif isinstance(op, O.Copy):
                rt.copy_prefix(op.src_seq, op.dst_seq, op.num_tokens)
                self._copies_pending = True
            elif isinstance(op, O.Restore):
                if self._copies_pending:  # the destination may be a pending copy's source
                    rt.flush_copies(op.dst_seq)
                    self._copies_pending = False
                t0 = time.perf_counter()
                rt.restore(op.dst_seq, op.data)
                rt.truncate(op.dst_seq, op.num_tokens)
                sched.cost.observe_restore(len(op.data), time.perf_counter() - t0)
                sched.cache.stats.restores += 1
            elif isinstance(op, O.Save):
                sched.cache.demote(op.namespace, op.node, self._timed_save(op.seq_id))
                rt.release(op.seq_id)
            elif isinstance(op, O.SaveRequest):
                req = sched.get(op.request_id)
                if req is not None:
                    req.saved_state = self._timed_save(op.seq_id)

    def _timed_save(self, seq_id: int) -> bytes:
        t0 = time.perf_counter()
        data = self.runtime.save(seq_id)
        self.scheduler.cost.observe_save(len(data), time.perf_counter() - t0)
        return data

    def _collect_finished(self) -> None:
        done, ops = self.scheduler.take_finished()
        if done and self._held:  # a request's last tokens go out before its final output
            self._flush_held({r.request_id for r in done})
        self._run_ops(ops)
        for req in done:
            if req.status == RequestStatus.FINISHED_ERROR and req.error_kind is None:
                req.error_kind = ErrorKind.INTERNAL
            self.stats.requests_finished_total += 1
            self._emit_final(req)

    def _emit_final(self, req: Request) -> None:
        self.metrics.on_request_finished(req)  # metrics hook
        log.info("request %s: %s, %d prompt (%d cached) + %d output tokens, %.3f s",
                 req.status.name.lower(), req.finish_reason.value if req.finish_reason else "-",
                 req.num_prompt_tokens, req.num_cached_tokens, len(req.output_ids),
                 (req.finish_time or time.monotonic()) - req.arrival_time,
                 extra={"request_id": req.request_id, "app_id": req.app_id})
        state = self._text.pop(req.request_id, None)
        tail = flush(state) if state is not None and req.status != RequestStatus.FINISHED_ABORTED else ""
        t_end = req.finish_time or time.monotonic()
        first = req.first_scheduled_time or t_end
        self._emit(req, RequestOutput(
            request_id=req.request_id, text=tail, token_ids=(), finished=True,
            finish_reason=req.finish_reason, error=req.error, error_kind=req.error_kind,
            num_prompt_tokens=req.num_prompt_tokens, num_output_tokens=len(req.output_ids),
            num_cached_tokens=req.num_cached_tokens,
            queue_seconds=first - req.arrival_time,
            ttft_seconds=(req.first_token_time - req.arrival_time) if req.first_token_time else 0.0,
            total_seconds=t_end - req.arrival_time,
            argmax_ids=tuple(req.argmax_ids), retry_after=req.retry_after,
        ))

    def _emit(self, req: Request, out: RequestOutput) -> None:
        target = self._sinks.get(req.request_id)
        if target is None:
            return
        loop, sink = target
        self._pending.setdefault(loop, []).append((sink, out))
        if out.finished:
            del self._sinks[req.request_id]

    def _dispatch(self) -> None:
        for loop, items in self._pending.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that event loop is closed: nobody is listening
                pass
        self._pending = {}


def _deliver(items: list[tuple[asyncio.Queue, RequestOutput]]) -> None:
    for sink, out in items:
        sink.put_nowait(out)
