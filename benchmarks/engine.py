"""slmd over gRPC versus a direct llama.cpp loop, same model, same prompts.

    .venv/bin/python benchmarks/engine.py [--model PATH] [--ns 1,4,8,16]

Direct loop: one llama_context (same parameters as the daemon), N sequences;
prefill in chunks of up to --step-tokens tokens, then every decode step is one
llama_decode holding the next token of all N sequences, greedy argmax.

slmd: a real `slmd serve` subprocess, N concurrent clients on its Unix socket.
- prefill tokens/s: N requests with max_tokens=1 at once, total prompt tokens / wall time;
- decode tokens/s: N requests of --decode-tokens tokens (ignore_eos), tokens
  streamed while all N were decoding / that window (steady state).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import slmd.runtime  # noqa: F401  (same OpenMP wait policy as the daemon, before llama_cpp loads)
import llama_cpp as L

from benchmarks.harness import print_table, prompts_of, write_results, RESULTS
from slmd.models import DEFAULT_MODEL
from slmd.paths import default_data_dir
from slmd.runtime.llama import flash_attn_type
from slmd.testing import start_daemon
from slmd.tokenizer import Tokenizer
from slmd_client import AsyncClient


class DirectLoop:
    def __init__(self, model: Path, n_seq: int, ctx_per_seq: int, n_batch: int, threads: int,
                 n_gpu_layers: int = 0) -> None:
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = 999 if n_gpu_layers < 0 else n_gpu_layers  # as slmd's runtime does
        self.model = L.llama_model_load_from_file(str(model).encode(), mp)
        cp = L.llama_context_default_params()
        cp.n_seq_max, cp.n_ctx, cp.n_batch, cp.n_ubatch = n_seq, n_seq * ctx_per_seq, n_batch, min(512, n_batch)
        cp.n_threads = cp.n_threads_batch = threads
        cp.kv_unified = False
        cp.flash_attn_type = flash_attn_type("auto", n_gpu_layers)  # as slmd's default
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.mem = L.llama_get_memory(self.ctx)
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.n_batch = n_batch
        self.batch = L.llama_batch_init(n_batch, 0, 1)

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        b = self.batch
        for i, (tok, pos, seq, logits) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, logits
            b.seq_id[i][0] = seq
        b.n_tokens = len(items)
        assert L.llama_decode(self.ctx, b) == 0

    def _argmax(self, idx: int) -> int:
        return int(np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, idx), shape=(self.n_vocab,)).argmax())

    def run(self, prompts: list[list[int]], decode_tokens: int) -> tuple[float, float]:
        L.llama_memory_clear(self.mem, True)
        # prefill: pack the prompts' tokens into batches of n_batch
        pending = [(tok, pos, s, pos == len(p) - 1) for s, p in enumerate(prompts) for pos, tok in enumerate(p)]
        t0 = time.perf_counter()
        last = {}
        for i in range(0, len(pending), self.n_batch):
            chunk = pending[i : i + self.n_batch]
            self._decode(chunk)
            for j, (_, _, s, lg) in enumerate(chunk):
                if lg:
                    last[s] = self._argmax(j)
        prefill = sum(map(len, prompts)) / (time.perf_counter() - t0)
        pos = [len(p) for p in prompts]
        toks = [last[s] for s in range(len(prompts))]
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            self._decode([(toks[s], pos[s], s, True) for s in range(len(prompts))])
            toks = [self._argmax(s) for s in range(len(prompts))]
            pos = [p + 1 for p in pos]
        decode = len(prompts) * decode_tokens / (time.perf_counter() - t0)
        return prefill, decode

    def close(self) -> None:
        L.llama_batch_free(self.batch)
        L.llama_free(self.ctx)
        L.llama_model_free(self.model)


async def slmd_run(target: str, prompts: list[str], decode_tokens: int) -> tuple[float, float, int]:
    async with AsyncClient(target) as c:
        t0 = time.perf_counter()
        res = await asyncio.gather(*(c.complete(p, max_tokens=1, temperature=0.0) for p in prompts))
        prefill_wall = time.perf_counter() - t0
        n_prompt = sum(r.usage.prompt_tokens for r in res)

        stamps: list[list[float]] = [[] for _ in prompts]

        async def one(i: int, p: str) -> None:
            async for ch in c.generate(p, max_tokens=decode_tokens, temperature=0.0, ignore_eos=True):
                now = time.perf_counter()
                stamps[i].extend([now] * len(ch.token_ids))

        await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    start = max(s[0] for s in stamps)  # every sequence is decoding from here ...
    end = min(s[-1] for s in stamps)  # ... until the first one finishes
    n = sum(sum(1 for t in s if start < t <= end) for s in stamps)
    decode = n / (end - start) if end > start and n else float("nan")
    return n_prompt / prefill_wall, decode, n_prompt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=default_data_dir() / "models" / DEFAULT_MODEL.filename)
    ap.add_argument("--ns", default="1,4,8,16")
    ap.add_argument("--prompt-tokens", type=int, default=800)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--step-tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--n-gpu-layers", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per N (best of them is reported)")
    ap.add_argument("--name", default="engine")
    args = ap.parse_args()
    ns = [int(x) for x in args.ns.split(",")]
    n_max = max(ns)
    import os

    threads = args.threads or os.cpu_count()
    tok = Tokenizer.from_gguf(args.model)

    # Both stay loaded and the rounds alternate (direct, slmd, direct, slmd ...) at each N, so drift in
    # the machine's load hits both alike; each figure is the best of its rounds (noise only slows).
    direct = DirectLoop(args.model, n_max, 2048, args.step_tokens, threads, args.n_gpu_layers)
    direct_res: dict[int, tuple[float, float]] = {}
    slmd_res: dict[int, tuple[float, float, int]] = {}
    paired: dict[int, list[tuple[float, float]]] = {}  # per round: (prefill ratio, decode ratio)
    printed: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = start_daemon(Path(tmp), args.model, "--max-running", str(n_max), "--context", "2048",
                         "--step-tokens", str(args.step_tokens), "--threads", str(threads),
                         "--n-gpu-layers", str(args.n_gpu_layers), "--log-level", "warning")
        try:
            for n in ns:
                for r in range(args.rounds):
                    ps = [tok.encode(p, add_bos=tok.add_bos)
                          for p in prompts_of(tok, n, args.prompt_tokens, tag=f"d{n}r{r}-")]
                    dp, dd = direct.run(ps, args.decode_tokens)
                    sp, sd, k = asyncio.run(slmd_run(d.target, prompts_of(tok, n, args.prompt_tokens,
                                                                          tag=f"s{n}r{r}-"), args.decode_tokens))
                    line = (f"N={n} round {r}: direct prefill {dp:.1f} decode {dd:.1f} tok/s; "
                            f"slmd prefill {sp:.1f} decode {sd:.1f} tok/s")
                    print(line, flush=True)
                    printed.append(line)
                    paired.setdefault(n, []).append((sp / dp, sd / dd))
                    odp, odd = direct_res.get(n, (0.0, 0.0))
                    direct_res[n] = (max(odp, dp), max(odd, dd))
                    osp, osd, _ = slmd_res.get(n, (0.0, 0.0, 0))
                    slmd_res[n] = (max(osp, sp), max(osd, sd), k)
        finally:
            d.stop()
            direct.close()

    header = ["N", "direct prefill tok/s", "slmd prefill tok/s", "prefill ratio", "prefill ratio, paired median",
              "direct decode tok/s", "slmd decode tok/s", "decode ratio", "decode ratio, paired median"]
    rows = []
    for n in ns:
        (dp, dd), (sp, sd, _) = direct_res[n], slmd_res[n]
        rows.append([n, dp, sp, sp / dp, statistics.median(p for p, _ in paired[n]),
                     dd, sd, sd / dd, statistics.median(d for _, d in paired[n])])
    print()
    print_table(header, rows)
    path = write_results(args.name, "slmd vs a direct llama.cpp loop", header, rows, [
        f"Model: {args.model.name}; prompts of about {args.prompt_tokens} tokens, distinct per request; "
        f"{args.decode_tokens} decoded tokens per request (greedy, ignore_eos); step budget {args.step_tokens}; "
        f"{threads} threads; n_gpu_layers {args.n_gpu_layers}. Direct loop and daemon loaded side by side; at each N "
        f"{args.rounds} alternating rounds. 'ratio': best slmd round over best direct round; 'paired median': the "
        "median over rounds of slmd's round over the direct round just before it (one slow or fast outlier round on "
        "either side moves it less).",
        "Targets: slmd >= 0.95x the direct loop at N = 1, >= 0.9x at every other N.",
        "", "Rounds (as printed):", "", *(f"- {line}" for line in printed),
    ])
    _plot(ns, direct_res, slmd_res, RESULTS / f"{args.name}.png")
    print(f"\nwrote {path} and {path.with_suffix('.png')}")


def _plot(ns, direct_res, slmd_res, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(ns))
    for ax, k, title in ((axes[0], 0, "prefill tokens/s"), (axes[1], 1, "decode tokens/s (aggregate)")):
        ax.bar(x - 0.2, [direct_res[n][k] for n in ns], 0.4, label="direct llama.cpp loop")
        ax.bar(x + 0.2, [slmd_res[n][k] for n in ns], 0.4, label="slmd over gRPC")
        ax.set_xticks(x, [f"N={n}" for n in ns])
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
