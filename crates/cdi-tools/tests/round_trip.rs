//! Round trip: specs written by gpuslice's own `cdi generate` code (the library function,
//! and the built `gpuslice` binary on the fake NVML) are read by the
//! `container-device-interface` crate as a runtime reads them (JSON schema, parsing,
//! validation), and injecting a slice into an OCI runtime config gives the container the
//! device nodes, mounts and environment of the slice.

use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cdi_tools::{CdiToolsError, inject, inject_json, load_cache, read_spec};
use gpuslice_cli::cdi::args::GenerateArgs;
use gpuslice_cli::cdi::host::HostGpu;
use gpuslice_cli::cdi::{CdiEnv, CdiError, generate};
use gpuslice_config::SliceConfig;
use oci_spec::runtime::{LinuxDeviceType, Spec as OciSpec};

const GIB: u64 = 1 << 30;
const U0: &str = "GPU-aaaa1111-0000-4000-8000-000000000000";
const U1: &str = "GPU-bbbb2222-0000-4000-8000-000000000000";

/// A host in a temporary folder: device nodes that are links to `/dev/null` (a real
/// character device the runtime can read numbers from), a fake interposer, and a driver
/// root with a fake libcuda and NVML.
struct FakeHost {
    root: tempfile::TempDir,
}

impl FakeHost {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let p = root.path();
        fs::create_dir_all(p.join("dev")).unwrap();
        for node in [
            "nvidia0",
            "nvidia1",
            "nvidiactl",
            "nvidia-uvm",
            "nvidia-uvm-tools",
        ] {
            symlink("/dev/null", p.join("dev").join(node)).unwrap();
        }
        fs::create_dir_all(p.join("lib")).unwrap();
        fs::write(p.join("lib/libgpuslice.so"), b"\x7fELF fake").unwrap();
        let drv = p.join("driver/usr/lib/x86_64-linux-gnu");
        fs::create_dir_all(&drv).unwrap();
        fs::write(drv.join("libcuda.so.570.1"), b"\x7fELF").unwrap();
        symlink("libcuda.so.570.1", drv.join("libcuda.so.1")).unwrap();
        fs::write(drv.join("libnvidia-ml.so.570.1"), b"\x7fELF").unwrap();
        symlink("libnvidia-ml.so.570.1", drv.join("libnvidia-ml.so.1")).unwrap();
        fs::create_dir_all(p.join("driver/usr/bin")).unwrap();
        fs::write(p.join("driver/usr/bin/nvidia-smi"), b"\x7fELF").unwrap();
        Self { root }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn args(&self, slices: &[&str]) -> GenerateArgs {
        GenerateArgs {
            slices: slices.iter().map(|s| s.to_string()).collect(),
            slices_file: None,
            output_dir: self.path("cdi"),
            state_dir: self.path("state"),
            agent_dir: self.path("run/agent"),
            lib: Some(self.path("lib/libgpuslice.so")),
            driver_libs: "on".into(),
            driver_root: self.path("driver"),
            dev_root: self.root.path().to_path_buf(),
            cdi_version: None,
            dry_run: false,
        }
    }

    /// Generates the usual three slices with gpuslice's code; returns the spec file.
    fn generate(&self) -> PathBuf {
        let args = self.args(&[
            "gpu0-8g=0:8GiB",
            "gpu1-4g-30=GPU-bbbb:4GiB:compute=30",
            "both=0,1:16GiB",
        ]);
        let generated = generate(&args, &CdiEnv::default(), machine).expect("generate");
        assert!(generated.warnings.is_empty(), "{:?}", generated.warnings);
        generated.path.expect("written")
    }

    fn dirs(&self) -> Vec<PathBuf> {
        vec![self.path("cdi")]
    }
}

fn machine() -> Result<Vec<HostGpu>, CdiError> {
    Ok(vec![
        HostGpu {
            index: 0,
            uuid: U0.into(),
            minor: 0,
            memory: None,
        },
        HostGpu {
            index: 1,
            uuid: U1.into(),
            minor: 1,
            memory: None,
        },
    ])
}

