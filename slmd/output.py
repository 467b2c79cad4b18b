"""Turning sampled tokens into text deltas: UTF-8-safe incremental decoding
(a multi-byte character split across tokens is held back until complete) and
stop strings (text that might be the start of a stop string is held back until
it is known not to be)."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field, replace
from typing import Callable

from slmd.request import RequestOutput


@dataclass
class TextState:
    stop: tuple[str, ...]
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )
    _held: str = ""  # decoded text not yet delivered (may start a stop string)
    stopped: bool = False

    @property
    def _hold_len(self) -> int:
        return max((len(s) for s in self.stop), default=1) - 1


def feed(state: TextState, token_bytes: bytes) -> str:
    """Add one token's bytes; return the text that can be delivered now. Sets
    `state.stopped` when a stop string completes (the stop string itself and
    anything after it are dropped)."""
    if state.stopped:
        return ""
    state._held += state._decoder.decode(token_bytes)
    if state.stop:
        cut = min((i for i in (state._held.find(s) for s in state.stop) if i >= 0), default=-1)
        if cut >= 0:
            state.stopped = True
            out, state._held = state._held[:cut], ""
            return out
        keep = state._hold_len
        if keep and len(state._held) > keep:
            out, state._held = state._held[:-keep], state._held[-keep:]
            return out
        if keep:
            return ""
    out, state._held = state._held, ""
    return out


def flush(state: TextState) -> str:
    """At the end of generation: whatever is held back (an incomplete UTF-8
    sequence becomes U+FFFD)."""
    if state.stopped:
        return ""
    out = state._held + state._decoder.decode(b"", final=True)
    state._held = ""
    return out


def detokenize(token_bytes: Callable[[int], bytes], ids: list[int]) -> str:
    return b"".join(token_bytes(t) for t in ids).decode("utf-8", errors="replace")


def merge_deltas(outs: list[RequestOutput]) -> list[RequestOutput]:
    """One request's queued outputs, as few as deliver the same text, tokens and
    finish: consecutive deltas joined into one, folded into the final output
    unless it carries an error (then the text before the error still goes out
    first: a caller raises on the error and drops that output's text)."""
    final = outs[-1] if outs[-1].finished else None
    deltas = outs[:-1] if final is not None else outs
    if len(outs) == 1 or not deltas:
        return outs
    text = "".join(o.text for o in deltas)
    ids = tuple(t for o in deltas for t in o.token_ids)
    if final is None:
        return [RequestOutput(deltas[0].request_id, text, ids)]
    if final.error_kind is None:
        return [replace(final, text=text + final.text, token_ids=ids + final.token_ids)]
    return [RequestOutput(deltas[0].request_id, text, ids), final]
