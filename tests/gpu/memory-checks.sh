#!/usr/bin/env bash
# GPU-side checks for gpuslice: every check runs under a 4 GiB slice, with a
# host-side monitor (NVML every 20 ms + nvidia-smi every 200 ms) recording the
# peak GPU memory of the check's processes. A check passes only if its own
# assertions pass AND that peak is <= 4096 MiB.
#
#   bash tests/gpu/memory-checks.sh            # all checks
#   GSCHK_ONLY=cupy,two-procs bash tests/gpu/memory-checks.sh
#
# Inputs (environment):
#   GPUSLICE_BIN_DIR  folder with gpuslice + libgpuslice.so (default .gpu-carry, relative to the repo root)
#   GSCHK_LOGDIR      working folder for the per-check logs (default /tmp/gpuslice-gpu-logs)
#   OUT               if set, the logs are also bundled into $OUT/gpu-checks-logs.txt
#                     (all files concatenated) and $OUT/gpu-checks-logs.tar.gz
#   PYTHON            python interpreter (default python3)
#   GSCHK_ONLY        comma-separated subset of checks
#   GSCHK_TIMEOUT     per-check timeout in seconds (default 90)
#   GSCHK_BUDGET      total seconds after which remaining checks are skipped (default 540)
# Exit status: 0 if no check failed, 1 otherwise.
# See tests/gpu/README.md.

set -u
export LC_ALL=C
export PYTHONUNBUFFERED=1

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
HERE="$(dirname "$SELF")"
REPO="$(cd "$HERE/../.." && pwd)"

