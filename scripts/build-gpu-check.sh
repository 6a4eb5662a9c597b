#!/usr/bin/env bash
# Builds, on a machine with Rust and no GPU, everything scripts/gpu-check.sh runs on a
# GPU machine that has no Rust: the shoal binary and the test binaries that hold GPU
# tests (kernels, GPU model, trainer step, data-parallel GPU ranks, device
# collectives), built with `--features cuda` and stripped into target/gpu/:
#
#   target/gpu/shoal            the binary (for `shoal gpu-check`, `shoal train --device cuda`)
#   target/gpu/tests/NAME       one test binary per crate or integration test
#
# Carry target/gpu to the GPU machine and run `scripts/gpu-check.sh target/gpu/shoal`;
# it runs every binary under target/gpu/tests/ first. No CUDA toolkit is needed here:
# cudarc loads the driver, NVRTC, cuBLAS and NCCL at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/gpu
rm -rf "$out"
mkdir -p "$out/tests"
cargo build --release --features cuda
strip -o "$out/shoal" target/release/shoal
# The test binaries: `cargo test --no-run` names each executable in its JSON messages.
packages=(-p shoal-kernels -p shoal-models -p shoal-actors -p shoal-collectives)
cargo test --features cuda "${packages[@]}" --lib --test gpu_ranks --no-run \
    --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do
    strip -o "$out/tests/$name" "$exe"
done
ls -la "$out" "$out/tests"
du -sh "$out"
