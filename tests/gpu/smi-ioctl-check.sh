#!/usr/bin/env bash
# nvidia-smi's own process table through gpuslice's ioctl rewriting (smi_ioctl.rs), on a
# real driver. On drivers before 535.113 a container's nvidia-smi gets the host PIDs of
# every process on the host; gpuslice cuts that list down to the container's processes,
# with the host agent's mapping. This GPU's driver translates by itself, so the check
# recreates what such a driver shows a container: in the host's PID namespace, where
# this driver too answers with host PIDs of every process, a "container" is a cgroup
# (which the agent uses to scope its answers) holding a PyTorch workload; a second
# workload runs outside it. With GPUSLICE_SMI_IOCTL=host-pids (the mode the agent's
# probe would report on such a driver), nvidia-smi run in the cgroup must list exactly
# its workload, with its memory, in the table and in --query-compute-apps.
#
#   sudo bash tests/gpu/smi-ioctl-check.sh
#
# Inputs: GPUSLICE_BIN_DIR (default .gpu-carry: gpuslice, libgpuslice.so), PYTHON.
# Needs root, cgroup v2 at /sys/fs/cgroup, nvidia-smi, python3 with torch. Prints a table;
# exit status 0 if no check failed.
set -u
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BIN="${GPUSLICE_BIN_DIR:-$REPO/.gpu-carry}"
PY="${PYTHON:-python3}"
W="$(mktemp -d /tmp/gpuslice-smi-ioctl.XXXXXX)"
CG=/sys/fs/cgroup/gpuslice-smi-check
SOCK="$W/agent.sock"
RESULTS=()
record() { RESULTS+=("$(printf '%-22s | %-6s | %s' "$1" "$2" "$3")"); }
cleanup() {
    touch "$W/stop"
    [ -n "${AGENT:-}" ] && kill "$AGENT" 2>/dev/null
    sleep 1
    [ -d "$CG" ] && { for p in $(cat "$CG/cgroup.procs" 2>/dev/null); do echo "$p" > /sys/fs/cgroup/cgroup.procs 2>/dev/null; done; rmdir "$CG" 2>/dev/null; }
}
trap cleanup EXIT
finish() {
    printf '%-22s | %-6s | %s\n' check result detail
    printf '%s\n' "-----------------------+--------+------------------------------------------------------------"
    printf '%s\n' "${RESULTS[@]}"
    local failed; failed=$(printf '%s\n' "${RESULTS[@]}" | grep -c '| FAIL ')
    echo "$(printf '%s\n' "${RESULTS[@]}" | grep -c '| PASS ') passed, $failed failed; logs: $W"
    [ -n "${OUT:-}" ] && cp -r "$W" "$OUT/smi-ioctl-logs" 2>/dev/null
    [ "$failed" -eq 0 ]
    exit
}

mkdir -p "$CG" || { record cgroup FAIL "cannot make $CG"; finish; }
"$BIN/gpuslice" agent --socket "$SOCK" --memory-enforcement off > "$W/agent.out" 2> "$W/agent.log" &
AGENT=$!
for _ in $(seq 1 300); do [ -S "$SOCK" ] && break; sleep 0.1; done
[ -S "$SOCK" ] || { record agent FAIL "$(tail -n 2 "$W/agent.log" | tr '\n' ' ')"; finish; }
record agent INFO "$(grep -m1 -o 'driver mode [a-z-]*' "$W/agent.log")"

