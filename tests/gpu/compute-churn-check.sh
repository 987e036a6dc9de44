#!/usr/bin/env bash
# Streams made and destroyed with work still queued, under a compute limit. CuPy
# destroys a stream when the object goes (`cudaStreamDestroy`); gpuslice closes the
# stream's open group of launches first. A loop that makes a stream, queues 8
# elementwise kernels on it and drops it runs for 4 s without gpuslice and under a 25%
# slice, with nvidia-smi sampling the GPU's utilization. Passes when both runs complete
# and the limited run keeps the GPU 20 to 30% busy (median of the samples after the
# first second). The share of the free run's work is printed too: it is lower than the
# time share, because the free run's streams overlap on the GPU and a resting slice's
# do less.
#
#   bash tests/gpu/compute-churn-check.sh      # GPUSLICE_BIN_DIR as for the other checks
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BIN_DIR="${GPUSLICE_BIN_DIR:-.gpu-carry}"
case "$BIN_DIR" in /*) ;; *) BIN_DIR="$REPO/$BIN_DIR" ;; esac
PY="${PYTHON:-python3}"
L="$(mktemp -d /dev/shm/gschk-churn-XXXXXX)"
trap 'rm -rf "$L"' EXIT
WORK='
import time, cupy as cp
x = cp.ones(64 << 20, dtype=cp.float32)
cp.cuda.Device().synchronize()
n, end = 0, time.time() + 4
while time.time() < end:
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        for _ in range(8):
            x *= 1.0000001
    del s
    n += 1
cp.cuda.Device().synchronize()
print(n)'
free=$(env -u LD_PRELOAD "$PY" -c "$WORK" 2> "$L/free.err")
nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 250 > "$L/util" &
MON=$!
limited=$(LD_PRELOAD="$BIN_DIR/libgpuslice.so" GPUSLICE_COMPUTE=25 GPUSLICE_LEDGER="$L/churn.ledger" \
    GPUSLICE_GPU_DIR="$L/gpus" GPUSLICE_LOG=info "$PY" -c "$WORK" 2> "$L/limited.err")
kill "$MON" 2> /dev/null
grep -o "used [0-9.]*% .*" "$L/limited.err" | head -n 2
echo "iterations: free ${free:-failed}, 25% slice ${limited:-failed}"
tail -n 3 "$L/free.err" "$L/limited.err" 2>/dev/null | grep -v '^$' | grep -v '==>' | head -6
"$PY" - "${free:-0}" "${limited:-0}" "$L/util" <<'PYEOF'
import statistics, sys
free, lim = int(sys.argv[1]), int(sys.argv[2])
samples = [int(l) for l in open(sys.argv[3]) if l.strip().isdigit()][4:]
util = statistics.median(samples) if samples else -1
share = 100 * lim / free if free else 0
ok = free > 0 and lim > 0 and 20 <= util <= 30
print("compute-stream-churn |", "PASS" if ok else "FAIL",
      f"| GPU {util}% busy under a 25% limit (want 20..30); {share:.1f}% of the free run's work")
sys.exit(0 if ok else 1)
PYEOF
