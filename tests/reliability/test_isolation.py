"""Isolation and identity: no app gets into another's data, or learns about it.

- A process outside the socket's group cannot connect (the socket is 0660);
  the same uid inside the group can, is identified by the kernel's peer
  credentials (an `[apps.*] uids` rule), and cannot bypass the relay to reach
  gRPC's private socket. A client-sent app name changes nothing.
- Prefix cache: app B gets zero cached tokens on app A's document (raw
  prompt and document task), and B's time to first token on A's document is
  statistically indistinguishable from B's on a fresh document of the same
  length (two-sample Kolmogorov-Smirnov over SLMD_ISOLATION_SAMPLES, default
  200, pairs), while A's own repeat is clearly faster (the control that shows
  the test can see a cache hit).
- Documents: B can neither use nor close A's document id.
- TCP: every method without a valid token is UNAUTHENTICATED.
- /metrics (loopback HTTP) is not served on the apps' socket."""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest

from slmd.testing import raw_unix_exchange
from slmd.tokenizer import Tokenizer
from slmd_client._proto.slmd.v1 import (admin_pb2, admin_pb2_grpc, common_pb2, documents_pb2 as dpb, documents_pb2_grpc,
                                        generation_pb2, generation_pb2_grpc)
from tests.conftest import ROOT
from tests.reliability.conftest import free_port, record, start_with_config, status, threads

pytestmark = [pytest.mark.e2e, pytest.mark.default_model]

SAMPLES = int(os.environ.get("SLMD_ISOLATION_SAMPLES", "200"))
DOC_TOKENS = int(os.environ.get("SLMD_ISOLATION_DOC_TOKENS", "48"))  # long enough that a hit halves TTFT
NOBODY = 65534
TOKENS = {"tok-a": "app-a", "tok-b": "app-b"}


def _md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def sock_dir():
    """A directory anyone may traverse, so that only the socket's own mode
    decides who connects (pytest's tmp dirs are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="slmd-iso-"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def tcp_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def daemon(sock_dir, default_model, tcp_port, metrics_port):
    tokens = ", ".join(f'"{t}" = "{a}"' for t, a in TOKENS.items())
    cfg = (f"[auth]\ntokens = {{{tokens}}}\n\n[server.tcp]\nport = {tcp_port}\n\n"
           f"[apps.trusted]\nuids = [{NOBODY}]\n")
    d = start_with_config(sock_dir, default_model, cfg, "--threads", threads(), "--max-running", "2",
                          env={"SLMD_METRICS__PORT": str(metrics_port)})
    yield d
    assert d.stop() == 0, d.log_text()[-3000:]
    assert "Traceback" not in d.log_text()


# ---- who may connect -------------------------------------------------------

# Runs as nobody under the system python (the venv's interpreter lives under
# root's home): a raw connect, then, when the venv's packages are importable,
# a gRPC Status with a claimed app name.
_PROBE = r"""
import os, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("connect: EACCES"); sys.exit(0)
print("connect: ok")
try:
    import grpc
    from slmd_client._proto.slmd.v1 import admin_pb2, admin_pb2_grpc
except ImportError as e:
    print("grpc: missing", e); sys.exit(0)
with grpc.insecure_channel("unix:" + sys.argv[1]) as ch:
    st = admin_pb2_grpc.AdminStub(ch).Status(admin_pb2.StatusRequest(), metadata=(("x-slmd-app", "app-a"),), timeout=10)
