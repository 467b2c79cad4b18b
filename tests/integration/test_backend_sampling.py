"""Greedy sampling inside llama.cpp's decode graph (`llama_set_sampler`) picks
the same tokens as the host argmax over the logits, alone and in a batch that
mixes it with sequences sampled on the host; streams keep or drop their chain
as requests of either kind open them. (ggml's CPU argmax keeps the last of
equal maxima, numpy the first: exact ties would differ; none occur here.)"""

from __future__ import annotations

import pytest

from slmd.request import SamplingParams
from slmd.runtime.base import SeqWork, StepBatch
from slmd.runtime.llama import LlamaRuntime, RuntimeConfig

N, STEPS = 6, 24


@pytest.fixture(scope="module", params=["tiny", "default"])
def runtime(request, tiny_model, default_model):
    path = tiny_model if request.param == "tiny" else default_model
    rt = LlamaRuntime(RuntimeConfig(path, num_sequences=N, context_per_sequence=256, batch_tokens=256,
                                    backend_sampling=True))
    yield rt
    rt.close()


def _generate(rt: LlamaRuntime, sampling) -> list[list[int]]:
    """N sequences: one prefill batch, then STEPS decode batches of all N."""
    prompts = [rt.tokenize(f"Note {i}: the quick brown fox said that the weather") for i in range(N)]
    for s in range(N):
        rt.open(s, sampling(s))
    out = rt.step(StepBatch((tuple(SeqWork(s, p, 0, True) for s, p in enumerate(prompts)),)))
    ids = [[out.sampled[s]] for s in range(N)]
    for k in range(STEPS):
        out = rt.step(StepBatch((tuple(SeqWork(s, [ids[s][-1]], len(prompts[s]) + k, True) for s in range(N)),)))
        assert not out.failed
        for s in range(N):
            ids[s].append(out.sampled[s])
    for s in range(N):
        rt.release(s)
    return ids


def test_backend_greedy_equals_host_argmax(runtime):
    greedy = lambda s: SamplingParams()  # noqa: E731
    on = _generate(runtime, greedy)
    assert len(runtime._backend) == N  # attached, and kept across release
    runtime.backend_sampling = False  # greedy opens now detach: the host argmax
    try:
        off = _generate(runtime, greedy)
    finally:
        runtime.backend_sampling = True
    assert not runtime._backend
    assert on == off
    assert _generate(runtime, greedy) == off  # fresh chains attached again


def test_mixed_batch_host_rows_and_backend_rows(runtime):
    plain = _generate(runtime, lambda s: SamplingParams())
    # sequence 0 through a CPU chain (a penalty), the others in the graph
    mixed = _generate(runtime, lambda s: SamplingParams(repetition_penalty=1.5) if s == 0 else SamplingParams())
    assert 0 not in runtime._backend and len(runtime._backend) == N - 1
    assert mixed[1:] == plain[1:]
    runtime.backend_sampling = False  # the penalty row matches a host-only run of the same batch
    try:
        all_host = _generate(runtime, lambda s: SamplingParams(repetition_penalty=1.5) if s == 0 else SamplingParams())
    finally:
        runtime.backend_sampling = True
    assert all_host == mixed


def test_off_by_default(tiny_model):
    rt = LlamaRuntime(RuntimeConfig(tiny_model, num_sequences=2, context_per_sequence=128, batch_tokens=64))
    try:
        assert rt.backend_sampling is False  # measured slower than the host argmax (CPU and H100)
        rt.open(0, SamplingParams())
        assert not rt._backend
    finally:
        rt.close()
