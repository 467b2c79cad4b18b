"""Plumbing shared by the multi-app benchmarks (prefix_cache.py, serving.py):
one slmd daemon whose callers are told apart by bearer tokens, so a single
benchmark process can act as several apps, and small statistics helpers."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

from slmd.testing import DaemonProc, start_daemon


def token_of(app_id: str) -> str:
    return f"tok-{app_id}"


def write_config(path: Path, app_ids: list[str], *, sharing_group: str | None = None,
                 apps: dict[str, dict[str, object]] | None = None) -> Path:
    """A TOML config: one token per app, optionally one sharing group holding
    all of them, and `[apps.<id>]` policy tables."""
    lines = ["[auth]", "tokens = {" + ", ".join(f"{json.dumps(token_of(a))} = {json.dumps(a)}" for a in app_ids) + "}"]
    if sharing_group:
        lines += ["", "[cache]", f"sharing_groups = {{{sharing_group} = {json.dumps(app_ids)}}}"]
    for app_id, policy in (apps or {}).items():
        lines += ["", f"[apps.{app_id}]"] + [f"{k} = {json.dumps(v)}" for k, v in policy.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_slmd(tmp: Path, model: Path, config: Path, *, threads: int, context: int = 2048,
               log_level: str = "warning", env: dict[str, str] | None = None, extra: tuple[str, ...] = ()) -> DaemonProc:
    return start_daemon(tmp, model, "--config", str(config), "--threads", str(threads), "--context", str(context),
                        "--log-level", log_level, *extra, env=env)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def load_averages() -> str:
    try:
        return ", ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def default_threads() -> int:
    return os.cpu_count() or 1
