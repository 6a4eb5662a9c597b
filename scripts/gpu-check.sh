#!/usr/bin/env bash
# The GPU path's check on a machine with an NVIDIA GPU (made for an H200; 1-5 below took
# ~3-4 min there; with the later sections see SECTIONS below):
#   1. `shoal gpu-check`: every GPU kernel against its CPU kernel (a PASS/FAIL table
#      with errors and GPU times), then cuBLAS fp32/TF32/bf16 at 4096^3 against the
#      H200's peaks;
#   2. `shoal gpu-check --train`: the GPU training step against the CPU model
#      (tiny preset), then GPT-2 124M steps timed with fp32, TF32 and bf16 products
#      (tokens/s, MFU);
#   3. `shoal train --device cuda`: 12 steps of the real trainer on the GPU (GPT-2
#      124M, B=8, T=1024), its tokens/s per step from metrics.jsonl;
#   4. scripts/torch_gpu_baseline.py: PyTorch GPT-2 124M tokens/s and MFU, eager and
#      torch.compile (skipped when python3 has no torch);
#   5. `shoal bench device-collectives`: the CUDA IPC ring with 2 ranks on the one GPU
#      and NCCL with 1 rank, against the device's copy bandwidth.
# Before 1, the GPU tests of every crate when their binaries are there (built by
# scripts/build-gpu-check.sh into target/gpu/tests/); after 3, 8 steps each in bf16
# mixed precision, with cuBLAS attention (TF32, and bf16), and of two data-parallel
# GPU ranks reducing over the IPC ring.
#
# Usage: scripts/gpu-check.sh [SHOAL_BINARY]   (default target/release/shoal, built
#        here with `cargo build --release --features cuda`, or target/gpu/shoal from
#        scripts/build-gpu-check.sh; neither needs a CUDA toolkit to build). Output goes to the terminal and, when $OUT is set, to
#        $OUT/gpu-check.txt, $OUT/gpu-train.txt, $OUT/gpu-trainer.txt,
#        $OUT/torch-baseline.txt and $OUT/gpu-collectives.txt. Exits nonzero if a
#        gpu-check run, the training run or the IPC collectives bench failed.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/shoal}
if [[ ! -x $bin ]]; then
    echo "no shoal binary at $bin: build it with cargo build --release --features cuda" >&2
    exit 2
fi

# shoal loads libcuda, libnvrtc and libcublas at run time: add the usual folders
# (the driver's, the CUDA toolkit's, and the nvidia-* pip packages next to torch).
lib_dirs=(/usr/local/nvidia/lib64 /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
if command -v python3 >/dev/null; then
    while IFS= read -r dir; do lib_dirs+=("$dir"); done < <(python3 - <<'PY' 2>/dev/null
import glob, os, site
for base in site.getsitepackages() + [site.getusersitepackages()]:
    for d in sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib"))):
        print(d)
PY
)
fi
for dir in "${lib_dirs[@]}"; do
    [[ -d $dir ]] && LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$dir"
done
# NCCL is loaded as libnccl.so, but the nvidia-nccl pip wheel ships only libnccl.so.2.
for dir in "${lib_dirs[@]}"; do
    if [[ -f $dir/libnccl.so.2 && ! -e $dir/libnccl.so ]]; then
        mkdir -p /tmp/shoal-nccl && ln -sf "$dir/libnccl.so.2" /tmp/shoal-nccl/libnccl.so
        LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}/tmp/shoal-nccl"
        break
    fi
done
export LD_LIBRARY_PATH

log() {
    if [[ -n ${OUT:-} ]]; then tee "$OUT/$1"; else cat; fi
}
log_more() {
    if [[ -n ${OUT:-} ]]; then tee -a "$OUT/$1"; else cat; fi
}

# SECTIONS (comma-separated; default all): tests, kernels, train, trainer, more,
# torch, collectives. All of them take an estimated 6-8 minutes on an H200, close to a
# device session's 10-minute command limit: run them in two calls, e.g.
# SECTIONS=tests,kernels,train,trainer then SECTIONS=more,torch,collectives.
want() { [[ ",${SECTIONS:-all}," == *",all,"* || ",${SECTIONS:-all}," == *",$1,"* ]]; }
status=0 tests_status=0 train_status=0 trainer_status=0 collectives_status=0

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv

# The GPU tests, when scripts/build-gpu-check.sh put their binaries next to the shoal
# binary (target/gpu/tests/): each crate's GPU tests only (the rest run in CI).
tests_dir=$(dirname "$bin")/tests
if ! want tests; then
    :
