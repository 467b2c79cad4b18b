"""Plain Python values for what the client sends and receives, and their
conversion to and from the generated protobuf messages (the only place that
touches them besides the stubs)."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from slmd_client._proto.slmd.v1 import common_pb2, generation_pb2


class Priority(str, enum.Enum):
    """Scheduling class; the daemon caps what an app may claim."""

    BACKGROUND = "background"
    NORMAL = "normal"
    INTERACTIVE = "interactive"

    def to_proto(self) -> common_pb2.Priority.ValueType:
        return _PRIORITY_TO_PROTO[self]

    @classmethod
    def parse(cls, value: PriorityLike) -> Priority:
        """Accepts a Priority, a name ("interactive", "NORMAL") or a proto enum value."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().lower())
            except ValueError:
                names = ", ".join(p.value for p in cls)
                raise ValueError(f"unknown priority {value!r}; expected one of: {names}") from None
        if isinstance(value, int):
            for priority, number in _PRIORITY_TO_PROTO.items():
                if number == value:
                    return priority
        raise ValueError(f"unknown priority {value!r}")


PriorityLike = Union[Priority, str, int]

_PRIORITY_TO_PROTO: dict[Priority, common_pb2.Priority.ValueType] = {
    Priority.BACKGROUND: common_pb2.PRIORITY_BACKGROUND,
    Priority.NORMAL: common_pb2.PRIORITY_NORMAL,
    Priority.INTERACTIVE: common_pb2.PRIORITY_INTERACTIVE,
}


class FinishReason(str, enum.Enum):
    """Why generation ended; compares equal to its value ("stop", "length")."""

    STOP = "stop"  # end-of-generation token or a stop string
    LENGTH = "length"  # max_tokens or the context window

    @classmethod
    def from_proto(cls, value: int) -> FinishReason | None:
        if value == common_pb2.FINISH_REASON_STOP:
            return cls.STOP
        if value == common_pb2.FINISH_REASON_LENGTH:
            return cls.LENGTH
        return None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    queue_seconds: float
    time_to_first_token_seconds: float
    total_seconds: float

    @classmethod
    def from_proto(cls, msg: common_pb2.Usage) -> Usage:
        return cls(
            prompt_tokens=msg.prompt_tokens,
            completion_tokens=msg.completion_tokens,
            cached_prompt_tokens=msg.cached_prompt_tokens,
            queue_seconds=msg.queue_seconds,
            time_to_first_token_seconds=msg.time_to_first_token_seconds,
            total_seconds=msg.total_seconds,
        )


@dataclass(frozen=True)
class GenerateChunk:
    """One streamed message: new text since the previous chunk. The last chunk
    carries `finish_reason` and `usage`."""

    request_id: str
    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None

    @property
    def is_last(self) -> bool:
        return self.finish_reason is not None

    @classmethod
    def from_proto(cls, msg: generation_pb2.GenerateResponse) -> GenerateChunk:
        return cls(
            request_id=msg.request_id,
            text=msg.text,
            token_ids=tuple(msg.token_ids),
            finish_reason=FinishReason.from_proto(msg.finish_reason),
            usage=Usage.from_proto(msg.usage) if msg.HasField("usage") else None,
        )


@dataclass(frozen=True)
class Completion:
    """A whole generation: the stream of chunks joined."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason | None
    usage: Usage | None


class CompletionBuilder:
    """Accumulates chunks into a Completion."""

    def __init__(self) -> None:
        self._request_id = ""
        self._texts: list[str] = []
        self._token_ids: list[int] = []
        self._finish_reason: FinishReason | None = None
        self._usage: Usage | None = None

    def add(self, chunk: GenerateChunk) -> None:
        self._request_id = chunk.request_id or self._request_id
        self._texts.append(chunk.text)
        self._token_ids.extend(chunk.token_ids)
        if chunk.finish_reason is not None:
            self._finish_reason = chunk.finish_reason
        if chunk.usage is not None:
            self._usage = chunk.usage

    def build(self) -> Completion:
        return Completion(
            request_id=self._request_id,
            text="".join(self._texts),
            token_ids=tuple(self._token_ids),
            finish_reason=self._finish_reason,
            usage=self._usage,
        )


@dataclass(frozen=True)
class TokenCount:
    num_tokens: int
    context_window: int  # tokens one request may hold (prompt + output)
    max_output_tokens: int  # context_window - num_tokens

    @classmethod
    def from_proto(cls, msg: generation_pb2.CountTokensResponse) -> TokenCount:
        return cls(msg.num_tokens, msg.context_window, msg.max_output_tokens)


# The operator view lives in its own module; re-exported here for existing imports.
from slmd_client.status_types import AppStatus, CacheStatus, MemoryStatus, QueueStatus, Status  # noqa: E402,F401


# A chat message: {"role": ..., "content": ...}, a (role, content) pair, or
# anything with `.role` and `.content` attributes.
MessageLike = Union[Mapping[str, str], Sequence[str], Any]


def chat_to_proto(messages: Iterable[MessageLike]) -> common_pb2.ChatMessages:
    out = common_pb2.ChatMessages()
    for message in messages:
        if isinstance(message, Mapping):
            role, content = message["role"], message["content"]
        elif isinstance(message, (tuple, list)) and len(message) == 2:
            role, content = message
        elif hasattr(message, "role") and hasattr(message, "content"):
            role, content = message.role, message.content
        else:
            raise TypeError(f"a chat message is a {{'role', 'content'}} mapping or a (role, content) pair, got {message!r}")
        out.messages.add(role=str(role), content=str(content))
    return out


def _input_kwargs(prompt: str | None, messages: Iterable[MessageLike] | None) -> dict[str, Any]:
    if (prompt is None) == (messages is None):
        raise ValueError("pass exactly one of `prompt` or `messages`")
    if prompt is not None:
        return {"prompt": prompt}
    return {"chat": chat_to_proto(messages or ())}


def generate_request(
    prompt: str | None,
    messages: Iterable[MessageLike] | None,
    *,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    min_p: float | None,
    repetition_penalty: float | None,
    seed: int | None,
    stop: str | Iterable[str] | None,
    json_schema: str | Mapping[str, Any] | None,
    grammar: str | None,
    priority: PriorityLike | None,
    deterministic: bool,
    request_id: str | None,
    ignore_eos: bool = False,
    keep_alive: float | None = None,
) -> generation_pb2.GenerateRequest:
    sampling = common_pb2.SamplingParams()
    optional = {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "min_p": min_p,
        "repetition_penalty": repetition_penalty,
        "seed": seed,
    }
    for name, value in optional.items():
        if value is not None:
            setattr(sampling, name, value)
    if stop is not None:
        sampling.stop.extend([stop] if isinstance(stop, str) else list(stop))
    if json_schema is not None:
        sampling.json_schema = json_schema if isinstance(json_schema, str) else json.dumps(json_schema)
    if grammar is not None:
        sampling.grammar = grammar
    sampling.ignore_eos = ignore_eos
    request = generation_pb2.GenerateRequest(
        **_input_kwargs(prompt, messages),
        sampling=sampling,
        priority=Priority.parse(priority).to_proto() if priority is not None else common_pb2.PRIORITY_UNSPECIFIED,
        deterministic=deterministic,
        request_id=request_id or "",
    )
    if keep_alive is not None:  # seconds the model stays loaded after this request; negative: forever
        request.keep_alive_seconds = keep_alive
    return request


def count_tokens_request(
    prompt: str | None, messages: Iterable[MessageLike] | None
) -> generation_pb2.CountTokensRequest:
    return generation_pb2.CountTokensRequest(**_input_kwargs(prompt, messages))
