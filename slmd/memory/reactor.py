"""The graded reaction: sources report levels, the hysteresis grades them,
and each change of the effective level is handed to the engine, which
applies the level's `Plan` on its own thread (core.Engine.set_pressure).

  NONE      full batch, caches kept, everything admitted.
  MODERATE  drop the host-tier cache, evict unlocked device cache holders,
            halve the batch, shed BACKGROUND work (RESOURCE_EXHAUSTED with
            RetryInfo: retry once the calm period has passed).
  CRITICAL  also run one sequence at a time (lower classes are paused with
            their KV in place and resume later), and unload the model as
            soon as nothing runs. The next request reloads it with a context
            of one KV stream (a fraction of the memory); once the pressure
            has passed, the idle engine reloads it at full size.

No accepted request is dropped: a paused request resumes, a shed one ends
with RESOURCE_EXHAUSTED and a retry delay.

Memory outside the engine (documents' derived state: retrieval indexes,
chunk embeddings, part summaries) is given back by listeners: callables
that the daemon registers with `add_listener`, called with each new level,
so this module needs nothing from the server."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from slmd.memory.levels import TRIM_LEVELS, Hysteresis, PressureLevel
from slmd.memory.sources import BudgetSource, CgroupSource, Watcher, cgroup_dir, psi_sources, systemd_source

if TYPE_CHECKING:
    from slmd.config import MemoryConfig
    from slmd.core import Engine
    from slmd.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    max_running: int
    shed_background: bool
    clear_host: bool
    evict_device: bool
    unload_when_idle: bool
    reload_streams: int | None  # KV streams of a context loaded now; None: as configured


def plan_for(level: PressureLevel, max_running: int) -> Plan:
    if level == PressureLevel.CRITICAL:
        return Plan(1, True, True, True, True, 1)
    if level == PressureLevel.MODERATE:
        return Plan(max(1, max_running // 2), True, True, True, False, None)
    return Plan(max_running, False, False, False, False, None)


class MemoryReactor:
    """Owns the hysteresis and the watcher thread; applies level changes to
    the engine. `signal` is also the entry point of the Admin RPC."""

    def __init__(self, engine: Engine, calm_seconds: float, metrics: Metrics | None = None,
                 clock: Callable[[], float] | None = None, max_calm_seconds: float | None = None) -> None:
        self.engine = engine
        self.metrics = metrics
        self.hysteresis = Hysteresis(calm_seconds, clock, max_calm_seconds) if clock \
            else Hysteresis(calm_seconds, max_calm_seconds=max_calm_seconds)
        self.level = PressureLevel.NONE  # the level last applied
        self.watcher: Watcher | None = None
        self._listeners: list[Callable[[PressureLevel], None]] = []
        self._lock = threading.Lock()

    def add_listener(self, listener: Callable[[PressureLevel], None]) -> None:
        """`listener(level)` on each change of the applied level, from the
        thread that reported it (the watcher's or the Admin RPC's): it must
        hand its work to its own thread and not block."""
        self._listeners.append(listener)

    def signal(self, level: PressureLevel, source: str) -> PressureLevel:
        """A source saw `level` (NONE from an integrator: the pressure is over)."""
        if level > PressureLevel.NONE and self.metrics is not None:
            self.metrics.on_memory_pressure(level.label)
        if level == PressureLevel.NONE and source == "admin":
            self.hysteresis.clear()
        else:
            self.hysteresis.report(level)
        if level > PressureLevel.NONE:
            log.info("memory pressure: %s from %s", level.label, source)
        return self._apply(self.hysteresis.level())

    def signal_trim(self, trim_level: str) -> PressureLevel:
        """An Android onTrimMemory-style level forwarded by an integrator."""
        return self.signal(TRIM_LEVELS[trim_level], "admin")

    def tick(self) -> None:
        """Let the level fall after the calm period (the watcher calls this)."""
        self._apply(self.hysteresis.level())

    def _apply(self, level: PressureLevel) -> PressureLevel:
        with self._lock:
            if level != self.level:
                log.info("memory pressure level %s -> %s", self.level.label, level.label)
                self.level = level
                self.engine.set_pressure(level)
                for listener in self._listeners:
                    try:
                        listener(level)
                    except Exception:  # one owner's failure must not stop the others' relief
                        log.exception("memory pressure listener")
        return level

    # ---- sources -------------------------------------------------------------

    def start(self, cfg: MemoryConfig, environ: dict[str, str] | os._Environ = os.environ) -> None:
        sources: list = []
        managed = systemd_source(environ) if cfg.systemd else None
        if managed is not None:
            sources.append(managed)
        if cfg.psi:  # systemd's trigger (moderate) already watches the file: add only the critical one
            sources += psi_sources("" if managed else cfg.psi_trigger, cfg.psi_critical_trigger, cfg.psi_path)
        if cfg.cgroup:
            d = cfg.cgroup_dir or cgroup_dir()
            if d is not None and (d / "memory.events").exists():
                sources.append(CgroupSource(d))
        if cfg.budget_bytes:
            sources.append(BudgetSource(cfg.budget_bytes))
        log.info("memory pressure sources: %s", ", ".join(s.name for s in sources) or "admin RPC only")
        self.watcher = Watcher(sources, self.signal, interval=cfg.poll_seconds, tick=self.tick)
        self.watcher.start()

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
