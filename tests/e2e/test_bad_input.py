"""A real daemon against bad input: every malformed or out-of-range request
gets INVALID_ARGUMENT quickly with a message naming the field, corrupt request
bytes get INVALID_ARGUMENT on every method, a full queue gets
RESOURCE_EXHAUSTED with retry advice, constrained output obeys its schema or
grammar, and after all of it the daemon still serves.

One daemon serves the whole module, configured so that every limit is cheap
to reach: a 256-token context, a 4096-byte prompt limit, one running and one
waiting request. Raw stubs are used wherever the client library would
validate or hide what goes on the wire."""

from __future__ import annotations

import asyncio
import json
import math
import time

import grpc
import pytest

from slmd_client import AsyncClient, FinishReason, ResourceExhausted
from slmd_client._proto.slmd.v1 import admin_pb2, admin_pb2_grpc, common_pb2, generation_pb2, generation_pb2_grpc
from tests.conftest import start_daemon

pytestmark = [pytest.mark.e2e, pytest.mark.default_model]

CONTEXT = 256
MAX_PROMPT_BYTES = 4096
MAX_TOKENS_LIMIT = 4096  # engine.max_tokens_limit default
FAST = 5.0  # seconds a rejection may take, at most
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8,"  # greedy decoding keeps counting: never an early stop


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, default_model):
    d = start_daemon(
        tmp_path_factory.mktemp("slmd"), default_model,
        "--context", str(CONTEXT), "--max-running", "1", "--max-waiting", "1", "--threads", "1",
        env={"SLMD_ENGINE__MAX_PROMPT_BYTES": str(MAX_PROMPT_BYTES)},
    )
    yield d
    assert d.stop() == 0, d.log_text()[-3000:]


@pytest.fixture(scope="module")
def channel(daemon):
    with grpc.insecure_channel(daemon.target) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return generation_pb2_grpc.GenerationStub(channel)


def _sampling(**kw) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(**{"max_tokens": 4, **kw})


def _expect_invalid(call, *names: str) -> str:
    """Run `call`; it must fail with INVALID_ARGUMENT within FAST seconds and
    a message that names every one of `names`."""
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        call()
    elapsed = time.monotonic() - t0
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert elapsed < FAST, f"rejection took {elapsed:.1f}s"
    for name in names:
        assert name in err.details(), f"{name!r} not named in {err.details()!r}"
    return err.details()


def _generate(stub, req: generation_pb2.GenerateRequest) -> list[generation_pb2.GenerateResponse]:
    return list(stub.Generate(req, timeout=30))


# ---- malformed and out-of-range requests ----------------------------------

