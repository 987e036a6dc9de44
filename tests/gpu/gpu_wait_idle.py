#!/usr/bin/env python3
"""Wait until the GPU compute processes (minus --ignore-file pids) use at most
--max-mib in total, or --timeout passes. Exit 0 when idle, 1 on timeout.
Prints one line: `IDLE ok=<0|1> used_mib=<n> waited_s=<s> procs=<pid:MiB,...>`."""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpumem  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-mib", type=float, default=64)
    ap.add_argument("--timeout", type=float, default=15)
    ap.add_argument("--ignore-file", help="file with one pid per line to ignore")
    a = ap.parse_args()

    ignored = set()
    if a.ignore_file and os.path.exists(a.ignore_file):
        with open(a.ignore_file) as f:
            for line in f:
                line = line.strip()
                if line.isdigit():
                    ignored.add(int(line))

    nv = None
    try:
        nv = gpumem.Nvml()
    except Exception:
        nv = None

    def sample():
        if nv is not None:
            try:
                return nv.procs()
            except Exception:
                pass
        try:
            return gpumem.smi_procs(timeout=10)
        except Exception:
            return None

    t0 = time.monotonic()
    procs = {}
    ok = False
    while True:
        s = sample()
        if s is None:  # no way to look: don't block the run
            print("IDLE ok=1 used_mib=n/a waited_s=0 procs=unknown")
            return 0
        procs = {p: u for p, u in s.items() if p not in ignored}
        used = sum(procs.values()) / gpumem.MiB
        if used <= a.max_mib:
            ok = True
            break
        if time.monotonic() - t0 > a.timeout:
            break
        time.sleep(0.1)
    desc = ",".join("%d:%d" % (p, u // gpumem.MiB) for p, u in sorted(procs.items())) or "-"
    print("IDLE ok=%d used_mib=%d waited_s=%.1f procs=%s" % (
        ok, sum(procs.values()) // gpumem.MiB, time.monotonic() - t0, desc))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
