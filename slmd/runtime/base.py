"""The contract between the engine and a model backend. The scheduler builds a
`StepBatch` of plain token ids and sequence ids; a backend (llama.cpp today,
MLC where it installs) turns it into forward passes and sampled tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from slmd.request import SamplingParams


class RuntimeError_(Exception):
    """The backend could not load or run the model."""


def kv_cells(num_sequences: int, context_per_sequence: int, pool_tokens: int = 0) -> int:
    """KV cells of a context: a stream of `context_per_sequence` per sequence,
    or one pool shared by all of them (`engine.kv_pool_tokens`), never larger
    than the streams it replaces (a context reloaded with fewer sequences
    under memory pressure shrinks its pool too)."""
    streams = num_sequences * context_per_sequence
    return min(pool_tokens, streams) if pool_tokens else streams


@dataclass(frozen=True)
class SeqWork:
    """Tokens to feed one sequence in this step, starting at position `start_pos`."""

    seq_id: int
    token_ids: Sequence[int]
    start_pos: int
    sample: bool  # sample the next token from the logits of the last one


@dataclass(frozen=True)
class StepBatch:
    """Each group is one forward pass (one `llama_decode`). Normally there is
    one group holding every sequence; a deterministic request gets a group of
    its own so its numerics equal a solo run."""

    groups: tuple[tuple[SeqWork, ...], ...]

    @property
    def num_tokens(self) -> int:
        return sum(len(w.token_ids) for g in self.groups for w in g)

    @property
    def is_empty(self) -> bool:
        return not any(self.groups)


@dataclass
class StepOutput:
    sampled: dict[int, int] = field(default_factory=dict)  # seq_id -> token id
    failed: dict[int, str] = field(default_factory=dict)  # seq_id -> error
    interrupted: set[int] = field(default_factory=set)  # seq_ids whose work did not run (KV rolled back)
    decode_seconds: float = 0.0


@dataclass(frozen=True)
class ModelInfo:
    path: str
    name: str
    architecture: str
    n_vocab: int
    n_ctx_train: int
    n_params: int
    size_bytes: int
    context_per_sequence: int
    num_sequences: int


class StepDefaults:
    """Defaults for a backend whose `step` computes before it returns and
    cannot be interrupted (test and benchmark runtimes, a future MLC one)."""

    async_launch = False

    def launch(self, batch: StepBatch):
        return self.step(batch)  # type: ignore[attr-defined]

    def collect(self, launched) -> StepOutput:
        return launched

    def interrupt(self) -> None:
        pass

    def clear_interrupt(self) -> None:
        pass


class Runtime(Protocol):
    info: ModelInfo

    def open(self, seq_id: int, sampling: SamplingParams, replay: tuple[int, ...] = ()) -> None:
        """Prepare a sequence for a request (empty KV, a sampler that has seen `replay`)."""

    def step(self, batch: StepBatch) -> StepOutput:
        """Run the forward passes and sample where asked."""

    async_launch: bool  # `launch` returns before the device has finished (a GPU)

    def launch(self, batch: StepBatch):
        """Start a step; `collect` waits for it and samples. The engine does
        other work in between when `async_launch`."""

    def collect(self, launched) -> StepOutput:
        """The output of a launched step."""

    def interrupt(self) -> None:
        """Stop the step in progress soon (thread-safe); its unfinished work
        comes back in `StepOutput.interrupted`, as if never submitted. A no-op
        where the backend cannot."""

    def clear_interrupt(self) -> None:
        """Forget an interrupt that no step has consumed."""

    def release(self, seq_id: int) -> None:
        """Drop the sequence's KV cells and sampler."""

    def copy_prefix(self, src_seq: int, dst_seq: int, num_tokens: int) -> None:
        """Share the first `num_tokens` KV cells of `src_seq` with `dst_seq`."""

    def truncate(self, seq_id: int, num_tokens: int) -> None:
        """Keep only the first `num_tokens` KV cells of a sequence."""

    def flush_copies(self, scratch_seq: int) -> None:
        """Run pending stream copies now (before an immediate write such as `restore`)."""

    def save(self, seq_id: int) -> bytes:
        """Serialize a sequence's KV state (host-memory tier, preemption)."""

    def restore(self, seq_id: int, data: bytes) -> None:
        """Load a state produced by `save` into an empty sequence."""

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes of one token's piece."""

    def is_eog(self, token_id: int) -> bool:
        """End-of-generation token."""

    def validate_grammar(self, grammar: str) -> str | None:
        """None if the GBNF grammar parses, else a message."""

    def close(self) -> None:
        """Free the context and the model."""