print("app_id:", st.app_id)
"""


def _probe_as_nobody(path: Path | str, groups: list[int]) -> str:
    site = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"), None)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(
        str(p) for p in (site, ROOT / "clients" / "python") if p is not None)}
    p = subprocess.run([shutil.which("python3", path="/usr/bin:/bin") or sys.executable, "-c", _PROBE, str(path)],
                       user=NOBODY, group=NOBODY, extra_groups=groups, env=env, cwd="/",
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_outside_the_group_cannot_connect(daemon):
    gid = os.stat(daemon.socket).st_gid
    assert gid != NOBODY
    outside = _probe_as_nobody(daemon.socket, [])
    assert "connect: EACCES" in outside, outside

    inside = _probe_as_nobody(daemon.socket, [gid])
    assert "connect: ok" in inside, inside
    if "grpc: missing" not in inside:  # the kernel's uid, not the claimed name, picks the app
        assert "app_id: trusted" in inside, inside

    # gRPC's own socket sits in a 0700 directory: even a group member cannot skip the relay
    inner = next(daemon.socket.parent.glob(".slmd-*/grpc.sock"))
    assert "connect: EACCES" in _probe_as_nobody(inner, [gid])


def test_client_sent_app_name_is_ignored(daemon):
    for claimed in ("app-a", "trusted", "uid-0", "../app-b"):
        assert status(daemon.target).app_id == f"uid-{os.getuid()}"
        with grpc.insecure_channel(daemon.target) as ch:
            stub = generation_pb2_grpc.GenerationStub(ch)
            st = admin_pb2_grpc.AdminStub(ch).Status(admin_pb2.StatusRequest(), timeout=10,
                                                     metadata=(("x-slmd-app", claimed), ("x-app-id", claimed)))
            assert st.app_id == f"uid-{os.getuid()}", claimed
            stub.CountTokens(generation_pb2.CountTokensRequest(prompt="hi"), metadata=(("x-slmd-app", claimed),),
                             timeout=10)
    apps = {a.app_id for a in status(daemon.target).apps}
    assert "../app-b" not in apps


# ---- the prefix cache ------------------------------------------------------

def _word_tokens(tok: Tokenizer) -> list[str]:
    """Vocabulary entries that are one token: a space and 4-9 lowercase letters."""
    pat = re.compile(rb"^ [a-z]{4,9}$")
    words = sorted({tok.token_bytes(t).decode() for t in range(tok.n_vocab) if pat.match(tok.token_bytes(t))})
    return [w for w in words if len(tok.encode(w)) == 1]


def _documents(tok: Tokenizer, n: int, length: int, rng: random.Random) -> list[str]:
    """`n` documents of exactly `length` tokens whose first tokens all differ,
    so that no two share a cached prefix, not even of one token."""
    words = _word_tokens(tok)
    rng.shuffle(words)
    firsts, body = words[:n], words[n:n + 200]
    assert len(firsts) == n and len(body) == 200, "vocabulary too small"
    docs = [w + "".join(rng.choice(body) for _ in range(length - 1)) for w in firsts]
    for d in docs:
        assert len(tok.encode(d)) == length, d
    return docs


def ks_2samp(a: list[float], b: list[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov: statistic D and its asymptotic p-value."""
    a, b = sorted(a), sorted(b)
    n, m = len(a), len(b)
    i = j = 0
    d = 0.0
    while i < n and j < m:
        x = min(a[i], b[j])
        while i < n and a[i] == x:
            i += 1
        while j < m and b[j] == x:
            j += 1
        d = max(d, abs(i / n - j / m))
    ne = n * m / (n + m)
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return d, min(1.0, max(0.0, p))


async def _ttft(stub, prompt: str, token: str) -> tuple[float, int]:
    """Seconds to the first message of a one-token generation, and its cached tokens."""
    req = generation_pb2.GenerateRequest(prompt=prompt, sampling=common_pb2.SamplingParams(max_tokens=1, temperature=0))
    t0 = time.perf_counter()
    first, cached = None, -1
    async for msg in stub.Generate(req, metadata=_md(token), timeout=60):
        first = first or time.perf_counter() - t0
        if msg.finish_reason:
            cached = msg.usage.cached_prompt_tokens
    return first, cached


async def test_no_cache_hits_and_no_timing_signal_across_apps(daemon, default_model):
    tok = Tokenizer.from_gguf(default_model)
    rng = random.Random(11)
    docs = _documents(tok, 2 * SAMPLES, DOC_TOKENS, rng)
    docs_a, docs_fresh = docs[:SAMPLES], docs[SAMPLES:]
    before = status(daemon.target, "tok-b")
    cold_a, cross, fresh, warm_a = [], [], [], []
    async with grpc.aio.insecure_channel(daemon.target) as ch:
        stub = generation_pb2_grpc.GenerationStub(ch)
        await _ttft(stub, "warm up the daemon " * 4, "tok-a")
        for i in range(SAMPLES):
            t, cached = await _ttft(stub, docs_a[i], "tok-a")
            assert cached == 0, f"A's first run of document {i} was not cold ({cached} cached)"
            cold_a.append(t)
            order = [("cross", docs_a[i]), ("fresh", docs_fresh[i])]
            rng.shuffle(order)  # no systematic before/after between the two measurements
            for kind, doc in order:
                t, cached = await _ttft(stub, doc, "tok-b")
                assert cached == 0, f"app B got {cached} cached tokens on {'A' if kind == 'cross' else 'its'} document {i}"
                (cross if kind == "cross" else fresh).append(t)
            t, cached = await _ttft(stub, docs_a[i], "tok-a")
            assert cached >= DOC_TOKENS - 1, f"A's repeat of document {i} was not a hit ({cached} cached)"
            warm_a.append(t)
    after = status(daemon.target, "tok-b")
    app_b = next(a for a in after.apps if a.app_id == "app-b")
    assert app_b.cached_tokens == 0

    d_cross, p_cross = ks_2samp(cross, fresh)
    d_warm, p_warm = ks_2samp(warm_a, fresh)
    med = {k: statistics.median(v) * 1000 for k, v in
           (("b_on_a_doc", cross), ("b_fresh", fresh), ("a_cold", cold_a), ("a_repeat", warm_a))}
    record("isolation.timing", samples=SAMPLES, doc_tokens=DOC_TOKENS, ks_d_cross_vs_fresh=round(d_cross, 3),
           ks_p_cross_vs_fresh=round(p_cross, 3), ks_d_repeat_vs_fresh=round(d_warm, 3), ks_p_repeat_vs_fresh=p_warm,
           median_ms={k: round(v, 1) for k, v in med.items()},
           cache_hit_tokens_during_run=after.cache.hit_tokens - before.cache.hit_tokens)
    # the control: a cache hit is plainly visible in these measurements
    assert p_warm < 1e-6 and med["a_repeat"] < 0.5 * med["b_fresh"], med
    # and B sees none on A's documents
    assert p_cross > 0.01, f"B's TTFT on A's documents differs from cold (KS D={d_cross:.3f}, p={p_cross:.4f}): {med}"


