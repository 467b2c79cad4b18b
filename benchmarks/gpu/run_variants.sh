#!/usr/bin/env bash
# On the GPU machine, after build_llama_cuda.sh and run_all.sh's set-up: where
# slmd's time goes at N=64, by variant.
#   1. the host tier's KV save/restore cost per sequence length (kv_state_cost);
#   2. engine.py with the host tier off (SLMD_CACHE__HOST_BYTES=0: evicted cache
#      holders are dropped, not saved);
#   3. LlamaRuntime.save copying with ctypes.string_at instead of
#      bytes(buf[:n]) (a list of ints per byte), patched in THIS COPY of the tree
#      only: kv_state_cost, engine.py, efficiency.py and a py-spy profile.
#
#   benchmarks/gpu/run_variants.sh SITE DATA_DIR OUT
set -uo pipefail
SITE=${1:?site folder}
DATA=${2:?data dir}
OUT=${3:?output folder}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export PYTHONPATH="$root:$root/clients/python:$SITE" PATH="$SITE/bin:$PATH" PYTHONUNBUFFERED=1 SLMD_DATA_DIR="$DATA"
[ -e /lib/x86_64-linux-gnu/libstdc++.so.6 ] && export LD_PRELOAD=/lib/x86_64-linux-gnu/libstdc++.so.6  # see run_all.sh
mkdir -p "$OUT"
status=0
step() { echo; echo "=== $* ($(date -u +%T))"; SECONDS=0; "$@" || { echo "FAILED ($?): $*"; status=1; }; echo "=== ${SECONDS}s"; }
quiet() { "$@" 2>&1 | grep -v "CUDA Graph\|llama_model_loader\|print_info\|load_tensors\|create_tensor\|llama_context\|llama_kv\|graph_\|sched_\|load:\|state_read\|state_write"; }
step quiet python3 -m benchmarks.gpu.kv_state_cost --n-gpu-layers -1
SLMD_CACHE__HOST_BYTES=0 step quiet python3 -m benchmarks.engine --n-gpu-layers -1 --ns 1,4,8,16,64 --name engine-gpu-nohost
sed -i 's/return bytes(buf\[:n\])/return ctypes.string_at(buf, n)/' slmd/runtime/llama.py
grep -n "string_at" slmd/runtime/llama.py || echo "save() patch did not apply"
step quiet python3 -m benchmarks.gpu.kv_state_cost --n-gpu-layers -1
step quiet python3 -m benchmarks.engine --n-gpu-layers -1 --ns 1,4,8,16,64 --name engine-gpu-savefix
step quiet python3 -m benchmarks.efficiency --n-gpu-layers -1 --name efficiency-gpu-savefix
step python3 -m benchmarks.gpu.profile_daemon --n-gpu-layers -1 --n 64 --duration 10 --out "$OUT"
sed -i 's/return ctypes.string_at(buf, n)/return bytes(buf[:n])/' slmd/runtime/llama.py
cp benchmarks/results/engine-gpu-nohost.md benchmarks/results/engine-gpu-savefix.* benchmarks/results/efficiency-gpu-savefix.* "$OUT"/ 2>/dev/null
exit $status
