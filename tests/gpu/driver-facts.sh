#!/usr/bin/env bash
# Records the facts about the local NVIDIA driver that gpuslice's design depends on:
# which NVML functions nvidia-smi calls, which driver entry points the CUDA runtime
# (through PyTorch) asks cuGetProcAddress for, how the driver shows processes inside a
# PID namespace, and what launches and events cost. It changes nothing on the host.
#
#   bash tests/gpu/driver-facts.sh        # needs GPUSLICE_BIN_DIR (default .gpu-carry)
set -u
export LC_ALL=C PYTHONUNBUFFERED=1
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BIN_DIR="${GPUSLICE_BIN_DIR:-.gpu-carry}"
case "$BIN_DIR" in /*) ;; *) BIN_DIR="$REPO/$BIN_DIR" ;; esac
LIB="$BIN_DIR/libgpuslice.so"
PY="${PYTHON:-python3}"
W=$(mktemp -d)
sec() { printf '\n===== %s\n' "$*"; }

sec "driver"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
nvidia-smi -q | grep -iE 'CUDA Version|Driver Version|Product Name' | head -5
sec "how nvidia-smi reaches NVML"
smi=$(command -v nvidia-smi); echo "$smi"
readelf -d "$smi" 2>/dev/null | grep NEEDED
for args in "" "-q" "--query-compute-apps=pid,used_memory --format=csv" "--query-gpu=utilization.gpu,memory.used,memory.total --format=csv" "pmon -c 1" "-q -d PIDS,UTILIZATION,ACCOUNTING"; do
  echo "-- nvidia-smi $args: NVML symbols bound"
  LD_DEBUG=bindings nvidia-smi $args 2>&1 >/dev/null | grep -o "normal symbol \`nvml[A-Za-z0-9_]*'" | sed "s/normal symbol \`//; s/'//" | sort -u | tr '\n' ' '
  echo
done

sec "entry points PyTorch asks the driver for (gpuslice trace)"
cat > "$W/torch_work.py" <<'PYEOF'
import torch
x = torch.randn(2048, 2048, device="cuda")
y = x @ x
s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
with torch.cuda.stream(s1):
    a = x * 2
with torch.cuda.stream(s2):
    b = x + 1
torch.cuda.synchronize()
g = torch.cuda.CUDAGraph()
s = torch.cuda.Stream()
s.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(s):
    for _ in range(2):
        z = torch.relu(x @ x)
torch.cuda.current_stream().wait_stream(s)
with torch.cuda.graph(g):
    z = torch.relu(x @ x)
g.replay(); torch.cuda.synchronize()
c = torch.empty(1 << 20, device="cuda"); c.fill_(1); d = c.clone(); c.copy_(d)
e = torch.cuda.Event(enable_timing=True); e.record(); e.synchronize()
print("torch ok", torch.__version__, torch.version.cuda)
PYEOF
LD_PRELOAD="$LIB" GPUSLICE_MEMORY=100GiB GPUSLICE_LEDGER="$W/l1" GPUSLICE_LOG=trace "$PY" "$W/torch_work.py" 2> "$W/trace.txt"
grep -o 'cuGetProcAddress [^ ]* version=[0-9]* flags=[0-9]*' "$W/trace.txt" | sort | uniq -c | awk '{print $3, $4, $5}' | tr '\n' ';' | fold -w 2000
echo
echo "-- launch/event/memcpy/stream/graph related:"
grep -o 'cuGetProcAddress [^ ]* version=[0-9]* flags=[0-9]*' "$W/trace.txt" | awk '{print $2, $4}' | sort -u | grep -iE 'Launch|Event|Memcpy|Memset|Stream|Graph|Ctx|Green|Sm' | tr '\n' ';'
echo
echo "-- same with PYTORCH_NO_CUDA_MEMORY_CACHING=0 TORCH per-thread default stream? (CUDA_API_PER_THREAD_DEFAULT_STREAM is compile time; skipped)"

sec "PID namespace view (driver's own, no gpuslice)"
cat > "$W/hold.py" <<'PYEOF'
import torch, time, os, sys
x = torch.empty(int(sys.argv[1]) << 20, dtype=torch.uint8, device="cuda")
y = torch.randn(4096, 4096, device="cuda")
t = time.time()
while time.time() - t < float(sys.argv[2]):
    y = y @ y; y = y / y.norm()
torch.cuda.synchronize()
PYEOF
cat > "$W/nvml_view.py" <<'PYEOF'
import pynvml as n, os, time
n.nvmlInit(); h = n.nvmlDeviceGetHandleByIndex(0)
print("me", os.getpid(), "ns", os.readlink("/proc/self/ns/pid"))
m = n.nvmlDeviceGetMemoryInfo(h); print("mem total/used MiB", m.total >> 20, m.used >> 20)
for p in n.nvmlDeviceGetComputeRunningProcesses(h):
    print("compute pid", p.pid, "mem MiB", (p.usedGpuMemory or 0) >> 20 if p.usedGpuMemory is not None else None)
try:
    for s in n.nvmlDeviceGetProcessUtilization(h, 0):
        print("util pid", s.pid, "sm", s.smUtil, "mem", s.memUtil, "ts", s.timeStamp)
except n.NVMLError as e: print("util error", e)
try:
    print("accounting mode", n.nvmlDeviceGetAccountingMode(h), "pids", n.nvmlDeviceGetAccountingPids(h))
except n.NVMLError as e: print("accounting error", e)
u = n.nvmlDeviceGetUtilizationRates(h); print("gpu util", u.gpu, u.memory)
PYEOF
"$PY" "$W/hold.py" 700 14 & HOST=$!
sleep 5
echo "host process pid $HOST"
unshare --pid --fork --mount-proc bash -c "
  $PY $W/hold.py 1500 9 & sleep 5
  echo '-- inside: ps'; ps -o pid,comm | head
  echo '-- inside: nvidia-smi'; nvidia-smi | tail -8
  echo '-- inside: --query-compute-apps'; nvidia-smi --query-compute-apps=pid,used_memory --format=csv
  echo '-- inside: pynvml'; $PY $W/nvml_view.py
  wait"
echo "-- outside: pynvml"; "$PY" "$W/nvml_view.py"
wait $HOST

sec "launch and event costs (nvcc)"
cat > "$W/costs.cu" <<'CUEOF'
#include <cstdio>
#include <chrono>
#include <cuda.h>
#include <cuda_runtime.h>
__global__ void empty() {}
__global__ void spin(long long ns) { long long t0 = clock64(); while (clock64() - t0 < ns) {} }
static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
int main() {
  cudaFree(0); cudaStream_t s; cudaStreamCreate(&s);
  const int N = 100000;
  for (int i = 0; i < 1000; i++) empty<<<1,1,0,s>>>(); cudaStreamSynchronize(s);
  double t = now(); for (int i = 0; i < N; i++) empty<<<1,1,0,s>>>(); cudaStreamSynchronize(s);
  printf("launch only: %.2f us/launch\n", (now() - t) / N * 1e6);
  cudaEvent_t ev[64]; for (int i = 0; i < 64; i++) cudaEventCreateWithFlags(&ev[i], cudaEventDisableTiming);
  t = now(); for (int i = 0; i < N; i++) { empty<<<1,1,0,s>>>(); cudaEventRecord(ev[i & 63], s); } cudaStreamSynchronize(s);
  printf("launch + record(notiming): %.2f us\n", (now() - t) / N * 1e6);
  cudaEvent_t et[64]; for (int i = 0; i < 64; i++) cudaEventCreate(&et[i]);
  t = now(); for (int i = 0; i < N; i++) { empty<<<1,1,0,s>>>(); cudaEventRecord(et[i & 63], s); } cudaStreamSynchronize(s);
  printf("launch + record(timing): %.2f us\n", (now() - t) / N * 1e6);
  t = now(); int done = 0; for (int i = 0; i < N; i++) { empty<<<1,1,0,s>>>(); cudaEventRecord(et[i & 63], s); if (cudaEventQuery(et[(i + 1) & 63]) == cudaSuccess) done++; } cudaStreamSynchronize(s);
  printf("launch + record + query: %.2f us (done %d)\n", (now() - t) / N * 1e6, done);
  float ms; t = now(); for (int i = 0; i < N; i++) cudaEventElapsedTime(&ms, et[0], et[1]);
  printf("elapsed time query: %.3f us\n", (now() - t) / N * 1e6);
  // Accuracy of event timing for a known kernel.
  int clk; cudaDeviceGetAttribute(&clk, cudaDevAttrClockRate, 0);
  cudaEventRecord(et[0], s); spin<<<1,1,0,s>>>((long long)clk * 10); cudaEventRecord(et[1], s); cudaEventSynchronize(et[1]);
  cudaEventElapsedTime(&ms, et[0], et[1]); printf("10 ms spin measured %.3f ms (clock %d kHz)\n", ms, clk);
  // Busy-gap: events on a busy stream back to back.
  for (int i = 0; i < 8; i++) { spin<<<1,1,0,s>>>((long long)clk); cudaEventRecord(et[2 + i], s); }
  cudaEventSynchronize(et[9]); cudaEventElapsedTime(&ms, et[2], et[9]); printf("7 x 1ms spins between events: %.3f ms\n", ms);
  return 0;
}
CUEOF
NVCC=$(command -v nvcc || ls /usr/local/cuda*/bin/nvcc 2>/dev/null | head -1)
"$NVCC" -O2 -o "$W/costs" "$W/costs.cu" -lcuda 2>&1 | tail -3 && "$W/costs"
echo "-- with gpuslice preloaded (memory slice only)"
LD_PRELOAD="$LIB" GPUSLICE_MEMORY=100GiB GPUSLICE_LEDGER="$W/l2" "$W/costs" | head -2
sec "tools"
for t in crun runc unshare nsenter nvidia-cuda-mps-control; do printf '%s: %s\n' "$t" "$(command -v $t || echo missing)"; done
uname -r; cat /proc/self/cgroup
