"""Soak: 32 concurrent clients of 8 apps hammer one daemon for
SLMD_SOAK_SECONDS (default 75) with a random mix of streaming and unary
calls, priorities, mid-stream cancels and short deadlines. Then:

- nothing is lost, duplicated or misrouted: every Generate message carries
  the request id of its own call; each call that was neither cancelled nor
  cut by its deadline ends with exactly one final message whose usage matches
  what was streamed, the prompt it sent and the max_tokens it asked for;
  CountTokens answers the count of the caller's own prompt and Status the
  caller's own app; the daemon's per-app call counters (/metrics) equal what
  the clients issued;
- after the load the daemon drains within 5 s: nothing running or waiting
  and no KV cell held by a request (cache holders are the baseline);
- RSS growth over the run is reported (and bounded: the host cache tier is
  capped at 32 MiB here, so a leak of requests or streams shows).

SLMD_SOAK_SECONDS lengthens the run; SLMD_SOAK_THREADS (default 2) sets the
daemon's llama.cpp threads; SLMD_SOAK_SEED makes the mix reproducible."""

from __future__ import annotations

import asyncio
import os
import random
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from slmd_client._proto.slmd.v1 import admin_pb2, admin_pb2_grpc, common_pb2, generation_pb2, generation_pb2_grpc
from tests.reliability.conftest import free_port, record, start_with_config, status, threads, wait_drained

pytestmark = [pytest.mark.e2e, pytest.mark.default_model, pytest.mark.slow]

NUM_APPS = 8
CLIENTS_PER_APP = 4
SOAK_SECONDS = float(os.environ.get("SLMD_SOAK_SECONDS", "75"))
SEED = int(os.environ.get("SLMD_SOAK_SEED", "1234"))
HOST_TIER_BYTES = int(os.environ.get("SLMD_SOAK_HOST_TIER_MIB", "32")) << 20
RSS_SLACK_BYTES = 128 << 20  # allocator and grpc buffers on top of the host tier
PRIORITIES = (common_pb2.PRIORITY_BACKGROUND, common_pb2.PRIORITY_NORMAL, common_pb2.PRIORITY_INTERACTIVE,
              common_pb2.PRIORITY_UNSPECIFIED)
WORDS = ("river stone lantern harbor maple copper violet orchard meadow signal thunder pebble winter "
         "falcon ribbon canyon saddle velvet marble cobalt").split()


def _token(app: int) -> str:
    return f"soak-token-{app}"


def _config() -> str:
    tokens = ", ".join(f'"{_token(a)}" = "app-{a}"' for a in range(NUM_APPS))
    apps = "".join(
        f'[apps.app-{a}]\nmax_concurrent = 16\nmax_waiting = 64\nweight = {1 + a % 3}\n'
        + ('max_priority = "normal"\n' if a >= 6 else "") + "\n"
        for a in range(NUM_APPS))
    return (f"[auth]\ntokens = {{{tokens}}}\n\n[cache]\nhost_bytes = {HOST_TIER_BYTES}\n\n"
            f"{apps}")


@dataclass
class Tally:
    """What the clients saw, checked and counted as they go."""

    calls: Counter = field(default_factory=Counter)  # (app, method) -> calls issued
    outcomes: Counter = field(default_factory=Counter)  # (kind, code) -> calls
    request_ids: set = field(default_factory=set)
    tokens: int = 0
    errors: list = field(default_factory=list)  # broken promises, reported at the end

    def fail(self, msg: str) -> None:
        self.errors.append(msg)


