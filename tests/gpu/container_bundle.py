#!/usr/bin/env python3
"""Writes an OCI bundle (config.json + rootfs/) for container-checks.sh.

The image is the host's own file system, read-only: the bundle's rootfs holds empty
mount points, and the config bind-mounts the host's /usr, /opt, ... there (the GPU
machine has no images and no network, and the check needs the host's python, torch and
nvidia-smi). /usr/local/lib is made of one mount per entry, so that the CDI edit can
add /usr/local/lib/gpuslice/ there. /etc is a copy, so that the CDI edit can mount /etc/ld.so.preload over a
file of the container's own. Everything else is what a container runtime gives any
container: its own PID, mount, IPC, UTS and cgroup namespaces, a fresh /proc, a tmpfs
/dev holding only the default nodes (the GPU's nodes come from the CDI edits), a device
cgroup that denies everything else, default capabilities and no new privileges.

  container_bundle.py --bundle DIR --name c1 --bind /path/rw:rw --bind /repo:ro \
      --env K=V ... -- CMD ARGS...
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_MKNOD",
    "CAP_AUDIT_WRITE",
]
# Top-level host folders the image is made of, when the host has them as folders.
IMAGE_DIRS = ["usr", "opt", "bin", "sbin", "lib", "lib32", "lib64", "libx32"]


def bind(dst, src, ro):
    opts = ["rbind", "nosuid", "nodev"] + (["ro"] if ro else ["rw"])
    return {"destination": dst, "type": "bind", "source": src, "options": opts}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--cgroup", default="", help="cgroupsPath; empty: let the runtime pick")
    ap.add_argument("--bind", action="append", default=[], help="PATH:ro|rw, mounted at the same path")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--hollow", action="append", default=["/usr/local/lib"],
                    help="an image folder whose entries are mounted one by one (default: "
                    "/usr/local/lib, where the CDI spec puts the interposer)")
    ap.add_argument("--python", help="also mount the folders this interpreter imports from, "
                    "where they lie outside the image's folders")
    ap.add_argument("cmd", nargs="+")
    a = ap.parse_args()

    root = os.path.join(a.bundle, "rootfs")
    if os.path.exists(a.bundle):
        shutil.rmtree(a.bundle)
    os.makedirs(root)
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=1g"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777"]},
        {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=755"]},
    ]
    def image(host):
        """Mounts host path `host` at the same place, read-only. Folders on the way to a
        --hollow path are made in the bundle instead, with their entries mounted one by
        one, so that the runtime can create mount points (the CDI edits') inside them."""
        target = root + host
        if os.path.islink(host):
            os.symlink(os.readlink(host), target)
        elif os.path.isdir(host):
            os.makedirs(target, exist_ok=True)
            if any(h == host or h.startswith(host + "/") for h in a.hollow):
                for entry in sorted(os.listdir(host)):
                    image(os.path.join(host, entry))
            else:
                mounts.append(bind(host, host, True))
        elif os.path.isfile(host):
            open(target, "w").close()
            mounts.append(bind(host, host, True))

    for d in IMAGE_DIRS:
        image("/" + d)
    for d in ("proc", "dev", "sys", "tmp", "run", "root", "var", "home"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    # /etc: a copy (symlinks kept), so that mounts can go over files in it.
    shutil.copytree("/etc", os.path.join(root, "etc"), symlinks=True,
                    ignore_dangling_symlinks=True,
                    ignore=lambda d, names: [n for n in names if n in ("ld.so.preload", "cdi")])
    binds = list(a.bind)
    if a.python:
        out = subprocess.run([a.python, "-c", "import sys; print(chr(10).join(sys.path))"],
                             capture_output=True, text=True, check=True).stdout
        for p in out.split():
            top = "/" + p.strip("/").split("/")[0]
            if p.startswith("/") and os.path.isdir(p) and top.strip("/") not in IMAGE_DIRS \
                    and not any(p.startswith(b.rpartition(":")[0] + "/") for b in binds):
                binds.append(p + ":ro")
    for spec in binds:
        path, _, mode = spec.rpartition(":")
        if mode not in ("ro", "rw") or not path.startswith("/"):
            sys.exit(f"--bind {spec!r}: want /ABSOLUTE/PATH:ro or :rw")
        os.makedirs(root + path, exist_ok=True)
        mounts.append(bind(path, path, mode == "ro"))

    config = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": a.cmd,
            "env": a.env,
            "cwd": "/",
            "capabilities": {k: CAPS for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": a.name,
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "cgroup")],
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
                            "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq",
                              "/proc/sys", "/proc/sysrq-trigger"],
        },
    }
    if a.cgroup:
        config["linux"]["cgroupsPath"] = a.cgroup
    with open(os.path.join(a.bundle, "config.json"), "w") as f:
        json.dump(config, f, indent=1)


if __name__ == "__main__":
    main()
