# shellcheck shell=bash disable=SC2034  # globals for the sourcing script
# Shell functions shared by the checks that run OCI containers (container-checks.sh and
# the Kubernetes checks through k8s_common.sh). Sourced, not run.
#
# The caller sets: BIN_DIR (the carried binaries), W (its working folder), PY (python),
# HERE (tests/gpu), INJECT (gpuslice-cdi-inject); GSCHK_RUNTIME may pick the runtime.
# pick_runtime sets RUNTIME (an array: the command, with a state folder of its own under
# $W) and RUNTIME_NAME.

RUNTIME=() RUNTIME_NAME=""

stop_pid() {  # PID: TERM, then KILL after 5 s; only processes this script started
    local pid=$1 _
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

pick_runtime() {
    local c
    if [ -n "${GSCHK_RUNTIME:-}" ]; then
        RUNTIME=("$GSCHK_RUNTIME")
    elif [ "$(stat -f -c %T /sys/fs/cgroup 2>/dev/null)" != cgroup2fs ] && [ -x "$BIN_DIR/crun/runc" ]; then
        RUNTIME=("$BIN_DIR/crun/runc")   # crun refuses hybrid cgroup v1/v2 hosts
    elif [ -x "$BIN_DIR/crun/crun" ]; then
        RUNTIME=(env LD_LIBRARY_PATH="$BIN_DIR/crun/lib" "$BIN_DIR/crun/crun")
    elif command -v crun > /dev/null; then
        RUNTIME=(crun)
    elif [ -x "$BIN_DIR/crun/runc" ]; then
        RUNTIME=("$BIN_DIR/crun/runc")
    elif command -v runc > /dev/null; then
        RUNTIME=(runc)
    else
        return 1
    fi
    c="${RUNTIME[${#RUNTIME[@]}-1]}"
    RUNTIME_NAME="$("${RUNTIME[@]}" --version 2>&1 | head -n 1) ($c)"
    # A runtime of its own state folder, so nothing of the host's containers is touched.
    RUNTIME+=(--root "$W/runtime-state")
}

# image_env: IMAGE_ENV, container_bundle.py's --env flags for what an image would set:
# the host's PATH and LD_LIBRARY_PATH (CUDA images list the driver's folder there).
# Neither LD_PRELOAD nor any GPUSLICE_ variable.
image_env() {
    IMAGE_ENV=(--env "PATH=$PATH" --env HOME=/tmp --env PYTHONUNBUFFERED=1)
    [ -n "${LD_LIBRARY_PATH:-}" ] && IMAGE_ENV+=(--env "LD_LIBRARY_PATH=$LD_LIBRARY_PATH")
    return 0
}

# cdi_bundle BUNDLE NAME SPEC_DIR DEVICE LOG [container_bundle.py flags...] -- CMD...
# Writes an OCI bundle (container_bundle.py) and applies the CDI device DEVICE from the
# specs in SPEC_DIR to it (gpuslice-cdi-inject). Output of both goes to LOG.
cdi_bundle() {
    local b=$1 name=$2 spec=$3 device=$4 log=$5
    shift 5
    "$PY" "$HERE/container_bundle.py" --bundle "$b" --name "$name" "$@" > "$log" 2>&1 &&
    "$INJECT" --spec-dir "$spec" --device "$device" < "$b/config.json" \
        > "$b/config.cdi.json" 2>> "$log" &&
    mv "$b/config.cdi.json" "$b/config.json"
}

# start_container ID BUNDLE LOG_PREFIX [TIMEOUT_S]: `runtime run` in the background
# (under `timeout -s KILL` when TIMEOUT_S is given), stdout and stderr to
# LOG_PREFIX.out/.err; its PID in STARTED_PID.
start_container() {
    local id=$1 bundle=$2 log=$3 limit=${4:-}
    local guard=()
    [ -n "$limit" ] && guard=(timeout -s KILL "$limit")
    (cd "$bundle" && exec "${guard[@]}" "${RUNTIME[@]}" run --bundle . "$id") \
        > "$log.out" 2> "$log.err" < /dev/null &
    STARTED_PID=$!
}

# remove_container ID [PID]: kills the container, stops its runtime process PID, and
# deletes the container (nothing when no runtime was picked).
remove_container() {
    [ "${#RUNTIME[@]}" -gt 0 ] || return 0
    "${RUNTIME[@]}" kill "$1" KILL > /dev/null 2>&1
    [ -n "${2:-}" ] && stop_pid "$2"
    "${RUNTIME[@]}" delete -f "$1" > /dev/null 2>&1
}

# bundle_logs_to FILE TITLE: every log file under $LOGDIR (not the bundles' rootfs, the
# slices' state, sockets or marker files), concatenated into FILE, when $OUT is set.
bundle_logs_to() {
    [ -n "${OUT:-}" ] || return 0
    mkdir -p "$OUT" 2>/dev/null || return 0
    {
        echo "$2 from $LOGDIR ($(date -u +%FT%TZ))"
        find "$LOGDIR" -type f ! -name '*.ready' ! -name '*.stop' ! -path '*/rootfs/*' \
             ! -path '*/state/*' ! -name agent.sock | sort | while IFS= read -r f; do
            echo
            echo "=================================================================== ${f#"$LOGDIR"/}"
            head -c 100000 "$f"
        done
    } > "$OUT/$1" 2>/dev/null
}