_CASES = {
    # id: (request, field names the message must contain)
    "empty prompt": (generation_pb2.GenerateRequest(prompt="", sampling=_sampling()), ["prompt"]),
    "no input": (generation_pb2.GenerateRequest(sampling=_sampling()), ["prompt", "chat"]),
    "prompt over max_prompt_bytes": (
        generation_pb2.GenerateRequest(prompt="x" * (MAX_PROMPT_BYTES + 1), sampling=_sampling()),
        ["prompt", "engine.max_prompt_bytes", str(MAX_PROMPT_BYTES)]),
    "multibyte prompt over max_prompt_bytes": (  # the limit counts bytes, not characters
        generation_pb2.GenerateRequest(prompt="é" * (MAX_PROMPT_BYTES // 2 + 1), sampling=_sampling()),
        ["prompt", "engine.max_prompt_bytes"]),
    "prompt longer than the context": (  # ~400 tokens in 2000 bytes: under the byte limit
        generation_pb2.GenerateRequest(prompt="one two three four five " * 80, sampling=_sampling()),
        ["prompt", "context", str(CONTEXT)]),
    "chat content over max_prompt_bytes": (
        generation_pb2.GenerateRequest(
            chat=common_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content="y" * (MAX_PROMPT_BYTES + 1))]),
            sampling=_sampling()),
        ["chat.messages[0].content"]),
    "empty chat": (generation_pb2.GenerateRequest(chat=common_pb2.ChatMessages(), sampling=_sampling()), ["chat.messages"]),
    "bad chat role": (
        generation_pb2.GenerateRequest(
            chat=common_pb2.ChatMessages(messages=[
                common_pb2.ChatMessage(role="user", content="hi"),
                common_pb2.ChatMessage(role="wizard", content="hello")]),
            sampling=_sampling()),
        ["chat.messages[1].role"]),
    "temperature -1": (generation_pb2.GenerateRequest(prompt="hi", sampling=_sampling(temperature=-1)), ["sampling.temperature"]),
    "temperature NaN": (generation_pb2.GenerateRequest(prompt="hi", sampling=_sampling(temperature=math.nan)), ["sampling.temperature"]),
    "temperature inf": (generation_pb2.GenerateRequest(prompt="hi", sampling=_sampling(temperature=math.inf)), ["sampling.temperature"]),
    "temperature 6": (generation_pb2.GenerateRequest(prompt="hi", sampling=_sampling(temperature=6)), ["sampling.temperature"]),
    "top_p 0": (generation_pb2.GenerateRequest(prompt="hi", sampling=_sampling(top_p=0)), ["sampling.top_p"]),
    "top_p 1.5": (generation_pb2.GenerateRequest(prompt="hi", sampling=_sampling(top_p=1.5)), ["sampling.top_p"]),
    "top_k -1": (generation_pb2.GenerateRequest(prompt="hi", sampling=_sampling(top_k=-1)), ["sampling.top_k"]),
    "top_k above vocab": (generation_pb2.GenerateRequest(prompt="hi", sampling=_sampling(top_k=10_000_000)), ["sampling.top_k"]),
    "min_p 2": (generation_pb2.GenerateRequest(prompt="hi", sampling=_sampling(min_p=2)), ["sampling.min_p"]),
    "repetition_penalty 0": (
        generation_pb2.GenerateRequest(prompt="hi", sampling=_sampling(repetition_penalty=0)), ["sampling.repetition_penalty"]),
    "max_tokens 0": (generation_pb2.GenerateRequest(prompt="hi", sampling=_sampling(max_tokens=0)), ["sampling.max_tokens"]),
    "max_tokens -5": (generation_pb2.GenerateRequest(prompt="hi", sampling=_sampling(max_tokens=-5)), ["sampling.max_tokens"]),
    "max_tokens above the limit": (
        generation_pb2.GenerateRequest(prompt="hi", sampling=_sampling(max_tokens=MAX_TOKENS_LIMIT + 1)),
        ["sampling.max_tokens", str(MAX_TOKENS_LIMIT)]),
    "17 stop strings": (
        generation_pb2.GenerateRequest(prompt="hi", sampling=_sampling(stop=[f"s{i}" for i in range(17)])), ["sampling.stop", "16"]),
    "empty stop string": (generation_pb2.GenerateRequest(prompt="hi", sampling=_sampling(stop=["ok", ""])), ["sampling.stop"]),
    "stop string over 256 bytes": (generation_pb2.GenerateRequest(prompt="hi", sampling=_sampling(stop=["z" * 257])), ["sampling.stop"]),
    "json_schema not JSON": (
        generation_pb2.GenerateRequest(prompt="hi", sampling=_sampling(json_schema="{not json")), ["sampling.json_schema"]),
    "json_schema not a schema": (
        generation_pb2.GenerateRequest(prompt="hi", sampling=_sampling(json_schema='{"type": "nonsense"}')), ["sampling.json_schema"]),
    "json_schema a bare number": (
        generation_pb2.GenerateRequest(prompt="hi", sampling=_sampling(json_schema="42")), ["sampling.json_schema"]),
    "grammar does not parse": (
        generation_pb2.GenerateRequest(prompt="hi", sampling=_sampling(grammar="this is not gbnf")), ["sampling.grammar"]),
    "grammar unterminated string": (
        generation_pb2.GenerateRequest(prompt="hi", sampling=_sampling(grammar='root ::= "yes')), ["sampling.grammar"]),
    "grammar undefined rule": (
        generation_pb2.GenerateRequest(prompt="hi", sampling=_sampling(grammar="root ::= answer")), ["sampling.grammar"]),
    "grammar without root": (
        generation_pb2.GenerateRequest(prompt="hi", sampling=_sampling(grammar='start ::= "a"')), ["sampling.grammar"]),
    "json_schema and grammar": (
        generation_pb2.GenerateRequest(
            prompt="hi", sampling=_sampling(json_schema='{"type": "string"}', grammar='root ::= "a"')),
        ["json_schema", "grammar"]),
    "unknown priority": (generation_pb2.GenerateRequest(prompt="hi", priority=99, sampling=_sampling()), ["priority", "99"]),
    "request_id of 1000 chars": (
        generation_pb2.GenerateRequest(prompt="hi", request_id="r" * 1000, sampling=_sampling()), ["request_id"]),
    "request_id not printable": (
        generation_pb2.GenerateRequest(prompt="hi", request_id="a\nb", sampling=_sampling()), ["request_id"]),
}


