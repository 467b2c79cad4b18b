"""Memory pressure without a daemon: level hysteresis, the PSI trigger format
and registration, fd sources through a fake wait (a regular file or FIFO
cannot raise POLLPRI), a FIFO through real poll(), systemd's protocol, the
cgroup memory.events parser and poller, the RSS budget, the level-to-action
plan, the calm period's backoff against a budget the full context cannot
fit, the scheduler's pressure operations, and moving a saved KV state
between contexts of different stream counts."""

from __future__ import annotations

import base64
import os
import select
import struct
from pathlib import Path

import pytest

from slmd.memory.levels import TRIM_LEVELS, Hysteresis, PressureLevel
from slmd.memory.reactor import MemoryReactor, plan_for
from slmd.memory.sources import (BudgetSource, CgroupSource, PollPriSource, Watcher, cgroup_dir, parse_memory_events,
                                 parse_psi, parse_trigger, psi_sources, systemd_source)
from slmd.request import Priority, Request, RequestStatus, SamplingParams
from slmd.runtime.kv_state import restream
from slmd.scheduler import ops as O
from slmd.scheduler.scheduler import Scheduler, SchedulerConfig

M, C, N = PressureLevel.MODERATE, PressureLevel.CRITICAL, PressureLevel.NONE


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# ---- levels -------------------------------------------------------------------

def test_level_rises_at_once_and_falls_only_after_the_calm_period():
    clock = Clock()
    h = Hysteresis(10.0, clock)
    assert h.report(M) == M
    assert h.report(C) == C
    clock.t += 5
    assert h.report(M) == C  # critical was 5 s ago: still critical
    clock.t += 6  # critical 11 s ago, moderate 6 s ago
    assert h.level() == M
    clock.t += 3.5  # moderate 9.5 s ago
    assert h.level() == M
    clock.t += 0.6
    assert h.level() == N
    assert h.seconds_to_change() is None


def test_level_clear_and_none_reports():
    clock = Clock()
    h = Hysteresis(10.0, clock)
    h.report(C)
    assert h.report(N) == C  # a source saying "nothing" does not end the calm period early
    assert h.clear() == N
    assert h.level() == N


def test_trim_levels_map_like_android():
    assert TRIM_LEVELS["running_moderate"] == M and TRIM_LEVELS["background"] == M
    assert TRIM_LEVELS["running_critical"] == C and TRIM_LEVELS["complete"] == C
    assert TRIM_LEVELS["none"] == N


def test_plan_grades():
    none, mod, crit = plan_for(N, 8), plan_for(M, 8), plan_for(C, 8)
    assert (none.max_running, none.shed_background, none.clear_host, none.unload_when_idle) == (8, False, False, False)
    assert (mod.max_running, mod.shed_background, mod.clear_host, mod.evict_device) == (4, True, True, True)
    assert not mod.unload_when_idle
    assert (crit.max_running, crit.unload_when_idle) == (1, True)
    assert plan_for(M, 1).max_running == 1


# ---- PSI ----------------------------------------------------------------------

def test_parse_trigger():
    assert parse_trigger("some 150000 1000000") == ("some", 150000, 1000000)
    assert parse_trigger("full 100000 2000000") == ("full", 100000, 2000000)
    for bad in ("some 150000", "avg 1 1000000", "some 150000 100000", "some 0 1000000", "full 3000000 2000000",
                "some 1 20000000"):
        with pytest.raises(ValueError):
            parse_trigger(bad)


def test_parse_psi_file():
    text = ("some avg10=1.50 avg60=0.20 avg300=0.00 total=123456\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=42\n")
    psi = parse_psi(text)
    assert psi["some"]["avg10"] == 1.5 and psi["full"]["total"] == 42


def test_psi_registration_writes_the_trigger(tmp_path: Path):
    """A trigger is registered by writing it (NUL-terminated) to the pressure
    file opened O_RDWR|O_NONBLOCK; a regular file stands in for the kernel's."""
    f = tmp_path / "memory.pressure"
    f.write_text("")
    srcs = psi_sources("some 150000 2000000", "full 100000 2000000", f)
    try:
        assert [s.level for s in srcs] == [M, C]
        assert all(s.fileno() is not None and s.events() == select.POLLPRI for s in srcs)
    finally:
        for s in srcs:
            s.close()
    assert f.read_bytes() == b"full 100000 2000000\0"  # each fd wrote its own trigger at offset 0


