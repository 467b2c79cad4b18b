"""The model slot: the engine's runtime, which can be unloaded to give its
memory back (weights are memory-mapped, so unloading unmaps them; the KV
buffers are freed) and loaded again from the same factory. A reload right
after an unload is a warm start: the GGUF pages are still in the page cache.

Everything the daemon needs from the model while it is unloaded is kept
from the first load: its info, token pieces and end-of-generation table
(small: one entry per vocabulary token). A grammar is checked against a
vocabulary-only model (no weights, no context) while unloaded."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

from slmd.request import SamplingParams
from slmd.runtime.base import ModelInfo, Runtime, StepBatch, StepOutput

log = logging.getLogger(__name__)


class NotLoaded(Exception):
    """The runtime was used while the model is unloaded (an engine bug)."""


class ModelSlot:
    """A `Runtime` that delegates to a loaded runtime, or is unloaded."""

    def __init__(self, factory: Callable[[int | None], Runtime] | None, runtime: Runtime | None = None, *,
                 grammar_check: Callable[[str], str | None] | None = None) -> None:
        self._factory = factory  # num_sequences (None: as configured) -> a loaded runtime
        self._rt = runtime if runtime is not None else self._make(None)
        self._grammar_check = grammar_check  # used while unloaded
        self._lock = threading.Lock()  # swapping the runtime vs. grammar checks from the asyncio thread
        self.info: ModelInfo = self._rt.info  # as first loaded (the configured size)
        self.num_sequences = self.info.num_sequences  # of the context now, or last loaded
        self.kv_bytes_per_token = float(getattr(self._rt, "kv_bytes_per_token", 0.0))
        n = self.info.n_vocab
        self._pieces = [self._rt.token_bytes(t) for t in range(n)]
        self._eog = [self._rt.is_eog(t) for t in range(n)]
        self.num_loads = 1
        self.last_load_seconds = 0.0

    def _make(self, num_sequences: int | None) -> Runtime:
        if self._factory is None:
            raise NotLoaded("this runtime cannot be reloaded (no factory)")
        return self._factory(num_sequences)

    # ---- lifecycle (engine thread) -------------------------------------------

    @property
    def is_loaded(self) -> bool:
        return self._rt is not None

    @property
    def can_unload(self) -> bool:
        return self._factory is not None

    def load(self, num_sequences: int | None = None) -> float:
        """Load again with `num_sequences` KV streams (None: as configured);
        a no-op when loaded. Returns the seconds it took."""
        if self._rt is not None:
            return 0.0
        t0 = time.perf_counter()
        rt = self._make(num_sequences)  # outside the lock: a grammar check must not wait seconds for this
        with self._lock:
            self._rt = rt
        self.num_sequences = rt.info.num_sequences
        self.num_loads += 1
        self.last_load_seconds = time.perf_counter() - t0
        return self.last_load_seconds

    def unload(self) -> None:
        with self._lock:
            if self._rt is None or self._factory is None:
                return
            rt, self._rt = self._rt, None
            rt.close()

    def close(self) -> None:
        with self._lock:
            if self._rt is not None:
                self._rt.close()
                self._rt = None

    @property
    def _loaded(self) -> Runtime:
        if self._rt is None:
            raise NotLoaded("the model is unloaded")
        return self._rt

    # ---- usable while unloaded ------------------------------------------------

    def token_bytes(self, token_id: int) -> bytes:
        return self._pieces[token_id]

    def is_eog(self, token_id: int) -> bool:
        return self._eog[token_id]

    def validate_grammar(self, grammar: str) -> str | None:
        with self._lock:
            if self._rt is not None:
                return self._rt.validate_grammar(grammar)
            return self._grammar_check(grammar) if self._grammar_check else None

    # ---- the Runtime protocol (loaded only) -----------------------------------

    def open(self, seq_id: int, sampling: SamplingParams, replay: tuple[int, ...] = ()) -> None:
        self._loaded.open(seq_id, sampling, replay)

    def step(self, batch: StepBatch) -> StepOutput:
        return self._loaded.step(batch)

    @property
    def async_launch(self) -> bool:
        return self._rt is not None and self._rt.async_launch

    def launch(self, batch: StepBatch):
        return self._loaded.launch(batch)

    def collect(self, launched) -> StepOutput:
        return self._loaded.collect(launched)

    def interrupt(self) -> None:
        rt = self._rt  # any thread; an unloaded model has no step to stop
        if rt is not None:
            rt.interrupt()

    def clear_interrupt(self) -> None:
        rt = self._rt
        if rt is not None:
            rt.clear_interrupt()

    def release(self, seq_id: int) -> None:
        self._loaded.release(seq_id)

    def copy_prefix(self, src_seq: int, dst_seq: int, num_tokens: int) -> None:
        self._loaded.copy_prefix(src_seq, dst_seq, num_tokens)

    def truncate(self, seq_id: int, num_tokens: int) -> None:
        self._loaded.truncate(seq_id, num_tokens)

    def flush_copies(self, scratch_seq: int) -> None:
        self._loaded.flush_copies(scratch_seq)

    def save(self, seq_id: int) -> bytes:
        return self._loaded.save(seq_id)

    def restore(self, seq_id: int, data: bytes) -> None:
        self._loaded.restore(seq_id, data)


def vocab_grammar_check(model_path: Path) -> Callable[[str], str | None]:
    """Check GBNF against a vocabulary-only llama.cpp model, loaded for the
    check and freed after it (a few MB, tens of ms): nothing stays resident
    while the model is unloaded."""

    def check(grammar: str) -> str | None:
        import llama_cpp as L

        from slmd.runtime.sampling import grammar_error

        mp = L.llama_model_default_params()
        mp.vocab_only = True
        model = L.llama_model_load_from_file(str(model_path).encode(), mp)
        if not model:
            return None  # cannot check now: the sampler set-up will fail cleanly instead
        try:
            return grammar_error(L.llama_model_get_vocab(model), grammar)
        finally:
            L.llama_model_free(model)

    return check
