#!/usr/bin/env bash
# The agent's /metrics on a real GPU: the numbers it serves against what the GPU and the
# slices hold. Starts `gpuslice agent --metrics-addr 127.0.0.1:PORT` (its own socket and
# state folder), runs two `gpuslice run` slices holding PyTorch memory (m1: 4 GiB limit,
# 1 GiB held; m2: 6 GiB limit at 40% compute, 2 GiB held), scrapes /metrics while they
# hold it and compares, in a table:
#   - each slice's gpuslice_slice_memory_limit_bytes with its --memory;
#   - its gpuslice_slice_memory_used_bytes with what PyTorch holds plus the context, and
#     with the process's memory as host nvidia-smi counts it (within 128 MiB: the
#     ledger's context estimate against the driver's count);
#   - m2's gpuslice_slice_compute_limit_ratio with 0.40;
#   - gpuslice_gpu_memory_total_bytes and _used_bytes with host nvidia-smi (used within
#     64 MiB, sampled a moment apart);
#   - gpuslice_gpu_slices_memory_limit_bytes with the sum of the limits.
#
#   sudo bash tests/gpu/metrics-check.sh
#
# Inputs: GPUSLICE_BIN_DIR (gpuslice, libgpuslice.so; default .gpu-carry), PYTHON,
# GSCHK_PORT (default 10431), OUT (if set, the scrape and logs are copied there).
# Exit status: 0 if every check passed. Takes about 30 s.

set -u
export LC_ALL=C PYTHONUNBUFFERED=1
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BIN_DIR="${GPUSLICE_BIN_DIR:-.gpu-carry}"
case "$BIN_DIR" in /*) ;; *) BIN_DIR="$REPO/$BIN_DIR" ;; esac
GS="$BIN_DIR/gpuslice"
PY="$(command -v "${PYTHON:-python3}")"
PORT="${GSCHK_PORT:-10431}"
W="$(mktemp -d /tmp/gpuslice-metrics.XXXXXX)"
unset LD_PRELOAD GPUSLICE_MEMORY GPUSLICE_LEDGER CUDA_DEVICE_MEMORY_LIMIT 2>/dev/null
PIDS=()
# shellcheck disable=SC2317  # called by the trap
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    sleep 1
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    if [ -n "${OUT:-}" ]; then cp "$W"/*.txt "$W"/*.log "$OUT"/ 2>/dev/null; fi
}
trap cleanup EXIT

timeout -s KILL 120 "$GS" agent --no-probe --socket "$W/agent/agent.sock" --state-dir "$W/state" \
    --metrics-addr "127.0.0.1:$PORT" > "$W/agent.log" 2>&1 &
PIDS+=($!)

# hold NAME MIB: a PyTorch process holding MIB MiB until $W/go-away exists.
hold() {
    local name=$1 mib=$2
    shift 2
    timeout -s KILL 100 "$GS" run --name "$name" "$@" -- "$PY" -c "
import os, sys, time, torch
x = torch.empty($mib << 20, dtype=torch.uint8, device='cuda')
x.fill_(1); torch.cuda.synchronize()
print('ready', torch.cuda.memory_reserved(), os.getpid(), flush=True)
while not os.path.exists('$W/go-away'):
    time.sleep(0.2)
" > "$W/$name.log" 2>&1 &
    PIDS+=($!)
}
hold m1 1024 --memory 4GiB
hold m2 2048 --memory 6GiB --compute 40

for _ in $(seq 1 120); do
    grep -q ready "$W/m1.log" 2>/dev/null && grep -q ready "$W/m2.log" 2>/dev/null && break
    sleep 0.5
done
sleep 1  # the agent's NVML snapshot is at most 200 ms old
timeout -s KILL 20 "$PY" - "$PORT" "$W" <<'PY'
import subprocess, sys, urllib.request

port, w = sys.argv[1], sys.argv[2]
MiB, GiB = 1 << 20, 1 << 30
text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
open(f"{w}/scrape.txt", "w").write(text)
smi = subprocess.run(
    ["nvidia-smi", "--query-gpu=uuid,memory.total,memory.used", "--format=csv,noheader,nounits"],
    capture_output=True, text=True, timeout=10).stdout.split("\n")[0].split(", ")
apps = subprocess.run(
    ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
    capture_output=True, text=True, timeout=10).stdout

def samples(name):
    """{labels-string: value} of metric `name` (plain text lines, no parser needed here:
    the CPU test parses with a real OpenMetrics parser)."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, _, value = line.rpartition(" ")
            out[key[len(name):]] = float(value)
    return out

def one(name, slice_=None):
    for k, v in samples(name).items():
        if slice_ is None or f'slice="{slice_}"' in k:
            return v
    return None

held = {}
for name in ("m1", "m2"):
    ready = open(f"{w}/{name}.log").read().split("ready", 1)[1].split()
    held[name] = (int(ready[0]), int(ready[1]))
per_pid = {int(p): int(m) * MiB for p, m in (l.split(", ") for l in apps.strip().splitlines() if l)}

rows, ok = [], True
def check(what, got, want, good):
    global ok
    ok &= good
    rows.append((what, got, want, "PASS" if good else "FAIL"))

for name, limit in (("m1", 4 * GiB), ("m2", 6 * GiB)):
    got = one("gpuslice_slice_memory_limit_bytes", name)
    check(f"{name} limit", got, limit, got == limit)
    used = one("gpuslice_slice_memory_used_bytes", name)
    reserved, pid = held[name]
    smi_used = per_pid.get(pid)
    good = used is not None and reserved <= used <= reserved + 1024 * MiB
    if smi_used is not None:
        good &= abs(used - smi_used) <= 128 * MiB
    check(f"{name} used", used, f"torch {reserved}, nvidia-smi pid {pid}: {smi_used}", good)
ratio = one("gpuslice_slice_compute_limit_ratio", "m2")
check("m2 compute ratio", ratio, 0.40, ratio is not None and abs(ratio - 0.40) < 1e-9)
total = one("gpuslice_gpu_memory_total_bytes")
check("gpu total", total, int(smi[1]) * MiB, total == int(smi[1]) * MiB)
gpu_used = one("gpuslice_gpu_memory_used_bytes")
check("gpu used", gpu_used, int(smi[2]) * MiB,
      gpu_used is not None and abs(gpu_used - int(smi[2]) * MiB) <= 64 * MiB)
limits = one("gpuslice_gpu_slices_memory_limit_bytes")
check("gpu sum of limits", limits, 10 * GiB, limits == 10 * GiB)
info = samples("gpuslice_slice_info")
check("slice_info sources", len([k for k in info if 'source="run"' in k]), 2,
      len([k for k in info if 'source="run"' in k]) == 2)
check("failed_closed", len(samples("gpuslice_slice_failed_closed")), 0,
      len(samples("gpuslice_slice_failed_closed")) == 0)

def fmt(v):
    if isinstance(v, float) and v > 1e6:
        return f"{v / MiB:.0f} MiB"
    if isinstance(v, int) and v > 1e6:
        return f"{v / MiB:.0f} MiB"
    return str(v)

print(f"{'check':<20} | {'/metrics':<14} | {'truth':<44} | result")
print("-" * 21 + "+" + "-" * 16 + "+" + "-" * 46 + "+-------")
for what, got, want, res in rows:
    print(f"{what:<20} | {fmt(got):<14} | {fmt(want):<44} | {res}")
print("RESULT:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
rc=$?
touch "$W/go-away"
exit $rc
