#!/usr/bin/env bash
# Is GPU work that a process leaves queued when it exits charged to its slice? Process A
# of a 10% slice launches one large bf16 matmul (65536², under a second of GPU time on an H200) and exits
# without waiting for it. Process B of the same slice, already started and waiting,
# then launches a tiny kernel: it must find the slice in debt for the matmul (several seconds
# at 10%) and wait. Without the exit charge, B would launch at once and a loop of such
# processes would use the GPU without limit. A control slice with no exiting process
# launches at once.
#
#   bash tests/gpu/compute-exit-check.sh      # GPUSLICE_BIN_DIR as for the other checks
#
# Passes when B waits at least 4 s and the control less than 1 s.
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BIN_DIR="${GPUSLICE_BIN_DIR:-.gpu-carry}"
case "$BIN_DIR" in /*) ;; *) BIN_DIR="$REPO/$BIN_DIR" ;; esac
PY="${PYTHON:-python3}"
L="$(mktemp -d /dev/shm/gschk-exit-XXXXXX)"
trap 'rm -rf "$L"' EXIT

waiter() {  # ledger tag: waits for $L/go, launches a tiny kernel, prints the seconds it took
    LD_PRELOAD="$BIN_DIR/libgpuslice.so" GPUSLICE_COMPUTE=10 GPUSLICE_LEDGER="$L/$1.ledger" \
        GPUSLICE_GPU_DIR="$L/gpus" "$PY" -c '
import os, sys, time, torch
x = torch.ones(1024, device="cuda"); torch.cuda.synchronize()
open(sys.argv[1] + ".ready", "w").close()
while not os.path.exists(sys.argv[2]): time.sleep(0.005)
t = time.time(); x.add_(1); torch.cuda.synchronize()
print(f"{time.time() - t:.2f}")' "$L/$1" "$L/go"
}
waiter slice > "$L/b.out" 2> "$L/b.err" &
B=$!
waiter control > "$L/c.out" 2> "$L/c.err" &
C=$!
for _ in $(seq 1 600); do [ -e "$L/slice.ready" ] && [ -e "$L/control.ready" ] && break; sleep 0.1; done
LD_PRELOAD="$BIN_DIR/libgpuslice.so" GPUSLICE_COMPUTE=10 GPUSLICE_LEDGER="$L/slice.ledger" \
    GPUSLICE_GPU_DIR="$L/gpus" "$PY" -c '
import torch
a = torch.randn(65536, 65536, device="cuda", dtype=torch.bfloat16)
b = torch.randn(65536, 65536, device="cuda", dtype=torch.bfloat16)
torch.cuda.synchronize()
c = a @ b
print("queued one matmul, exiting without waiting for it")' > "$L/a.out" 2> "$L/a.err"
echo "A: rc=$? $(cat "$L/a.out")"
touch "$L/go"
wait $B; wait $C
b=$(cat "$L/b.out"); c=$(cat "$L/c.out")
echo "B (same slice) waited ${b:-?} s for its first launch; control slice ${c:-?} s"
"$PY" - "${b:-0}" "${c:-99}" <<'PYEOF'
import sys
b, c = float(sys.argv[1]), float(sys.argv[2])
ok = b >= 4 and c < 1
print("compute-exit-charge |", "PASS" if ok else "FAIL", f"| B {b:.2f} s (want >= 4), control {c:.2f} s (want < 1)")
sys.exit(0 if ok else 1)
PYEOF
