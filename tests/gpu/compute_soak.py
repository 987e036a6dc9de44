#!/usr/bin/env python3
"""Soak of co-located compute slices on a real GPU: nothing hangs, every process ends
soon after its program does, and the shares hold, through kills at random instants.

Each round starts 2 or 3 slices at once (`gpuslice run --compute P`), each running one
workload of compute_soak_worker.py (matmul, elementwise, CUDA graph, or a pair of
short-lived processes) after a start barrier. Each slice has a fate: it runs to its
end, or at a random instant it gets SIGTERM (through `gpuslice run`, which forwards it),
SIGKILL (its CUDA process, mid-run: often while it holds the GPU's turn), or SIGSTOP for
1.5 s and SIGCONT (a slice stopped while holding the turn: the others must go on).
Ledgers and the per-GPU turn files are never cleaned between rounds, so later rounds
start on top of what killed ones left in /dev/shm.

Measured per process: its exit time after its program's end (the worker prints its end
as its last line), or after the signal that killed it; a process still there 30 s after
it should have ended is a hang: its state, kernel stacks and (with cuda-gdb) user stacks
are saved, and it is killed. Shares are the workload's rate over its rate alone.

  python3 tests/gpu/compute_soak.py --runs 50 --bin-dir .gpu-carry --logdir /tmp/soak

Prints a table; exits 1 if any process hung or a program's exit took over 2 s.
"""
import argparse
import glob
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "compute_soak_worker.py")
COMBOS = [(30, 70), (50, 50), (20, 30, 50), (10, 40), (25, 25, 50), (40, 60), (15, 35, 50)]
WORKLOADS = ["matmul", "elementwise", "graph", "short"]
FATES = ["end"] * 6 + ["term", "kill", "stop"]
HANG_AFTER_S = 30.0


class Slice:
    def __init__(self, args, rnd, i, limit, workload, fate, seconds, start_file):
        self.tag = f"r{rnd}s{i}"
        self.limit, self.workload, self.fate, self.seconds = limit, workload, fate, seconds
        self.out_path = os.path.join(args.logdir, f"{self.tag}.out")
        self.err_path = os.path.join(args.logdir, f"{self.tag}.err")
        py = args.python
        worker = [py, WORKER, "--start-file", start_file]
        if workload == "short":
            one = " ".join(worker + ["--workload", "short", "--seconds", "0.3"])
            program = ["sh", "-c", f"{one} && {one}"]
        else:
            program = worker + ["--workload", workload, "--seconds", str(seconds)]
        cmd = [os.path.join(args.bin_dir, "gpuslice"), "run", "--compute", str(limit),
               "--memory", "16GiB", "--name", f"soak-{self.tag}", "--log", "warn", "--"] + program
        self.proc = subprocess.Popen(cmd, stdout=open(self.out_path, "w"),
                                     stderr=open(self.err_path, "w"), start_new_session=True)
        self.signal_at = None
        self.signalled = None
        self.exit_at = None
        self.hung = False

    def lines(self):
        out = []
        try:
            with open(self.out_path) as f:
                for line in f:
                    line = line.strip()
                    if line.startswith("{"):
                        try:
                            out.append(json.loads(line))
                        except ValueError:
                            pass
        except OSError:
            pass
        return out

    def worker_pid(self):
        pids = [d["ready"] for d in self.lines() if "ready" in d]
        return pids[-1] if pids else None

    def ready(self):
        return any("ready" in d for d in self.lines())

    def end(self):
        ends = [d for d in self.lines() if "end" in d]
        return ends[-1] if ends else None


