//! Properties of the built `libgpuslice.so` itself: it exports only the symbols it means
//! to, needs nothing beyond the C library, and works when loaded through
//! `/etc/ld.so.preload` rather than `LD_PRELOAD`.

use std::process::Command;

use system_tests::{Bench, GIB, MIB, build_dir, run};

/// Every symbol the interposer exports, on purpose.
const EXPORTED: &[&str] = &[
    "cuArray3DCreate_v2",
    "cuArrayCreate_v2",
    "cuArrayDestroy",
    "cuCtxCreate",
    "cuCtxCreate_v2",
    "cuCtxCreate_v3",
    "cuCtxCreate_v4",
    "cuCtxDestroy",
    "cuCtxDestroy_v2",
    "cuCtxSynchronize",
    "cuCtxSynchronize_v2",
    "cuDeviceGraphMemTrim",
    "cuDevicePrimaryCtxRelease",
    "cuDevicePrimaryCtxRelease_v2",
    "cuDevicePrimaryCtxReset",
    "cuDevicePrimaryCtxReset_v2",
    "cuDevicePrimaryCtxRetain",
    "cuDeviceTotalMem_v2",
    "cuEventSynchronize",
    "cuGetProcAddress",
    "cuGetProcAddress_v2",
    "cuGraphExecDestroy",
    "cuGraphInstantiateWithFlags",
    "cuGraphInstantiateWithParams",
    "cuGraphInstantiateWithParams_ptsz",
    "cuGraphInstantiate_v2",
    "cuGraphLaunch",
    "cuGraphLaunch_ptsz",
    "cuGraphUpload",
    "cuGraphUpload_ptsz",
    "cuInit",
    "cuLaunchCooperativeKernel",
    "cuLaunchCooperativeKernel_ptsz",
    "cuLaunchKernel",
    "cuLaunchKernelEx",
    "cuLaunchKernelEx_ptsz",
    "cuLaunchKernel_ptsz",
    "cuMemAllocAsync",
    "cuMemAllocAsync_ptsz",
    "cuMemAllocFromPoolAsync",
    "cuMemAllocFromPoolAsync_ptsz",
    "cuMemAllocManaged",
    "cuMemAllocPitch_v2",
    "cuMemAlloc_v2",
    "cuMemCreate",
    "cuMemFreeAsync",
    "cuMemFreeAsync_ptsz",
    "cuMemFree_v2",
    "cuMemGetInfo_v2",
    "cuMemPoolCreate",
    "cuMemPoolDestroy",
    "cuMemPoolTrimTo",
    "cuMemRelease",
    "cuMipmappedArrayCreate",
    "cuMipmappedArrayDestroy",
    "cuStreamDestroy",
    "cuStreamDestroy_v2",
    "cuStreamSynchronize",
    "cuStreamSynchronize_ptsz",
    "dlsym",
    "ioctl",
    "nvmlDeviceGetAccountingPids",
    "nvmlDeviceGetAccountingStats",
    "nvmlDeviceGetComputeRunningProcesses",
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetEncoderSessions",
    "nvmlDeviceGetFBCSessions",
    "nvmlDeviceGetGraphicsRunningProcesses",
    "nvmlDeviceGetGraphicsRunningProcesses_v2",
    "nvmlDeviceGetGraphicsRunningProcesses_v3",
    "nvmlDeviceGetMPSComputeRunningProcesses",
    "nvmlDeviceGetMPSComputeRunningProcesses_v2",
    "nvmlDeviceGetMPSComputeRunningProcesses_v3",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetMemoryInfo_v2",
    "nvmlDeviceGetProcessUtilization",
    "nvmlDeviceGetProcessesUtilizationInfo",
    "nvmlDeviceGetRunningProcessDetailList",
    "nvmlDeviceGetUtilizationRates",
];

#[test]
fn exports_only_the_hooks() {
    let lib = build_dir().join("libgpuslice.so");
    let out = Command::new("readelf")
        .args(["--dyn-syms", "-W"])
        .arg(&lib)
        .output()
        .expect("readelf (binutils) is needed");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut defined: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // Num: Value Size Type Bind Vis Ndx Name
            (cols.len() >= 8 && cols[4] == "GLOBAL" && cols[6] != "UND")
                .then(|| cols[7].split('@').next().unwrap().to_string())
        })
        .collect();
    defined.sort();
    assert_eq!(defined, EXPORTED, "unexpected exported symbols");
}

