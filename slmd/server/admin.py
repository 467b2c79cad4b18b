"""The Admin service: an operator's view of the daemon (`slmd status`):
model, uptime, queues by priority, prefix cache, memory and per-app use.
It reads the same state the metrics collector reads at scrape time."""

from __future__ import annotations

import os
import time

import grpc

from slmd_client._proto.slmd.v1 import admin_pb2

import slmd
from slmd.core import Engine
from slmd.metrics import PRIORITIES, Metrics, read_engine_state, rss_bytes
from slmd.request import Priority
from slmd.runtime.base import ModelInfo
from slmd.server.identity import Identity, IdentityResolver
from slmd.server.status import RpcError

# TrimLevel (admin.proto) -> slmd.memory.levels.TRIM_LEVELS key
_TRIM = {admin_pb2.TRIM_LEVEL_NONE: "none", admin_pb2.TRIM_LEVEL_RUNNING_MODERATE: "running_moderate",
         admin_pb2.TRIM_LEVEL_RUNNING_CRITICAL: "running_critical", admin_pb2.TRIM_LEVEL_BACKGROUND: "background",
         admin_pb2.TRIM_LEVEL_COMPLETE: "complete"}


class AdminServicer:
    def __init__(self, engine: Engine, info: ModelInfo, identity: IdentityResolver,
                 metrics: Metrics | None = None, kv_bytes_per_token: float = 0.0,
                 reactor=None, admin_apps: frozenset[str] = frozenset()) -> None:
        self.reactor = reactor  # slmd.memory.reactor.MemoryReactor
        self.admin_apps = admin_apps  # apps with `admin = true`
        self.engine = engine
        self.info = info
        self.identity = identity
        self.metrics = metrics or engine.metrics
        self.kv_bytes_per_token = kv_bytes_per_token

    async def Status(self, request, context):
        ident = self.identity.resolve(context)
        st = self.engine.stats
        state = read_engine_state(self.engine, self.metrics.label_app)
        running, waiting = state.by_priority(state.running), state.by_priority(state.waiting)
        cache, cache_cfg = state.cache, self.engine.scheduler.cache.cfg
        totals = self.metrics.app_totals()
        apps_running, apps_waiting = state.by_app(state.running), state.by_app(state.waiting)
        apps = []
        for app in sorted({*totals, *apps_running, *apps_waiting}):
            t = totals.get(app)
            apps.append(admin_pb2.AppStatus(
                app_id=app, running=apps_running.get(app, 0), waiting=apps_waiting.get(app, 0),
                requests=t.requests if t else 0, prompt_tokens=t.prompt_tokens if t else 0,
                generated_tokens=t.generated_tokens if t else 0, cached_tokens=t.cached_tokens if t else 0,
                scheduled_tokens=t.scheduled_tokens if t else 0))
        return admin_pb2.StatusResponse(
            version=slmd.__version__,
            model_path=self.info.path,
            model_name=self.info.name,
            uptime_seconds=time.monotonic() - st.started_at,
            running_requests=self.engine.scheduler.num_running,
            waiting_requests=self.engine.scheduler.num_waiting,
            num_sequences=self.engine.runtime.num_sequences,  # of the context now (smaller under pressure)
            context_window=self.info.context_per_sequence,
            generated_tokens_total=st.generation_tokens_total,
            prompt_tokens_total=st.prompt_tokens_total,
            app_id=ident.app_id,
            model_loaded=self.metrics.is_model_loaded,
            queues=[admin_pb2.QueueStatus(priority=PRIORITIES[p], running=running[PRIORITIES[p]],
                                          waiting=waiting[PRIORITIES[p]]) for p in sorted(Priority, reverse=True)],
            cache=admin_pb2.CacheStatus(
                enabled=cache_cfg.enabled, query_tokens=cache.query_tokens, hit_tokens=cache.hit_tokens,
                host_hit_tokens=cache.host_hit_tokens,
                hit_ratio=cache.hit_tokens / cache.query_tokens if cache.query_tokens else 0.0,
                evictions_device=cache.evictions_device, evictions_host=cache.evictions_host,
                saves=cache.saves, restores=cache.restores, device_entries=state.streams_cached,
                device_tokens=state.cached_device_tokens),
            memory=admin_pb2.MemoryStatus(
                rss_bytes=rss_bytes(), kv_bytes=int(self.kv_bytes_per_token * state.kv_tokens_total),
                kv_usage_ratio=state.kv_usage_ratio, host_tier_bytes=cache.host_bytes,
                host_tier_limit_bytes=cache_cfg.host_bytes if cache_cfg.enabled else 0),
            apps=apps,
            preemptions_total=state.num_preemptions,
            cached_tokens_total=sum(t.cached_tokens for t in totals.values()),
            memory_pressure=self.reactor.level.label if self.reactor else "none",
        )

    def _is_operator(self, ident: Identity) -> bool:
        """Root or the daemon's own uid over the Unix socket (no token), or an app with `admin = true`."""
        return ident.app_id in self.admin_apps or (ident.uid is not None and ident.uid in (0, os.getuid()))

    async def SignalMemoryPressure(self, request, context):
        ident = self.identity.resolve(context)
        if not self._is_operator(ident):
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED, f"app {ident.app_id} may not signal memory pressure "
                           f"(operators only: root, the daemon's uid, or apps.<id>.admin = true)")
        trim = _TRIM.get(request.level)
        if trim is None:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"level: unknown value {request.level}; allowed: "
                           + ", ".join(f"{admin_pb2.TrimLevel.Name(v)} ({v})" for v in _TRIM))
        if self.reactor is None:
            raise RpcError(grpc.StatusCode.UNIMPLEMENTED, "memory pressure handling is off")
        level = self.reactor.signal_trim(trim)
        return admin_pb2.SignalMemoryPressureResponse(level=level.label, model_loaded=self.metrics.is_model_loaded)
