#!/usr/bin/env bash
# Does a wait for the whole context close the compute meter's open groups? The CUDA 13
# runtime's cudaDeviceSynchronize (torch.cuda.synchronize()) calls the driver function
# that cuGetProcAddress("cuCtxSynchronize") gives at version 13000, cuCtxSynchronize_v2
# on driver 580; unhooked, such a wait closed no group, and long work after short kernels
# slipped past the meter (docs/compute.md, "What cannot slip past the meter").
#
#   bash tests/gpu/context-sync-check.sh     # GPUSLICE_BIN_DIR as for the other checks
#
# 1. Which function the driver gives for cuCtxSynchronize at 12000, 12090 and 13000,
#    without gpuslice and in a compute slice (where the 13000 one must be the hook).
# 2. A PyTorch loop of 20 tiny kernels and torch.cuda.synchronize() per iteration under
#    --compute 75 with GPUSLICE_LOG=debug: passes when the meter closed at least one
#    group per iteration (its 2-second report: groups >= 0.9 x launches / 20).
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BIN_DIR="${GPUSLICE_BIN_DIR:-.gpu-carry}"
case "$BIN_DIR" in /*) ;; *) BIN_DIR="$REPO/$BIN_DIR" ;; esac
PY="${PYTHON:-python3}"
T="$(mktemp -d /tmp/gschk-ctxsync-XXXXXX)"
trap 'rm -rf "$T"' EXIT
CUDA_INC=/usr/local/cuda/include
[ -d "$CUDA_INC" ] || CUDA_INC="$(dirname "$(command -v nvcc)")/../include"
fail=0

cat > "$T/which.c" <<'C'
#define _GNU_SOURCE
#include <cuda.h>
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
int main(void) {
    if (cuInit(0) != CUDA_SUCCESS) return 1;
    int versions[] = {12000, 12090, 13000};
    for (int i = 0; i < 3; i++) {
        void *p = 0;
        CUdriverProcAddressQueryResult st;
        cuGetProcAddress_v2("cuCtxSynchronize", &p, versions[i], 0, &st);
        Dl_info info;
        memset(&info, 0, sizeof info);
        if (p) dladdr(p, &info);
        const char *file = info.dli_fname ? strrchr(info.dli_fname, '/') : 0;
        printf("%d %s %s\n", versions[i], info.dli_sname ? info.dli_sname : "?",
               file ? file + 1 : "?");
    }
    return 0;
}
C
gcc -o "$T/which" "$T/which.c" -I"$CUDA_INC" -lcuda -ldl || { echo "FAIL: cannot build the lookup"; exit 1; }
echo "== cuGetProcAddress(\"cuCtxSynchronize\"), without gpuslice"
timeout -s KILL 30 "$T/which" | tee "$T/plain.txt"
echo "== the same in a compute slice"
GPUSLICE_COMPUTE=75 GPUSLICE_LEDGER="$T/slice.ledger" LD_PRELOAD="$BIN_DIR/libgpuslice.so" \
    timeout -s KILL 30 "$T/which" | tee "$T/slice.txt"
if grep -q "^13000 cuCtxSynchronize_v2 " "$T/plain.txt"; then
    if grep -q "^13000 .* libgpuslice.so$" "$T/slice.txt"; then
        echo "PASS: version 13000 gives cuCtxSynchronize_v2, and the slice gets the hook"
    else
        echo "FAIL: the slice does not get the hook of cuCtxSynchronize_v2"; fail=1
    fi
else
    echo "NOTE: this driver does not give cuCtxSynchronize_v2 at 13000 (nothing to hook)"
fi

cat > "$T/tiny.py" <<'PY'
import time, torch
x = torch.ones(1 << 10, device="cuda")
torch.cuda.synchronize()
end = time.time() + 4.5
n = 0
while time.time() < end:
    for _ in range(20):
        x.add_(1.0)
    torch.cuda.synchronize()
    n += 1
print(f"iterations={n}")
PY
echo "== tiny loop under --compute 75, GPUSLICE_LOG=debug"
GPUSLICE_LOG=debug timeout -s KILL 60 "$BIN_DIR/gpuslice" run --compute 75 -- "$PY" "$T/tiny.py" 2>"$T/tiny.err"
report="$(grep "the slice used" "$T/tiny.err" | tail -1)"
echo "${report#*GPU: }" | cut -c1-400
launches="$(sed -n 's/.*(\([0-9]*\) launches from this process.*/\1/p' <<<"$report")"
groups="$(sed -n 's/.* \([0-9]*\) groups (.*/\1/p' <<<"$report")"
if [ -z "$launches" ] || [ -z "$groups" ]; then
    echo "FAIL: no meter report"; fail=1
elif [ $((groups * 200)) -ge $((launches * 9)) ]; then
    echo "PASS: $groups groups for $((launches / 20)) iterations"
else
    echo "FAIL: $groups groups for $((launches / 20)) iterations: waits do not close groups"; fail=1
fi
exit $fail