elif [[ -d $tests_dir ]]; then
    echo "== GPU tests ($tests_dir)"
    if [[ -n ${OUT:-} ]]; then : > "$OUT/gpu-tests.txt"; fi
    for t in "$tests_dir"/*; do
        case $(basename "$t") in
            shoal_kernels) filter=cuda:: ;;
            shoal_models) filter=gpu:: ;;
            shoal_actors) filter=gpu ;;
            shoal_collectives) filter=device ;;
            *) filter= ;;
        esac
        echo "-- $(basename "$t") $filter" | log_more gpu-tests.txt
        timeout 120 "$t" $filter --test-threads 1 --nocapture 2>&1 | log_more gpu-tests.txt
        rc=${PIPESTATUS[0]}
        if [[ $rc -ne 0 ]]; then tests_status=$rc; fi
    done
    echo "GPU tests exited with $tests_status"
else
    echo "== GPU tests skipped: no $tests_dir (scripts/build-gpu-check.sh builds them)"
fi
if want kernels; then
echo "== shoal gpu-check ($bin)"
timeout 240 "$bin" gpu-check 2>&1 | log gpu-check.txt
status=${PIPESTATUS[0]}
echo "shoal gpu-check exited with $status"
fi
if want train; then
echo "== shoal gpu-check --train: the GPU step against the CPU model, then GPT-2 124M"
timeout 180 "$bin" gpu-check --train --precision bf16 --skip-kernels --gemm-size 0 2>&1 | log gpu-train.txt
train_status=${PIPESTATUS[0]}
echo "shoal gpu-check --train exited with $train_status"
fi

if want trainer; then
echo "== shoal train --device cuda: GPT-2 124M, 12 trainer steps on the GPU"
# The built-in corpus is byte-level (token ids < 256), which fits inside GPT-2's
# 50257-entry vocabulary, so this trains the real 124M model on a
# valid if easy corpus; no data files needed. One checkpoint (1.5 GB) at the end.
# Matrix products in TF32 (tensor cores, fp32 accumulation): GPU_MATMUL=fp32|bf16
# to compare.
timeout 120 "$bin" train --device cuda --gpu-matmul "${GPU_MATMUL:-tf32}" \
    --preset gpt2 --data-builtin --seq-len 1024 \
    --batch-size 8 --max-steps 12 --lr 6e-4 --min-lr 6e-5 --warmup-steps 2 \
    --eval-every 0 --checkpoint-every 0 --keep-checkpoints 1 --overwrite \
    --out-dir /tmp/gpu-train 2>&1 | log gpu-trainer.txt
trainer_status=${PIPESTATUS[0]}
echo "shoal train --device cuda exited with $trainer_status"
# Each step's loss and tokens/s (step 1 includes the NVRTC compiles and the upload).
if [[ -f /tmp/gpu-train/metrics.jsonl ]]; then
    grep '"tokens_per_s"' /tmp/gpu-train/metrics.jsonl | log_more gpu-trainer.txt
fi
fi

if want more; then
echo "== bf16 mixed precision, cuBLAS attention and two GPU ranks: GPT-2 124M, 8 trainer steps each"
# One rank in bf16 mixed precision; then two data-parallel ranks (on this one GPU, or
# two) with the gradient all-reduced on the devices by the IPC ring, AdamW on the host.
train_more() {
    local out=$1
    shift
    timeout 90 "$bin" train --device cuda --preset gpt2 --data-builtin --seq-len 1024 \
        --batch-size 8 --max-steps 8 --lr 6e-4 --min-lr 6e-5 --warmup-steps 2 \
        --eval-every 0 --checkpoint-every 0 --keep-checkpoints 1 --overwrite \
        --out-dir "$out" "$@" 2>&1 | log_more gpu-trainer.txt
    local rc=${PIPESTATUS[0]}
    echo "shoal train $* exited with $rc" | log_more gpu-trainer.txt
    if [[ -f $out/metrics.jsonl ]]; then
        grep '"tokens_per_s"' "$out/metrics.jsonl" | log_more gpu-trainer.txt
    fi
    return "$rc"
}
train_more /tmp/gpu-train-bf16 --gpu-precision bf16 || trainer_status=$?
# Attention on cuBLAS products (tensor cores) instead of the tiled kernels.
train_more /tmp/gpu-train-gemm --gpu-matmul tf32 --gpu-attention gemm || trainer_status=$?
train_more /tmp/gpu-train-gemm-bf16 --gpu-precision bf16 --gpu-attention gemm \
    || trainer_status=$?
train_more /tmp/gpu-train-ranks --ranks 2 --gpu-matmul tf32 --gpu-collectives ipc \
    || trainer_status=$?
fi

if ! want torch; then
    :
elif python3 -c 'import torch' 2>/dev/null; then
    echo "== PyTorch baseline"
    PYTHONUNBUFFERED=1 timeout 200 python3 scripts/torch_gpu_baseline.py --seconds 40 2>&1 \
        | log torch-baseline.txt
else
    echo "== PyTorch baseline skipped: python3 has no torch"
fi
if want collectives; then
echo "== shoal bench device-collectives: the CUDA IPC ring (2 ranks on GPU 0), NCCL (1 rank)"
# A few seconds each: two sizes, four ops, 5 timed iterations. The IPC ring must work on
# any GPU (its status counts); NCCL needs libnccl (from the nvidia-nccl pip package next
# to torch, or the system), so its status is only reported.
timeout 60 "$bin" bench device-collectives --backend ipc --ranks 2 --size-mib 1,64 \
    --iters 5 2>&1 | log gpu-collectives.txt
collectives_status=${PIPESTATUS[0]}
echo "device collectives (ipc) exited with $collectives_status" | log_more gpu-collectives.txt
timeout 60 "$bin" bench device-collectives --backend nccl --ranks 1 --size-mib 1,64 \
    --iters 5 2>&1 | log_more gpu-collectives.txt
echo "device collectives (nccl) exited with ${PIPESTATUS[0]}" | log_more gpu-collectives.txt
fi

if [[ $status -eq 0 ]]; then status=$tests_status; fi
if [[ $status -eq 0 ]]; then status=$train_status; fi
if [[ $status -eq 0 ]]; then status=$trainer_status; fi
if [[ $status -eq 0 ]]; then status=$collectives_status; fi
exit "$status"
