#!/usr/bin/env bash
# Build llama-cpp-python with CUDA for Hopper (sm_90) on the GPU machine and
# install it, with the wheels slmd needs, into a pip --target folder.
#
#   benchmarks/gpu/build_llama_cuda.sh SRC_TAR WHEEL_DIR SITE
#
# SRC_TAR: the llama-cpp-python sdist repacked without its test GGUFs, docs and
# .git (see README.md); WHEEL_DIR: wheels for what the machine lacks; SITE:
# the target folder (put it on PYTHONPATH). The CUDA library is ~70 MB, too big
# to carry, so it is built where it runs (~6-7 min with 16 cores).
set -euo pipefail
SRC_TAR=${1:?source tarball}
WHEELS=${2:?wheel folder}
SITE=${3:?target folder}
mkdir -p "$SITE"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
[ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"
work=$(mktemp -d)
tar -xJf "$SRC_TAR" -C "$work"
cd "$work"/llama_cpp_python-*
export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
log=${BUILD_LOG:-$work/build.log}
SECONDS=0
python3 -m pip install -v --no-build-isolation --no-deps --no-index --no-cache-dir --upgrade --target "$SITE" . >"$log" 2>&1 \
  || { tail -60 "$log"; echo "build failed, full log: $log"; exit 1; }
echo "built in ${SECONDS}s"
python3 -c "import llama_cpp as L; print('llama_cpp', L.__version__, 'gpu offload:', L.llama_supports_gpu_offload())"