BIN_DIR="${GSCHK_BIN_DIR:-${GPUSLICE_BIN_DIR:-.gpu-carry}}"
case "$BIN_DIR" in /*) ;; *) BIN_DIR="$REPO/$BIN_DIR" ;; esac
export GSCHK_BIN_DIR="$BIN_DIR"
GS="$BIN_DIR/gpuslice"
LIB="$BIN_DIR/libgpuslice.so"
LIB_REAL="$(readlink -f "$LIB" 2>/dev/null || echo "$LIB")"
PY="${PYTHON:-python3}"
LOGDIR="${GSCHK_LOGDIR:-/tmp/gpuslice-gpu-logs}"
export GSCHK_LOGDIR="$LOGDIR"

LIMIT=4GiB
LIMIT_MIB=4096
LIMIT_BYTES=$((LIMIT_MIB * 1024 * 1024))
CHECK_TIMEOUT="${GSCHK_TIMEOUT:-90}"
GLOBAL_BUDGET="${GSCHK_BUDGET:-540}"
DRIVER_PATHS_BIN=/tmp/driver_paths
FOREIGN_PIDS="$LOGDIR/foreign_pids.txt"
ALL_CHECKS="torch-default torch-expandable torch-mallocasync cupy driver-paths two-procs sigkill-reclaim torch-cuda-graph ld-so-preload bad-config visible-devices compat-env"

# Nothing of the caller's gpuslice/allocator configuration may leak into the checks.
unset LD_PRELOAD GPUSLICE_BIN_DIR GPUSLICE_MEMORY GPUSLICE_LEDGER CUDA_DEVICE_MEMORY_LIMIT \
      PYTORCH_CUDA_ALLOC_CONF PYTORCH_ALLOC_CONF CUPY_GPU_MEMORY_LIMIT 2>/dev/null

# Standard pytorch probe arguments (check 1 of the brief).
TORCH_ARGS=(--expect-total "$LIMIT_BYTES" --expect-preloaded --chunk-mib 256
            --min-first-gib 3.0 --min-second-gib 2.5 --matmul)

# =========================================================== helpers (inner)
detail() { printf '%s\n' "$*" > "$CHECK_DIR/detail.txt"; }
summary_of() { grep -a '^SUMMARY' "$1" 2>/dev/null | tail -n1 | sed 's/^SUMMARY //'; }
last_line() { grep -av '^[[:space:]]*$' "$1" 2>/dev/null | tail -n1 | cut -c1-160; }
refusals() { local n; n=$(grep -ac 'gpuslice:' "$@" 2>/dev/null | awk -F: '{s+=$NF} END{print s+0}'); echo "${n:-0}"; }
slice_name() { echo "gschk-${CHECK_NAME}-$$"; }
q() { printf '%q' "$1"; }

# judge_fill LOG RC [MSG_LOG...]: pass iff rc==0, a SUMMARY ok line exists and
# the interposer announced at least one refusal ("gpuslice:" on stderr).
judge_fill() {
    local log=$1 rc=$2 s n
    shift 2
    s=$(summary_of "$log")
    if [ $# -gt 0 ]; then n=$(refusals "$@"); else n=$(refusals "$log"); fi
    if [ -z "$s" ]; then detail "rc=$rc no SUMMARY: $(last_line "$log")"; return 1; fi
    if [ "$rc" -ne 0 ]; then detail "$s rc=$rc"; return 1; fi
    if [ "$n" -eq 0 ]; then detail "no 'gpuslice:' refusal message | $s"; return 1; fi
    detail "$s msgs=$n"
    return 0
}

# ============================================================ checks (inner)
torch_slice_check() {  # CONF EXPECTED_BACKEND [extra torch_fill args]
    local conf=$1 backend=$2 rc
    shift 2
    local -a pre=(env -u PYTORCH_ALLOC_CONF -u PYTORCH_CUDA_ALLOC_CONF)
    [ -n "$conf" ] && pre+=("PYTORCH_CUDA_ALLOC_CONF=$conf")
    "${pre[@]}" "$GS" run --memory "$LIMIT" --name "$(slice_name)" -- \
        "$PY" "$HERE/torch_fill.py" --tag "$CHECK_NAME" "${TORCH_ARGS[@]}" --expect-backend "$backend" \
        --pidfile "$CHECK_DIR/pids" --snapshot-cmd "$(q "$GS") status --json" \
        --snapshot-out "$CHECK_DIR/status-at-oom.json" "$@" > "$CHECK_DIR/torch.log" 2>&1
    rc=$?
    judge_fill "$CHECK_DIR/torch.log" "$rc"
}

check_torch_default()     { torch_slice_check "" native; }
check_torch_expandable()  { torch_slice_check "expandable_segments:True" native --expect-expandable; }
check_torch_mallocasync() { torch_slice_check "backend:cudaMallocAsync" cudaMallocAsync; }

check_cupy() {
    local rc
    "$GS" run --memory "$LIMIT" --name "$(slice_name)" -- \
        "$PY" "$HERE/cupy_fill.py" --expect-total "$LIMIT_BYTES" --expect-preloaded --chunk-mib 256 \
        --min-gib 3.0 --async-pool --pidfile "$CHECK_DIR/pids" > "$CHECK_DIR/cupy.log" 2>&1
    rc=$?
    judge_fill "$CHECK_DIR/cupy.log" "$rc"
}

check_driver_paths() {
    local out="$CHECK_DIR/driver_paths.out" err="$CHECK_DIR/driver_paths.err" rc final bad hooked n np
    if [ ! -x "$DRIVER_PATHS_BIN" ] || [ ! -e "$LOGDIR/driver_paths.built" ]; then
        detail "driver_paths not built: $(last_line "$LOGDIR/build-driver_paths.log")"
        return 1
    fi
    "$GS" run --memory "$LIMIT" --name "$(slice_name)" -- \
        "$DRIVER_PATHS_BIN" --expect-hooked --expect-total-mib "$LIMIT_MIB" > "$out" 2> "$err"
    rc=$?
    final=$(grep -E '^(ALL_OK|SOME_FAILED)$' "$out" | tail -n1)
    np=$(grep -c '^path=' "$out")
    bad=$(grep '^path=' "$out" | grep -v ' ok=1' |
          sed -E 's/^path=([^ ]*).*oom_code=([^ ]*).* why=([^ ]*).*/\1(\2:\3)/; s/^path=([^ ]*) .*/\1/; s/CUDA_ERROR_//' |
          tr '\n' ' ')
    hooked=$(sed -n 's/^path=entrypoints.* hooked=\([0-9]*\/[0-9]*\).*/\1/p' "$out" | head -n1)
    n=$(refusals "$err")
    if [ "$rc" -eq 0 ] && [ "$final" = ALL_OK ] && [ "$n" -gt 0 ]; then
        detail "ALL_OK $np paths, entry points hooked ${hooked:-?}, msgs=$n"
        return 0
    fi
    if [ "$n" -eq 0 ]; then bad="$bad no-'gpuslice:'-message"; fi
    detail "${final:-no-verdict} rc=$rc hooked=${hooked:-?} bad: ${bad:-none}"
    return 1
}

