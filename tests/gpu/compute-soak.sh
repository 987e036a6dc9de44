#!/usr/bin/env bash
# Soak of co-located compute slices on a real GPU (see compute_soak.py): at least 50
# rounds of 2-3 slices with mixed workloads and kills at random instants. Counts hangs
# (0 allowed), the worst time from a program's end to its process's exit (2 s allowed),
# and the shares.
#
#   GPUSLICE_BIN_DIR=.gpu-carry bash tests/gpu/compute-soak.sh
#
# SOAK_RUNS (default 50), SOAK_BUDGET_S (default 420: no round starts after it),
# SOAK_LOGDIR (default /tmp/gpuslice-soak), SOAK_SEED. The whole soak runs under
# `timeout -s KILL`: a process stuck in the driver ignores everything else.
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BIN_DIR="${GPUSLICE_BIN_DIR:-.gpu-carry}"
case "$BIN_DIR" in /*) ;; *) BIN_DIR="$REPO/$BIN_DIR" ;; esac
LOGDIR="${SOAK_LOGDIR:-/tmp/gpuslice-soak}"
BUDGET="${SOAK_BUDGET_S:-420}"
mkdir -p "$LOGDIR"
timeout -s KILL "$((BUDGET + 150))" "${PYTHON:-python3}" -u "$HERE/compute_soak.py" \
    --runs "${SOAK_RUNS:-50}" --budget-s "$BUDGET" --bin-dir "$BIN_DIR" --logdir "$LOGDIR" \
    ${SOAK_SEED:+--seed "$SOAK_SEED"}
rc=$?
if [ -n "${OUT:-}" ]; then
    tar -czf "$OUT/compute-soak-logs.tar.gz" -C "$LOGDIR" . 2>/dev/null || true
fi
exit $rc
