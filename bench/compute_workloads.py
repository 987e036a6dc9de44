#!/usr/bin/env python3
"""GPU workloads for the compute-slice benchmark (bench/compute_share.py).

Runs each named workload for a warm-up and then a measured window, and prints one JSON
line per workload: its rate (iterations per second) and the window's wall-clock start
and end, so that the caller can line the window up with utilization samples. With
--timeline it also prints the rate per 250 ms window (for the burst test).

  python3 compute_workloads.py --workloads matmul,elementwise --seconds 2.5

--fake runs CPU stand-ins (no GPU, no torch) to test the benchmark's plumbing.
"""
import argparse
import json
import os
import sys
import time


def wait_for(path):
    while path and not os.path.exists(path):
        time.sleep(0.001)


class Fake:
    """CPU stand-ins with the same interface as the GPU workloads."""

    def __init__(self, name):
        self.name = name

    def step(self):
        time.sleep(0.001)

    def sync(self):
        pass


def gpu_workloads(names):
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    dev = torch.device("cuda")
    made = {}

    class Matmul:
        sync_every = 20

        def __init__(self):
            self.a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
            self.b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)

        def step(self):
            self.c = self.a @ self.b

    class Elementwise:
        sync_every = 20

        def __init__(self):
            self.x = torch.ones(256 << 20, device=dev, dtype=torch.float32)  # 1 GiB

        def step(self):
            self.x.mul_(1.0000001)

    class Graph:
        """A CUDA graph of 200 short kernels, replayed."""

        sync_every = 20

        def __init__(self):
            self.x = torch.ones(1 << 20, device=dev)
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    self._body()
            torch.cuda.current_stream().wait_stream(s)
            self.g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.g):
                self._body()

        def _body(self):
            for _ in range(200):
                self.x.mul_(1.0000001)

        def step(self):
            self.g.replay()

    class Streams:
        """Short kernels launched one by one on four streams."""

        sync_every = 50

        def __init__(self):
            self.streams = [torch.cuda.Stream() for _ in range(4)]
            self.xs = [torch.ones(16 << 20, device=dev) for _ in range(4)]

        def step(self):
            for s, x in zip(self.streams, self.xs):
                with torch.cuda.stream(s):
                    x.mul_(1.0000001)

    class Train:
        """One training step of a small MLP."""

        sync_every = 5

        def __init__(self):
            self.model = torch.nn.Sequential(
                torch.nn.Linear(4096, 4096),
                torch.nn.ReLU(),
                torch.nn.Linear(4096, 4096),
                torch.nn.ReLU(),
                torch.nn.Linear(4096, 10),
            ).to(dev)
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
            self.x = torch.randn(2048, 4096, device=dev)
            self.y = torch.randint(0, 10, (2048,), device=dev)

        def step(self):
            self.opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
            loss.backward()
            self.opt.step()

    class Light:
        """A CPU-bound loop with a tiny kernel and a synchronisation per iteration.

        The CPU part is a 1 ms spin on the clock rather than a fixed amount of Python
        work: the machine's CPU speed varies between processes by up to 1.8x, which hid
        what gpuslice adds. With a fixed spin the rate is 1 / (1 ms + launch + copy +
        whatever the gate costs), so a slowdown is gpuslice's own."""

        sync_every = 1

        def __init__(self):
            self.x = torch.ones(1 << 16, device=dev)

        def step(self):
            end = time.perf_counter() + 0.001
            while time.perf_counter() < end:
                pass
            self.x.add_(1.0)
            self.last = float(self.x[0].item())

    class Tiny:
        """A loop of 20 tiny kernels per iteration and a synchronisation: launch-bound,
        its GPU time share is well below 100% (the benchmark measures it unlimited),
        so a limit above that share must cost it nothing."""

        sync_every = 1

        def __init__(self):
            self.x = torch.ones(1 << 10, device=dev)

        def step(self):
            for _ in range(20):
                self.x.add_(1.0)
            torch.cuda.synchronize()

    table = {
        "tiny": Tiny,
        "matmul": Matmul,
        "elementwise": Elementwise,
        "graph": Graph,
        "streams": Streams,
        "train": Train,
        "light": Light,
    }
    for n in names:
        made[n] = table[n]()
    torch.cuda.synchronize()
    return made, torch.cuda.synchronize


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default="matmul,elementwise,graph,streams,train,light")
    ap.add_argument("--seconds", type=float, default=2.5)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--timeline", action="store_true", help="also print rates per 250 ms")
    ap.add_argument("--start-file", help="wait for this file before measuring")
    ap.add_argument("--fake", action="store_true")
    args = ap.parse_args()
    names = [n for n in args.workloads.split(",") if n]
    if args.fake:
        made, sync = {n: Fake(n) for n in names}, (lambda: None)
    else:
        made, sync = gpu_workloads(names)
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    wait_for(args.start_file)
    for name in names:
        w = made[name]
        every = getattr(w, "sync_every", 10)
        end = time.time() + args.warmup
        while time.time() < end:
            w.step()
        sync()
        t0 = time.time()
        end = t0 + args.seconds
        n = 0
        windows = []
        w_start, w_n = t0, 0
        while True:
            w.step()
            n += 1
            if n % every == 0:
                sync()
                now = time.time()
                if args.timeline and now - w_start >= 0.25:
                    windows.append([round(w_start - t0, 3), (n - w_n) / (now - w_start)])
                    w_start, w_n = now, n
                if now >= end:
                    break
        sync()
        t1 = time.time()
        out = {"workload": name, "rate": n / (t1 - t0), "iterations": n, "start": t0, "end": t1}
        if args.timeline:
            out["timeline"] = windows
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
