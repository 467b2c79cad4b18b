#!/usr/bin/env bash
# Wheels and sdists for both Python packages, into dist/ (or OUT_DIR):
#   slmd         the daemon (llama-cpp-python, numpy, document parsers, ...)
#   slmd-client  the client library and `slm`: grpcio and protobuf only, so an
#                app can depend on it without the daemon's heavy dependencies.
#
#   packaging/build-wheels.sh [OUT_DIR]      (needs `build`: pip install build)
#
# The wheels are pure Python (llama.cpp comes from llama-cpp-python at install
# time). Afterwards the client wheel's metadata is checked: a model or runtime
# dependency there fails the build.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "${1:-$repo/dist}")
py=${PYTHON:-$repo/.venv/bin/python}
[ -x "$py" ] || py=$(command -v python3)
"$py" -c 'import build' 2>/dev/null || { echo "build-wheels.sh: needs the 'build' package (pip install build)" >&2; exit 1; }

mkdir -p "$out"
for project in "$repo/clients/python" "$repo"; do
    # An sdist, then the wheel built from that sdist: proves the sdist is complete.
    log=$(mktemp)
    if ! "$py" -m build --sdist --wheel --outdir "$out" "$project" >"$log" 2>&1; then
        cat "$log" >&2; rm -f "$log"; exit 1
    fi
    rm -f "$log"
done

"$py" - "$out" <<'PY'
"""Check the client wheel: only the gRPC/protobuf stack, no model runtime."""
import sys, zipfile
from email.parser import Parser
from pathlib import Path

out = Path(sys.argv[1])
allowed = {"grpcio", "grpcio-status", "grpcio-health-checking", "protobuf"}
heavy = ("llama", "torch", "numpy", "tiktoken", "gguf", "pydantic", "slmd")
for whl in sorted(out.glob("slmd_client-*.whl")):
    with zipfile.ZipFile(whl) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        requires = Parser().parsestr(zf.read(meta).decode()).get_all("Requires-Dist") or []
        if any(n.startswith("slmd/") for n in zf.namelist()):
            sys.exit(f"{whl.name} contains the daemon package slmd/")
    names = {r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0].strip().lower()
             for r in requires}
    bad = sorted(n for n in names if n not in allowed or n.startswith(heavy))
    if bad:
        sys.exit(f"{whl.name} depends on {bad}: the client must stay free of the daemon's dependencies")
    print(f"{whl.name}: requires {', '.join(sorted(names))}")
PY
ls -1 "$out"