def test_psi_source_absent_is_skipped(tmp_path: Path):
    assert psi_sources("some 150000 2000000", "", tmp_path / "missing") == []


def test_watcher_reports_pollpri_through_an_injected_wait(tmp_path: Path):
    f = tmp_path / "memory.pressure"
    f.write_text("")
    src = PollPriSource("psi-critical", f, C, b"full 1 1000000\0").open()
    fd = src.fileno()
    seen, ticks = [], []
    events = [[(fd, select.POLLPRI)], [], [(fd, select.POLLERR)]]

    def wait(fds: dict[int, int], timeout: float):
        assert fds[fd] & select.POLLPRI
        return events.pop(0)

    w = Watcher([src], lambda level, name: seen.append((level, name)), tick=lambda: ticks.append(1), wait=wait)
    w.run_once(0)
    assert seen == [(C, "psi-critical")]
    w.run_once(0)
    assert seen == [(C, "psi-critical")]  # no event, no report
    w.run_once(0)  # the file went away: the source closes, nothing reported
    assert src.fileno() is None and len(seen) == 1 and len(ticks) == 3
    w.stop()


def test_fifo_source_through_real_poll(tmp_path: Path):
    """systemd may hand a FIFO: anything written to it is one event (POLLIN)."""
    fifo = tmp_path / "pressure.fifo"
    os.mkfifo(fifo)
    src = PollPriSource("systemd", fifo, M).open()
    seen = []
    w = Watcher([src], lambda level, name: seen.append(level))
    w.run_once(0)
    assert seen == []
    wfd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    os.write(wfd, b"x")
    w.run_once(1.0)
    assert seen == [M]
    w.run_once(0)  # the byte was drained: no second event
    assert seen == [M]
    os.close(wfd)
    w.stop()


def test_systemd_protocol(tmp_path: Path):
    f = tmp_path / "memory.pressure"
    f.write_text("")
    trig = b"some 200000 2000000\0"
    src = systemd_source({"MEMORY_PRESSURE_WATCH": str(f),
                          "MEMORY_PRESSURE_WRITE": base64.b64encode(trig).decode()})
    assert src is not None and src.level == M
    src.close()
    assert f.read_bytes() == trig
    assert systemd_source({"MEMORY_PRESSURE_WATCH": "/dev/null"}) is None
    assert systemd_source({}) is None


# ---- cgroup and budget -----------------------------------------------------------

def test_parse_memory_events():
    ev = parse_memory_events("low 0\nhigh 12\nmax 3\noom 0\noom_kill 0\n")
    assert ev == {"low": 0, "high": 12, "max": 3, "oom": 0, "oom_kill": 0}


def _events(d: Path, high=0, max_=0, oom=0) -> None:
    (d / "memory.events").write_text(f"low 0\nhigh {high}\nmax {max_}\noom {oom}\noom_kill 0\n")


def test_cgroup_source_counts_new_events_and_usage(tmp_path: Path):
    _events(tmp_path, high=5)  # events before slmd started do not count
    src = CgroupSource(tmp_path)
    assert src.check() is None
    _events(tmp_path, high=6)
    assert src.check() == M
    assert src.check() is None
    _events(tmp_path, high=6, max_=1)
    assert src.check() == C
    (tmp_path / "memory.high").write_text("1000\n")
    (tmp_path / "memory.current").write_text("900\n")
    assert src.check() == M
    (tmp_path / "memory.current").write_text("990\n")
    assert src.check() == C
    (tmp_path / "memory.high").write_text("max\n")  # no limit: usage alone says nothing
    assert src.check() is None


def test_cgroup_dir_from_proc(tmp_path: Path):
    (tmp_path / "system.slice" / "slmd.service").mkdir(parents=True)
    pc = tmp_path / "cgroup"
    pc.write_text("0::/system.slice/slmd.service\n")
    assert cgroup_dir(str(pc), tmp_path) == tmp_path / "system.slice" / "slmd.service"
    pc.write_text("1:name=systemd:/x\n")
    assert cgroup_dir(str(pc), tmp_path) is None


