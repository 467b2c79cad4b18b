"""Where a busy daemon's time goes: `slmd serve` under N concurrent decoding
clients (engine.py's decode measurement), sampled by py-spy from outside.

    python3 -m benchmarks.gpu.profile_daemon --n-gpu-layers -1 --n 64 --out DIR

Writes DIR/pyspy.txt (py-spy's collapsed stacks of every thread, idle samples
left out) and prints the aggregate decode rate of the profiled rounds plus, per
thread, its busy share of the window and the functions with the most samples
(self and inclusive). Time inside C (grpc's core, llama.cpp, a CUDA wait) shows
as the Python frame that called it. Sampling costs the
daemon a little: read the rate printed by engine.py for the real figure.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.engine import slmd_run
from benchmarks.harness import prompts_of
from slmd.models import DEFAULT_MODEL
from slmd.paths import default_data_dir
from slmd.testing import start_daemon
from slmd.tokenizer import Tokenizer


def summarize(collapsed: Path, window_samples: int, top: int = 25) -> str:
    """Per thread: busy share of the window, then the top frames by self and inclusive count."""
    per_thread: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    selfc: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    totals: collections.Counter = collections.Counter()
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        thread, frames = frames[0], frames[1:]
        totals[thread] += int(n)
        for f in set(frames):
            per_thread[thread][f] += int(n)
        if frames:
            selfc[thread][frames[-1]] += int(n)
    out = []
    for thread, total in totals.most_common():
        out.append(f"\n== {thread}: {total} busy samples, {100 * total / window_samples:.0f}% of the window")
        out.append("  self:")
        out += [f"    {100 * c / total:5.1f}%  {f}" for f, c in selfc[thread].most_common(top)]
        out.append("  inclusive:")
        out += [f"    {100 * c / total:5.1f}%  {f}" for f, c in per_thread[thread].most_common(top)]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=default_data_dir() / "models" / DEFAULT_MODEL.filename)
    ap.add_argument("--n", type=int, default=64, help="concurrent requests")
    ap.add_argument("--prompt-tokens", type=int, default=800)
    ap.add_argument("--decode-tokens", type=int, default=256)
    ap.add_argument("--duration", type=int, default=20, help="seconds py-spy samples")
    ap.add_argument("--n-gpu-layers", type=int, default=-1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / "pyspy.txt"
    tok = Tokenizer.from_gguf(args.model)
    import os

    threads = args.threads or os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        d = start_daemon(Path(tmp), args.model, "--max-running", str(args.n), "--context", "2048",
                         "--step-tokens", "512", "--threads", str(threads), "--n-gpu-layers", str(args.n_gpu_layers),
                         "--log-level", "warning")
        try:
            asyncio.run(slmd_run(d.target, prompts_of(tok, args.n, args.prompt_tokens, tag="warm-"), 16))
            spy = subprocess.Popen([pyspy, "record", "--pid", str(d.proc.pid), "--rate", "250", "--threads",
                                    "--nonblocking", "--format", "raw", "--duration", str(args.duration),
                                    "--output", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            rnd = 0
            while spy.poll() is None:  # keep the daemon busy for the whole sampling window
                prefill, decode, _ = asyncio.run(slmd_run(
                    d.target, prompts_of(tok, args.n, args.prompt_tokens, tag=f"p{rnd}-"), args.decode_tokens))
                print(f"profiled round {rnd}, N={args.n}: prefill {prefill:.1f} tok/s, decode {decode:.1f} tok/s "
                      "(under py-spy)", flush=True)
                rnd += 1
            _, err = spy.communicate(timeout=args.duration + 60)
            if spy.returncode != 0:
                print(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-2000:]}")
        finally:
            d.stop()
    if raw.exists():
        text = summarize(raw, 250 * args.duration)
        (args.out / "pyspy-summary.txt").write_text(text)
        print(text)


if __name__ == "__main__":
    main()