check_two_procs() {
    local rc n
    GSCHK_STATUS_CMD="$(q "$GS") status --json" \
    "$GS" run --memory "$LIMIT" --name "$(slice_name)" -- \
        bash "$HERE/two_procs_inner.sh" "$PY" "$HERE" "$CHECK_DIR" "$LIMIT_BYTES" > "$CHECK_DIR/inner.log" 2>&1
    rc=$?
    n=$(refusals "$CHECK_DIR/B.log")
    local d
    d=$(cat "$CHECK_DIR/inner-detail.txt" 2>/dev/null || last_line "$CHECK_DIR/inner.log")
    if [ "$rc" -eq 0 ] && [ "$n" -gt 0 ]; then detail "$d msgs=$n"; return 0; fi
    [ "$n" -eq 0 ] && d="no 'gpuslice:' message from B | $d"
    detail "rc=$rc $d"
    return 1
}

check_sigkill_reclaim() {
    local rc n name
    name=$(slice_name)
    GSCHK_FOREIGN_PIDS="$FOREIGN_PIDS" \
    "$GS" run --memory "$LIMIT" --name "$name" -- \
        bash "$HERE/sigkill_inner.sh" "$PY" "$HERE" "$CHECK_DIR" "$LIMIT_BYTES" "$GS" "$name" \
        > "$CHECK_DIR/inner.log" 2>&1
    rc=$?
    n=$(refusals "$CHECK_DIR/B.log")
    local d
    d=$(cat "$CHECK_DIR/inner-detail.txt" 2>/dev/null || last_line "$CHECK_DIR/inner.log")
    if [ "$rc" -eq 0 ] && [ "$n" -gt 0 ]; then detail "$d msgs=$n"; return 0; fi
    [ "$n" -eq 0 ] && d="no 'gpuslice:' message from B | $d"
    detail "rc=$rc $d"
    return 1
}

check_torch_cuda_graph() {
    local rc
    "$GS" run --memory "$LIMIT" --name "$(slice_name)" -- \
        "$PY" "$HERE/torch_cuda_graph.py" --replays 100 --too-large-gib 6 --expect-preloaded \
        --pidfile "$CHECK_DIR/pids" > "$CHECK_DIR/graph.log" 2>&1
    rc=$?
    judge_fill "$CHECK_DIR/graph.log" "$rc"
}

