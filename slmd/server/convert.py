"""Proto <-> engine request, with validation. Every rejection names the field
and the limit. Servicers go through here; nothing else reads protos."""

from __future__ import annotations

import json
import math
import random
import uuid
from dataclasses import dataclass

from slmd_client._proto.slmd.v1 import common_pb2

from slmd.request import FinishReason, Priority, SamplingParams
from slmd.server.status import invalid

MAX_STOP_STRINGS = 16
MAX_STOP_BYTES = 256
MAX_GRAMMAR_BYTES = 64 * 1024
MAX_REQUEST_ID = 128
MAX_MESSAGES = 256
ROLES = ("system", "user", "assistant")

_PRIORITY = {
    common_pb2.PRIORITY_UNSPECIFIED: None,
    common_pb2.PRIORITY_BACKGROUND: Priority.BACKGROUND,
    common_pb2.PRIORITY_NORMAL: Priority.NORMAL,
    common_pb2.PRIORITY_INTERACTIVE: Priority.INTERACTIVE,
}

FINISH_TO_PROTO = {
    FinishReason.STOP: common_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: common_pb2.FINISH_REASON_LENGTH,
}


@dataclass(frozen=True)
class Limits:
    max_tokens_default: int
    max_tokens_limit: int
    max_prompt_bytes: int
    n_vocab: int


def request_id(value: str) -> str:
    if not value:
        return uuid.uuid4().hex
    if len(value) > MAX_REQUEST_ID or not value.isprintable():
        raise invalid(f"request_id must be printable and at most {MAX_REQUEST_ID} characters")
    return value


def priority(value: int) -> Priority | None:
    if value not in _PRIORITY:
        raise invalid(f"priority: unknown value {value}; allowed: BACKGROUND (1), NORMAL (2), INTERACTIVE (3)")
    return _PRIORITY[value]


def _finite(name: str, v: float, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
        lo_s = f"({lo}" if lo_open else f"[{lo}"
        raise invalid(f"sampling.{name} must be in {lo_s}, {hi}]; got {v}")
    return float(v)


def sampling(sp: common_pb2.SamplingParams, limits: Limits, *, json_to_gbnf) -> SamplingParams:
    kw: dict = {}
    if sp.HasField("temperature"):
        kw["temperature"] = _finite("temperature", sp.temperature, 0.0, 5.0)
    if sp.HasField("top_p"):
        kw["top_p"] = _finite("top_p", sp.top_p, 0.0, 1.0, lo_open=True)
    if sp.HasField("top_k"):
        if not 0 <= sp.top_k <= limits.n_vocab:
            raise invalid(f"sampling.top_k must be in [0, {limits.n_vocab}]; got {sp.top_k}")
        kw["top_k"] = sp.top_k
    if sp.HasField("min_p"):
        kw["min_p"] = _finite("min_p", sp.min_p, 0.0, 1.0)
    if sp.HasField("repetition_penalty"):
        kw["repetition_penalty"] = _finite("repetition_penalty", sp.repetition_penalty, 0.0, 5.0, lo_open=True)
    kw["seed"] = sp.seed if sp.HasField("seed") else random.getrandbits(32)
    if sp.HasField("max_tokens"):
        if not 1 <= sp.max_tokens <= limits.max_tokens_limit:
            raise invalid(f"sampling.max_tokens must be in [1, {limits.max_tokens_limit}]; got {sp.max_tokens}")
        kw["max_tokens"] = sp.max_tokens
    else:
        kw["max_tokens"] = limits.max_tokens_default
    if len(sp.stop) > MAX_STOP_STRINGS:
        raise invalid(f"sampling.stop: at most {MAX_STOP_STRINGS} stop strings; got {len(sp.stop)}")
    for s in sp.stop:
        if not s or len(s.encode()) > MAX_STOP_BYTES:
            raise invalid(f"sampling.stop: each stop string must be 1 to {MAX_STOP_BYTES} bytes")
    kw["stop"] = tuple(sp.stop)
    kw["ignore_eos"] = sp.ignore_eos
    if sp.json_schema and sp.grammar:
        raise invalid("sampling: give json_schema or grammar, not both")
    for name in ("json_schema", "grammar"):
        if len(getattr(sp, name).encode()) > MAX_GRAMMAR_BYTES:
            raise invalid(f"sampling.{name} is larger than {MAX_GRAMMAR_BYTES} bytes")
    if sp.json_schema:
        try:
            json.loads(sp.json_schema)
            kw["grammar"] = json_to_gbnf(sp.json_schema)
        except Exception as e:
            raise invalid(f"sampling.json_schema is not a usable JSON schema: {str(e)[:200]}") from None
    elif sp.grammar:
        kw["grammar"] = sp.grammar
    return SamplingParams(**kw)


def keep_alive(request) -> float | None:
    """GenerateRequest.keep_alive_seconds: unset -> None (the daemon's default), negative -> -1 (never unload)."""
    if not request.HasField("keep_alive_seconds"):
        return None
    v = request.keep_alive_seconds
    if math.isnan(v):
        raise invalid("keep_alive_seconds: must be a number (negative: never unload)")
    return -1.0 if v < 0 else v


def chat_messages(msgs) -> list[dict[str, str]]:
    if not msgs:
        raise invalid("chat.messages is empty")
    if len(msgs) > MAX_MESSAGES:
        raise invalid(f"chat.messages: at most {MAX_MESSAGES} messages; got {len(msgs)}")
    out = []
    for i, m in enumerate(msgs):
        if m.role not in ROLES:
            raise invalid(f"chat.messages[{i}].role must be one of {', '.join(ROLES)}; got {m.role[:32]!r}")
        out.append({"role": m.role, "content": m.content})
    return out


def check_prompt_text(text: str, field: str, limits: Limits) -> None:
    if not text:
        raise invalid(f"{field} is empty")
    n = len(text.encode("utf-8", "surrogatepass"))
    if n > limits.max_prompt_bytes:
        raise invalid(f"{field} is {n} bytes; the limit is {limits.max_prompt_bytes} (engine.max_prompt_bytes)")
