"""Runtime operations the scheduler asks for, executed by the core in order
before the step's forward pass. The scheduler decides; only the core calls
the runtime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from slmd.cache.radix import Node
from slmd.request import SamplingParams


@dataclass(frozen=True)
class Open:
    seq_id: int
    sampling: SamplingParams
    request_id: str = ""
    replay: tuple[int, ...] = ()  # output tokens to feed the new sampler (a resumed request)


@dataclass(frozen=True)
class Release:
    seq_id: int


@dataclass(frozen=True)
class Save:
    """Move a cache holder's stream to the host tier, then free the stream."""

    seq_id: int
    namespace: str
    node: Node


@dataclass(frozen=True)
class SaveRequest:
    """Save a preempted request's stream so it can resume without recompute."""

    seq_id: int
    request_id: str


@dataclass(frozen=True)
class Copy:
    src_seq: int
    dst_seq: int
    num_tokens: int


@dataclass(frozen=True)
class Restore:
    data: bytes
    dst_seq: int
    num_tokens: int


Op = Union[Open, Release, Save, SaveRequest, Copy, Restore]