# /etc/ld.so.preload is written (and restored) by the outer runner around this
# check; here we only use it.
check_ld_so_preload() {
    local L=/dev/shm/gpuslice-preload.ledger rc r1 rc_smi rc_ls rc_ls2
    if [ "$(id -u)" -ne 0 ]; then detail "SKIP: needs root to write /etc/ld.so.preload"; return 77; fi
    if ! grep -qxF "$LIB_REAL" /etc/ld.so.preload 2>/dev/null; then
        detail "/etc/ld.so.preload was not installed (see check.log)"; return 1
    fi
    rm -f "$L"
    env -u LD_PRELOAD GPUSLICE_MEMORY="$LIMIT" GPUSLICE_LEDGER="$L" \
        "$PY" "$HERE/torch_fill.py" --tag preload "${TORCH_ARGS[@]}" --expect-backend native \
        --pidfile "$CHECK_DIR/pids" > "$CHECK_DIR/torch.log" 2>&1
    rc=$?
    judge_fill "$CHECK_DIR/torch.log" "$rc"; r1=$?
    local d1; d1=$(cat "$CHECK_DIR/detail.txt" 2>/dev/null)
    env -u LD_PRELOAD GPUSLICE_MEMORY="$LIMIT" GPUSLICE_LEDGER="$L" timeout 30 nvidia-smi > "$CHECK_DIR/nvidia-smi.log" 2>&1
    rc_smi=$?
    env -u LD_PRELOAD GPUSLICE_MEMORY="$LIMIT" GPUSLICE_LEDGER="$L" timeout 10 ls / > "$CHECK_DIR/ls.log" 2>&1
    rc_ls=$?
    timeout 10 ls / > "$CHECK_DIR/ls-plain.log" 2>&1   # inert: no gpuslice variables at all
    rc_ls2=$?
    rm -f "$L"
    detail "$d1 | nvidia-smi rc=$rc_smi ls rc=$rc_ls/$rc_ls2"
    [ "$r1" -eq 0 ] && [ "$rc_smi" -eq 0 ] && [ "$rc_ls" -eq 0 ] && [ "$rc_ls2" -eq 0 ]
}

# One invalid-limit run: VAR VALUE LABEL -> prints a verdict word, returns 0 if refused+named.
bad_config_run() {
    local var=$1 val=$2 label=$3 L="/dev/shm/gschk-bad-$$.ledger" rc refused named how
    rm -f "$L"
    timeout 40 env LD_PRELOAD="$LIB" "$var=$val" GPUSLICE_LEDGER="$L" \
        "$PY" "$HERE/torch_bad_config.py" --pidfile "$CHECK_DIR/pids" \
        > "$CHECK_DIR/$label.out" 2> "$CHECK_DIR/$label.err"
    rc=$?
    rm -f "$L"
    refused=1; named=0
    grep -q '^FIRST_ALLOC=ok' "$CHECK_DIR/$label.out" && refused=0
    grep -qF "$var" "$CHECK_DIR/$label.err" && named=1
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then refused=0; how="timeout"
    elif grep -q '^FIRST_ALLOC=' "$CHECK_DIR/$label.out"; then how=$(grep -m1 '^FIRST_ALLOC=' "$CHECK_DIR/$label.out" | cut -d' ' -f1)
    elif grep -q '^CUDA_AVAILABLE=' "$CHECK_DIR/$label.out"; then how=$(grep -m1 '^CUDA_AVAILABLE=' "$CHECK_DIR/$label.out")
    else how="process-rc=$rc"; fi
    echo "$var=$val: refused=$refused named=$named ($how)"
    [ "$refused" -eq 1 ] && [ "$named" -eq 1 ]
}

check_bad_config() {
    local a b ra rb
    a=$(bad_config_run GPUSLICE_MEMORY 4GB-oops bad-gpuslice-memory); ra=$?
    b=$(bad_config_run CUDA_DEVICE_MEMORY_LIMIT lots bad-cuda-device-memory-limit); rb=$?
    detail "$a | $b"
    [ "$ra" -eq 0 ] && [ "$rb" -eq 0 ]
}

check_visible_devices() {
    local uuid rc
    uuid=$(timeout 20 nvidia-smi --query-gpu=uuid --format=csv,noheader -i 0 2>/dev/null | head -n1 | tr -d '[:space:]')
    if [ -z "$uuid" ]; then detail "could not read GPU 0 UUID from nvidia-smi"; return 1; fi
    echo "GPU 0 uuid: $uuid"
    CUDA_VISIBLE_DEVICES="$uuid" "$GS" run --memory "$LIMIT" --gpus "$uuid" --name "$(slice_name)" -- \
        "$PY" "$HERE/torch_fill.py" --tag "$CHECK_NAME" "${TORCH_ARGS[@]}" --expect-device-count 1 \
        --pidfile "$CHECK_DIR/pids" > "$CHECK_DIR/torch.log" 2>&1
    rc=$?
    judge_fill "$CHECK_DIR/torch.log" "$rc"
}

