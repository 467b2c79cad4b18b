#!/usr/bin/env bash
# On the GPU machine, after build_llama_cuda.sh: the SlimLM efficiency table,
# the engine benchmark (slmd vs a direct llama.cpp loop) and a py-spy profile of
# the busy daemon, all layers on the GPU. Results land in benchmarks/results/
# and are copied to OUT with the log.
#
#   benchmarks/gpu/run_all.sh SITE DATA_DIR OUT
#
# SITE: the folder build_llama_cuda.sh filled; DATA_DIR: holds
# models/SmolLM2-135M-Instruct.Q4_1.gguf (used as SLMD_DATA_DIR).
set -uo pipefail
SITE=${1:?site folder}
DATA=${2:?data dir}
OUT=${3:?output folder}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export PYTHONPATH="$root:$root/clients/python:$SITE" PATH="$SITE/bin:$PATH" PYTHONUNBUFFERED=1 SLMD_DATA_DIR="$DATA"
mkdir -p "$OUT"
# The image's numpy, imported before llama_cpp (slmd does), loads a libstdc++
# that the CUDA build's tokenizer code then crashes in (segfault in
# init_tokenizer); the system one, loaded first, is what the build linked.
[ -e /lib/x86_64-linux-gnu/libstdc++.so.6 ] && export LD_PRELOAD=/lib/x86_64-linux-gnu/libstdc++.so.6
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
python3 -c "import llama_cpp as L, slmd; print('llama_cpp', L.__version__, 'gpu offload', L.llama_supports_gpu_offload())"
status=0
step() { echo; echo "=== $* ($(date -u +%T))"; SECONDS=0; "$@" || { echo "FAILED ($?): $*"; status=1; }; echo "=== ${SECONDS}s"; }
step python3 -m benchmarks.efficiency --n-gpu-layers -1 --name efficiency-gpu
step python3 -m benchmarks.engine --n-gpu-layers -1 --ns 1,4,8,16,64 --name engine-gpu
step python3 -m benchmarks.gpu.profile_daemon --n-gpu-layers -1 --n 64 --duration 15 --out "$OUT"
cp benchmarks/results/efficiency-gpu.* benchmarks/results/engine-gpu.* "$OUT"/ 2>/dev/null
exit $status
