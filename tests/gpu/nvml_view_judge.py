#!/usr/bin/env python3
"""Judges the outputs of nvml-view-checks.sh. Prints one line per check:
`CHECK <name> <PASS|FAIL|SKIP> <detail>`. Exit status 0 if no check failed.

Inputs (files in --work): agent.log, work.pid (the PyTorch PID in its namespace),
host.pid (the host process's PID), ns-pids.txt (every PID of the namespace),
smi-table.out, smi-apps.out, smi-gpu.out, pynvml.out, pynvml-noagent.out, pynvml-bare.out.
"""

import argparse
import json
import os
import re
import sys

MIB = 1 << 20
LIMIT_MIB = 4096  # --limit-mib


def read(path, default=""):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--held-mib", type=int, default=1024)
    ap.add_argument("--limit-mib", type=int, default=4096)
    ap.add_argument("--container", action="store_true",
                    help="a container of container-checks.sh: its workload must be the only "
                    "GPU process listed, and the no-agent and bare runs are not made")
    a = ap.parse_args()
    global LIMIT_MIB
    LIMIT_MIB = a.limit_mib
    w = lambda name: os.path.join(a.work, name)  # noqa: E731

    results = []

    def check(name, ok, detail):
        results.append((name, "PASS" if ok else "FAIL", detail))

    def skip(name, detail):
        results.append((name, "SKIP", detail))

    agent_log = read(w("agent.log"))
    work_pid = int(read(w("work.pid"), "0").strip() or 0)
    host_pid = int(read(w("host.pid"), "0").strip() or 0)
    ns_pids = {int(p) for p in read(w("ns-pids.txt")).split() if p.isdigit()}
    if work_pid:
        ns_pids.add(work_pid)

    # 1. The agent's probe.
    m = re.search(r"driver mode (\S+) \(own utilization samples: (\S+)\)", agent_log)
    if m:
        check("agent-probe", m.group(1) != "unknown", f"mode={m.group(1)} own-samples={m.group(2)}")
    else:
        check("agent-probe", False, "no probe verdict in agent.log: " + agent_log.strip()[-160:])

    if not work_pid:
        for name in ("smi-query-gpu", "smi-compute-apps", "smi-table", "pynvml-memory",
                     "pynvml-processes", "pynvml-utilization", "pynvml-sessions",
                     "pynvml-no-agent", "bare-control"):
            check(name, False, "the PyTorch workload did not start (work.log)")
        return finish(results)

    def foreign(pids):
        """PIDs that are not the namespace's (host PIDs or another namespace's)."""
        return sorted(p for p in pids if p not in ns_pids)

    # 2. nvidia-smi --query-gpu=memory.total,memory.used
    text = read(w("smi-gpu.out")).strip()
    try:
        total, used = [int(float(x)) for x in text.splitlines()[0].split(",")]
        check("smi-query-gpu", total == LIMIT_MIB and a.held_mib <= used <= LIMIT_MIB,
              f"total={total}MiB used={used}MiB (want total {LIMIT_MIB}, used {a.held_mib}..{LIMIT_MIB})")
    except (ValueError, IndexError):
        check("smi-query-gpu", False, f"unreadable: {text[:120]!r} {read(w('smi-gpu.err'))[:120]!r}")

    # 3. nvidia-smi --query-compute-apps=pid,used_memory
    text = read(w("smi-apps.out")).strip()
    apps = []
    for line in text.splitlines():
        parts = [x.strip() for x in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit():
            mem = int(parts[1]) if parts[1].isdigit() else None
            apps.append((int(parts[0]), mem))
    pids = [p for p, _ in apps]
    bad = foreign(pids)
    work_mem = dict(apps).get(work_pid)
    only_own = pids == [work_pid] if a.container else work_pid in pids
    check("smi-compute-apps",
          only_own and not bad and host_pid not in pids and (work_mem or 0) >= a.held_mib,
          f"apps={apps} workload ns pid={work_pid} foreign={bad}")

    # 4. nvidia-smi (table)
    text = read(w("smi-table.out"))
    mem = re.findall(r"(\d+)MiB\s*/\s*(\d+)MiB", text)
    rows = []
    in_procs = False
    for line in text.splitlines():
        if "Processes:" in line:
            in_procs = True
            continue
        if in_procs:
            m2 = re.match(r"^\|\s+\d+\s+\S+\s+\S+\s+(\d+)\s+\S+\s+.*?(\d+)MiB\s*\|", line)
            if m2:
                rows.append((int(m2.group(1)), int(m2.group(2))))
    totals = sorted({int(t) for _, t in mem})
    row_pids = [p for p, _ in rows]
    only_own = row_pids == [work_pid] if a.container else work_pid in row_pids
    check("smi-table",
          totals == [LIMIT_MIB] and only_own and not foreign(row_pids),
          f"memory column totals={totals}MiB processes={rows}")

    # 5-8. pynvml through the interposer, with the agent.
    def load(name):
        try:
            return json.loads(read(w(name + ".out")) or "null")
        except json.JSONDecodeError:
            return None

    v = load("pynvml")
    if not v:
        for name in ("pynvml-memory", "pynvml-processes", "pynvml-utilization", "pynvml-sessions"):
            check(name, False, "no output: " + read(w("pynvml.err"))[-160:])
    else:
        m1, m2 = v.get("mem_v1") or {}, v.get("mem_v2") or {}
        ok = m1.get("total") == LIMIT_MIB * MIB and (not m2 or m2.get("total") == LIMIT_MIB * MIB)
        ok = ok and 0 <= m1.get("free", -1) <= m1.get("total", 0) and m1.get("used", 0) >= a.held_mib * MIB
        check("pynvml-memory", ok,
              f"v1 total/used={m1.get('total', 0) >> 20}/{m1.get('used', 0) >> 20}MiB "
              f"v2 total/used/reserved={m2.get('total', 0) >> 20}/{m2.get('used', 0) >> 20}/{m2.get('reserved', 0)} "
              f"{v['errors'].get('mem_v2', '')}")
        procs = v.get("compute") or []
        ppids = sorted(p["pid"] for p in procs)
        wmem = next((p["mem"] for p in procs if p["pid"] == work_pid), None)
        check("pynvml-processes",
              ppids == [work_pid] and (wmem or 0) >= a.held_mib * MIB,
              f"compute={[(p['pid'], (p['mem'] or 0) >> 20) for p in procs]} (MiB) want only {work_pid}")
        samples = v.get("samples") or []
        spids = sorted({s["pid"] for s in samples})
        rates = v.get("rates") or {}
        check("pynvml-utilization",
              not foreign(spids) and host_pid not in spids and 0 <= rates.get("gpu", -1) <= 100,
              f"sample pids={spids} rates={rates} host pid {host_pid} absent={host_pid not in spids} "
              f"{v['errors'].get('samples', '')}")
        acct = v.get("accounting_pids") or []
        enc = [s["pid"] for s in v.get("encoder") or []]
        fbc = [s["pid"] for s in v.get("fbc") or []]
        check("pynvml-sessions", not foreign(acct + enc + fbc),
              f"accounting mode={v.get('accounting_mode')} pids={acct} encoder={enc} fbc={fbc}")

    if a.container:
        return finish(results)

    # 9. Without the agent: the driver's own view, cut down to the slice.
    v = load("pynvml-noagent")
    if not v:
        check("pynvml-no-agent", False, "no output: " + read(w("pynvml-noagent.err"))[-160:])
    else:
        ppids = sorted(p["pid"] for p in v.get("compute") or [])
        spids = sorted({s["pid"] for s in v.get("samples") or []})
        total = (v.get("mem_v1") or {}).get("total")
        check("pynvml-no-agent",
              ppids == [work_pid] and not foreign(spids) and total == LIMIT_MIB * MIB,
              f"compute pids={ppids} sample pids={spids} total={(total or 0) >> 20}MiB")

    # 10. Control: outside any slice, the driver untouched.
    v = load("pynvml-bare")
    if not v:
        check("bare-control", False, "no output: " + read(w("pynvml-bare.err"))[-160:])
    else:
        total = (v.get("mem_v1") or {}).get("total") or 0
        spids = sorted({s["pid"] for s in v.get("samples") or []})
        check("bare-control", total > LIMIT_MIB * MIB,
              f"whole GPU total={total >> 20}MiB; raw sample pids={spids} "
              f"(host pid {host_pid} leaks: {host_pid in spids})")

    return finish(results)


def finish(results):
    for name, res, detail in results:
        print(f"CHECK {name} {res} {detail}")
    return 1 if any(r == "FAIL" for _, r, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
