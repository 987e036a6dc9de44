"""The workload of each e2e pod (tests/k8s/e2e.sh): holds HOLD_MIB MiB of the pod's GPU
slice with a live CUDA context for HOLD_SECONDS, so that the other pod's nvidia-smi has a
process to (not) see, and writes its PID to /tmp/holder.pid once the memory is in use
(the pod's readiness probe waits for that file)."""

import os
import time

import torch

mib = int(os.environ.get("HOLD_MIB", "512"))
seconds = int(os.environ.get("HOLD_SECONDS", "1800"))

held = torch.empty(mib << 20, dtype=torch.uint8, device="cuda")
held.fill_(1)
torch.cuda.synchronize()

with open("/tmp/holder.pid.tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename("/tmp/holder.pid.tmp", "/tmp/holder.pid")
print(f"holding {mib} MiB on {torch.cuda.get_device_name(0)} as PID {os.getpid()}", flush=True)
time.sleep(seconds)
