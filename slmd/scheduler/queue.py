"""The waiting queue: highest priority class first; within a class, apps take
turns (round robin), and each app's requests keep their arrival order. So one
app's flood of requests cannot push another app's single request back."""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Iterator

from slmd.request import Priority, Request


class WaitQueue:
    def __init__(self) -> None:
        # class -> app -> FIFO; the OrderedDict's order is the round-robin turn order
        self._classes: dict[Priority, OrderedDict[str, deque[Request]]] = {p: OrderedDict() for p in Priority}
        self._num = 0

    def __len__(self) -> int:
        return self._num

    def push(self, req: Request) -> None:
        apps = self._classes[req.priority]
        apps.setdefault(req.app_id, deque()).append(req)
        self._num += 1

    def push_front(self, req: Request) -> None:
        """A preempted request goes back to the head of its app's line."""
        apps = self._classes[req.priority]
        if req.app_id not in apps:
            apps[req.app_id] = deque()
            apps.move_to_end(req.app_id, last=False)
        apps[req.app_id].appendleft(req)
        self._num += 1

    def peek(self) -> Request | None:
        for p in sorted(Priority, reverse=True):
            apps = self._classes[p]
            if apps:
                return next(iter(apps.values()))[0]
        return None

    def pop(self) -> Request:
        """The request `peek` returned; its app moves to the back of the turn order."""
        for p in sorted(Priority, reverse=True):
            apps = self._classes[p]
            if apps:
                app_id, fifo = next(iter(apps.items()))
                req = fifo.popleft()
                if fifo:
                    apps.move_to_end(app_id)
                else:
                    del apps[app_id]
                self._num -= 1
                return req
        raise IndexError("pop from an empty WaitQueue")

    def remove(self, req: Request) -> bool:
        apps = self._classes[req.priority]
        fifo = apps.get(req.app_id)
        if fifo is None or req not in fifo:
            return False
        fifo.remove(req)
        if not fifo:
            del apps[req.app_id]
        self._num -= 1
        return True

    def __iter__(self) -> Iterator[Request]:
        for p in sorted(Priority, reverse=True):
            for fifo in self._classes[p].values():
                yield from fifo

    def count(self, priority: Priority) -> int:
        return sum(len(f) for f in self._classes[priority].values())
