"""Per-app policy from the `apps` config table: weights, priority caps,
quotas. Apps without an entry get `apps.default`, else the built-in default."""

from __future__ import annotations

from slmd.config import AppSection
from slmd.request import Priority
from slmd.scheduler.admission import AppPolicy

_PRIO = {"background": Priority.BACKGROUND, "normal": Priority.NORMAL, "interactive": Priority.INTERACTIVE}


def _policy(s: AppSection) -> AppPolicy:
    return AppPolicy(weight=s.weight, max_priority=_PRIO[s.max_priority], default_priority=_PRIO[s.default_priority],
                     max_concurrent=s.max_concurrent, max_waiting=s.max_waiting, tokens_per_minute=s.tokens_per_minute)


class AppPolicies:
    def __init__(self, apps: dict[str, AppSection]) -> None:
        self._by_app = {name: _policy(s) for name, s in apps.items()}
        self._default = self._by_app.get("default", AppPolicy())

    def get(self, app_id: str) -> AppPolicy:
        return self._by_app.get(app_id, self._default)

    def priority(self, app_id: str, requested: Priority | None) -> Priority:
        """What the app asked for, capped by what it is granted."""
        p = self.get(app_id)
        return min(requested or p.default_priority, p.max_priority)
