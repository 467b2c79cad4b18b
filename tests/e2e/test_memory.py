"""Memory pressure and the model's lifecycle, end to end: a real daemon
(`--threads 1`, the default model), pressure driven by the Admin RPC or by a
fake cgroup directory, memory measured as the daemon's RSS.

- keep_alive: a request's override unloads the idle model, RSS drops, health
  stays SERVING, a grammar is still checked, and the next request reloads.
- moderate: cache holders dropped, background refused with RetryInfo,
  other work served.
- critical with requests in flight: the context is recreated with one KV
  stream at once (RSS drops while the requests still run), every request
  completes or ends with a clear status, the model unloads once idle, the
  next request succeeds on a smaller context, and the full one comes back
  when the pressure passes.
- moderate and critical drop open documents' derived state (per-part
  summaries): the next long summary recomputes every part, and succeeds.
- a fake cgroup memory.events file drives the levels up and, after the calm
  period, back down.
- only operators may signal."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from slmd_client import AsyncClient, Client, FinishReason, InvalidArgument, PermissionDenied, ResourceExhausted

pytestmark = [pytest.mark.e2e, pytest.mark.default_model]

COUNTING = "1, 2, 3, 4, 5, 6, 7, 8,"  # greedy decoding keeps counting


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{") and line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def _wait_for(pred, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _start(daemon_factory, default_model, *args: str, env: dict | None = None):
    return daemon_factory(default_model, "--threads", "1", *args, env={"SLMD_MEMORY__PSI": "false", **(env or {})})


def test_keep_alive_unloads_and_the_next_request_reloads(daemon_factory, default_model):
    port = _free_port()
    d = _start(daemon_factory, default_model, "--max-running", "4", "--metrics-port", str(port))
    with Client(d.target) as c:
        first = c.complete(COUNTING, max_tokens=8, keep_alive=0.5)
        assert first.finish_reason == FinishReason.LENGTH
        loaded_rss = rss_bytes(d.proc.pid)
        _wait_for(lambda: not c.status().model_loaded, 10, "the keep_alive unload")
        unloaded_rss = rss_bytes(d.proc.pid)
        # weights unmapped and KV buffers freed: measured 600 MB -> 180 MB
        assert unloaded_rss < 0.6 * loaded_rss, (loaded_rss, unloaded_rss)
        assert c.health()  # still SERVING: it reloads on demand
        with pytest.raises(InvalidArgument, match="grammar"):  # checked against the vocabulary alone
            c.complete("x", max_tokens=4, grammar="root ::= (")
        assert not c.status().model_loaded
        again = c.complete(COUNTING, max_tokens=8)  # the daemon's default keep_alive: -1, stays loaded
        assert again.text == first.text  # same model, same greedy output after the reload
        assert c.status().model_loaded
        assert c.complete("Say yes", max_tokens=8, json_schema={"type": "boolean"}).text.strip() in ("true", "false")
        time.sleep(1.0)
        assert c.status().model_loaded
    assert _metric(port, "slmd_model_unloads_total") == 1
    assert _metric(port, "slmd_model_loads_total") == 2


def test_moderate_drops_caches_and_sheds_background(daemon_factory, default_model):
    d = _start(daemon_factory, default_model, "--max-running", "4", env={"SLMD_MEMORY__CALM_SECONDS": "7"})
    with Client(d.target) as c:
        prompt = COUNTING * 4  # long enough for the prefix cache to keep
        c.complete(prompt, max_tokens=4)
        assert c.status().cache.device_entries >= 1
        assert c.signal_memory_pressure("running_moderate") == "moderate"
        _wait_for(lambda: c.status().cache.device_entries == 0, 5, "the holders to be dropped")  # engine thread
        st = c.status()
        assert st.memory_pressure == "moderate" and st.model_loaded and st.cache.evictions_device >= 1
        with pytest.raises(ResourceExhausted, match="memory pressure") as e:
            c.complete(prompt, max_tokens=4, priority="background")
        assert e.value.retry_after == pytest.approx(7)
        assert c.complete(prompt, max_tokens=4, priority="normal").finish_reason == FinishReason.LENGTH
        assert c.signal_memory_pressure("none") == "none"
        assert c.complete(prompt, max_tokens=4, priority="background").finish_reason == FinishReason.LENGTH


async def _run(client: AsyncClient, priority: str, max_tokens: int):
    try:
        return await client.complete(COUNTING, max_tokens=max_tokens, priority=priority, ignore_eos=True)
    except Exception as e:  # recorded: the test decides which errors are clean
        return e


async def _status_until(client: AsyncClient, pred, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not pred(await client.status()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_critical_with_requests_in_flight(daemon_factory, default_model):
    d = _start(daemon_factory, default_model, "--max-running", "4")
    n = 48

    async def main():
        async with AsyncClient(d.target) as c:
            first = asyncio.create_task(_run(c, "background", n))  # running, then paused for the others
            await _status_until(c, lambda s: s.running_requests == 1)
            tasks = [asyncio.create_task(_run(c, p, n)) for p in ("interactive", "interactive", "normal", "normal")]
            await _status_until(c, lambda s: s.running_requests == 4 and s.waiting_requests == 1)
            waiting = asyncio.create_task(_run(c, "background", n))  # queued: shed with a retry delay
            await _status_until(c, lambda s: s.waiting_requests == 2)
            loaded_rss = rss_bytes(d.proc.pid)
            assert await c.signal_memory_pressure("running_critical") == "critical"
            # KV given back at once: the requests in flight resume on a one-stream context
            await _status_until(c, lambda s: s.num_sequences == 1 and s.model_loaded and s.running_requests == 1, 20)
            busy_rss = rss_bytes(d.proc.pid)
            results = await asyncio.gather(first, *tasks, waiting)
            await _status_until(c, lambda s: not s.model_loaded, 10)  # idle under critical: unloaded
            unloaded_rss = rss_bytes(d.proc.pid)
            after = await c.complete(COUNTING, max_tokens=8)  # lazy reload, still under critical
            small_rss = rss_bytes(d.proc.pid)  # reloaded with a one-stream context
            assert (await c.status()).memory_pressure == "critical"
            await c.signal_memory_pressure("none")
            await _status_until(c, lambda s: s.model_loaded and s.num_sequences == 8, 20)  # 2 x max_running
            full = await c.complete(COUNTING, max_tokens=8)
            assert full.text == after.text
            return results, loaded_rss, busy_rss, unloaded_rss, small_rss, after

    results, loaded_rss, busy_rss, unloaded_rss, small_rss, after = asyncio.run(main())
    *done, shed = results
    for r in done:  # paused, never dropped: every accepted running request completes in full
        assert not isinstance(r, Exception), r
        assert r.finish_reason == FinishReason.LENGTH and r.usage.completion_tokens == n
    assert isinstance(shed, ResourceExhausted) and shed.retry_after and shed.retry_after > 0, shed
    print(f"RSS MiB: loaded {loaded_rss >> 20}, critical busy {busy_rss >> 20}, unloaded {unloaded_rss >> 20}, "
          f"1-stream {small_rss >> 20}")
    assert busy_rss < 0.75 * loaded_rss, (loaded_rss, busy_rss)  # measured 8 streams x 2048: ~600 -> ~340 MiB
    assert unloaded_rss < 0.6 * loaded_rss, (loaded_rss, unloaded_rss)
    assert small_rss < 0.75 * loaded_rss, (loaded_rss, small_rss)
    assert after.finish_reason == FinishReason.LENGTH
    log = d.log_text()
    assert "memory pressure critical: batch 1" in log and "model unloaded: memory pressure critical" in log
    assert "KV context recreated: 8 -> 1 streams" in log


def test_pressure_drops_document_state(daemon_factory, default_model):
    from tests.e2e import long_document

    # 32-token chunks and a 160-token budget: a one-page document is map-reduced in a few parts
    d = _start(daemon_factory, default_model, "--max-running", "2",
               env={"SLMD_DOCS__CHUNK_TOKENS": "32", "SLMD_DOCS__MAX_CHUNKS": "5"})
    with Client(d.target, timeout=240) as c:
        docs = c.documents
        doc = docs.open(long_document.pages()[0], filename="notes.txt")

        def summary() -> tuple[int, int]:
            result = docs.collect(docs.summarize(doc))
            assert result.text.strip() and result.finish_reason is not None
            return result.progress[-1].num_parts, result.progress[-1].num_cached_parts

        num_parts, cached = summary()
        assert num_parts >= 3 and cached == 0
        assert summary() == (num_parts, num_parts)  # the parts are kept in the document's state
        assert c.signal_memory_pressure("running_moderate") == "moderate"
        assert summary() == (num_parts, 0)  # dropped: every part recomputed, still served
        assert summary() == (num_parts, num_parts)
        assert c.signal_memory_pressure("running_critical") == "critical"
        assert summary() == (num_parts, 0)
        assert docs.collect(docs.ask(doc, "What is this page about?", max_tokens=8)).text.strip()
    assert d.log_text().count("bytes of document state dropped") == 2


def test_cgroup_events_file_drives_the_levels(daemon_factory, default_model, tmp_path: Path):
    cg = tmp_path / "cgroup"
    cg.mkdir()
    events = cg / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    port = _free_port()
    d = _start(daemon_factory, default_model, "--max-running", "2", "--metrics-port", str(port), env={
        "SLMD_MEMORY__CGROUP_DIR": str(cg), "SLMD_MEMORY__POLL_SECONDS": "0.1", "SLMD_MEMORY__CALM_SECONDS": "1.5"})
    with Client(d.target) as c:
        events.write_text("low 0\nhigh 3\nmax 0\noom 0\noom_kill 0\n")  # the kernel throttled us at memory.high
        _wait_for(lambda: c.status().memory_pressure == "moderate", 5, "moderate")
        _wait_for(lambda: c.status().memory_pressure == "none", 5, "the calm period")
        events.write_text("low 0\nhigh 3\nmax 1\noom 0\noom_kill 0\n")  # hit memory.max
        _wait_for(lambda: not c.status().model_loaded, 5, "the critical unload")
        assert c.complete(COUNTING, max_tokens=4).finish_reason == FinishReason.LENGTH
    assert _metric(port, 'slmd_memory_pressure_events_total{level="moderate"}') >= 1
    assert _metric(port, 'slmd_memory_pressure_events_total{level="critical"}') >= 1


def test_only_operators_may_signal(daemon_factory, default_model):
    tokens = {"app-token": "notes", "ops-token": "ops"}
    d = _start(daemon_factory, default_model, "--max-running", "2",
               env={"SLMD_AUTH__TOKENS": json.dumps(tokens), "SLMD_APPS__OPS__ADMIN": "true"})
    with Client(d.target, token="app-token") as app:
        with pytest.raises(PermissionDenied):
            app.signal_memory_pressure("complete")
        assert app.status().memory_pressure == "none"
    with Client(d.target, token="ops-token") as ops:
        assert ops.signal_memory_pressure("background") == "moderate"
    with Client(d.target) as me:  # the daemon's own uid over the Unix socket
        assert me.signal_memory_pressure("none") == "none"
        with pytest.raises(ValueError):
            me.signal_memory_pressure("panic")
    slm = "import sys; from slmd_client.cli import main; sys.exit(main())"  # as the `slm` entry point runs it
    cli = subprocess.run([sys.executable, "-c", slm, "memory-pressure", "running_moderate", "--socket", str(d.socket)],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and cli.stdout.strip() == "moderate", cli.stderr
