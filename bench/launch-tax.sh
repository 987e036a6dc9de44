#!/usr/bin/env bash
# What a compute slice costs a launch, on a GPU, in one run (docs/compute.md, "What
# gating costs a launch"; docs/benchmarks.md keeps the numbers):
#
#   1. in-process: bench/hook_cost.c, each hook against the real driver entry point it
#      wraps, called alternately in one process, under a memory slice and under a
#      compute slice of 99% (a limit that does not bind);
#   2. whole process: bench/overhead.cu, 200,000 empty-kernel launches through the
#      runtime on one stream, native / --compute 99 / --memory 70GiB alternated, ROUNDS
#      rounds;
#   3. a compute slice that binds: the same launch loop under --compute 25, launches per
#      second and the interposer's own report of full checks and timing events.
#
#   bash bench/launch-tax.sh            # GPUSLICE_BIN_DIR (default .gpu-carry) holds
#                                       # gpuslice and libgpuslice.so
#   BEFORE_LIB=old/libgpuslice.so bash bench/launch-tax.sh
#                                       # and an earlier interposer, measured side by
#                                       # side in the same run ("before")
# Every GPU command runs under `timeout -s KILL`.
set -u
export LC_ALL=C
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BIN_DIR="${GPUSLICE_BIN_DIR:-.gpu-carry}"
case "$BIN_DIR" in /*) ;; *) BIN_DIR="$REPO/$BIN_DIR" ;; esac
GS="$BIN_DIR/gpuslice"
ROUNDS="${ROUNDS:-5}"
HOOK_ROUNDS="${HOOK_ROUNDS:-150}"
T=/tmp/launch-tax
mkdir -p "$T"
CUDA_INC=/usr/local/cuda/include
[ -d "$CUDA_INC" ] || CUDA_INC="$(dirname "$(command -v nvcc)")/../include"

gcc -O2 -o "$T/hook_cost" "$REPO/bench/hook_cost.c" -I"$CUDA_INC" -lcuda -ldl || { echo "hook_cost: build failed"; exit 1; }
nvcc -O2 -arch=native -o "$T/overhead" "$REPO/bench/overhead.cu" 2>/dev/null \
  || nvcc -O2 -o "$T/overhead" "$REPO/bench/overhead.cu" || { echo "overhead: build failed"; exit 1; }

BEFORE_LIB="${BEFORE_LIB:-}"
[ -z "$BEFORE_LIB" ] || [ -f "$BEFORE_LIB" ] || { echo "BEFORE_LIB=$BEFORE_LIB: no such file"; exit 1; }
echo "== in-process hook cost (ns per call), memory slice"
timeout -s KILL 120 "$GS" run --memory 70GiB -- "$T/hook_cost" "$HOOK_ROUNDS"
if [ -n "$BEFORE_LIB" ]; then
  echo "== in-process hook cost (ns per call), compute slice 99% (does not bind), BEFORE: $BEFORE_LIB"
  timeout -s KILL 120 "$GS" run --lib "$BEFORE_LIB" --memory 70GiB --compute 99 -- "$T/hook_cost" "$HOOK_ROUNDS"
fi
echo "== in-process hook cost (ns per call), compute slice 99% (does not bind)"
timeout -s KILL 120 "$GS" run --memory 70GiB --compute 99 -- "$T/hook_cost" "$HOOK_ROUNDS"

rate() { sed -n 's/.*launches_per_s=\([0-9.]*\).*/\1/p' | head -1; }
declare -a NAT CMP MEM OLD
for i in $(seq 1 "$ROUNDS"); do
  NAT+=("$(timeout -s KILL 60 "$T/overhead" launch 200000 2>/dev/null | rate)")
  CMP+=("$(timeout -s KILL 60 "$GS" run --memory 70GiB --compute 99 -- "$T/overhead" launch 200000 2>/dev/null | rate)")
  MEM+=("$(timeout -s KILL 60 "$GS" run --memory 70GiB -- "$T/overhead" launch 200000 2>/dev/null | rate)")
  if [ -n "$BEFORE_LIB" ]; then
    OLD+=("$(timeout -s KILL 60 "$GS" run --lib "$BEFORE_LIB" --memory 70GiB --compute 99 -- "$T/overhead" launch 200000 2>/dev/null | rate)")
  fi
done
echo "== whole process: 200,000 empty launches, one stream, us per launch (rounds alternated)"
python3 - "${NAT[*]}" "${CMP[*]}" "${MEM[*]}" "${OLD[*]:-}" <<'EOF'
import statistics, sys
rows = [("native", sys.argv[1]), ("--compute 99", sys.argv[2]), ("--memory 70GiB", sys.argv[3])]
if sys.argv[4].strip():
    rows.append(("--compute 99 BEFORE", sys.argv[4]))
base = None
for name, vals in rows:
    rates = [float(v) for v in vals.split() if v]
    if not rates:
        print(f"{name:16} n/a"); continue
    us = [1e6 / r for r in rates]
    med = statistics.median(us)
    base = base or med
    print(f"{name:16} " + ", ".join(f"{u:.2f}" for u in us) + f"   median {med:.2f} us  ({(med / base - 1) * 100:+.1f}% vs native)")
EOF

echo "== a limit that binds: the same loop under --compute 25 (GPUSLICE_LOG=info reports)"
cpu() { sed -n 's/.*cpu_us_per_launch=\([0-9.]*\).*/\1/p' | head -1; }
echo "launching thread's CPU per launch (us), synchronisations apart: native $(timeout -s KILL 60 "$T/overhead" launch 200000 2>/dev/null | cpu), --compute 25 $(timeout -s KILL 60 "$GS" run --memory 70GiB --compute 25 -- "$T/overhead" launch 200000 2>/dev/null | cpu)"
GPUSLICE_LOG=info timeout -s KILL 60 "$GS" run --memory 70GiB --compute 25 -- "$T/overhead" launch 200000 2>"$T/bind.err" | rate | sed 's/^/launches per second: /'
grep "the slice used" "$T/bind.err" | tail -3
if [ -n "$BEFORE_LIB" ]; then
  echo "== the same, BEFORE"
  GPUSLICE_LOG=info timeout -s KILL 60 "$GS" run --lib "$BEFORE_LIB" --memory 70GiB --compute 25 -- "$T/overhead" launch 200000 2>"$T/bind-before.err" | rate | sed 's/^/launches per second: /'
  grep "the slice used" "$T/bind-before.err" | tail -3
fi
