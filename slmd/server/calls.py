"""What the daemon knows about the RPC being handled, for metrics and logs.

The registry's wrapper opens a `CallInfo` for every call and puts it in a
context variable; the identity resolver fills in the app and servicers the
request id and intent. The handler runs in the wrapper's task, so whatever
they set is what the wrapper counts when the call ends, and what the log
filter stamps on every line logged meanwhile."""

from __future__ import annotations

import contextvars
import uuid
from dataclasses import dataclass, field

UNKNOWN_APP = "unknown"  # the caller was not identified (refused, or failed before)


def _call_id() -> str:
    return "rpc-" + uuid.uuid4().hex[:12]


@dataclass
class CallInfo:
    method: str
    intent: str
    app_id: str = UNKNOWN_APP
    # Until a servicer names the request, a per-call id: every log line carries one.
    request_id: str = field(default_factory=_call_id)


_current: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar("slmd_call", default=None)


def begin(method: str, intent: str) -> CallInfo:
    info = CallInfo(method, intent)
    _current.set(info)
    return info


def current() -> CallInfo | None:
    return _current.get()


def note_app(app_id: str) -> None:
    if (info := _current.get()) is not None:
        info.app_id = app_id


def note_request(request_id: str, intent: str | None = None) -> None:
    if (info := _current.get()) is not None:
        info.request_id = request_id
        if intent is not None:
            info.intent = intent
