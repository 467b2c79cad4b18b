"""How many CPU threads llama.cpp computes with, adapted to contention.

llama.cpp's CPU threads meet at a barrier after every graph node (about a
thousand per decode). They spin there briefly (GOMP_SPINCOUNT): on idle cores
that is what makes two threads pay (2-core VM, one sequence: 180 tokens/s
spinning, 34 with threads that sleep at every barrier). When another program
keeps a core busy, a spinning thread that lost its core stalls the others at
every barrier: 14 tokens/s with two threads, 113 with one.

The signal is the kernel's own account of the engine thread (the one that runs
llama_decode and computes as thread 0): the time it spent runnable but waiting
for a core (/proc/thread-self/schedstat). Measured on that VM: 3-4% of the
wall time with idle cores, 45% with a busy program beside it. Above `high`
the governor takes a thread away; after `hold_seconds` below `low` it tries one
more, and a try that finds contention again doubles the hold (up to
`max_hold_seconds`), so a lasting neighbour costs one short probe a minute."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class GovernorConfig:
    max_threads: int
    window_seconds: float = 0.5  # one reading of the run-queue wait
    busy_fraction: float = 0.5  # a window counts when decoding took at least this share of it
    high: float = 0.15  # waiting for a core more than this share of the time: one thread fewer
    low: float = 0.08  # below this, after the hold: try one thread more
    hold_seconds: float = 5.0
    max_hold_seconds: float = 80.0


def read_run_delay(tid: int) -> float | None:
    """Seconds thread `tid` of this process has spent runnable but not running
    (schedstat's second field); None where the kernel does not keep it."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


class ThreadGovernor:
    """Call `observe(decode_seconds)` after each decode on the thread that
    decodes; it returns a new thread count when one should be applied."""

    def __init__(self, cfg: GovernorConfig, *, clock: Callable[[], float] = time.monotonic,
                 run_delay: Callable[[int], float | None] = read_run_delay,
                 thread_id: Callable[[], int] = threading.get_native_id) -> None:
        self.cfg = cfg
        self.threads = cfg.max_threads
        self.num_changes = 0
        self._clock, self._run_delay, self._thread_id = clock, run_delay, thread_id
        self._tid: int | None = None
        self._t0 = 0.0
        self._delay0: float | None = None
        self._busy = 0.0
        self._hold = cfg.hold_seconds
        self._calm_since: float | None = None  # below `low` at fewer threads since then
        self._probing = False  # the last change added a thread
        self.enabled = cfg.max_threads > 1 and run_delay(thread_id()) is not None

    def observe(self, decode_seconds: float) -> int | None:
        if not self.enabled:
            return None
        now = self._clock()
        tid = self._thread_id()
        if tid != self._tid:  # first call, or another thread decodes now (a reloaded model)
            self._tid = tid
            self._restart(now)
            return None
        self._busy += decode_seconds
        span = now - self._t0
        if span < self.cfg.window_seconds:
            return None
        delay = self._run_delay(tid)
        busy, delay0 = self._busy, self._delay0
        self._restart(now, delay)
        if delay is None or delay0 is None or busy < self.cfg.busy_fraction * span:
            self._calm_since = None  # an idle stretch says nothing about contention
            return None
        return self._decide(now, (delay - delay0) / span)

    def _restart(self, now: float, delay: float | None = None) -> None:
        self._t0, self._busy = now, 0.0
        self._delay0 = delay if delay is not None else self._run_delay(self._tid or 0)

    def _decide(self, now: float, waiting: float) -> int | None:
        cfg = self.cfg
        if waiting > cfg.high and self.threads > 1:
            # a try that met contention at once waits longer before the next
            self._hold = min(cfg.max_hold_seconds, self._hold * 2) if self._probing else cfg.hold_seconds
            self._probing = False
            self._calm_since = now
            return self._set(self.threads - 1)
        if self._probing:  # the added thread found its core: the next try comes soon
            self._probing = False
            self._hold = cfg.hold_seconds
        if self.threads >= cfg.max_threads or waiting >= cfg.low:
            self._calm_since = None if waiting >= cfg.low else self._calm_since
            return None
        if self._calm_since is None:
            self._calm_since = now
        if now - self._calm_since < self._hold:
            return None
        self._probing = True
        self._calm_since = None
        return self._set(self.threads + 1)

    def _set(self, n: int) -> int:
        self.threads = n
        self.num_changes += 1
        return n
