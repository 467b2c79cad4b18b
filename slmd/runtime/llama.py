"""The llama.cpp backend, through llama-cpp-python's low-level ctypes API.

One model, one context with `num_sequences` KV sequences. Each `step` group is
one `llama_decode`. ctypes releases the GIL during every foreign call, so the
asyncio thread keeps serving while a step runs."""

from __future__ import annotations

import ctypes
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as L
import numpy as np

from slmd.request import SamplingParams
from slmd.runtime.base import ModelInfo, StepBatch, StepOutput
from slmd.runtime.sampling import build_chain, free_chain, grammar_error

log = logging.getLogger(__name__)

_backend_ready = False


def _init_backend() -> None:
    global _backend_ready  # llama_backend_init is process-wide and idempotent; call it once
    if not _backend_ready:
        L.llama_backend_init()
        _backend_ready = True


class RuntimeError_(Exception):
    """The backend could not load or run the model."""


@dataclass(frozen=True)
class RuntimeConfig:
    model_path: Path
    num_sequences: int = 16
    context_per_sequence: int = 2048
    batch_tokens: int = 512
    n_threads: int = 0
    n_gpu_layers: int = 0
    kv_unified: bool = False
    use_mmap: bool = True


class _Batch:
    """A llama_batch whose arrays are numpy buffers we own, so a step fills
    them with slice assignments instead of per-token ctypes calls."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.seq = np.zeros(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        base = self.seq.ctypes.data
        ptr_t = ctypes.POINTER(L.llama_seq_id)
        self._seq_ptrs = (ptr_t * capacity)(*[ctypes.cast(base + 4 * i, ptr_t) for i in range(capacity)])
        self.struct = L.llama_batch()
        self.struct.token = self.token.ctypes.data_as(ctypes.POINTER(L.llama_token))
        self.struct.embd = None
        self.struct.pos = self.pos.ctypes.data_as(ctypes.POINTER(L.llama_pos))
        self.struct.n_seq_id = self.n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        self.struct.seq_id = ctypes.cast(self._seq_ptrs, ctypes.POINTER(ptr_t))
        self.struct.logits = self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))


class LlamaRuntime:
    def __init__(self, cfg: RuntimeConfig) -> None:
        _init_backend()
        self.cfg = cfg
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = 999 if cfg.n_gpu_layers < 0 else cfg.n_gpu_layers
        # weights memory-mapped (shared page cache, cheap unload) unless configured off
        mp.load_mode = L.LLAMA_LOAD_MODE_MMAP if cfg.use_mmap else L.LLAMA_LOAD_MODE_NONE
        self.model = L.llama_model_load_from_file(str(cfg.model_path).encode(), mp)
        if not self.model:
            raise RuntimeError_(f"llama.cpp could not load the model: {cfg.model_path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        threads = cfg.n_threads or os.cpu_count() or 1
        cp = L.llama_context_default_params()
        cp.n_seq_max = cfg.num_sequences
        cp.n_ctx = cfg.context_per_sequence * cfg.num_sequences
        cp.n_batch = cfg.batch_tokens
        cp.n_ubatch = min(cfg.batch_tokens, 512)
        cp.n_threads = threads
        cp.n_threads_batch = threads
        cp.kv_unified = cfg.kv_unified
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            L.llama_model_free(self.model)
            raise RuntimeError_(f"llama.cpp could not create a context for {cfg.model_path}")
        self.mem = L.llama_get_memory(self.ctx)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self._batch = _Batch(cfg.batch_tokens)
        self._chains: dict[int, object] = {}
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
            context_per_sequence=min(cfg.context_per_sequence, L.llama_n_ctx_seq(self.ctx),
                                     L.llama_model_n_ctx_train(self.model) or cfg.context_per_sequence),
            num_sequences=cfg.num_sequences,
        )

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
        if not sampling.is_greedy:
            chain = build_chain(self.vocab, sampling)
            for t in replay:  # a resumed request: penalties and grammar pick up where they were
                L.llama_sampler_accept(chain, t)
            self._chains[seq_id] = chain

    def release(self, seq_id: int) -> None:
        L.llama_memory_seq_rm(self.mem, seq_id, -1, -1)
        free_chain(self._chains.pop(seq_id, None))

    def copy_prefix(self, src_seq: int, dst_seq: int, num_tokens: int) -> None:
        """Separate KV streams copy the whole source stream (llama.cpp supports
        only full cross-stream copies; the buffer copy runs at the next decode),
        then the tail is cut; a unified cache shares the cells without copying."""
        if self.cfg.kv_unified:
            L.llama_memory_seq_cp(self.mem, src_seq, dst_seq, 0, num_tokens)
        else:
            L.llama_memory_seq_cp(self.mem, src_seq, dst_seq, -1, -1)
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
        L.llama_memory_seq_rm(self.mem, scratch_seq, -1, -1)

    @property
    def kv_bytes_per_token(self) -> float:
        """Bytes of K and V per token (f16 cache), for save-or-recompute choices."""
        n_embd_kv = L.llama_model_n_embd(self.model) * L.llama_model_n_head_kv(self.model) // max(1, L.llama_model_n_head(self.model))
        return 2 * 2 * L.llama_model_n_layer(self.model) * n_embd_kv

    def restore(self, seq_id: int, data: bytes) -> None:
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if L.llama_state_seq_set_data(self.ctx, buf, len(data), seq_id) == 0:
            raise RuntimeError_(f"could not restore the KV state of sequence {seq_id}")

    # ---- the step ---------------------------------------------------------

    def step(self, batch: StepBatch) -> StepOutput:
        out = StepOutput()
        t0 = time.perf_counter()
        b = self._batch
        for group in batch.groups:
            n = 0
            sample_at: list[tuple[int, int]] = []
            for w in group:
                k = len(w.token_ids)
                if n + k > b.capacity:
                    raise ValueError(f"step group of more than {b.capacity} tokens")
                b.token[n : n + k] = w.token_ids
                b.pos[n : n + k] = np.arange(w.start_pos, w.start_pos + k, dtype=np.int32)
                b.seq[n : n + k] = w.seq_id
                b.logits[n : n + k] = 0
                if w.sample:
                    b.logits[n + k - 1] = 1
                    sample_at.append((w.seq_id, n + k - 1))
                n += k
            if n == 0:
                continue
            b.struct.n_tokens = n
            rc = L.llama_decode(self.ctx, b.struct)
            if rc != 0:
                why = {1: "no KV cache slot for the batch", 2: "decode aborted"}.get(rc, f"llama_decode returned {rc}")
                for w in group:
                    out.failed[w.seq_id] = why
                continue
            self._sample(sample_at, out.sampled)
        out.decode_seconds = time.perf_counter() - t0
        return out

    def _sample(self, sample_at: list[tuple[int, int]], sampled: dict[int, int]) -> None:
        """Greedy sequences: one argmax over all output rows at once (the rows
        of llama_get_logits follow the batch order of the flagged tokens);
        the others through their sampler chains."""
        if not sample_at:
            return
        rows = np.ctypeslib.as_array(L.llama_get_logits(self.ctx), shape=(len(sample_at), self.n_vocab))
        best = rows.argmax(axis=1)
        for row, (seq_id, idx) in enumerate(sample_at):
            chain = self._chains.get(seq_id)
            if chain is None:
                sampled[seq_id] = int(best[row])
            else:
                sampled[seq_id] = int(L.llama_sampler_sample(chain, self.ctx, idx))

    def close(self) -> None:
        for chain in self._chains.values():
            free_chain(chain)
        self._chains.clear()
        if self.ctx:
            L.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            L.llama_model_free(self.model)
            self.model = None
