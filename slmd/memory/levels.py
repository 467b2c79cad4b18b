"""Pressure levels and their hysteresis. A level rises at once when a source
reports it and falls only after `calm_seconds` without a report at that level
or above: a burst of PSI events must not make the daemon unload, reload and
unload again."""

from __future__ import annotations

import enum
import threading
import time
from typing import Callable


class PressureLevel(enum.IntEnum):
    NONE = 0
    MODERATE = 1
    CRITICAL = 2

    @property
    def label(self) -> str:
        return self.name.lower()


class Hysteresis:
    """The effective level: the highest level reported within the last
    `calm_seconds`. Thread-safe (sources report from their own threads)."""

    def __init__(self, calm_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.calm_seconds = calm_seconds
        self._clock = clock
        self._last: dict[PressureLevel, float] = {}  # level -> time of its latest report
        self._lock = threading.Lock()

    def report(self, level: PressureLevel) -> PressureLevel:
        with self._lock:
            if level > PressureLevel.NONE:
                self._last[level] = self._clock()
            return self._level_locked()

    def clear(self) -> PressureLevel:
        """Pressure is over now (an integrator said so): no calm period."""
        with self._lock:
            self._last.clear()
            return PressureLevel.NONE

    def level(self) -> PressureLevel:
        with self._lock:
            return self._level_locked()

    def _level_locked(self) -> PressureLevel:
        now = self._clock()
        for level in (PressureLevel.CRITICAL, PressureLevel.MODERATE):
            t = self._last.get(level)
            if t is not None and now - t < self.calm_seconds:
                return level
        return PressureLevel.NONE

    def seconds_to_change(self) -> float | None:
        """When the effective level may next fall (None: it is NONE)."""
        with self._lock:
            lvl = self._level_locked()
            if lvl == PressureLevel.NONE:
                return None
            return max(0.0, self._last[lvl] + self.calm_seconds - self._clock())


# Android's ComponentCallbacks2.onTrimMemory levels, as an integrator forwards
# them (the Admin RPC's enum), graded onto ours.
TRIM_LEVELS: dict[str, PressureLevel] = {
    "none": PressureLevel.NONE,
    "running_moderate": PressureLevel.MODERATE,
    "background": PressureLevel.MODERATE,  # the host app went to the background: give back caches
    "running_critical": PressureLevel.CRITICAL,
    "complete": PressureLevel.CRITICAL,  # the host is about to be killed: give back everything
}
