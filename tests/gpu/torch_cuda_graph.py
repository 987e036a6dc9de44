#!/usr/bin/env python3
"""PyTorch CUDA-graph workload for gpuslice checks.

1. A 4-layer MLP (Linear 4096x4096 + ReLU) is warmed up on a side stream,
   captured with torch.cuda.graph, replayed --replays times with fresh inputs;
   every 10th replay (and the last) is compared with eager execution.
2. A graph that allocates --too-large-gib inside the capture must fail with
   torch.OutOfMemoryError (anywhere in the exception chain), and CUDA must
   still work afterwards (eager op + replay of the first graph).

Ends with one line `SUMMARY <ok|FAIL[...]> key=value ...`.
"""

import argparse
import gc
import os
import sys
import time

MiB = 1 << 20
GiB = 1 << 30


def log(*a):
    print("torch_cuda_graph:", *a, file=sys.stderr, flush=True)


def chain(e):
    seen = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--replays", type=int, default=100)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--too-large-gib", type=float, default=6.0)
    ap.add_argument("--expect-preloaded", action="store_true")
    ap.add_argument("--pidfile")
    a = ap.parse_args()
    fails = []
    kv = []

    def fail(why):
        log("ASSERTION FAILED:", why)
        fails.append(why)

    def done():
        head = "ok" if not fails else "FAIL[%s]" % "; ".join(fails)
        print("SUMMARY %s %s" % (head, " ".join("%s=%s" % p for p in kv)), flush=True)
        return 0 if not fails else 1

    if a.pidfile:
        try:
            with open(a.pidfile, "a") as f:
                f.write("%d\n" % os.getpid())
        except OSError:
            pass
    try:
        with open("/proc/self/maps") as f:
            pre = "libgpuslice" in f.read()
    except OSError:
        pre = False
    kv.append(("pre", int(pre)))
    if a.expect_preloaded and not pre:
        fail("libgpuslice not loaded")

    import torch

    OOM = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if not torch.cuda.is_available():
        fail("cuda not available")
        return done()
    dev = torch.device("cuda", 0)
    free0, total = torch.cuda.mem_get_info(dev)
    kv.append(("total", total // MiB))
    log("free %d MiB total %d MiB" % (free0 // MiB, total // MiB))

    torch.manual_seed(0)
    layers = []
    for _ in range(4):
        layers += [torch.nn.Linear(4096, 4096), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers).to(dev).eval()
    static_in = torch.randn(a.batch, 4096, device=dev)

    # ------------------------------------------------------------ capture
    g = torch.cuda.CUDAGraph()
    try:
        with torch.no_grad():
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    model(static_in)
            torch.cuda.current_stream().wait_stream(s)
            torch.cuda.synchronize()
            with torch.cuda.graph(g):
                static_out = model(static_in)
    except Exception as e:
        fail("capture: %s: %s" % (type(e).__name__, str(e)[:120]))
        return done()

    max_err = 0.0
    t0 = time.monotonic()
    try:
        with torch.no_grad():
            for i in range(a.replays):
                x = torch.randn(a.batch, 4096, device=dev)
                static_in.copy_(x)
                g.replay()
                if i % 10 == 0 or i == a.replays - 1:
                    ref = model(x)
                    err = (static_out - ref).abs().max().item()
                    max_err = max(max_err, err)
        torch.cuda.synchronize()
    except Exception as e:
        fail("replay: %s: %s" % (type(e).__name__, str(e)[:120]))
        return done()
    kv.append(("replays", a.replays))
    kv.append(("maxerr", "%.2e" % max_err))
    log("%d replays in %.2fs, max |graph-eager| = %g" % (a.replays, time.monotonic() - t0, max_err))
    if not max_err <= 1e-3:
        fail("graph output differs from eager by %g" % max_err)

    # ------------------------------------------------------------ too large
    big = int(a.too_large_gib * GiB)
    g2 = torch.cuda.CUDAGraph()
    caught = None
    try:
        with torch.cuda.graph(g2):
            t = torch.empty(big, dtype=torch.uint8, device=dev)
            t.fill_(1)
    except Exception as e:
        caught = e
    if caught is None:
        kv.append(("big", "NO-ERROR"))
        fail("capturing a %.1fGiB allocation did not fail" % a.too_large_gib)
    else:
        names = [type(x).__name__ for x in chain(caught)]
        oom = any(isinstance(x, OOM) for x in chain(caught))
        log("too-large capture raised: %s" % " <- ".join("%s(%s)" % (type(x).__name__, str(x)[:150]) for x in chain(caught)))
        kv.append(("big", "OOM" if oom else "/".join(names)))
        if not oom:
            fail("too-large capture raised %s, not OutOfMemoryError" % "/".join(names))
    caught = None
    t = None
    g2 = None
    gc.collect()

    # ------------------------------------------------------------ still usable?
    try:
        torch.cuda.synchronize()
        with torch.no_grad():
            x = torch.randn(a.batch, 4096, device=dev)
            static_in.copy_(x)
            g.replay()
            ref = model(x)
            err = (static_out - ref).abs().max().item()
        torch.cuda.synchronize()
        post_ok = err <= 1e-3
        kv.append(("post", "ok" if post_ok else "BAD"))
        if not post_ok:
            fail("after failed capture, replay differs by %g" % err)
    except Exception as e:
        kv.append(("post", "ERR"))
        fail("CUDA unusable after failed capture: %s: %s" % (type(e).__name__, str(e)[:120]))
    try:
        kv.append(("max_alloc", "%dMiB" % (torch.cuda.max_memory_allocated(dev) // MiB)))
        kv.append(("max_reserved", "%dMiB" % (torch.cuda.max_memory_reserved(dev) // MiB)))
    except Exception:
        pass
    return done()


if __name__ == "__main__":
    try:
        rc = main()
    except BaseException as e:
        import traceback

        traceback.print_exc()
        print("SUMMARY FAIL[uncaught %s: %s]" % (type(e).__name__, str(e)[:160]), flush=True)
        rc = 2
    sys.exit(rc)