/// Major and minor number of the device `path` is (Linux's encoding of `dev_t`).
fn dev_numbers(path: &str) -> (i64, i64) {
    let rdev = fs::metadata(path).unwrap().rdev();
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as i64, minor as i64)
}

fn env_of(config: &OciSpec) -> Vec<String> {
    config
        .process()
        .as_ref()
        .and_then(|p| p.env().clone())
        .unwrap_or_default()
}

fn mount_of<'a>(config: &'a OciSpec, destination: &str) -> &'a oci_spec::runtime::Mount {
    config
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new(destination))
        .unwrap_or_else(|| panic!("no mount at {destination}"))
}

#[test]
fn our_spec_passes_the_schema_and_the_validation_of_the_cdi_crate() {
    let host = FakeHost::new();
    let path = host.generate();
    let spec = read_spec(&path).expect("the CDI crate accepts the spec");
    assert_eq!(spec.get_vendor(), "gpuslice.io");
    assert_eq!(spec.get_class(), "slice");
    let mut names: Vec<String> = spec.get_devices().keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["both", "gpu0-8g", "gpu1-4g-30"]);

    let mut cache = load_cache(&host.dirs()).unwrap();
    assert_eq!(
        cache.list_devices(),
        [
            "gpuslice.io/slice=both",
            "gpuslice.io/slice=gpu0-8g",
            "gpuslice.io/slice=gpu1-4g-30"
        ]
    );
}

#[test]
fn the_validation_is_real_a_broken_spec_is_refused() {
    let host = FakeHost::new();
    let path = host.generate();
    let good: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();

    let mut unknown_field = good.clone();
    unknown_field["devices"][0]["containerEdits"]["mounts"][0]["hostpath"] = "/x".into();
    let mut bad_name = good.clone();
    bad_name["devices"][0]["name"] = "-bad-".into();
    let mut bad_version = good.clone();
    bad_version["cdiVersion"] = "0.0.7".into();
    for (doc, reason) in [
        (unknown_field, "unknown field `hostpath`"),
        (bad_name, "device name"),
        (bad_version, "invalid version 0.0.7"),
    ] {
        fs::write(&path, serde_json::to_string(&doc).unwrap()).unwrap();
        let msg = read_spec(&path).expect_err(reason).to_string();
        assert!(
            msg.contains("gpuslice.io-slice.json") && msg.contains(reason),
            "{msg}"
        );
    }
    // And the untouched document passes.
    fs::write(&path, serde_json::to_string(&good).unwrap()).unwrap();
    read_spec(&path).unwrap();
}