# Extra: the compatible variable alone (no CLI, no GPUSLICE_MEMORY) gives the same slice.
check_compat_env() {
    local L="/dev/shm/gschk-compat-$$.ledger" rc r
    rm -f "$L"
    env LD_PRELOAD="$LIB" CUDA_DEVICE_MEMORY_LIMIT=4g GPUSLICE_LEDGER="$L" \
        "$PY" "$HERE/torch_fill.py" --tag compat --expect-total "$LIMIT_BYTES" --expect-preloaded \
        --chunk-mib 256 --min-first-gib 3.0 --min-second-gib 0 \
        --pidfile "$CHECK_DIR/pids" > "$CHECK_DIR/torch.log" 2>&1
    rc=$?
    rm -f "$L"
    judge_fill "$CHECK_DIR/torch.log" "$rc"; r=$?
    return "$r"
}

# ============================================================= inner dispatch
if [ "${1:-}" = "--inner" ]; then
    CHECK_NAME="${2:?check name}"
    : "${CHECK_DIR:?CHECK_DIR must be set}"
    fn="check_${CHECK_NAME//-/_}"
    if ! declare -F "$fn" > /dev/null; then echo "unknown check: $CHECK_NAME"; exit 2; fi
    echo "== $CHECK_NAME: $(date -u +%FT%TZ) bin=$BIN_DIR"
    "$fn"
    rc=$?
    echo "== $CHECK_NAME: rc=$rc detail: $(cat "$CHECK_DIR/detail.txt" 2>/dev/null)"
    exit "$rc"
fi

# ============================================================== outer runner
START=$SECONDS
MON_PID=""
CHILD_PID=""
CUR_CHECK=""
PRELOAD_STATE=none
PRELOAD_ORIG_CONTENT=""
R_NAME=(); R_RES=(); R_PN=(); R_PS=(); R_DET=(); R_TIME=()

preload_install() {
    PRELOAD_STATE=none
    if [ "$(id -u)" -ne 0 ]; then echo "not root: /etc/ld.so.preload left alone"; return 0; fi
    if [ -e /etc/ld.so.preload ]; then
        cp -p /etc/ld.so.preload "$LOGDIR/ld.so.preload.orig" || { echo "cannot back up /etc/ld.so.preload"; return 0; }
        PRELOAD_ORIG_CONTENT="$(< /etc/ld.so.preload)"
        PRELOAD_STATE=had
    else
        PRELOAD_STATE=absent
    fi
    if ! printf '%s\n' "$LIB_REAL" > /etc/ld.so.preload; then
        echo "cannot write /etc/ld.so.preload"
        preload_restore
    fi
}

# Restores with shell builtins first, so that it works even if the preloaded
# library broke every new process.
preload_restore() {
    case "$PRELOAD_STATE" in
        had)
            printf '%s\n' "$PRELOAD_ORIG_CONTENT" > /etc/ld.so.preload
            cp -p "$LOGDIR/ld.so.preload.orig" /etc/ld.so.preload 2>/dev/null
            ;;
        absent)
            : > /etc/ld.so.preload
            rm -f /etc/ld.so.preload 2>/dev/null
            ;;
    esac
    PRELOAD_STATE=none
}

stop_monitor() {
    [ -n "$MON_PID" ] || return 0
    kill -TERM "$MON_PID" 2>/dev/null
    local i
    for i in $(seq 1 50); do kill -0 "$MON_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$MON_PID" 2>/dev/null && kill -KILL "$MON_PID" 2>/dev/null
    wait "$MON_PID" 2>/dev/null
    MON_PID=""
}

# Kill (by pid) probe processes a check left behind; only pids our probes recorded.
kill_leftovers() {
    local f=$1 pid
    [ -f "$f" ] || return 0
    for pid in $(sort -u "$f"); do
        [ "$pid" -gt 1 ] 2>/dev/null || continue
        if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "$HERE/"; then
            echo "killing leftover pid $pid: $(tr '\0' ' ' < "/proc/$pid/cmdline" | cut -c1-120)"
            kill -KILL "$pid" 2>/dev/null
        fi
    done
}

