#!/usr/bin/env bash
# Container checks on a real GPU: two OCI containers, started by crun (or runc) with the
# edits of a gpuslice CDI spec, share one GPU; each one's nvidia-smi and pynvml tell the
# truth about its own slice and nothing else.
#
# What it does:
#   1. starts `gpuslice agent` and a busy PyTorch process on the host, in no slice;
#   2. `gpuslice cdi generate` two slices on GPU 0 (c1: 4 GiB, c2: 6 GiB);
#   3. writes a bundle per container (tests/gpu/container_bundle.py: the host's /usr and
#      friends as a read-only image, its own PID/mount/IPC/UTS/cgroup namespaces, a
#      tmpfs /dev, a device cgroup that denies all), and applies the CDI device with
#      `gpuslice-cdi-inject`: the GPU's nodes, /etc/ld.so.preload read-only, the
#      interposer, the slice's variables, ledger and agent folders. No LD_PRELOAD;
#   4. runs both containers at once (tests/gpu/container_inner.sh: a PyTorch workload of
#      1 GiB in c1 and 2 GiB in c2, then nvidia-smi table, --query-compute-apps,
#      --query-gpu, pynvml, and an allocation past the slice's free memory), and then a
#      process that clears its slice's ledger to allocate past the limit
#      (tests/gpu/ledger_tamper.py): the agent, which holds the slices of the state
#      folder from the host, must kill it and leave the container's workload alone;
#   5. judges each container with nvml_view_judge.py --container, plus the container
#      facts: how the interposer got in, that the limit held, and the host's kill.
#
#   sudo bash tests/gpu/container-checks.sh
#
# Inputs (environment):
#   GPUSLICE_BIN_DIR  folder with gpuslice, gpuslice-cdi-inject, libgpuslice.so and,
#                     when the host has no runtime, crun/ (crun + lib/) or crun/runc
#                     (default .gpu-carry, relative to the repo root)
#   GSCHK_RUNTIME     the OCI runtime to use (default: the carried crun, crun, the
#                     carried runc, runc)
#   GSCHK_LOGDIR      working folder (default /tmp/gpuslice-container-logs)
#   OUT               if set, the logs are also bundled into $OUT/container-logs.txt
#   PYTHON            python interpreter (default python3)
# Needs root, nvidia-smi, python3 with torch and pynvml, cgroup v2 (or runc on v1).
# Exit status: 0 if no check failed, 1 otherwise. Takes about a minute.

