#!/usr/bin/env bash
# NVML view checks on a real GPU: does `nvidia-smi` inside a PID namespace tell the truth
# about its slice? Starts `gpuslice agent`, a busy PyTorch process on the host (in no
# slice), and, inside `unshare --pid --fork --mount-proc`, a busy PyTorch process in a
# 4 GiB slice (interposer preloaded, GPUSLICE_AGENT_SOCKET set). Then, inside the
# namespace, it runs the real nvidia-smi (table, --query-compute-apps, --query-gpu) and a
# pynvml script, and checks: 4096 MiB total, plausible usage, only the namespace's
# processes under namespace PIDs, no host PID in utilization samples.
#
#   sudo bash tests/gpu/nvml-view-checks.sh
#
# Inputs (environment):
#   GPUSLICE_BIN_DIR  folder with gpuslice + libgpuslice.so (default .gpu-carry, relative to the repo root)
#   GSCHK_LOGDIR      working folder for logs (default /tmp/gpuslice-nvml-view-logs)
#   OUT               if set, the logs are also bundled into $OUT/nvml-view-logs.txt
#   PYTHON            python interpreter (default python3)
#   GSCHK_TIMEOUT     timeout of the namespace part in seconds (default 150); each command
#                     in it has GSCHK_CMD_TIMEOUT (default 30)
# Needs root (unshare --pid, the agent's probe), nvidia-smi, python3 with torch and pynvml.
# Exit status: 0 if no check failed, 1 otherwise. Takes about a minute.

