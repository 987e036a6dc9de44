#!/usr/bin/env python3
"""Background sampler of host-side GPU memory for one check.

Samples the per-process GPU memory of every compute process (except those
already running when the monitor started: they are not part of the check)
with NVML every --interval seconds and with nvidia-smi every --smi-interval
seconds, and keeps the peak of the SUM over processes for each source.

Writes --out (JSON) every second and on SIGTERM/SIGINT or after --max-seconds:
  nvml_peak_mib / smi_peak_mib: peak of the per-process sum (null: no sample)
  dev_delta_peak_mib: peak of device-level used memory minus its value at start
  *_peak_pids: {pid: MiB} at the moment of each peak
"""

import argparse
import json
import math
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpumem  # noqa: E402

MiB = gpumem.MiB


def read_peaks(path):
    def fmt(v):
        return "n/a" if v is None else str(int(math.ceil(v - 1e-9)))
    try:
        with open(path) as f:
            st = json.load(f)
    except Exception:
        print("n/a n/a n/a")
        return 0
    nv = st.get("nvml_peak_mib") if st.get("nvml_samples") else None
    sm = st.get("smi_peak_mib") if st.get("smi_samples") else None
    print(fmt(nv), fmt(sm), fmt(st.get("dev_delta_peak_mib")))
    return 0


def list_pids(path):
    pids = set()
    try:
        nv = gpumem.Nvml()
        pids |= set(nv.procs())
        nv.close()
    except Exception:
        pass
    try:
        pids |= set(gpumem.smi_procs())
    except Exception:
        pass
    with open(path, "w") as f:
        for p in sorted(pids):
            f.write("%d\n" % p)
    print(" ".join(map(str, sorted(pids))) or "-")
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", help="JSON file with the peaks (sampling mode)")
    ap.add_argument("--read", metavar="JSON",
                    help="print '<nvml_peak> <smi_peak> <dev_delta_peak>' (MiB, rounded up, or n/a) from a monitor file and exit")
    ap.add_argument("--list-pids", metavar="FILE",
                    help="write the pids of the current GPU compute processes to FILE and exit")
    ap.add_argument("--ready", help="file created once sampling has started")
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("--smi-interval", type=float, default=0.2)
    ap.add_argument("--max-seconds", type=float, default=900)
    a = ap.parse_args()
    if a.read:
        return read_peaks(a.read)
    if a.list_pids:
        return list_pids(a.list_pids)
    if not a.out:
        ap.error("--out is required")

    stop = threading.Event()
    lock = threading.Lock()
    st = {
        "nvml_peak_mib": None, "nvml_peak_pids": {}, "nvml_samples": 0, "nvml_errors": 0,
        "nvml_error": None,
        "smi_peak_mib": None, "smi_peak_pids": {}, "smi_samples": 0, "smi_errors": 0,
        "smi_error": None,
        "dev_delta_peak_mib": None, "dev_used_start_mib": None,
        "ignored_pids": [], "started": time.time(), "stopped": None,
    }

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def write():
        with lock:
            data = json.dumps(st, sort_keys=True)
        tmp = a.out + ".tmp"
        try:
            with open(tmp, "w") as f:
                f.write(data)
            os.replace(tmp, a.out)
        except OSError as e:
            print("monitor: cannot write %s: %s" % (a.out, e), file=sys.stderr)

    ignored = set()
    nv = None
    try:
        nv = gpumem.Nvml()
        ignored |= set(nv.procs())
        st["dev_used_start_mib"] = nv.device_used() / MiB
    except Exception as e:  # no pynvml, no driver, ...
        st["nvml_error"] = "%s: %s" % (type(e).__name__, e)
        nv = None
    try:
        ignored |= set(gpumem.smi_procs())
    except Exception as e:
        st["smi_error"] = "%s: %s" % (type(e).__name__, e)
    ignored.discard(os.getpid())
    st["ignored_pids"] = sorted(ignored)

    def record(prefix, procs):
        procs = {p: u for p, u in procs.items() if p not in ignored}
        total = sum(procs.values()) / MiB
        with lock:
            st[prefix + "_samples"] += 1
            if st[prefix + "_peak_mib"] is None or total > st[prefix + "_peak_mib"]:
                st[prefix + "_peak_mib"] = total
                st[prefix + "_peak_pids"] = {str(p): round(u / MiB, 1) for p, u in procs.items()}

    def smi_loop():
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                record("smi", gpumem.smi_procs(timeout=10))
            except Exception as e:
                with lock:
                    st["smi_errors"] += 1
                    st["smi_error"] = "%s: %s" % (type(e).__name__, str(e)[:200])
            stop.wait(max(0.0, a.smi_interval - (time.monotonic() - t0)))

    th = threading.Thread(target=smi_loop, daemon=True)
    th.start()

    if a.ready:
        with open(a.ready, "w") as f:
            f.write(str(os.getpid()))

    deadline = time.monotonic() + a.max_seconds
    last_write = 0.0
    dev_start = st["dev_used_start_mib"]
    while not stop.is_set() and time.monotonic() < deadline:
        t0 = time.monotonic()
        if nv is not None:
            try:
                record("nvml", nv.procs())
                if dev_start is not None:
                    d = nv.device_used() / MiB - dev_start
                    with lock:
                        if st["dev_delta_peak_mib"] is None or d > st["dev_delta_peak_mib"]:
                            st["dev_delta_peak_mib"] = d
            except Exception as e:
                with lock:
                    st["nvml_errors"] += 1
                    st["nvml_error"] = "%s: %s" % (type(e).__name__, str(e)[:200])
        if t0 - last_write > 1.0:
            write()
            last_write = t0
        stop.wait(max(0.0, a.interval - (time.monotonic() - t0)))

    stop.set()
    th.join(timeout=12)
    st["stopped"] = time.time()
    if nv is not None:
        nv.close()
    write()


if __name__ == "__main__":
    sys.exit(main())
