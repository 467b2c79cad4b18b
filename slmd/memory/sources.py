"""Where memory pressure comes from. Each source turns one OS signal into a
`PressureLevel`:

- PSI triggers (`/proc/pressure/memory` or the service cgroup's
  `memory.pressure`): the trigger string is written to the file opened
  O_RDWR|O_NONBLOCK and the kernel raises POLLPRI on that fd each time the
  stall threshold is crossed within the window.
- systemd's memory-pressure protocol: `MEMORY_PRESSURE_WATCH` names the file
  to watch and `MEMORY_PRESSURE_WRITE` (base64) what to write to it first.
- cgroup v2 `memory.events` counters (high, max, oom) and `memory.current`
  against `memory.high`/`memory.max`, polled.
- A budget for slmd itself: its RSS (/proc/self/statm) against
  `memory.budget_bytes`, polled.

A `Watcher` thread polls every fd-based source at once and checks the polled
ones between waits. The wait is injectable: a regular or FIFO file cannot
raise POLLPRI, so tests drive fd sources through a fake wait."""

from __future__ import annotations

import base64
import logging
import os
import select
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from slmd.memory.levels import PressureLevel

log = logging.getLogger(__name__)

Report = Callable[[PressureLevel, str], None]  # (level, source name)
# (fd -> poll event mask, timeout seconds) -> [(fd, revents)]
Wait = Callable[[dict[int, int], float], list[tuple[int, int]]]

CGROUP_ROOT = Path("/sys/fs/cgroup")


class Source(Protocol):
    name: str

    def fileno(self) -> int | None:
        """An fd to poll (POLLPRI/POLLIN), or None for a source that is polled by `check`."""

    def on_ready(self, revents: int) -> PressureLevel | None:
        """Called when the fd is ready; the level it signals."""

    def check(self) -> PressureLevel | None:
        """Called every poll interval (polled sources)."""

    def close(self) -> None: ...


# ---- PSI ------------------------------------------------------------------

def parse_trigger(trigger: str) -> tuple[str, int, int]:
    """`"some 150000 2000000"` -> ("some", stall µs, window µs); ValueError names the problem."""
    parts = trigger.split()
    if len(parts) != 3 or parts[0] not in ("some", "full"):
        raise ValueError(f"PSI trigger {trigger!r}: expected '<some|full> <stall µs> <window µs>'")
    stall, window = int(parts[1]), int(parts[2])
    # the kernel accepts windows of 500 ms .. 10 s, and stalls up to the window
    if not 500_000 <= window <= 10_000_000 or not 0 < stall <= window:
        raise ValueError(f"PSI trigger {trigger!r}: window must be 500000..10000000 µs and 0 < stall <= window")
    return parts[0], stall, window


def parse_psi(text: str) -> dict[str, dict[str, float]]:
    """The contents of a pressure file: {"some": {"avg10": .., "total": ..}, "full": {..}}."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        kind, *fields = line.split()
        out[kind] = {k: float(v) for k, v in (f.split("=", 1) for f in fields)}
    return out


def cgroup_dir(proc_cgroup: str = "/proc/self/cgroup", root: Path = CGROUP_ROOT) -> Path | None:
    """This process's cgroup v2 directory (the `0::/path` line), if mounted."""
    try:
        for line in Path(proc_cgroup).read_text().splitlines():
            if line.startswith("0::"):
                d = root / line[3:].lstrip("/")
                return d if d.is_dir() else None
    except OSError:
        pass
    return None


@dataclass
class PollPriSource:
    """A pressure file with a trigger registered: POLLPRI means the threshold
    was crossed. Also serves systemd's MEMORY_PRESSURE_WATCH when it names a
    PSI file; a FIFO there signals with POLLIN (anything written is an event)."""

    name: str
    path: Path
    level: PressureLevel
    payload: bytes = b""  # the trigger to write; empty: watch only (a FIFO)
    _fd: int | None = field(default=None, repr=False)

    def open(self) -> "PollPriSource":
        fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
        try:
            if self.payload:
                os.write(fd, self.payload)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        return self

    @property
    def is_fifo(self) -> bool:
        return self._fd is not None and stat.S_ISFIFO(os.fstat(self._fd).st_mode)

    def fileno(self) -> int | None:
        return self._fd

    def events(self) -> int:
        return select.POLLIN if self.is_fifo else select.POLLPRI

    def on_ready(self, revents: int) -> PressureLevel | None:
        if revents & select.POLLIN and self._fd is not None:  # drain a FIFO's bytes
            try:
                os.read(self._fd, 4096)
            except (BlockingIOError, OSError):
                pass
        if revents & (select.POLLERR | select.POLLNVAL):
            log.warning("memory pressure source %s: %s is gone; watching it stopped", self.name, self.path)
            self.close()
            return None
        if revents & (select.POLLPRI | select.POLLIN):
            return self.level
        return None

    def check(self) -> PressureLevel | None:
        return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def psi_sources(moderate: str, critical: str, path: Path | None = None) -> list[PollPriSource]:
    """PSI triggers on the service cgroup's memory.pressure (system-wide
    /proc/pressure/memory when there is no cgroup v2). One fd per trigger."""
    if path is None:
        cg = cgroup_dir()
        path = cg / "memory.pressure" if cg is not None and (cg / "memory.pressure").exists() \
            else Path("/proc/pressure/memory")
    out = []
    for level, trig in ((PressureLevel.MODERATE, moderate), (PressureLevel.CRITICAL, critical)):
        if not trig:
            continue
        parse_trigger(trig)
        src = PollPriSource(f"psi-{level.label}", path, level, trig.encode() + b"\0")
        try:
            out.append(src.open())
        except OSError as e:  # no PSI (kernel option off), read-only, or not allowed
            log.info("memory pressure: no PSI trigger on %s (%s)", path, e.strerror or e)
    return out


