"""The llama.cpp backend, through llama-cpp-python's low-level ctypes API.

One model, one context with `num_sequences` KV sequences: a stream of cells
each, or one unified pool of `kv_pool_tokens` cells that any sequence uses. Each `step` group is
one `llama_decode`. ctypes releases the GIL during every foreign call, so the
asyncio thread keeps serving while a step runs."""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as L
import numpy as np

from slmd.request import SamplingParams
from slmd.runtime.base import ModelInfo, RuntimeError_, StepBatch, StepOutput, kv_cells
from slmd.runtime.kv_state import restream
from slmd.runtime.llama_io import BatchBuffers, Launched, flag_abort_callback
from slmd.runtime.sampling import build_chain, free_chain, grammar_error, greedy_chain
from slmd.runtime.threads import GovernorConfig, ThreadGovernor

log = logging.getLogger(__name__)

_backend_ready = False
_PARALLEL_ARGMAX_ROWS = 32  # below this one thread is quicker than handing out work
_SMALL_GROUP = 8  # a decode group of at most this many one-token works is filled item by item
_STATE_COPY_FRACTION = 8  # prefix copies of at most 1/8 of a stream's cells move as a state (copy_prefix)


def _init_backend() -> None:
    global _backend_ready  # llama_backend_init is process-wide and idempotent; call it once
    if not _backend_ready:
        L.llama_backend_init()
        _backend_ready = True


@dataclass(frozen=True)
class RuntimeConfig:
    model_path: Path
    num_sequences: int = 16
    context_per_sequence: int = 2048
    batch_tokens: int = 512
    n_threads: int = 0
    n_gpu_layers: int = 0
    kv_unified: bool = False
    kv_pool_tokens: int = 0  # > 0: one unified cache of this many cells for all sequences
    use_mmap: bool = True
    lora_path: Path | None = None  # a GGUF LoRA adapter applied over the model
    lora_scale: float = 1.0
    backend_sampling: bool = False  # greedy argmax in the decode graph (GPU builds)
    argmax_threads: int = 0  # 0 = min(8, threads) on 4 or more threads, else 1
    flash_attn: str = "auto"  # "auto" | "on" | "off" (see flash_attn_type)
    adapt_threads: bool = True  # fewer CPU threads while other programs take the cores (threads.py)

    @property
    def is_unified(self) -> bool:
        return self.kv_unified or self.kv_pool_tokens > 0

    @property
    def num_cells(self) -> int:
        return kv_cells(self.num_sequences, self.context_per_sequence, self.kv_pool_tokens)


def _load_model(path: Path, mp) -> object:
    """llama_model_load_from_file on a thread of its own that then ends.
    ggml repacks weights for AMX under `omp parallel`, and OpenMP keeps a team
    of threads for every thread that opened one: with a loader's team beside
    the engine thread's, libgomp counts more threads than cores and cuts every
    barrier's spin to 100 rounds, so each of the ~1,000 barriers of a decode
    sleeps and wakes (2-core VM: 36 instead of 140 tokens/s for one
    sequence). A team ends with its thread."""
    result: list = []
    t = threading.Thread(target=lambda: result.append(L.llama_model_load_from_file(str(path).encode(), mp)),
                         name="slmd-load")
    t.start()
    t.join()
    return result[0] if result else None


def flash_attn_type(setting: str, n_gpu_layers: int) -> int:
    """llama.cpp's flash_attn_type for `model.flash_attn`. On the CPU its
    flash-attention kernel decoded at half the speed of the plain attention
    graph (2-core Xeon, default model, 800-token contexts: 64 vs 135 tokens/s
    for one sequence, 102 vs 213 for 16) while prefilling 1.4x faster; serving
    is mostly decoding, so "auto" turns it off there."""
    if setting == "on":
        return L.LLAMA_FLASH_ATTN_TYPE_ENABLED
    if setting == "off" or n_gpu_layers == 0:
        return L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    return L.LLAMA_FLASH_ATTN_TYPE_AUTO


