"""Metrics without a daemon: bounded labels, separate registries, the log
filter (request ids on every record, content only when allowed), config
checks and the client's Status conversion."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import generate_latest

from slmd.config import ConfigError, LogConfig, load_config
from slmd.logs import RequestContextFilter, content_allowed
from slmd.metrics import OTHER, AppLabels, Metrics
from slmd.request import Priority, Request, SamplingParams
from slmd.server import calls


def test_app_labels_are_bounded():
    label = AppLabels(configured=["mail", "notes"], max_dynamic=3)
    assert [label(f"uid-{i}") for i in range(5)] == ["uid-0", "uid-1", "uid-2", OTHER, OTHER]
    assert label("uid-1") == "uid-1"  # once kept, always kept
    assert label("mail") == "mail" and label("notes") == "notes"  # configured apps never fall into "other"


def test_unbounded_callers_collapse_into_other_in_the_scrape():
    m = Metrics(["mail"], max_apps=2)
    for i in range(100):
        m.on_call(f"uid-{i}", "Generate", "made-up-intent", "OK")
    text = generate_latest(m.registry).decode()
    lines = [ln for ln in text.splitlines() if ln.startswith("slmd_requests_total")]
    assert len(lines) == 3  # uid-0, uid-1, other
    assert 'app="other"' in text and 'intent="other"' in text and "uid-2" not in text


def test_registries_do_not_collide():
    a, b = Metrics(), Metrics()
    a.on_rejected("queue_full")
    assert a.registry is not b.registry
    assert a.rejections.labels("queue_full")._value.get() == 1
    assert b.rejections.labels("queue_full")._value.get() == 0
    a.on_rejected("not-a-reason")
    assert a.rejections.labels(OTHER)._value.get() == 1


def test_request_observations():
    m = Metrics(["a"])
    req = Request("r1", [1, 2, 3], SamplingParams(), app_id="a", priority=Priority.INTERACTIVE)
    req.arrival_time = 100.0
    m.on_tokens(req, 1, now=100.5)
    m.on_tokens(req, 1, now=100.7)
    m.on_tokens(req, 1, now=101.0)
    req.first_scheduled_time, req.first_token_time, req.finish_time = 100.1, 100.5, 101.0
    req.num_cached_tokens = 2
    m.on_request_finished(req)
    text = generate_latest(m.registry).decode()
    assert 'slmd_inter_token_latency_seconds_count{app="a",priority="interactive"} 2.0' in text
    assert 'slmd_time_to_first_token_seconds_sum{app="a",priority="interactive"} 0.5' in text
    assert 'slmd_e2e_request_latency_seconds_sum{app="a",priority="interactive"} 1.0' in text
    assert 'slmd_generation_tokens_total{app="a"} 3.0' in text
    assert 'slmd_prompt_cached_tokens_total{app="a"} 2.0' in text
    assert m.app_totals()["a"].prompt_tokens == 3
    # a request refused before it ran adds no latency and no prompt tokens
    m.on_request_finished(Request("r2", [1], SamplingParams(), app_id="a"))
    assert m.app_totals()["a"].requests == 1


def _record(msg: str, **extra) -> logging.LogRecord:
    rec = logging.LogRecord("slmd.test", logging.DEBUG, __file__, 1, msg, (), None)
    rec.__dict__.update(extra)
    return rec


def test_log_filter_stamps_ids_and_drops_content():
    f = RequestContextFilter(allow_content=False)
    rec = _record("outside any request")
    assert f.filter(rec) and rec.request_id == "-" and rec.app_id == "-"
    calls.begin("Generate", "generate")
    calls.note_app("mail")
    calls.note_request("req-42")
    rec = _record("inside")
    assert f.filter(rec) and (rec.request_id, rec.app_id) == ("req-42", "mail")
    rec = _record("engine thread", request_id="req-7", app_id="notes")
    assert f.filter(rec) and rec.request_id == "req-7"  # explicit extra= wins
    assert not f.filter(_record("the prompt", content=True))
    assert RequestContextFilter(allow_content=True).filter(_record("the prompt", content=True))


def test_content_needs_both_the_flag_and_debug():
    assert not content_allowed(LogConfig(level="info", log_content=True))
    assert not content_allowed(LogConfig(level="debug", log_content=False))
    assert content_allowed(LogConfig(level="debug", log_content=True))


def test_metrics_config():
    cfg = load_config(environ={})
    assert cfg.metrics.is_served and cfg.metrics.port == 9464 and cfg.metrics.host == "127.0.0.1"
    assert not load_config(environ={"SLMD_METRICS__PORT": "0"}).metrics.is_served
    assert not load_config(environ={"SLMD_METRICS__ENABLED": "false"}).metrics.is_served
    with pytest.raises(ConfigError, match="metrics.host"):
        load_config(environ={"SLMD_METRICS__HOST": "0.0.0.0"})


def test_client_status_round_trip():
    from slmd_client._proto.slmd.v1 import admin_pb2
    from slmd_client.status_types import Status, render

    msg = admin_pb2.StatusResponse(model_name="m", app_id="mail", model_loaded=True)
    msg.queues.add(priority="normal", running=1, waiting=2)
    msg.apps.add(app_id="mail", requests=3, prompt_tokens=40)
    msg.cache.hit_tokens = 5
    msg.memory.rss_bytes = 1 << 20
    st = Status.from_proto(msg)
    assert st.queues[0].waiting == 2 and st.apps[0].prompt_tokens == 40 and st.cache.hit_tokens == 5
    d = st.to_dict()
    assert d["apps"][0]["app_id"] == "mail" and d["memory"]["rss_bytes"] == 1 << 20
    text = "\n".join(render(st))
    assert "normal: 1 running / 2 waiting" in text and "mail" in text


def test_pressure_levels_match_the_memory_module():
    from slmd.memory.levels import PressureLevel
    from slmd.metrics import PRESSURE_LEVELS

    assert {lv.label for lv in PressureLevel if lv > PressureLevel.NONE} == set(PRESSURE_LEVELS)
    m = Metrics()
    m.on_memory_pressure(PressureLevel.CRITICAL.label)
    assert m.pressure.labels("critical")._value.get() == 1
