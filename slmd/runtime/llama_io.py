"""The llama.cpp runtime's buffers and hooks: the batch arrays a step fills,
a launched step awaiting its sampling, and the abort callback behind
`interrupt`."""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

import llama_cpp as L
import numpy as np

from slmd.runtime.base import StepOutput


def libc_callback(name: str, cfunctype):
    """libc's function `name` as a C callback of type `cfunctype`: llama.cpp
    calls it without the GIL, where a Python callback would take it on every
    call from inside a decode."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
    return cfunctype(ctypes.cast(getattr(libc, name), ctypes.c_void_p).value)


def flag_abort_callback():
    """libc's strlen as llama.cpp's abort callback over a one-byte flag: it
    returns 1 once the flag byte is set and 0 while it is clear. ggml's CPU
    backend calls the callback after every graph node from a worker thread,
    hundreds of times per step; this one reads memory another thread writes."""
    return libc_callback("strlen", L.ggml_abort_callback)


@dataclass
class Launched:
    out: StepOutput
    t0: float
    sample_at: list[tuple[int, int]]  # the last group's (seq_id, batch index) to sample


class BatchBuffers:
    """A llama_batch whose arrays are numpy buffers we own, so a step fills
    them with slice assignments instead of per-token ctypes calls."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.seq = np.zeros(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        # item writes through memoryviews skip numpy's per-call machinery (small steps)
        self.views = (memoryview(self.token), memoryview(self.pos), memoryview(self.seq), memoryview(self.logits))
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
