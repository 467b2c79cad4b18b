"""The CPU thread governor (slmd/runtime/threads.py) on a scripted clock and
run-queue account, and its signal on this machine's real schedstat."""

from __future__ import annotations

import threading
import time

import pytest

from slmd.runtime.threads import GovernorConfig, ThreadGovernor, read_run_delay


class Machine:
    """A scripted engine thread: each decode of `step` seconds waits for a
    core `waiting` of its wall time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.delay = 0.0
        self.waiting = 0.0

    def decode(self, gov: ThreadGovernor, step: float = 0.01) -> int | None:
        self.now += step
        self.delay += step * self.waiting
        return gov.observe(step)

    def run(self, gov: ThreadGovernor, seconds: float) -> list[int]:
        changes = []
        for _ in range(round(seconds / 0.01)):
            n = self.decode(gov)
            if n is not None:
                changes.append(n)
        return changes


def governor(m: Machine, max_threads: int = 4, **kw) -> ThreadGovernor:
    return ThreadGovernor(GovernorConfig(max_threads=max_threads, **kw), clock=lambda: m.now,
                          run_delay=lambda tid: m.delay, thread_id=lambda: 1)


def down_to_one_thread() -> tuple[Machine, ThreadGovernor]:
    """Two threads, then a busy neighbour: one window later, one thread."""
    m = Machine()
    gov = governor(m, max_threads=2)
    m.waiting = 0.45
    m.run(gov, 0.6)
    assert gov.threads == 1
    return m, gov


def test_free_cores_keep_every_thread():
    m = Machine()
    m.waiting = 0.04  # the daemon's own event loop, measured: 3-4%
    gov = governor(m)
    assert m.run(gov, 60) == []
    assert gov.threads == 4


def test_contention_takes_threads_away_one_window_at_a_time():
    m = Machine()
    gov = governor(m)
    m.waiting = 0.45  # a busy program beside the daemon, measured: 45%
    assert m.run(gov, 1.6) == [3, 2, 1]
    assert m.run(gov, 30) == []  # still waiting for a core at one thread: no try
    assert gov.threads == 1


def test_a_failed_try_doubles_the_wait_before_the_next():
    m, gov = down_to_one_thread()
    tries = []
    for _ in range(20_000):  # 200 s; contention whenever two threads compute
        m.waiting = 0.45 if gov.threads == 2 else 0.02
        if m.decode(gov) == 2:
            tries.append(m.now)
    gaps = [round(b - a) for a, b in zip(tries, tries[1:])]
    assert gaps[:4] == [11, 21, 41, 81]  # hold 5 -> 10 -> 20 -> 40 -> 80 s, plus the window of the try
    assert max(gaps) <= 81  # capped at max_hold_seconds


def test_threads_come_back_when_the_cores_are_free():
    m, gov = down_to_one_thread()
    m.waiting = 0.02
    assert m.run(gov, 6) == [2]
    assert m.run(gov, 30) == []


def test_idle_stretches_say_nothing():
    m, gov = down_to_one_thread()
    m.waiting = 0.0
    for _ in range(50):  # a decode now and then (mostly idle): windows do not count, no try
        m.now += 1.0
        assert m.decode(gov) is None
    assert gov.threads == 1


def test_middling_wait_neither_adds_nor_removes():
    m, gov = down_to_one_thread()
    m.waiting = 0.10  # between low and high
    assert m.run(gov, 60) == []


def test_one_thread_or_no_schedstat_disables_it():
    m = Machine()
    assert not governor(m, max_threads=1).enabled
    gov = ThreadGovernor(GovernorConfig(max_threads=4), run_delay=lambda tid: None)
    assert not gov.enabled
    assert gov.observe(1.0) is None


def test_the_signal_on_this_machine():
    """The real /proc/self/task/<tid>/schedstat: a thread that competes with
    busy threads for the cores accumulates run-queue wait; one alone does not."""
    tid = threading.get_native_id()
    if read_run_delay(tid) is None:
        pytest.skip("this kernel keeps no schedstat")

    def spin(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    import os
    from multiprocessing import Process

    d0, t0 = read_run_delay(tid), time.perf_counter()
    spin(0.3)
    alone = (read_run_delay(tid) - d0) / (time.perf_counter() - t0)
    hogs = [Process(target=spin, args=(2.0,)) for _ in range(2 * (os.cpu_count() or 1))]
    for p in hogs:
        p.start()
    try:
        time.sleep(0.1)
        d0, t0 = read_run_delay(tid), time.perf_counter()
        spin(0.5)
        crowded = (read_run_delay(tid) - d0) / (time.perf_counter() - t0)
    finally:
        for p in hogs:
            p.join()
    assert crowded > 0.3, f"run-queue wait among {len(hogs)} busy processes: {crowded:.2f} of the time"
    assert crowded > alone + 0.2, (alone, crowded)
