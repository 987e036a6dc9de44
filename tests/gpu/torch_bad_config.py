#!/usr/bin/env python3
"""Probe run with an invalid gpuslice limit in the environment.

Prints marker lines the runner judges (the interposer must refuse, not run
unlimited):
  PRELOADED=<0|1>
  CUDA_AVAILABLE=<0|1|error:...>
  TOTAL_MIB=<n>                (only if mem_get_info worked)
  FIRST_ALLOC=ok | fail:<ExceptionClass>
  BIG_ALLOC=ok | fail:<ExceptionClass>   (6 GiB, only if the first one worked)
Always exits 0 unless Python itself breaks; a crash/abort of the process is
also an acceptable refusal as far as the runner is concerned.
"""

import os
import sys

MiB = 1 << 20


def main():
    try:
        with open("/proc/self/maps") as f:
            print("PRELOADED=%d" % ("libgpuslice" in f.read()), flush=True)
    except OSError:
        print("PRELOADED=?", flush=True)
    import torch

    try:
        avail = torch.cuda.is_available()
        print("CUDA_AVAILABLE=%d" % avail, flush=True)
    except Exception as e:
        print("CUDA_AVAILABLE=error:%s" % type(e).__name__, flush=True)
        return 0
    if not avail:
        return 0
    try:
        free, total = torch.cuda.mem_get_info()
        print("TOTAL_MIB=%d FREE_MIB=%d" % (total // MiB, free // MiB), flush=True)
    except Exception as e:
        print("MEM_GET_INFO=fail:%s %s" % (type(e).__name__, str(e)[:200].replace("\n", " ")), flush=True)
    try:
        t = torch.empty(64 * MiB, dtype=torch.uint8, device="cuda")
        t.fill_(1)
        torch.cuda.synchronize()
        print("FIRST_ALLOC=ok", flush=True)
    except Exception as e:
        print("FIRST_ALLOC=fail:%s %s" % (type(e).__name__, str(e)[:200].replace("\n", " ")), flush=True)
        return 0
    try:
        b = torch.empty(6 << 30, dtype=torch.uint8, device="cuda")
        b.fill_(1)
        torch.cuda.synchronize()
        print("BIG_ALLOC=ok", flush=True)
        del b
    except Exception as e:
        print("BIG_ALLOC=fail:%s" % type(e).__name__, flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--pidfile":
        try:
            with open(sys.argv[2], "a") as f:
                f.write("%d\n" % os.getpid())
        except (OSError, IndexError):
            pass
    sys.exit(main())
