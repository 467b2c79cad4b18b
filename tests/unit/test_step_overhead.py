"""The per-step shortcuts of issue 12 deliver exactly what the plain paths did:
the vectorized batch fill, the token slices without `all_ids`, and streamed
outputs merged when the event loop falls behind the engine."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from slmd.core import Engine
from slmd.output import merge_deltas
from slmd.request import ErrorKind, FinishReason, Request, RequestOutput, SamplingParams
from slmd.runtime.base import ModelInfo, SeqWork, StepDefaults, StepOutput
from slmd.runtime.llama import LlamaRuntime
from slmd.runtime.llama_io import BatchBuffers
from slmd.scheduler.scheduler import SchedulerConfig, _tokens


def _loop_fill(b: BatchBuffers, group) -> tuple[int, list[tuple[int, int]]]:
    """The per-sequence fill the runtime used before."""
    n, sample_at = 0, []
    for w in group:
        k = len(w.token_ids)
        b.token[n : n + k] = w.token_ids
        b.pos[n : n + k] = np.arange(w.start_pos, w.start_pos + k, dtype=np.int32)
        b.seq[n : n + k] = w.seq_id
        b.logits[n : n + k] = 0
        if w.sample:
            b.logits[n + k - 1] = 1
            sample_at.append((w.seq_id, n + k - 1))
        n += k
    return n, sample_at


class _Holder:  # just the batch, no model: `_fill` touches nothing else
    def __init__(self) -> None:
        self._batch = BatchBuffers(64)


def test_vectorized_fill_equals_the_loop():
    groups = [
        tuple(SeqWork(i, [100 + i], 30 + i, True) for i in range(16)),  # decode
        (SeqWork(3, list(range(20)), 7, True), SeqWork(0, [5], 40, True), SeqWork(9, list(range(12)), 0, False),
         SeqWork(2, [8, 9], 11, True)),  # chunked prefill among decodes
        (SeqWork(1, [4, 5, 6], 0, False),),
        # a few one-token works: the item-by-item path
        (SeqWork(5, [77], 12, True),),
        (SeqWork(2, [7], 3, True), SeqWork(0, [8], 900, False), SeqWork(6, [9], 0, True)),
    ]
    for group in groups:
        h = _Holder()
        h._batch.logits[:] = 1  # stale flags from an earlier step must not survive
        expect = _loop_fill(h._batch, group)
        want = [a.copy() for a in (h._batch.token, h._batch.pos, h._batch.seq, h._batch.logits)]
        h2 = _Holder()
        h2._batch.logits[:] = 1
        got = LlamaRuntime._fill(h2, group)
        assert got == expect
        n = got[0]
        for a, w in zip((h2._batch.token, h2._batch.pos, h2._batch.seq, h2._batch.logits), want):
            assert (a[:n] == w[:n]).all()


def test_token_slices_equal_all_ids():
    req = Request("r", [1, 2, 3, 4, 5], SamplingParams())
    req.output_ids = [6, 7, 8]
    for start in range(8):
        for num in range(0, 9 - start):
            assert _tokens(req, start, num) == req.all_ids[start : start + num]


def test_merge_deltas_keeps_text_tokens_and_finish():
    d = [RequestOutput("r", t, (i,)) for i, t in enumerate(["He", "llo", " w"])]
    fin = RequestOutput("r", "orld", (), finished=True, finish_reason=FinishReason.STOP, num_output_tokens=3)
    assert merge_deltas(d[:1]) == d[:1]
    [one] = merge_deltas(d)
    assert (one.text, one.token_ids, one.finished) == ("Hello w", (0, 1, 2), False)
    [last] = merge_deltas([*d, fin])
    assert (last.text, last.token_ids, last.finish_reason, last.num_output_tokens) == \
        ("Hello world", (0, 1, 2), FinishReason.STOP, 3)
    err = RequestOutput("r", "", (), finished=True, finish_reason=FinishReason.ABORT, error="x",
                        error_kind=ErrorKind.CANCELLED)
    text, final = merge_deltas([*d, err])  # callers raise on the error: the text goes first
    assert text.text == "Hello w" and not text.finished and final is err
    assert merge_deltas([fin]) == [fin]


class _CountingRuntime(StepDefaults):
    """Computes nothing: sequence s samples token 100 + its position."""

    kv_bytes_per_token = 0.0

    def __init__(self, n: int) -> None:
        self.info = ModelInfo("x", "x", "x", 1000, 2048, 1, 1, 2048, n)

    def token_bytes(self, t: int) -> bytes:
        return b" t%d" % t

    def is_eog(self, t: int) -> bool:
        return False

    def step(self, batch) -> StepOutput:
        out = StepOutput()
        for g in batch.groups:
            for w in g:
                if w.sample:
                    out.sampled[w.seq_id] = 100 + w.start_pos + len(w.token_ids) - 1
        time.sleep(0.001)
        return out

    def validate_grammar(self, g):
        return None

    def save(self, seq_id: int) -> bytes:
        return b""

    def __getattr__(self, name):  # open, release, copy_prefix, truncate, ...: no-ops
        return lambda *a, **k: None


async def test_a_slow_consumer_gets_merged_messages_with_the_same_content():
    n, max_tokens, prompt_len = 8, 40, 6
    eng = Engine(_CountingRuntime(2 * n), SchedulerConfig(num_sequences=2 * n, max_running=n,
                                                         context_per_sequence=2048))
    eng.start()
    try:
        async def one(i: int):
            req = Request(f"r{i}", list(range(1 + i, 1 + i + prompt_len)), SamplingParams(max_tokens=max_tokens))
            outs = []
            async for out in eng.stream(req):
                outs.append(out)
                time.sleep(0.01)  # a busy event loop: the engine runs ahead
            return outs

        results = await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        eng.stop(5)
    want_ids = tuple(100 + prompt_len - 1 + k for k in range(max_tokens))
    for outs in results:
        assert "".join(o.text for o in outs) == "".join(f" t{t}" for t in want_ids)
        assert tuple(t for o in outs for t in o.token_ids) == want_ids
        assert outs[-1].finished and outs[-1].finish_reason == FinishReason.LENGTH
        assert outs[-1].num_output_tokens == max_tokens and not any(o.finished for o in outs[:-1])
    assert any(len(o.token_ids) > 1 for outs in results for o in outs), "no output was merged"


def test_threaded_argmax_equals_numpy():
    from concurrent.futures import ThreadPoolExecutor

    class _Pool:  # just what `_argmax` touches
        _argmax_workers = 3
        _argmax_pool = ThreadPoolExecutor(3)

    rows = np.random.default_rng(0).standard_normal((70, 1000)).astype(np.float32)
    rows[5, 7] = rows[5, 900] = 50.0  # ties: the first index, as numpy
    try:
        for n in (1, 31, 32, 33, 64, 70):
            assert LlamaRuntime._argmax(_Pool(), rows[:n]) == rows[:n].argmax(axis=1).tolist()
    finally:
        _Pool._argmax_pool.shutdown()