def test_budget_source():
    used = [100]
    src = BudgetSource(1000, rss=lambda: used[0])
    assert src.check() is None
    used[0] = 860
    assert src.check() == M
    used[0] = 1000
    assert src.check() == C


def test_a_relapsing_level_backs_off_its_calm_period():
    clock = Clock()
    h = Hysteresis(10.0, clock, max_calm_seconds=35.0)
    h.report(C)
    clock.t += 10.5
    assert h.level() == N
    assert h.report(C) == C and h.calm_of(C) == 20  # back within one calm period of falling
    clock.t += 20.5
    assert h.level() == N
    h.report(C)
    assert h.calm_of(C) == 35  # capped
    clock.t += 35 + 36  # away longer than its calm period: forgiven
    h.report(C)
    assert h.calm_of(C) == 10
    h.report(M)
    assert h.calm_of(M) == 10  # per level


class _BudgetDaemon:
    """The engine as the RSS budget sees it: the full context (1000 MiB) over a
    600 MiB budget at any level below critical, a one-stream context (300 MiB)
    under critical."""

    def __init__(self) -> None:
        self.level = N
        self.reloads = 0  # back to the full context

    def set_pressure(self, level: PressureLevel) -> None:
        if level < C <= self.level:
            self.reloads += 1
        self.level = level

    def rss(self) -> int:
        return (300 if self.level == C else 1000) << 20


def _run_budget(max_calm: float, seconds: int) -> _BudgetDaemon:
    clock, eng = Clock(), _BudgetDaemon()
    r = MemoryReactor(eng, 30.0, clock=clock, max_calm_seconds=max_calm)

    def wait(fds, timeout):  # a poll that lets the scripted clock run
        clock.t += timeout
        return []

    w = Watcher([BudgetSource(600 << 20, rss=eng.rss)], r.signal, interval=1.0, tick=r.tick, wait=wait)
    try:
        for _ in range(seconds):
            w.run_once(1.0)
    finally:
        w.stop()
    return eng


def test_budget_below_the_full_context_settles_instead_of_oscillating():
    """unload -> calm -> reload -> over budget -> ... : without backoff a
    reload every calm period (31 s); with it, at most one per max_calm."""
    hour = 3600
    assert _run_budget(30.0, hour).reloads >= 100  # the oscillation (max_calm == calm: no backoff)
    eng = _run_budget(600.0, hour)
    assert eng.reloads <= 9, eng.reloads  # falls at ~30, 91, 212, 453, 934 s, then every ~600 s


# ---- reactor --------------------------------------------------------------------

class _Recorder:
    """Stands in for the engine's inbox: the reactor only calls set_pressure."""

    def __init__(self) -> None:
        self.levels: list[PressureLevel] = []

    def set_pressure(self, level: PressureLevel) -> None:
        self.levels.append(level)


def test_reactor_applies_changes_only_and_decays():
    clock, eng = Clock(), _Recorder()
    r = MemoryReactor(eng, 5.0, clock=clock)
    assert r.signal(M, "psi") == M
    assert r.signal(M, "psi") == M  # same level: nothing new to apply
    assert r.signal_trim("complete") == C
    assert eng.levels == [M, C]
    clock.t += 6
    r.tick()
    assert eng.levels == [M, C, N]
    r.signal(C, "cgroup")
    r.signal_trim("none")  # an integrator ends it at once
    assert eng.levels == [M, C, N, C, N]


# ---- scheduler operations ------------------------------------------------------------

def _req(i: int, prio: Priority) -> Request:
    return Request(f"r{i}", list(range(1, 40)), SamplingParams(max_tokens=8), priority=prio)


def test_set_max_running_pauses_the_lowest_classes_first():
    s = Scheduler(SchedulerConfig(num_sequences=8, max_running=4), lambda t: False)
    reqs = [_req(0, Priority.BACKGROUND), _req(1, Priority.INTERACTIVE), _req(2, Priority.NORMAL),
            _req(3, Priority.BACKGROUND)]
    for r in reqs:
        s.add(r)
    s.schedule()
    assert len(s.running) == 4
    ops = s.set_max_running(1)
    assert ops == []  # paused with their KV in place: nothing to save or free
    assert [r.request_id for r in s.running] == ["r1"]
    assert all(r.status == RequestStatus.PREEMPTED and r.seq_id is not None for r in reqs if r.request_id != "r1")
    assert s.set_max_running(100) == [] and s.max_running == 4  # never above the configuration


