"""The blocking client (grpc), with the same methods as `AsyncClient`.

    with Client() as slm:
        for chunk in slm.generate("Once upon a time", max_tokens=32):
            print(chunk.text, end="", flush=True)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
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


class Client:
    """A blocking connection to the daemon; see `AsyncClient` for the arguments.
    Thread-safe: one client may serve many threads. Close it with `close()` or
    `with`."""

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
        self._channel = grpc.insecure_channel(self._settings.target, options=self._settings.channel_options)
        self._stubs = _Stubs(
            generation=generation_pb2_grpc.GenerationStub(self._channel),
            admin=admin_pb2_grpc.AdminStub(self._channel),
            health=health_pb2_grpc.HealthStub(self._channel),
        )

    @property
    def target(self) -> str:
        return self._settings.target

    @property
    def channel(self) -> grpc.Channel:
        """The underlying channel, for services this class does not wrap."""
        return self._channel

    @property
    def documents(self):
        """Document assistance (summaries, questions, answers): see `slmd_client.documents`."""
        from slmd_client.documents import Documents

        return Documents(self)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata (token, app name) for calls made on `channel` directly."""
        return self._settings.metadata

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def generate(
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
    ) -> Iterator[GenerateChunk]:
        """Stream a completion; see `AsyncClient.generate`. The request is sent
        when iteration starts; leaving the loop early cancels it."""
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
        return self._stream(request, timeout)

    def _stream(self, request: Any, timeout: float | None) -> Iterator[GenerateChunk]:
        call = self._stubs.generation.Generate(request, **self._settings.call_kwargs(timeout))
        try:
            for response in call:
                yield GenerateChunk.from_proto(response)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        finally:
            call.cancel()  # no-op when the stream already ended

    def complete(
        self,
        prompt: str | None = None,
        *,
        messages: Iterable[MessageLike] | None = None,
        **kwargs: Any,
    ) -> Completion:
        """`generate` collected into one Completion; takes the same arguments."""
        builder = CompletionBuilder()
        for chunk in self.generate(prompt, messages=messages, **kwargs):
            builder.add(chunk)
        return builder.build()

    def count_tokens(
        self,
        prompt: str | None = None,
        messages: Iterable[MessageLike] | None = None,
        *,
        timeout: float | None = None,
    ) -> TokenCount:
        try:
            response = self._stubs.generation.CountTokens(
                count_tokens_request(prompt, messages), **self._settings.call_kwargs(timeout)
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        return TokenCount.from_proto(response)

    def status(self, *, timeout: float | None = None) -> Status:
        try:
            response = self._stubs.admin.Status(admin_pb2.StatusRequest(), **self._settings.call_kwargs(timeout))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        return Status.from_proto(response)

    def signal_memory_pressure(self, level: str, *, timeout: float | None = None) -> str:
        """See `AsyncClient.signal_memory_pressure`."""
        request = admin_pb2.SignalMemoryPressureRequest(level=trim_level(level))
        try:
            response = self._stubs.admin.SignalMemoryPressure(request, **self._settings.call_kwargs(timeout))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        return response.level

    def health(self, service: str = "", *, timeout: float | None = None) -> bool:
        """True when the daemon reports SERVING; raises `Unavailable` when it
        cannot be reached."""
        try:
            response = self._stubs.health.Check(
                health_pb2.HealthCheckRequest(service=service), **self._settings.call_kwargs(timeout)
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        return response.status == health_pb2.HealthCheckResponse.SERVING