#[test]
fn injecting_a_slice_gives_the_container_its_nodes_mounts_and_environment() {
    let host = FakeHost::new();
    host.generate();
    let mut cache = load_cache(&host.dirs()).unwrap();
    let mut config = OciSpec::default();
    inject(
        &mut cache,
        &host.dirs(),
        &["gpuslice.io/slice=gpu1-4g-30".into()],
        &mut config,
    )
    .expect("inject");

    // Environment: the slice's limits by UUID, its ledger, the shared folders.
    let env = env_of(&config);
    for expected in [
        "GPUSLICE_SLICE=gpu1-4g-30".to_string(),
        format!("GPUSLICE_MEMORY={U1}=4GiB"),
        "GPUSLICE_COMPUTE=30".into(),
        "GPUSLICE_LEDGER=/run/gpuslice/slice/ledger".into(),
        "GPUSLICE_GPU_DIR=/run/gpuslice/gpus".into(),
        "GPUSLICE_AGENT_SOCKET=/run/gpuslice/agent/agent.sock".into(),
    ] {
        assert!(env.contains(&expected), "{expected} missing from {env:?}");
    }
    assert!(
        env.iter().any(|e| e.starts_with("PATH=")),
        "the config's own env stays"
    );
    assert!(
        !env.iter().any(|e| e.contains("VISIBLE_DEVICES")),
        "{env:?}"
    );
    let pairs: Vec<(&str, &str)> = env.iter().filter_map(|e| e.split_once('=')).collect();
    let cfg = SliceConfig::from_vars(pairs).expect("the interposer accepts the environment");
    assert_eq!(cfg.memory.limit_for(Some(0), U1), Some(4 * GIB));
    assert_eq!(cfg.memory.limit_for(Some(0), U0), None);

    // Device nodes: only GPU 1's, plus the shared ones, with the numbers of the host's
    // nodes (links to /dev/null here), and allowed in the device cgroup.
    let (major, minor) = dev_numbers("/dev/null");
    let linux = config.linux().as_ref().unwrap();
    let nodes: Vec<(String, LinuxDeviceType, i64, i64)> = linux
        .devices()
        .as_ref()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d.path().display().to_string(),
                d.typ(),
                d.major(),
                d.minor(),
            )
        })
        .collect();
    let expected: Vec<(String, LinuxDeviceType, i64, i64)> = [
        "/dev/nvidia1",
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
        "/dev/nvidia-uvm-tools",
    ]
    .iter()
    .map(|p| (p.to_string(), LinuxDeviceType::C, major, minor))
    .collect();
    assert_eq!(nodes, expected);
    let allowed = linux
        .resources()
        .as_ref()
        .and_then(|r| r.devices().clone())
        .unwrap_or_default();
    assert!(
        allowed.iter().any(|rule| rule.allow()
            && rule.typ() == Some(LinuxDeviceType::C)
            && rule.major() == Some(major)
            && rule.minor() == Some(minor)
            && rule.access().as_deref() == Some("rwm")),
        "{allowed:?}"
    );

    // Mounts: the interposer and ld.so.preload read-only, the slice's folder and the
    // per-GPU folder read-write, the agent's folder and the pinned configuration
    // read-only, the driver files.
    let lib = host.path("lib/libgpuslice.so").canonicalize().unwrap();
    for (destination, source, mode) in [
        ("/usr/local/lib/gpuslice/libgpuslice.so", lib.clone(), "ro"),
        ("/etc/ld.so.preload", host.path("state/ld.so.preload"), "ro"),
        (
            "/run/gpuslice/slice",
            host.path("state/slices/gpu1-4g-30"),
            "rw",
        ),
        ("/run/gpuslice/gpus", host.path("state/gpus"), "rw"),
        ("/run/gpuslice/agent", host.path("run/agent"), "ro"),
        (
            "/run/gpuslice/slice.env",
            host.path("state/config/gpu1-4g-30.env"),
            "ro",
        ),
        (
            "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
            host.path("driver/usr/lib/x86_64-linux-gnu/libcuda.so.570.1")
                .canonicalize()
                .unwrap(),
            "ro",
        ),
        (
            "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
            host.path("driver/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.570.1")
                .canonicalize()
                .unwrap(),
            "ro",
        ),
        (
            "/usr/bin/nvidia-smi",
            host.path("driver/usr/bin/nvidia-smi")
                .canonicalize()
                .unwrap(),
            "ro",
        ),
    ] {
        let m = mount_of(&config, destination);
        assert_eq!(
            m.source().as_deref(),
            Some(source.as_path()),
            "{destination}"
        );
        assert_eq!(m.typ().as_deref(), Some("bind"), "{destination}");
        let options = m.options().clone().unwrap_or_default();
        assert_eq!(options, [mode, "nosuid", "nodev", "bind"], "{destination}");
        assert!(source.exists(), "{} is missing", source.display());
    }
    assert_eq!(
        fs::read_to_string(host.path("state/ld.so.preload")).unwrap(),
        "/usr/local/lib/gpuslice/libgpuslice.so\n"
    );
    // The runtime's own mounts stay.
    mount_of(&config, "/proc");

    // The ledger the container will join has the slice's limits.
    let ledger =
        gpuslice_ledger::Ledger::open(&host.path("state/slices/gpu1-4g-30/ledger")).unwrap();
    let devices = ledger.devices();
    assert_eq!(devices.len(), 1);
    assert_eq!((devices[0].uuid.as_str(), devices[0].limit), (U1, 4 * GIB));
}

