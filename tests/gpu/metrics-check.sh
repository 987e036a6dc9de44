#!/usr/bin/env bash
# The agent's /metrics on a real GPU: the numbers it serves against what the GPU and the
# slices hold. Starts `gpuslice agent --metrics-addr 127.0.0.1:PORT` (its own socket and
# state folder) and two `gpuslice run` slices at once:
#   - m1: a memory slice (4 GiB) where PyTorch holds 1 GiB;
#   - c1: a compute-limited slice (6 GiB, 30%) running a steady PyTorch elementwise loop
#     for 20 s (bench/compute_workloads.py, with its rate per 250 ms). Elementwise, not
#     matmul: unlimited, a matmul loop meets the GPU's power cap and runs at a lower SM
#     clock than under a limit, so its throughput share overstates its time share (on the
#     H200, 0.36 for a 0.30 time share; docs/compute.md); the elementwise loop is memory
#     bound and runs at the same clock either way.
# Before them, the same loop runs for 4 s without gpuslice: the unlimited rate. While c1
# runs, /metrics and nvidia-smi are read every second (tests/gpu/metrics_check.py
# scrape); then tests/gpu/metrics_check.py judge compares, in a table:
#   - c1's gpuslice_slice_compute_used_ratio with its measured share, the way
#     bench/compute_share.py measures it: its throughput against the unlimited run's,
#     over the same 10 s window as each scrape (PASS within 5 points); and with its time
#     share, the GPU's utilization from nvidia-smi averaged over the scrapes of that
#     window (c1 is the only slice that computes; PASS within 5 points);
#   - each slice's memory limit; its used memory with what PyTorch holds plus the context
#     (m1) and with the process's memory as host nvidia-smi counts it (within 128 MiB:
#     the ledger's context estimate against the driver's count);
#   - c1's compute limit (0.30), its throttled seconds (growing), no refusals, m1 with no
#     compute use;
#   - the GPU's memory total and used with nvidia-smi (used within 64 MiB, sampled a
#     moment apart), its utilization (present, in (0, 1]), the sums of the slices' limits
#     (10 GiB, 0.30), slice_info (2 `run` slices), no failed-closed slice, no NVML error.
#
#   sudo bash tests/gpu/metrics-check.sh
#
# Inputs: GPUSLICE_BIN_DIR (gpuslice, libgpuslice.so; default .gpu-carry), PYTHON,
# GSCHK_PORT (default 10431), OUT (if set, the scrapes and logs are copied there).
# Exit status: 0 if every check passed. Takes about 45 s (90 s at most: every GPU
# command runs under `timeout -s KILL`).

set -u
export LC_ALL=C PYTHONUNBUFFERED=1
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BIN_DIR="${GPUSLICE_BIN_DIR:-.gpu-carry}"
case "$BIN_DIR" in /*) ;; *) BIN_DIR="$REPO/$BIN_DIR" ;; esac
GS="$BIN_DIR/gpuslice"
PY="$(command -v "${PYTHON:-python3}")"
PORT="${GSCHK_PORT:-10431}"
WORKLOADS="$REPO/bench/compute_workloads.py"
LOOP=elementwise
CHECK="$HERE/metrics_check.py"
W="$(mktemp -d /tmp/gpuslice-metrics.XXXXXX)"
unset LD_PRELOAD GPUSLICE_MEMORY GPUSLICE_LEDGER GPUSLICE_COMPUTE CUDA_DEVICE_MEMORY_LIMIT 2>/dev/null
PIDS=()
# shellcheck disable=SC2317  # called by the trap
cleanup() {
    touch "$W/stop" "$W/go-away"
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    sleep 1
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    if [ -n "${OUT:-}" ]; then cp "$W"/*.jsonl "$W"/*.log "$OUT"/ 2>/dev/null; fi
}
trap cleanup EXIT

timeout -s KILL 120 "$GS" agent --no-probe --socket "$W/agent/agent.sock" --state-dir "$W/state" \
    --metrics-addr "127.0.0.1:$PORT" > "$W/agent.log" 2>&1 &
PIDS+=($!)

# m1: PyTorch holding 1 GiB until $W/go-away exists.
timeout -s KILL 120 "$GS" run --name m1 --memory 4GiB -- "$PY" -c "
import os, time, torch
x = torch.empty(1024 << 20, dtype=torch.uint8, device='cuda')
x.fill_(1); torch.cuda.synchronize()
print('ready', torch.cuda.memory_reserved(), os.getpid(), flush=True)
while not os.path.exists('$W/go-away'):
    time.sleep(0.2)
" > "$W/m1.log" 2>&1 &
PIDS+=($!)

# The unlimited rate of the loop, first (m1 only holds memory: the GPU is otherwise idle).
timeout -s KILL 40 "$PY" "$WORKLOADS" --workloads "$LOOP" --seconds 4 --warmup 1 \
    > "$W/native.log" 2> "$W/native.err"

for _ in $(seq 1 60); do
    grep -q ready "$W/m1.log" 2>/dev/null && break
    sleep 0.5
done

timeout -s KILL 60 "$PY" "$CHECK" scrape "$PORT" "$W" 2> "$W/scrape.log" &
PIDS+=($!)
timeout -s KILL 45 "$GS" run --name c1 --memory 6GiB --compute 30 -- \
    "$PY" "$WORKLOADS" --workloads "$LOOP" --seconds 20 --warmup 1 --timeline \
    > "$W/c1.log" 2> "$W/c1.err"
touch "$W/stop" "$W/go-away"
sleep 1.5  # the scraper's last round

timeout -s KILL 20 "$PY" "$CHECK" judge "$W"