set -u
export LC_ALL=C PYTHONUNBUFFERED=1

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BIN_DIR="${GPUSLICE_BIN_DIR:-.gpu-carry}"
case "$BIN_DIR" in /*) ;; *) BIN_DIR="$REPO/$BIN_DIR" ;; esac
GS="$BIN_DIR/gpuslice"
INJECT="$BIN_DIR/gpuslice-cdi-inject"
LIB="$(readlink -f "$BIN_DIR/libgpuslice.so" 2>/dev/null || echo "$BIN_DIR/libgpuslice.so")"
PY="$(command -v "${PYTHON:-python3}")"
LOGDIR="${GSCHK_LOGDIR:-/tmp/gpuslice-container-logs}"
W="$LOGDIR/work"
AGENT_DIR="$W/agent"
SOCK="$AGENT_DIR/agent.sock"
STATE="$W/state"
CDI="$W/cdi"
GO="$W/shared/go"
START=$SECONDS
NAMES=(c1 c2)
declare -A MIB=([c1]=1024 [c2]=2048) LIMIT=([c1]=4096 [c2]=6144) CPID=()

# shellcheck source-path=SCRIPTDIR source=container_lib.sh
. "$HERE/container_lib.sh"

unset LD_PRELOAD GPUSLICE_MEMORY GPUSLICE_LEDGER GPUSLICE_AGENT_SOCKET CUDA_DEVICE_MEMORY_LIMIT \
      PYTORCH_CUDA_ALLOC_CONF PYTORCH_ALLOC_CONF 2>/dev/null

AGENT_PID="" HOST_PID=""
R_NAME=(); R_RES=(); R_DET=()

say() { printf '%s\n' "$*"; printf '%s\n' "$*" >> "$LOGDIR/stdout.txt"; }
record() { R_NAME+=("$1"); R_RES+=("$2"); R_DET+=("$3"); }

cleanup() {
    local n
    touch "$W/host.stop" 2>/dev/null
    for n in "${NAMES[@]}"; do
        touch "$W/$n/work.stop" 2>/dev/null
        remove_container "gschk-$n" "${CPID[$n]:-}"
        CPID[$n]=""
    done
    [ -n "$HOST_PID" ] && stop_pid "$HOST_PID"
    [ -n "$AGENT_PID" ] && stop_pid "$AGENT_PID"
    HOST_PID="" AGENT_PID=""
}

print_table() {
    local i pass=0 fail=0 skip=0 info=0
    echo
    printf '%-24s | %-6s | %s\n' check result detail
    printf '%s\n' "-------------------------+--------+------------------------------------------------------------"
    for i in "${!R_NAME[@]}"; do
        printf '%-24s | %-6s | %s\n' "${R_NAME[$i]}" "${R_RES[$i]}" "$(printf '%s' "${R_DET[$i]}" | tr '\n' ' ' | cut -c1-230)"
        case "${R_RES[$i]}" in PASS) pass=$((pass + 1)) ;; FAIL) fail=$((fail + 1)) ;; INFO) info=$((info + 1)) ;; *) skip=$((skip + 1)) ;; esac
    done
    echo "runtime: $RUNTIME_NAME; total time $((SECONDS - START))s; logs: $LOGDIR"
    echo "$pass passed, $fail failed, $skip skipped ($info for information only)"
    [ "$fail" -eq 0 ]
}

finish() {
    cleanup
    print_table > "$LOGDIR/summary.txt"
    local rc=$?
    bundle_logs_to container-logs.txt "gpuslice container check logs"
    cat "$LOGDIR/summary.txt"
    exit "$rc"
}

trap 'cleanup' EXIT
trap 'record interrupted FAIL "interrupted"; finish' INT TERM HUP

rm -rf "$LOGDIR"
mkdir -p "$W" "$AGENT_DIR" "$W/shared"
say "== gpuslice container checks (logs: $LOGDIR) =="
say "gpu: $(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 1)"
say "cgroup: $(stat -f -c %T /sys/fs/cgroup 2>/dev/null) kernel $(uname -r)"

# ------------------------------------------------------------------ preconditions
missing=""
[ "$(id -u)" -eq 0 ] || missing="$missing root"
for f in "$GS" "$INJECT"; do [ -x "$f" ] || missing="$missing $f"; done
[ -f "$LIB" ] || missing="$missing $LIB"
command -v nvidia-smi > /dev/null || missing="$missing nvidia-smi"
"$PY" -c 'import torch, pynvml' > /dev/null 2>&1 || missing="$missing python:torch+pynvml"
pick_runtime || missing="$missing crun-or-runc"
if [ -n "$missing" ]; then
    say "missing:$missing"
    record preconditions FAIL "missing:$missing"
    finish
fi
say "runtime: $RUNTIME_NAME"

# ------------------------------------------------------------------ the agent and a host process
"$GS" agent --socket "$SOCK" --state-dir "$STATE" --verbose > "$W/agent.out" 2> "$W/agent.log" &
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

"$PY" "$HERE/nvml_view_work.py" --mib 512 --seconds 200 --ready "$W/host.ready" --stop "$W/host.stop" \
    --pidfile "$W/host.pid" > "$W/host-work.log" 2>&1 &
HOST_PID=$!

# ------------------------------------------------------------------ the CDI spec and the bundles
"$GS" cdi generate --slice "c1=0:${LIMIT[c1]}MiB" --slice "c2=0:${LIMIT[c2]}MiB" \
    --output-dir "$CDI" --state-dir "$STATE" --agent-dir "$AGENT_DIR" --lib "$LIB" \
    --driver-libs on > "$W/cdi-generate.log" 2>&1
rc=$?
record cdi-generate "$([ $rc -eq 0 ] && echo PASS || echo FAIL)" \
    "rc=$rc; devices: $("$INJECT" --spec-dir "$CDI" --list 2>&1 | tr '\n' ' ')"
[ $rc -eq 0 ] || finish

image_env
for n in "${NAMES[@]}"; do
    mkdir -p "$W/$n"
    b="$W/$n/bundle"
    cdi_bundle "$b" "$n" "$CDI" "gpuslice.io/slice=$n" "$W/$n/bundle.log" \
        --cgroup "/gpuslice-check/$n" --bind "$REPO:ro" --bind "$W/$n:rw" --bind "$W/shared:rw" \
        --python "$PY" "${IMAGE_ENV[@]}" \
        -- bash "$HERE/container_inner.sh" "$PY" "$HERE" "$W/$n" "${MIB[$n]}" "${LIMIT[$n]}" "$GO"
    rc=$?
    record "$n-bundle" "$([ $rc -eq 0 ] && echo PASS || echo FAIL)" \
        "rc=$rc $(tail -n 2 "$W/$n/bundle.log" | tr '\n' ' ')"
    [ $rc -eq 0 ] || finish
done

# ------------------------------------------------------------------ both containers at once
for n in "${NAMES[@]}"; do
    start_container "gschk-$n" "$W/$n/bundle" "$W/$n/runtime"
    CPID[$n]=$STARTED_PID
done
for _ in $(seq 1 1500); do
    ready=1
    for n in "${NAMES[@]}"; do
        [ -e "$W/$n/ready" ] || [ -e "$W/$n/done" ] || ready=0
    done
    [ $ready -eq 1 ] && break
    sleep 0.1
done
touch "$GO"
say "containers ready after $((SECONDS - START))s; host workload pid $(cat "$W/host.pid" 2>/dev/null || echo '?')"
for _ in $(seq 1 1500); do
    done_all=1
    for n in "${NAMES[@]}"; do [ -e "$W/$n/done" ] || done_all=0; done
    [ $done_all -eq 1 ] && break
    sleep 0.1
done
# While both still run: the host's own view, for the log.
timeout 20 nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader > "$W/host-apps.txt" 2>&1
for n in "${NAMES[@]}"; do touch "$W/$n/work.stop"; done
for n in "${NAMES[@]}"; do
    for _ in $(seq 1 300); do kill -0 "${CPID[$n]}" 2>/dev/null || break; sleep 0.1; done
    wait "${CPID[$n]}" 2>/dev/null
    say "$n: runtime rc=$? $(head -c 300 "$W/$n/runtime.err" | tr '\n' ' ')"
    CPID[$n]=""
done
touch "$W/host.stop"

# ------------------------------------------------------------------ judge
fact() { sed -n "s/^$2=//p" "$W/$1/facts.txt" 2>/dev/null | head -n 1; }
for n in "${NAMES[@]}"; do
    d="$W/$n"
    cp "$W/agent.log" "$d/agent.log" 2>/dev/null
    cp "$W/host.pid" "$d/host.pid" 2>/dev/null
    pre="$(fact "$n" preload_file)" mnt="$(fact "$n" preload_mount)" wr="$(fact "$n" preload_writable)"
    env_pre="$(fact "$n" ld_preload_env)" maps="$(fact "$n" work_maps_libgpuslice)"
    ok=FAIL
    case "$pre" in *libgpuslice.so*) [ "$wr" = no ] && [ "$env_pre" = unset ] && [ "${maps:-0}" -ge 1 ] && ok=PASS ;; esac
    case ",$mnt," in *,ro,*) ;; *) ok=FAIL ;; esac
    record "$n-preload" "$ok" "ld.so.preload=[$pre] mount=$mnt writable=$wr LD_PRELOAD=$env_pre lib mapped in workload=$maps; $(fact "$n" dev_nodes)"
    oom="$(cat "$d/oom.out" 2>/dev/null)"
    case "$oom" in REFUSED*"total ${LIMIT[$n]} MiB"*) ok=PASS ;; *) ok=FAIL ;; esac
    record "$n-limit" "$ok" "${oom:-no output: $(tail -c 200 "$d/oom.err" 2>/dev/null)}"
    esc="$(cat "$d/escape.out" 2>/dev/null)" pmnt="$(fact "$n" pinned_mount)" pwr="$(fact "$n" pinned_writable)"
    case "$esc" in REFUSED*"total ${LIMIT[$n]} MiB"*) ok=PASS ;; *) ok=FAIL ;; esac
    case ",$pmnt," in *,ro,*) ;; *) ok=FAIL ;; esac
    [ "$pwr" = no ] || ok=FAIL
    record "$n-no-escape" "$ok" "variables dropped and raised: ${esc:-no output: $(tail -c 200 "$d/escape.err" 2>/dev/null)}; slice.env mount=$pmnt writable=$pwr"
    tam="$(head -n 1 "$d/tamper.out" 2>/dev/null)" trc="$(fact "$n" cmd_tamper)" wrc="$(fact "$n" workload_rc)"
    kill_line="$(grep "slice '$n' holds" "$W/agent.log" | grep -m1 'killed it')"
    ok=FAIL
    case "$tam" in ALLOCATED*) [ "$trc" = rc137 ] && [ -n "$kill_line" ] && [ "$wrc" = 0 ] && ok=PASS ;; esac
    record "$n-host-enforce" "$ok" "${tam:-no output: $(tail -c 200 "$d/tamper.err" 2>/dev/null)}; $trc; workload rc=$wrc; agent: $(printf '%s' "$kill_line" | sed 's/.*over its limit/over its limit/' | cut -c1-120)"
    "$PY" "$HERE/nvml_view_judge.py" --work "$d" --held-mib "${MIB[$n]}" --limit-mib "${LIMIT[$n]}" \
        --container > "$d/judge.txt" 2>&1
    got=0
    while read -r tag name res detail; do
        [ "$tag" = CHECK ] || continue
        [ "$name" = agent-probe ] && [ "$n" != c1 ] && continue
        record "$([ "$name" = agent-probe ] && echo "$name" || echo "$n-$name")" "$res" "$detail"
        got=1
    done < "$d/judge.txt"
    [ $got -eq 1 ] || record "$n-judge" FAIL "no verdicts: $(tail -n 3 "$d/judge.txt" | tr '\n' ' ')"
done
# Each container's workload as the host sees it: two separate slices' processes.
record host-view INFO "$(tr '\n' ';' < "$W/host-apps.txt" | cut -c1-200)"
finish