work() {  # TAG MIB: a PyTorch process holding MIB MiB until $W/stop exists
    "$PY" -c "
import os, sys, time, torch
x = torch.empty($2 << 20, dtype=torch.uint8, device='cuda'); x.fill_(1)
open('$W/$1.pid', 'w').write(str(os.getpid()))
while not os.path.exists('$W/stop'): time.sleep(0.1)
" > "$W/$1.log" 2>&1
}
# The "container": its workload is in the cgroup from its first instruction.
sh -c "echo \$\$ > $CG/cgroup.procs; exec \"\$0\" \"\$@\"" bash -c "$(declare -f work); W=$W PY=$PY work own 1024" &
work foreign 512 &
for _ in $(seq 1 600); do [ -s "$W/own.pid" ] && [ -s "$W/foreign.pid" ] && break; sleep 0.1; done
OWN=$(cat "$W/own.pid" 2>/dev/null) FOREIGN=$(cat "$W/foreign.pid" 2>/dev/null)
[ -n "$OWN" ] && [ -n "$FOREIGN" ] || { record workloads FAIL "$(tail -n 3 "$W"/*.log | tr '\n' ' ')"; finish; }
record workloads INFO "own pid $OWN (cgroup $(cut -d: -f3 /proc/$OWN/cgroup)), foreign pid $FOREIGN"

in_cgroup() { sh -c "echo \$\$ > $CG/cgroup.procs; exec \"\$@\"" sh "$@"; }
smi_pids() {  # FILE: "pid:MiB" of the table's process rows
    "$PY" - "$1" <<'PYEOF'
import re, sys
rows = []
for line in open(sys.argv[1]):
    m = re.match(r"\|\s+\d+\s+\S+\s+\S+\s+(\d+)\s+\S+\s+.*?\s+(\d+|N/A)(MiB)?\s*\|\s*$", line)
    if m:
        rows.append(f"{m.group(1)}:{m.group(2)}")
print(" ".join(rows))
PYEOF
}
apps() { tr -d ' ' < "$1" | tr '\n' ' ' | sed 's/,/:/g; s/MiB//g'; }

nvidia-smi > "$W/bare-table.txt" 2>&1
BARE="$(smi_pids "$W/bare-table.txt")"
ok=FAIL; case " $BARE " in *" $OWN:"*) case " $BARE " in *" $FOREIGN:"*) ok=PASS ;; esac ;; esac
record control-table "$ok" "without gpuslice: [$BARE] (both workloads, as a driver before 535.113 shows a container)"

ENV=(env LD_PRELOAD="$BIN/libgpuslice.so" GPUSLICE_AGENT_SOCKET="$SOCK" GPUSLICE_SMI_IOCTL=host-pids)
in_cgroup "${ENV[@]}" nvidia-smi > "$W/table.txt" 2>&1
T="$(smi_pids "$W/table.txt")"
ok=FAIL; case "$T" in "$OWN:"[0-9]*) [ "$(echo "$T" | wc -w)" -eq 1 ] && ok=PASS ;; esac
record smi-table "$ok" "[$T] want only $OWN with its memory"
in_cgroup "${ENV[@]}" nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader > "$W/apps.txt" 2>&1
A="$(apps "$W/apps.txt")"
ok=FAIL; case "$A" in "$OWN:"[0-9]*" ") [ "$(echo "$A" | wc -w)" -eq 1 ] && ok=PASS ;; esac
record smi-compute-apps "$ok" "[$A] want only $OWN with its memory"
# Outside the cgroup the same command is the foreign workload's "container".
"${ENV[@]}" sh -c "echo \$\$ > /sys/fs/cgroup/cgroup.procs; exec nvidia-smi" > "$W/root-table.txt" 2>&1
R="$(smi_pids "$W/root-table.txt")"
record root-cgroup-table INFO "from the root cgroup (every host process is in scope): [$R]"
in_cgroup env LD_PRELOAD="$BIN/libgpuslice.so" GPUSLICE_AGENT_SOCKET="$SOCK" \
    GPUSLICE_SMI_IOCTL=off nvidia-smi > "$W/off-table.txt" 2>&1
O="$(smi_pids "$W/off-table.txt")"
ok=FAIL; case " $O " in *" $FOREIGN:"*) ok=PASS ;; esac
record switch-off "$ok" "GPUSLICE_SMI_IOCTL=off: [$O] (the driver's own answer)"
finish
