#!/usr/bin/env python3
"""CuPy allocation probe for gpuslice checks.

Checks runtime.memGetInfo() total, then allocates --chunk-mib arrays until
cupy.cuda.memory.OutOfMemoryError with the default MemoryPool, frees
everything and (with --async-pool) repeats with MemoryAsyncPool
(cudaMallocAsync). Memory is touched with cudaMemset (no kernel compile).

Ends with one line `SUMMARY <ok|FAIL[...]> key=value ...`.
Exit: 0 ok, 1 assertion failed, 2 setup error.
"""

import argparse
import gc
import os
import sys
import time

MiB = 1 << 20
GiB = 1 << 30


def log(*a):
    print("cupy_fill:", *a, file=sys.stderr, flush=True)


def mib(n):
    return int(n // MiB)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--expect-total", type=int)
    ap.add_argument("--expect-preloaded", action="store_true")
    ap.add_argument("--chunk-mib", type=int, default=256)
    ap.add_argument("--min-gib", type=float, default=3.0)
    ap.add_argument("--cap-gib", type=float, default=8.0)
    ap.add_argument("--return-slack-mib", type=float, default=128)
    ap.add_argument("--async-pool", action="store_true")
    ap.add_argument("--pidfile")
    a = ap.parse_args()

    fails = []
    kv = []

    def fail(why):
        log("ASSERTION FAILED:", why)
        fails.append(why)

    def done(code=None):
        head = "ok" if not fails else "FAIL[%s]" % "; ".join(fails)
        print("SUMMARY %s %s" % (head, " ".join("%s=%s" % p for p in kv)), flush=True)
        if code is not None:
            return code
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

    try:
        import cupy
        from cupy.cuda import runtime
    except Exception as e:
        fail("import cupy: %r" % (e,))
        return done(2)
    log("cupy", cupy.__version__)
    OOM = cupy.cuda.memory.OutOfMemoryError

    try:
        runtime.setDevice(0)
        w = cupy.empty((2 * MiB,), dtype=cupy.uint8)  # warm-up before the baseline
        runtime.memset(w.data.ptr, 1, 2 * MiB)
        cupy.cuda.Device(0).synchronize()
        del w
        cupy.get_default_memory_pool().free_all_blocks()
        free0, total = runtime.memGetInfo()
    except Exception as e:
        fail("CUDA init: %s: %s" % (type(e).__name__, str(e)[:160]))
        return done()
    kv += [("total", mib(total)), ("free0", mib(free0))]
    log("memGetInfo free=%d MiB total=%d MiB" % (mib(free0), mib(total)))
    if a.expect_total is not None and total != a.expect_total:
        fail("total %d != %d" % (total, a.expect_total))

    chunk = a.chunk_mib * MiB
    cap = int(a.cap_gib * GiB)
    dev = cupy.cuda.Device(0)

    def fill(label):
        held = []
        got = 0
        exc = None
        while got + chunk <= cap:
            try:
                arr = cupy.empty((chunk,), dtype=cupy.uint8)
                runtime.memset(arr.data.ptr, 1, chunk)
                held.append(arr)
                got += chunk
            except OOM as e:
                exc = e
                break
            except Exception as e:
                exc = e
                break
        try:
            dev.synchronize()
        except Exception as e:
            if exc is None:
                exc = e
        free_s, _ = runtime.memGetInfo()
        name = type(exc).__name__ if exc is not None else "none"
        log("%s: %d MiB, stopped by %s: %s; free %d MiB" % (label, mib(got), name, str(exc)[:200], mib(free_s)))
        kv.append((label, "%dMiB(%s)" % (mib(got), name)))
        if exc is None:
            fail("%s: no OOM up to cap" % label)
        elif not isinstance(exc, OOM):
            fail("%s stopped by %s: %s" % (label, name, str(exc)[:100]))
        if got < a.min_gib * GiB:
            fail("%s %dMiB < %.2fGiB" % (label, mib(got), a.min_gib))
        if got > free0:
            fail("%s %dMiB > free0 %dMiB" % (label, mib(got), mib(free0)))
        exc = None
        del held[:]
        gc.collect()

    def check_returned(label):
        free_r, _ = runtime.memGetInfo()
        log("%s: free after release %d MiB (start %d)" % (label, mib(free_r), mib(free0)))
        if free_r + a.return_slack_mib * MiB < free0:
            fail("%s: free %dMiB not back to %dMiB" % (label, mib(free_r), mib(free0)))

    fill("pool")
    cupy.get_default_memory_pool().free_all_blocks()
    dev.synchronize()
    check_returned("pool")

    if a.async_pool:
        MAP = getattr(cupy.cuda, "MemoryAsyncPool", None)
        if MAP is None:
            kv.append(("async", "n/a"))
            log("MemoryAsyncPool not available in this CuPy")
        else:
            try:
                apool = MAP()
            except Exception as e:
                kv.append(("async", "unsupported"))
                log("MemoryAsyncPool() failed:", e)
                apool = None
            if apool is not None:
                cupy.cuda.set_allocator(apool.malloc)
                try:
                    fill("async")
                finally:
                    try:
                        apool.free_all_blocks()
                        dev.synchronize()
                    except Exception as e:
                        fail("async free_all_blocks: %r" % (e,))
                    cupy.cuda.set_allocator(cupy.get_default_memory_pool().malloc)
                check_returned("async")
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
