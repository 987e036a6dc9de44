#!/usr/bin/env python3
"""A process that cheats its slice (container-checks.sh, host enforcement).

It allocates CHUNK MiB through PyTorch, then zeroes every charge in its slice's ledger
(a file its container can write: the interposer's books), so that the interposer lets it
allocate CHUNK MiB more, past the slice's limit. The agent on the host, which counts what
NVML says the slice's processes hold, must then kill it. Prints what happened; if it is
still alive WAIT seconds later it prints NOT KILLED and exits 0.

  ledger_tamper.py --chunk-mib 2048 --wait 20
"""
import argparse
import mmap
import os
import struct
import sys
import time

PINNED = "/run/gpuslice/slice.env"


def ledger_path():
    with open(PINNED) as f:
        for line in f:
            if line.startswith("GPUSLICE_LEDGER="):
                return line.split("=", 1)[1].strip()
    return os.environ.get("GPUSLICE_LEDGER")


def zero_charges(path):
    """Zeroes charge[device] of every process entry; returns how many were non-zero."""
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        m = mmap.mmap(fd, size)
        header_bytes, = struct.unpack_from("<I", m, 12)
        max_devices, max_processes, device_bytes, process_bytes = struct.unpack_from("<IIII", m, 24)
        first = header_bytes + max_devices * device_bytes
        cleared = 0
        for slot in range(max_processes):
            base = first + slot * process_bytes + 32  # owner, start_time, pid_ns, reserved
            for d in range(max_devices):
                off = base + 8 * d
                if struct.unpack_from("<Q", m, off)[0]:
                    struct.pack_into("<Q", m, off, 0)
                    cleared += 1
        m.flush()
        return cleared
    finally:
        os.close(fd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunk-mib", type=int, default=2048)
    ap.add_argument("--wait", type=float, default=20.0)
    args = ap.parse_args()
    import torch

    chunk = args.chunk_mib << 20
    first = torch.empty(chunk, dtype=torch.uint8, device="cuda")
    first.fill_(1)
    path = ledger_path()
    if not path:
        print("NO LEDGER")
        return 2
    cleared = zero_charges(path)
    try:
        second = torch.empty(chunk, dtype=torch.uint8, device="cuda")
        second.fill_(1)
    except torch.OutOfMemoryError:
        print(f"REFUSED after clearing {cleared} charges (the books were not fooled)")
        return 3
    free, total = torch.cuda.mem_get_info()
    print(f"ALLOCATED {2 * args.chunk_mib} MiB past the books (cleared {cleared} charges; "
          f"slice total {total >> 20} MiB)", flush=True)
    time.sleep(args.wait)
    print("NOT KILLED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
