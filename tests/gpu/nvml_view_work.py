#!/usr/bin/env python3
"""A busy PyTorch process for the NVML view checks: holds --mib MiB of GPU memory and
runs matrix products until --stop exists or --seconds pass, so that it shows up in
NVML's process list and utilization samples. Writes its PID (as its own namespace sees
it) to --pidfile and touches --ready once the GPU is busy."""

import argparse
import os
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--ready", required=True)
    ap.add_argument("--stop", required=True)
    ap.add_argument("--pidfile", required=True)
    a = ap.parse_args()

    import torch

    with open(a.pidfile, "w") as f:
        f.write(f"{os.getpid()}\n")
    hold = torch.empty(a.mib << 20, dtype=torch.uint8, device="cuda")
    x = torch.randn(2048, 2048, device="cuda")
    for _ in range(20):
        x = x @ x
        x = x / x.norm()
    torch.cuda.synchronize()
    open(a.ready, "w").close()
    print(f"WORK pid={os.getpid()} held_mib={a.mib} device={torch.cuda.get_device_name(0)}", flush=True)
    start = time.time()
    while not os.path.exists(a.stop) and time.time() - start < a.seconds:
        for _ in range(50):
            x = x @ x
            x = x / x.norm()
        torch.cuda.synchronize()
    del hold
    print("WORK done", flush=True)


if __name__ == "__main__":
    main()
