//! The pinned slice configuration (`/run/gpuslice/slice.env`, which the CDI spec mounts
//! read-only into containers). Each test runs the probe in a private mount namespace
//! whose `/run` is a fresh tmpfs holding the file, mounted read-only, as a container
//! runtime would: a process that drops or raises its variables still gets its slice, and
//! a broken file fails closed. These tests need root (mount namespaces); without it each
//! prints why it was skipped.

use std::path::Path;
use std::process::{Command, Stdio};

use system_tests::{Bench, GIB, Report, run};

const CUDA_ERROR_NOT_PERMITTED: u64 = 800;
const PINNED: &str = "/run/gpuslice/slice.env";

fn mount_namespaces_work() -> bool {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs gschk /run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

macro_rules! require_mount_namespaces {
    ($name:literal) => {
        if !mount_namespaces_work() {
            eprintln!(
                "SKIPPED {}: needs root and util-linux to make mount namespaces (`unshare --mount` failed here)",
                $name
            );
            return;
        }
    };
}

/// Runs the probe with the interposer, `env` and `steps` in a mount namespace where
/// [`PINNED`] holds `pinned` and is read-only.
fn with_pinned(bench: &Bench, pinned: &str, env: &[(&str, &str)], steps: &[&str]) -> Report {
    let script = "set -e; mount -t tmpfs gschk /run; mkdir -p /run/gpuslice; \
        printf '%s' \"$GS_PINNED_TEXT\" > /run/gpuslice/slice.env; unset GS_PINNED_TEXT; \
        mount --bind /run/gpuslice/slice.env /run/gpuslice/slice.env; \
        mount -o remount,bind,ro /run/gpuslice/slice.env; \
        if (echo x >> /run/gpuslice/slice.env) 2>/dev/null; then echo writable >&2; exit 9; fi; \
        exec \"$@\"";
    let mut cmd = bench.plain(Path::new("unshare"));
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .arg(bench.build.join("cuda-probe"))
    .args(steps)
    .env("LD_PRELOAD", bench.interposer())
    .env("GS_PINNED_TEXT", pinned)
    .envs(env.iter().copied());
    run(&mut cmd)
}

#[test]
fn the_pinned_file_holds_whatever_the_environment_says() {
    require_mount_namespaces!("the_pinned_file_holds_whatever_the_environment_says");
    let bench = Bench::new();
    let ledger = bench.ledger("pinned");
    let pinned = format!(
        "# a container's slice\nGPUSLICE_SLICE=pinned\nGPUSLICE_MEMORY=1GiB\nGPUSLICE_LEDGER={}\n",
        ledger.display()
    );
    let elsewhere = bench.ledger("mine").display().to_string();
    for env in [
        // The slice's variables gone from the environment,
        vec![],
        // raised, or pointed at another ledger: the file wins.
        vec![
            ("GPUSLICE_MEMORY", "64GiB"),
            ("CUDA_DEVICE_MEMORY_LIMIT", "64g"),
            ("GPUSLICE_LEDGER", elsewhere.as_str()),
        ],
    ] {
        let r = with_pinned(
            &bench,
            &pinned,
            &env,
            &["init", "ctx", "fill:64M", "meminfo"],
        );
        assert_eq!(r.rc("init"), 0, "{env:?}: {}", r.text());
        assert_eq!(r.num("meminfo", "total"), GIB, "{env:?}: {}", r.text());
        assert!(bench.peak(0) <= GIB, "{env:?}: peak {}", bench.peak(0));
        assert!(ledger.exists() && !Path::new(&elsewhere).exists());
    }
}

#[test]
fn a_broken_pinned_file_fails_closed_and_names_the_file() {
    require_mount_namespaces!("a_broken_pinned_file_fails_closed_and_names_the_file");
    let bench = Bench::new();
    let ledger = bench.ledger("ok").display().to_string();
    for pinned in [
        "GPUSLICE_MEMORY=lots\n",
        "GPUSLICE_MEMORY 1GiB\n",
        "# names nothing\n",
    ] {
        // A valid limit in the environment does not rescue it.
        let r = with_pinned(
            &bench,
            pinned,
            &[("GPUSLICE_MEMORY", "1GiB"), ("GPUSLICE_LEDGER", &ledger)],
            &["init", "ctx", "alloc:1M"],
        );
        assert_eq!(
            r.rc("init"),
            CUDA_ERROR_NOT_PERMITTED,
            "{pinned:?}: {}",
            r.text()
        );
        assert_eq!(r.rc("alloc:1M"), CUDA_ERROR_NOT_PERMITTED, "{}", r.text());
        assert!(
            r.stderr.contains(PINNED),
            "{pinned:?}: stderr should name {PINNED}: {}",
            r.stderr
        );
    }
}

#[test]
fn the_pinned_file_goes_through_the_same_checks_as_the_environment() {
    require_mount_namespaces!("the_pinned_file_goes_through_the_same_checks_as_the_environment");
    let bench = Bench::new();
    let ledger = bench.ledger("checked").display().to_string();
    for (pinned, var) in [
        (
            "CUDA_MEM_LIMIT_0=1GiB\nGPU_DEVICES_UUID=NaN\n",
            "GPU_DEVICES_UUID",
        ),
        (
            "CUDA_MEM_LIMIT_0=1GiB\nGPU_DEVICES_UUID=１００\n",
            "GPU_DEVICES_UUID",
        ),
        (
            "GPUSLICE_MEMORY=1GiB\nGPUSLICE_LEDGER=slice.ledger\n",
            "GPUSLICE_LEDGER",
        ),
        (
            "GPUSLICE_MEMORY=1GiB\nGPUSLICE_SMI_IOCTL=yes\n",
            "GPUSLICE_SMI_IOCTL",
        ),
        ("GPUSLICE_MEMORY=99=1GiB\n", "GPUSLICE_MEMORY"),
        (
            "GPUSLICE_COMPUTE=50\nGPUSLICE_COMPUTE_BURST=20\n",
            "GPUSLICE_COMPUTE_BURST",
        ),
    ] {
        let r = with_pinned(
            &bench,
            pinned,
            &[("GPUSLICE_MEMORY", "1GiB"), ("GPUSLICE_LEDGER", &ledger)],
            &["init", "ctx", "alloc:1M"],
        );
        assert_eq!(
            r.rc("init"),
            CUDA_ERROR_NOT_PERMITTED,
            "{pinned:?}: {}",
            r.text()
        );
        assert_eq!(
            r.rc("alloc:1M"),
            CUDA_ERROR_NOT_PERMITTED,
            "{pinned:?}: {}",
            r.text()
        );
        assert!(
            r.stderr.contains(var),
            "{pinned:?}: stderr should name {var}: {}",
            r.stderr
        );
    }
    // A slice of the whole GPU's time (as `gpuslice cdi generate` may write it) works.
    let pinned = format!("GPUSLICE_MEMORY=1GiB\nGPUSLICE_COMPUTE=100\nGPUSLICE_LEDGER={ledger}\n");
    let r = with_pinned(&bench, &pinned, &[], &["init", "ctx", "alloc:1M"]);
    assert_eq!(r.rc("alloc:1M"), 0, "{}", r.text());
}
