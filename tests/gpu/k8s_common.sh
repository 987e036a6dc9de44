# shellcheck shell=bash disable=SC2034  # globals for the sourcing script
# What k8s-device-plugin-check.sh and k8s-dra-check.sh share (sourced, not run): the
# paths, the preconditions, starting and stopping the fake kubelet and `gpuslice node`,
# the solo baseline, the two containers, the table, the clean-up and the logs.
#
# The sourcing script sets CHECK (device-plugin or dra) first, then calls k8s_setup,
# starts the fake kubelet (start_bg) and the node (k8s_start_node), and calls k8s_solo,
# k8s_containers NAME CDI_DEVICE LIMIT_MIB COMPUTE ... and k8s_finish. Checks besides
# the containers' rows go through `check NAME PASS|FAIL|INFO DETAIL`.
#
# Inputs (environment):
#   GPUSLICE_BIN_DIR  folder with gpuslice, gpuslice-cdi-inject, fake-kubelet,
#                     libgpuslice.so and, when the host has no runtime, crun/ (crun + lib/)
#                     (default .gpu-carry, relative to the repo root)
#   GSCHK_RUNTIME     the OCI runtime (default: as container-checks.sh picks it)
#   GSCHK_LOGDIR      working folder (default /tmp/gpuslice-k8s-$CHECK-logs)
#   GSCHK_WINDOW      seconds of the side-by-side compute window (default 8)
#   OUT               if set, the logs are also bundled into $OUT/k8s-$CHECK-logs.txt
#   PYTHON            python interpreter (default python3)

