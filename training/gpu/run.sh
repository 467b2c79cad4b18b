#!/usr/bin/env bash
# The training pipeline's real runs on the GPU machine (device tool), one
# short call per step while the machine stays warm. Everything lives in
# $HOME/gpu, outside the repo copy that each call replaces; long jobs run
# under setsid and write NAME.log and NAME.rc there.
#
#   training/gpu/run.sh build           copy the repo and .carry/c1, start the CUDA build of llama-cpp-python
#   training/gpu/run.sh model           join the default model (c1 part a + c2 part b), check its sha256
#   training/gpu/run.sh pretrain        SlimLM-125M pretraining on .carry/pre (bf16, AdamW, cosine)
#   training/gpu/run.sh part NN         append the teacher's part NN (.carry/tpartNN)
#   training/gpu/run.sh teacher MD5 N   join and check the teacher; annotate N documents (.carry/docs) with it
#   training/gpu/run.sh finetune        LoRA on SmolLM2 and full fine-tuning of the SlimLM, with exports
#   training/gpu/run.sh eval            test-split outputs of base, fine-tuned, SlimLM and teacher
#   training/gpu/run.sh status          what each job is doing
#   training/gpu/run.sh collect         copy results into $OUT
#
# The carried folders are described in training/gpu/README.md.
set -uo pipefail
G=$HOME/gpu
mkdir -p "$G"
here=$(pwd)
export PYTHONPATH="$G/repo:$G/repo/clients/python:$G/site" PYTHONUNBUFFERED=1 SLMD_DATA_DIR="$G/data"
export SLMD_MODEL__N_GPU_LAYERS=-1 NCCL_NVLS_ENABLE=0
# the image's numpy loads a libstdc++ the CUDA build's tokenizer crashes in (benchmarks/gpu/README.md)
[ -e /lib/x86_64-linux-gnu/libstdc++.so.6 ] && export LD_PRELOAD=/lib/x86_64-linux-gnu/libstdc++.so.6
DEFAULT=$G/data/models/SmolLM2-135M-Instruct.Q4_1.gguf
TEACHER=$G/teacher.gguf

job() {  # job NAME CMD...: run in its own session from the repo copy, survive the call
  local name=$1; shift
  (cd "$G/repo" && setsid bash -c "$* > $G/$name.log 2>&1; echo \$? > $G/$name.rc" < /dev/null &)
  echo "started $name"
}

sync_repo() {  # the tree without the carried files, or a carried snapshot of it (.carry/snap)
  local src=$here
  [ -d "$here/.carry/snap" ] && src=$here/.carry/snap
  mkdir -p "$G/repo"
  tar -C "$src" --exclude=./.carry --exclude=./.git -cf - . | tar -C "$G/repo" -xf -
}

case ${1:?step} in
build)
  sync_repo
  cp -r .carry/c1 "$G/c1"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  job build "bash benchmarks/gpu/build_llama_cuda.sh $G/c1/llama_src.tar.xz $G/c1/whl $G/site"
  ;;
model)
  mkdir -p "$G/data/models"
  cat "$G/c1/model.xz.a" .carry/c2/model.xz.b | xz -dc > "$DEFAULT.part" && mv "$DEFAULT.part" "$DEFAULT"
  sha256sum "$DEFAULT"
  ;;
pretrain)
  sync_repo
  mkdir -p "$G/pre"
  if [ -d .carry/pre ]; then
    cp .carry/pre/val.bin .carry/pre/meta.json "$G/pre/" && xz -dc .carry/pre/train.bin.xz > "$G/pre/train.bin"
  fi
  job pretrain python3 -m training.pretrain --data-dir "$G/pre" --out-dir "$G/pretrain" --preset 125m \
    --seq-len 1024 --batch-size 32 --max-steps 1000 --warmup-steps 50 --learning-rate 6e-4 \
    --eval-every 50 --eval-batches 20 --checkpoint-every 250 --log-every 10
  ;;
part)
  cp ".carry/tpart$2/part$2" "$G/teacher.part$2" && ls -la "$G"/teacher.part* | wc -l
  ;;
teacher)
  sync_repo
  [ -e "$G/teacher.part00" ] && cat "$G"/teacher.part?? > "$TEACHER" && rm "$G"/teacher.part??
  echo "$2  $TEACHER" | md5sum -c - || exit 1
  mkdir -p "$G/docs" && cp .carry/docs/documents.jsonl "$G/docs/"
  job teacher python3 -m training.docassist build --serve "$TEACHER" --threads 8 \
    --teacher qwen2.5-coder-1.5b-instruct-q4_k_m --data-dir "$G/docs" --num-docs "${3:-800}" \
    --concurrency 21 --no-grammar --out "$G/records.jsonl"  # 21 x 3 requests: apps' max_concurrent is 64
  ;;
finetune)
  sync_repo
  job ft-smollm2 python3 -m training.finetune --records "$G/records.jsonl" --out-dir "$G/ft-smollm2" \
    --lora-rank 8 --lora-alpha 16 --max-steps 400 --batch-size 16 --learning-rate 5e-4 --warmup-steps 20 \
    --log-every 25 --eval-examples 256 --export-lora "$G/docassist-lora.gguf"
  job ft-slimlm python3 -m training.finetune --records "$G/records.jsonl" --out-dir "$G/ft-slimlm" \
    --base "$G/pretrain/ckpt.pt" --lora-rank 0 --max-steps 400 --batch-size 16 --learning-rate 1e-4 \
    --warmup-steps 20 --log-every 25 --eval-examples 256 --export-gguf "$G/slimlm-125m-docassist-q4_0.gguf"
  ;;
eval)
  sync_repo
  job eval python3 -m training.evaluate --records "$G/records.jsonl" --out "$G/eval/report.md" --outputs-only \
    --threads 8 --concurrency 32 --model "base=$DEFAULT" --model "finetuned=$DEFAULT+$G/docassist-lora.gguf" \
    --model "slimlm-125m-docassist=$G/slimlm-125m-docassist-q4_0.gguf"
  ;;
status)
  for f in "$G"/*.rc; do [ -e "$f" ] && echo "$(basename "$f" .rc) rc=$(cat "$f")"; done
  for f in "$G"/*.log; do [ -e "$f" ] && { echo "--- $(basename "$f")"; tail -n 3 "$f"; }; done
  [ -e "$G/records.jsonl" ] && echo "records: $(wc -l < "$G/records.jsonl")"
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  ;;
collect)
  out=${OUT:?}
  for f in records.jsonl pretrain/log.jsonl ft-smollm2/log.jsonl ft-slimlm/log.jsonl docassist-lora.gguf \
           eval/report.outputs.jsonl; do
    [ -e "$G/$f" ] && cp "$G/$f" "$out/$(echo "$f" | tr / -)"
  done
  tail -n 30 "$G"/*.log > "$out/logs.txt" 2>/dev/null
  ls -la "$out"
  ;;
*) echo "unknown step $1"; exit 2 ;;
esac
