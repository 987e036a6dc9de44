#!/usr/bin/env python3
"""The scraper and the judge of tests/gpu/metrics-check.sh.

  metrics_check.py scrape PORT W     # every second until W/stop exists: /metrics and
                                     # nvidia-smi, one JSON line each, into W/scrapes.jsonl
  metrics_check.py judge W           # compares them with what the slices and the GPU hold,
                                     # prints the table, exits 0 if every check passed

The judge reads what the script left in W: m1.log (the memory slice's "ready RESERVED
PID" line), native.log and c1.log (bench/compute_workloads.py's JSON lines: the
unlimited run's rate, then the limited run's ready line with its pid, and its rate per
250 ms window).
"""
import json
import os
import subprocess
import sys
import time
import urllib.request

MiB, GiB = 1 << 20, 1 << 30
WINDOW_S = 10.0  # the agent's window of gpuslice_slice_compute_used_ratio
SHARE_POINTS = 0.05  # the compute share must match within 5 points


def smi(query):
    try:
        return subprocess.run(["nvidia-smi", query, "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return f"error: {e}"


def scrape(port, w):
    out = open(os.path.join(w, "scrapes.jsonl"), "a")
    while not os.path.exists(os.path.join(w, "stop")):
        t = time.time()
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError as e:
            text = f"# error {e}"
        line = {
            "t": t,
            "text": text,
            "gpu": smi("--query-gpu=uuid,memory.total,memory.used,utilization.gpu"),
            "apps": smi("--query-compute-apps=pid,used_memory"),
        }
        out.write(json.dumps(line) + "\n")
        out.flush()
        time.sleep(max(0.0, 1.0 - (time.time() - t)))


def samples(text, name):
    """{labels-string: value} of metric `name` (plain text lines, no parser needed here:
    the CPU test parses with a real OpenMetrics parser)."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, _, value = line.rpartition(" ")
            out[key[len(name):]] = float(value)
    return out


def one(text, name, slice_=None):
    for k, v in samples(text, name).items():
        if slice_ is None or f'slice="{slice_}"' in k:
            return v
    return None


def json_lines(path):
    out = []
    for line in open(path).read().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def judge(w):
    scrapes = json_lines(os.path.join(w, "scrapes.jsonl"))
    m1 = open(os.path.join(w, "m1.log")).read().split("ready", 1)[1].split()
    m1_reserved, m1_pid = int(m1[0]), int(m1[1])
    native = [d for d in json_lines(os.path.join(w, "native.log")) if "rate" in d]
    c1 = json_lines(os.path.join(w, "c1.log"))
    c1_pid = next((d["pid"] for d in c1 if d.get("ready")), None)
    c1_run = next((d for d in c1 if "timeline" in d), None)

    rows, ok = [], True

    def check(what, got, want, good):
        nonlocal ok
        ok &= bool(good)
        rows.append((what, got, want, "PASS" if good else "FAIL"))

    if not scrapes or not native or c1_run is None:
        print(f"missing data: {len(scrapes)} scrapes, native {bool(native)}, limited run "
              f"{c1_run is not None}")
        return 1
    native_rate = native[0]["rate"]
    t0, t1 = c1_run["start"], c1_run["end"]
    # The limited run's windows, absolute: (start, end, iterations).
    tl = c1_run["timeline"]
    windows = [(t0 + a[0], t0 + b[0], a[1] * (b[0] - a[0])) for a, b in zip(tl, tl[1:])]

    def measured_share(end):
        """The limited loop's throughput against the unlimited one's over the agent's
        window ending at `end`, from the 250 ms windows inside it."""
        inside = [x for x in windows if x[0] >= end - WINDOW_S and x[1] <= end]
        span = sum(b - a for a, b, _ in inside)
        if span < WINDOW_S * 0.8:
            return None
        return sum(n for _, _, n in inside) / span / native_rate

    def time_share(end):
        """The GPU's utilization (nvidia-smi, 0..1) averaged over the scrapes inside the
        agent's window ending at `end`: c1 is the only slice that computes, so this is its
        time share."""
        utils = []
        for s in scrapes:
            if end - WINDOW_S < s["t"] <= end:
                try:
                    utils.append(float(s["gpu"].split("\n")[0].split(", ")[3]) / 100)
                except (IndexError, ValueError):
                    pass  # nvidia-smi failed this round: the window has one sample fewer
        return sum(utils) / len(utils) if len(utils) >= WINDOW_S * 0.7 else None

    # Compute: every scrape whose window lies in the measured run.
    pairs, timed = [], []
    for s in scrapes:
        if s["t"] - WINDOW_S >= t0 + 0.5 and s["t"] <= t1:
            metric = one(s["text"], "gpuslice_slice_compute_used_ratio", "c1")
            share = measured_share(s["t"])
            if metric is not None and share is not None:
                pairs.append((metric, share))
            busy = time_share(s["t"])
            if metric is not None and busy is not None:
                timed.append((metric, busy))
    for what, found, truth in (("throughput share", pairs, "measured share"),
                               ("time share", timed, "GPU utilization")):
        if found:
            metric = sum(p[0] for p in found) / len(found)
            share = sum(p[1] for p in found) / len(found)
            worst = max(abs(a - b) for a, b in found)
            check(f"c1 compute used vs {what} ({len(found)} scrapes)", round(metric, 3),
                  f"{truth} {share:.3f} (worst scrape off by {worst:.3f})",
                  abs(metric - share) <= SHARE_POINTS)
        else:
            check(f"c1 compute used vs {what}", None, "no scrape inside the measured run",
                  False)

    # Memory and the rest: a scrape in the middle of the run, both slices holding.
    mid = [s for s in scrapes if t0 + 2 <= s["t"] <= t1 - 2]
    s = mid[len(mid) // 2] if mid else scrapes[-1]
    text = s["text"]
    gpu = s["gpu"].split("\n")[0].split(", ")
    per_pid = {}
    for line in s["apps"].strip().splitlines():
        parts = line.split(", ")
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            per_pid[int(parts[0])] = int(parts[1]) * MiB
    for name, limit, pid, reserved in (("m1", 4 * GiB, m1_pid, m1_reserved),
                                       ("c1", 6 * GiB, c1_pid, None)):
        got = one(text, "gpuslice_slice_memory_limit_bytes", name)
        check(f"{name} limit", got, limit, got == limit)
        used = one(text, "gpuslice_slice_memory_used_bytes", name)
        smi_used = per_pid.get(pid)
        good = used is not None
        if good and reserved is not None:
            good &= reserved <= used <= reserved + 1024 * MiB
        if good and smi_used is not None:
            good &= abs(used - smi_used) <= 128 * MiB
        torch = f"torch {reserved / MiB:.0f} MiB + context, " if reserved is not None else ""
        check(f"{name} used", used, f"{torch}nvidia-smi pid {pid}: {smi_used}", good)
    ratio = one(text, "gpuslice_slice_compute_limit_ratio", "c1")
    check("c1 compute limit", ratio, 0.30, ratio is not None and abs(ratio - 0.30) < 1e-9)
    check("m1 compute used", one(text, "gpuslice_slice_compute_used_ratio", "m1"), "absent",
          one(text, "gpuslice_slice_compute_used_ratio", "m1") is None)
    throttled = [one(x["text"], "gpuslice_slice_throttled_seconds_total", "c1") for x in mid]
    throttled = [x for x in throttled if x is not None]
    check("c1 throttled grows", f"{throttled[0]:.2f} .. {throttled[-1]:.2f} s" if throttled else None,
          "> 0 and growing", len(throttled) >= 2 and 0 < throttled[0] < throttled[-1])
    refused = sum(samples(text, "gpuslice_slice_refused_allocations_total").values())
    check("refused allocations", refused, 0, refused == 0)
    total = one(text, "gpuslice_gpu_memory_total_bytes")
    check("gpu total", total, int(gpu[1]) * MiB, total == int(gpu[1]) * MiB)
    gpu_used = one(text, "gpuslice_gpu_memory_used_bytes")
    check("gpu used", gpu_used, int(gpu[2]) * MiB,
          gpu_used is not None and abs(gpu_used - int(gpu[2]) * MiB) <= 64 * MiB)
    util = one(text, "gpuslice_gpu_utilization_ratio")
    check("gpu utilization", util, f"nvidia-smi {gpu[3]}% (sampled apart)",
          util is not None and 0.0 < util <= 1.0)
    limits = one(text, "gpuslice_gpu_slices_memory_limit_bytes")
    check("gpu sum of memory limits", limits, 10 * GiB, limits == 10 * GiB)
    climits = one(text, "gpuslice_gpu_slices_compute_limit_ratio")
    check("gpu sum of compute limits", climits, 0.30,
          climits is not None and abs(climits - 0.30) < 1e-9)
    info = samples(text, "gpuslice_slice_info")
    runs = len([k for k in info if 'source="run"' in k])
    check("slice_info sources", runs, 2, runs == 2)
    failed = len(samples(text, "gpuslice_slice_failed_closed"))
    check("failed_closed", failed, 0, failed == 0)
    errors = one(text, "gpuslice_agent_nvml_errors_total")
    check("agent nvml errors", errors, 0, errors == 0)

    def fmt(v):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 1e6:
            return f"{v / MiB:.0f} MiB"
        return str(v)

    print(f"unlimited loop rate {native_rate:.1f}/s; limited run {c1_run['rate']:.1f}/s "
          f"({c1_run['rate'] / native_rate:.3f} of it over {t1 - t0:.1f} s); {len(scrapes)} scrapes")
    print(f"{'check':<44} | {'/metrics':<16} | {'truth':<52} | result")
    print("-" * 45 + "+" + "-" * 18 + "+" + "-" * 54 + "+-------")
    for what, got, want, res in rows:
        print(f"{what:<44} | {fmt(got):<16} | {fmt(want):<52} | {res}")
    print("RESULT:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["scrape"]:
        scrape(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["judge"]:
        sys.exit(judge(sys.argv[2]))
    else:
        sys.exit(__doc__)
