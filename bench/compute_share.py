#!/usr/bin/env python3
"""Compute-slice benchmark: how much of the GPU a slice gets under --compute N.

For each workload (bench/compute_workloads.py) the throughput under a limit is divided
by the throughput of the same workload without gpuslice, measured in the same run:
that share should equal the limit. Also measured: a light CPU-bound loop (must keep its
speed), two slices at 30 and 70 sharing the GPU, and a 30/80 burst slice that another
slice joins. Two ways of measuring a slice's GPU time are compared: timing events on
its streams (the default) and the driver's per-process NVML utilization samples.

  python3 bench/compute_share.py                  # on a GPU, with .gpu-carry/libgpuslice.so
  python3 bench/compute_share.py --fake           # plumbing test without a GPU

Prints a table at the end; with $OUT set, writes compute-share.json there.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORKLOADS = os.path.join(HERE, "compute_workloads.py")
GPU_BOUND = ["matmul", "elementwise", "graph", "streams", "train"]
REPORTS = []


class Sampler:
    """Samples the GPU's utilization (what nvidia-smi shows), SM clock and power every 50 ms."""

    def __init__(self, fake):
        self.samples = []
        self.stop = False
        self.fake = fake
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        if self.fake:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as e:  # noqa: BLE001
            print(f"no NVML sampler: {e}", file=sys.stderr)
            return
        while not self.stop:
            try:
                util = pynvml.nvmlDeviceGetUtilizationRates(h).gpu
                clock = pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)
                watts = pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0
                self.samples.append((time.time(), util, clock, watts))
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.05)

    def mean(self, start, end, field=1):
        """Mean of a field (1 utilization %, 2 SM clock MHz, 3 power W) over a window."""
        vals = [s[field] for s in self.samples if start <= s[0] <= end]
        return round(statistics.mean(vals), 1) if vals else None

    def busy_clock(self, start, end):
        """Mean SM clock over the samples of a window in which the GPU was busy."""
        vals = [s[2] for s in self.samples if start <= s[0] <= end and s[1] > 0]
        return round(statistics.mean(vals)) if vals else None


def run_workloads(env, names, args, extra=(), start_file=None, background=False):
    cmd = [sys.executable, WORKLOADS, "--workloads", ",".join(names),
           "--seconds", str(args.seconds), "--warmup", str(args.warmup), *extra]
    if start_file:
        cmd += ["--start-file", start_file]
    if args.fake:
        cmd.append("--fake")
    full_env = dict(os.environ)
    for k in list(full_env):
        if k.startswith("GPUSLICE_") or k == "LD_PRELOAD":
            del full_env[k]
    full_env.update(env)
    full_env["PYTHONUNBUFFERED"] = "1"
    p = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if background:
        return p
    return collect(p, args.timeout)


def collect(p, timeout):
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        err += "\nTIMEOUT"
    results = {}
    for line in out.splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if "workload" in d:
            results[d["workload"]] = d
    reports = [l for l in err.splitlines() if "of the GPU over the last" in l]
    others = [l for l in err.splitlines() if "of the GPU over the last" not in l]
    if reports:
        REPORTS.extend(reports)
    if p.returncode != 0 or others:
        tail = "\n".join(others[-5:])
        if tail.strip():
            print(f"  [stderr rc={p.returncode}] {tail}", file=sys.stderr)
    return results


