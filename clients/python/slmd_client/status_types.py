"""The daemon's operator view (Admin.Status) as plain Python values."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from slmd_client._proto.slmd.v1 import admin_pb2


@dataclass(frozen=True)
class QueueStatus:
    priority: str
    running: int
    waiting: int


@dataclass(frozen=True)
class CacheStatus:
    enabled: bool = False
    query_tokens: int = 0
    hit_tokens: int = 0
    host_hit_tokens: int = 0
    hit_ratio: float = 0.0  # 0..1
    evictions_device: int = 0
    evictions_host: int = 0
    saves: int = 0
    restores: int = 0
    device_entries: int = 0
    device_tokens: int = 0


@dataclass(frozen=True)
class MemoryStatus:
    rss_bytes: int = 0
    kv_bytes: int = 0
    kv_usage_ratio: float = 0.0  # 0..1
    host_tier_bytes: int = 0
    host_tier_limit_bytes: int = 0


@dataclass(frozen=True)
class AppStatus:
    app_id: str
    running: int = 0
    waiting: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    cached_tokens: int = 0
    scheduled_tokens: int = 0  # prompt and generated tokens computed: the unit of the app's fair share


def _plain(cls, msg):
    return cls(**{f.name: getattr(msg, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class Status:
    """The daemon's operator view (Admin.Status)."""

    version: str
    model_path: str
    model_name: str
    uptime_seconds: float
    running_requests: int
    waiting_requests: int
    num_sequences: int
    context_window: int
    generated_tokens_total: int
    prompt_tokens_total: int
    app_id: str  # the identity the daemon derived for this caller
    model_loaded: bool = False
    queues: tuple[QueueStatus, ...] = ()  # highest priority first
    cache: CacheStatus = field(default_factory=CacheStatus)
    memory: MemoryStatus = field(default_factory=MemoryStatus)
    apps: tuple[AppStatus, ...] = ()
    preemptions_total: int = 0
    cached_tokens_total: int = 0
    memory_pressure: str = "none"  # "none", "moderate", "critical"
    extra: dict[str, Any] = field(default_factory=dict)  # fields newer than this client

    _NESTED = {"queues": QueueStatus, "cache": CacheStatus, "memory": MemoryStatus, "apps": AppStatus}

    @classmethod
    def from_proto(cls, msg: admin_pb2.StatusResponse) -> Status:
        from google.protobuf import json_format

        values = json_format.MessageToDict(
            msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        known = {f.name for f in dataclasses.fields(cls) if f.name != "extra"}
        kwargs: dict[str, Any] = {}
        for name in known:
            value = getattr(msg, name)
            nested = cls._NESTED.get(name)
            if nested is None:
                kwargs[name] = value
            elif name in ("queues", "apps"):
                kwargs[name] = tuple(_plain(nested, m) for m in value)
            else:
                kwargs[name] = _plain(nested, value)
        extra = {k: v for k, v in values.items() if k not in known}
        return cls(**kwargs, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        for name in self._NESTED:
            value = out[name]
            out[name] = [dataclasses.asdict(v) for v in value] if isinstance(value, tuple) else dataclasses.asdict(value)
        out.update(self.extra)
        return out


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def render(st: Status) -> list[str]:
    """The status as lines for a terminal."""
    c, m = st.cache, st.memory
    lines = [
        f"slmd {st.version}, up {st.uptime_seconds:.0f} s, you are app {st.app_id!r}",
        f"model     {st.model_name} ({'loaded' if st.model_loaded else 'not loaded'}), "
        f"{st.num_sequences} KV streams x {st.context_window} tokens",
        f"          {st.model_path}",
        "queues    " + ", ".join(f"{q.priority}: {q.running} running / {q.waiting} waiting" for q in st.queues),
        f"tokens    {st.prompt_tokens_total} prompt ({st.cached_tokens_total} from cache), "
        f"{st.generated_tokens_total} generated; {st.preemptions_total} preemptions",
        f"cache     {'on' if c.enabled else 'off'}: {c.hit_tokens}/{c.query_tokens} tokens hit "
        f"({c.hit_ratio:.0%}, {c.host_hit_tokens} from host), {c.device_entries} entries on device "
        f"({c.device_tokens} tokens), evictions {c.evictions_device} device / {c.evictions_host} host",
        f"memory    RSS {_mib(m.rss_bytes)}, KV {_mib(m.kv_bytes)} ({m.kv_usage_ratio:.0%} used), "
        f"host tier {_mib(m.host_tier_bytes)} of {_mib(m.host_tier_limit_bytes)}, pressure {st.memory_pressure}",
    ]
    if st.apps:
        width = max(len(a.app_id) for a in st.apps)
        lines.append("apps")
        for a in st.apps:
            lines.append(f"  {a.app_id:<{width}}  {a.running} running, {a.waiting} waiting, {a.requests} done, "
                         f"{a.prompt_tokens} prompt ({a.cached_tokens} cached) + {a.generated_tokens} generated tokens")
    for key, value in st.extra.items():
        lines.append(f"{key}  {value}")
    return lines


TRIM_LEVELS = ("none", "running_moderate", "running_critical", "background", "complete")


def trim_level(level: str) -> int:
    """"running_critical" -> admin_pb2.TRIM_LEVEL_RUNNING_CRITICAL (Android onTrimMemory names)."""
    name = level.strip().lower().replace("-", "_")
    if name not in TRIM_LEVELS:
        raise ValueError(f"memory pressure level {level!r}: allowed: {', '.join(TRIM_LEVELS)}")
    return admin_pb2.TrimLevel.Value("TRIM_LEVEL_" + name.upper())
