"""What the prefix cache's host tier costs per sequence: slmd's runtime saving a
sequence's KV state to host bytes (`LlamaRuntime.save`, llama_state_seq_get_size
+ llama_state_seq_get_data) and restoring it, against recomputing the same
tokens (prefill), at several sequence lengths.

    python3 -m benchmarks.gpu.kv_state_cost --n-gpu-layers -1 [--lengths 128,512,1024,2048]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import slmd.runtime  # noqa: F401  (OpenMP wait policy before llama_cpp loads)
import llama_cpp as L

from benchmarks.harness import print_table
from slmd.models import DEFAULT_MODEL
from slmd.paths import default_data_dir
from slmd.request import SamplingParams
from slmd.runtime.base import SeqWork, StepBatch
from slmd.runtime.llama import LlamaRuntime, RuntimeConfig


def prefill(rt: LlamaRuntime, seq: int, n: int, chunk: int) -> float:
    t0 = time.perf_counter()
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        rt.step(StepBatch(((SeqWork(seq, [100 + (i % 1000) for i in range(start, start + k)], start,
                                    start + k == n),),)))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=default_data_dir() / "models" / DEFAULT_MODEL.filename)
    ap.add_argument("--lengths", default="128,512,1024,2000")
    ap.add_argument("--n-gpu-layers", type=int, default=-1)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    rt = LlamaRuntime(RuntimeConfig(args.model, num_sequences=2, context_per_sequence=2048, batch_tokens=512,
                                    n_threads=args.threads, n_gpu_layers=args.n_gpu_layers))
    rows = []
    prefill(rt, 0, 64, 512)  # warm-up
    for n in (int(x) for x in args.lengths.split(",")):
        rt.release(0), rt.release(1)
        rt.open(0, SamplingParams())
        t_prefill = prefill(rt, 0, n, 512)
        t0 = time.perf_counter()
        size = L.llama_state_seq_get_size(rt.ctx, 0)
        t_size = time.perf_counter() - t0
        t0 = time.perf_counter()
        data = rt.save(0)
        t_save = time.perf_counter() - t0
        t0 = time.perf_counter()
        rt.restore(1, data)
        t_restore = time.perf_counter() - t0
        rows.append([n, len(data) / 1e6, t_prefill * 1e3, t_size * 1e3, t_save * 1e3, t_restore * 1e3,
                     len(data) / 1e6 / max(t_save, 1e-9)])
        assert size >= len(data)
    rt.close()
    header = ["tokens", "state MB", "prefill ms", "get_size ms", "save ms", "restore ms", "save MB/s"]
    print_table(header, rows)


if __name__ == "__main__":
    main()