@pytest.mark.parametrize("req,names", list(_CASES.values()), ids=list(_CASES))
def test_generate_rejects(stub, req, names):
    _expect_invalid(lambda: _generate(stub, req), *names)


@pytest.mark.parametrize("req,names", [
    (generation_pb2.CountTokensRequest(prompt=""), ["prompt"]),
    (generation_pb2.CountTokensRequest(), ["prompt", "chat"]),
    (generation_pb2.CountTokensRequest(chat=common_pb2.ChatMessages()), ["chat.messages"]),
    (generation_pb2.CountTokensRequest(prompt="x" * (MAX_PROMPT_BYTES + 1)), ["engine.max_prompt_bytes"]),
    (generation_pb2.CountTokensRequest(
        chat=common_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="robot", content="hi")])), ["chat.messages[0].role"]),
], ids=["empty prompt", "no input", "empty chat", "prompt over max_prompt_bytes", "bad chat role"])
def test_count_tokens_rejects(stub, req, names):
    _expect_invalid(lambda: stub.CountTokens(req, timeout=10), *names)


def test_count_tokens_reports_prompt_over_context(stub):
    """CountTokens is how a client learns a prompt will not fit: it answers
    (no error) with no room left for output."""
    r = stub.CountTokens(generation_pb2.CountTokensRequest(prompt="one two three four five " * 80), timeout=10)
    assert r.context_window == CONTEXT
    assert r.num_tokens > CONTEXT
    assert r.max_output_tokens == 0


# ---- corrupt request bytes ------------------------------------------------

_GARBAGE = {
    "ff ff ff": b"\xff\xff\xff",
    "truncated varint tag": b"\x08",
    "end-group tag": b"\x0f",
    "length past the end": b"\x0a\x05ab",
}
_METHODS = ["/slmd.v1.Generation/Generate", "/slmd.v1.Generation/CountTokens", "/slmd.v1.Admin/Status"]


@pytest.mark.parametrize("method", _METHODS)
@pytest.mark.parametrize("data", list(_GARBAGE.values()), ids=list(_GARBAGE))
def test_corrupt_bytes_are_invalid_argument(channel, method, data):
    raw = dict(request_serializer=lambda b: b, response_deserializer=lambda b: b)
    if method.endswith("/Generate"):
        call = channel.unary_stream(method, **raw)
        _expect_invalid(lambda: list(call(data, timeout=10)), "could not be parsed")
    else:
        call = channel.unary_unary(method, **raw)
        _expect_invalid(lambda: call(data, timeout=10), "could not be parsed")


