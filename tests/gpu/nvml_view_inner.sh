#!/usr/bin/env bash
# Runs inside `unshare --pid --fork --mount-proc` for nvml-view-checks.sh: a PyTorch
# process in a 4 GiB slice (interposer preloaded, the agent's socket configured), then
# the real nvidia-smi and pynvml inside the namespace, as a process of the same slice,
# and twice more for comparison: without the agent, and outside any slice.
#
#   nvml_view_inner.sh PYTHON TESTS_DIR WORK_DIR LIBGPUSLICE AGENT_SOCKET LEDGER GPUSLICE
set -u
PY=$1 HERE=$2 W=$3 LIB=$4 SOCK=$5 LEDGER=$6 GS=$7
T=${GSCHK_CMD_TIMEOUT:-30}
SLICE_ENV=(LD_PRELOAD="$LIB" GPUSLICE_MEMORY=4GiB GPUSLICE_LEDGER="$LEDGER" GPUSLICE_SLICE=nvml-view)

echo "inner: pid $$ in namespace $(readlink /proc/self/ns/pid)"
env "${SLICE_ENV[@]}" GPUSLICE_AGENT_SOCKET="$SOCK" \
    "$PY" "$HERE/nvml_view_work.py" --mib 1024 --seconds 150 --ready "$W/work.ready" \
    --stop "$W/work.stop" --pidfile "$W/work.pid" > "$W/work.log" 2>&1 &
WORK=$!
for _ in $(seq 1 900); do
    [ -e "$W/work.ready" ] && break
    kill -0 "$WORK" 2>/dev/null || break
    sleep 0.1
done
if [ ! -e "$W/work.ready" ]; then
    echo "inner: the PyTorch workload did not start (see work.log)"
    touch "$W/work.stop"; wait "$WORK"; exit 3
fi
sleep 2   # let utilization samples accumulate

ps -e -o pid= > "$W/ns-pids.txt"
run() {  # NAME ENV... -- CMD...: stdout to $W/NAME.out, stderr to $W/NAME.err
    local name=$1; shift
    local -a envs=()
    while [ "$1" != -- ]; do envs+=("$1"); shift; done
    shift
    timeout "$T" env "${envs[@]}" "$@" > "$W/$name.out" 2> "$W/$name.err"
    echo "inner: $name rc=$?"
}
A=(GPUSLICE_AGENT_SOCKET="$SOCK")
run smi-table "${SLICE_ENV[@]}" "${A[@]}" -- nvidia-smi
run smi-apps "${SLICE_ENV[@]}" "${A[@]}" -- nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits
run smi-gpu "${SLICE_ENV[@]}" "${A[@]}" -- nvidia-smi --query-gpu=memory.total,memory.used --format=csv,noheader,nounits
run pynvml "${SLICE_ENV[@]}" "${A[@]}" -- "$PY" "$HERE/nvml_view_query.py"
run pynvml-noagent "${SLICE_ENV[@]}" -- "$PY" "$HERE/nvml_view_query.py"
run pynvml-bare -u LD_PRELOAD -- "$PY" "$HERE/nvml_view_query.py"
ps -e -o pid= >> "$W/ns-pids.txt"
timeout "$T" "$GS" status --ledger-dir "$(dirname "$LEDGER")" > "$W/status.txt" 2>&1

touch "$W/work.stop"
wait "$WORK"
echo "inner: workload rc=$?"
