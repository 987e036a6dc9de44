#!/usr/bin/env python3
"""Judge `gpuslice status --json` output without depending on its exact schema.

Usage: status_check.py STATUS.json [--slice-name NAME] [--dead-pids 1,2]

Heuristics (the format is treated as opaque):
  * the slice is the smallest JSON object holding a string value == NAME
    (if NAME is not found, the whole document is examined);
  * a "process entry" is an object with an integer key named like pid
    (pid, process_id, os_pid, ...) or a value under a "proc*" key whose
    keys are all decimal pids;
  * a "charge" is a positive number under a key mentioning used/usage/
    charge/allocated/reserved/bytes, but not limit/total/peak/max/free.
FAIL when the JSON does not parse or any process entry carries a charge.
Prints one line: `STATUS ok=<0|1> slice_listed=<0|1> proc_entries=<n>
charged=<n> dead_listed=<n> pids=<...>` and exits 0/1.
"""

import argparse
import json
import os
import sys

PID_KEYS = {"pid", "process_id", "processid", "os_pid", "ospid", "host_pid"}
USAGE_WORDS = ("used", "usage", "charge", "allocated", "reserved", "bytes", "in_use", "inuse")
EXCLUDE_WORDS = ("limit", "total", "peak", "max", "capacity", "free", "pid")


def walk(obj, path=()):
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from walk(v, path + (str(k),))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from walk(v, path + (i,))


def charges(obj):
    out = []
    for path, v in walk(obj):
        if not path or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        key = next((p for p in reversed(path) if isinstance(p, str)), "")
        kl = key.lower()
        if any(w in kl for w in EXCLUDE_WORDS):
            continue
        if any(w in kl for w in USAGE_WORDS) and v > 0:
            out.append((".".join(map(str, path)), v))
    return out


def find_slice(doc, name):
    best = None
    for path, v in walk(doc):
        if isinstance(v, dict) and any(isinstance(x, str) and x == name for x in v.values()):
            if best is None or len(path) > len(best[0]):
                best = (path, v)
    return best[1] if best else None


def proc_entries(obj):
    entries = []
    for path, v in walk(obj):
        if isinstance(v, dict):
            for k, x in v.items():
                if str(k).lower() in PID_KEYS and isinstance(x, int) and not isinstance(x, bool):
                    entries.append((x, v))
                    break
            key = next((p for p in reversed(path) if isinstance(p, str)), "")
            if "proc" in key.lower() and v and all(str(k).isdigit() for k in v):
                for k, x in v.items():
                    entries.append((int(k), x))
    return entries


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--slice-name")
    ap.add_argument("--dead-pids", default="")
    a = ap.parse_args()
    dead = {int(x) for x in a.dead_pids.replace(" ", "").split(",") if x.isdigit()}
    try:
        with open(a.file) as f:
            text = f.read()
        doc = json.loads(text)
    except Exception as e:
        print("STATUS ok=0 error=unparsable(%s)" % type(e).__name__)
        return 1
    scope = doc
    listed = 0
    if a.slice_name:
        s = find_slice(doc, a.slice_name)
        if s is not None:
            scope, listed = s, 1
    entries = proc_entries(scope)
    charged = []
    for pid, ent in entries:
        c = charges(ent)
        if c:
            charged.append((pid, c, os.path.exists("/proc/%d" % pid)))
    dead_listed = sorted({pid for pid, _ in entries if pid in dead})
    for pid, c, alive in charged:
        print("charged pid=%d alive=%d %s" % (pid, alive, " ".join("%s=%s" % kv for kv in c[:4])), file=sys.stderr)
    ok = not charged
    print("STATUS ok=%d slice_listed=%d proc_entries=%d charged=%d dead_listed=%s pids=%s" % (
        ok, listed, len(entries), len(charged), ",".join(map(str, dead_listed)) or "-",
        ",".join(str(p) for p, _ in entries) or "-"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