say() { printf '%s\n' "$*"; printf '%s\n' "$*" >> "$LOGDIR/stdout.txt"; }

record() {  # name result peak_nvml peak_smi detail secs
    R_NAME+=("$1"); R_RES+=("$2"); R_PN+=("$3"); R_PS+=("$4"); R_DET+=("$5"); R_TIME+=("$6")
}

run_check() {
    local name=$1 idx=$2 count=$3 dir="$LOGDIR/$1" rc t0 dt pn ps pd det res peak i
    rm -rf "$dir"
    mkdir -p "$dir"
    if [ $((SECONDS - START + CHECK_TIMEOUT)) -gt "$GLOBAL_BUDGET" ]; then
        record "$name" SKIP n/a n/a "not started: global time budget ${GLOBAL_BUDGET}s would be exceeded" 0
        say "$(printf '[%2d/%d] %-18s %-5s' "$idx" "$count" "$name" SKIP)"
        return
    fi
    "$PY" "$HERE/gpu_monitor.py" --out "$dir/monitor.json" --ready "$dir/monitor.ready" \
        --max-seconds $((CHECK_TIMEOUT + 60)) > "$dir/monitor.log" 2>&1 &
    MON_PID=$!
    for i in $(seq 1 150); do
        [ -e "$dir/monitor.ready" ] && break
        kill -0 "$MON_PID" 2>/dev/null || break
        sleep 0.1
    done
    [ "$name" = ld-so-preload ] && preload_install > "$dir/preload-install.log" 2>&1
    t0=$SECONDS
    CHECK_DIR="$dir" CHECK_NAME="$name" timeout -k 10 "$CHECK_TIMEOUT" bash "$SELF" --inner "$name" \
        > "$dir/check.log" 2>&1 < /dev/null &
    CHILD_PID=$!
    CUR_CHECK=$name
    wait "$CHILD_PID"
    rc=$?
    CHILD_PID=""
    CUR_CHECK=""
    dt=$((SECONDS - t0))
    [ "$name" = ld-so-preload ] && preload_restore
    sleep 0.3
    stop_monitor
    kill_leftovers "$dir/pids" >> "$dir/check.log" 2>&1
    "$PY" "$HERE/gpu_wait_idle.py" --max-mib 64 --timeout 15 --ignore-file "$FOREIGN_PIDS" > "$dir/idle-after.log" 2>&1
    timeout 15 "$GS" status --json > "$dir/status-after.json" 2>&1

    read -r pn ps pd < <("$PY" "$HERE/gpu_monitor.py" --read "$dir/monitor.json" 2>/dev/null || echo "n/a n/a n/a")
    pn=${pn:-n/a}; ps=${ps:-n/a}; pd=${pd:-n/a}
    det=$(head -n1 "$dir/detail.txt" 2>/dev/null)
    [ -n "$det" ] || det=$(last_line "$dir/check.log")
    peak=""
    for i in "$pn" "$ps"; do
        [ "$i" = n/a ] && continue
        if [ -z "$peak" ] || [ "$i" -gt "$peak" ]; then peak=$i; fi
    done
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        res=FAIL; det="TIMEOUT after ${CHECK_TIMEOUT}s; $det"
    elif [ "$rc" -eq 77 ]; then
        res=SKIP
    elif [ "$rc" -ne 0 ]; then
        res=FAIL
    elif [ -z "$peak" ]; then
        res=FAIL; det="no GPU memory samples (pynvml and nvidia-smi failed, see monitor.json); $det"
    elif [ "$peak" -gt "$LIMIT_MIB" ]; then
        res=FAIL; det="host-side peak ${peak}MiB > ${LIMIT_MIB}MiB; $det"
    else
        res=PASS
    fi
    echo "$res rc=$rc peak_nvml=$pn peak_smi=$ps dev_delta=$pd time=${dt}s" > "$dir/result.txt"
    record "$name" "$res" "$pn" "$ps" "$det" "$dt"
    say "$(printf '[%2d/%d] %-18s %-5s %3ss  peak nvml/smi %s/%s MiB' "$idx" "$count" "$name" "$res" "$dt" "$pn" "$ps")"
}

