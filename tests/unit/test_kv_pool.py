"""The pooled KV layout (engine.kv_pool_tokens) in the scheduler: the pool's
cells are never overcommitted. The tests play the runtime's part with a
cell-level model of llama.cpp's unified cache (copies share cells, a restore
places the whole saved state before its tail is cut, a decode places one
cell per token and fails when none is free) and the core's part in running
the ops, so "never overcommitted" is checked against what llama.cpp would
do, not against the scheduler's own count."""

from __future__ import annotations

import random

import pytest

from slmd.cache.prefix_cache import CacheConfig
from slmd.request import Priority, Request, RequestStatus, SamplingParams
from slmd.runtime.base import StepOutput
from slmd.scheduler import ops as O
from slmd.scheduler.scheduler import Scheduler, SchedulerConfig

TOKEN = 7  # what every decode samples (never end-of-generation)


class UnifiedKV:
    """Cells of one unified cache: each sequence is its list of cells by
    position; a cell is free when no sequence uses it."""

    def __init__(self, num_cells: int) -> None:
        self.num_cells = num_cells
        self.refs: dict[int, int] = {}  # cell -> sequences using it
        self.seqs: dict[int, list[int]] = {}
        self._next = 0
        self.peak = 0

    @property
    def used(self) -> int:
        return len(self.refs)

    def _alloc(self, seq: int, num: int) -> None:
        assert self.used + num <= self.num_cells, f"overcommit: {self.used} + {num} > {self.num_cells}"
        for _ in range(num):
            self._next += 1
            self.refs[self._next] = 1
            self.seqs.setdefault(seq, []).append(self._next)
        self.peak = max(self.peak, self.used)

    def truncate(self, seq: int, num: int) -> None:
        cells = self.seqs.get(seq, [])
        for c in cells[num:]:
            self.refs[c] -= 1
            if not self.refs[c]:
                del self.refs[c]
        self.seqs[seq] = cells[:num]

    def release(self, seq: int) -> None:
        self.truncate(seq, 0)

    def copy(self, src: int, dst: int, num: int) -> None:
        assert not self.seqs.get(dst), "copy into a sequence that holds cells"
        self.seqs[dst] = list(self.seqs[src][:num])
        assert len(self.seqs[dst]) == num, "copy of cells the source does not have"
        for c in self.seqs[dst]:
            self.refs[c] += 1

    def restore(self, seq: int, data: bytes, num: int) -> None:
        assert not self.seqs.get(seq)
        self._alloc(seq, int(data))
        self.truncate(seq, num)

    def decode(self, seq: int, start: int, num: int) -> None:
        assert len(self.seqs.get(seq, [])) == start, f"sequence {seq}: position {start}, has {len(self.seqs.get(seq, []))}"
        self._alloc(seq, num)

    def save(self, seq: int) -> bytes:
        return str(len(self.seqs.get(seq, []))).encode()


def run_ops(s: Scheduler, kv: UnifiedKV, ops: list[O.Op]) -> None:
    """What core.Engine._run_ops does, against the cell model."""
    for op in ops:
        if isinstance(op, O.Open):
            kv.release(op.seq_id)
        elif isinstance(op, O.Release):
            kv.release(op.seq_id)
        elif isinstance(op, O.Copy):
            kv.copy(op.src_seq, op.dst_seq, op.num_tokens)
        elif isinstance(op, O.Restore):
            kv.restore(op.dst_seq, op.data, op.num_tokens)
        elif isinstance(op, O.Save):
            s.cache.demote(op.namespace, op.node, kv.save(op.seq_id))
            kv.release(op.seq_id)
        elif isinstance(op, O.SaveRequest):
            req = s.get(op.request_id)
            if req is not None:
                req.saved_state = kv.save(op.seq_id)


def bound(s: Scheduler, out) -> int:
    """The scheduler's upper bound of the cells in use once the step ran,
    from its public state: KV of requests holding a sequence, device
    holders, this step's tokens."""
    held = [*s.running, *s.waiting]
    return (sum(r.num_computed_tokens for r in held if r.seq_id is not None) + s.cache.cached_tokens()
            + sum(w.num_tokens for w in out.work))