def session_pids(sid):
    pids = []
    for d in glob.glob("/proc/[0-9]*"):
        try:
            with open(d + "/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:
                pids.append(int(d.rsplit("/", 1)[1]))
        except (OSError, ValueError, IndexError):
            pass
    return pids


def diagnose(s, logdir):
    """Everything that says where a hung slice's processes are stuck."""
    path = os.path.join(logdir, f"hang-{s.tag}.txt")
    with open(path, "w") as f:
        for pid in session_pids(s.proc.pid):
            f.write(f"== pid {pid}\n")
            for name in ("cmdline", "wchan", "status"):
                try:
                    with open(f"/proc/{pid}/{name}", "rb") as g:
                        text = g.read().replace(b"\0", b" ").decode(errors="replace")
                    if name == "status":
                        text = "".join(l + "\n" for l in text.splitlines() if l.startswith(("State", "SigBlk", "SigPnd", "ShdPnd")))
                    f.write(f"{name}: {text}\n")
                except OSError as e:
                    f.write(f"{name}: {e}\n")
            for task in sorted(glob.glob(f"/proc/{pid}/task/*")):
                try:
                    with open(task + "/stat") as g:
                        state = g.read().rsplit(")", 1)[1].split()[0]
                    with open(task + "/stack") as g:
                        stack = g.read()
                except OSError as e:
                    state, stack = "?", str(e)
                f.write(f"-- task {task.rsplit('/', 1)[1]} state {state}\n{stack}")
            gdb = subprocess.run(
                ["timeout", "-s", "KILL", "25", "cuda-gdb", "-p", str(pid), "-batch",
                 "-ex", "thread apply all bt 20"],
                capture_output=True, text=True)
            f.write("-- cuda-gdb\n" + gdb.stdout[-6000:] + gdb.stderr[-1000:] + "\n")
    return path


def solo_rates(args):
    rates = {}
    start = os.path.join(args.logdir, "solo.start")
    open(start, "w").close()
    for w in ("matmul", "elementwise", "graph"):
        out = subprocess.run(
            ["timeout", "-s", "KILL", "90", os.path.join(args.bin_dir, "gpuslice"), "run",
             "--memory", "16GiB", "--", args.python, WORKER, "--workload", w,
             "--seconds", str(args.seconds), "--start-file", start],
            capture_output=True, text=True)
        for line in out.stdout.splitlines():
            if line.startswith('{"end"'):
                rates[w] = json.loads(line)["rate"]
        if w not in rates:
            print(f"solo {w}: no rate (rc {out.returncode}): {out.stderr[-500:]}")
    return rates


def run_round(args, rnd, rng, results):
    combo = rng.choice(COMBOS)
    start_file = os.path.join(args.logdir, f"r{rnd}.start")
    slices = []
    for i, limit in enumerate(combo):
        workload = rng.choice(WORKLOADS)
        fate = rng.choice(FATES)
        slices.append(Slice(args, rnd, i, limit, workload, fate, args.seconds, start_file))
    deadline = time.time() + 120
    while time.time() < deadline and not all(s.ready() or s.proc.poll() is not None for s in slices):
        time.sleep(0.02)
    not_ready = [s for s in slices if not s.ready() and s.proc.poll() is None]
    open(start_file, "w").close()
    t0 = time.time()
    for s in slices:
        if s.fate != "end":
            s.signal_at = t0 + rng.uniform(0.2, max(0.3, args.seconds - 0.2))
    for s in not_ready:
        s.hung = True
    stopped = {}
    hang_deadline = t0 + args.seconds + HANG_AFTER_S
    while True:
        now = time.time()
        for s in slices:
            if s.exit_at is None and s.proc.poll() is not None:
                s.exit_at = now
            if s.signal_at and not s.signalled and now >= s.signal_at and s.exit_at is None:
                # The CUDA process running now (for a pair of short-lived ones, the
                # second may not have started yet: then try again on the next pass).
                pid = s.proc.pid if s.fate == "term" else s.worker_pid()
                sig = {"term": signal.SIGTERM, "kill": signal.SIGKILL, "stop": signal.SIGSTOP}[s.fate]
                try:
                    if pid:
                        os.kill(pid, sig)
                        s.signalled = now
                        if s.fate == "stop":
                            stopped[s.tag] = (pid, now + 1.5)
                except ProcessLookupError:
                    pass
        for tag, (pid, until) in list(stopped.items()):
            if now >= until:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                del stopped[tag]
        if all(s.exit_at is not None or s.hung for s in slices):
            break
        if now > hang_deadline:
            for s in slices:
                if s.exit_at is None:
                    s.hung = True
            break
        time.sleep(0.01)
    for s in slices:
        if s.hung:
            path = diagnose(s, args.logdir)
            print(f"HANG round {rnd} slice {s.tag} ({s.workload}, {s.limit}%, {s.fate}): {path}", flush=True)
            try:
                os.killpg(s.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        results["processes"] += 2 if s.workload == "short" else 1
        results["hangs"] += int(s.hung)
        results["fates"][s.fate] = results["fates"].get(s.fate, 0) + 1
        end = s.end()
        record = {"tag": s.tag, "workload": s.workload, "limit": s.limit, "fate": s.fate,
                  "hung": s.hung, "rc": s.proc.returncode}
        if s.hung:
            results["records"].append(record)
            continue
        # gpuslice run exits with 128 + the signal that ended the program. For a pair of
        # short-lived processes, the first one's end line says nothing of the second.
        ended_by_signal = s.proc.returncode in (128 + signal.SIGTERM, 128 + signal.SIGKILL)
        if s.fate in ("term", "kill") and s.signalled and (
                ended_by_signal or end is None or end["end"] > s.signalled):
            record["exit_after_signal_s"] = s.exit_at - s.signalled
            results["kill_exit"].append(record["exit_after_signal_s"])
        elif end is not None:
            record["exit_after_end_s"] = s.exit_at - end["end"]
            results["end_exit"].append(record["exit_after_end_s"])
        results["records"].append(record)
        if end is None and not s.signalled and s.proc.returncode != 0:
            results["failed"].append(f"{s.tag} rc={s.proc.returncode}: {open(s.err_path).read()[-300:]}")
    clean = all(s.fate == "end" and not s.hung for s in slices)
    for s in slices:
        end = s.end()
        if s.workload in results["solo"] and end and not s.hung:
            kind = "clean" if clean else ("beside-stop" if any(o.fate == "stop" for o in slices if o is not s) else "beside-kill")
            if s.fate == "end":
                results["shares"].append((kind, s.workload, s.limit, 100 * end["rate"] / results["solo"][s.workload]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--budget-s", type=float, default=420)
    ap.add_argument("--bin-dir", default=".gpu-carry")
    ap.add_argument("--logdir", default="/tmp/gpuslice-soak")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    args = ap.parse_args()
    args.bin_dir = os.path.abspath(args.bin_dir)
    os.makedirs(args.logdir, exist_ok=True)
    rng = random.Random(args.seed)
    t_begin = time.time()
    left = glob.glob("/dev/shm/gpuslice*/**", recursive=True)
    print(f"seed {args.seed}; {len(left)} entries under /dev/shm/gpuslice* before the soak", flush=True)
    results = {"processes": 0, "hangs": 0, "fates": {}, "end_exit": [], "kill_exit": [],
               "shares": [], "failed": [], "records": [], "solo": solo_rates(args)}
    print(f"solo rates: {results['solo']}", flush=True)
    rounds = 0
    for rnd in range(args.runs):
        if time.time() - t_begin > args.budget_s:
            print(f"budget of {args.budget_s} s spent after {rounds} rounds", flush=True)
            break
        run_round(args, rnd, rng, results)
        rounds += 1
        if rnd % 10 == 9:
            print(f"... {rounds} rounds, {results['hangs']} hangs", flush=True)
    ends = sorted(results["end_exit"])
    kills = sorted(results["kill_exit"])
    worst = max(ends) if ends else float("nan")
    print()
    print("compute soak | rounds | processes | hangs | exit after end: median / worst s | exit after SIGTERM/SIGKILL: worst s | fates")
    print(f"result       | {rounds} | {results['processes']} | {results['hangs']} | "
          f"{statistics.median(ends) if ends else float('nan'):.2f} / {worst:.2f} | "
          f"{max(kills) if kills else float('nan'):.2f} | {results['fates']}")
    print()
    print("shares (% of the workload's rate alone) | kind | workload | limit | n | mean | min | max")
    groups = {}
    for kind, w, limit, share in results["shares"]:
        groups.setdefault((kind, w, limit), []).append(share)
    for (kind, w, limit), v in sorted(groups.items()):
        print(f"share | {kind} | {w} | {limit} | {len(v)} | {statistics.mean(v):.1f} | {min(v):.1f} | {max(v):.1f}")
    with open(os.path.join(args.logdir, "records.jsonl"), "w") as f:
        for r in results["records"]:
            f.write(json.dumps(r) + "\n")
    slowest = sorted(results["records"], key=lambda r: -max(r.get("exit_after_end_s", 0), r.get("exit_after_signal_s", 0)))[:3]
    for r in slowest:
        print("slowest exit", json.dumps(r))
    for line in results["failed"]:
        print("FAILED", line)
    ok = results["hangs"] == 0 and (not ends or worst <= 2.0) and rounds > 0
    print(f"compute-soak | {'PASS' if ok else 'FAIL'} | {rounds} rounds, {results['hangs']} hangs, worst exit {worst:.2f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
