#!/usr/bin/env bash
# Runs INSIDE one slice (`gpuslice run --memory 4GiB --name NAME -- bash sigkill_inner.sh ...`).
# A holds ~3 GiB and is killed with SIGKILL; B must then get >= 3 GiB in the
# same slice (A's charge reclaimed), and `gpuslice status --json` taken after
# B exited must show no process still charged.
# Usage: sigkill_inner.sh PYTHON HERE CHECK_DIR LIMIT_BYTES GPUSLICE_BIN SLICE_NAME
set -u
PY=$1 HERE=$2 D=$3 LIMIT_BYTES=$4 GS=$5 NAME=$6
rm -f "$D/a.ready" "$D/a.ready.tmp"
fail=0
note=""

"$PY" "$HERE/torch_fill.py" --tag A --mode hold --hold-gib 3 --chunk-mib 256 \
    --expect-total "$LIMIT_BYTES" --expect-preloaded \
    --ready-file "$D/a.ready" --wait-timeout 60 --pidfile "$D/pids" > "$D/A.log" 2>&1 &
APID=$!

for _ in $(seq 1 600); do   # <= 60 s
    [ -e "$D/a.ready" ] && break
    kill -0 "$APID" 2>/dev/null || break
    sleep 0.1
done
if [ ! -e "$D/a.ready" ]; then
    echo "A never became ready" ; fail=1; note="A not ready"
elif ! grep -q '"ok": true' "$D/a.ready"; then
    echo "A could not hold 3 GiB: $(cat "$D/a.ready")"; fail=1; note="A hold failed"
fi
kill -9 "$APID" 2>/dev/null
wait "$APID"; arc=$?
echo "A (pid $APID) killed, wait rc=$arc (137 expected)"
[ "$arc" -eq 137 ] || { fail=1; note="$note A rc=$arc"; }

# Let the driver tear A's context down so the host-side monitor does not see
# A and B at once (the slice's own accounting must not need this).
"$PY" "$HERE/gpu_wait_idle.py" --max-mib 64 --timeout 20 --ignore-file "${GSCHK_FOREIGN_PIDS:-/nonexistent}"

"$PY" "$HERE/torch_fill.py" --tag B --mode fill --expect-total "$LIMIT_BYTES" --expect-preloaded \
    --chunk-mib 256 --min-first-gib 3.0 --min-second-gib 0 --pidfile "$D/pids" > "$D/B.log" 2>&1 &
BPID=$!
wait "$BPID"; brc=$?
echo "B (pid $BPID) rc=$brc: $(grep '^SUMMARY' "$D/B.log" | tail -n1)"
[ "$brc" -eq 0 ] || fail=1

timeout 20 env -u LD_PRELOAD "$GS" status --json > "$D/status-after-B.json" 2> "$D/status-after-B.err"
src=$?
echo "gpuslice status --json rc=$src"
st=$(timeout 20 "$PY" "$HERE/status_check.py" "$D/status-after-B.json" --slice-name "$NAME" \
        --dead-pids "$APID,$BPID" 2> "$D/status-check.err")
stc=$?
echo "$st"
if [ "$src" -ne 0 ] || [ "$stc" -ne 0 ]; then fail=1; fi

b=$(grep '^SUMMARY' "$D/B.log" | tail -n1 | sed 's/^SUMMARY //')
echo "${note:+$note | }B: ${b:-no summary (rc=$brc)} | ${st:-no status (rc=$src)}" > "$D/inner-detail.txt"
exit "$fail"
