#!/usr/bin/env python3
"""Scrape benchmark of the node agent's /metrics (issue 18: under 50 ms per scrape with
50 slices, memory flat over 10,000 scrapes).

It runs the real binaries on the fake GPU (no GPU needed): `gpuslice cdi generate` makes
SLICES slices' ledgers in a state folder (every other one compute-limited), a
`cuda-probe` holds memory in the first, and `gpuslice agent` serves /metrics for them
on a free port. Then it scrapes /metrics SCRAPES times, one connection each as a
Prometheus server without keep-alive would, and prints the scrape times (p50, p99, max)
and the agent's resident memory (VmRSS) at the start, after 1,000 and after 10,000
scrapes.

    cargo build --release -p gpuslice-cli -p gpuslice-interposer -p fake-cuda -p fake-nvml -p cuda-probe
    python3 bench/scrape_metrics.py [--build target/release] [--slices 50] [--scrapes 10000]

The numbers of a run are in docs/benchmarks.md.
"""

import argparse
import http.client
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_kib(pid):
    """The process's resident memory in KiB (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def scrape(addr):
    """One GET /metrics; returns (seconds, body length)."""
    host, port = addr.rsplit(":", 1)
    start = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - start
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"/metrics answered {response.status}")
    return elapsed, len(body)


def percentile(sorted_values, p):
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", default=str(ROOT / "target/release"),
                        help="folder with gpuslice, libgpuslice.so, libcuda.so, libnvidia_ml.so, cuda-probe")
    parser.add_argument("--slices", type=int, default=50)
    parser.add_argument("--scrapes", type=int, default=10_000)
    args = parser.parse_args()
    build = Path(args.build).resolve()
    for needed in ["gpuslice", "libgpuslice.so", "libcuda.so", "libnvidia_ml.so", "cuda-probe"]:
        if not (build / needed).exists():
            sys.exit(f"{build / needed} is missing: build it first (see the top of {__file__})")

    with tempfile.TemporaryDirectory(prefix="gpuslice-scrape-") as tmp:
        host = Path(tmp)
        libs = host / "lib"
        libs.mkdir()
        (libs / "libcuda.so.1").symlink_to(build / "libcuda.so")
        (libs / "libnvidia-ml.so.1").symlink_to(build / "libnvidia_ml.so")
        dev = host / "root/dev"
        dev.mkdir(parents=True)
        for node in ["nvidia0", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"]:
            (dev / node).symlink_to("/dev/null")
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        env.update({
            "LD_LIBRARY_PATH": str(libs),
            "FAKE_GPU_STATE": str(host / "gpu.state"),
            "FAKE_GPU_MEMORY": "80GiB",
            "FAKE_CUDA_CONTEXT_BYTES": "300MiB",
            "GPUSLICE_LEDGER_DIR": str(host / "ledgers"),
        })
        (host / "ledgers").mkdir()
        state = host / "state"

        # The slices: 1 GiB each on GPU 0, every other one limited to 1% of compute.
        specs = []
        for i in range(args.slices):
            specs += ["--slice", f"s{i:02}=0:1GiB" + (":compute=1" if i % 2 else "")]
        subprocess.run(
            [str(build / "gpuslice"), "cdi", "generate", *specs, "--driver-libs", "off",
             "--dev-root", str(host / "root"), "--output-dir", str(host / "cdi"),
             "--state-dir", str(state), "--agent-dir", str(host / "agent"),
             "--lib", str(build / "libgpuslice.so")],
            env=env, check=True, stdout=subprocess.DEVNULL)
        ledgers = sorted(state.glob("slices/*/ledger"))
        assert len(ledgers) == args.slices, f"{len(ledgers)} ledgers made"

        ready = host / "probe.ready"
        done = host / "probe.done"
        probe = subprocess.Popen(
            [str(build / "cuda-probe"), "init", "ctx", "alloc:100M", f"ready:{ready}", f"wait:{done}"],
            env={**env, "LD_PRELOAD": str(build / "libgpuslice.so"),
                 "GPUSLICE_LEDGER": str(ledgers[0]), "GPUSLICE_MEMORY": "1GiB"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log_path = host / "agent.log"
        agent = None
        try:
            deadline = time.monotonic() + 60
            while not ready.exists():
                if time.monotonic() > deadline or probe.poll() is not None:
                    sys.exit("the probe never got ready")
                time.sleep(0.01)
            with open(log_path, "w") as log:
                agent = subprocess.Popen(
                    [str(build / "gpuslice"), "agent", "--no-probe", "--memory-enforcement", "report",
                     "--metrics-addr", "127.0.0.1:0", "--socket", str(host / "agent/agent.sock"),
                     "--state-dir", str(state)],
                    env=env, stdout=subprocess.DEVNULL, stderr=log)
            addr = None
            deadline = time.monotonic() + 60
            while addr is None:
                m = re.search(r"serving metrics on http://([^/]+)/metrics", log_path.read_text())
                if m:
                    addr = m.group(1)
                elif time.monotonic() > deadline or agent.poll() is not None:
                    sys.exit(f"the agent never served metrics:\n{log_path.read_text()}")
                else:
                    time.sleep(0.05)

            # One scrape to warm up (the first NVML snapshot), then measure.
            _, size = scrape(addr)
            rss = {"start": rss_kib(agent.pid)}
            times = []
            for n in range(1, args.scrapes + 1):
                elapsed, size = scrape(addr)
                times.append(elapsed)
                if n == 1_000:
                    rss["after 1,000"] = rss_kib(agent.pid)
            rss[f"after {args.scrapes:,}"] = rss_kib(agent.pid)
        finally:
            done.write_text("done")
            if agent is not None:
                agent.send_signal(signal.SIGTERM)
                try:
                    agent.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait()
            try:
                probe.wait(timeout=10)
            except subprocess.TimeoutExpired:
                probe.kill()
                probe.wait()

    ms = sorted(t * 1000 for t in times)
    print(f"{args.slices} slices ({args.slices // 2} compute-limited), "
          f"{len(ms):,} scrapes of {size:,} bytes from {build / 'gpuslice'}")
    print(f"scrape time: p50 {statistics.median(ms):.2f} ms, p99 {percentile(ms, 99):.2f} ms, "
          f"max {ms[-1]:.2f} ms, mean {statistics.fmean(ms):.2f} ms")
    print("agent RSS: " + ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in rss.items()))


if __name__ == "__main__":
    main()
