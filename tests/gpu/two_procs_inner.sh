#!/usr/bin/env bash
# Runs INSIDE one slice (`gpuslice run --memory 4GiB -- bash two_procs_inner.sh ...`).
# Process A holds 1.5 GiB; once A is ready (barrier: A's ready file), process
# B allocates until OOM while A keeps holding, then A is released.
# B must see A's usage in mem_get_info and get no more than what is left.
# Usage: two_procs_inner.sh PYTHON HERE CHECK_DIR LIMIT_BYTES
set -u
PY=$1 HERE=$2 D=$3 LIMIT_BYTES=$4
LIMIT_MIB=$((LIMIT_BYTES / 1048576))
HOLD_MIB=1536
rm -f "$D/a.ready" "$D/a.ready.tmp" "$D/release"

"$PY" "$HERE/torch_fill.py" --tag A --mode hold --hold-gib 1.5 --chunk-mib 256 \
    --expect-total "$LIMIT_BYTES" --expect-preloaded \
    --ready-file "$D/a.ready" --release-file "$D/release" --wait-timeout 60 \
    --pidfile "$D/pids" > "$D/A.log" 2>&1 &
APID=$!

# Wait for A to be ready (or to die: then tell B through the ready file).
for _ in $(seq 1 600); do   # <= 60 s
    [ -e "$D/a.ready" ] && break
    kill -0 "$APID" 2>/dev/null || break
    sleep 0.1
done
if [ ! -e "$D/a.ready" ]; then
    echo "A exited or timed out before it was ready"
    printf '{"ok": false, "error": "A not ready"}\n' > "$D/a.ready"
fi

# B waits for A's ready file before touching CUDA. Its free memory at start
# must already exclude A's 1.5 GiB (+ at least some context): <= limit-1.5GiB-256MiB.
"$PY" "$HERE/torch_fill.py" --tag B --mode fill --wait-file "$D/a.ready" --wait-timeout 60 \
    --expect-total "$LIMIT_BYTES" --expect-preloaded \
    --expect-free-max-mib $((LIMIT_MIB - HOLD_MIB - 256)) \
    --chunk-mib 128 --min-first-gib 0.75 --min-second-gib 0 \
    --snapshot-cmd "${GSCHK_STATUS_CMD:-true}" --snapshot-out "$D/status-at-B-oom.json" \
    --pidfile "$D/pids" > "$D/B.log" 2>&1 &
BPID=$!

wait "$BPID"; brc=$?
touch "$D/release"
wait "$APID"; arc=$?

echo "A rc=$arc: $(grep '^SUMMARY' "$D/A.log" | tail -n1)"
echo "B rc=$brc: $(grep '^SUMMARY' "$D/B.log" | tail -n1)"
b=$(grep '^SUMMARY' "$D/B.log" | tail -n1 | sed 's/^SUMMARY //')
a=$(grep '^SUMMARY' "$D/A.log" | tail -n1 | sed 's/^SUMMARY //' | cut -c1-60)
echo "B: ${b:-no summary (rc=$brc)} | A: ${a:-no summary (rc=$arc)}" > "$D/inner-detail.txt"
[ "$arc" -eq 0 ] && [ "$brc" -eq 0 ]
