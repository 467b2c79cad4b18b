#!/usr/bin/env bash
# Print the path of a llama-cpp-python wheel built with this project's patches
# and flags, compiling it first (about 4 minutes on 2 cores) when none is cached.
#
#   packaging/llama-wheel.sh PYTHON
#
# CMAKE_ARGS (default -DLLAVA_BUILD=OFF) passes CMake flags, e.g. -DGGML_CUDA=on.
# The source gets packaging/llama-cpp/patch.py's fixes first. pip's own wheel
# cache is keyed by the source URL alone: a wheel built with other flags, other
# patches, another compiler or for another CPU (llama.cpp compiles with
# -march=native) would be reused silently. This cache is keyed by all of them:
# ${SLMD_WHEEL_CACHE:-~/.cache/slmd/llama-wheels}/<key>/.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
py=${1:?usage: llama-wheel.sh PYTHON}
req=$("$py" -c 'import sys, tomllib; print(next(d for d in tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"] if d.startswith("llama-cpp-python")))' "$here/../pyproject.toml")
args=${CMAKE_ARGS:--DLLAVA_BUILD=OFF}
cache=${SLMD_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/slmd/llama-wheels}
key=$( { echo "$req"; echo "$args"; uname -m; "${CC:-cc}" --version 2>/dev/null | head -1;
         grep -m1 -E '^(flags|Features)' /proc/cpuinfo || true; cat "$here/llama-cpp/patch.py"; } | sha256sum | cut -c1-16)
dir=$cache/$key
if ! ls "$dir"/*.whl >/dev/null 2>&1; then
    echo "llama-wheel.sh: compiling $req (about 4 minutes on 2 cores) into $dir" >&2
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    pip_q=(--quiet --disable-pip-version-check)
    "$py" -m pip download "${pip_q[@]}" --no-deps --no-binary llama-cpp-python -d "$work" "$req" >&2
    mkdir "$work/src"
    tar -xzf "$work"/*.tar.gz -C "$work/src"
    src=$(echo "$work"/src/*/)
    "$py" "$here/llama-cpp/patch.py" "$src"
    CMAKE_ARGS="$args" "$py" -m pip wheel "${pip_q[@]}" --no-deps --no-cache-dir -w "$work/wheel" "$src" >&2
    mkdir -p "$dir"
    mv "$work"/wheel/*.whl "$dir/"
fi
ls "$dir"/*.whl | head -1