def step(s: Scheduler, kv: UnifiedKV) -> tuple[object, list[Request]]:
    out = s.schedule()
    assert bound(s, out) <= s.pool.num_cells
    run_ops(s, kv, out.ops)
    for g in out.batch.groups:
        for w in g:
            kv.decode(w.seq_id, w.start_pos, len(w.token_ids))
    s.update(out, StepOutput(sampled={w.seq_id: TOKEN for g in out.batch.groups for w in g if w.sample}))
    done, ops = s.take_finished()
    run_ops(s, kv, ops)
    return out, done


def sched(pool: int, *, seqs: int = 4, running: int = 0, budget: int = 16, ctx: int | None = None,
          cache: CacheConfig | None = None) -> tuple[Scheduler, UnifiedKV]:
    cfg = SchedulerConfig(num_sequences=seqs, max_running=running, step_token_budget=budget,
                          context_per_sequence=min(ctx or pool, pool), kv_pool_tokens=pool,
                          interactive_step_seconds=0, cache=cache or CacheConfig(enabled=False))
    return Scheduler(cfg, is_eog=lambda t: False), UnifiedKV(pool)


def mk(rid: str, prompt: list[int] | int, max_tokens: int = 4, prio: Priority = Priority.NORMAL, app: str = "a",
       det: bool = False) -> Request:
    ids = list(range(1, prompt + 1)) if isinstance(prompt, int) else prompt
    return Request(rid, ids, SamplingParams(max_tokens=max_tokens, ignore_eos=True), app_id=app, priority=prio,
                   deterministic=det)


def drain(s: Scheduler, kv: UnifiedKV, max_steps: int = 2000) -> list[Request]:
    finished = []
    for _ in range(max_steps):
        if not s.has_work:
            return finished
        finished += step(s, kv)[1]
    raise AssertionError("the scheduler made no progress")


def test_requests_that_fit_start_together():
    s, kv = sched(64, budget=64)
    for i in range(2):
        s.add(mk(f"r{i}", 20))
    out, _ = step(s, kv)
    assert sorted(w.num_tokens for w in out.work) == [20, 20]
    done = drain(s, kv)
    assert all(r.status == RequestStatus.FINISHED_LENGTH and len(r.output_ids) == 4 for r in done)


def test_a_request_whose_first_chunk_does_not_fit_waits_then_runs():
    s, kv = sched(32, budget=32)
    s.add(mk("a", 20, max_tokens=8))
    step(s, kv)
    s.add(mk("b", 20, max_tokens=4))  # 20 + 20 > 32: it waits, "a" is not preempted for it
    out, _ = step(s, kv)
    assert [w.request.request_id for w in out.work] == ["a"] and s.num_waiting == 1
    assert s.num_preemptions == 0
    done = drain(s, kv)
    assert {r.request_id for r in done} == {"a", "b"} and all(len(r.output_ids) == r.sampling.max_tokens for r in done)


def test_cache_holders_are_evicted_before_anything_else():
    cache = CacheConfig(enabled=True, min_tokens=4, host_bytes=1 << 20)
    s, kv = sched(48, budget=48, running=2, cache=cache)
    s.add(mk("first", 30, max_tokens=2))
    drain(s, kv)
    assert s.cache.cached_tokens() == 31  # its KV is a prefix-cache holder now
    s.add(mk("other", [100 + i for i in range(30)], max_tokens=2))  # 31 + 30 > 48: the holder gives way
    out, _ = step(s, kv)
    assert any(isinstance(o, O.Save) for o in out.ops) and s.num_preemptions == 0
    assert s.cache.cached_tokens() == 0 and out.work[0].num_tokens == 30
    drain(s, kv)
    s.add(mk("again", 30, max_tokens=2))  # the first prompt again: restored from the host tier
    out, _ = step(s, kv)
    assert any(isinstance(o, O.Restore) for o in out.ops)
    drain(s, kv)