set -u
export LC_ALL=C PYTHONUNBUFFERED=1

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BIN_DIR="${GPUSLICE_BIN_DIR:-.gpu-carry}"
case "$BIN_DIR" in /*) ;; *) BIN_DIR="$REPO/$BIN_DIR" ;; esac
GS="$BIN_DIR/gpuslice"
LIB="$(readlink -f "$BIN_DIR/libgpuslice.so" 2>/dev/null || echo "$BIN_DIR/libgpuslice.so")"
PY="${PYTHON:-python3}"
LOGDIR="${GSCHK_LOGDIR:-/tmp/gpuslice-nvml-view-logs}"
NS_TIMEOUT="${GSCHK_TIMEOUT:-150}"
W="$LOGDIR/work"
SOCK="$W/agent/agent.sock"
LEDGER_DIR="/dev/shm/gschk-nvml-view-$$"
LEDGER="$LEDGER_DIR/nvml-view.ledger"
START=$SECONDS

unset LD_PRELOAD GPUSLICE_MEMORY GPUSLICE_LEDGER GPUSLICE_AGENT_SOCKET CUDA_DEVICE_MEMORY_LIMIT \
      PYTORCH_CUDA_ALLOC_CONF PYTORCH_ALLOC_CONF 2>/dev/null

AGENT_PID="" HOST_PID="" NS_PID=""
R_NAME=(); R_RES=(); R_DET=()

say() { printf '%s\n' "$*"; printf '%s\n' "$*" >> "$LOGDIR/stdout.txt"; }
record() { R_NAME+=("$1"); R_RES+=("$2"); R_DET+=("$3"); }

stop_pid() {  # PID: TERM, then KILL after 5 s; only processes this script started
    local pid=$1 i
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

cleanup() {
    touch "$W/work.stop" "$W/host.stop" 2>/dev/null
    [ -n "$NS_PID" ] && stop_pid "$NS_PID"
    [ -n "$HOST_PID" ] && stop_pid "$HOST_PID"
    [ -n "$AGENT_PID" ] && stop_pid "$AGENT_PID"
    NS_PID="" HOST_PID="" AGENT_PID=""
    rm -rf "$LEDGER_DIR"
}

print_table() {
    local i pass=0 fail=0 skip=0
    echo
    printf '%-20s | %-6s | %s\n' check result detail
    printf '%s\n' "---------------------+--------+------------------------------------------------------------"
    for i in "${!R_NAME[@]}"; do
        printf '%-20s | %-6s | %s\n' "${R_NAME[$i]}" "${R_RES[$i]}" "$(printf '%s' "${R_DET[$i]}" | tr '\n' ' ' | cut -c1-220)"
        case "${R_RES[$i]}" in PASS) pass=$((pass + 1)) ;; FAIL) fail=$((fail + 1)) ;; *) skip=$((skip + 1)) ;; esac
    done
    echo "total time $((SECONDS - START))s; logs: $LOGDIR"
    echo "$pass passed, $fail failed, $skip skipped"
    [ "$fail" -eq 0 ]
}

bundle_logs() {
    [ -n "${OUT:-}" ] || return 0
    mkdir -p "$OUT" 2>/dev/null || return 0
    {
        echo "gpuslice NVML view check logs from $LOGDIR ($(date -u +%FT%TZ))"
        find "$LOGDIR" -type f ! -name '*.ready' ! -name '*.stop' | sort | while IFS= read -r f; do
            echo
            echo "=================================================================== ${f#"$LOGDIR"/}"
            head -c 200000 "$f"
        done
    } > "$OUT/nvml-view-logs.txt" 2>/dev/null
}

finish() {
    cleanup
    print_table > "$LOGDIR/summary.txt"
    local rc=$?
    bundle_logs
    cat "$LOGDIR/summary.txt"
    exit "$rc"
}

trap 'cleanup' EXIT
trap 'record interrupted FAIL "interrupted"; finish' INT TERM HUP

rm -rf "$LOGDIR"
mkdir -p "$W" "$(dirname "$SOCK")"
say "== gpuslice NVML view checks (logs: $LOGDIR) =="
say "gpu: $(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 1)"
say "gpuslice: $GS; lib: $LIB"

# ------------------------------------------------------------------ preconditions
missing=""
[ "$(id -u)" -eq 0 ] || missing="$missing root"
[ -x "$GS" ] || missing="$missing $GS"
[ -f "$LIB" ] || missing="$missing $LIB"
command -v unshare > /dev/null || missing="$missing unshare"
command -v nvidia-smi > /dev/null || missing="$missing nvidia-smi"
"$PY" -c 'import torch, pynvml' > /dev/null 2>&1 || missing="$missing python:torch+pynvml"
if [ -n "$missing" ]; then
    say "missing:$missing"
    record preconditions FAIL "missing:$missing"
    finish
fi

# ------------------------------------------------------------------ the agent
"$GS" agent --socket "$SOCK" --verbose > "$W/agent.out" 2> "$W/agent.log" &
AGENT_PID=$!
for _ in $(seq 1 600); do
    [ -S "$SOCK" ] && break
    kill -0 "$AGENT_PID" 2>/dev/null || break
    sleep 0.1
done
if [ ! -S "$SOCK" ]; then
    record agent FAIL "the agent did not listen: $(tail -n 3 "$W/agent.log" | tr '\n' ' ')"
    finish
fi
say "agent: $(grep -m1 'driver mode' "$W/agent.log" | cut -c1-200)"

# ------------------------------------------------------------------ a host process in no slice
"$PY" "$HERE/nvml_view_work.py" --mib 512 --seconds 150 --ready "$W/host.ready" --stop "$W/host.stop" \
    --pidfile "$W/host.pid" > "$W/host-work.log" 2>&1 &
HOST_PID=$!
for _ in $(seq 1 900); do
    [ -e "$W/host.ready" ] && break
    kill -0 "$HOST_PID" 2>/dev/null || break
    sleep 0.1
done
[ -e "$W/host.ready" ] || say "warning: the host workload did not start (host-work.log); the leak checks are weaker"
say "host workload: pid $(cat "$W/host.pid" 2>/dev/null || echo '?')"

# ------------------------------------------------------------------ the namespace
rm -rf "$LEDGER_DIR"
mkdir -p "$LEDGER_DIR"
timeout -k 5 "$NS_TIMEOUT" unshare --pid --fork --mount-proc \
    bash "$HERE/nvml_view_inner.sh" "$PY" "$HERE" "$W" "$LIB" "$SOCK" "$LEDGER" "$GS" > "$W/inner.log" 2>&1 &
NS_PID=$!
wait "$NS_PID"
ns_rc=$?
NS_PID=""
say "namespace part: rc=$ns_rc ($(grep -c 'rc=0' "$W/inner.log") commands ok); $(tr '\n' ';' < "$W/inner.log" | cut -c1-300)"
[ "$ns_rc" -eq 124 ] || [ "$ns_rc" -eq 137 ] && record namespace FAIL "timed out after ${NS_TIMEOUT}s"
touch "$W/host.stop"

# ------------------------------------------------------------------ judge
"$PY" "$HERE/nvml_view_judge.py" --work "$W" --held-mib 1024 > "$W/judge.txt" 2>&1
while read -r tag name res detail; do
    [ "$tag" = CHECK ] && record "$name" "$res" "$detail"
done < "$W/judge.txt"
[ "${#R_NAME[@]}" -gt 0 ] || record judge FAIL "no verdicts: $(tail -n 3 "$W/judge.txt" | tr '\n' ' ')"
finish
