"""Helpers shared by the reliability suite (issue 11): a daemon started with
a TOML config, Status readings, the "drained" condition, a free port, and a
figures file that tests/RELIABILITY.md is written from.

Every test here starts a real `slmd serve` on the default model; the load is
sized for 2 cores (see tests/RELIABILITY.md for the knobs)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from unittest import mock

import grpc
import pytest

from slmd.testing import DaemonProc, start_daemon
from slmd_client._proto.slmd.v1 import admin_pb2, admin_pb2_grpc
from tests.conftest import ROOT

FIGURES = ROOT / "build" / "reliability" / "figures.json"

# Status codes a request may end with that the README documents. Anything
# else (UNKNOWN, INTERNAL, a dropped connection) is a failure.
DOCUMENTED = frozenset({
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
})


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def threads(env: str = "SLMD_RELIABILITY_THREADS", default: int = 1) -> str:
    return os.environ.get(env, str(default))


# This suite's knobs (SLMD_SOAK_SECONDS, ...) are not daemon settings: they
# are kept out of the daemon's environment.
_KNOB_PREFIXES = ("SLMD_SOAK_", "SLMD_RELIABILITY_", "SLMD_FUZZ_", "SLMD_ISOLATION_")


def start_with_config(tmp: Path, model: Path, toml: str, *args: str, env: dict | None = None) -> DaemonProc:
    """A daemon with `toml` as its config file. /metrics is off unless `env`
    sets SLMD_METRICS__PORT (the default port would clash between daemons)."""
    cfg = tmp / "slmd.toml"
    cfg.write_text(toml)
    with mock.patch.dict(os.environ):
        for name in [n for n in os.environ if n.startswith(_KNOB_PREFIXES)]:
            del os.environ[name]
        return start_daemon(tmp, model, "--config", str(cfg), *args,
                            env={"SLMD_METRICS__PORT": "0", **(env or {})}, cwd=ROOT)


def status(target: str, token: str | None = None, timeout: float = 10) -> admin_pb2.StatusResponse:
    md = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(target) as ch:
        return admin_pb2_grpc.AdminStub(ch).Status(admin_pb2.StatusRequest(), metadata=md, timeout=timeout)


def kv_running_tokens(st: admin_pb2.StatusResponse) -> float:
    """KV cells held by requests (not by idle prefix-cache holders):
    kv_usage_ratio counts both; cache.device_tokens is the holders' part."""
    total = st.num_sequences * st.context_window
    return st.memory.kv_usage_ratio * total - st.cache.device_tokens


def wait_drained(target: str, timeout: float, poll: float = 0.02) -> tuple[float, admin_pb2.StatusResponse]:
    """Poll Status until nothing runs or waits and the KV cells in use are the
    cache holders' alone (the baseline). Returns (seconds it took, status);
    fails the test after `timeout` seconds."""
    t0 = time.monotonic()
    while True:
        st = status(target)
        if st.running_requests == 0 and st.waiting_requests == 0 and abs(kv_running_tokens(st)) < 0.5:
            return time.monotonic() - t0, st
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"not drained after {timeout}s: {st.running_requests} running, {st.waiting_requests} "
                        f"waiting, {kv_running_tokens(st):.0f} KV cells held by requests")
        time.sleep(poll)


def record(section: str, **figures) -> None:
    """Keep this run's figures (build/reliability/figures.json) for the report."""
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data[section] = {**figures, "recorded_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"\n[{section}] " + ", ".join(f"{k}={v}" for k, v in figures.items()))


@pytest.fixture
def no_traceback():
    """Asserts, at the end of a test, that no daemon it registered logged a traceback."""
    daemons: list[DaemonProc] = []
    yield daemons.append
    for d in daemons:
        assert "Traceback" not in d.log_text(), d.log_text()[-3000:]
