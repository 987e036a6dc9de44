#!/usr/bin/env bash
# Is a PyTorch process's CUDA context charged once? The CUDA runtime and the libraries
# retain the primary context several times; gpuslice must charge it once (a 512 MiB
# estimate until measured), so that the slice's usage stays close to what NVML lists
# for the process. Runs a PyTorch process holding 1 GiB in a 4 GiB slice, then compares
# `gpuslice status` with `nvidia-smi --query-compute-apps`.
#
#   bash tests/gpu/context-charge.sh        # GPUSLICE_BIN_DIR as for the other checks
#
# Passes when the process's context charge is at most 1 GiB (one context) and the
# slice's usage is within 512 MiB of the process's memory as NVML lists it.
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BIN_DIR="${GPUSLICE_BIN_DIR:-.gpu-carry}"
case "$BIN_DIR" in /*) ;; *) BIN_DIR="$REPO/$BIN_DIR" ;; esac
PY="${PYTHON:-python3}"
L="$(mktemp -d /dev/shm/gschk-context-XXXXXX)"
trap 'touch "$L/stop"; wait; rm -rf "$L"' EXIT

LD_PRELOAD="$BIN_DIR/libgpuslice.so" GPUSLICE_MEMORY=4GiB GPUSLICE_LEDGER="$L/slice.ledger" \
    "$PY" "$HERE/nvml_view_work.py" --mib 1024 --seconds 60 --ready "$L/ready" --stop "$L/stop" \
    --pidfile "$L/pid" > "$L/work.log" 2>&1 &
for _ in $(seq 1 600); do [ -e "$L/ready" ] && break; sleep 0.2; done
if [ ! -e "$L/ready" ]; then
    echo "FAIL: the workload did not start"; cat "$L/work.log"; exit 1
fi
sleep 1
pid="$(cat "$L/pid")"
"$BIN_DIR/gpuslice" status --ledger-dir "$L"
"$BIN_DIR/gpuslice" status --ledger-dir "$L" --json > "$L/status.json"
nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits | tee "$L/apps.txt"
"$PY" - "$L" "$pid" <<'EOF'
import json, sys
d, pid = sys.argv[1], int(sys.argv[2])
status = json.load(open(f"{d}/status.json"))
procs = [p for s in status["slices"] for p in s["processes"] if p["pid"] == pid]
apps = {int(a): int(b) for a, b, *_ in (l.replace(" ", "").split(",") for l in open(f"{d}/apps.txt") if "," in l)}
if not procs or not procs[0]["devices"] or pid not in apps:
    print(f"FAIL: process {pid} not found in status or nvidia-smi"); sys.exit(1)
dev = procs[0]["devices"][0]
used, context, listed = dev["charged_bytes"] >> 20, dev["context_bytes"] >> 20, apps[pid]
ok = context <= 1024 and abs(used - listed) <= 512
print(f"{'PASS' if ok else 'FAIL'}: slice charges {used} MiB ({context} MiB context), NVML lists {listed} MiB")
sys.exit(0 if ok else 1)
EOF
