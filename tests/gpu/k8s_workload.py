#!/usr/bin/env python3
"""The PyTorch workload and the verdicts of the Kubernetes checks
(k8s-device-plugin-check.sh, k8s-dra-check.sh).

  solo   --seconds S --out FILE
         on the host, in no slice: the matmul loop of compute_soak_worker.py alone on
         the GPU, for the baseline throughput.
  slice  --limit-mib L --ready FILE --go FILE --seconds S --out FILE
         in a container given a slice: torch.cuda.mem_get_info; the same loop, started
         when the GO file appears (both containers at once); nvidia-smi's process list
         and memory total; then memory in 256 MiB chunks until allocation is refused.
  table  --solo FILE --row NAME:LIMIT_MIB:COMPUTE:RESULT_JSON ...
         one row per container, PASS/FAIL; exits 1 if a check failed.

Every result is a JSON file; a stage that fails records its error there and the
stages after it still run where they can.
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compute_soak_worker import make_step, timed_run  # noqa: E402

MiB = 1 << 20
CHUNK = 256 * MiB
WORKLOAD = "matmul"
SMI_TIMEOUT = "20"
# Bounds of the verdicts.
OOM_SLACK_MIB = 1024
SHARE_POINTS = 5.0


def write(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def measure(torch, seconds, go=None, ready=None):
    """The loop's rate (steps per second) over `seconds`, after a warm-up step; waits
    for the `go` file first when given, after touching `ready`."""
    step, every = make_step(WORKLOAD, torch)
    step()
    torch.cuda.synchronize()
    if ready:
        open(ready, "w").close()
    deadline = time.time() + 120
    while go and not os.path.exists(go):
        if time.time() > deadline:
            raise TimeoutError(f"{go} did not appear within 120 s")
        time.sleep(0.002)
    n, t0, t1 = timed_run(step, every, seconds, torch)
    return {"steps": n, "start": t0, "seconds": t1 - t0, "rate": n / (t1 - t0)}


def smi(*query):
    """nvidia-smi --query-...=... as rows of stripped fields."""
    out = subprocess.run(["timeout", "-s", "KILL", SMI_TIMEOUT, "nvidia-smi", *query,
                          "--format=csv,noheader,nounits"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"nvidia-smi {' '.join(query)}: rc {out.returncode}: "
                           f"{(out.stderr or out.stdout).strip()[:300]}")
    return [[f.strip() for f in line.split(",")] for line in out.stdout.splitlines() if line.strip()]


def fill(torch, limit_mib):
    """Allocates CHUNK after CHUNK until refused (or past the limit plus 1 GiB)."""
    held = []
    cap = (limit_mib + 1024) * MiB
    r = {"chunk_mib": CHUNK // MiB}
    try:
        while len(held) * CHUNK < cap:
            held.append(torch.empty(CHUNK, dtype=torch.uint8, device="cuda"))
        r["error"] = f"no refusal up to {cap // MiB} MiB"
    except Exception as e:  # the verdict wants to know which exception it was
        free, total = torch.cuda.mem_get_info()
        r["exception"] = type(e).__module__ + "." + type(e).__name__
        r["clean_oom"] = isinstance(e, torch.OutOfMemoryError)
        r["message"] = str(e).splitlines()[0][:300] if str(e) else ""
        r["used_at_refusal_mib"] = (total - free) / MiB
    r["allocated_mib"] = len(held) * CHUNK / MiB
    del held
    torch.cuda.empty_cache()
    return r


def run_slice(a):
    r = {"pid": os.getpid(), "limit_mib": a.limit_mib}

    def stage(name, fn):
        try:
            r[name] = fn()
        except Exception as e:
            r[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
        write(a.out, r)

    import torch

    def mem():
        free, total = torch.cuda.mem_get_info()
        return {"total_bytes": total, "free_bytes": free}

    stage("mem", mem)
    stage("share", lambda: measure(torch, a.seconds, go=a.go, ready=a.ready))
    if not os.path.exists(a.ready):
        open(a.ready, "w").close()  # the loop failed before it: do not hold the other up

    def nvsmi():
        apps = smi("--query-compute-apps=pid,used_memory")
        gpu = smi("--query-gpu=memory.total")
        return {"apps": apps, "memory_total_mib": [row[0] for row in gpu]}

    stage("smi", nvsmi)
    stage("oom", lambda: fill(torch, a.limit_mib))
    r["done"] = True
    write(a.out, r)


def run_solo(a):
    import torch

    write(a.out, measure(torch, a.seconds))


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        return {"error": f"no result in {path}: {e}"}


def verdict(name, limit_mib, compute, r, solo_rate):
    """(cells, failures) of one container."""
    fails = []
    cells = {"container": name, "limit": f"{limit_mib} MiB/{compute or '-'}%"}
    m = r.get("mem", {})
    if "total_bytes" in m:
        cells["mem"] = f"{m['total_bytes'] / MiB:.0f}/{m['free_bytes'] / MiB:.0f}"
        if m["total_bytes"] != limit_mib * MiB:
            fails.append(f"mem_get_info total {m['total_bytes']} != {limit_mib * MiB}")
    else:
        cells["mem"] = "?"
        fails.append(f"mem_get_info: {m.get('error', r.get('error', 'missing'))}")
    o = r.get("oom", {})
    if "used_at_refusal_mib" in o:
        used = o["used_at_refusal_mib"]
        cells["oom"] = f"{used:.0f} ({o['allocated_mib']:.0f} in chunks)"
        if not o["clean_oom"]:
            fails.append(f"refused with {o['exception']}, not torch.OutOfMemoryError: {o['message']}")
        if not limit_mib - OOM_SLACK_MIB <= used <= limit_mib:
            fails.append(f"refused at {used:.0f} MiB, outside [{limit_mib - OOM_SLACK_MIB}, {limit_mib}]")
        if o["allocated_mib"] > limit_mib:
            fails.append(f"{o['allocated_mib']:.0f} MiB allocated, over the limit")
    else:
        cells["oom"] = "?"
        fails.append(f"oom: {o.get('error', 'missing')}")
    s = r.get("share", {})
    if "rate" in s and solo_rate:
        pct = 100.0 * s["rate"] / solo_rate
        want = compute or 100
        cells["share"] = f"{pct:.1f}% / {want}%"
        if abs(pct - want) > SHARE_POINTS:
            fails.append(f"share {pct:.1f}% is more than {SHARE_POINTS:.0f} points from {want}%")
    else:
        cells["share"] = "?"
        fails.append(f"share: {s.get('error', 'no rate')}" if "rate" not in s
                     else "share: no solo rate")
    q = r.get("smi", {})
    if "apps" in q:
        pids = [row[0] for row in q["apps"]]
        cells["smi_procs"] = " ".join(pids) or "none"
        cells["smi_total"] = ",".join(q["memory_total_mib"]) or "?"
        if pids != [str(r.get("pid"))]:
            fails.append(f"nvidia-smi lists {pids}, want only its own pid {r.get('pid')}")
        if q["memory_total_mib"] != [str(limit_mib)]:
            fails.append(f"nvidia-smi memory.total {q['memory_total_mib']}, want [{limit_mib}]")
    else:
        cells["smi_procs"] = cells["smi_total"] = "?"
        fails.append(f"nvidia-smi: {q.get('error', 'missing')}")
    if not r.get("done"):
        fails.append(f"the workload did not finish: {r.get('error', 'see its log')}")
    return cells, fails


def run_table(a):
    solo = load(a.solo)
    solo_rate = solo.get("rate")
    cols = [("container", 10), ("limit", 14), ("mem total/free", 15), ("OOM at MiB", 22),
            ("share got/want", 15), ("smi procs", 10), ("smi total", 9), ("result", 6)]
    keys = ["container", "limit", "mem", "oom", "share", "smi_procs", "smi_total", "result"]
    print(" | ".join(f"{c:<{w}}" for c, w in cols))
    print("-+-".join("-" * w for _, w in cols))
    failed = []
    for spec in a.row:
        name, limit, compute, path = spec.split(":", 3)
        cells, fails = verdict(name, int(limit), int(compute) if compute else None,
                               load(path), solo_rate)
        cells["result"] = "FAIL" if fails else "PASS"
        print(" | ".join(f"{cells.get(k, ''):<{w}}" for k, (_, w) in zip(keys, cols)))
        failed += [f"{name}: {f}" for f in fails]
    print(f"solo rate: {f'{solo_rate:.1f}' if solo_rate else solo.get('error', '?')} steps/s "
          f"({WORKLOAD}); share bound ±{SHARE_POINTS:.0f} points, OOM in [limit-{OOM_SLACK_MIB}, limit] MiB")
    for f in failed:
        print("FAILED " + f)
    return 1 if failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("solo")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--out", required=True)
    p = sub.add_parser("slice")
    p.add_argument("--limit-mib", type=int, required=True)
    p.add_argument("--ready", required=True)
    p.add_argument("--go", required=True)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--out", required=True)
    p = sub.add_parser("table")
    p.add_argument("--solo", required=True)
    p.add_argument("--row", action="append", default=[])
    a = ap.parse_args()
    if a.mode == "solo":
        run_solo(a)
    elif a.mode == "slice":
        run_slice(a)
    else:
        return run_table(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