#[test]
fn depends_only_on_the_c_runtime() {
    let lib = build_dir().join("libgpuslice.so");
    let out = Command::new("readelf")
        .args(["-d", "-W"])
        .arg(&lib)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines().filter(|l| l.contains("(NEEDED)")) {
        let ok = [
            "libc.so",
            "libgcc_s.so",
            "libm.so",
            "ld-linux",
            "libdl.so",
            "libpthread.so",
        ]
        .iter()
        .any(|n| line.contains(n));
        assert!(ok, "unexpected dependency: {line}");
    }
    assert!(
        !text.contains("libcuda"),
        "must not link the driver: it loads it at run time"
    );
}

#[test]
fn ioctls_other_than_the_process_list_reach_the_kernel_unchanged() {
    // The interposer exports `ioctl` (smi_ioctl.rs): everything but the driver's two
    // process-list controls must behave as without it, results and errors alike.
    let script = "import fcntl, os, struct, termios\n\
        r, w = os.pipe()\n\
        os.write(w, b'abcde')\n\
        n = struct.unpack('i', fcntl.ioctl(r, termios.FIONREAD, b'\\0' * 4))[0]\n\
        try:\n    fcntl.ioctl(r, termios.TIOCGWINSZ, b'\\0' * 8)\n    e = 0\n\
        except OSError as x:\n    e = x.errno\n\
        try:\n    fcntl.ioctl(987654, termios.FIONREAD, b'\\0' * 4)\n    b = 0\n\
        except OSError as x:\n    b = x.errno\n\
        print(n, e, b)\n";
    let run = |preload: bool| {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", script]);
        if preload {
            cmd.env("LD_PRELOAD", build_dir().join("libgpuslice.so"));
        }
        let out = cmd.output().expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // 5 bytes readable; not a terminal (ENOTTY 25); a bad descriptor (EBADF 9).
    assert_eq!(run(false), "5 25 9");
    assert_eq!(run(true), "5 25 9");
}

#[test]
fn ordinary_programs_run_unchanged_with_the_interposer_loaded() {
    let bench = Bench::new();
    let out = bench
        .plain(std::path::Path::new("sh"))
        .env("LD_PRELOAD", bench.interposer())
        .env("GPUSLICE_MEMORY", "1GiB")
        .args(["-c", "echo hello; ls / >/dev/null; python3 -c 'import ctypes; print(ctypes.CDLL(None).dlsym)'"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("hello"));
    assert!(
        out.stderr.is_empty(),
        "nothing is printed by processes that do not use CUDA: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Loads the interposer through `/etc/ld.so.preload` inside a private mount namespace:
/// a copy of `/etc` made of links to the real one, plus our `ld.so.preload`, is mounted
/// over `/etc` for the probe alone. Skipped where mount namespaces are not allowed.
#[test]
fn works_from_etc_ld_so_preload() {
    let bench = Bench::new();
    if !Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("skipped: cannot make a mount namespace here");
        return;
    }
    let root = bench.dir.path().join("etc-view");
    let script = format!(
        r#"set -e
T={root}
mkdir -p "$T/real" "$T/etc"
mount --bind /etc "$T/real"
for f in /etc/* /etc/.[!.]*; do [ -e "$f" ] && ln -s "$T/real/${{f#/etc/}}" "$T/etc/"; done
rm -f "$T/etc/ld.so.preload"
echo {lib} > "$T/etc/ld.so.preload"
mount --bind "$T/etc" /etc
exec {probe} init ctx totalmem fill:64M"#,
        root = root.display(),
        lib = bench.interposer().display(),
        probe = bench.build.join("cuda-probe").display(),
    );
    let mut cmd = bench.plain(std::path::Path::new("unshare"));
    cmd.args(["-m", "sh", "-c", &script]);
    cmd.env("GPUSLICE_MEMORY", "1GiB")
        .env("GPUSLICE_LEDGER", bench.ledger("preload"));
    let r = run(&mut cmd);
    assert_eq!(r.num("totalmem", "total"), GIB, "{}", r.text());
    assert_eq!(
        r.num("fill:64M", "bytes"),
        (GIB - 300 * MIB) / (64 * MIB) * 64 * MIB
    );
}
