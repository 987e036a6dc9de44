"""Host-side view of per-process GPU memory, from NVML and from nvidia-smi.

Shared by gpu_monitor.py and gpu_wait_idle.py. Nothing here creates a CUDA
context, so these helpers never show up as GPU processes themselves.
"""

import subprocess

MiB = 1 << 20

SMI_QUERY = [
    "nvidia-smi",
    "--query-compute-apps=pid,used_memory",
    "--format=csv,noheader,nounits",
]


class Nvml:
    """Samples nvmlDeviceGetComputeRunningProcesses on every device."""

    def __init__(self):
        import pynvml  # nvidia-ml-py

        self.nv = pynvml
        pynvml.nvmlInit()
        n = pynvml.nvmlDeviceGetCount()
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]

    def procs(self):
        """{pid: used_bytes} summed over devices; used is 0 where NVML has no value."""
        out = {}
        for h in self.handles:
            for p in self.nv.nvmlDeviceGetComputeRunningProcesses(h):
                used = p.usedGpuMemory if p.usedGpuMemory is not None else 0
                out[int(p.pid)] = out.get(int(p.pid), 0) + int(used)
        return out

    def device_used(self):
        """Sum of nvmlDeviceGetMemoryInfo(h).used over devices (bytes)."""
        total = 0
        for h in self.handles:
            total += int(self.nv.nvmlDeviceGetMemoryInfo(h).used)
        return total

    def close(self):
        try:
            self.nv.nvmlShutdown()
        except Exception:
            pass


def smi_procs(timeout=10.0):
    """{pid: used_bytes} from nvidia-smi; raises on failure."""
    r = subprocess.run(SMI_QUERY, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError("nvidia-smi rc=%d: %s" % (r.returncode, (r.stderr or r.stdout).strip()[:200]))
    out = {}
    for line in r.stdout.splitlines():
        line = line.strip()
        if not line or "No running" in line:
            continue
        parts = [x.strip() for x in line.split(",")]
        if len(parts) < 2:
            continue
        try:
            pid = int(parts[0])
        except ValueError:
            continue
        try:
            used = int(float(parts[1])) * MiB  # nounits: MiB
        except ValueError:  # "[N/A]"
            used = 0
        out[pid] = out.get(pid, 0) + used
    return out
