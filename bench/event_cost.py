#!/usr/bin/env python3
"""What a timing event recorded after each kernel costs the GPU, without gpuslice.

The compute meter (docs/compute.md) times a slice's work with CUDA events. This measures,
with PyTorch alone, how the throughput of short kernels changes when an event is
recorded after every launch, after every Nth, or never, on one and on four streams, with
timing events and with CU_EVENT_DISABLE_TIMING ones. Prints a table of rates relative to
no events.

  python3 bench/event_cost.py [--seconds 2]
"""
import argparse
import time

import torch


def run(streams, mib, every, timing, blocking, seconds):
    xs = [torch.ones(mib << 18, device="cuda") for _ in streams]
    events = [torch.cuda.Event(enable_timing=timing, blocking=blocking) for _ in range(64)]
    k = 0
    n = 0

    def step():
        nonlocal k
        for s, x in zip(streams, xs):
            with torch.cuda.stream(s):
                x.mul_(1.0000001)
                if every and k % every == 0:
                    events[k % 64].record(s)
                k += 1

    for _ in range(200):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    while True:
        for _ in range(50):
            step()
        n += 50
        torch.cuda.synchronize()
        if time.perf_counter() - t0 >= seconds:
            break
    return n * len(streams) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    a = ap.parse_args()
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print(f"{'case':<38} | {'kernels/s':>10} | vs none")
    for n_streams, mib in ((4, 64), (1, 64)):
        streams = [torch.cuda.Stream() for _ in range(n_streams)]
        base = None
        cases = ((0, True, False), (1, True, False), (1, True, True), (1, False, False),
                 (1, False, True), (4, True, True), (16, True, True), (0, True, False))
        for every, timing, blocking in cases:
            rate = run(streams, mib, every, timing, blocking, a.seconds)
            if base is None:
                base = rate
            label = "none" if not every else (f"every {every}" + ("" if timing else " no-timing")
                                              + (" blocking" if blocking else ""))
            print(f"{n_streams} stream(s) {mib:>3} MiB {label:<26} | {rate:10.0f} | {rate / base:6.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