class LlamaRuntime:
    def __init__(self, cfg: RuntimeConfig) -> None:
        _init_backend()
        self.cfg = cfg
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = 999 if cfg.n_gpu_layers < 0 else cfg.n_gpu_layers
        # weights memory-mapped (shared page cache, cheap unload) unless configured off
        mp.load_mode = L.LLAMA_LOAD_MODE_MMAP if cfg.use_mmap else L.LLAMA_LOAD_MODE_NONE
        self.model = _load_model(cfg.model_path, mp)
        if not self.model:
            raise RuntimeError_(f"llama.cpp could not load the model: {cfg.model_path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        threads = cfg.n_threads or os.cpu_count() or 1
        cp = L.llama_context_default_params()
        cp.n_seq_max = cfg.num_sequences
        cp.n_ctx = cfg.num_cells  # (llama.cpp rounds it up to a multiple of 256)
        cp.n_batch = cfg.batch_tokens
        cp.n_ubatch = min(cfg.batch_tokens, 512)
        cp.n_threads = threads
        cp.n_threads_batch = threads
        cp.kv_unified = cfg.is_unified
        cp.flash_attn_type = fa = flash_attn_type(cfg.flash_attn, cfg.n_gpu_layers)
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.num_threads = threads  # computing now (the governor may lower it)
        if not self.ctx:
            L.llama_model_free(self.model)
            raise RuntimeError_(f"llama.cpp could not create a context for {cfg.model_path}")
        self._chains: dict[int, object] = {}  # seq_id -> CPU sampler chain (non-greedy requests)
        # seq_id -> greedy chain attached to the context: the argmax runs in the
        # decode graph and, when every output of a ubatch has one, the
        # n_outputs x n_vocab logits are never copied to host memory
        self._backend: dict[int, object] = {}
        self._retired: list[object] = []  # detached chains, freed after the next decode
        self._logits_view: np.ndarray | None = None  # over llama.cpp's logits buffer (_logits)
        self._logits_addr = 0
        self._pending_copies: list[tuple[int, int]] = []  # stream copies not yet run (the next decode runs them)
        self._lora = None
        if cfg.lora_path is not None:
            self._apply_lora(cfg.lora_path, cfg.lora_scale)
        self.mem = L.llama_get_memory(self.ctx)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self._batch = BatchBuffers(cfg.batch_tokens)
        # CPU only, and not with flash attention, whose CPU kernel's results change with the thread count
        self._governor = ThreadGovernor(GovernorConfig(max_threads=threads)) \
            if cfg.adapt_threads and cfg.n_gpu_layers == 0 and fa == L.LLAMA_FLASH_ATTN_TYPE_DISABLED else None
        self._argmax_workers = cfg.argmax_threads or (min(8, threads) if threads >= 4 else 1)
        self._argmax_pool = ThreadPoolExecutor(self._argmax_workers, "slmd-argmax") \
            if self._argmax_workers > 1 else None
        # interrupt(): a running llama_decode stops after its current graph node
        self._abort_flag = ctypes.create_string_buffer(8)
        self._abort_cb = flag_abort_callback()  # kept referenced while the context may call it
        L.llama_set_abort_callback(self.ctx, self._abort_cb, ctypes.cast(self._abort_flag, ctypes.c_void_p))
        # Off unless asked for: on the CPU the sampling graph (a padded copy of
        # the logits, an argmax per sequence) made steps 2.5x slower at 64
        # sequences; on an H100 at 64 sequences decode was 6,913 tok/s with it
        # and 7,225 without (benchmarks/results/engine-gpu-n64.md).
        self.backend_sampling = bool(cfg.backend_sampling)
        self._pieces = [self._piece(t) for t in range(self.n_vocab)]
        self._eog = np.array([L.llama_vocab_is_eog(self.vocab, t) for t in range(self.n_vocab)], dtype=bool)
        self.info = ModelInfo(
            path=str(cfg.model_path),
            name=self.meta("general.name") or Path(cfg.model_path).stem,
            architecture=self.meta("general.architecture") or "unknown",
            n_vocab=self.n_vocab,
            n_ctx_train=L.llama_model_n_ctx_train(self.model),
            n_params=L.llama_model_n_params(self.model),
            size_bytes=L.llama_model_size(self.model),
            # past the trained context, position-embedding models (SlimLM/mpt) abort the process
            # and a request never outgrows the pool (the scheduler counts the configured cells)
            context_per_sequence=min(cfg.context_per_sequence, cfg.num_cells, L.llama_n_ctx_seq(self.ctx),
                                     L.llama_model_n_ctx_train(self.model) or cfg.context_per_sequence),
            num_sequences=cfg.num_sequences,
        )

    def _apply_lora(self, path: Path, scale: float) -> None:
        error = None
        if not Path(path).is_file():
            error = f"model.lora_path: no such file: {path}"
        else:
            self._lora = L.llama_adapter_lora_init(self.model, str(path).encode())
            if not self._lora:
                error = (f"llama.cpp could not load the LoRA adapter {path} over {self.cfg.model_path} "
                         "(not a GGUF LoRA, or made for another base model)")
            elif L.llama_set_adapters_lora(self.ctx, (L.llama_adapter_lora_p_ctypes * 1)(self._lora), 1,
                                           (ctypes.c_float * 1)(scale)) != 0:
                error = f"llama.cpp could not apply the LoRA adapter {path}"
        if error is not None:
            self.close()
            raise RuntimeError_(error)

    # ---- metadata ---------------------------------------------------------

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = L.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def _piece(self, token_id: int) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = L.llama_token_to_piece(self.vocab, token_id, buf, len(buf), 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self.vocab, token_id, buf, len(buf), 0, True)
        return buf.raw[:n]

    def token_bytes(self, token_id: int) -> bytes:
        return self._pieces[token_id]

    def is_eog(self, token_id: int) -> bool:
        return bool(self._eog[token_id])

    def validate_grammar(self, grammar: str) -> str | None:
        return grammar_error(self.vocab, grammar)

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        """llama.cpp's own tokenizer (the reference the tiktoken one is tested against)."""
        data = text.encode()
        n_max = len(data) + 8
        arr = (L.llama_token * n_max)()
        n = L.llama_tokenize(self.vocab, data, len(data), arr, n_max, add_special, parse_special)
        return list(arr[:n])

    # ---- sequences --------------------------------------------------------

    def open(self, seq_id: int, sampling: SamplingParams, replay: tuple[int, ...] = ()) -> None:
        self.release(seq_id)
        # Attaching or detaching re-reserves llama.cpp's compute graphs, so a
        # stream keeps its greedy chain across requests until a non-greedy one
        # opens it (greedy ids equal the host argmax; tests compare them).
        if sampling.is_greedy and self.backend_sampling:
            if seq_id not in self._backend:
                chain = greedy_chain()
                if L.llama_set_sampler(self.ctx, seq_id, chain):
                    self._backend[seq_id] = chain
                else:  # this backend cannot run it: the host argmax it is
                    free_chain(chain)
                    self.backend_sampling = False
            return
        self._detach(seq_id)
        if not sampling.is_greedy:
            chain = build_chain(self.vocab, sampling)
            for t in replay:  # a resumed request: penalties and grammar pick up where they were
                L.llama_sampler_accept(chain, t)
            self._chains[seq_id] = chain

    def _detach(self, seq_id: int) -> None:
        chain = self._backend.pop(seq_id, None)
        if chain is not None:
            L.llama_set_sampler(self.ctx, seq_id, None)
            self._retired.append(chain)  # the last graph may still point at it

    def release(self, seq_id: int) -> None:
        L.llama_memory_seq_rm(self.mem, seq_id, -1, -1)
        free_chain(self._chains.pop(seq_id, None))

    def copy_prefix(self, src_seq: int, dst_seq: int, num_tokens: int) -> None:
        """A unified cache shares the cells without copying. Separate KV
        streams copy: llama.cpp copies only whole streams across streams (at
        the next decode), 47 MB at 2048 tokens per stream, so a short source is
        moved as its sequence state instead (its cells only, at once); then the
        tail is cut. Measured (default model, 2048-token streams), copy plus
        the next decode: 16 cells 14.1 ms as a stream, 6.6 as a state; 256
        cells 14.6 vs 12.3; 800 cells 17.1 vs 28.2."""
        if self.cfg.is_unified:
            L.llama_memory_seq_cp(self.mem, src_seq, dst_seq, 0, num_tokens)
            return
        cells = L.llama_memory_seq_pos_max(self.mem, src_seq) + 1
        # (a state copy is immediate: it must not overtake a pending stream copy of either sequence)
        if cells * _STATE_COPY_FRACTION <= self.cfg.context_per_sequence and \
                not any(s in (src_seq, dst_seq) for pair in self._pending_copies for s in pair):
            self.restore(dst_seq, self.save(src_seq))
        else:
            L.llama_memory_seq_cp(self.mem, src_seq, dst_seq, -1, -1)
            self._pending_copies.append((src_seq, dst_seq))
        self.truncate(dst_seq, num_tokens)

    def truncate(self, seq_id: int, num_tokens: int) -> None:
        """Keep only the first `num_tokens` cells of a sequence."""
        L.llama_memory_seq_rm(self.mem, seq_id, num_tokens, -1)

    def save(self, seq_id: int) -> bytes:
        size = L.llama_state_seq_get_size(self.ctx, seq_id)
        buf = (ctypes.c_uint8 * size)()
        n = L.llama_state_seq_get_data(self.ctx, buf, size, seq_id)
        return ctypes.string_at(buf, n)  # (slicing a ctypes array goes byte by byte through Python ints)

    def flush_copies(self, scratch_seq: int) -> None:
        """Stream copies (`copy_prefix` across streams) run at the start of the
        next llama_decode, but `restore` writes a stream at once: a restore
        into a stream that a pending copy still reads from would corrupt the
        copy. A one-token decode into an empty scratch sequence runs them now."""
        b = self._batch
        b.token[0], b.pos[0], b.seq[0], b.logits[0] = 0, 0, scratch_seq, 0
        b.struct.n_tokens = 1
        L.llama_decode(self.ctx, b.struct)
        self._pending_copies.clear()
        L.llama_memory_seq_rm(self.mem, scratch_seq, -1, -1)

    @property
    def kv_bytes_per_token(self) -> float:
        """Bytes of K and V per token (f16 cache), for save-or-recompute choices."""
        n_embd_kv = L.llama_model_n_embd(self.model) * L.llama_model_n_head_kv(self.model) // max(1, L.llama_model_n_head(self.model))
        return 2 * 2 * L.llama_model_n_layer(self.model) * n_embd_kv

    def restore(self, seq_id: int, data: bytes) -> None:
        # saved in a context of another stream count (recreated under memory pressure)
        data = restream(data, 1 if self.cfg.is_unified else self.cfg.num_sequences)
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if L.llama_state_seq_set_data(self.ctx, buf, len(data), seq_id) == 0:
            raise RuntimeError_(f"could not restore the KV state of sequence {seq_id}")

    # ---- the step ---------------------------------------------------------

    def interrupt(self) -> None:
        """Stop the step in progress (any thread). ggml's CPU backend checks
        after each graph node; the GPU backends finish their part."""
        self._abort_flag[0] = b"x"

    def clear_interrupt(self) -> None:
        self._abort_flag[0] = b"\0"

    @property
    def async_launch(self) -> bool:
        """llama_decode returns before a GPU has finished (reading the logits
        waits for it), so the engine can do other work in between; on the CPU
        the decode itself computes."""
        return self.cfg.n_gpu_layers != 0

    def step(self, batch: StepBatch) -> StepOutput:
        return self.collect(self.launch(batch))

    def launch(self, batch: StepBatch) -> Launched:
        """Run every group's decode; sample all but the last group's (the
        batch buffers and logits are reused per group). `collect` samples
        the last, which waits for the device."""
        out = StepOutput()
        t0 = time.perf_counter()
        b = self._batch
        last: list[tuple[int, int]] = []
        for gi, group in enumerate(batch.groups):
            if last:
                self._sample(last, out.sampled)
                last = []
            n, sample_at = self._fill(group)
            if n == 0:
                continue
            b.struct.n_tokens = n
            rc = L.llama_decode(self.ctx, b.struct)
            self._pending_copies.clear()  # (the decode ran them, whatever it returned)
            if rc == 2:  # interrupted: this group and the ones after it did not run
                for g in batch.groups[gi:]:
                    for w in g:
                        # llama.cpp dropped the aborted ubatch's cells; earlier
                        # ubatches of the same decode are dropped here
                        L.llama_memory_seq_rm(self.mem, w.seq_id, w.start_pos, -1)
                        out.interrupted.add(w.seq_id)
                break
            if rc != 0:
                why = {1: "no KV cache slot for the batch"}.get(rc, f"llama_decode returned {rc}")
                for w in group:
                    out.failed[w.seq_id] = why
                continue
            if self._retired:  # that decode rebuilt the graphs without them
                for chain in self._retired:
                    free_chain(chain)
                self._retired.clear()
            last = sample_at
        return Launched(out, t0, last)

    def collect(self, launched: Launched) -> StepOutput:
        out = launched.out
        if launched.sample_at:
            self._sample(launched.sample_at, out.sampled)
        out.decode_seconds = time.perf_counter() - launched.t0
        if self._governor is not None and (n := self._governor.observe(out.decode_seconds)) is not None:
            L.llama_set_n_threads(self.ctx, n, n)
            log.info("CPU threads: %d of %d (%s)", n, self._governor.cfg.max_threads,
                     "other programs take the cores" if n < self.num_threads else "the cores are free again")
            self.num_threads = n
        return out

    def _fill(self, group) -> tuple[int, list[tuple[int, int]]]:
        """Write one group into the batch arrays with a few whole-array numpy
        operations (a per-sequence loop of slice assignments costs more than
        the decode of a small model at dozens of sequences); a few one-token
        works go through plain item writes instead. Returns the number of
        tokens and (seq_id, batch index) of each token to sample."""
        b = self._batch
        if len(group) <= _SMALL_GROUP and all(len(w.token_ids) == 1 for w in group):
            # Right after a decode has streamed the weights through the caches,
            # the ten numpy calls below cost ~85 us at one sequence (10 hot).
            tok, pos, seq, logits = b.views
            sample_at = []
            for i, w in enumerate(group):
                tok[i], pos[i], seq[i] = w.token_ids[0], w.start_pos, w.seq_id
                logits[i] = w.sample
                if w.sample:
                    sample_at.append((w.seq_id, i))
            return len(group), sample_at
        toks: list[int] = []
        lens, starts, seqs, samples = [], [], [], []
        for w in group:
            toks.extend(w.token_ids)
            lens.append(len(w.token_ids))
            starts.append(w.start_pos)
            seqs.append(w.seq_id)
            samples.append(w.sample)
        n = len(toks)
        if n > b.capacity:
            raise ValueError(f"step group of more than {b.capacity} tokens")
        if n == 0:
            return 0, []
        k = np.array(lens, dtype=np.int32)
        ends = np.cumsum(k, dtype=np.int32)
        b.token[:n] = toks
        # position of token j of work i: starts[i] + (j - first index of work i)
        b.pos[:n] = np.repeat(np.array(starts, dtype=np.int32) - (ends - k), k) + np.arange(n, dtype=np.int32)
        b.seq[:n] = np.repeat(np.array(seqs, dtype=np.int32), k)
        b.logits[:n] = 0
        last = (ends - 1)[np.array(samples, dtype=bool)]
        b.logits[last] = 1
        sample_seqs = [s for s, smp in zip(seqs, samples) if smp]
        return n, list(zip(sample_seqs, last.tolist()))

    def _sample(self, sample_at: list[tuple[int, int]], sampled: dict[int, int]) -> None:
        """Sequences with an attached greedy chain: the token the decode
        graph picked. Other greedy ones: one argmax over their output rows
        (the rows of llama_get_logits follow the batch order of the flagged
        tokens). The rest through their sampler chains."""
        host: list[tuple[int, int]] = []  # (output row, seq_id)
        for row, (seq_id, idx) in enumerate(sample_at):
            if seq_id in self._backend:
                tok = L.llama_get_sampled_token_ith(self.ctx, idx)
                if tok < 0:
                    raise RuntimeError_(f"no backend-sampled token for sequence {seq_id}")
                sampled[seq_id] = tok
            elif (chain := self._chains.get(seq_id)) is not None:
                sampled[seq_id] = int(L.llama_sampler_sample(chain, self.ctx, idx))
            else:
                host.append((row, seq_id))
        if not host:
            return
        rows = self._logits(len(sample_at))
        if len(host) < len(sample_at):  # (else host[i] is row i)
            rows = rows[[r for r, _ in host]]
        for (_, seq_id), tok in zip(host, self._argmax(rows)):
            sampled[seq_id] = tok

    def _logits(self, num_rows: int) -> np.ndarray:
        """The context's output logits as a (num_rows, n_vocab) array; the
        view is made again only when llama.cpp moved its buffer or it grew."""
        ptr = L.llama_get_logits(self.ctx)
        addr = ctypes.cast(ptr, ctypes.c_void_p).value
        view = self._logits_view
        if view is None or addr != self._logits_addr or len(view) < num_rows:
            view = np.ctypeslib.as_array(ptr, shape=(num_rows, self.n_vocab))
            self._logits_view, self._logits_addr = view, addr
        return view[:num_rows]

    def _argmax(self, rows: np.ndarray) -> list[int]:
        """Row-wise argmax; many rows are split over threads (numpy releases
        the GIL): 64 rows x 49k floats is 12.6 MB to scan, a tenth of a GPU
        step on one core."""
        if len(rows) < _PARALLEL_ARGMAX_ROWS or self._argmax_pool is None:
            return rows.argmax(axis=1).tolist()
        done = self._argmax_pool.map(lambda part: part.argmax(axis=1), np.array_split(rows, self._argmax_workers))
        return np.concatenate(list(done)).tolist()

    def close(self) -> None:
        pool = getattr(self, "_argmax_pool", None)  # (a failed LoRA load closes before it exists)
        if pool is not None:
            pool.shutdown(wait=False)
            self._argmax_pool = None
        for chain in self._chains.values():
            free_chain(chain)
        self._chains.clear()
        if self.ctx:
            L.llama_free(self.ctx)
            self.ctx = None
        for chain in [*self._backend.values(), *self._retired]:  # the context used them until freed
            free_chain(chain)
        self._backend.clear()
        self._retired.clear()
        if self._lora:
            L.llama_adapter_lora_free(self._lora)
            self._lora = None
        if self.model:
            L.llama_model_free(self.model)
            self.model = None
