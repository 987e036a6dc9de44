#!/usr/bin/env bash
# Streams made and destroyed with work still queued, under a compute limit. CuPy
# destroys a stream when the object goes (`cudaStreamDestroy`); gpuslice closes the
# stream's open group of launches first. A loop that makes a stream, queues 8
# elementwise kernels on it and drops it runs for 4 s without gpuslice and under a 25%
# slice; passes when the limited run does 20 to 30% of the free run's work and neither
# fails.
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
limited=$(LD_PRELOAD="$BIN_DIR/libgpuslice.so" GPUSLICE_COMPUTE=25 GPUSLICE_LEDGER="$L/churn.ledger" \
    GPUSLICE_GPU_DIR="$L/gpus" "$PY" -c "$WORK" 2> "$L/limited.err")
echo "iterations: free ${free:-failed}, 25% slice ${limited:-failed}"
tail -n 3 "$L/free.err" "$L/limited.err" 2>/dev/null | grep -v '^$' | grep -v '==>' | head -6
"$PY" - "${free:-0}" "${limited:-0}" <<'PYEOF'
import sys
free, lim = int(sys.argv[1]), int(sys.argv[2])
share = 100 * lim / free if free else 0
ok = free > 0 and 20 <= share <= 30
print("compute-stream-churn |", "PASS" if ok else "FAIL", f"| {share:.1f}% of the free run's work under a 25% limit (want 20..30)")
sys.exit(0 if ok else 1)
PYEOF
