"""llama.cpp's own `llama-server`, built from the sources vendored in the
llama-cpp-python sdist (the same llama.cpp that slmd links), for comparing
slmd with it on the same GGUF.

    .venv/bin/python -m benchmarks.llama_server build
    .venv/bin/python -m benchmarks.llama_server smoke [--model PATH]

`build` downloads the sdist into build/llama-cpp-sdist/ (or reuses a copy),
configures a CPU-only, statically linked server in build/llama-server/ and
builds the one target; a finished build is reused. `LlamaServer` starts it on
a free loopback port and streams completions with a minimal stdlib HTTP
client (no extra dependency; the server speaks HTTP/1.1 with SSE).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import slmd.runtime  # noqa: F401  (OpenMP's wait for this process and the llama-server it starts, as the daemon's)

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
SDIST_VERSION = "0.3.36"  # keep equal to the llama-cpp-python pin in pyproject.toml
SDIST_NAME = f"llama_cpp_python-{SDIST_VERSION}"
SDIST_CACHE = BUILD / "llama-cpp-sdist"
SERVER_BUILD = BUILD / "llama-server"
# A copy of the sdist that a machine's setup may already hold (saves the download).
SDIST_ELSEWHERE = (Path(tempfile.gettempdir()) / "setup" / "sdist" / f"{SDIST_NAME}.tar.gz",)


def binary_path() -> Path:
    return SERVER_BUILD / "bin" / "llama-server"


def _sdist() -> Path:
    cached = SDIST_CACHE / f"{SDIST_NAME}.tar.gz"
    if cached.exists():
        return cached
    for p in SDIST_ELSEWHERE:
        if p.exists():
            return p
    SDIST_CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    f"llama-cpp-python=={SDIST_VERSION}", "-d", str(SDIST_CACHE)], check=True)
    return cached


def _llama_cpp_source() -> Path:
    """llama.cpp's source from the sdist, with the fixes slmd's own build gets
    (packaging/llama-cpp/patch.py: without them it crashes on CPUs with AMX)."""
    root = SDIST_CACHE / SDIST_NAME
    src = root / "vendor" / "llama.cpp"
    patched = root / ".slmd-patched"
    if not patched.exists():
        shutil.rmtree(root, ignore_errors=True)
        SDIST_CACHE.mkdir(parents=True, exist_ok=True)
        with tarfile.open(_sdist()) as tf:
            members = [m for m in tf.getmembers() if m.name.startswith(f"{SDIST_NAME}/vendor/llama.cpp/")]
            tf.extractall(SDIST_CACHE, members=members, filter="data")
        subprocess.run([sys.executable, str(ROOT / "packaging" / "llama-cpp" / "patch.py"), str(root)], check=True)
        shutil.rmtree(SERVER_BUILD, ignore_errors=True)  # built from unpatched sources
        patched.touch()
    return src


def build(jobs: int = 2) -> Path:
    """Build llama-server once (CPU only, static); return the binary's path."""
    if binary_path().exists():
        return binary_path()
    src = _llama_cpp_source()
    configure = ["cmake", "-S", str(src), "-B", str(SERVER_BUILD), "-DCMAKE_BUILD_TYPE=Release",
                 "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_CURL=OFF",
                 "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF",
                 # no network at build time, nothing we do not measure
                 "-DLLAMA_OPENSSL=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_UI=OFF",
                 "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DGGML_CUDA=OFF"]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    subprocess.run(configure, check=True)
    subprocess.run(["cmake", "--build", str(SERVER_BUILD), "--target", "llama-server", f"-j{jobs}"], check=True)
    return binary_path()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Completion:
    """One streamed completion, as the client saw it."""
    text: str = ""
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens the server reused from a slot's KV
    num_generated_tokens: int = 0
    ttft_seconds: float = 0.0
    total_seconds: float = 0.0
    token_times: list[float] = field(default_factory=list)  # perf_counter stamp of each streamed token