def systemd_source(environ: dict[str, str] | os._Environ) -> PollPriSource | None:
    """systemd's MEMORY_PRESSURE_WATCH/MEMORY_PRESSURE_WRITE (set for services
    with MemoryPressureWatch=). `/dev/null` means: do not watch."""
    watch = environ.get("MEMORY_PRESSURE_WATCH")
    if not watch or watch == "/dev/null":
        return None
    payload = base64.b64decode(environ.get("MEMORY_PRESSURE_WRITE", "")) if environ.get("MEMORY_PRESSURE_WRITE") else b""
    src = PollPriSource("systemd", Path(watch), PressureLevel.MODERATE, payload)
    try:
        return src.open()
    except OSError as e:
        log.warning("memory pressure: cannot watch MEMORY_PRESSURE_WATCH=%s (%s)", watch, e.strerror or e)
        return None


# ---- cgroup v2 counters -----------------------------------------------------

def parse_memory_events(text: str) -> dict[str, int]:
    """`memory.events`: "low 0\\nhigh 12\\nmax 0\\noom 0\\noom_kill 0\\n" -> dict."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _read_limit(path: Path) -> int | None:
    try:
        v = path.read_text().strip()
    except OSError:
        return None
    return None if v == "max" or not v.isdigit() else int(v)


@dataclass
class CgroupSource:
    """Polls a cgroup v2 directory. A new `high` event (the cgroup was
    throttled) is moderate; new `max`/`oom` events are critical. Usage near
    `memory.high` (or `memory.max`) counts too, before the kernel throttles."""

    dir: Path
    moderate_ratio: float = 0.85
    critical_ratio: float = 0.95
    name: str = "cgroup"
    _last: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._last = self._events()

    def _events(self) -> dict[str, int]:
        try:
            return parse_memory_events((self.dir / "memory.events").read_text())
        except OSError:
            return {}

    def fileno(self) -> int | None:
        return None

    def on_ready(self, revents: int) -> PressureLevel | None:
        return None

    def check(self) -> PressureLevel | None:
        ev = self._events()
        new = {k: v - self._last.get(k, 0) for k, v in ev.items()}
        self._last = ev
        level = PressureLevel.NONE
        if new.get("max", 0) > 0 or new.get("oom", 0) > 0 or new.get("oom_kill", 0) > 0:
            level = PressureLevel.CRITICAL
        elif new.get("high", 0) > 0:
            level = PressureLevel.MODERATE
        limit = _read_limit(self.dir / "memory.high") or _read_limit(self.dir / "memory.max")
        current = _read_limit(self.dir / "memory.current")
        if limit and current is not None:
            ratio = current / limit
            if ratio >= self.critical_ratio:
                level = max(level, PressureLevel.CRITICAL)
            elif ratio >= self.moderate_ratio:
                level = max(level, PressureLevel.MODERATE)
        return level or None

    def close(self) -> None:
        pass


# ---- slmd's own budget -------------------------------------------------------

def rss_bytes(statm: str = "/proc/self/statm") -> int:
    try:
        with open(statm) as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class BudgetSource:
    """slmd's RSS against `memory.budget_bytes`: above the budget is critical,
    above `moderate_ratio` of it moderate."""

    budget_bytes: int
    moderate_ratio: float = 0.85
    rss: Callable[[], int] = rss_bytes
    name: str = "budget"

    def fileno(self) -> int | None:
        return None

    def on_ready(self, revents: int) -> PressureLevel | None:
        return None

    def check(self) -> PressureLevel | None:
        used = self.rss()
        if used >= self.budget_bytes:
            return PressureLevel.CRITICAL
        if used >= self.moderate_ratio * self.budget_bytes:
            return PressureLevel.MODERATE
        return None

    def close(self) -> None:
        pass


# ---- the watcher thread -------------------------------------------------------

def poll_wait(fds: dict[int, int], timeout: float) -> list[tuple[int, int]]:
    p = select.poll()
    for fd, mask in fds.items():
        p.register(fd, mask)
    return p.poll(timeout * 1000)


class Watcher:
    """One thread: waits on every fd source, checks the polled sources each
    `interval`, reports what it sees, and calls `tick` so the level can
    decay even when nothing reports."""

    def __init__(self, sources: list, report: Report, *, interval: float = 1.0,
                 tick: Callable[[], None] = lambda: None, wait: Wait = poll_wait) -> None:
        self.sources = sources
        self.report = report
        self.interval = interval
        self.tick = tick
        self.wait = wait
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slmd-memory", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join(5)
        for s in self.sources:
            s.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def run_once(self, timeout: float) -> None:
        by_fd = {s.fileno(): s for s in self.sources if s.fileno() is not None}
        fds = {fd: s.events() | select.POLLERR for fd, s in by_fd.items()}
        fds[self._wake_r] = select.POLLIN
        for fd, revents in self.wait(fds, timeout):
            src = by_fd.get(fd)
            if src is not None:
                level = src.on_ready(revents)
                if level:
                    self.report(level, src.name)
        for src in self.sources:
            if src.fileno() is None:
                level = src.check()
                if level:
                    self.report(level, src.name)
        self.tick()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.run_once(self.interval)
            except Exception:  # a flaky source must not end pressure handling
                log.exception("memory pressure watcher")
                self._stopping.wait(self.interval)
