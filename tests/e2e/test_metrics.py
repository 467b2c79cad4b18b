"""The operators' view, end to end: a real daemon with /metrics on a loopback
port, a mix of requests from three apps (two finished, a prefix-cache hit, a
chat, an invalid one, one cancelled mid-stream, one refused at admission),
then the scrape must agree with what the clients saw: requests by status
code, prompt/generated/cached tokens from the clients' Usage, histogram
counts. Admin.Status must tell the same story, and neither gRPC nor plain
HTTP on the apps' Unix socket may serve the metrics."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from slmd_client import AsyncClient, InvalidArgument, ResourceExhausted
from slmd_client._proto.slmd.v1 import generation_pb2, generation_pb2_grpc
from slmd.testing import raw_unix_exchange
from tests.conftest import ROOT, start_daemon

pytestmark = [pytest.mark.e2e, pytest.mark.default_model]

TOKENS = {"tok-a": "app-a", "tok-b": "app-b", "tok-c": "app-c"}
# Long enough for the prefix cache (cache.min_tokens = 16), and repeated
# verbatim so the second run is a hit.
DOC = ("The lighthouse keeper wrote in his log every evening: the wind, the height of the waves, "
       "the ships that passed, and the colour of the sky at dusk. Summarise his week.")
SECRET = "zebra-quartz-7781"  # must never reach the log (log_content is off)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from the real endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name: str, **labels: str) -> float:
    """Sum over the samples of `name` whose labels include `labels` (0 if none)."""
    return sum(v for (n, lab), v in samples.items()
               if n == name and all(dict(lab).get(k) == want for k, want in labels.items()))


@pytest.fixture(scope="module")
def metrics_daemon(tmp_path_factory, default_model):
    tmp = tmp_path_factory.mktemp("slmd")
    port = _free_port()
    cfg = tmp / "slmd.toml"
    tokens = ", ".join(f'"{t}" = "{a}"' for t, a in TOKENS.items())
    cfg.write_text(f"[auth]\ntokens = {{{tokens}}}\n\n[apps.app-c]\nmax_waiting = 0\n\n"
                   f"[metrics]\nport = {port}\n\n[log]\nlevel = \"debug\"\njson_format = true\n")
    d = start_daemon(tmp, default_model, "--config", str(cfg), "--threads", "1", "--max-running", "4")
    yield d, port
    assert d.stop() == 0, d.log_text()[-3000:]


async def _complete(client: AsyncClient, prompt=None, **kw):
    chunks = [c async for c in client.generate(prompt, **kw)]
    return chunks[-1].usage, sum(len(c.token_ids) for c in chunks)


async def _workload(target: str) -> dict:
    seen: dict = {"usage": {"app-a": [], "app-b": []}}
    a = AsyncClient(target, token="tok-a", timeout=60)
    b = AsyncClient(target, token="tok-b", timeout=60)
    c = AsyncClient(target, token="tok-c", timeout=60)
    try:
        # app-a: a document twice (the second run hits the cache), a chat, a count, an invalid request
        for _ in range(2):
            usage, _ = await _complete(a, DOC + " " + SECRET, max_tokens=6, ignore_eos=True, request_id="doc-run")
            seen["usage"]["app-a"].append(usage)
        usage, _ = await _complete(a, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=4,
                                   ignore_eos=True)
        seen["usage"]["app-a"].append(usage)
        seen["count_a"] = (await a.count_tokens("How many tokens is this?")).num_tokens
        stub = generation_pb2_grpc.GenerationStub(a.channel)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Generate(generation_pb2.GenerateRequest(prompt="x", sampling={"max_tokens": 10**6}),
                                metadata=a.metadata).read()
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # app-b: one finished, one cancelled after its first tokens
        usage, _ = await _complete(b, "Count: 1, 2, 3,", max_tokens=5, ignore_eos=True)
        seen["usage"]["app-b"].append(usage)
        cancel_prompt = "Tell me a very long story about a dragon."
        seen["cancel_prompt_tokens"] = (await b.count_tokens(cancel_prompt)).num_tokens
        streamed = 0
        async for chunk in b.generate(cancel_prompt, max_tokens=400, ignore_eos=True):
            streamed += len(chunk.token_ids)
            if streamed >= 2:
                break
        seen["cancel_streamed"] = streamed

        # app-c: max_waiting = 0, so admission refuses it
        with pytest.raises(ResourceExhausted):
            await _complete(c, "Hello", max_tokens=4)
    finally:
        for client in (a, b, c):
            await client.close()
    return seen


def _wait_for(port: int, name: str, want: float, timeout: float = 15.0, **labels: str):
    """The cancelled call is counted when the server's task ends, just after the client leaves."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if value(samples, name, **labels) >= want or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def test_counters_agree_with_clients(metrics_daemon):
    d, port = metrics_daemon
    seen = asyncio.run(_workload(d.target))
    s = _wait_for(port, "slmd_e2e_request_latency_seconds_count", 5)
    s = _wait_for(port, "slmd_requests_total", 1, app="app-b", code="CANCELLED")
    ua, ub = seen["usage"]["app-a"], seen["usage"]["app-b"]

    # requests, by app, method, intent and status code
    req = "slmd_requests_total"
    assert value(s, req, app="app-a", method="Generate", intent="generate", code="OK") == 2
    assert value(s, req, app="app-a", method="Generate", intent="chat", code="OK") == 1
    assert value(s, req, app="app-a", method="Generate", code="INVALID_ARGUMENT") == 1
    assert value(s, req, app="app-a", method="CountTokens", intent="count", code="OK") == 1
    assert value(s, req, app="app-b", method="Generate", code="OK") == 1
    assert value(s, req, app="app-b", method="Generate", code="CANCELLED") == 1
    assert value(s, req, app="app-b", method="CountTokens", code="OK") == 1
    assert value(s, req, app="app-c", method="Generate", code="RESOURCE_EXHAUSTED") == 1
    assert value(s, req, method="Generate") == 7
    assert value(s, "slmd_rejections_total", reason="app_queue_full") == 1
    assert value(s, "slmd_rejections_total") == 1

    # tokens: exactly what app-a's clients were told; app-b adds its cancelled request
    assert ua[1].cached_prompt_tokens > 0, "the repeated document should hit the prefix cache"
    assert value(s, "slmd_prompt_tokens_total", app="app-a") == sum(u.prompt_tokens for u in ua)
    assert value(s, "slmd_generation_tokens_total", app="app-a") == sum(u.completion_tokens for u in ua) == 16
    assert value(s, "slmd_prompt_cached_tokens_total", app="app-a") == sum(u.cached_prompt_tokens for u in ua)
    assert value(s, "slmd_prompt_tokens_total", app="app-b") == ub[0].prompt_tokens + seen["cancel_prompt_tokens"]
    gen_b = value(s, "slmd_generation_tokens_total", app="app-b")
    assert ub[0].completion_tokens + seen["cancel_streamed"] <= gen_b < ub[0].completion_tokens + 400
    assert value(s, "slmd_prompt_tokens_total", app="app-c") == 0
    hits = value(s, "slmd_prefix_cache_hit_tokens_total")
    assert hits >= sum(u.cached_prompt_tokens for u in ua)
    assert value(s, "slmd_prefix_cache_query_tokens_total") >= sum(u.prompt_tokens for u in ua + ub)

    # histograms: one observation per request that ran, one gap per token after the first
    for name in ("slmd_e2e_request_latency_seconds_count", "slmd_request_queue_seconds_count",
                 "slmd_time_to_first_token_seconds_count"):
        assert value(s, name, app="app-a", priority="normal") == 3, name
        assert value(s, name, app="app-b", priority="normal") == 2, name
        assert value(s, name, app="app-c") == 0, name
    assert value(s, "slmd_inter_token_latency_seconds_count", app="app-a") == sum(u.completion_tokens - 1 for u in ua)
    assert value(s, "slmd_e2e_request_latency_seconds_sum", app="app-a") >= sum(u.total_seconds for u in ua) * 0.99
    inf = value(s, "slmd_e2e_request_latency_seconds_bucket", app="app-a", le="+Inf")
    assert inf == 3

    # gauges, once everything is done
    assert value(s, "slmd_requests_running") == 0
    assert value(s, "slmd_requests_waiting") == 0
    assert value(s, "slmd_model_loaded") == 1
    assert value(s, "slmd_model_loads_total") == 1
    assert 0 < value(s, "slmd_kv_usage_ratio") <= 1  # the cache keeps finished prompts
    assert value(s, "slmd_kv_streams", state="cached") >= 1
    assert value(s, "slmd_process_resident_memory_bytes") > 50 << 20

    # Admin.Status tells the same story
    async def status():
        async with AsyncClient(d.target, token="tok-a") as client:
            return await client.status()

    st = asyncio.run(status())
    apps = {a.app_id: a for a in st.apps}
    assert st.app_id == "app-a" and st.model_loaded
    assert apps["app-a"].requests == 3
    assert apps["app-a"].prompt_tokens == sum(u.prompt_tokens for u in ua)
    assert apps["app-a"].generated_tokens == 16
    assert apps["app-a"].cached_tokens == ua[1].cached_prompt_tokens + ua[0].cached_prompt_tokens
    # the fair-share unit: uncached prompt tokens, and each output fed back (a request's last one may not be)
    computed = apps["app-a"].prompt_tokens - apps["app-a"].cached_tokens + apps["app-a"].generated_tokens
    assert computed - apps["app-a"].requests <= apps["app-a"].scheduled_tokens <= computed
    assert value(s, "slmd_scheduled_tokens_total", app="app-a") <= apps["app-a"].scheduled_tokens
    assert apps["app-b"].requests == 2
    assert st.cache.hit_tokens == hits and st.cache.enabled
    assert [q.priority for q in st.queues] == ["interactive", "normal", "background"]
    assert st.memory.rss_bytes > 0 and st.memory.kv_bytes > 0 and 0 < st.memory.kv_usage_ratio <= 1

    # logs: JSON, a request id on every line from the daemon's own loggers, no prompt text
    log = d.log_text()
    assert SECRET not in log
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert records and all("request_id" in r and "app_id" in r for r in records)
    finished = [r for r in records if r["request_id"] == "doc-run" and r["logger"] == "slmd.core"]
    assert len(finished) == 2 and all(r["app_id"] == "app-a" for r in finished)