@pytest.mark.parametrize("method", _METHODS[:2])
def test_invalid_utf8_string_is_invalid_argument(channel, method):
    """Field 1 (`prompt`) as a length-delimited string holding bytes that are not UTF-8."""
    raw = dict(request_serializer=lambda b: b, response_deserializer=lambda b: b)
    data = b"\x0a\x02\xff\xfe"
    if method.endswith("/Generate"):
        call = channel.unary_stream(method, **raw)
        _expect_invalid(lambda: list(call(data, timeout=10)), "could not be parsed")
    else:
        call = channel.unary_unary(method, **raw)
        _expect_invalid(lambda: call(data, timeout=10), "could not be parsed")


# ---- a full queue ---------------------------------------------------------

async def test_full_queue_is_resource_exhausted_with_retry_after(daemon):
    """One running and one waiting request fill the daemon; further requests
    get RESOURCE_EXHAUSTED with a RetryInfo delay, the admitted ones finish."""
    async with AsyncClient(daemon.target, timeout=60) as client:
        first_token = asyncio.Event()

        async def long_run():
            chunks = []
            async for chunk in client.generate(COUNTING, max_tokens=200, temperature=0):
                chunks.append(chunk)
                if chunk.token_ids:
                    first_token.set()
            return chunks

        long_task = asyncio.create_task(long_run())
        await asyncio.wait_for(first_token.wait(), 30)  # it is running, not waiting
        extra = await asyncio.gather(
            *[client.complete(COUNTING, max_tokens=8, temperature=0) for _ in range(4)], return_exceptions=True)
        chunks = await long_task

    long_tokens = [t for c in chunks for t in c.token_ids]
    assert chunks[-1].finish_reason == FinishReason.LENGTH
    assert len(long_tokens) == 200

    exhausted = [e for e in extra if isinstance(e, ResourceExhausted)]
    done = [r for r in extra if not isinstance(r, BaseException)]
    assert len(exhausted) + len(done) == len(extra), [repr(e) for e in extra]
    assert exhausted, "no request was refused although the queue was full"
    assert done, "the one waiting slot was not used"
    for e in exhausted:
        assert e.retry_after is not None and e.retry_after > 0, e
        assert "max_waiting" in e.details, e.details
    for r in done:
        assert r.finish_reason == FinishReason.LENGTH and len(r.token_ids) == 8


# ---- constrained output ---------------------------------------------------

async def test_json_schema_output_matches_schema(daemon):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    async with AsyncClient(daemon.target, timeout=60) as client:
        r = await client.complete(
            messages=[{"role": "user", "content": "Give a person's name and age as JSON."}],
            json_schema=schema, max_tokens=80, temperature=0)
    assert r.finish_reason == FinishReason.STOP, r
    value = json.loads(r.text)
    assert set(value) == {"name", "age"}
    assert isinstance(value["name"], str)
    assert isinstance(value["age"], int) and not isinstance(value["age"], bool)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
async def test_grammar_output_matches(daemon, temperature):
    async with AsyncClient(daemon.target, timeout=60) as client:
        r = await client.complete("Is the sky blue? Answer:", grammar='root ::= "yes" | "no"',
                                  max_tokens=8, temperature=temperature, seed=7)
    assert r.text in ("yes", "no"), r.text
    assert r.finish_reason == FinishReason.STOP


# ---- still alive ----------------------------------------------------------

def test_daemon_still_serves(daemon, channel, stub):
    """Runs last in this module: the daemon survived everything above."""
    assert daemon.proc.poll() is None, daemon.log_text()[-3000:]
    out = _generate(stub, generation_pb2.GenerateRequest(
        prompt=COUNTING, sampling=common_pb2.SamplingParams(max_tokens=16, temperature=0)))
    assert out[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert sum(len(o.token_ids) for o in out) == 16
    st = admin_pb2_grpc.AdminStub(channel).Status(admin_pb2.StatusRequest(), timeout=10)
    assert st.running_requests == 0 and st.waiting_requests == 0
    assert st.context_window == CONTEXT
    assert "Traceback" not in daemon.log_text()
