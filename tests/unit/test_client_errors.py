"""The client library against a tiny in-process grpc.aio server on a Unix
socket: status codes become the right exceptions (with RetryInfo parsed),
streams arrive through the async and the sync client, and request fields and
metadata reach the server. The real daemon is tested in tests/e2e."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

import slmd_client
from slmd_client import (
    AsyncClient,
    Client,
    FinishReason,
    InvalidArgument,
    ResourceExhausted,
    SlmdError,
    Unavailable,
)
from slmd_client import cli
from slmd_client._proto.slmd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    generation_pb2,
    generation_pb2_grpc,
)

# Prompt "abort:<CODE>[:<retry seconds>]" makes Generate fail with that code
# (and a RetryInfo detail when a delay is given); "abort-after-one:..." fails
# the same way after one chunk; any other prompt is streamed back word by word.
ABORT = "abort:"
ABORT_AFTER_ONE = "abort-after-one:"


@dataclass
class Recorder:
    generate_requests: list[generation_pb2.GenerateRequest] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


async def _abort(context: grpc.aio.ServicerContext, spec: str) -> None:
    name, _, retry = spec.partition(":")
    code = getattr(code_pb2, name)
    message = f"stub says {name.lower()}"
    if not retry:
        await context.abort(grpc.StatusCode[name], message)
    delay = duration_pb2.Duration()
    delay.FromTimedelta(datetime.timedelta(seconds=float(retry)))
    detail = status_pb2.Status().details.add()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=code, message=message, details=[detail])
    await context.abort_with_status(rpc_status.to_status(status))


class StubGeneration(generation_pb2_grpc.GenerationServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def Generate(
        self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        self.recorder.generate_requests.append(request)
        self.recorder.metadata.append({k: v for k, v in context.invocation_metadata() or ()})
        request_id = request.request_id or "req-1"
        prompt = request.prompt if request.WhichOneof("input") == "prompt" else request.chat.messages[-1].content
        if prompt.startswith(ABORT):
            await _abort(context, prompt[len(ABORT) :])
        if prompt.startswith(ABORT_AFTER_ONE):
            yield generation_pb2.GenerateResponse(request_id=request_id, text="partial", token_ids=[7])
            await _abort(context, prompt[len(ABORT_AFTER_ONE) :])
        if prompt == "forever":
            try:
                while True:
                    yield generation_pb2.GenerateResponse(request_id=request_id, text="x", token_ids=[1])
                    await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                self.recorder.cancelled.set()
                raise
        words = prompt.split()
        for i, word in enumerate(words):
            yield generation_pb2.GenerateResponse(
                request_id=request_id, text=(" " if i else "") + word, token_ids=[100 + i]
            )
        yield generation_pb2.GenerateResponse(
            request_id=request_id,
            finish_reason=common_pb2.FINISH_REASON_STOP,
            usage=common_pb2.Usage(prompt_tokens=len(words), completion_tokens=len(words), total_seconds=0.5),
        )

    async def CountTokens(
        self, request: generation_pb2.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.CountTokensResponse:
        if request.WhichOneof("input") == "chat":
            n = sum(len(m.content.split()) + 3 for m in request.chat.messages)
        elif request.prompt:
            n = len(request.prompt.split())
        else:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "prompt: must not be empty")
        return generation_pb2.CountTokensResponse(num_tokens=n, context_window=2048, max_output_tokens=2048 - n)


class StubAdmin(admin_pb2_grpc.AdminServicer):
    async def Status(self, request: admin_pb2.StatusRequest, context: grpc.aio.ServicerContext) -> admin_pb2.StatusResponse:
        metadata = dict(context.invocation_metadata() or ())
        return admin_pb2.StatusResponse(
            version="0.0-test", model_name="stub", context_window=2048, app_id=metadata.get("x-slmd-app", "")
        )


@dataclass
class Server:
    socket_path: str
    recorder: Recorder
    health: health.aio.HealthServicer


@pytest.fixture
def socket_path(tmp_path: Path) -> str:
    path = str(tmp_path / "slmd.sock")
    if len(path) < 100:  # sun_path holds 108 bytes
        return path
    return os.path.join(tempfile.mkdtemp(prefix="slmd-test-"), "slmd.sock")


@pytest_asyncio.fixture
async def server(socket_path: str) -> AsyncIterator[Server]:
    recorder = Recorder()
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    srv = grpc.aio.server()
    generation_pb2_grpc.add_GenerationServicer_to_server(StubGeneration(recorder), srv)
    admin_pb2_grpc.add_AdminServicer_to_server(StubAdmin(), srv)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, srv)
    srv.add_insecure_port("unix:" + socket_path)
    await srv.start()
    try:
        yield Server(socket_path, recorder, health_servicer)
    finally:
        await srv.stop(None)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("code", "exc_type"),
    [
        ("INVALID_ARGUMENT", slmd_client.InvalidArgument),
        ("RESOURCE_EXHAUSTED", slmd_client.ResourceExhausted),
        ("DEADLINE_EXCEEDED", slmd_client.DeadlineExceeded),
        ("CANCELLED", slmd_client.Cancelled),
        ("UNAVAILABLE", slmd_client.Unavailable),
        ("UNAUTHENTICATED", slmd_client.Unauthenticated),
        ("PERMISSION_DENIED", slmd_client.PermissionDenied),
        ("NOT_FOUND", slmd_client.NotFound),
        ("FAILED_PRECONDITION", slmd_client.FailedPrecondition),
        ("INTERNAL", slmd_client.Internal),
        ("ABORTED", SlmdError),
    ],
)
async def test_status_codes_map_to_exceptions(server: Server, code: str, exc_type: type[SlmdError]) -> None:
    async with AsyncClient(server.socket_path) as client:
        with pytest.raises(exc_type) as info:
            await client.complete(ABORT + code)
    assert type(info.value) is exc_type
    assert info.value.code == grpc.StatusCode[code]
    assert info.value.details == f"stub says {code.lower()}"
    assert info.value.retry_after is None


async def test_retry_info_is_parsed(server: Server) -> None:
    async with AsyncClient(server.socket_path) as client:
        with pytest.raises(ResourceExhausted) as info:
            await client.complete(ABORT + "RESOURCE_EXHAUSTED:2.5")
    assert info.value.retry_after == pytest.approx(2.5)
    assert info.value.status is not None and info.value.status.code == code_pb2.RESOURCE_EXHAUSTED
    assert str(info.value) == "RESOURCE_EXHAUSTED: stub says resource_exhausted (retry after 2.5s)"


async def test_sync_client_raises_the_same_errors(server: Server) -> None:
    def call() -> SlmdError:
        with Client(server.socket_path) as client:
            with pytest.raises(ResourceExhausted) as info:
                list(client.generate(ABORT + "RESOURCE_EXHAUSTED:0.25"))
            with pytest.raises(InvalidArgument):
                client.count_tokens("")
            return info.value

    error = await asyncio.to_thread(call)
    assert error.retry_after == pytest.approx(0.25)


async def test_error_after_partial_stream(server: Server) -> None:
    received = []
    async with AsyncClient(server.socket_path) as client:
        with pytest.raises(slmd_client.Internal):
            async for chunk in client.generate(ABORT_AFTER_ONE + "INTERNAL"):
                received.append(chunk.text)
    assert received == ["partial"]


async def test_unary_errors_are_converted(server: Server) -> None:
    async with AsyncClient(server.socket_path) as client:
        with pytest.raises(InvalidArgument, match="prompt: must not be empty"):
            await client.count_tokens("")


async def test_no_daemon_is_unavailable(tmp_path: Path) -> None:
    async with AsyncClient(tmp_path / "nobody.sock", timeout=5) as client:
        with pytest.raises(Unavailable):
            await client.health()
    with Client(tmp_path / "nobody.sock", timeout=5) as sync_client:
        with pytest.raises(Unavailable):
            await asyncio.to_thread(sync_client.status)


async def test_deadline_exceeded(server: Server) -> None:
    async with AsyncClient(server.socket_path) as client:
        with pytest.raises(slmd_client.DeadlineExceeded):
            async for _ in client.generate("forever", timeout=0.2):
                pass


def test_from_rpc_error_without_status_details() -> None:
    class Bare(grpc.RpcError):
        pass

    error = slmd_client.from_rpc_error(Bare())
    assert type(error) is SlmdError
    assert error.code == grpc.StatusCode.UNKNOWN
    assert error.retry_after is None


# --------------------------------------------------------------- streaming


async def test_async_streaming(server: Server) -> None:
    async with AsyncClient(server.socket_path) as client:
        chunks = [c async for c in client.generate("the quick brown fox", request_id="abc")]
    assert [c.text for c in chunks] == ["the", " quick", " brown", " fox", ""]
    assert all(c.request_id == "abc" for c in chunks)
    assert chunks[-1].finish_reason is FinishReason.STOP and chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])


async def test_async_complete_collects_the_stream(server: Server) -> None:
    async with AsyncClient(server.socket_path) as client:
        completion = await client.complete(messages=[{"role": "user", "content": "hello there"}])
    assert completion.text == "hello there"
    assert completion.token_ids == (100, 101)
    assert completion.finish_reason == FinishReason.STOP
    assert completion.request_id == "req-1"
    assert completion.usage is not None and completion.usage.total_seconds == 0.5


async def test_sync_streaming(server: Server) -> None:
    def call() -> tuple[list[str], Any]:
        with Client(server.socket_path) as client:
            texts = [c.text for c in client.generate("one two three")]
            return texts, client.complete("four five")

    texts, completion = await asyncio.to_thread(call)
    assert texts == ["one", " two", " three", ""]
    assert completion.text == "four five"
    assert completion.finish_reason == FinishReason.STOP


async def test_leaving_the_stream_cancels_the_request(server: Server) -> None:
    async with AsyncClient(server.socket_path) as client:
        stream = client.generate("forever")
        async for _ in stream:
            break
        await stream.aclose()
        await asyncio.wait_for(server.recorder.cancelled.wait(), 5)


async def test_request_fields_and_metadata(server: Server) -> None:
    async with AsyncClient(server.socket_path, token="s3cret", app_name="editor") as client:
        await client.complete(
            "hi",
            max_tokens=8,
            temperature=0.0,
            seed=42,
            stop="\n",
            json_schema={"type": "object"},
            priority="interactive",
            deterministic=True,
        )
        status = await client.status()
    request = server.recorder.generate_requests[-1]
    assert request.prompt == "hi"
    assert request.sampling.max_tokens == 8
    assert request.sampling.HasField("temperature") and request.sampling.temperature == 0.0
    assert not request.sampling.HasField("top_p")
    assert request.sampling.seed == 42
    assert list(request.sampling.stop) == ["\n"]
    assert json.loads(request.sampling.json_schema) == {"type": "object"}
    assert request.priority == common_pb2.PRIORITY_INTERACTIVE
    assert request.deterministic
    metadata = server.recorder.metadata[-1]
    assert metadata["authorization"] == "Bearer s3cret"
    assert metadata["x-slmd-app"] == "editor"
    assert status.app_id == "editor" and status.context_window == 2048


async def test_token_defaults_to_environment(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLMD_TOKEN", "from-env")
    async with AsyncClient(server.socket_path) as client:
        await client.complete("hi")
    assert server.recorder.metadata[-1]["authorization"] == "Bearer from-env"


async def test_bad_arguments_fail_before_sending(server: Server) -> None:
    async with AsyncClient(server.socket_path) as client:
        with pytest.raises(ValueError, match="exactly one"):
            await client.complete("a", messages=[("user", "b")])
        with pytest.raises(ValueError, match="unknown priority"):
            await client.complete("a", priority="urgent")
    assert server.recorder.generate_requests == []


async def test_health(server: Server) -> None:
    async with AsyncClient(server.socket_path) as client:
        assert await client.health() is True
        await server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert await client.health() is False


# --------------------------------------------------------------------- CLI


async def test_cli_streams_and_reports_errors(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    assert await asyncio.to_thread(cli.main, ["generate", "hello cli", "--socket", server.socket_path]) == 0
    assert capsys.readouterr().out == "hello cli"

    code = await asyncio.to_thread(
        cli.main, ["generate", ABORT + "RESOURCE_EXHAUSTED:1", "--socket", server.socket_path]
    )
    assert code == 4
    assert capsys.readouterr().err == "slm: error: RESOURCE_EXHAUSTED: stub says resource_exhausted (retry after 1s)\n"

    assert await asyncio.to_thread(cli.main, ["count", "", "--socket", server.socket_path]) == 2
    assert capsys.readouterr().err.startswith("slm: error: INVALID_ARGUMENT: ")

    assert await asyncio.to_thread(cli.main, ["count", "a b c", "--socket", server.socket_path]) == 0
    assert capsys.readouterr().out == "3\n"


def test_cli_unavailable_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["health", "--socket", str(tmp_path / "nobody.sock"), "--timeout", "5"]) == 3
    assert capsys.readouterr().err.startswith("slm: error: UNAVAILABLE: ")


# ---------------------------------------------------------------- defaults


def test_default_socket_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from slmd_client.defaults import default_socket_path, target_for

    monkeypatch.setenv("SLMD_SOCKET", "/x/y.sock")
    assert default_socket_path() == "/x/y.sock"
    monkeypatch.delenv("SLMD_SOCKET")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_socket_path() == "/run/user/1000/slmd/slmd.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    expected = "/run/slmd/slmd.sock" if os.getuid() == 0 else f"/tmp/slmd-{os.getuid()}/slmd.sock"
    assert default_socket_path() == expected

    assert target_for("/a/b.sock") == "unix:/a/b.sock"
    assert target_for("rel.sock") == "unix:" + os.path.abspath("rel.sock")
    assert target_for("127.0.0.1:7777") == "127.0.0.1:7777"
    assert target_for("[::1]:7777") == "[::1]:7777"
    assert target_for("localhost:7777") == "localhost:7777"
    assert target_for("tcp://localhost:7777") == "localhost:7777"
    assert target_for("unix:/a/b.sock") == "unix:/a/b.sock"