#[test]
fn a_config_json_round_trips_and_the_slice_wins_over_its_variables() {
    let host = FakeHost::new();
    host.generate();
    let mut config = OciSpec::default();
    let mut process = config.process().clone().unwrap();
    process.set_env(Some(vec![
        "PATH=/usr/bin".into(),
        "GPUSLICE_MEMORY=80GiB".into(),
        "HOME=/root".into(),
    ]));
    config.set_process(Some(process));
    let input = serde_json::to_string(&config).unwrap();

    // A bare slice name means a gpuslice slice.
    let output = inject_json(&host.dirs(), &["both".into()], &input).unwrap();
    let config: OciSpec = serde_json::from_str(&output).expect("the output is a runtime config");
    let env = env_of(&config);
    let memory: Vec<&String> = env
        .iter()
        .filter(|e| e.starts_with("GPUSLICE_MEMORY="))
        .collect();
    assert_eq!(memory, [&format!("GPUSLICE_MEMORY={U0}=16GiB,{U1}=16GiB")]);
    assert_eq!(env[0], "PATH=/usr/bin");
    assert!(env.contains(&"HOME=/root".to_string()));
    let devices: Vec<String> = config
        .linux()
        .as_ref()
        .unwrap()
        .devices()
        .as_ref()
        .unwrap()
        .iter()
        .map(|d| d.path().display().to_string())
        .collect();
    assert_eq!(devices[..2], ["/dev/nvidia0", "/dev/nvidia1"]);
}

#[test]
fn one_slice_per_container_and_unknown_devices_are_named() {
    let host = FakeHost::new();
    host.generate();
    let input = serde_json::to_string(&OciSpec::default()).unwrap();
    let err = inject_json(&host.dirs(), &["gpu0-8g".into(), "both".into()], &input).unwrap_err();
    assert!(matches!(err, CdiToolsError::TwoSlices { .. }), "{err}");

    let err = inject_json(&host.dirs(), &["gpu9".into()], &input).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("gpuslice.io/slice=gpu9") && msg.contains("gpuslice.io/slice=gpu0-8g"),
        "{msg}"
    );
}

/// A runtime config as small as `crun spec` could be cut down to: no mounts, no devices.
const MINIMAL_CONFIG: &str = r#"{"ociVersion": "1.0.2", "process": {"user": {"uid": 0, "gid": 0},
    "args": ["sh"], "cwd": "/", "env": ["PATH=/usr/bin"]}, "root": {"path": "rootfs"}}"#;

/// The workspace's build folder (`target/debug`), where `cargo build --workspace` put the
/// `gpuslice` binary, the interposer and the fake NVML.
fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    for needed in ["gpuslice", "libgpuslice.so", "libnvidia_ml.so"] {
        assert!(
            dir.join(needed).exists(),
            "{} is missing: run `cargo build --workspace` before the tests",
            dir.join(needed).display()
        );
    }
    dir
}