class LlamaServer:
    """`with LlamaServer(model) as srv:` runs llama-server on a free loopback
    port until the block ends; `await srv.complete(...)` streams one request."""

    def __init__(self, model: Path, *, parallel: int = 4, ctx_per_slot: int = 2048, threads: int = 0,
                 binary: Path | None = None, extra_args: tuple[str, ...] = (), log_path: Path | None = None,
                 startup_timeout: float = 120.0) -> None:
        self.model, self.parallel, self.ctx_per_slot = Path(model), parallel, ctx_per_slot
        self.threads = threads or os.cpu_count() or 1
        self.binary = binary or build()
        self.extra_args, self.log_path, self.startup_timeout = extra_args, log_path, startup_timeout
        self.port = 0
        self._proc: subprocess.Popen | None = None
        self._log = None

    def __enter__(self) -> "LlamaServer":
        self.port = free_port()
        args = [str(self.binary), "-m", str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
                "--parallel", str(self.parallel), "-c", str(self.parallel * self.ctx_per_slot),
                "--threads", str(self.threads), "--threads-batch", str(self.threads), *self.extra_args]
        env = dict(os.environ)  # (with OpenMP's wait as importing slmd.runtime set it)
        self._log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_healthy()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self._proc.returncode} (log: {self.log_path})")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError("llama-server did not become healthy")

    def __exit__(self, *exc) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()

    async def complete(self, prompt: str, *, max_tokens: int, ignore_eos: bool = True,
                       cache_prompt: bool = True) -> Completion:
        """Greedy completion of a raw prompt via the native `/completion`
        endpoint (the prompt is already templated, as slmd's chat path does)."""
        body = {"prompt": prompt, "n_predict": max_tokens, "temperature": 0.0, "top_k": 1,
                "ignore_eos": ignore_eos, "cache_prompt": cache_prompt, "stream": True}
        return await self._stream("/completion", body)

    async def chat(self, messages: list[dict], *, max_tokens: int, ignore_eos: bool = True) -> Completion:
        """Greedy chat completion via the OpenAI-compatible endpoint (the
        server applies the GGUF's chat template)."""
        body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "top_k": 1,
                "ignore_eos": ignore_eos, "cache_prompt": True, "stream": True,
                "stream_options": {"include_usage": True}, "timings_per_token": False}
        return await self._stream("/v1/chat/completions", body)

    async def _stream(self, path: str, body: dict) -> Completion:
        out = Completion()
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            payload = json.dumps(body).encode()
            writer.write((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          f"Accept: text/event-stream\r\nContent-Length: {len(payload)}\r\n"
                          f"Connection: close\r\n\r\n").encode() + payload)
            await writer.drain()
            status = (await reader.readline()).decode()
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                k, _, v = line.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            if " 200 " not in status:
                raise RuntimeError(f"llama-server {path}: {status.strip()} {await reader.read(2000)!r}")
            async for event in _sse_events(reader, headers.get("transfer-encoding") == "chunked"):
                if event == "[DONE]":
                    break
                self._absorb(out, json.loads(event), t0)
        finally:
            writer.close()
        out.total_seconds = time.perf_counter() - t0
        return out

    @staticmethod
    def _absorb(out: Completion, msg: dict, t0: float) -> None:
        now = time.perf_counter()
        if "choices" in msg:  # OpenAI-compatible chunk
            for ch in msg["choices"]:
                piece = (ch.get("delta") or {}).get("content") or ch.get("text") or ""
                if piece:
                    out.text += piece
                    out.token_times.append(now)
            usage = msg.get("usage")
            if usage:
                out.num_prompt_tokens = usage.get("prompt_tokens", 0)
                out.num_generated_tokens = usage.get("completion_tokens", 0)
                out.num_cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        else:  # native /completion chunk: one token per chunk while streaming
            if msg.get("content") or not msg.get("stop"):
                out.text += msg.get("content", "")
                out.token_times.append(now)
            if msg.get("stop"):
                out.num_prompt_tokens = msg.get("tokens_evaluated", 0)
                out.num_generated_tokens = msg.get("tokens_predicted", 0)
                out.num_cached_tokens = msg.get("tokens_cached", 0)
                t = msg.get("timings") or {}
                if "cache_n" in t:
                    out.num_cached_tokens = t["cache_n"]
                if "prompt_n" in t:
                    out.num_prompt_tokens = t["prompt_n"] + t.get("cache_n", 0)
        if out.token_times and not out.ttft_seconds:
            out.ttft_seconds = out.token_times[0] - t0


async def _sse_events(reader: asyncio.StreamReader, chunked: bool):
    """`data:` payloads of a server-sent event stream, de-chunked."""
    buf = b""
    while True:
        if chunked:
            size_line = await reader.readline()
            if not size_line:
                break
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            data = await reader.readexactly(size)
            await reader.readexactly(2)
        else:
            data = await reader.read(65536)
            if not data:
                break
        buf += data
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    yield line[5:].strip().decode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build llama-server (reused when present)")
    b.add_argument("-j", "--jobs", type=int, default=2)
    s = sub.add_parser("smoke", help="start llama-server and stream one completion")
    s.add_argument("--model", type=Path, default=None)
    s.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.cmd == "build":
        print(build(args.jobs))
        return
    from slmd.models import DEFAULT_MODEL
    from slmd.paths import default_data_dir

    model = args.model or default_data_dir() / "models" / DEFAULT_MODEL.filename
    with LlamaServer(model, threads=args.threads) as srv:
        c = asyncio.run(srv.chat([{"role": "user", "content": "Name three colours."}], max_tokens=16))
        print(f"chat: {c.text!r} prompt={c.num_prompt_tokens} gen={c.num_generated_tokens} ttft={c.ttft_seconds:.3f}s")
        c = asyncio.run(srv.complete("The capital of France is", max_tokens=8))
        print(f"completion: {c.text!r} prompt={c.num_prompt_tokens} gen={c.num_generated_tokens} "
              f"cached={c.num_cached_tokens} ttft={c.ttft_seconds:.3f}s")


if __name__ == "__main__":
    main()
