"""Who runs next. Each step gets one token budget: every running sequence's
next token first (higher classes first), then chunks of pending prompts
(chunked prefill), so a long prompt never stalls decoding for more than one
chunk. The scheduler knows tokens, priorities and sequence ids; it never calls
the runtime."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from slmd.request import FinishReason, Request, RequestStatus
from slmd.runtime.base import SeqWork, StepBatch, StepOutput
from slmd.scheduler.queue import WaitQueue


@dataclass(frozen=True)
class SchedulerConfig:
    num_sequences: int = 16
    step_token_budget: int = 512
    context_per_sequence: int = 2048
    max_waiting: int = 256


class QueueFull(Exception):
    pass


@dataclass
class ScheduledWork:
    request: Request
    num_tokens: int
    sample: bool


@dataclass
class SchedulerOutput:
    batch: StepBatch
    work: list[ScheduledWork]
    started: list[Request]  # got a sequence this step: the runtime must open it


@dataclass
class TokenUpdate:
    request: Request
    new_token_ids: list[int] = field(default_factory=list)


class Scheduler:
    def __init__(self, cfg: SchedulerConfig, is_eog: Callable[[int], bool]) -> None:
        self.cfg = cfg
        self.is_eog = is_eog
        self.waiting = WaitQueue()
        self.running: list[Request] = []
        self._free_seq_ids = list(range(cfg.num_sequences - 1, -1, -1))
        self._finished: list[Request] = []
        self._by_id: dict[str, Request] = {}

    # ---- requests in and out ----------------------------------------------

    def add(self, req: Request) -> None:
        if len(self.waiting) >= self.cfg.max_waiting:
            raise QueueFull(f"{len(self.waiting)} requests are waiting (engine.max_waiting={self.cfg.max_waiting})")
        self._by_id[req.request_id] = req
        self.waiting.push(req)

    def get(self, request_id: str) -> Request | None:
        return self._by_id.get(request_id)

    def finish(self, request_id: str, status: RequestStatus, reason: FinishReason, error: str | None = None) -> None:
        req = self._by_id.get(request_id)
        if req is None or req.is_finished:
            return
        if req.status == RequestStatus.WAITING:
            self.waiting.remove(req)
        elif req in self.running:
            self.running.remove(req)
        req.status, req.finish_reason, req.error = status, reason, error
        req.finish_time = time.monotonic()
        self._finished.append(req)

    def take_finished(self) -> list[Request]:
        """Finished requests since the last call; their sequence ids return to
        the pool (the caller must release them in the runtime first)."""
        done, self._finished = self._finished, []
        for req in done:
            self._by_id.pop(req.request_id, None)
            if req.seq_id is not None:
                self._free_seq_ids.append(req.seq_id)
        return done

    def expired(self, now: float) -> list[Request]:
        """Waiting or running requests whose deadline has passed."""
        return [r for r in (*self.waiting, *self.running) if r.deadline is not None and now >= r.deadline]

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
        budget = self.cfg.step_token_budget
        shared: list[SeqWork] = []
        solo: list[tuple[SeqWork, ...]] = []
        work: list[ScheduledWork] = []

        def put(req: Request, num: int, sample: bool) -> None:
            start = req.num_computed_tokens
            ids = req.all_ids[start : start + num]
            w = SeqWork(req.seq_id, ids, start, sample)
            (solo.append((w,)) if req.deterministic else shared.append(w))
            work.append(ScheduledWork(req, num, sample))

        # Running sequences by class: decodes cost one token each, prefills a chunk.
        for req in sorted(self.running, key=lambda r: -r.priority):
            if budget <= 0:
                break
            if req.is_prefilling:
                num = self._chunk(req, budget)
                if num == 0:
                    continue
                budget -= num
                put(req, num, req.num_computed_tokens + num == req.num_prompt_tokens)
            else:
                budget -= 1
                put(req, 1, True)

        # Admit waiting requests while sequences and budget last.
        started: list[Request] = []
        while budget > 0 and self._free_seq_ids and len(self.waiting):
            req = self.waiting.peek()
            num = self._chunk(req, budget)
            if num == 0:
                break
            self.waiting.pop()
            req.seq_id = self._free_seq_ids.pop()
            req.status = RequestStatus.RUNNING
            req.first_scheduled_time = req.first_scheduled_time or time.monotonic()
            self.running.append(req)
            started.append(req)
            budget -= num
            put(req, num, req.num_computed_tokens + num == req.num_prompt_tokens)

        groups = ((tuple(shared),) if shared else ()) + tuple(solo)
        return SchedulerOutput(StepBatch(groups), work, started)

    def _chunk(self, req: Request, budget: int) -> int:
        pending = req.num_pending_prompt_tokens
        if req.deterministic:
            # A fixed chunk size whatever else runs, so the numerics match a solo
            # run; it is a llama_decode of its own, so it may overdraw the budget.
            return min(pending, self.cfg.step_token_budget)
        return min(pending, budget)

    def update(self, out: SchedulerOutput, step: StepOutput) -> list[TokenUpdate]:
        now = time.monotonic()
        updates: list[TokenUpdate] = []
        for sw in out.work:
            req = sw.request
            if req.is_finished:
                continue
            if req.seq_id in step.failed:
                self.finish(req.request_id, RequestStatus.FINISHED_ERROR, FinishReason.ERROR, step.failed[req.seq_id])
                continue
            req.num_computed_tokens += sw.num_tokens
            if not sw.sample:
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
        return updates
