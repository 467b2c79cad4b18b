#!/usr/bin/env bash
# On the GPU machine (after build_llama_cuda.sh): why slmd's N=64 decode rate in
# engine.py stays far under the direct loop's. LlamaRuntime.save is patched to
# ctypes.string_at in THIS COPY of the tree (see run_variants.sh); each variant
# is a fresh daemon running engine.py at N=64 only.
#   benchmarks/gpu/run_n64.sh SITE DATA_DIR OUT
set -uo pipefail
SITE=${1:?site folder}
DATA=${2:?data dir}
OUT=${3:?output folder}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export PYTHONPATH="$root:$root/clients/python:$SITE" PATH="$SITE/bin:$PATH" PYTHONUNBUFFERED=1 SLMD_DATA_DIR="$DATA"
[ -e /lib/x86_64-linux-gnu/libstdc++.so.6 ] && export LD_PRELOAD=/lib/x86_64-linux-gnu/libstdc++.so.6  # see run_all.sh
mkdir -p "$OUT"
sed -i 's/return bytes(buf\[:n\])/return ctypes.string_at(buf, n)/' slmd/runtime/llama.py
v() { echo; echo "=== $1 ($(date -u +%T))"; shift; SECONDS=0; env "$@" 2>&1 | grep -E "^(direct|slmd) +N=|FAILED|Error|error"; echo "=== ${SECONDS}s"; }
E="python3 -m benchmarks.engine --n-gpu-layers -1"
v "fresh daemon, N=64, 128 tokens" $E --ns 64 --name n64-a
v "fresh daemon, N=64, 512 tokens" $E --ns 64 --decode-tokens 512 --name n64-b
v "cache off" SLMD_CACHE__ENABLED=false $E --ns 64 --name n64-c
v "streams = max_running (no idle cache holders)" SLMD_ENGINE__NUM_SEQUENCES=64 $E --ns 64 --name n64-d
v "history 16 then 64, streams = max_running" SLMD_ENGINE__NUM_SEQUENCES=64 $E --ns 16,64 --name n64-e
v "history 16 then 64, cache off" SLMD_CACHE__ENABLED=false $E --ns 16,64 --name n64-f
sed -i 's/return ctypes.string_at(buf, n)/return bytes(buf[:n])/' slmd/runtime/llama.py
