#!/usr/bin/env bash
# Runs a small CUDA driver program in a 4 GiB slice and shows what it sees: the slice's
# total and free memory, and where its allocations are refused. Uses the machine's
# NVIDIA driver when there is one, and the project's fake GPU (target/*/libcuda.so)
# otherwise, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release
[ -x "$bin/gpuslice" ] || bin=target/debug
if ldconfig -p 2>/dev/null | grep -q 'libcuda.so.1 ' && nvidia-smi -L >/dev/null 2>&1; then
  echo "Using the NVIDIA driver: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)"
else
  fake=$(mktemp -d)
  ln -s "$PWD/$bin/libcuda.so" "$fake/libcuda.so.1"
  ln -s "$PWD/$bin/libnvidia_ml.so" "$fake/libnvidia-ml.so.1"
  export LD_LIBRARY_PATH="$fake${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export FAKE_GPU_STATE="$fake/gpu.state" FAKE_GPU_MEMORY=80GiB
  echo "No NVIDIA driver here: using gpuslice's fake GPU (80 GiB, 300 MiB per context)."
fi
set -x
"$bin/gpuslice" run --memory 4GiB --name try-it -- "$bin/cuda-probe" init ctx totalmem meminfo fill:256M meminfo freeall meminfo
