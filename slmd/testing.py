"""Running a real `slmd serve` subprocess, for the tests and the benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from slmd.paths import default_data_dir


@dataclass
class DaemonProc:
    proc: subprocess.Popen
    socket: Path
    log: Path
    args: list[str] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"unix:{self.socket}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_daemon(tmp: Path, model: Path, *extra: str, env: dict | None = None, timeout: float = 90,
                 cwd: Path | None = None) -> DaemonProc:
    """Start `python -m slmd serve` and wait until health says SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    sock = tmp / "slmd.sock"
    log = tmp / "slmd.log"
    args = [sys.executable, "-m", "slmd", "serve", "--model", str(model), "--socket", str(sock), *extra]
    full_env = {**os.environ, "SLMD_DATA_DIR": str(default_data_dir()), **(env or {})}
    full_env.pop("SLMD_CONFIG", None)
    proc = subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=full_env, cwd=cwd)
    d = DaemonProc(proc, sock, log, args)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"slmd exited with {proc.returncode}:\n{d.log_text()[-3000:]}")
        if sock.exists():
            try:
                with grpc.insecure_channel(d.target) as ch:
                    r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return d
            except grpc.RpcError:
                pass
        time.sleep(0.1)
    d.stop(signal.SIGKILL)
    raise RuntimeError(f"slmd did not become ready in {timeout}s:\n{d.log_text()[-3000:]}")


def raw_unix_exchange(path: Path, data: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes (not gRPC) to a Unix socket; everything it answers until
    it closes, resets or goes quiet for `timeout` seconds."""
    got = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(data)
        try:
            while chunk := s.recv(65536):
                got += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    return got
