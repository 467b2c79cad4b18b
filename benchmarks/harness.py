"""Shared benchmark plumbing: prompts of a given token length, the machine
description, and writing a markdown table plus a PNG under benchmarks/results/."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

from slmd.tokenizer import Tokenizer

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    try:  # name the GPU where there is one (the CUDA runs); a CPU-only machine has no nvidia-smi
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        gpu = f", GPU {r.stdout.strip().splitlines()[0]}" if r.returncode == 0 and r.stdout.strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        pass
    return f"{cpu}, {os.cpu_count()} cores{gpu}, Python {platform.python_version()}"


def command() -> str:
    argv = list(sys.argv)
    try:  # the script relative to the repository (`-m` gives an absolute path that names this machine)
        argv[0] = str(Path(argv[0]).resolve().relative_to(RESULTS.parent.parent))
    except ValueError:
        pass
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *argv])


def corpus_text() -> str:
    """Varied English/code text from the Python standard library's docstrings,
    available on every machine without downloads."""
    import collections, datetime, email, json, pathlib, subprocess, threading, argparse, asyncio  # noqa: E401

    parts = []
    for mod in (collections, datetime, email, json, pathlib, subprocess, threading, argparse, asyncio, os):
        for name in sorted(dir(mod)):
            doc = getattr(getattr(mod, name, None), "__doc__", None)
            if isinstance(doc, str) and len(doc) > 200:
                parts.append(doc.strip())
    return "\n\n".join(parts)


def prompts_of(tok: Tokenizer, n: int, num_tokens: int, *, tag: str = "") -> list[str]:
    """`n` distinct prompts of about `num_tokens` tokens each (distinct from
    the first token on, so no prefix cache can help)."""
    ids = tok.encode(corpus_text(), allow_special=False)
    out = []
    step = max(1, (len(ids) - num_tokens) // max(1, n))
    for i in range(n):
        body = tok.decode(ids[i * step : i * step + num_tokens - 12])
        out.append(f"[{tag}{i}] {body}\nSummarize the text above.")
    return out


def write_results(name: str, title: str, header: list[str], rows: list[list], notes: list[str]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "",
             f"- command: `{command()}`",
             f"- machine: {machine()}",
             f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    lines += [""] + [f"{n}" for n in notes]
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def print_table(header: list[str], rows: list[list]) -> None:
    widths = [max(len(str(h)), *(len(_fmt(r[i])) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(str(h).rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(_fmt(c).rjust(w) for c, w in zip(r, widths)))
