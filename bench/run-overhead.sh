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
#   BENCH_PIN         1: pin the runs to cores 2,3 with taskset (default off)
#   BENCH_GAP         seconds of pause between runs (default 0.3: lets the driver finish
#                     tearing the previous process down)
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
MF_SMALL_N=20000
MF_LARGE_N=8000
GAP="${BENCH_GAP:-0.3}"
# BENCH_PIN=1: pin every run to cores 2,3 (off by default: it slows CUDA start-up a lot).
PIN=()
if [ "${BENCH_PIN:-0}" = 1 ] && command -v taskset > /dev/null 2>&1; then PIN=(taskset -c "2,3"); fi
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
    sleep "$GAP"
    case "$v" in
        native | native2) timeout 60 "${PIN[@]}" env -u LD_PRELOAD "$BIN" "$@" ;;
        slice)  timeout 60 "${PIN[@]}" env LD_PRELOAD="$LIB" GPUSLICE_MEMORY="$SLICE" GPUSLICE_LEDGER="$LEDGER" "$BIN" "$@" ;;
        inert)  timeout 60 "${PIN[@]}" env LD_PRELOAD="$LIB" "$BIN" "$@" ;;
    esac
}

# sample ROUND METRIC VARIANT KEY ARGS... : one run, appends "ROUND value-of-KEY" to samples/METRIC.VARIANT
sample() {
    local round=$1 metric=$2 v=$3 key=$4 out rc val
    shift 4
    out=$(run "$v" "$@" 2>> "$RUNLOG")
    rc=$?
    echo "$metric $v rc=$rc $out" >> "$RUNLOG"
    val=$(printf '%s\n' "$out" | tr ' ' '\n' | sed -n "s/^$key=//p" | head -n1)
    [ "$rc" -eq 0 ] && [ -n "$val" ] && echo "$round $val" >> "$LOGDIR/samples/$metric.$v"
    # remember whether interposed runs really had the interposer / the slice
    case "$v" in
        native*) ;;
        *) printf '%s\n' "$out" | grep -q 'preloaded=1' || echo "$metric $v: NOT PRELOADED" >> "$LOGDIR/warnings" ;;
    esac
}

# wall-clock of a whole process (start-up metric), in ms
sample_wall() {
    local round=$1 v=$2 t0 t1 rc out
    t0=$EPOCHREALTIME
    out=$(run "$v" startup 2>> "$RUNLOG")
    rc=$?
    t1=$EPOCHREALTIME
    echo "startup $v rc=$rc $out" >> "$RUNLOG"
    [ "$rc" -eq 0 ] && awk -v r="$round" -v a="$t0" -v b="$t1" 'BEGIN{printf "%s %.3f\n", r, (b-a)*1000}' >> "$LOGDIR/samples/startup.$v"
    if [ "$v" != native ]; then
        printf '%s\n' "$out" | grep -q 'preloaded=1' || echo "startup $v: NOT PRELOADED" >> "$LOGDIR/warnings"
    fi
}

spread() {  # file -> half the interquartile range, in % of the median (run-to-run noise)
    [ -s "$1" ] || { echo NA; return; }
    awk '{print $2}' "$1" | sort -g | awk '{a[NR]=$1} END{ q1=a[int((NR+3)/4)]; q3=a[int((3*NR+1)/4)]; m=a[int((NR+1)/2)];
        if (m == 0) print "NA"; else printf "%.1f\n", (q3-q1)/2/m*100 }'
}

# paired FILE_NATIVE FILE_GS KIND -> median over rounds of the per-round overhead
# (rate: n/g-1 in %, ms: g-n), which cancels slow drifts of the machine.
paired() {
    [ -s "$1" ] && [ -s "$2" ] || { echo NA; return; }
    awk -v kind="$3" 'NR==FNR {n[$1]=$2; next} ($1 in n) && $2 > 0 {
            if (kind == "rate") print (n[$1]/$2-1)*100; else print $2-n[$1] }' "$1" "$2" |
        sort -g | awk '{a[NR]=$1} END{ if (NR==0) print "NA"; else if (NR % 2) printf "%+.2f\n", a[(NR+1)/2];
                                      else printf "%+.2f\n", (a[NR/2]+a[NR/2+1])/2 }'
}

median() {  # file -> median of the values (2nd column) or NA
    [ -s "$1" ] || { echo NA; return; }
    awk '{print $2}' "$1" | sort -g | awk '{a[NR]=$1} END{ if (NR % 2) printf "%.3f\n", a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2 }'
}

rm -f "$LEDGER" "$LOGDIR/warnings"

# Warm-up (JIT/compute cache, driver state), not recorded.
run native startup > /dev/null 2>&1
run slice startup > /dev/null 2>&1

