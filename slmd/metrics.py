"""Every Prometheus metric slmd exports, defined in one place.

`Metrics` owns its own CollectorRegistry (several engines in one process
must not collide). Events are pushed in by the engine thread (tokens,
finished and rejected requests) and the RPC wrapper (one count per call with
its status code); engine state (queues, KV use, cache counters, memory) is
read at scrape time by a collector, so a scrape never waits on the engine.

Naming follows Prometheus: `slmd_` prefix, base units, `_total` on counters,
ratios in 0..1. Label sets are bounded: app (configured apps keep their id,
others up to a cap, then "other"), priority, method, intent, status code,
reason, tier, level. Never request ids or text."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from slmd.cache.prefix_cache import CacheStats
from slmd.request import Priority, Request

if TYPE_CHECKING:
    from slmd.core import Engine

log = logging.getLogger(__name__)

OTHER = "other"
PRIORITIES = {p: p.name.lower() for p in Priority}
# The intent label: an RPC's default, refined by a servicer (chat vs. prompt,
# the intent Assist detected). Anything else is "other".
METHOD_INTENTS = {
    "Generate": "generate", "CountTokens": "count", "Status": "status", "SignalMemoryPressure": "memory_pressure",
    "OpenDocument": "open_document", "CloseDocument": "close_document", "MeasureInput": "measure",
    "Summarize": "summarize", "SuggestQuestions": "suggest", "Ask": "answer", "Assist": "assist",
}
INTENTS = frozenset(METHOD_INTENTS.values()) | {"chat", OTHER}
REJECT_REASONS = ("queue_full", "app_queue_full", "concurrency", "token_rate", "deadline", "shutdown",
                  "memory_pressure")
PRESSURE_LEVELS = ("moderate", "critical")  # slmd.memory.levels.PressureLevel labels

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def intent_of(method: str) -> str:
    return METHOD_INTENTS.get(method, OTHER)


class AppLabels:
    """Bounds the app label: configured apps keep their id; others (say
    `uid-1234`) are kept up to `max_dynamic` distinct ids, then are "other"."""

    def __init__(self, configured: Iterable[str] = (), max_dynamic: int = 64) -> None:
        self._fixed = frozenset(configured)
        self._seen: set[str] = set()
        self._max = max_dynamic
        self._lock = threading.Lock()  # the engine thread and the event loop both label

    def __call__(self, app_id: str) -> str:
        if app_id in self._fixed or app_id in self._seen:
            return app_id
        with self._lock:
            if len(self._seen) < self._max:
                self._seen.add(app_id)
                return app_id
        return OTHER


@dataclass
class AppTotals:
    """Per-app sums for `slmd status` (the counters hold the same numbers)."""

    requests: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    cached_tokens: int = 0
    scheduled_tokens: int = 0


@dataclass
class EngineState:
    """One consistent-enough reading of the engine, for scrapes and Status."""

    running: dict[tuple[str, str], int] = field(default_factory=dict)  # (app, priority) -> requests
    waiting: dict[tuple[str, str], int] = field(default_factory=dict)
    kv_tokens_used: int = 0
    kv_tokens_total: int = 0
    streams_total: int = 0
    streams_running: int = 0
    streams_cached: int = 0
    cached_device_tokens: int = 0  # tokens held in KV streams by the prefix cache
    cache: CacheStats = field(default_factory=CacheStats)
    num_preemptions: int = 0

    @property
    def kv_usage_ratio(self) -> float:
        return min(1.0, self.kv_tokens_used / self.kv_tokens_total) if self.kv_tokens_total else 0.0

    def by_priority(self, which: dict[tuple[str, str], int]) -> dict[str, int]:
        out = dict.fromkeys(PRIORITIES.values(), 0)
        for (_, prio), n in which.items():
            out[prio] += n
        return out

    def by_app(self, which: dict[tuple[str, str], int]) -> dict[str, int]:
        out: dict[str, int] = {}
        for (app, _), n in which.items():
            out[app] = out.get(app, 0) + n
        return out


def read_engine_state(engine: Engine, label_app: AppLabels | None = None, attempts: int = 5) -> EngineState:
    """Read the scheduler from another thread. Its containers may change while
    we walk them (a RuntimeError); the walk is short, so simply try again."""
    for i in range(attempts):
        try:
            return _read(engine, label_app or (lambda a: a))
        except RuntimeError:
            if i == attempts - 1:
                raise
            time.sleep(0.001)
    raise AssertionError("unreachable")


def _read(engine: Engine, label_app) -> EngineState:
    sched = engine.scheduler
    st = EngineState(streams_total=sched.cfg.num_sequences,
                     kv_tokens_total=sched.cfg.num_sequences * sched.cfg.context_per_sequence)
    for which, reqs in ((st.running, list(sched.running)), (st.waiting, list(sched.waiting))):
        for r in reqs:
            key = (label_app(r.app_id), PRIORITIES[r.priority])
            which[key] = which.get(key, 0) + 1
            if r.seq_id is not None:  # a paused request may keep its stream
                st.streams_running += 1
                st.kv_tokens_used += r.num_computed_tokens
    st.streams_cached = len(sched.cache.device_holders())
    st.cached_device_tokens = sched.cache.cached_tokens()
    st.kv_tokens_used += st.cached_device_tokens
    st.cache = CacheStats(**vars(sched.cache.stats))
    st.num_preemptions = sched.num_preemptions
    return st


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _EngineCollector(Collector):
    """Gauges and cache counters read from the engine at scrape time."""

    def __init__(self, metrics: Metrics, engine: Engine) -> None:
        self.metrics = metrics
        self.engine = engine

    def collect(self):
        st = read_engine_state(self.engine, self.metrics.label_app)
        for name, which in (("running", st.running), ("waiting", st.waiting)):
            g = GaugeMetricFamily(f"slmd_requests_{name}", f"Requests {name}, by priority", labels=["priority"])
            for prio, n in st.by_priority(which).items():
                g.add_metric([prio], n)
            yield g
            g = GaugeMetricFamily(f"slmd_app_requests_{name}", f"Requests {name}, by app", labels=["app"])
            for app, n in st.by_app(which).items():
                g.add_metric([app], n)
            yield g
        yield GaugeMetricFamily("slmd_kv_usage_ratio", "KV cells in use (running requests and cache "
                                "holders) over all cells, 0..1", value=st.kv_usage_ratio)
        g = GaugeMetricFamily("slmd_kv_streams", "KV streams by use", labels=["state"])
        g.add_metric(["running"], st.streams_running)
        g.add_metric(["cached"], st.streams_cached)
        g.add_metric(["free"], max(0, st.streams_total - st.streams_running - st.streams_cached))
        yield g
        yield GaugeMetricFamily("slmd_prefix_cache_host_bytes", "Bytes of KV state held in the host-memory tier",
                                value=st.cache.host_bytes)
        c = st.cache
        yield CounterMetricFamily("slmd_prefix_cache_query_tokens", "Prompt tokens looked up in the prefix cache",
                                  value=c.query_tokens)
        hits = CounterMetricFamily("slmd_prefix_cache_hit_tokens", "Prompt tokens found in the prefix cache, by tier",
                                   labels=["tier"])
        hits.add_metric(["device"], c.hit_tokens - c.host_hit_tokens)
        hits.add_metric(["host"], c.host_hit_tokens)
        yield hits
        ev = CounterMetricFamily("slmd_prefix_cache_evictions", "Cache entries evicted, by tier (device: a KV "
                                 "stream given up, saved to host or dropped; host: dropped from host memory)",
                                 labels=["tier"])
        ev.add_metric(["device"], c.evictions_device)
        ev.add_metric(["host"], c.evictions_host)
        yield ev
        yield CounterMetricFamily("slmd_prefix_cache_saves", "Device cache entries saved to the host tier",
                                  value=c.saves)
        yield CounterMetricFamily("slmd_kv_restores", "KV states restored from host memory", value=c.restores)
        yield CounterMetricFamily("slmd_preemptions", "Running requests paused for higher-priority work",
                                  value=st.num_preemptions)
        yield GaugeMetricFamily("slmd_process_resident_memory_bytes", "Resident set size of the daemon",
                                value=rss_bytes())


class Metrics:
    def __init__(self, configured_apps: Iterable[str] = (), max_apps: int = 64) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.label_app = AppLabels(configured_apps, max_apps)
        self.started_at = time.time()
        self._apps: dict[str, AppTotals] = {}
        self._apps_lock = threading.Lock()
        self._last_token_at: dict[str, float] = {}  # request id -> time of its last token (engine thread only)
        self._children: dict[tuple, object] = {}  # (metric, *labels) -> child, for per-step metrics (engine thread)
        self._http = None
        self.is_model_loaded = False
        r, app_prio = self.registry, ["app", "priority"]

        self.requests = Counter("slmd_requests", "RPCs handled, by app, method, intent and gRPC status code",
                                ["app", "method", "intent", "code"], registry=r)
        self.prompt_tokens = Counter("slmd_prompt_tokens", "Prompt tokens of requests that ran", ["app"], registry=r)
        self.generation_tokens = Counter("slmd_generation_tokens", "Tokens generated", ["app"], registry=r)
        self.cached_tokens = Counter("slmd_prompt_cached_tokens", "Prompt tokens served from the prefix cache "
                                     "(as reported to clients in Usage)", ["app"], registry=r)
        self.scheduled_tokens = Counter("slmd_scheduled_tokens", "Tokens computed for the app's requests, prompt "
                                        "and generated: the unit of its fair share", ["app"], registry=r)
        self.rejections = Counter("slmd_rejections", "Requests refused at admission, by reason", ["reason"], registry=r)
        self.pressure = Counter("slmd_memory_pressure_events", "Memory-pressure events, by level", ["level"],
                                registry=r)
        self.model_loads = Counter("slmd_model_loads", "Model loads", registry=r)
        self.model_unloads = Counter("slmd_model_unloads", "Model unloads", registry=r)
        self.ttft = Histogram("slmd_time_to_first_token_seconds", "Arrival to first generated token", app_prio,
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("slmd_inter_token_latency_seconds", "Time between a request's consecutive tokens",
                             app_prio, buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("slmd_e2e_request_latency_seconds", "Arrival to finish, requests that ran", app_prio,
                             buckets=E2E_BUCKETS, registry=r)
        self.queue = Histogram("slmd_request_queue_seconds", "Arrival to first scheduled, requests that ran",
                               app_prio, buckets=QUEUE_BUCKETS, registry=r)
        self.model_loaded = Gauge("slmd_model_loaded", "1 while the model is loaded", registry=r)
        Gauge("slmd_start_time_seconds", "Unix time the daemon started", registry=r).set(self.started_at)
        for reason in REJECT_REASONS:  # zeros from the start: rate() needs a first sample
            self.rejections.labels(reason)
        for level in PRESSURE_LEVELS:
            self.pressure.labels(level)

    # ---- wiring -------------------------------------------------------------

    def watch(self, engine: Engine) -> None:
        """Export the engine's state at scrape time."""
        self.registry.register(_EngineCollector(self, engine))

    def serve(self, host: str, port: int) -> int | None:
        """Serve /metrics over HTTP on loopback (a thread). Returns the port, or
        None when it cannot bind: metrics are not worth refusing to serve the model."""
        try:
            self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            log.error("metrics: cannot listen on %s:%d (%s); /metrics is off", host, port, e)
            return None
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    # ---- events -------------------------------------------------------------

    def on_call(self, app_id: str, method: str, intent: str, code: str) -> None:
        """One RPC ended with `code` (the registry's wrapper)."""
        self.requests.labels(self.label_app(app_id), method, intent if intent in INTENTS else OTHER, code).inc()

    def on_tokens(self, req: Request, num_tokens: int, now: float | None = None) -> None:
        """Tokens delivered to a request's stream (engine thread)."""
        self.on_step_tokens([(req, num_tokens)], now)

    def on_step_tokens(self, delivered: list[tuple[Request, int]], now: float | None = None) -> None:
        """One engine step's deliveries: (request, tokens). Counters once per
        app and labelled children looked up once (labels() costs microseconds,
        times every request of every step)."""
        if not delivered:
            return
        now = time.monotonic() if now is None else now
        per_app: dict[str, int] = {}
        for req, num_tokens in delivered:
            app = self.label_app(req.app_id)
            per_app[app] = per_app.get(app, 0) + num_tokens
            prev = self._last_token_at.get(req.request_id)
            if prev is not None:
                itl = self._child(self.itl, app, PRIORITIES[req.priority])
                for _ in range(num_tokens):  # a multi-token delivery: its gap shared out evenly
                    itl.observe((now - prev) / num_tokens)
            self._last_token_at[req.request_id] = now
        for app, num in per_app.items():
            self._child(self.generation_tokens, app).inc(num)
            self._totals(app).generated_tokens += num

    def on_scheduled(self, per_app: dict[str, int]) -> None:
        """Tokens one step computed, per app (engine thread)."""
        for app_id, num in per_app.items():
            app = self.label_app(app_id)
            self._child(self.scheduled_tokens, app).inc(num)
            self._totals(app).scheduled_tokens += num

    def _child(self, metric, *labels: str):
        """`metric.labels(*labels)`, looked up once (labels() takes a lock and
        builds a key: microseconds, times every request of every step)."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def on_request_finished(self, req: Request) -> None:
        """A request left the engine (engine thread). Latencies and prompt
        counts only for requests that ran: refusals are counted elsewhere."""
        self._last_token_at.pop(req.request_id, None)
        if req.first_scheduled_time is None:
            return
        app, prio = self.label_app(req.app_id), PRIORITIES[req.priority]
        end = req.finish_time or time.monotonic()
        self.prompt_tokens.labels(app).inc(req.num_prompt_tokens)
        self.cached_tokens.labels(app).inc(req.num_cached_tokens)
        if req.first_token_time is not None:
            self.ttft.labels(app, prio).observe(req.first_token_time - req.arrival_time)
        self.e2e.labels(app, prio).observe(end - req.arrival_time)
        self.queue.labels(app, prio).observe(req.first_scheduled_time - req.arrival_time)
        with self._apps_lock:
            t = self._apps.setdefault(app, AppTotals())
            t.requests += 1
            t.prompt_tokens += req.num_prompt_tokens
            t.cached_tokens += req.num_cached_tokens

    def on_rejected(self, reason: str) -> None:
        self.rejections.labels(reason if reason in REJECT_REASONS else OTHER).inc()

    def on_memory_pressure(self, level: str) -> None:
        self.pressure.labels(level if level in PRESSURE_LEVELS else OTHER).inc()

    def on_model_loaded(self) -> None:
        self.model_loads.inc()
        self.model_loaded.set(1)
        self.is_model_loaded = True

    def on_model_unloaded(self) -> None:
        self.model_unloads.inc()
        self.model_loaded.set(0)
        self.is_model_loaded = False

    # ---- reading ------------------------------------------------------------

    def _totals(self, app: str) -> AppTotals:
        with self._apps_lock:
            return self._apps.setdefault(app, AppTotals())

    def app_totals(self) -> dict[str, AppTotals]:
        with self._apps_lock:
            return {a: AppTotals(**vars(t)) for a, t in self._apps.items()}