set -u
export LC_ALL=C PYTHONUNBUFFERED=1

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BIN_DIR="${GPUSLICE_BIN_DIR:-.gpu-carry}"
case "$BIN_DIR" in /*) ;; *) BIN_DIR="$REPO/$BIN_DIR" ;; esac
GS="$BIN_DIR/gpuslice"
INJECT="$BIN_DIR/gpuslice-cdi-inject"
FK="$BIN_DIR/fake-kubelet"
LIB="$(readlink -f "$BIN_DIR/libgpuslice.so" 2>/dev/null || echo "$BIN_DIR/libgpuslice.so")"
PY="$(command -v "${PYTHON:-python3}")"
LOGDIR="${GSCHK_LOGDIR:-/tmp/gpuslice-k8s-$CHECK-logs}"
W="$LOGDIR/work"
KUBELET="$W/kubelet"
STATE="$W/state"
CDI="$W/cdi"
AGENT_SOCK="$W/agent/agent.sock"
CONFIG="$W/config.yaml"
GO="$W/shared/go"
NODE_NAME=h200
WINDOW="${GSCHK_WINDOW:-8}"
START=$SECONDS
# Everything is over within 3 minutes: no wait or GPU command outlives this.
END=$((START + 170))

# shellcheck source-path=SCRIPTDIR source=container_lib.sh
. "$HERE/container_lib.sh"

unset LD_PRELOAD GPUSLICE_MEMORY GPUSLICE_LEDGER GPUSLICE_AGENT_SOCKET CUDA_DEVICE_MEMORY_LIMIT \
      GPUSLICE_COMPUTE PYTORCH_CUDA_ALLOC_CONF PYTORCH_ALLOC_CONF KUBECONFIG 2>/dev/null

declare -A BG_PID=() CPID=()
BG_NAMES=() CONTAINERS=() ROWS=()
X_NAME=() X_RES=() X_DET=()

say() { printf '%s\n' "$*"; printf '%s\n' "$*" >> "$LOGDIR/stdout.txt"; }
check() { X_NAME+=("$1"); X_RES+=("$2"); X_DET+=("$3"); say "$1: $2 $3"; }

# lim N: N seconds, or fewer if the script's 3 minutes end sooner (at least 1).
lim() {
    local left=$((END - SECONDS))
    [ "$left" -lt 1 ] && left=1
    [ "$1" -lt "$left" ] && left=$1
    echo "$left"
}

# start_bg NAME LIMIT_S CMD...: CMD in the background under `timeout -s KILL`, output to
# $W/NAME.log; stopped at the end in the order started. A TERM to it reaches CMD
# (timeout passes it on).
start_bg() {
    local name=$1 limit=$2
    shift 2
    timeout -s KILL "$(lim "$limit")" "$@" > "$W/$name.log" 2>&1 < /dev/null &
    BG_PID[$name]=$!
    BG_NAMES+=("$name")
}

# stop_bg NAME: TERM (KILL after 5 s); its exit status in STOPPED_RC.
stop_bg() {
    local pid="${BG_PID[$1]:-}"
    STOPPED_RC=""
    [ -n "$pid" ] || return 0
    stop_pid "$pid"
    STOPPED_RC=$?
    BG_PID[$1]=""
}

alive() { [ -n "${BG_PID[$1]:-}" ] && kill -0 "${BG_PID[$1]}" 2>/dev/null; }

# wait_for FILE SECONDS [NAME...]: until FILE exists; gives up early when one of the
# processes NAME... ends.
wait_for() {
    local file=$1 end=$((SECONDS + $(lim "$2"))) name
    shift 2
    while [ "$SECONDS" -lt "$end" ]; do
        [ -e "$file" ] && return 0
        for name in "$@"; do
            if ! alive "$name"; then
                sleep 0.2
                [ -e "$file" ]
                return
            fi
        done
        sleep 0.1
    done
    [ -e "$file" ]
}

# jget FILE KEY...: a value from a JSON file (keys, or indices of lists), printed.
jget() {
    "$PY" -c 'import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2:]:
    v = v[int(k)] if isinstance(v, list) else v[k]
print(v if isinstance(v, str) else json.dumps(v))' "$@" 2>/dev/null
}

k8s_cleanup() {
    local n name
    for n in "${CONTAINERS[@]}"; do
        remove_container "gsk8s-$n" "${CPID[$n]:-}"
        CPID[$n]=""
    done
    # In the order started, so the fake kubelet before the node: a DRA fake kubelet
    # unprepares its claims on TERM, which needs the node.
    for name in "${BG_NAMES[@]}"; do
        stop_bg "$name"
    done
}

print_table() {
    local i fail=0
    echo
    echo "== gpuslice node ($CHECK) on $NODE_NAME: one row per container =="
    "$PY" "$HERE/k8s_workload.py" table --solo "$W/solo.json" "${ROWS[@]}" || fail=1
    echo
    printf '%-20s | %-6s | %s\n' check result detail
    printf '%s\n' "---------------------+--------+------------------------------------------------------------"
    for i in "${!X_NAME[@]}"; do
        printf '%-20s | %-6s | %s\n' "${X_NAME[$i]}" "${X_RES[$i]}" \
            "$(printf '%s' "${X_DET[$i]}" | tr '\n' ' ' | cut -c1-230)"
        [ "${X_RES[$i]}" = FAIL ] && fail=1
    done
    echo "runtime: $RUNTIME_NAME; total time $((SECONDS - START))s; logs: $LOGDIR"
    if [ $fail -eq 0 ]; then echo "RESULT: PASS"; else echo "RESULT: FAIL"; fi
    [ $fail -eq 0 ]
}

k8s_finish() {
    k8s_cleanup
    print_table > "$LOGDIR/summary.txt"
    local rc=$?
    bundle_logs_to "k8s-$CHECK-logs.txt" "gpuslice k8s $CHECK check logs"
    cat "$LOGDIR/summary.txt"
    exit "$rc"
}

# fail_early NAME DETAIL: a failed step the rest depends on.
fail_early() {
    check "$1" FAIL "$2"
    k8s_finish
}

k8s_setup() {
    trap 'k8s_cleanup' EXIT
    trap 'check interrupted FAIL "interrupted"; k8s_finish' INT TERM HUP
    rm -rf "$LOGDIR"
    mkdir -p "$W/shared" "$KUBELET" "$STATE" "$CDI" "$(dirname "$AGENT_SOCK")"
    say "== gpuslice node ($CHECK) against the fake kubelet (logs: $LOGDIR) =="
    say "gpu: $(timeout -s KILL 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 1)"
    say "cgroup: $(stat -f -c %T /sys/fs/cgroup 2>/dev/null) kernel $(uname -r)"
    local missing="" f
    [ "$(id -u)" -eq 0 ] || missing="$missing root"
    for f in "$GS" "$INJECT" "$FK"; do [ -x "$f" ] || missing="$missing $f"; done
    [ -f "$LIB" ] || missing="$missing $LIB"
    command -v nvidia-smi > /dev/null || missing="$missing nvidia-smi"
    timeout -s KILL 60 "$PY" -c 'import torch' > /dev/null 2>&1 || missing="$missing python:torch"
    pick_runtime || missing="$missing crun-or-runc"
    [ -z "$missing" ] || fail_early preconditions "missing:$missing"
    say "runtime: $RUNTIME_NAME"
}

# k8s_start_node [FLAGS...]: `gpuslice node` with its agent, everything under $W.
k8s_start_node() {
    start_bg node 170 "$GS" node --config "$CONFIG" --node-name "$NODE_NAME" \
        --kubelet-dir "$KUBELET" --state-dir "$STATE" --cdi-dir "$CDI" --driver-root / \
        --lib "$LIB" --agent-socket "$AGENT_SOCK" "$@"
}

# k8s_solo: the baseline, on the host in no slice, alone on the GPU.
k8s_solo() {
    timeout -s KILL "$(lim 60)" "$PY" "$HERE/k8s_workload.py" solo --seconds 4 --out "$W/solo.json" \
        > "$W/solo.log" 2>&1
    local rc=$?
    if [ $rc -eq 0 ]; then
        check solo INFO "$(printf '%.1f' "$(jget "$W/solo.json" rate)") steps/s alone (matmul 8192² bf16, 4 s)"
    else
        check solo FAIL "rc=$rc $(tail -n 2 "$W/solo.log" | tr '\n' ' ')"
    fi
}

# k8s_containers NAME CDI_DEVICE LIMIT_MIB COMPUTE [NAME CDI_DEVICE LIMIT_MIB COMPUTE ...]:
# a bundle per container with its CDI device, all started at once, the compute window
# opened for all of them together once every one is ready, then waited for.
k8s_containers() {
    local n b rc ready
    image_env
    while [ $# -ge 4 ]; do
        n=$1
        CONTAINERS+=("$n")
        ROWS+=(--row "$n:$3:$4:$W/$n/result.json")
        mkdir -p "$W/$n"
        b="$W/$n/bundle"
        cdi_bundle "$b" "$n" "$CDI" "$2" "$W/$n/bundle.log" \
            --cgroup "/gpuslice-k8s/$n" --bind "$REPO:ro" --bind "$W/$n:rw" --bind "$W/shared:rw" \
            --python "$PY" "${IMAGE_ENV[@]}" \
            -- "$PY" "$HERE/k8s_workload.py" slice --limit-mib "$3" --ready "$W/$n/ready" \
            --go "$GO" --seconds "$WINDOW" --out "$W/$n/result.json"
        rc=$?
        [ $rc -eq 0 ] || fail_early "$n-bundle" "CDI device $2: rc=$rc $(tail -n 2 "$W/$n/bundle.log" | tr '\n' ' ')"
        shift 4
    done
    for n in "${CONTAINERS[@]}"; do
        start_container "gsk8s-$n" "$W/$n/bundle" "$W/$n/runtime" "$(lim 120)"
        CPID[$n]=$STARTED_PID
    done
    local end=$((SECONDS + $(lim 90)))
    while [ "$SECONDS" -lt "$end" ]; do
        ready=1
        for n in "${CONTAINERS[@]}"; do
            [ -e "$W/$n/ready" ] || ! kill -0 "${CPID[$n]}" 2>/dev/null || ready=0
        done
        [ $ready -eq 1 ] && break
        sleep 0.1
    done
    touch "$GO"
    say "containers ready after $((SECONDS - START))s: ${CONTAINERS[*]}"
    for n in "${CONTAINERS[@]}"; do
        wait "${CPID[$n]}"
        rc=$?
        CPID[$n]=""
        say "$n: runtime rc=$rc $(tail -c 300 "$W/$n/runtime.err" | tr '\n' ' ')"
        [ $rc -eq 137 ] && check "$n-container" FAIL "runtime rc=137: killed at the time limit"
        [ $rc -eq 0 ] || [ $rc -eq 137 ] || check "$n-container" FAIL "runtime rc=$rc: $(tail -c 200 "$W/$n/runtime.err" | tr '\n' ' ')"
    done
}