#[test]
fn the_gpuslice_binary_on_the_fake_nvml_writes_a_spec_that_injects() {
    let build = build_dir();
    let host = FakeHost::new();
    let nvml = host.path("nvml");
    fs::create_dir_all(&nvml).unwrap();
    symlink(
        build.join("libnvidia_ml.so"),
        nvml.join("libnvidia-ml.so.1"),
    )
    .unwrap();

    let gpuslice = |args: &[&str]| {
        let out = Command::new(build.join("gpuslice"))
            .args(args)
            .env("LD_LIBRARY_PATH", &nvml)
            .env("FAKE_GPU_COUNT", "2")
            .env("FAKE_GPU_STATE", host.path("gpu.state"))
            .env_remove("GPUSLICE_LIB")
            .env_remove("LD_PRELOAD")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let s = |p: &str| host.path(p).display().to_string();
    let (ok, stdout, stderr) = gpuslice(&[
        "cdi",
        "generate",
        "--slice",
        "small=1:2GiB:compute=20",
        "--slice",
        "all-1g=all:1GiB",
        "--output-dir",
        &s("cdi"),
        "--state-dir",
        &s("state"),
        "--agent-dir",
        &s("run/agent"),
        "--dev-root",
        &s(""),
        "--driver-libs",
        "off",
    ]);
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("gpuslice.io/slice=small") && stdout.contains("gpuslice.io-slice.json"),
        "{stdout}"
    );

    let (ok, listed, stderr) = gpuslice(&["cdi", "list", "--output-dir", &s("cdi")]);
    assert!(ok, "{stderr}");
    assert_eq!(
        listed,
        "gpuslice.io/slice=small\ngpuslice.io/slice=all-1g\n"
    );

    read_spec(&host.path("cdi/gpuslice.io-slice.json")).expect("the CDI crate accepts it");

    // The fake GPUs' UUIDs and minor numbers come from NVML.
    let u = |n: u32| format!("GPU-00000000-0000-4000-8000-{n:012x}");
    let inject_bin = env!("CARGO_BIN_EXE_gpuslice-cdi-inject");
    let run_inject = |device: &str| {
        let mut child = Command::new(inject_bin)
            .args(["--spec-dir", &s("cdi"), "--device", device])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(MINIMAL_CONFIG.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run_inject("gpuslice.io/slice=small");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: OciSpec = serde_json::from_slice(&out.stdout).unwrap();
    let env = env_of(&config);
    assert!(
        env.contains(&format!("GPUSLICE_MEMORY={}=2GiB", u(1))),
        "{env:?}"
    );
    // A config with no mounts gets exactly the slice's, each with an absolute destination.
    let destinations: Vec<PathBuf> = config
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.destination().clone())
        .collect();
    assert_eq!(
        destinations,
        [
            "/usr/local/lib/gpuslice/libgpuslice.so",
            "/etc/ld.so.preload",
            "/run/gpuslice/slice",
            "/run/gpuslice/gpus",
            "/run/gpuslice/agent",
            "/run/gpuslice/slice.env"
        ]
        .map(PathBuf::from)
    );
    assert!(env.contains(&"GPUSLICE_COMPUTE=20".to_string()), "{env:?}");
    let first_node = config.linux().as_ref().unwrap().devices().as_ref().unwrap()[0].clone();
    assert_eq!(first_node.path(), Path::new("/dev/nvidia1"));

    let config: OciSpec = serde_json::from_slice(&run_inject("all-1g").stdout).unwrap();
    assert!(
        env_of(&config).contains(&format!("GPUSLICE_MEMORY={}=1GiB,{}=1GiB", u(0), u(1))),
        "{:?}",
        env_of(&config)
    );

    let out = run_inject("gpuslice.io/slice=nope");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gpuslice.io/slice=nope"), "{stderr}");

    // Without --slice the binary refuses and says what a slice is.
    let (ok, _, stderr) = gpuslice(&["cdi", "generate", "--output-dir", &s("cdi2")]);
    assert!(!ok);
    assert!(stderr.contains("--slice"), "{stderr}");
}

/// The spec `host` generates for `slices`, not written (`--dry-run`).
fn planned(host: &FakeHost, slices: &[&str]) -> gpuslice_cli::cdi::spec::Spec {
    let mut args = host.args(slices);
    args.dry_run = true;
    generate(&args, &CdiEnv::default(), machine)
        .expect("generate")
        .spec
}

/// gpuslice's version rule agrees with the CDI crate's `minimum_required_version` on
/// every kind of field it writes, and at every released version the crate accepts the
/// spec exactly when gpuslice would declare it.
#[test]
fn the_lowest_version_is_the_cdi_crates_and_every_higher_one_validates() {
    use container_device_interface::specs::config::Spec as RawSpec;
    use container_device_interface::version::minimum_required_version;
    use gpuslice_cli::cdi::version::{self, CdiVersion, KNOWN_VERSIONS};

    let host = FakeHost::new();
    let generated = planned(&host, &["gpu0-8g=0:8GiB", "both=0,1:16GiB"]);
    // Variants: the spec as generated (device nodes under --dev-root have a hostPath),
    // as on a host whose nodes are at /dev (no hostPath), without mount types, with a
    // name starting with a digit, with annotations, with a dotted class.
    let mut no_host_path = generated.clone();
    for d in &mut no_host_path.devices {
        for n in &mut d.container_edits.device_nodes {
            n.host_path = None;
        }
    }
    let mut bare = no_host_path.clone();
    for d in &mut bare.devices {
        for m in &mut d.container_edits.mounts {
            m.mount_type = None;
        }
    }
    let mut digit = no_host_path.clone();
    digit.devices[0].name = "0-8g".into();
    let mut annotated = no_host_path.clone();
    annotated
        .annotations
        .insert("gpuslice.io/generated-by".into(), "test".into());
    let mut dotted = no_host_path.clone();
    dotted.kind = "gpuslice.io/slice.v1".into();
    let cases = [
        (generated, "0.5.0"),
        (no_host_path, "0.4.0"),
        (bare, "0.3.0"),
        (digit, "0.5.0"),
        (annotated, "0.6.0"),
        (dotted, "0.6.0"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (spec, lowest)) in cases.into_iter().enumerate() {
        let ours = version::minimum_version(&spec);
        assert_eq!(ours.to_string(), lowest, "case {i}");
        let raw: RawSpec = serde_json::from_str(&spec.to_json()).unwrap();
        let crates = minimum_required_version(&raw).unwrap().to_string();
        assert_eq!(crates, lowest, "case {i}: the CDI crate's minimum");

        for target in KNOWN_VERSIONS {
            let mut at = spec.clone();
            at.cdi_version = target.to_string();
            let path = dir.path().join(format!("case{i}-{target}.json"));
            fs::write(&path, at.to_json()).unwrap();
            let crate_says = read_spec(&path);
            let we_say = version::choose(&spec, Some(target));
            assert_eq!(
                crate_says.is_ok(),
                we_say.is_ok(),
                "case {i} at {target}: crate {:?}, gpuslice {we_say:?}",
                crate_says.err().map(|e| e.to_string())
            );
            if target >= ours {
                assert!(we_say.is_ok(), "case {i} at {target}");
            }
        }
        assert!(ours >= CdiVersion::new(0, 3, 0));
    }
}

/// The spec written by default is one Podman 4.3 (Debian 12) reads: at most 0.5.0.
#[test]
fn the_default_spec_is_read_by_runtimes_that_know_0_5_0() {
    let host = FakeHost::new();
    let path = host.generate();
    let spec = read_spec(&path).unwrap();
    let declared: gpuslice_cli::cdi::version::CdiVersion = fs::read_to_string(&path)
        .unwrap()
        .parse::<serde_json::Value>()
        .unwrap()["cdiVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(declared <= gpuslice_cli::cdi::version::CdiVersion::new(0, 5, 0));
    assert_eq!(spec.get_class(), "slice");
}

/// A device that no spec offers is refused naming what is offered, and pointing to
/// `gpuslice cdi list` (Podman's own error lists nothing).
#[test]
fn an_unknown_device_is_refused_pointing_to_cdi_list() {
    let host = FakeHost::new();
    host.generate();
    let config = serde_json::to_string(&OciSpec::default()).unwrap();
    let err = inject_json(&host.dirs(), &["gpu9-1g".into()], &config).unwrap_err();
    assert!(matches!(err, CdiToolsError::Unresolved { .. }), "{err}");
    let msg = err.to_string();
    for part in [
        "offers gpuslice.io/slice=gpu9-1g",
        "gpuslice.io/slice=gpu0-8g",
        "`gpuslice cdi list`",
    ] {
        assert!(msg.contains(part), "{msg}");
    }
    let err = inject_json(&host.dirs(), &["a/b".into()], &config).unwrap_err();
    assert!(err.to_string().contains("`gpuslice cdi list`"), "{err}");
}
