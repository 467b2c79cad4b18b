"""Pressure levels and their hysteresis. A level rises at once when a source
reports it and falls only after `calm_seconds` without a report at that level
or above: a burst of PSI events must not make the daemon unload, reload and
unload again.

The calm period backs off: a level that comes back within one calm period of
falling (a relapse: e.g. an RSS budget that the full context does not fit, so
the reload after the fall is over budget again) doubles that level's calm
period, up to `max_calm_seconds`; one that stays away that long resets it.
A source that flaps then costs one reload per long period, not one per
`calm_seconds`."""

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

    def __init__(self, calm_seconds: float, clock: Callable[[], float] = time.monotonic,
                 max_calm_seconds: float | None = None) -> None:
        self.calm_seconds = calm_seconds
        self.max_calm_seconds = max(calm_seconds, max_calm_seconds or calm_seconds)
        self._clock = clock
        self._last: dict[PressureLevel, float] = {}  # level -> time of its latest report
        self._calm: dict[PressureLevel, float] = {}  # level -> its calm period now (backed off)
        self._lock = threading.Lock()

    def report(self, level: PressureLevel) -> PressureLevel:
        with self._lock:
            if level > PressureLevel.NONE:
                now = self._clock()
                self._calm[level] = self._next_calm(level, now)
                self._last[level] = now
            return self._level_locked()

    def _next_calm(self, level: PressureLevel, now: float) -> float:
        """The calm period of `level` after a report now: kept while the level
        holds, doubled on a relapse, reset after a full calm period away."""
        calm = self._calm.get(level, self.calm_seconds)
        last = self._last.get(level)
        if last is None:
            return self.calm_seconds
        fell = last + calm  # when the level fell (or will fall)
        if now < fell:
            return calm
        return min(2 * calm, self.max_calm_seconds) if now - fell < calm else self.calm_seconds

    def calm_of(self, level: PressureLevel) -> float:
        with self._lock:
            return self._calm.get(level, self.calm_seconds)

    def clear(self) -> PressureLevel:
        """Pressure is over now (an integrator said so): no calm period."""
        with self._lock:
            self._last.clear()
            self._calm.clear()  # and no backoff: the integrator knows
            return PressureLevel.NONE

    def level(self) -> PressureLevel:
        with self._lock:
            return self._level_locked()

    def _level_locked(self) -> PressureLevel:
        now = self._clock()
        for level in (PressureLevel.CRITICAL, PressureLevel.MODERATE):
            t = self._last.get(level)
            if t is not None and now - t < self._calm.get(level, self.calm_seconds):
                return level
        return PressureLevel.NONE

    def seconds_to_change(self) -> float | None:
        """When the effective level may next fall (None: it is NONE)."""
        with self._lock:
            lvl = self._level_locked()
            if lvl == PressureLevel.NONE:
                return None
            return max(0.0, self._last[lvl] + self._calm.get(lvl, self.calm_seconds) - self._clock())


# Android's ComponentCallbacks2.onTrimMemory levels, as an integrator forwards
# them (the Admin RPC's enum), graded onto ours.
TRIM_LEVELS: dict[str, PressureLevel] = {
    "none": PressureLevel.NONE,
    "running_moderate": PressureLevel.MODERATE,
    "background": PressureLevel.MODERATE,  # the host app went to the background: give back caches
    "running_critical": PressureLevel.CRITICAL,
    "complete": PressureLevel.CRITICAL,  # the host is about to be killed: give back everything
}
