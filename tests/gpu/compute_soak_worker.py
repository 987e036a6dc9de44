#!/usr/bin/env python3
"""One process of a compute-soak slice (tests/gpu/compute_soak.py).

Builds its workload, prints {"ready": pid}, waits for the start file, runs for
--seconds, synchronises, and prints {"end": <wall time>, "rate": ...} as the very last
thing before it returns: the harness measures from that line to the process's exit.

Workloads: matmul (8192² bf16), elementwise (1 GiB multiply), graph (a CUDA graph of
100 short kernels), short (a small loop: the process lives for about --seconds).
"""
import argparse
import json
import os
import sys
import time


def make_step(workload, torch):
    """The workload's step and how many steps run between synchronisations."""
    dev = torch.device("cuda")
    if workload == "matmul":
        x = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        y = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)

        def step():
            return x @ y

        every = 10
    elif workload == "elementwise":
        x = torch.ones(256 << 20, device=dev)

        def step():
            x.mul_(1.0000001)

        every = 10
    elif workload == "graph":
        x = torch.ones(1 << 20, device=dev)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(100):
                x.mul_(1.0000001)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(100):
                x.mul_(1.0000001)

        def step():
            g.replay()

        every = 10
    elif workload == "short":
        x = torch.ones(1 << 22, device=dev)

        def step():
            x.add_(1.0)

        every = 50
    else:
        sys.exit(f"unknown workload {workload}")
    return step, every


def timed_run(step, every, seconds, torch):
    """Runs `step` for `seconds` (checked every `every` steps, after a synchronise);
    returns (steps, start, end) in wall time."""
    t0 = time.time()
    n = 0
    while True:
        step()
        n += 1
        if n % every == 0:
            torch.cuda.synchronize()
            if time.time() - t0 >= seconds:
                break
    torch.cuda.synchronize()
    return n, t0, time.time()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", required=True)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--start-file")
    a = ap.parse_args()
    import torch

    step, every = make_step(a.workload, torch)
    torch.cuda.synchronize()
    print(json.dumps({"ready": os.getpid()}), flush=True)
    while a.start_file and not os.path.exists(a.start_file):
        time.sleep(0.002)
    n, t0, t1 = timed_run(step, every, a.seconds, torch)
    print(json.dumps({"end": t1, "rate": n / (t1 - t0), "iterations": n}), flush=True)


if __name__ == "__main__":
    main()