def test_growing_decodes_preempt_the_newest_and_it_resumes():
    s, kv = sched(32, budget=32)
    s.add(mk("old", 12, max_tokens=12))
    step(s, kv)
    s.add(mk("new", 12, max_tokens=12))
    step(s, kv)
    # 24 + 24 cells would be needed: "new" (same class, newer) is paused and resumes later
    done = drain(s, kv)
    by_id = {r.request_id: r for r in done}
    assert by_id["new"].num_preemptions >= 1 and by_id["old"].num_preemptions == 0
    assert all(len(r.output_ids) == 12 for r in done)
    assert kv.peak <= 32


def test_prefills_that_fill_the_pool_do_not_deadlock():
    # four 24-token prompts in 8-token chunks: after three steps the pool is
    # full of partial prompts; one must give way for the others to finish
    s, kv = sched(64, budget=16, running=4)
    for i in range(4):
        s.add(mk(f"r{i}", 24, max_tokens=6))
    done = drain(s, kv)
    assert len(done) == 4 and all(len(r.output_ids) == 6 for r in done)


def test_higher_class_arrival_preempts_lower_class_work_for_cells():
    s, kv = sched(32, budget=32)
    s.add(mk("bg", 20, max_tokens=10, prio=Priority.BACKGROUND))
    step(s, kv)
    s.add(mk("ia", 20, max_tokens=2, prio=Priority.INTERACTIVE))
    out, _ = step(s, kv)
    assert any(w.request.request_id == "ia" for w in out.work)
    assert s.get("bg").status == RequestStatus.PREEMPTED
    done = drain(s, kv)
    assert {r.request_id for r in done} == {"bg", "ia"} and all(len(r.output_ids) == r.sampling.max_tokens for r in done)


def test_deterministic_chunks_are_all_or_nothing():
    # its prefill is cut in fixed 16-token chunks whatever the pool holds (its
    # numerics equal a solo run's): it waits for room, it is never shrunk
    s, kv = sched(40, budget=16)
    s.add(mk("a", 30, max_tokens=8))
    step(s, kv)
    s.add(mk("d", 20, max_tokens=2, det=True))
    chunks = []
    for _ in range(50):
        out, _ = step(s, kv)
        chunks += [w.num_tokens for w in out.work if w.request.request_id == "d" and w.is_prefill]
    assert chunks == [16, 4] and not s.has_work


@pytest.mark.parametrize("seed", [6, 7, 8])
def test_random_workload_never_overcommits_the_pool(seed):
    rng = random.Random(seed)
    cache = CacheConfig(enabled=True, min_tokens=4, host_bytes=4096)
    docs = [[1000 * d + i for i in range(rng.randint(20, 60))] for d in range(4)]
    preempted = hits = 0
    for pool, seqs, running in ((128, 8, 4), (96, 6, 6), (256, 16, 8)):
        s, kv = sched(pool, seqs=seqs, running=running, budget=rng.choice([16, 32, 48]), ctx=96, cache=cache)
        n, want, done = 0, {}, []
        for t in range(600):
            if t < 400 and rng.random() < 0.3:
                prompt = (rng.choice(docs) if rng.random() < 0.5 else []) + [rng.randint(1, 999) for _ in range(rng.randint(1, 20))]
                prompt = prompt[: s.cfg.context_per_sequence - 2]
                prio = rng.choice(list(Priority))
                r = mk(f"r{n}", prompt, max_tokens=rng.randint(1, 30), prio=prio, app=rng.choice("xyz"),
                       det=rng.random() < 0.1)
                want[r.request_id] = min(r.sampling.max_tokens, s.cfg.context_per_sequence - len(prompt))
                s.add(r)
                n += 1
            if rng.random() < 0.02 and s.running:  # a client goes away
                gone = rng.choice(s.running)
                s.finish(gone.request_id, RequestStatus.FINISHED_ABORTED, gone.finish_reason)
                want.pop(gone.request_id)
            done += step(s, kv)[1]
        done += drain(s, kv)
        assert kv.peak <= pool and s.num_running == s.num_waiting == 0
        got = {r.request_id: len(r.output_ids) for r in done if r.request_id in want}
        assert got == want  # every request ran to its length, none failed
        preempted, hits = preempted + s.num_preemptions, hits + s.cache.stats.hit_tokens
    assert preempted and hits  # (the workload went through both)
