"""Per-app policy and admission: priority caps, weights, bounded queues,
concurrency and token-rate quotas. A rejection carries the reason, a message
naming the limit, and when to retry."""

from __future__ import annotations

import enum
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from slmd.request import Priority


@dataclass(frozen=True)
class AppPolicy:
    weight: float = 1.0
    max_priority: Priority = Priority.INTERACTIVE
    default_priority: Priority = Priority.NORMAL
    max_concurrent: int = 64  # running + waiting
    max_waiting: int = 64
    tokens_per_minute: int = 0  # 0 = unlimited


class RejectReason(enum.Enum):
    QUEUE_FULL = "queue_full"
    APP_QUEUE_FULL = "app_queue_full"
    CONCURRENCY = "concurrency"
    TOKEN_RATE = "token_rate"
    DEADLINE = "deadline"


class Rejected(Exception):
    def __init__(self, reason: RejectReason, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class TokenMeter:
    """Tokens each app used in the last minute (sliding window)."""

    WINDOW = 60.0

    def __init__(self) -> None:
        self._events: dict[str, deque[tuple[float, int]]] = defaultdict(deque)
        self._sums: dict[str, int] = defaultdict(int)

    def add(self, app_id: str, tokens: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._events[app_id].append((now, tokens))
        self._sums[app_id] += tokens

    def used(self, app_id: str, now: float | None = None) -> tuple[int, float]:
        """(tokens in the window, seconds until the oldest leaves it)."""
        now = time.monotonic() if now is None else now
        ev = self._events[app_id]
        while ev and ev[0][0] <= now - self.WINDOW:
            self._sums[app_id] -= ev.popleft()[1]
        return self._sums[app_id], (ev[0][0] + self.WINDOW - now) if ev else 0.0


def check_admission(policy: AppPolicy, app_id: str, *, num_waiting_total: int, max_waiting_total: int,
                    num_waiting_app: int, num_active_app: int, meter: TokenMeter) -> None:
    if num_waiting_total >= max_waiting_total:
        raise Rejected(RejectReason.QUEUE_FULL,
                       f"{num_waiting_total} requests are waiting (engine.max_waiting={max_waiting_total})")
    if num_waiting_app >= policy.max_waiting:
        raise Rejected(RejectReason.APP_QUEUE_FULL,
                       f"app {app_id} has {num_waiting_app} requests waiting (apps.{app_id}.max_waiting={policy.max_waiting})")
    if num_active_app >= policy.max_concurrent:
        raise Rejected(RejectReason.CONCURRENCY,
                       f"app {app_id} has {num_active_app} requests in flight "
                       f"(apps.{app_id}.max_concurrent={policy.max_concurrent})")
    if policy.tokens_per_minute:
        used, wait = meter.used(app_id)
        if used >= policy.tokens_per_minute:
            raise Rejected(RejectReason.TOKEN_RATE,
                           f"app {app_id} used {used} tokens in the last minute "
                           f"(apps.{app_id}.tokens_per_minute={policy.tokens_per_minute})", retry_after=max(wait, 0.1))
