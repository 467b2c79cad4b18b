"""The waiting queue: highest priority class first; within a class, a
weighted fair share across apps (the app with the fewest running requests
per unit of weight goes next, then the one with the least tokens served per
unit of weight: start-time fair queuing), and each app's
requests keep their arrival order. An app that was idle starts at the
current virtual time, so idling earns no burst credit. One app's flood
therefore cannot push another app's request back."""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterator

from slmd.request import Priority, Request

_HIGHEST_FIRST = tuple(sorted(Priority, reverse=True))


class WaitQueue:
    def __init__(self, weight_of: Callable[[str], float] = lambda app: 1.0,
                 running_of: Callable[[str], int] = lambda app: 0) -> None:
        self._weight_of = weight_of
        # Requests an app has running. Every running request decodes a token
        # each step, so running slots are the share; and tokens are charged
        # only once computed, so slots handed out in one step all see the
        # same virtual times. Fewest slots per weight first, then least served.
        self._running_of = running_of
        self._apps: dict[Priority, dict[str, deque[Request]]] = {p: {} for p in Priority}
        self._vtime: dict[str, float] = {}  # tokens served / weight, per app
        self._num = 0

    def __len__(self) -> int:
        return self._num

    # ---- fair share accounting ---------------------------------------------

    def charge(self, app_id: str, num_tokens: int) -> None:
        """Tokens an app's requests consumed this step (prefill and decode)."""
        v = self._vtime.get(app_id)
        if v is None:  # (the floor walks every queued app: only when needed)
            v = self._floor()
        self._vtime[app_id] = v + num_tokens / self._weight_of(app_id)

    def served(self, app_id: str) -> float:
        """The app's virtual time: tokens served over its weight."""
        return self._vtime.get(app_id, 0.0)

    def _floor(self) -> float:
        active = [self._vtime.get(a, 0.0) for apps in self._apps.values() for a in apps]
        return min(active, default=max(self._vtime.values(), default=0.0))

    # ---- queue ------------------------------------------------------------

    def push(self, req: Request, *, front: bool = False, idle: bool = True) -> None:
        """`idle`: the app has no other request, queued or running. Only an idle
        app is moved up to the current virtual time; one whose requests all run
        keeps the credit it is owed (else an app with every request in flight
        lost its share each time it queued another)."""
        apps = self._apps[req.priority]
        if req.app_id not in apps:
            apps[req.app_id] = deque()
            if idle:
                self._vtime[req.app_id] = max(self._vtime.get(req.app_id, 0.0), self._floor())
        (apps[req.app_id].appendleft if front else apps[req.app_id].append)(req)
        self._num += 1

    def _next_app(self, prio: Priority) -> str | None:
        apps = self._apps[prio]
        return min(apps, key=lambda a: (self._running_of(a) / self._weight_of(a), self._vtime.get(a, 0.0),
                                        apps[a][0].arrival_time)) if apps else None

    def peek(self) -> Request | None:
        for p in sorted(Priority, reverse=True):
            app = self._next_app(p)
            if app is not None:
                return self._apps[p][app][0]
        return None

    def pop(self) -> Request:
        req = self.peek()
        if req is None:
            raise IndexError("pop from an empty WaitQueue")
        self.remove(req)
        return req

    def remove(self, req: Request) -> bool:
        apps = self._apps[req.priority]
        fifo = apps.get(req.app_id)
        if fifo is None or req not in fifo:
            return False
        fifo.remove(req)
        if not fifo:
            del apps[req.app_id]
        self._num -= 1
        return True

    def __iter__(self) -> Iterator[Request]:
        if not self._num:
            return
        for p in _HIGHEST_FIRST:
            for fifo in list(self._apps[p].values()):
                yield from list(fifo)

    def count(self, *, priority: Priority | None = None, app_id: str | None = None) -> int:
        n = 0
        for p, apps in self._apps.items():
            if priority is not None and p != priority:
                continue
            for a, fifo in apps.items():
                if app_id is None or a == app_id:
                    n += len(fifo)
        return n
