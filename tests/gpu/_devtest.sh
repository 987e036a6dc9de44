#!/usr/bin/env bash
# TEMPORARY (helper validation on a GPU without the real interposer). Not part of the deliverable.
set -u
O=/tmp/o; mkdir -p "$O/native"
mkdir -p /tmp/stub
cat > /tmp/stub/gpuslice <<'EOF'
#!/usr/bin/env bash
case "${1:-}" in
  --version) echo "gpuslice-stub 0"; exit 0;;
  status) echo '{"slices":[{"name":"x","devices":[{"limit_bytes":1,"used_bytes":0}],"processes":[]}]}'; exit 0;;
  run) shift; while [ $# -gt 0 ] && [ "$1" != "--" ]; do shift; done; shift
       export LD_PRELOAD="$(dirname "$0")/libgpuslice.so"; exec "$@";;
esac
exit 2
EOF
chmod +x /tmp/stub/gpuslice
echo 'void gpuslice_stub(void){}' > /tmp/stub/s.c
(gcc -shared -fPIC -o /tmp/stub/libgpuslice.so /tmp/stub/s.c || cc -shared -fPIC -o /tmp/stub/libgpuslice.so /tmp/stub/s.c) 2>&1 | tail -2
ls -la /tmp/stub
export PATH=$PATH:/usr/local/cuda/bin
if [ "${1:-harness}" = harness ]; then
  GPUSLICE_BIN_DIR=/tmp/stub GSCHK_TIMEOUT=60 bash tests/gpu/memory-checks.sh > "$O/harness.txt" 2>&1
  echo "harness rc=$?"; head -n 20 "$O/harness.txt" | cut -c1-200; tail -n 16 "$O/harness.txt" | cut -c1-260
  cat /etc/ld.so.preload 2>&1 | head -2
  N="$O/native"
  t() { local name=$1; shift; local t0=$SECONDS; timeout 150 "$@" > "$N/$name.log" 2>&1; echo "## $name rc=$? $((SECONDS-t0))s: $(grep -a '^SUMMARY\|ALL_OK\|SOME_FAILED' "$N/$name.log" | tail -n1 | cut -c1-400)"; }
  t torch_def python3 tests/gpu/torch_fill.py --cap-gib 200 --min-first-gib 100 --min-second-gib 100 --matmul --expect-backend native
  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True t torch_exp python3 tests/gpu/torch_fill.py --cap-gib 200 --min-first-gib 100 --min-second-gib 100 --expect-expandable
  PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync t torch_async python3 tests/gpu/torch_fill.py --cap-gib 200 --min-first-gib 100 --min-second-gib 100 --expect-backend cudaMallocAsync
  t cupy python3 tests/gpu/cupy_fill.py --cap-gib 200 --min-gib 100 --async-pool
  t graph python3 tests/gpu/torch_cuda_graph.py --too-large-gib 200
  t dp_full /tmp/driver_paths --cap-mib 200000 --only entrypoints,cuMemAlloc,cuMemAllocPitch,cuMemAllocAsync,cuMemAllocFromPoolAsync,cuMemCreate,cuArrayCreate,cuArray3DCreate,cuMipmappedArrayCreate,cuGraphAddMemAllocNode,graph_oversize
  grep -a '^path=' "$N/dp_full.log" | grep -v ' ok=1' | cut -c1-300
  t dp_default /tmp/driver_paths
  grep -a '^path=' "$N/dp_default.log" | grep -v 'no_failure_before_cap' | cut -c1-250 | head -40
fi
if [ "${1:-}" = bench ] || [ "${2:-}" = bench ]; then
  GPUSLICE_BIN_DIR=/tmp/stub bash bench/run-overhead.sh > "$O/bench.txt" 2>&1; echo "bench rc=$?"; tail -n 30 "$O/bench.txt"
fi
