#!/usr/bin/env bash
# The checks to run on a machine with an NVIDIA GPU, from a checkout of cardinal:
#  1. the CUDA build (`just build-cuda`: CUDA's compiler and libraries from NVIDIA's wheels);
#  2. the block-form equivalence on the GPU (forms A, B and C agree; f64, 1e-5);
#  3. one training step's loss and gradients, CPU against CUDA (f32 tolerance);
#  4. `bench train --device cuda` for the CPU models and resnext50_32x4d;
#  5. `ablate cardinality --preset quick --device cuda` end to end, to its report.
# Writes everything it measures under OUT (default target/gpu-check) and stops at the first
# failure.
#
# Usage: scripts/gpu-check.sh [OUT]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "${1:-$root/target/gpu-check}")
mkdir -p "$out"
cd "$root"

command -v nvidia-smi > /dev/null && nvidia-smi | tee "$out/nvidia-smi.txt"
# The compute capability of GPU 0 (e.g. 9.0 -> 90), unless CUDA_COMPUTE_CAP says otherwise.
if [ -z "${CUDA_COMPUTE_CAP:-}" ] && command -v nvidia-smi > /dev/null; then
    CUDA_COMPUTE_CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d '.')
    export CUDA_COMPUTE_CAP
fi

echo "== 1. build with --features cuda"
start=$SECONDS
just build-cuda 2>&1 | tee "$out/build.log"
echo "build: $((SECONDS - start)) s" | tee -a "$out/summary.txt"
cardinal="$root/target/cuda/release/cardinal"
# The CUDA libraries the binary loads, from the same wheels.
eval "$(just --quiet cuda-env)"

echo "== 2. block-form equivalence on cuda"
"$cardinal" equivalence resnext50_32x4d --device cuda --dtype f64 | tee "$out/equivalence-resnext50.txt"
"$cardinal" equivalence cpu_resnext20_4x12d --device cuda --dtype f64 --input-size 28 |
    tee "$out/equivalence-cpu.txt"

echo "== 3. one training step, CPU against CUDA"
# The link names that `just build-cuda` made (the wheels ship only versioned libraries).
LIBRARY_PATH="$root/target/cuda/link:${LIBRARY_PATH:-}" CARGO_TARGET_DIR="$root/target/cuda" \
    cargo test --release -p cardinal-train --features cuda --test cuda 2>&1 | tee "$out/train-step.txt"

echo "== 4. training speed on cuda"
"$cardinal" bench train --device cuda --format json \
    --model cpu_resnet20 --model cpu_resnext20_4x12d --model cpu_resnext20_32x2d \
    > "$out/bench-cpu-models.json"
"$cardinal" bench train --device cuda --format json --model resnext50_32x4d --batch-size 64 \
    > "$out/bench-resnext50.json"
"$cardinal" bench train --device cuda --model cpu_resnet20 --model cpu_resnext20_4x12d \
    --model cpu_resnext20_32x2d --model resnext50_32x4d | tee "$out/bench.txt"

echo "== 5. the quick cardinality grid on cuda, to its report"
"$cardinal" ablate cardinality --preset quick --device cuda \
    --runs-dir "$out/runs" --reports-dir "$out/reports" | tee "$out/ablate.txt"
test -s "$out/reports/cardinality-quick/README.md"
echo "gpu-check: passed; results in $out" | tee -a "$out/summary.txt"