def wait_ready(p, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        line = p.stdout.readline()
        if not line:
            return False
        if '"ready"' in line:
            return True
    return False


def slice_env(args, tmp, name, hard, burst=None, method="events", gpu_dir=None):
    env = {
        "LD_PRELOAD": args.lib,
        "GPUSLICE_COMPUTE": str(hard),
        "GPUSLICE_LEDGER": os.path.join(tmp, f"{name}.ledger"),
        "GPUSLICE_GPU_DIR": gpu_dir or os.path.join(tmp, f"gpus-{name}"),
        "GPUSLICE_COMPUTE_METHOD": method,
        "GPUSLICE_LOG": "info",
    }
    if burst:
        env["GPUSLICE_COMPUTE_BURST"] = str(burst)
    env.update(args.slice_env)
    return env


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default=os.environ.get("GPUSLICE_BIN_DIR", ".gpu-carry"))
    ap.add_argument("--limits", default="10,25,50,75")
    ap.add_argument("--nvml-limits", default="25,50", help="limits for the NVML candidate ('' to skip)")
    ap.add_argument("--workloads", default=",".join(GPU_BOUND))
    ap.add_argument("--light-seconds", type=float, default=2.0)
    ap.add_argument("--light-rounds", type=int, default=4)
    ap.add_argument("--tiny-rounds", type=int, default=4,
                    help="rounds of the tiny-kernel loop free and under 50%% and 75%%, in turns")
    ap.add_argument("--seconds", type=float, default=2.5)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--pair-seconds", type=float, default=8.0)
    ap.add_argument("--timeout", type=float, default=180)
    ap.add_argument("--skip", default="", help="comma list of: limits,nvml,pair,burst,light,tiny")
    ap.add_argument("--slice-env", action="append", default=[], metavar="NAME=VALUE",
                    help="one more variable for every limited process, e.g. GPUSLICE_COMPUTE_BAND_MS=10")
    ap.add_argument("--reports", action="store_true",
                    help="print the interposer's 2-second reports (share used, launches, full "
                         "gate checks, rests, timing events) after the table")
    ap.add_argument("--fake", action="store_true")
    args = ap.parse_args()
    args.slice_env = dict(kv.split("=", 1) for kv in args.slice_env)
    bin_dir = args.bin_dir if os.path.isabs(args.bin_dir) else os.path.join(REPO, args.bin_dir)
    args.lib = os.path.join(bin_dir, "libgpuslice.so")
    if not args.fake and not os.path.exists(args.lib):
        sys.exit(f"{args.lib} not found: build with cargo build --release and copy it there")
    skip = set(args.skip.split(","))
    names = [n for n in args.workloads.split(",") if n]
    tmp = tempfile.mkdtemp(prefix="gpuslice-compute-")
    sampler = Sampler(args.fake)
    report = {"configs": {}, "pair": None, "burst": None, "light": None, "tiny": None}
    t_start = time.time()

    def config(label, env):
        t = time.time()
        res = run_workloads(env, names, args)
        for r in res.values():
            r["util"] = sampler.mean(r["start"], r["end"])
            r["clock_mhz"] = sampler.busy_clock(r["start"], r["end"])
            r["power_w"] = sampler.mean(r["start"], r["end"], field=3)
        report["configs"][label] = res
        print(f"{label:>12}: " + ", ".join(f"{k}={v['rate']:.1f}/s" for k, v in res.items())
              + f"  ({time.time() - t:.0f}s)", flush=True)
        return res

    native = config("native", {})
    if "limits" not in skip:
        for limit in [int(x) for x in args.limits.split(",") if x]:
            config(f"events-{limit}", slice_env(args, tmp, f"ev{limit}", limit))
    if "nvml" not in skip:
        for limit in [int(x) for x in args.nvml_limits.split(",") if x]:
            config(f"nvml-{limit}", slice_env(args, tmp, f"nv{limit}", limit, method="nvml"))

    pair_args = argparse.Namespace(**vars(args))
    pair_args.seconds = args.pair_seconds
    pair_args.warmup = 0.5
    if "pair" not in skip:
        gpus = os.path.join(tmp, "gpus-pair")
        start = os.path.join(tmp, "pair.start")
        procs = [run_workloads(slice_env(args, tmp, f"pair{h}", h, gpu_dir=gpus), ["matmul"],
                               pair_args, start_file=start, background=True) for h in (30, 70)]
        ready = all(wait_ready(p) for p in procs)
        open(start, "w").close()
        res = [collect(p, args.timeout).get("matmul") for p in procs]
        base = native.get("matmul", {}).get("rate")
        if ready and all(res) and base:
            a, b = (r["rate"] / base * 100 for r in res)
            report["pair"] = {"share_30": a, "share_70": b, "together": a + b,
                              "ratio_vs_3_7": (a / b) / (3 / 7) if b else None}
        print(f"        pair: {report['pair']}", flush=True)

    if "light" not in skip:
        # The light loop is CPU-bound, and CPU speed differs between runs: run it with
        # and without a 50% limit at the same time, so both see the same machine.
        # The loop runs alone, without and with a 50% limit in turn, several times:
        # run side by side, two processes' tiny kernels would wait for each other's
        # time slices on the GPU, and one pair alone is noisy. Medians are compared.
        light_args = argparse.Namespace(**vars(args))
        light_args.seconds = args.light_seconds
        light_args.warmup = 0.5
        free, limited = [], []
        for i in range(args.light_rounds):
            for env, into in (({}, free), (slice_env(args, tmp, "light50", 50), limited)):
                r = run_workloads(env, ["light"], light_args).get("light")
                if r:
                    into.append(r["rate"])
        if free and limited:
            a, b = statistics.median(free), statistics.median(limited)
            report["light"] = {"native": a, "limited_50": b, "ratio": b / a * 100,
                               "rounds": [round(x, 1) for x in free + limited]}
        print(f"       light: {report['light']}", flush=True)

    if "tiny" not in skip and args.tiny_rounds > 0:
        # The tiny-kernel loop is launch-bound, so its rate follows the CPU's speed, which
        # differs between runs as much as the 3% it may lose: like the light loop, it
        # runs free and under limits above its own time share in turns, and medians are
        # compared. Its own time share is the GPU utilization while it runs free.
        tiny_args = argparse.Namespace(**vars(args))
        tiny_args.warmup = 0.5
        runs = {"free": [], 50: [], 75: []}
        utils = []
        for i in range(args.tiny_rounds):
            for key in runs:
                env = {} if key == "free" else slice_env(args, tmp, f"tiny{key}", key)
                r = run_workloads(env, ["tiny"], tiny_args).get("tiny")
                if r:
                    runs[key].append(r["rate"])
                    util = sampler.mean(r["start"], r["end"])
                    if key == "free" and util is not None:
                        utils.append(util)
        if all(runs.values()):
            free = statistics.median(runs["free"])
            report["tiny"] = {
                "own_util": statistics.median(utils) if utils else None,
                "native": free,
                **{f"ratio_{k}": statistics.median(v) / free * 100 for k, v in runs.items() if k != "free"},
                "rounds": {str(k): [round(x, 1) for x in v] for k, v in runs.items()},
            }
        print(f"        tiny: {report['tiny']}", flush=True)

    if "burst" not in skip:
        gpus = os.path.join(tmp, "gpus-burst")
        start_b = os.path.join(tmp, "burst-b.start")
        burst_args = argparse.Namespace(**vars(args))
        burst_args.seconds = 8.0
        burst_args.warmup = 0.5
        a = run_workloads(slice_env(args, tmp, "burstA", 30, burst=80, gpu_dir=gpus), ["matmul"],
                          burst_args, extra=("--timeline",), background=True)
        b_args = argparse.Namespace(**vars(args))
        b_args.seconds = 4.0
        b_args.warmup = 0.0
        b = run_workloads(slice_env(args, tmp, "burstB", 50, gpu_dir=gpus), ["matmul"], b_args,
                          start_file=start_b, background=True)
        wait_ready(a)
        wait_ready(b)
        time.sleep(0.5 + 4.0)  # A's warm-up, then four seconds alone
        open(start_b, "w").close()
        ra = collect(a, args.timeout).get("matmul")
        rb = collect(b, args.timeout).get("matmul")
        base = native.get("matmul", {}).get("rate")
        if ra and rb and base:
            b_start = rb["start"] - ra["start"]
            tl = [(t, r / base * 100) for t, r in ra["timeline"]]
            alone = [s for t, s in tl if 0.5 <= t < b_start - 0.25]
            after = [(t, s) for t, s in tl if t >= b_start]
            fell = next((t - b_start for t, s in after if s <= 35), None)
            settled = [s for t, s in after if t >= b_start + 1.0]
            report["burst"] = {
                "alone": statistics.mean(alone) if alone else None,
                "b_starts_at": b_start,
                "fell_to_35_after_s": fell,
                "with_other": statistics.mean(settled) if settled else None,
                "other": rb["rate"] / base * 100,
                "timeline": tl,
            }
        print(f"       burst: { {k: v for k, v in (report['burst'] or {}).items() if k != 'timeline'} }",
              flush=True)
    sampler.stop = True
    shutil.rmtree(tmp, ignore_errors=True)

    # ---------------------------------------------------------------- table
    lines = []
    fails = 0

    def row(*cells):
        lines.append(" | ".join(str(c) for c in cells))

    lines.append("throughput share = rate under the limit / rate without gpuslice, same run; "
                 "util = mean GPU utilization (NVML, as nvidia-smi) during the window")
    row("method", "limit", *[f"{n:>11}" for n in names], "result")
    row("native", "  -  ", *[f"{'100.0':>6}/{native[n]['util']:>4.0f}" if native.get(n) and native[n].get("util") is not None
                             else f"{'n/a':>11}" for n in names], "(own time share, unlimited)")
    clock_notes = 0
    for label, res in report["configs"].items():
        if label == "native":
            continue
        method, limit = label.split("-")
        limit = int(limit)
        cells, ok = [], True
        for n in names:
            r, base = res.get(n), native.get(n)
            if not r or not base:
                cells.append(f"{'n/a':>11}")
                ok = False
                continue
            share = r["rate"] / base["rate"] * 100
            r["share"] = share
            if n == "light":
                good = share >= 95 if limit >= 50 else True
            elif n == "tiny":
                # Launch-bound: under a limit above its own time share (measured
                # unlimited, in the native row) it must keep >= 97% of its rate; under
                # a lower limit, its time share must land on the limit.
                own = base.get("util")
                if own is not None and limit >= own + 5:
                    good = share >= 97
                else:
                    good = r.get("util") is not None and abs(r["util"] - limit) <= 3
            else:
                good = abs(share - limit) <= 5
            ok &= good
            util = f"/{r['util']:.0f}" if r.get("util") is not None else ""
            # Off in throughput but on target in time, at a clock well above the
            # unlimited run's: the GPU's power cap, not the gate (docs/compute.md).
            clocked = (not good and r.get("util") is not None and abs(r["util"] - limit) <= 3
                       and (r.get("clock_mhz") or 0) >= 1.1 * (base.get("clock_mhz") or 1e9))
            if clocked:
                clock_notes += 1
            cells.append(f"{share:6.1f}{util:>5}" + ("c" if clocked else ""))
        verdict = "PASS" if ok else "FAIL"
        if method == "events" and not ok:
            fails += 1
        row(method, f"{limit:>5}", *cells, verdict + ("" if method == "events" else " (candidate)"))
    if clock_notes:
        lines.append("c: throughput off target, time share within 3 points, SM clock at least 10% above "
                     "the unlimited run's (which the power cap holds down): see docs/compute.md")
    if report["pair"]:
        p = report["pair"]
        ok = p["together"] >= 90 and abs(p["ratio_vs_3_7"] - 1) <= 0.10
        fails += not ok
        row("pair 30+70", f"{p['share_30']:.1f} + {p['share_70']:.1f} = {p['together']:.1f}%",
            f"ratio/(3:7) = {p['ratio_vs_3_7']:.3f}", "PASS" if ok else "FAIL")
    elif "pair" not in skip:
        fails += 1
        row("pair 30+70", "no result", "FAIL")
    if report["burst"]:
        b = report["burst"]
        ok = (b["alone"] or 0) >= 75 and b["fell_to_35_after_s"] is not None and b["fell_to_35_after_s"] <= 1.0
        fails += not ok
        row("burst 30/80", f"alone {b['alone']:.1f}%",
            f"<=35% after {b['fell_to_35_after_s']}s" if b["fell_to_35_after_s"] is not None else "never <=35%",
            f"then {b['with_other'] and round(b['with_other'], 1)}% (other slice {b['other']:.1f}%)",
            "PASS" if ok else "FAIL")
    elif "burst" not in skip:
        fails += 1
        row("burst 30/80", "no result", "FAIL")
    if report["light"]:
        lt = report["light"]
        ok = lt["ratio"] >= 95
        fails += not ok
        row("light loop", f"median {lt['limited_50']:.1f}/s under 50% vs {lt['native']:.1f}/s free, in turns",
            f"{lt['ratio']:.1f}% (rates /s, free then limited: {lt['rounds']})", "PASS" if ok else "FAIL")
    elif "light" not in skip:
        fails += 1
        row("light loop", "no result", "FAIL")
    if report["tiny"]:
        tn = report["tiny"]
        own = tn["own_util"]
        checked = [k for k in (50, 75) if own is None or k >= own + 5]
        ok = all(tn[f"ratio_{k}"] >= 97 for k in checked)
        fails += not ok
        row("tiny loop", f"own time share {own}%, free {tn['native']:.1f}/s, in turns",
            ", ".join(f"{tn[f'ratio_{k}']:.1f}% of it under {k}%" for k in (50, 75)),
            "PASS" if ok else "FAIL")
    elif "tiny" not in skip and args.tiny_rounds > 0:
        fails += 1
        row("tiny loop", "no result", "FAIL")
    lines.append("SM clock (MHz, mean of busy samples) / power (W), per workload:")
    for label, res in report["configs"].items():
        row(f"{label:>12}", *[f"{n} {res[n].get('clock_mhz')}/{res[n].get('power_w')}"
                              for n in names if n in res])
    lines.append(f"native rates (/s): " + ", ".join(f"{n}={native[n]['rate']:.1f}" for n in names if n in native))
    if args.reports:
        lines.append("interposer reports:")
        lines.extend("  " + r.split("gpuslice: ", 1)[-1] for r in REPORTS)
    lines.append(f"{fails} failed; total {time.time() - t_start:.0f}s")
    print("\n".join(lines))
    if os.environ.get("OUT"):
        report["interposer_reports"] = REPORTS
        with open(os.path.join(os.environ["OUT"], "compute-share.json"), "w") as f:
            json.dump(report, f, indent=1)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