def test_metrics_not_on_the_app_socket(metrics_daemon):
    d, port = metrics_daemon
    assert scrape(port)  # it is served on loopback HTTP ...
    # ... but a gRPC call on the apps' socket cannot reach it
    with grpc.insecure_channel(d.target) as ch:
        call = ch.unary_unary("/metrics", request_serializer=lambda x: x, response_deserializer=lambda x: x)
        with pytest.raises(grpc.RpcError) as e:
            call(b"", metadata=(("authorization", "Bearer tok-a"),), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # ... nor an HTTP/1.1 GET on it
    got = raw_unix_exchange(d.socket, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert not got.startswith(b"HTTP/1.1 200") and b"slmd_requests_total" not in got


def test_metrics_can_be_turned_off(daemon_factory, default_model, tmp_path):
    port = _free_port()
    d = daemon_factory(default_model, "--threads", "1", "--metrics-port", "0")
    assert "metrics http" not in d.log_text()
    cfg = tmp_path / "off.toml"
    cfg.write_text(f"[metrics]\nenabled = false\nport = {port}\n")
    d2 = daemon_factory(default_model, "--threads", "1", "--config", str(cfg))
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    assert d2.proc.poll() is None


def test_dashboard_uses_only_exported_metrics(metrics_daemon):
    """packaging/grafana/slmd-dashboard.json queries nothing the daemon does not export."""
    _, port = metrics_daemon
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    exported = {name for name, _ in scrape(port)} | set(re.findall(r"^# TYPE (\S+)", text, re.M))
    dash = json.loads((ROOT / "packaging" / "grafana" / "slmd-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\bslmd_[a-z0-9_]+", e)}
    assert len(exprs) >= 20 and used
    assert used <= exported, sorted(used - exported)