async def test_documents_stay_with_their_app(daemon):
    text = ("The harbour master's ledger lists every ship: the Albatross arrived on Monday with timber, "
            "the Heron left on Tuesday with wool, and the Osprey waited for the tide. ") * 3
    async with grpc.aio.insecure_channel(daemon.target) as ch:
        docs = documents_pb2_grpc.DocumentsStub(ch)
        one = common_pb2.SamplingParams(max_tokens=1, temperature=0)
        opened = await docs.OpenDocument(dpb.OpenDocumentRequest(text=text), metadata=_md("tok-a"), timeout=60)
        doc_id = opened.document_id

        async def ask(source: dpb.DocumentSource, token: str) -> int:
            last = None
            async for m in docs.Ask(dpb.AskRequest(document=source, question="Which ship left on Tuesday?",
                                                   sampling=one), metadata=_md(token), timeout=60):
                last = m
            return last.usage.cached_prompt_tokens

        assert await ask(dpb.DocumentSource(document_id=doc_id), "tok-a") >= opened.info.num_prefix_tokens - 1
        assert await ask(dpb.DocumentSource(text=text), "tok-b") == 0  # the same text, B's own (cold) cache
        for call in (lambda: ask(dpb.DocumentSource(document_id=doc_id), "tok-b"),
                     lambda: docs.MeasureInput(dpb.MeasureInputRequest(document=dpb.DocumentSource(document_id=doc_id)),
                                               metadata=_md("tok-b"), timeout=10),
                     lambda: docs.CloseDocument(dpb.CloseDocumentRequest(document_id=doc_id), metadata=_md("tok-b"),
                                                timeout=10)):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call()
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        await docs.CloseDocument(dpb.CloseDocumentRequest(document_id=doc_id), metadata=_md("tok-a"), timeout=10)


# ---- TCP and metrics -------------------------------------------------------

_MINIMAL = {
    "/slmd.v1.Generation/Generate": generation_pb2.GenerateRequest(prompt="hi"),
    "/slmd.v1.Generation/CountTokens": generation_pb2.CountTokensRequest(prompt="hi"),
    "/slmd.v1.Admin/Status": admin_pb2.StatusRequest(),
    "/slmd.v1.Documents/OpenDocument": dpb.OpenDocumentRequest(text="a document"),
    "/slmd.v1.Documents/CloseDocument": dpb.CloseDocumentRequest(document_id="x"),
    "/slmd.v1.Documents/MeasureInput": dpb.MeasureInputRequest(document=dpb.DocumentSource(text="a document")),
    "/slmd.v1.Documents/Summarize": dpb.SummarizeRequest(document=dpb.DocumentSource(text="a document")),
    "/slmd.v1.Documents/SuggestQuestions": dpb.SuggestQuestionsRequest(document=dpb.DocumentSource(text="a doc")),
    "/slmd.v1.Documents/Ask": dpb.AskRequest(document=dpb.DocumentSource(text="a document"), question="why?"),
    "/slmd.v1.Documents/Assist": dpb.AssistRequest(document=dpb.DocumentSource(text="a document"), request="hi"),
}


@pytest.mark.parametrize("metadata", [None, (("authorization", "Bearer tok-c"),),
                                      (("authorization", "tok-a"),), (("x-slmd-app", "app-a"),)],
                         ids=["no token", "unknown token", "no Bearer scheme", "claimed app"])
def test_tcp_refuses_every_method_without_a_valid_token(daemon, tcp_port, metadata):
    raw = dict(request_serializer=lambda m: m.SerializeToString(), response_deserializer=lambda b: b)
    with grpc.insecure_channel(f"127.0.0.1:{tcp_port}") as ch:
        for path, req in _MINIMAL.items():
            streaming = path.endswith(("/Generate", "/Summarize", "/Ask", "/Assist"))
            call = (ch.unary_stream if streaming else ch.unary_unary)(path, **raw)
            with pytest.raises(grpc.RpcError) as info:
                out = call(req, metadata=metadata, timeout=10)
                if streaming:
                    list(out)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, (path, info.value)


def test_metrics_are_not_served_on_the_app_socket(daemon, metrics_port):
    import urllib.request

    assert b"slmd_requests_total" in urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    got = raw_unix_exchange(daemon.socket, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert b"slmd_" not in got and b"200 OK" not in got, got[:300]
    assert status(daemon.target).app_id  # the socket still serves gRPC
