#!/usr/bin/env bash
# The reliability fixes on a real GPU: limits that cannot apply fail closed, a damaged
# ledger fails in bounded time, a turn file cut short ends no slice, and each user gets
# a private ledger folder. Every command runs under `timeout -s KILL`.
#
#   GPUSLICE_BIN_DIR=.gpu-carry bash tests/gpu/reliability-checks.sh
#
# Prints one row per check and `N passed, N failed`; exits 1 if any check failed.
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BIN_DIR="${GPUSLICE_BIN_DIR:-.gpu-carry}"
case "$BIN_DIR" in /*) ;; *) BIN_DIR="$REPO/$BIN_DIR" ;; esac
PY="${PYTHON:-python3}"
L="$(mktemp -d /dev/shm/gschk-rel-XXXXXX)"
trap 'rm -rf "$L"' EXIT
LIB="$BIN_DIR/libgpuslice.so"
PASSED=0; FAILED=0; ROWS=()
row() {  # name ok detail
    if [ "$2" = 1 ]; then PASSED=$((PASSED + 1)); r=PASS; else FAILED=$((FAILED + 1)); r=FAIL; fi
    ROWS+=("$(printf '%-22s | %s | %s' "$1" "$r" "$3")")
}
TORCH_INIT='import torch; x = torch.ones(1 << 20, device="cuda"); torch.cuda.synchronize(); print("ran")'

# 1. A limit for a GPU that is not here fails closed, naming the variable.
out=$(timeout -s KILL 60 env LD_PRELOAD="$LIB" GPUSLICE_MEMORY=99=4GiB GPUSLICE_LEDGER="$L/absent.ledger" \
    "$PY" -c "$TORCH_INIT" 2>&1); rc=$?
ok=0; [ $rc -ne 0 ] && [ $rc -ne 137 ] && echo "$out" | grep -q GPUSLICE_MEMORY && ! echo "$out" | grep -q '^ran' && ok=1
row absent-gpu "$ok" "rc=$rc; $(echo "$out" | grep -m1 -o 'gpuslice[^;]*' | cut -c1-110)"

# 2. A malformed GPU_DEVICES_UUID (non-ASCII) fails closed and never aborts the program.
out=$(timeout -s KILL 60 env LD_PRELOAD="$LIB" CUDA_MEM_LIMIT_0=1GiB GPU_DEVICES_UUID='１００' \
    GPUSLICE_LEDGER_DIR="$L" "$PY" -c "$TORCH_INIT" 2>&1); rc=$?
ok=0; [ $rc -ne 0 ] && [ $rc -ne 134 ] && [ $rc -ne 137 ] && echo "$out" | grep -q GPU_DEVICES_UUID && ok=1
row bad-uuid-list "$ok" "rc=$rc (134 would be an abort)"

# 3. --compute 100 (and its burst) is the whole GPU: the program runs.
out=$(timeout -s KILL 90 "$BIN_DIR/gpuslice" run --compute 100 --burst 100 --memory 8GiB -- \
    "$PY" -c "$TORCH_INIT" 2>&1); rc=$?
ok=0; [ $rc -eq 0 ] && echo "$out" | grep -q '^ran' && ok=1
row compute-100 "$ok" "rc=$rc"

# 4. A damaged device-state word fails CUDA initialisation in bounded time, naming the file.
timeout -s KILL 60 env LD_PRELOAD="$LIB" GPUSLICE_MEMORY=1GiB GPUSLICE_LEDGER="$L/hurt.ledger" \
    "$PY" -c "$TORCH_INIT" >/dev/null 2>&1
"$PY" -c "import struct,sys; f=open(sys.argv[1],'r+b'); f.seek(192); f.write(struct.pack('<Q',0x8012000000000000))" "$L/hurt.ledger"
t0=$(date +%s.%N)
out=$(timeout -s KILL 30 env LD_PRELOAD="$LIB" GPUSLICE_MEMORY=1GiB GPUSLICE_LEDGER="$L/hurt.ledger" \
    "$PY" -c "$TORCH_INIT" 2>&1); rc=$?
dt=$("$PY" -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$t0")
ok=0; [ $rc -ne 0 ] && [ $rc -ne 137 ] && echo "$out" | grep -q "hurt.ledger" && ok=1
row damaged-ledger-word "$ok" "rc=$rc after ${dt} s"

# 5. Two compute slices go on while the GPU's turn file is cut short and restored.
GD="$L/gpus"; mkdir -p "$GD"; chmod 1777 "$GD"
LOOP='import sys,time,torch
a=torch.randn(4096,4096,device="cuda",dtype=torch.bfloat16); torch.cuda.synchronize()
t=time.time(); n=0
while time.time()-t<4: c=a@a; n+=1; torch.cuda.synchronize() if n%20==0 else None
torch.cuda.synchronize(); print("ran", n)'
for s in 1 2; do
    timeout -s KILL 90 env LD_PRELOAD="$LIB" GPUSLICE_COMPUTE=40 GPUSLICE_GPU_DIR="$GD" \
        GPUSLICE_LEDGER="$L/turn$s.ledger" "$PY" -c "$LOOP" > "$L/turn$s.out" 2>&1 &
done
for _ in $(seq 1 300); do ls "$GD"/*.turns >/dev/null 2>&1 && break; sleep 0.1; done
cuts=$("$PY" - "$GD" <<'PYEOF'
import glob, os, sys, time
files = glob.glob(sys.argv[1] + "/*.turns")
n = 0
if files:
    p = files[0]; size = os.path.getsize(p); fd = os.open(p, os.O_RDWR)
    end = time.time() + 2.5
    while time.time() < end:
        os.ftruncate(fd, 0); time.sleep(0.002); os.ftruncate(fd, size); n += 1
print(n)
PYEOF
)
wait
ok=1; detail="$cuts cuts;"
for s in 1 2; do
    grep -q '^ran' "$L/turn$s.out" || ok=0
    detail="$detail slice $s: $(grep -m1 -o '^ran [0-9]*\|Bus error\|truncated\|cut short' "$L/turn$s.out" | head -1)"
done
[ "${cuts:-0}" -gt 0 ] || ok=0
row turn-file-cut-short "$ok" "$detail"

# 6. A user's default ledger folder is their own, 0700.
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
    rm -rf /dev/shm/gpuslice-65534
    out=$(timeout -s KILL 90 setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=/tmp \
        "$BIN_DIR/gpuslice" run --memory 2GiB -- "$PY" -c "$TORCH_INIT" 2>&1); rc=$?
    mode=$(stat -c '%a %u' /dev/shm/gpuslice-65534 2>/dev/null)
    ok=0; [ $rc -eq 0 ] && [ "$mode" = "700 65534" ] && ok=1
    row per-user-folder "$ok" "rc=$rc folder mode/owner: ${mode:-missing} $(echo "$out" | tail -1 | cut -c1-80)"
    rm -rf /dev/shm/gpuslice-65534
fi

echo
printf '%-22s | %s | %s\n' check result detail
for r in "${ROWS[@]}"; do echo "$r"; done
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
