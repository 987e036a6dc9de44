#!/usr/bin/env bash
# Overhead of the gpuslice interposer: native vs. interposed runs of
# bench/overhead.cu, alternated, BENCH_PAIRS (default 9, at least 7) each, medians.
#
#   bash bench/run-overhead.sh
#
# Inputs (environment):
#   GPUSLICE_BIN_DIR  folder with libgpuslice.so (default .gpu-carry, relative to the repo root)
#   BENCH_LOGDIR      working folder for the logs (default /tmp/gpuslice-bench-logs)
#   OUT               if set, the logs and the table are also bundled into $OUT/bench-logs.txt
#   BENCH_PAIRS       runs per variant and metric (default 9, minimum 7)
#   BENCH_SLICE       slice size for the interposed runs (default 70GiB: never refuses)
# Exit status: 0 if every metric was measured and met its target, 1 otherwise.
# See bench/README.md.

set -u
export LC_ALL=C

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BIN_DIR="${GPUSLICE_BIN_DIR:-.gpu-carry}"
case "$BIN_DIR" in /*) ;; *) BIN_DIR="$REPO/$BIN_DIR" ;; esac
LIB="$BIN_DIR/libgpuslice.so"
LOGDIR="${BENCH_LOGDIR:-/tmp/gpuslice-bench-logs}"
PAIRS="${BENCH_PAIRS:-9}"
[ "$PAIRS" -ge 7 ] 2>/dev/null || PAIRS=7
SLICE="${BENCH_SLICE:-70GiB}"
LEDGER=/dev/shm/bench.ledger
BIN=/tmp/overhead
LAUNCH_N=200000
MF_SMALL_N=5000
MF_LARGE_N=1000
unset LD_PRELOAD GPUSLICE_BIN_DIR GPUSLICE_MEMORY GPUSLICE_LEDGER CUDA_DEVICE_MEMORY_LIMIT 2>/dev/null

mkdir -p "$LOGDIR/samples" 2>/dev/null || { LOGDIR=/tmp/gpuslice-bench-logs; mkdir -p "$LOGDIR/samples"; }
rm -f "$LOGDIR"/samples/* "$LOGDIR/warnings" "$LOGDIR/table.txt" "$LOGDIR/header.txt" "$LOGDIR/build.log"
RUNLOG="$LOGDIR/runs.log"
say() { printf '%s\n' "$*"; printf '%s\n' "$*" >> "$LOGDIR/header.txt"; }
: > "$RUNLOG"
START=$SECONDS
trap 'rm -f "$LEDGER"' EXIT

# $OUT comes back from a remote run as a handful of files only: one bundle.
bundle_logs() {
    [ -n "${OUT:-}" ] || return 0
    mkdir -p "$OUT" 2>/dev/null || return 0
    local f
    for f in "$LOGDIR/header.txt" "$LOGDIR/table.txt" "$LOGDIR/build.log" "$LOGDIR/warnings" "$RUNLOG" "$LOGDIR"/samples/*; do
        [ -f "$f" ] || continue
        echo "=================================================================== ${f#"$LOGDIR"/}"
        head -c 300000 "$f"
    done > "$OUT/bench-logs.txt" 2>/dev/null
}

say "== gpuslice overhead benchmark (logs: $LOGDIR) =="
say "gpu: $(timeout 20 nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -n 2 | tr '\n' ';')"
say "lib: $LIB ($( [ -f "$LIB" ] && stat -c %s "$LIB" 2>/dev/null || echo missing) bytes); slice $SLICE; $PAIRS runs per variant"

NVCC=$(command -v nvcc || true)
if [ -z "$NVCC" ]; then
    for c in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do [ -x "$c" ] && { NVCC=$c; break; }; done
fi
rm -f "$BIN"
if [ -n "$NVCC" ]; then
    # -arch=native avoids PTX JIT at start-up; fall back to the plain build.
    (cd "$REPO" && { timeout 180 "$NVCC" -O2 -arch=native -o "$BIN" bench/overhead.cu ||
                     timeout 180 "$NVCC" -O2 -o "$BIN" bench/overhead.cu; }) > "$LOGDIR/build.log" 2>&1
fi
if [ ! -x "$BIN" ]; then
    echo "build failed (nvcc: ${NVCC:-not found}); see $LOGDIR/build.log"
    tail -n 5 "$LOGDIR/build.log" 2>/dev/null
    bundle_logs
    echo "0 passed, 1 failed"
    exit 1
fi
if [ ! -f "$LIB" ]; then
    echo "missing $LIB (set GPUSLICE_BIN_DIR)"
    echo "0 passed, 1 failed"
    exit 1
fi

# run VARIANT ARGS... : runs the benchmark binary once; prints its output line.
run() {
    local v=$1
    shift
    case "$v" in
        native) timeout 60 env -u LD_PRELOAD "$BIN" "$@" ;;
        slice)  timeout 60 env LD_PRELOAD="$LIB" GPUSLICE_MEMORY="$SLICE" GPUSLICE_LEDGER="$LEDGER" "$BIN" "$@" ;;
        inert)  timeout 60 env LD_PRELOAD="$LIB" "$BIN" "$@" ;;
    esac
}

# sample METRIC VARIANT KEY ARGS... : one run, appends KEY's value to samples/METRIC.VARIANT
sample() {
    local metric=$1 v=$2 key=$3 out rc val
    shift 3
    out=$(run "$v" "$@" 2>> "$RUNLOG")
    rc=$?
    echo "$metric $v rc=$rc $out" >> "$RUNLOG"
    val=$(printf '%s\n' "$out" | tr ' ' '\n' | sed -n "s/^$key=//p" | head -n1)
    [ "$rc" -eq 0 ] && [ -n "$val" ] && echo "$val" >> "$LOGDIR/samples/$metric.$v"
    # remember whether interposed runs really had the interposer / the slice
    if [ "$v" != native ]; then
        printf '%s\n' "$out" | grep -q 'preloaded=1' || echo "$metric $v: NOT PRELOADED" >> "$LOGDIR/warnings"
    fi
}

# wall-clock of a whole process (start-up metric), in ms
sample_wall() {
    local v=$1 t0 t1 rc out
    t0=$EPOCHREALTIME
    out=$(run "$v" startup 2>> "$RUNLOG")
    rc=$?
    t1=$EPOCHREALTIME
    echo "startup $v rc=$rc $out" >> "$RUNLOG"
    [ "$rc" -eq 0 ] && awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f\n", (b-a)*1000}' >> "$LOGDIR/samples/startup.$v"
    if [ "$v" != native ]; then
        printf '%s\n' "$out" | grep -q 'preloaded=1' || echo "startup $v: NOT PRELOADED" >> "$LOGDIR/warnings"
    fi
}

median() {  # file -> median or NA
    [ -s "$1" ] || { echo NA; return; }
    sort -g "$1" | awk '{a[NR]=$1} END{ if (NR % 2) printf "%.3f\n", a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2 }'
}

rm -f "$LEDGER" "$LOGDIR/warnings"

# Warm-up (JIT/compute cache, driver state), not recorded.
run native startup > /dev/null 2>&1
run slice startup > /dev/null 2>&1

# 1. start-up: pairs, alternating
for _ in $(seq 1 "$PAIRS"); do sample_wall native; sample_wall slice; done
# 2. launch rate: triplets native / slice / inert
for _ in $(seq 1 "$PAIRS"); do
    sample launch native launches_per_s launch "$LAUNCH_N"
    sample launch slice launches_per_s launch "$LAUNCH_N"
    sample launch inert launches_per_s launch "$LAUNCH_N"
done
# 3./4. cudaMalloc+cudaFree pairs
for _ in $(seq 1 "$PAIRS"); do
    sample mf1 native pairs_per_s mallocfree "$MF_SMALL_N" 1MiB
    sample mf1 slice pairs_per_s mallocfree "$MF_SMALL_N" 1MiB
done
for _ in $(seq 1 "$PAIRS"); do
    sample mf64 native pairs_per_s mallocfree "$MF_LARGE_N" 64MiB
    sample mf64 slice pairs_per_s mallocfree "$MF_LARGE_N" 64MiB
done
rm -f "$LEDGER"

# Slice really applied? (cudaMemGetInfo total of a slice run)
slice_total=$(grep -m1 '^launch slice rc=0' "$RUNLOG" | tr ' ' '\n' | sed -n 's/^total_mib=//p')

pass=0
fail=0
# row LABEL KIND NATIVE_FILE GS_FILE TARGET ; KIND=rate (higher is better, target in %) or ms (target in ms extra)
row() {
    local label=$1 kind=$2 nf=$3 gf=$4 target=$5 n g ratio verdict
    n=$(median "$LOGDIR/samples/$nf")
    g=$(median "$LOGDIR/samples/$gf")
    if [ "$n" = NA ] || [ "$g" = NA ]; then
        ratio="n/a"; verdict="FAIL (no data)"
    elif [ "$kind" = rate ]; then
        # time per op overhead: native_rate/gs_rate - 1
        ratio=$(awk -v n="$n" -v g="$g" 'BEGIN{printf "%+.2f%%", (n/g-1)*100}')
        verdict=$(awk -v n="$n" -v g="$g" -v t="$target" 'BEGIN{print ((n/g-1)*100 <= t) ? "OK" : "MISS"}')
        verdict="<=${target}% $verdict"
    else
        ratio=$(awk -v n="$n" -v g="$g" 'BEGIN{printf "%+.2f ms (%+.1f%%)", g-n, (g/n-1)*100}')
        verdict=$(awk -v n="$n" -v g="$g" -v t="$target" 'BEGIN{print (g-n <= t) ? "OK" : "MISS"}')
        verdict="<=${target} ms extra $verdict"
    fi
    case "$verdict" in *OK) pass=$((pass + 1)) ;; *) fail=$((fail + 1)) ;; esac
    printf '%-28s | %15s | %15s | %-22s | %s\n' "$label" "$n" "$g" "$ratio" "$verdict"
}

print_table() {
if [ -s "$LOGDIR/warnings" ]; then
    echo "WARNING: some interposed runs did not have libgpuslice mapped:"
    sort "$LOGDIR/warnings" | uniq -c | head -n 5
fi
echo "slice runs: cudaMemGetInfo total = ${slice_total:-?} MiB (expected $SLICE); runs: $(wc -l < "$RUNLOG") lines in $RUNLOG"
echo "overhead = native_rate/gpuslice_rate - 1 for rates (time per operation), gpuslice - native for start-up"
printf '%-28s | %15s | %15s | %-22s | %s\n' metric "native median" "gpuslice median" "ratio (overhead)" target
printf '%s\n' "-----------------------------+-----------------+-----------------+------------------------+------------------"
row "launch (launches/s)"          rate launch.native launch.slice 1
row "launch, inert preload (/s)"   rate launch.native launch.inert 1
row "malloc+free 1 MiB (pairs/s)"  rate mf1.native mf1.slice 10
row "malloc+free 64 MiB (pairs/s)" rate mf64.native mf64.slice 10
row "startup (ms, process wall)"   ms startup.native startup.slice 5
echo "samples per cell: $(wc -l < "$LOGDIR/samples/launch.native" 2>/dev/null || echo 0) (launch native); total time $((SECONDS - START))s"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
}

echo
print_table > "$LOGDIR/table.txt"
rc=$?
bundle_logs
cat "$LOGDIR/table.txt"
[ -n "${OUT:-}" ] && echo "logs: $OUT/bench-logs.txt"
exit "$rc"