def test_resize_lays_the_streams_out_again():
    full = SchedulerConfig(num_sequences=8, max_running=4)
    s = Scheduler(full, lambda t: False)
    s.resize(1, full)
    assert (s.cfg.num_sequences, s.cfg.max_running, s.max_running) == (1, 1, 1)
    r = _req(0, Priority.NORMAL)
    s.add(r)
    s.schedule()
    assert r.seq_id == 0
    assert s.set_max_running(4) == [] and s.max_running == 1  # capped by the small context
    s.finish("r0", RequestStatus.FINISHED_LENGTH, None)
    s.take_finished()
    s.resize(8, full)
    assert s.set_max_running(4) == [] and (s.cfg.num_sequences, s.max_running) == (8, 4)


def test_release_streams_frees_every_stream_for_a_smaller_context():
    full = SchedulerConfig(num_sequences=8, max_running=4, kv_bytes_per_token=1e9)  # recompute beats saving
    s = Scheduler(full, lambda t: False)
    reqs = [_req(0, Priority.BACKGROUND), _req(1, Priority.INTERACTIVE), _req(2, Priority.NORMAL),
            _req(3, Priority.BACKGROUND)]
    reqs[2].deterministic = True  # exact resume: always saved
    for r in reqs:
        s.add(r)
    s.schedule()
    for r in reqs:
        r.num_computed_tokens = 20
    s.set_max_running(2)  # two paused with their KV in place
    ops = s.release_streams()
    assert not s.running and all(r.seq_id is None and r.status == RequestStatus.PREEMPTED for r in reqs)
    assert [o.request_id for o in ops if isinstance(o, O.SaveRequest)] == ["r2"]
    assert sorted(o.seq_id for o in ops if isinstance(o, O.Release)) == [0, 1, 2, 3]
    assert all(r.num_computed_tokens == (20 if r.deterministic else 0) for r in reqs)
    assert s.waiting.peek().request_id == "r1"  # the highest class resumes first
    s.resize(1, full)  # allowed now: no stream is held
    assert s.max_running == 1


def _state(n_streams: int, stream: int, cells: bytes, *, seq: int = 3) -> bytes:
    out = struct.pack("<Ii", 0xAF143CD8, seq) + struct.pack("<I", n_streams)
    for i in range(n_streams):
        out += cells if i == stream else struct.pack("<I", 0)
    return out


def test_restream_moves_a_saved_sequence_between_stream_counts():
    cells = struct.pack("<I", 40) + bytes(range(1, 200)) + bytes(8)  # its own data may end in zeros
    eight = _state(8, 3, cells)
    assert restream(eight, 1) == _state(1, 0, cells)
    assert restream(eight, 2) == _state(2, 0, cells)
    assert restream(restream(eight, 1), 8) == _state(8, 0, cells)
    assert restream(eight, 8) is eight
    assert restream(_state(8, 0, struct.pack("<I", 0)), 1) == _state(1, 0, struct.pack("<I", 0))  # empty
    broken = eight[:-4] + b"\x01\0\0\0"  # not a lone cell stream: left for llama.cpp to refuse
    assert restream(broken, 1) is broken


def test_reactor_watches_configured_sources_in_its_thread(tmp_path: Path):
    """The real watcher thread: a cgroup directory and a 1-byte RSS budget
    (always exceeded) report; the engine sees critical within a poll or two."""
    import time

    from slmd.config import MemoryConfig

    _events(tmp_path)
    eng = _Recorder()
    r = MemoryReactor(eng, 30.0)
    r.start(MemoryConfig(psi=False, cgroup_dir=tmp_path, budget_bytes=1, poll_seconds=0.05), environ={})
    try:
        assert [s.name for s in r.watcher.sources] == ["cgroup", "budget"]
        deadline = time.monotonic() + 5
        while C not in eng.levels and time.monotonic() < deadline:
            time.sleep(0.02)
        assert eng.levels == [C]
    finally:
        r.stop()
