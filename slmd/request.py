"""What the engine knows about a request: its tokens, sampling parameters,
priority and state. Nothing here touches gRPC or llama.cpp."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field


class Priority(enum.IntEnum):
    BACKGROUND = 1
    NORMAL = 2
    INTERACTIVE = 3


class RequestStatus(enum.IntEnum):
    """Ordered: everything after PREEMPTED is finished."""

    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5
    FINISHED_ERROR = 6

    @property
    def is_finished(self) -> bool:
        return self > RequestStatus.PREEMPTED


class ErrorKind(enum.Enum):
    """Why a request ended without finishing; the server maps it to a status code."""

    QUEUE_FULL = "queue_full"
    DEADLINE = "deadline"
    CANCELLED = "cancelled"
    INTERNAL = "internal"
    SHUTDOWN = "shutdown"


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"
    ERROR = "error"


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int = 0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    grammar: str | None = None  # GBNF, already converted from a JSON schema
    ignore_eos: bool = False

    @property
    def is_greedy(self) -> bool:
        """Plain argmax, no sampler chain needed."""
        return self.temperature <= 0.0 and self.repetition_penalty == 1.0 and self.grammar is None


@dataclass
class Request:
    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    app_id: str = "default"
    priority: Priority = Priority.NORMAL
    deterministic: bool = False
    deadline: float | None = None  # time.monotonic() by which the request must finish
    namespace: str = ""  # prefix-cache namespace, derived from the app identity by the daemon
    keep_alive: float | None = None  # seconds the model stays loaded after this request; None: engine.keep_alive_seconds
    # Tests only: feed these tokens instead of the sampled ones and record the
    # argmax, to compare the batched path with a solo run position by position.
    teacher_ids: list[int] | None = None

    status: RequestStatus = RequestStatus.WAITING
    seq_id: int | None = None
    num_computed_tokens: int = 0  # prompt + output tokens already in the KV cache
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    output_ids: list[int] = field(default_factory=list)
    saved_state: bytes | None = None  # KV saved to host memory while preempted
    num_preemptions: int = 0
    argmax_ids: list[int] = field(default_factory=list)  # filled when teacher_ids is set
    arrival_time: float = field(default_factory=time.monotonic)
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finish_time: float | None = None
    finish_reason: FinishReason | None = None
    error: str | None = None
    error_kind: ErrorKind | None = None
    retry_after: float | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_pending_tokens(self) -> int:
        """Tokens not yet in the KV cache; the last one is fed to sample the next."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished


@dataclass(frozen=True)
class RequestOutput:
    """One delivery to the request's stream: new text and tokens, and on the
    last one the finish reason and timings."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finished: bool = False
    finish_reason: FinishReason | None = None
    error: str | None = None
    error_kind: ErrorKind | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_cached_tokens: int = 0
    queue_seconds: float = 0.0
    ttft_seconds: float = 0.0
    total_seconds: float = 0.0
    argmax_ids: tuple[int, ...] = ()
    retry_after: float | None = None
