#!/usr/bin/env bash
# The process of one container of container-checks.sh (PID 1 of a container started by
# crun or runc with a gpuslice CDI device). It checks how the slice reached it
# (/etc/ld.so.preload mounted read-only, no LD_PRELOAD), starts a PyTorch workload that
# holds MIB MiB, waits until the other container's workload runs too (GO file), then runs
# the real nvidia-smi and pynvml, tries to allocate past the slice's limit, and cheats
# the slice's ledger to get past it (which the agent on the host must punish).
# Nothing here sets LD_PRELOAD or any GPUSLICE_ variable: all of it comes from the spec.
#
#   container_inner.sh PYTHON TESTS_DIR WORK_DIR MIB LIMIT_MIB GO_FILE
set -u
PY=$1 HERE=$2 W=$3 MIB=$4 LIMIT=$5 GO=$6
T=${GSCHK_CMD_TIMEOUT:-30}
export PYTHONUNBUFFERED=1

note() { printf '%s\n' "$*" >> "$W/facts.txt"; }
: > "$W/facts.txt"
note "pid1=$$ pidns=$(readlink /proc/self/ns/pid) cgroup=$(tr '\n' ' ' < /proc/self/cgroup)"
note "preload_file=$(tr '\n' ' ' < /etc/ld.so.preload 2>/dev/null || echo missing)"
note "preload_mount=$(awk '$5 == "/etc/ld.so.preload" {print $6}' /proc/self/mountinfo | head -n 1)"
if (echo "# tampered" >> /etc/ld.so.preload) 2>/dev/null; then note "preload_writable=yes"; else note "preload_writable=no"; fi
note "ld_preload_env=${LD_PRELOAD:-unset}"
note "pinned_mount=$(awk '$5 == "/run/gpuslice/slice.env" {print $6}' /proc/self/mountinfo | head -n 1)"
if (echo "GPUSLICE_MEMORY=1000GiB" >> /run/gpuslice/slice.env) 2>/dev/null; then note "pinned_writable=yes"; else note "pinned_writable=no"; fi
note "slice_env=$(env | grep -E '^GPUSLICE_' | sort | tr '\n' ' ')"
note "dev_nodes=$(ls /dev | grep -E '^nvidia' | tr '\n' ' ')"

"$PY" "$HERE/nvml_view_work.py" --mib "$MIB" --seconds 200 --ready "$W/work.ready" \
    --stop "$W/work.stop" --pidfile "$W/work.pid" > "$W/work.log" 2>&1 &
WORK=$!
for _ in $(seq 1 1200); do
    [ -e "$W/work.ready" ] && break
    kill -0 "$WORK" 2>/dev/null || break
    sleep 0.1
done
if [ ! -e "$W/work.ready" ]; then
    note "workload did not start"
    touch "$W/done"
    exit 3
fi
note "work_maps_libgpuslice=$(grep -c libgpuslice "/proc/$WORK/maps")"
touch "$W/ready"
for _ in $(seq 1 1200); do [ -e "$GO" ] && break; sleep 0.1; done
sleep 2   # let utilization samples accumulate

ps -e -o pid= > "$W/ns-pids.txt"
run() {  # NAME CMD...: stdout to $W/NAME.out, stderr to $W/NAME.err
    local name=$1; shift
    timeout "$T" "$@" > "$W/$name.out" 2> "$W/$name.err"
    note "cmd_$name=rc$?"
}
run smi-table nvidia-smi
run smi-apps nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits
run smi-gpu nvidia-smi --query-gpu=memory.total,memory.used --format=csv,noheader,nounits
run pynvml "$PY" "$HERE/nvml_view_query.py"
# Past the limit: the slice's free memory plus 256 MiB must be refused.
OOM="
import torch
free, total = torch.cuda.mem_get_info()
want = free + (256 << 20)
try:
    x = torch.empty(want, dtype=torch.uint8, device='cuda')
    print('ALLOCATED', want >> 20, 'MiB of', total >> 20)
except torch.OutOfMemoryError:
    print('REFUSED', want >> 20, 'MiB; total', total >> 20, 'MiB')
"
run oom "$PY" -c "$OOM"
# The same from a process that drops and raises its slice's variables: the pinned
# configuration (/run/gpuslice/slice.env, read-only) still holds it.
run escape env -u GPUSLICE_MEMORY -u GPUSLICE_LEDGER GPUSLICE_MEMORY=1000GiB \
    CUDA_DEVICE_MEMORY_LIMIT=1000g GPUSLICE_LEDGER=/tmp/escape.ledger "$PY" -c "$OOM"
ps -e -o pid= >> "$W/ns-pids.txt"
# A process that clears the slice's ledger (its container can write it) and allocates
# past the limit: the interposer is fooled, the agent on the host must kill it (rc 137).
run tamper "$PY" "$HERE/ledger_tamper.py" --chunk-mib $(( LIMIT - MIB - 1536 )) --wait 20
touch "$W/done"
wait "$WORK"
note "workload_rc=$?"
