//! A slice reaches a real OCI container through its CDI spec, with nothing else: the
//! fake GPU's nodes, `/etc/ld.so.preload` (no `LD_PRELOAD`), the slice's environment,
//! ledger and pinned configuration. `gpuslice cdi generate` writes the spec on the fake
//! NVML, `tests/gpu/container_bundle.py` writes a bundle whose image is the host's file
//! system, `gpuslice-cdi-inject` applies the device, and `runc` (or `crun`) runs
//! `cuda-probe` on the fake driver inside. The GPU version of this check is
//! `tests/gpu/container-checks.sh`.
//!
//! Needs root, python3 and `runc` or `crun`; without them the test prints why it was
//! skipped.

use std::path::Path;

use system_tests::{
    Bench, GIB, Report, inject_cdi_device, oci_runtime as runtime, probe_bundle, run, run_container,
};

#[test]
fn a_cdi_slice_holds_inside_a_real_container_even_when_its_variables_change() {
    let bench = Bench::new();
    let runtime = match runtime(&bench) {
        Ok(r) => r,
        Err(why) => {
            eprintln!("SKIPPED a_cdi_slice_holds_inside_a_real_container: {why}");
            return;
        }
    };
    let host = bench.dir.path();
    let s = |p: &Path| p.display().to_string();

    // The host: fake device nodes (links to /dev/null, which the runtime copies) and the
    // spec, written by the real binary on the fake NVML.
    system_tests::fake_device_nodes(host);
    let r = run(bench
        .plain(&bench.build.join("gpuslice"))
        .args([
            "cdi",
            "generate",
            "--slice",
            "c1=0:1GiB",
            "--driver-libs",
            "off",
        ])
        .args(["--dev-root", &s(&host.join("root"))])
        .args(["--output-dir", &s(&host.join("cdi"))])
        .args(["--state-dir", &s(&host.join("state"))])
        .args(["--agent-dir", &s(&host.join("agent"))])
        .args(["--lib", &s(&bench.interposer())]));
    assert!(
        r.lines.iter().any(|l| l.contains("gpuslice.io/slice=c1")),
        "{}",
        r.text()
    );

    let probe = s(&bench.build.join("cuda-probe"));
    // Inside: the probe as the image starts it, then again with its slice's variables
    // dropped and raised (the pinned configuration still holds it).
    let script = format!(
        "set -e; test -z \"$LD_PRELOAD\"; {probe} init ctx meminfo fill:64M; \
         env -u GPUSLICE_MEMORY -u GPUSLICE_LEDGER GPUSLICE_MEMORY=64GiB \
         CUDA_DEVICE_MEMORY_LIMIT=64g {probe} init ctx meminfo fill:64M"
    );
    // The image's environment asks for a bigger slice, which the device's edits replace.
    let bundle = host.join("bundle");
    probe_bundle(&bench, &bundle, "c1", host, &script);

    inject_cdi_device(&bench, &host.join("cdi"), "gpuslice.io/slice=c1", &bundle);
    let out = run_container(
        &runtime,
        &host.join("runtime-state"),
        &bundle,
        &format!("gs-c1-{}", std::process::id()),
        std::time::Duration::from_secs(120),
    );
    let r = Report::from(&out);
    assert!(out.status.success(), "{runtime} run failed: {}", r.text());
    assert_eq!(r.rc("init"), 0, "{}", r.text());
    let totals: Vec<&str> = r
        .lines
        .iter()
        .filter(|l| l.starts_with("meminfo "))
        .filter_map(|l| l.split(' ').find_map(|kv| kv.strip_prefix("total=")))
        .collect();
    let gib = GIB.to_string();
    assert_eq!(totals, [gib.as_str(), gib.as_str()], "{}", r.text());
    assert!(bench.peak(0) <= GIB, "peak {} > 1 GiB", bench.peak(0));
    // The slice's ledger is the host's, under the state folder.
    assert!(host.join("state/slices/c1/ledger").exists());
}