class SoakClient:
    def __init__(self, target: str, app: int, index: int, deadline: float, tally: Tally) -> None:
        self.app, self.index, self.deadline, self.tally = app, index, deadline, tally
        self.app_id = f"app-{app}"
        self.md = (("authorization", f"Bearer {_token(app)}"),)
        self.rng = random.Random(SEED * 1000 + app * CLIENTS_PER_APP + index)
        self.target = target
        # Prompts of this client alone (distinct lengths): a misrouted answer shows in its prompt_tokens.
        self.prompts = [f"Client {app}.{index} note {k}: " + " ".join(self.rng.choice(WORDS) for _ in range(4 + 3 * k))
                        for k in range(3)]
        self.expected_tokens: dict[str, int] = {}
        self.num_requests = 0

    async def run(self) -> None:
        async with grpc.aio.insecure_channel(self.target) as ch:
            self.gen = generation_pb2_grpc.GenerationStub(ch)
            self.admin = admin_pb2_grpc.AdminStub(ch)
            for p in self.prompts:
                self.expected_tokens[p] = (await self._count(p)).num_tokens
            while time.monotonic() < self.deadline:
                op = self.rng.random()
                if op < 0.45:
                    await self._generate("whole")
                elif op < 0.60:
                    await self._generate("cancel")
                elif op < 0.70:
                    await self._generate("deadline")
                elif op < 0.90:
                    await self._count_tokens()
                else:
                    await self._status()

    def _rid(self) -> str:
        self.num_requests += 1
        return f"{self.app_id}-c{self.index}-{self.num_requests}"

    async def _count(self, prompt: str) -> generation_pb2.CountTokensResponse:
        self.tally.calls[(self.app_id, "CountTokens")] += 1
        return await self.gen.CountTokens(generation_pb2.CountTokensRequest(prompt=prompt), metadata=self.md,
                                          timeout=60)

    async def _count_tokens(self) -> None:
        prompt = self.rng.choice(self.prompts)
        r = await self._count(prompt)
        self.tally.outcomes[("count", "OK")] += 1
        if r.num_tokens != self.expected_tokens[prompt]:
            self.tally.fail(f"{self.app_id}: CountTokens answered {r.num_tokens}, not {self.expected_tokens[prompt]}")

    async def _status(self) -> None:
        self.tally.calls[(self.app_id, "Status")] += 1
        st = await self.admin.Status(admin_pb2.StatusRequest(), metadata=self.md, timeout=60)
        self.tally.outcomes[("status", "OK")] += 1
        if st.app_id != self.app_id:
            self.tally.fail(f"Status for {self.app_id} answered app_id {st.app_id!r}")

    async def _generate(self, kind: str) -> None:
        rid, prompt = self._rid(), self.rng.choice(self.prompts)
        max_tokens = self.rng.randint(1, 12) if kind == "whole" else 48
        timeout = self.rng.uniform(0.05, 0.6) if kind == "deadline" else 120
        cancel_after = self.rng.randint(1, 3)
        req = generation_pb2.GenerateRequest(
            prompt=prompt, request_id=rid, priority=self.rng.choice(PRIORITIES),
            sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=self.rng.choice([0.0, 0.8]),
                                               seed=self.rng.getrandbits(32)))
        if rid in self.tally.request_ids:
            self.tally.fail(f"request id {rid} issued twice")
        self.tally.request_ids.add(rid)
        self.tally.calls[(self.app_id, "Generate")] += 1
        call = self.gen.Generate(req, metadata=self.md, timeout=timeout)
        msgs: list[generation_pb2.GenerateResponse] = []
        code = "OK"
        try:
            async for resp in call:
                msgs.append(resp)
                if kind == "cancel" and len(msgs) >= cancel_after:
                    call.cancel()
                    code = "CANCELLED"
                    break
        except grpc.aio.AioRpcError as e:
            code = e.code().name
        self.tally.outcomes[(kind, code)] += 1
        self._check_stream(rid, prompt, kind, code, max_tokens, msgs)

    def _check_stream(self, rid, prompt, kind, code, max_tokens, msgs) -> None:
        fail = self.tally.fail
        for m in msgs:
            if m.request_id != rid:
                fail(f"{rid}: got a message of {m.request_id!r}")
        finals = [i for i, m in enumerate(msgs) if m.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED]
        allowed = {"whole": {"OK"}, "deadline": {"OK", "DEADLINE_EXCEEDED"}, "cancel": {"OK", "CANCELLED"}}[kind]
        if code not in allowed:
            fail(f"{rid} ({kind}) ended with {code}")
            return
        if code != "OK":
            if finals:
                fail(f"{rid} ended {code} after its final message")
            return
        if finals != [len(msgs) - 1]:
            fail(f"{rid}: final messages at {finals} of {len(msgs)}")
            return
        last, streamed = msgs[-1], sum(len(m.token_ids) for m in msgs)
        self.tally.tokens += streamed
        u = last.usage
        if u.completion_tokens != streamed:
            fail(f"{rid}: usage says {u.completion_tokens} tokens, {streamed} were streamed")
        if u.prompt_tokens != self.expected_tokens[prompt]:
            fail(f"{rid}: prompt_tokens {u.prompt_tokens}, its prompt has {self.expected_tokens[prompt]}")
        if last.finish_reason == common_pb2.FINISH_REASON_LENGTH and streamed != max_tokens:
            fail(f"{rid}: LENGTH after {streamed} of {max_tokens} tokens")
        if streamed > max_tokens:
            fail(f"{rid}: {streamed} tokens for max_tokens={max_tokens}")


