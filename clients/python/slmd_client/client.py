"""The asyncio client (grpc.aio).

    async with AsyncClient() as slm:
        async for chunk in slm.generate("Once upon a time", max_tokens=32):
            print(chunk.text, end="", flush=True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from slmd_client._common import CallSettings
from slmd_client._proto.slmd.v1 import admin_pb2, admin_pb2_grpc, generation_pb2_grpc
from slmd_client.datatypes import (
    Completion,
    CompletionBuilder,
    GenerateChunk,
    MessageLike,
    PriorityLike,
    Status,
    TokenCount,
    count_tokens_request,
    generate_request,
)
from slmd_client.errors import from_rpc_error
from slmd_client.status_types import trim_level


@dataclass(frozen=True)
class _Stubs:
    generation: generation_pb2_grpc.GenerationStub
    admin: admin_pb2_grpc.AdminStub
    health: health_pb2_grpc.HealthStub


class AsyncClient:
    """A connection to the daemon for asyncio code.

    `target` is a socket path, `host:port` or a gRPC target; None means the
    default socket (`SLMD_SOCKET`, see `slmd_client.defaults`). `token` (default
    `$SLMD_TOKEN`) is sent as `authorization: Bearer <token>`, which TCP callers
    need. `timeout` is the default deadline of every call in seconds (for
    `generate`, of the whole stream). With `wait_for_ready`, calls wait for the
    daemon to come up instead of failing with `Unavailable`.

    The channel opens on first use; close it with `close()` or `async with`.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | None = None,
        *,
        token: str | None = None,
        app_name: str | None = None,
        timeout: float | None = None,
        wait_for_ready: bool = False,
        metadata: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        options: Sequence[tuple[str, Any]] | None = None,
    ) -> None:
        self._settings = CallSettings.build(
            target,
            token=token,
            app_name=app_name,
            timeout=timeout,
            wait_for_ready=wait_for_ready,
            metadata=metadata,
            options=options,
        )
        self._channel: grpc.aio.Channel | None = None
        self._stubs: _Stubs | None = None

    @property
    def target(self) -> str:
        return self._settings.target

    @property
    def channel(self) -> grpc.aio.Channel:
        """The underlying channel, for services this class does not wrap."""
        return self._connect()[0]

    @property
    def documents(self):
        """Document assistance (summaries, questions, answers): see `slmd_client.documents`."""
        from slmd_client.documents import AsyncDocuments

        return AsyncDocuments(self)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata (token, app name) for calls made on `channel` directly."""
        return self._settings.metadata

    async def close(self, grace: float | None = None) -> None:
        if self._channel is not None:
            channel, self._channel, self._stubs = self._channel, None, None
            await channel.close(grace)

    async def __aenter__(self) -> AsyncClient:
        self._connect()  # inside the running loop
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _connect(self) -> tuple[grpc.aio.Channel, _Stubs]:
        if self._channel is None or self._stubs is None:
            self._channel = grpc.aio.insecure_channel(self._settings.target, options=self._settings.channel_options)
            self._stubs = _Stubs(
                generation=generation_pb2_grpc.GenerationStub(self._channel),
                admin=admin_pb2_grpc.AdminStub(self._channel),
                health=health_pb2_grpc.HealthStub(self._channel),
            )
        return self._channel, self._stubs

    async def generate(
        self,
        prompt: str | None = None,
        *,
        messages: Iterable[MessageLike] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop: str | Iterable[str] | None = None,
        json_schema: str | Mapping[str, Any] | None = None,
        grammar: str | None = None,
        priority: PriorityLike | None = None,
        deterministic: bool = False,
        request_id: str | None = None,
        ignore_eos: bool = False,
        keep_alive: float | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[GenerateChunk]:
        """Stream a completion of `prompt` (raw text) or `messages` (chat,
        rendered with the model's template). Unset sampling values take the
        daemon's defaults. Leaving the loop early cancels the request."""
        request = generate_request(
            prompt,
            messages,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
            stop=stop,
            json_schema=json_schema,
            grammar=grammar,
            priority=priority,
            deterministic=deterministic,
            request_id=request_id,
            ignore_eos=ignore_eos,
            keep_alive=keep_alive,
        )
        call = self._connect()[1].generation.Generate(request, **self._settings.call_kwargs(timeout))
        try:
            async for response in call:
                yield GenerateChunk.from_proto(response)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        finally:
            call.cancel()  # no-op when the stream already ended

    async def complete(
        self,
        prompt: str | None = None,
        *,
        messages: Iterable[MessageLike] | None = None,
        **kwargs: Any,
    ) -> Completion:
        """`generate` collected into one Completion; takes the same arguments."""
        builder = CompletionBuilder()
        async for chunk in self.generate(prompt, messages=messages, **kwargs):
            builder.add(chunk)
        return builder.build()

    async def count_tokens(
        self,
        prompt: str | None = None,
        messages: Iterable[MessageLike] | None = None,
        *,
        timeout: float | None = None,
    ) -> TokenCount:
        stub = self._connect()[1].generation
        try:
            response = await stub.CountTokens(
                count_tokens_request(prompt, messages), **self._settings.call_kwargs(timeout)
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        return TokenCount.from_proto(response)

    async def status(self, *, timeout: float | None = None) -> Status:
        stub = self._connect()[1].admin
        try:
            response = await stub.Status(admin_pb2.StatusRequest(), **self._settings.call_kwargs(timeout))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        return Status.from_proto(response)

    async def signal_memory_pressure(self, level: str, *, timeout: float | None = None) -> str:
        """Forward a platform memory signal (operators only): "none",
        "running_moderate", "running_critical", "background" or "complete"
        (Android onTrimMemory levels). Returns the daemon's level now."""
        stub = self._connect()[1].admin
        request = admin_pb2.SignalMemoryPressureRequest(level=trim_level(level))
        try:
            response = await stub.SignalMemoryPressure(request, **self._settings.call_kwargs(timeout))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        return response.level

    async def health(self, service: str = "", *, timeout: float | None = None) -> bool:
        """True when the daemon reports SERVING (grpc.health.v1, overall
        service ""). Raises `Unavailable` when it cannot be reached."""
        stub = self._connect()[1].health
        try:
            response = await stub.Check(
                health_pb2.HealthCheckRequest(service=service), **self._settings.call_kwargs(timeout)
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        return response.status == health_pb2.HealthCheckResponse.SERVING