# The order inside each pair alternates (native first, then gpuslice first, ...)
# so that "the run right after another process" effects cancel out.
order() {  # i variants... -> the variants rotated by i
    local i=$1
    shift
    local -a v=("$@")
    local k n=${#v[@]}
    for k in $(seq 0 $((n - 1))); do printf '%s ' "${v[$(((k + i) % n))]}"; done
}
# 1. start-up: pairs
for i in $(seq 1 "$PAIRS"); do for v in $(order "$i" native slice); do sample_wall "$i" "$v"; done; done
# 2. launch rate: rounds of native / slice / inert / native again (the A/A row:
#    what two identical native runs differ by, i.e. the resolution of this machine)
for i in $(seq 1 "$PAIRS"); do
    for v in $(order "$i" native slice inert native2); do sample "$i" launch "$v" launches_per_s launch "$LAUNCH_N"; done
done
# 3./4. cudaMalloc+cudaFree pairs
for i in $(seq 1 "$PAIRS"); do
    for v in $(order "$i" native slice); do sample "$i" mf1 "$v" pairs_per_s mallocfree "$MF_SMALL_N" 1MiB; done
done
for i in $(seq 1 "$PAIRS"); do
    for v in $(order "$i" native slice); do sample "$i" mf64 "$v" pairs_per_s mallocfree "$MF_LARGE_N" 64MiB; done
done
rm -f "$LEDGER"

# Slice really applied? (cudaMemGetInfo total of a slice run)
slice_total=$(grep -m1 '^launch slice rc=0' "$RUNLOG" | tr ' ' '\n' | sed -n 's/^total_mib=//p')

pass=0
fail=0
# row LABEL KIND NATIVE_FILE GS_FILE TARGET ; KIND=rate (higher is better, target in %) or ms (target in ms extra)
row() {
    local label=$1 kind=$2 nf=$3 gf=$4 target=$5 n g ratio verdict p
    n=$(median "$LOGDIR/samples/$nf")
    g=$(median "$LOGDIR/samples/$gf")
    p=$(paired "$LOGDIR/samples/$nf" "$LOGDIR/samples/$gf" "$kind")
    if [ "$target" = - ]; then
        ratio=$(awk -v n="$n" -v g="$g" -v p="$p" 'BEGIN{ if (n == "NA" || g == "NA") print "n/a"; else printf "%+.2f%% (paired %s%%)", (n/g-1)*100, p}')
        printf '%-28s | %15s | %15s | %-27s | %-20s | %s/%s\n' "$label" "$n" "$g" "$ratio" "(control)" \
            "$(spread "$LOGDIR/samples/$nf")" "$(spread "$LOGDIR/samples/$gf")"
        return
    fi
    if [ "$n" = NA ] || [ "$g" = NA ]; then
        ratio="n/a"; verdict="FAIL (no data)"
    elif [ "$kind" = rate ]; then
        # time per op overhead: native_rate/gs_rate - 1
        ratio=$(awk -v n="$n" -v g="$g" -v p="$p" 'BEGIN{printf "%+.2f%% (paired %s%%)", (n/g-1)*100, p}')
        verdict=$(awk -v n="$n" -v g="$g" -v t="$target" 'BEGIN{print ((n/g-1)*100 <= t) ? "OK" : "MISS"}')
        verdict="<=${target}% $verdict"
    else
        ratio=$(awk -v n="$n" -v g="$g" -v p="$p" 'BEGIN{printf "%+.2f ms (paired %s)", g-n, p}')
        verdict=$(awk -v n="$n" -v g="$g" -v t="$target" 'BEGIN{print (g-n <= t) ? "OK" : "MISS"}')
        verdict="<=${target} ms extra $verdict"
    fi
    case "$verdict" in *OK) pass=$((pass + 1)) ;; *) fail=$((fail + 1)) ;; esac
    printf '%-28s | %15s | %15s | %-27s | %-20s | %s/%s\n' "$label" "$n" "$g" "$ratio" "$verdict" \
        "$(spread "$LOGDIR/samples/$nf")" "$(spread "$LOGDIR/samples/$gf")"
}

print_table() {
if [ -s "$LOGDIR/warnings" ]; then
    echo "WARNING: some interposed runs did not have libgpuslice mapped:"
    sort "$LOGDIR/warnings" | uniq -c | head -n 5
fi
echo "slice runs: cudaMemGetInfo total = ${slice_total:-?} MiB (expected $SLICE); runs: $(wc -l < "$RUNLOG") lines in $RUNLOG"
echo "overhead = native_rate/gpuslice_rate - 1 for rates (time per operation), gpuslice - native for start-up;"
echo "paired = median over rounds of the per-round overhead; the A/A row (native vs native) shows this machine's resolution"
echo "noise = half the interquartile range of the runs in % of their median (native/gpuslice); pinned: ${PIN[*]:-no}"
printf '%-28s | %15s | %15s | %-27s | %-20s | %s\n' metric "native median" "gpuslice median" "ratio (overhead)" target "noise % n/g"
printf '%s\n' "-----------------------------+-----------------+-----------------+-----------------------------+----------------------+------------"
row "launch (launches/s)"          rate launch.native launch.slice 1
row "launch, inert preload (/s)"   rate launch.native launch.inert 1
row "launch, A/A native (/s)"      rate launch.native launch.native2 -
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
