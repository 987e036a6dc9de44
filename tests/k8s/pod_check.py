"""Checks run inside an e2e pod (tests/k8s/e2e.sh) while its holder (pod_holder.py) keeps
memory of the pod's slice in use:

    python3 pod_check.py LIMIT_BYTES COMPUTE GPU_UUID

  * torch.cuda.mem_get_info's total is the claim's memory (LIMIT_BYTES);
  * an allocation within the free memory succeeds, one 64 MiB past it raises
    OutOfMemoryError;
  * nvidia-smi shows one GPU whose memory.total is the limit (in MiB), and its process
    list is exactly the holder and this process, under the container's PIDs;
  * the pinned slice config (/run/gpuslice/slice.env) limits the claim's GPU, by UUID,
    and its compute share is COMPUTE ("" for none).

Prints one `name=value` line per check (read by e2e.sh for its table), then
`failures=N`; exits 1 when a check failed.
"""

import os
import subprocess
import sys

import torch

MIB = 1 << 20
limit, compute, uuid = int(sys.argv[1]), sys.argv[2], sys.argv[3]
failures = []


def report(name, ok, value):
    print(f"{name}={value}", flush=True)
    if not ok:
        failures.append(name)
        print(f"FAILED {name}: {value}", file=sys.stderr, flush=True)


def smi(*args):
    out = subprocess.run(
        ["nvidia-smi", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"nvidia-smi {' '.join(args)}: exit {out.returncode}: {out.stderr.strip()}")
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


with open("/tmp/holder.pid") as f:
    holder = int(f.read())

free, total = torch.cuda.mem_get_info()
report("torch_total", total == limit, f"{total // MIB}MiB")

oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
try:
    within = torch.empty(free // 2, dtype=torch.uint8, device="cuda")
    del within
    report("alloc_within", True, f"{free // 2 // MIB}MiB")
except oom as e:
    report("alloc_within", False, f"{free // 2 // MIB}MiB refused: {e}")
torch.cuda.empty_cache()
free, _ = torch.cuda.mem_get_info()
past = free + 64 * MIB
try:
    over = torch.empty(past, dtype=torch.uint8, device="cuda")
    del over
    report("oom_past_limit", False, f"{past // MIB}MiB with {free // MIB}MiB free was granted")
except oom:
    report("oom_past_limit", True, "OutOfMemoryError")
torch.cuda.empty_cache()

# This process keeps a context and some memory while nvidia-smi looks.
mine = torch.empty(64 * MIB, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()

totals = smi("--query-gpu=memory.total", "--format=csv,noheader,nounits")
report("smi_total", totals == [str(limit // MIB)], f"{','.join(totals)}MiB")
pids = sorted(int(p) for p in smi("--query-compute-apps=pid", "--format=csv,noheader") if p.isdigit())
want = sorted([holder, os.getpid()])
shown = "+".join(map(str, pids)) or "none"
report("smi_pids", pids == want, shown if pids == want else f"{shown}, not {'+'.join(map(str, want))}")

env = {}
with open("/run/gpuslice/slice.env") as f:
    for line in f:
        if "=" in line and not line.startswith("#"):
            key, value = line.strip().split("=", 1)
            env[key] = value
limited = [entry.split("=", 1)[0] for entry in env.get("GPUSLICE_MEMORY", "").split(",") if entry]
report("slice_gpu", limited == [uuid], ",".join(limited) or "none")
report("slice_compute", env.get("GPUSLICE_COMPUTE", "") == compute, env.get("GPUSLICE_COMPUTE", "none"))

print(f"failures={len(failures)}")
sys.exit(1 if failures else 0)