def _scrape(port: int) -> Counter:
    """slmd_requests_total summed by (app, method)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: Counter = Counter()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "slmd_requests_total":
                out[(s.labels["app"], s.labels["method"])] += int(s.value)
            if s.name == "slmd_kv_streams" and s.labels.get("state") == "running":
                out[("", "kv_streams_running")] += int(s.value)
    return out


async def _watchdog(target: str, patience: float = 20.0) -> None:
    """Fails fast when the engine stops making progress with work queued (a
    dead engine thread would otherwise show only as client deadlines)."""
    async with grpc.aio.insecure_channel(target) as ch:
        admin = admin_pb2_grpc.AdminStub(ch)
        last, since = -1, time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            st = await admin.Status(admin_pb2.StatusRequest(), timeout=30)
            busy = st.running_requests + st.waiting_requests > 0
            if st.generated_tokens_total != last or not busy:
                last, since = st.generated_tokens_total, time.monotonic()
            elif time.monotonic() - since > patience:
                raise AssertionError(f"no token generated for {patience:.0f} s with {st.running_requests} running "
                                     f"and {st.waiting_requests} waiting: the engine is stuck (see the daemon log)")


async def test_soak(tmp_path, default_model, no_traceback):
    port = free_port()
    d = start_with_config(tmp_path, default_model, _config(), "--threads", threads("SLMD_SOAK_THREADS", 2),
                          "--max-running", "8", env={"SLMD_METRICS__PORT": str(port)})
    no_traceback(d)
    try:
        rss_start = status(d.target).memory.rss_bytes
        tally = Tally()
        t0 = time.monotonic()
        clients = [SoakClient(d.target, a, i, t0 + SOAK_SECONDS, tally)
                   for a in range(NUM_APPS) for i in range(CLIENTS_PER_APP)]
        load = asyncio.gather(*(c.run() for c in clients), return_exceptions=True)
        watchdog = asyncio.create_task(_watchdog(d.target))
        await asyncio.wait({load, watchdog}, return_when=asyncio.FIRST_COMPLETED)
        if watchdog.done():
            load.cancel()
            raise watchdog.exception() or AssertionError("the watchdog ended")
        watchdog.cancel()
        results = load.result()
        load_seconds = time.monotonic() - t0
        crashed = [f"{c.app_id}.{c.index}: {r!r}" for c, r in zip(clients, results) if isinstance(r, BaseException)]
        assert not crashed, crashed[:5]

        drain_seconds, st = wait_drained(d.target, timeout=5.0)
        served = _scrape(port)
        rss_end = st.memory.rss_bytes
        assert d.proc.poll() is None, "the daemon died under load"

        assert not tally.errors, f"{len(tally.errors)} broken promises, first ones: {tally.errors[:10]}"
        for key, issued in sorted(tally.calls.items()):
            assert served[key] == issued, f"{key}: clients issued {issued} calls, the daemon counted {served[key]}"
        assert served[("", "kv_streams_running")] == 0
        whole = tally.outcomes[("whole", "OK")]
        assert whole >= len(clients), f"only {whole} whole generations: the load was too thin"
        assert tally.outcomes[("cancel", "CANCELLED")] > 0 and tally.outcomes[("deadline", "DEADLINE_EXCEEDED")] > 0
        growth = rss_end - rss_start
        record("soak", seconds=round(load_seconds, 1), clients=len(clients), apps=NUM_APPS,
               generate_calls=sum(n for (_, m), n in tally.calls.items() if m == "Generate"),
               unary_calls=sum(n for (_, m), n in tally.calls.items() if m != "Generate"),
               outcomes={f"{k}/{c}": n for (k, c), n in sorted(tally.outcomes.items())},
               tokens_streamed=tally.tokens, broken_promises=len(tally.errors),
               drain_seconds=round(drain_seconds, 3), rss_start_mib=round(rss_start / 2**20, 1),
               rss_end_mib=round(rss_end / 2**20, 1), rss_growth_mib=round(growth / 2**20, 1),
               preemptions=st.preemptions_total, cache_hit_ratio=round(st.cache.hit_ratio, 3),
               threads=threads("SLMD_SOAK_THREADS", 2))
        assert growth < HOST_TIER_BYTES + RSS_SLACK_BYTES, f"RSS grew by {growth / 2**20:.0f} MiB"
    finally:
        assert d.stop() == 0, d.log_text()[-3000:]
