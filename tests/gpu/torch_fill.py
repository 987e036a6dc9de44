#!/usr/bin/env python3
"""PyTorch allocation probe for gpuslice checks.

Modes
  fill (default): check mem_get_info, allocate --chunk-mib tensors until
      torch.OutOfMemoryError, free + empty_cache, optionally fill again and run
      a matmul. Asserts what the flags ask for.
  hold: allocate --hold-gib, write --ready-file (JSON), wait for
      --release-file (or until killed / --wait-timeout), exit.

Always ends with one line `SUMMARY <ok|FAIL[...]> key=value ...` on stdout.
Exit: 0 all assertions passed, 1 an assertion failed, 2 setup error.
Human-readable progress goes to stderr.
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import time

MiB = 1 << 20
GiB = 1 << 30


def log(*a):
    print("torch_fill:", *a, file=sys.stderr, flush=True)


def mib(n):
    return int(n // MiB)


def preloaded():
    try:
        with open("/proc/self/maps") as f:
            return "libgpuslice" in f.read()
    except OSError:
        return False


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def wait_for(path, timeout):
    t0 = time.monotonic()
    while not os.path.exists(path):
        if time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.05)
    return True


class Probe:
    def __init__(self, a):
        self.a = a
        self.fails = []
        self.kv = []  # ordered key=value pairs for SUMMARY

    def fail(self, why):
        log("ASSERTION FAILED:", why)
        self.fails.append(why)

    def put(self, k, v):
        self.kv.append((k, v))

    def summary(self):
        head = "ok" if not self.fails else "FAIL[%s]" % "; ".join(self.fails)
        body = " ".join("%s=%s" % (k, v) for k, v in self.kv)
        if self.a.tag:
            body = "tag=%s " % self.a.tag + body
        print("SUMMARY %s %s" % (head, body), flush=True)
        return 0 if not self.fails else 1


def run_snapshot(a):
    """Run --snapshot-cmd (e.g. `gpuslice status --json`) without the preload."""
    if not a.snapshot_cmd or not a.snapshot_out:
        return
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    try:
        r = subprocess.run(a.snapshot_cmd, shell=True, env=env, capture_output=True,
                           text=True, timeout=15)
        with open(a.snapshot_out, "w") as f:
            f.write(r.stdout)
            if r.stderr:
                f.write("\n# stderr:\n" + r.stderr)
            f.write("\n# rc=%d\n" % r.returncode)
    except Exception as e:
        try:
            with open(a.snapshot_out, "w") as f:
                f.write("# snapshot failed: %r\n" % (e,))
        except OSError:
            pass


def fill(torch, OOM, dev, chunk, cap):
    """Allocate+touch chunk-byte tensors until an exception or cap. Returns
    (held_tensors, bytes, exception or None)."""
    held = []
    got = 0
    exc = None
    while got + chunk <= cap:
        try:
            t = torch.empty(chunk, dtype=torch.uint8, device=dev)
            t.fill_(1)
            held.append(t)
            got += chunk
        except OOM as e:
            exc = e
            break
        except Exception as e:  # wrong class: reported by the caller
            exc = e
            break
    try:
        torch.cuda.synchronize(dev)
    except Exception as e:
        if exc is None:
            exc = e
    return held, got, exc


def release(torch, held, dev):
    del held[:]
    gc.collect()
    try:
        torch.cuda.synchronize(dev)
    except Exception as e:
        log("synchronize after release failed:", e)
    torch.cuda.empty_cache()
    try:
        torch.cuda.synchronize(dev)
    except Exception:
        pass


def exc_name(e):
    if e is None:
        return "none"
    return type(e).__name__


_READY_FILE = None  # hold mode: written with ok=false if we end without writing it


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["fill", "hold"], default="fill")
    ap.add_argument("--tag", default="")
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--expect-total", type=int, help="exact bytes torch.cuda.mem_get_info()[1] must report")
    ap.add_argument("--expect-device-count", type=int)
    ap.add_argument("--expect-backend", choices=["native", "cudaMallocAsync"])
    ap.add_argument("--expect-expandable", action="store_true",
                    help="memory_snapshot() segments must be expandable (when the key exists)")
    ap.add_argument("--expect-preloaded", action="store_true", help="libgpuslice must be mapped in this process")
    ap.add_argument("--expect-free-max-mib", type=float, help="free at start must be <= this")
    ap.add_argument("--chunk-mib", type=int, default=256)
    ap.add_argument("--min-first-gib", type=float, default=3.0)
    ap.add_argument("--min-second-gib", type=float, default=0.0, help="0 = no second fill")
    ap.add_argument("--cap-gib", type=float, default=8.0, help="stop (and fail) if no OOM by then")
    ap.add_argument("--oom-free-slack-mib", type=float, default=128,
                    help="at OOM, reported free must be < chunk + this")
    ap.add_argument("--return-slack-mib", type=float, default=128,
                    help="after free+empty_cache, free must be >= start - this")
    ap.add_argument("--matmul", action="store_true")
    ap.add_argument("--hold-gib", type=float, default=0.0)
    ap.add_argument("--ready-file")
    ap.add_argument("--release-file")
    ap.add_argument("--wait-file", help="fill mode: wait for this file (peer ready) before touching CUDA")
    ap.add_argument("--wait-timeout", type=float, default=60)
    ap.add_argument("--pidfile", help="append our pid here")
    ap.add_argument("--snapshot-cmd", help="shell command run (without LD_PRELOAD) at the first OOM")
    ap.add_argument("--snapshot-out")
    a = ap.parse_args()
    pr = Probe(a)
    global _READY_FILE
    if a.mode == "hold":
        _READY_FILE = a.ready_file

    if a.pidfile:
        try:
            with open(a.pidfile, "a") as f:
                f.write("%d\n" % os.getpid())
        except OSError as e:
            log("pidfile:", e)

    peer = None
    if a.mode == "fill" and a.wait_file:
        if not wait_for(a.wait_file, a.wait_timeout):
            pr.fail("peer never ready (%s)" % os.path.basename(a.wait_file))
            return pr.summary()
        time.sleep(0.1)  # let the writer finish the rename
        try:
            with open(a.wait_file) as f:
                peer = json.load(f)
        except Exception as e:
            peer = {"ok": False, "error": repr(e)}
        if not peer.get("ok"):
            pr.fail("peer failed: %s" % peer.get("error", "?"))
            return pr.summary()
        pr.put("peer_used", "%dMiB" % mib(peer.get("total", 0) - peer.get("free", 0)))

    pre = preloaded()
    t_imp = time.monotonic()
    try:
        import torch
    except Exception as e:
        pr.fail("import torch: %r" % (e,))
        return pr.summary() and 2
    log("torch", torch.__version__, "cuda", torch.version.cuda, "import %.1fs" % (time.monotonic() - t_imp))
    OOM = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    pr.put("pre", int(pre or preloaded()))
    if a.expect_preloaded and not (pre or preloaded()):
        pr.fail("libgpuslice not loaded")

    try:
        if not torch.cuda.is_available():
            pr.fail("torch.cuda.is_available() is False")
            return pr.summary()
        n = torch.cuda.device_count()
        if a.expect_device_count is not None and n != a.expect_device_count:
            pr.fail("device_count %d != %d" % (n, a.expect_device_count))
        dev = torch.device("cuda", a.device)
        torch.cuda.set_device(dev)
        # Warm-up: lazy module loading grows the context the first time a kernel
        # runs; do that before taking the baseline the end state is compared with.
        w = torch.empty(2 * MiB, dtype=torch.uint8, device=dev)
        w.fill_(1)
        torch.cuda.synchronize(dev)
        del w
        torch.cuda.empty_cache()
        free0, total = torch.cuda.mem_get_info(dev)
    except Exception as e:
        pr.fail("CUDA init: %s: %s" % (type(e).__name__, str(e)[:160]))
        return pr.summary()
    log("mem_get_info free=%d MiB total=%d MiB devices=%d name=%s" % (
        mib(free0), mib(total), n, torch.cuda.get_device_name(dev)))
    pr.put("total", mib(total))
    pr.put("free0", mib(free0))
    if a.expect_total is not None and total != a.expect_total:
        pr.fail("total %d != %d" % (total, a.expect_total))
    if a.expect_free_max_mib is not None and free0 / MiB > a.expect_free_max_mib:
        pr.fail("free0 %dMiB > %dMiB (peer usage not visible)" % (mib(free0), a.expect_free_max_mib))

    try:
        backend = torch.cuda.get_allocator_backend()
    except Exception:
        backend = "?"
    pr.put("be", backend)
    if a.expect_backend and backend != a.expect_backend:
        pr.fail("allocator backend %s != %s" % (backend, a.expect_backend))

    chunk = a.chunk_mib * MiB
    cap = int(a.cap_gib * GiB)

    # ---------------------------------------------------------------- hold
    if a.mode == "hold":
        want = int(a.hold_gib * GiB)
        held, got, exc = fill(torch, OOM, dev, chunk, want)
        ok = got >= want and exc is None
        free_h, _ = torch.cuda.mem_get_info(dev)
        pr.put("held", "%dMiB" % mib(got))
        pr.put("free_held", mib(free_h))
        if not ok:
            pr.fail("could not hold %.2fGiB: got %dMiB (%s: %s)" % (
                a.hold_gib, mib(got), exc_name(exc), str(exc)[:120]))
        if a.ready_file:
            write_json(a.ready_file, {"ok": ok, "pid": os.getpid(), "held": got, "free": free_h,
                                      "total": total, "error": "" if ok else exc_name(exc)})
        log("holding %d MiB, free now %d MiB" % (mib(got), mib(free_h)))
        if ok and a.release_file:
            if not wait_for(a.release_file, a.wait_timeout):
                pr.fail("release file never came")
        elif ok:
            time.sleep(a.wait_timeout)  # normally killed before this ends
            pr.fail("was not killed within %.0fs" % a.wait_timeout)
        release(torch, held, dev)
        return pr.summary()

    # ---------------------------------------------------------------- fill 1
    t0 = time.monotonic()
    held, got1, exc = fill(torch, OOM, dev, chunk, cap)
    free_oom, _ = torch.cuda.mem_get_info(dev)
    log("fill1: %d MiB in %.2fs, stopped by %s: %s; free at stop %d MiB" % (
        mib(got1), time.monotonic() - t0, exc_name(exc), str(exc)[:300], mib(free_oom)))
    pr.put("fill1", "%dMiB(%s,free=%d)" % (mib(got1), exc_name(exc), mib(free_oom)))
    if exc is None:
        pr.fail("no OOM up to cap %.1fGiB" % a.cap_gib)
    elif not isinstance(exc, OOM):
        pr.fail("fill1 stopped by %s not OutOfMemoryError: %s" % (exc_name(exc), str(exc)[:100]))
    if got1 < a.min_first_gib * GiB:
        pr.fail("fill1 %dMiB < %.2fGiB" % (mib(got1), a.min_first_gib))
    if got1 > free0:
        pr.fail("fill1 %dMiB > free0 %dMiB" % (mib(got1), mib(free0)))
    if isinstance(exc, OOM) and free_oom >= chunk + a.oom_free_slack_mib * MiB:
        pr.fail("OOM while free=%dMiB >= chunk+slack" % mib(free_oom))
    if a.expect_expandable:
        try:
            segs = torch.cuda.memory_snapshot()
            flags = [s.get("is_expandable") for s in segs if "is_expandable" in s]
            if flags and not all(flags):
                pr.fail("segments not expandable")
            pr.put("expandable", int(all(flags)) if flags else "?")
        except Exception as e:
            pr.put("expandable", "?")
            log("memory_snapshot failed:", e)
    run_snapshot(a)
    exc = None  # drop the traceback's references to frames/tensors

    release(torch, held, dev)
    free_r1, _ = torch.cuda.mem_get_info(dev)
    log("after free+empty_cache: free %d MiB (start %d MiB)" % (mib(free_r1), mib(free0)))
    if free_r1 + a.return_slack_mib * MiB < free0:
        pr.fail("free after release %dMiB < start %dMiB - slack" % (mib(free_r1), mib(free0)))

    # ---------------------------------------------------------------- fill 2
    if a.min_second_gib > 0:
        held, got2, exc = fill(torch, OOM, dev, chunk, cap)
        log("fill2: %d MiB, stopped by %s" % (mib(got2), exc_name(exc)))
        pr.put("fill2", "%dMiB(%s)" % (mib(got2), exc_name(exc)))
        if exc is not None and not isinstance(exc, OOM):
            pr.fail("fill2 stopped by %s: %s" % (exc_name(exc), str(exc)[:100]))
        if got2 < a.min_second_gib * GiB:
            pr.fail("fill2 %dMiB < %.2fGiB" % (mib(got2), a.min_second_gib))
        exc = None
        release(torch, held, dev)

    # ---------------------------------------------------------------- matmul
    if a.matmul:
        try:
            x = torch.ones(4096, 4096, device=dev)
            y = torch.ones(4096, 4096, device=dev)
            z = x @ y
            torch.cuda.synchronize(dev)
            ones_ok = bool((z == 4096).all().item())
            g = torch.Generator().manual_seed(0)
            p = torch.randn(512, 512, generator=g)
            q = torch.randn(512, 512, generator=g)
            r = (p.to(dev) @ q.to(dev)).cpu()
            ref = p.double() @ q.double()
            rand_ok = bool(torch.allclose(r.double(), ref, rtol=1e-2, atol=5e-2))
            del x, y, z
            pr.put("mm", "ok" if ones_ok and rand_ok else "BAD")
            if not (ones_ok and rand_ok):
                pr.fail("matmul wrong (ones=%d rand=%d)" % (ones_ok, rand_ok))
        except Exception as e:
            pr.put("mm", "ERR")
            pr.fail("matmul raised %s: %s" % (type(e).__name__, str(e)[:100]))
    return pr.summary()


if __name__ == "__main__":
    try:
        rc = main()
    except SystemExit:
        raise
    except BaseException as e:  # never die without a SUMMARY
        import traceback

        traceback.print_exc()
        print("SUMMARY FAIL[uncaught %s: %s]" % (type(e).__name__, str(e)[:160]), flush=True)
        rc = 2
    if _READY_FILE and not os.path.exists(_READY_FILE):
        try:
            write_json(_READY_FILE, {"ok": False, "pid": os.getpid(), "error": "hold setup failed"})
        except OSError:
            pass
    sys.exit(rc)