print_notes() {  # a few telling lines of each failed check
    local i name dir budget=24 lines
    for i in "${!R_NAME[@]}"; do
        [ "${R_RES[$i]}" = FAIL ] || continue
        [ "$budget" -gt 0 ] || break
        name=${R_NAME[$i]}; dir="$LOGDIR/$name"
        [ -d "$dir" ] || continue
        lines=$( { grep -ah ' ok=0' "$dir"/driver_paths.out 2>/dev/null
                   grep -ah 'hooked=0' "$dir"/driver_paths.out 2>/dev/null
                   grep -ahE 'ASSERTION FAILED|Error|error|FAIL|refused=0|named=0|gpuslice:' \
                        "$dir"/*.log "$dir"/*.err 2>/dev/null | grep -v '^== ' ; } |
                 awk '!seen[$0]++' | head -n 6 | cut -c1-200)
        [ -n "$lines" ] || continue
        echo "-- $name:"
        echo "$lines" | sed 's/^/   /'
        budget=$((budget - $(echo "$lines" | wc -l)))
    done
}

print_table() {
    local i pass=0 fail=0 skip=0
    echo
    echo "== failure notes (full logs: $LOGDIR) =="
    print_notes
    echo
    printf '%-17s | %-6s | %15s | %21s | %s\n' check result "peak MiB (nvml)" "peak MiB (nvidia-smi)" detail
    printf '%s\n' "------------------+--------+-----------------+-----------------------+------------------------------"
    for i in "${!R_NAME[@]}"; do
        printf '%-17s | %-6s | %15s | %21s | %s\n' "${R_NAME[$i]}" "${R_RES[$i]}" "${R_PN[$i]}" "${R_PS[$i]}" \
            "$(printf '%s' "${R_DET[$i]}" | tr '\n' ' ' | cut -c1-150)"
        case "${R_RES[$i]}" in PASS) pass=$((pass + 1)) ;; FAIL) fail=$((fail + 1)) ;; *) skip=$((skip + 1)) ;; esac
    done
    echo "limit ${LIMIT_MIB} MiB; total time $((SECONDS - START))s"
    echo "$pass passed, $fail failed, $skip skipped"
    [ "$fail" -eq 0 ]
}

# $OUT comes back from a remote run as a handful of files only: bundle.
bundle_logs() {
    [ -n "${OUT:-}" ] || return 0
    mkdir -p "$OUT" 2>/dev/null || return 0
    local -a items=()
    local f
    for f in "$LOGDIR"/*; do [ -f "$f" ] && items+=("$(basename "$f")"); done
    for f in "${R_NAME[@]}"; do [ -d "$LOGDIR/$f" ] && items+=("$f"); done
    {
        echo "gpuslice GPU check logs from $LOGDIR ($(date -u +%FT%TZ))"
        (cd "$LOGDIR" && find "${items[@]}" -type f ! -name '*.ready' ! -name '*.tmp' 2>/dev/null | sort) |
        while IFS= read -r f; do
            echo
            echo "=================================================================== $f"
            head -c 300000 "$LOGDIR/$f"
        done
    } > "$OUT/gpu-checks-logs.txt" 2>/dev/null
    [ "${#items[@]}" -gt 0 ] && tar -czf "$OUT/gpu-checks-logs.tar.gz" -C "$LOGDIR" "${items[@]}" 2>/dev/null
    echo "logs bundled: $OUT/gpu-checks-logs.txt, $OUT/gpu-checks-logs.tar.gz"
}

on_signal() {
    echo "memory-checks: interrupted by SIG$1, cleaning up" >&2
    [ -n "$CHILD_PID" ] && kill -TERM "$CHILD_PID" 2>/dev/null
    preload_restore
    stop_monitor
    [ -n "$CUR_CHECK" ] && record "$CUR_CHECK" FAIL n/a n/a "interrupted by SIG$1" 0
    print_table
    bundle_logs
    exit 130
}
trap 'preload_restore' EXIT
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
trap 'on_signal HUP' HUP

mkdir -p "$LOGDIR" 2>/dev/null || { LOGDIR=/tmp/gpuslice-gpu-logs; export GSCHK_LOGDIR="$LOGDIR"; mkdir -p "$LOGDIR"; }
FOREIGN_PIDS="$LOGDIR/foreign_pids.txt"
rm -f "$LOGDIR"/*.log "$LOGDIR"/*.txt "$LOGDIR"/*.built "$LOGDIR"/ld.so.preload.orig 2>/dev/null

say "== gpuslice GPU memory checks (logs: $LOGDIR) =="
say "gpu: $(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 2 | tr '\n' ';')"
say "env: $(timeout 60 "$PY" "$HERE/env_info.py" 2>&1 | tail -n1)"
NVCC=$(command -v nvcc || true)
if [ -z "$NVCC" ]; then
    for c in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do [ -x "$c" ] && { NVCC=$c; break; }; done
fi
say "nvcc: ${NVCC:-not found} $( [ -n "$NVCC" ] && "$NVCC" --version 2>/dev/null | grep -o 'release [0-9.]*' )"
say "gpuslice: $GS ($( [ -x "$GS" ] && timeout 10 "$GS" --version 2>&1 | head -n1 | cut -c1-60 || echo missing))"
say "lib: $LIB_REAL ($( [ -f "$LIB" ] && stat -c %s "$LIB" 2>/dev/null || echo missing) bytes)"
say "foreign GPU pids (ignored): $("$PY" "$HERE/gpu_monitor.py" --list-pids "$FOREIGN_PIDS" 2>/dev/null || echo '?')"

CHECKS="$ALL_CHECKS"
if [ -n "${GSCHK_ONLY:-}" ]; then CHECKS=$(echo "$GSCHK_ONLY" | tr ',' ' '); fi

if [ -f "$GS" ] && [ ! -x "$GS" ]; then chmod +x "$GS" 2>/dev/null; fi
if [ ! -x "$GS" ] || [ ! -f "$LIB" ]; then
    say "missing artifacts: need $GS and $LIB (set GPUSLICE_BIN_DIR)"
    for c in $CHECKS; do record "$c" FAIL n/a n/a "not run: missing $BIN_DIR/{gpuslice,libgpuslice.so}" 0; done
    print_table
    bundle_logs > /dev/null
    exit 1
fi

case " $CHECKS " in
    *" driver-paths "*)
        rm -f "$DRIVER_PATHS_BIN" "$LOGDIR/driver_paths.built"
        bt0=$SECONDS
        if [ -z "$NVCC" ]; then
            echo "nvcc not found" > "$LOGDIR/build-driver_paths.log"
        elif (cd "$REPO" && timeout 180 "$NVCC" -O2 -o "$DRIVER_PATHS_BIN" tests/gpu/driver_paths.cu -lcuda) \
                > "$LOGDIR/build-driver_paths.log" 2>&1; then
            touch "$LOGDIR/driver_paths.built"
        fi
        say "build driver_paths: $( [ -e "$LOGDIR/driver_paths.built" ] && echo ok || echo FAILED) ($((SECONDS - bt0))s)"
        ;;
esac

set -- $CHECKS
n=$#
i=0
for c in "$@"; do
    i=$((i + 1))
    case " $ALL_CHECKS " in
        *" $c "*) run_check "$c" "$i" "$n" ;;
        *) record "$c" FAIL n/a n/a "unknown check name" 0 ;;
    esac
done

print_table > "$LOGDIR/summary.txt"
rc=$?
bundle_logs > /dev/null
cat "$LOGDIR/summary.txt"
[ -n "${OUT:-}" ] && echo "logs: $OUT/gpu-checks-logs.txt (+ .tar.gz)"
exit "$rc"
