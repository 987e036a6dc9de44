//! `cdi generate` and `cdi list` from flags to files, on a fake host: device nodes that
//! are links to `/dev/null`, a fake interposer and fake driver files.

use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};

use clap::Parser;

use std::path::{Path, PathBuf};

use super::*;
use crate::cli::{Cli, Command};
use host::HostGpu;
use spec::Spec;

const GIB: u64 = 1 << 30;
const U0: &str = "GPU-aaaa1111-0000-4000-8000-000000000000";
const U1: &str = "GPU-bbbb2222-0000-4000-8000-000000000000";

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
        fs::create_dir_all(p.join("bin")).unwrap();
        fs::write(p.join("bin/libgpuslice.so"), b"\x7fELF fake").unwrap();
        let lib = p.join("driver/usr/lib64");
        fs::create_dir_all(&lib).unwrap();
        fs::write(lib.join("libcuda.so.560.1"), b"\x7fELF").unwrap();
        symlink("libcuda.so.560.1", lib.join("libcuda.so.1")).unwrap();
        fs::write(lib.join("libnvidia-ml.so.1"), b"\x7fELF").unwrap();
        Self { root }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn args(&self, extra: &[&str]) -> GenerateArgs {
        let fixed = [
            "--output-dir".to_string(),
            self.path("cdi").display().to_string(),
            "--state-dir".into(),
            self.path("state").display().to_string(),
            "--agent-dir".into(),
            self.path("run/agent").display().to_string(),
            "--dev-root".into(),
            self.root.path().display().to_string(),
            "--driver-root".into(),
            self.path("driver").display().to_string(),
        ];
        let argv = ["gpuslice", "cdi", "generate"]
            .into_iter()
            .map(String::from)
            .chain(fixed)
            .chain(extra.iter().map(|s| s.to_string()));
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Cdi(args::CdiArgs {
                command: CdiCommand::Generate(g),
            }) => *g,
            other => panic!("{other:?}"),
        }
    }

    fn env(&self) -> CdiEnv {
        CdiEnv {
            lib: None,
            exe: Some(self.path("bin/gpuslice")),
        }
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

fn edits_of<'a>(spec: &'a Spec, name: &str) -> &'a spec::ContainerEdits {
    &spec
        .devices
        .iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("no device {name}"))
        .container_edits
}

#[test]
fn generate_writes_the_spec_and_the_host_files() {
    let host = FakeHost::new();
    let args = host.args(&[
        "--slice",
        "gpu0-8g=0:8GiB",
        "--slice",
        "gpu1-4g-30=GPU-bbbb:4GiB:compute=30",
        "--slice",
        "both=0,1:16GiB",
    ]);
    let generated = generate(&args, &host.env(), machine).unwrap();
    assert!(generated.warnings.is_empty(), "{:?}", generated.warnings);
    let path = generated.path.clone().unwrap();
    assert_eq!(path, host.path("cdi/gpuslice.io-slice.json"));
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o644);
    let spec = Spec::read(&path).unwrap();
    assert_eq!(spec, generated.spec);
    assert_eq!(spec.kind, KIND);
    // The lowest version with every field used: the device nodes have a hostPath (they
    // live under --dev-root), which needs 0.5.0.
    assert_eq!(spec.cdi_version, "0.5.0");
    assert_eq!(
        spec.qualified_names(),
        [
            "gpuslice.io/slice=gpu0-8g",
            "gpuslice.io/slice=gpu1-4g-30",
            "gpuslice.io/slice=both"
        ]
    );

    let one = edits_of(&spec, "gpu1-4g-30");
    let nodes: Vec<(&str, Option<&str>)> = one
        .device_nodes
        .iter()
        .map(|n| (n.path.as_str(), n.host_path.as_deref()))
        .collect();
    let host_dev = |n: &str| host.path("dev").join(n).display().to_string();
    assert_eq!(
        nodes,
        [
            ("/dev/nvidia1", Some(&*host_dev("nvidia1"))),
            ("/dev/nvidiactl", Some(&*host_dev("nvidiactl"))),
            ("/dev/nvidia-uvm", Some(&*host_dev("nvidia-uvm"))),
            (
                "/dev/nvidia-uvm-tools",
                Some(&*host_dev("nvidia-uvm-tools"))
            ),
        ]
    );
    assert!(one.env.contains(&format!("GPUSLICE_MEMORY={U1}=4GiB")));
    assert!(one.env.contains(&"GPUSLICE_COMPUTE=30".to_string()));
    let both = edits_of(&spec, "both");
    assert_eq!(both.device_nodes[0].path, "/dev/nvidia0");
    assert_eq!(both.device_nodes[1].path, "/dev/nvidia1");
    assert!(
        both.env
            .contains(&format!("GPUSLICE_MEMORY={U0}=16GiB,{U1}=16GiB"))
    );

    // The mounts name real host paths that now exist.
    let lib = host.path("bin/libgpuslice.so").canonicalize().unwrap();
    let sources: Vec<(&str, &str)> = both
        .mounts
        .iter()
        .map(|m| (m.container_path.as_str(), m.host_path.as_str()))
        .collect();
    let state = |rel: &str| host.path("state").join(rel).display().to_string();
    let driver_lib = host
        .path("driver/usr/lib64/libcuda.so.560.1")
        .canonicalize()
        .unwrap()
        .display()
        .to_string();
    assert_eq!(
        sources,
        [
            (CONTAINER_LIB, &*lib.display().to_string()),
            ("/etc/ld.so.preload", &*state("ld.so.preload")),
            ("/run/gpuslice/slice", &*state("slices/both")),
            ("/run/gpuslice/gpus", &*state("gpus")),
            (
                "/run/gpuslice/agent",
                &*host.path("run/agent").display().to_string()
            ),
            ("/run/gpuslice/slice.env", &*state("config/both.env")),
            ("/usr/lib64/libcuda.so.1", &*driver_lib),
            ("/usr/lib64/libcuda.so.560.1", &*driver_lib),
            (
                "/usr/lib64/libnvidia-ml.so.1",
                &*host
                    .path("driver/usr/lib64/libnvidia-ml.so.1")
                    .canonicalize()
                    .unwrap()
                    .display()
                    .to_string()
            ),
        ]
    );
    for m in &both.mounts {
        assert!(
            Path::new(&m.host_path).exists(),
            "{} is missing",
            m.host_path
        );
    }
    let ledger = gpuslice_ledger::Ledger::open(&host.path("state/slices/both/ledger")).unwrap();
    let limits: Vec<(String, u64)> = ledger
        .devices()
        .into_iter()
        .map(|d| (d.uuid, d.limit))
        .collect();
    assert_eq!(
        limits,
        [(U0.to_string(), 16 * GIB), (U1.to_string(), 16 * GIB)]
    );
    assert_eq!(generated.report.len(), 6, "{:?}", generated.report);

    // `cdi list` prints what was written.
    let listed = list(Some(&host.path("cdi"))).unwrap();
    assert_eq!(
        listed,
        "gpuslice.io/slice=gpu0-8g\ngpuslice.io/slice=gpu1-4g-30\ngpuslice.io/slice=both\n"
    );
}

#[test]
fn dry_runs_create_nothing() {
    let host = FakeHost::new();
    let args = host.args(&["--slice", "a=0:1GiB", "--dry-run"]);
    let generated = generate(&args, &host.env(), machine).unwrap();
    assert_eq!(generated.path, None);
    assert_eq!(generated.spec.devices.len(), 1);
    assert!(!host.path("cdi").exists());
    assert!(!host.path("state").exists());
    assert!(!host.path("run").exists());
}

#[test]
fn without_slices_nothing_is_offered() {
    let host = FakeHost::new();
    let err = generate(&host.args(&[]), &host.env(), || {
        panic!("NVML must not be asked")
    })
    .unwrap_err();
    assert!(matches!(err, CdiError::NoSlices), "{err}");
    assert!(err.to_string().contains("--slice"), "{err}");
    assert!(!host.path("cdi").exists());
}

#[test]
fn slices_from_a_file_join_the_flags() {
    let host = FakeHost::new();
    let file = host.path("slices.json");
    fs::write(
        &file,
        r#"{"slices": [{"name": "f1", "gpus": "1", "memory": "2GiB", "compute": 50}]}"#,
    )
    .unwrap();
    let args = host.args(&[
        "--slice",
        "a=0:1GiB",
        "--slices-file",
        &file.display().to_string(),
        "--dry-run",
    ]);
    let spec = generate(&args, &host.env(), machine).unwrap().spec;
    assert_eq!(
        spec.qualified_names(),
        ["gpuslice.io/slice=a", "gpuslice.io/slice=f1"]
    );
    assert!(
        edits_of(&spec, "f1")
            .env
            .contains(&"GPUSLICE_COMPUTE=50".to_string())
    );
}

#[test]
fn driver_libraries_follow_the_flag() {
    let host = FakeHost::new();
    let spec = generate(
        &host.args(&["--slice", "a=0:1GiB", "--driver-libs", "off", "--dry-run"]),
        &host.env(),
        machine,
    )
    .unwrap()
    .spec;
    assert_eq!(spec.devices[0].container_edits.mounts.len(), 6);

    fs::remove_file(host.path("driver/usr/lib64/libnvidia-ml.so.1")).unwrap();
    let generated = generate(
        &host.args(&["--slice", "a=0:1GiB", "--dry-run"]),
        &host.env(),
        machine,
    )
    .unwrap();
    assert!(
        generated.warnings[0].contains("libnvidia-ml.so.1"),
        "{:?}",
        generated.warnings
    );
    assert_eq!(generated.spec.devices[0].container_edits.mounts.len(), 8);

    let err = generate(
        &host.args(&["--slice", "a=0:1GiB", "--driver-libs", "on", "--dry-run"]),
        &host.env(),
        machine,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("--driver-libs on") && err.contains("libnvidia-ml.so.1"),
        "{err}"
    );

    let err = generate(
        &host.args(&["--slice", "a=0:1GiB", "--driver-libs", "maybe"]),
        &host.env(),
        machine,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--driver-libs \"maybe\""), "{err}");
}

#[test]
fn missing_device_nodes_stop_or_warn() {
    let host = FakeHost::new();
    fs::remove_file(host.path("dev/nvidia-uvm")).unwrap();
    fs::remove_file(host.path("dev/nvidia-uvm-tools")).unwrap();
    let generated = generate(
        &host.args(&["--slice", "a=0:1GiB", "--dry-run"]),
        &host.env(),
        machine,
    )
    .unwrap();
    assert!(
        generated.warnings[0].contains("nvidia-uvm"),
        "{:?}",
        generated.warnings
    );
    let paths: Vec<&str> = generated.spec.devices[0]
        .container_edits
        .device_nodes
        .iter()
        .map(|n| n.path.as_str())
        .collect();
    assert_eq!(paths, ["/dev/nvidia0", "/dev/nvidiactl"]);

    fs::remove_file(host.path("dev/nvidia1")).unwrap();
    fs::write(host.path("dev/nvidia1"), "").unwrap();
    let err = generate(
        &host.args(&["--slice", "a=1:1GiB", "--dry-run"]),
        &host.env(),
        machine,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("nvidia1")
            && err.contains("not a character device")
            && err.contains(U1)
            && err.contains("--dev-root"),
        "{err}"
    );

    fs::remove_file(host.path("dev/nvidiactl")).unwrap();
    let err = generate(
        &host.args(&["--slice", "a=0:1GiB", "--dry-run"]),
        &host.env(),
        machine,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("nvidiactl") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn the_library_is_found_like_gpuslice_run_finds_it() {
    let host = FakeHost::new();
    let env = CdiEnv {
        lib: None,
        exe: Some(PathBuf::from("/nonexistent/bin/gpuslice")),
    };
    let err = generate(
        &host.args(&["--slice", "a=0:1GiB", "--dry-run"]),
        &env,
        machine,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("libgpuslice.so") && err.contains("--lib"),
        "{err}"
    );

    let lib = host.path("bin/libgpuslice.so").display().to_string();
    let canonical = host.path("bin/libgpuslice.so").canonicalize().unwrap();
    let spec = generate(
        &host.args(&["--slice", "a=0:1GiB", "--dry-run", "--lib", &lib]),
        &env,
        machine,
    )
    .unwrap()
    .spec;
    assert_eq!(
        spec.devices[0].container_edits.mounts[0].host_path,
        canonical.display().to_string()
    );
}

#[test]
fn list_without_a_spec_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let err = list(Some(dir.path())).unwrap_err().to_string();
    assert!(
        err.contains(&*dir.path().join(SPEC_FILE).display().to_string())
            && err.contains("cdi generate"),
        "{err}"
    );
}

#[test]
fn driver_libs_values() {
    assert_eq!(DriverLibs::parse("AUTO").unwrap(), DriverLibs::Auto);
    assert_eq!(DriverLibs::parse("on").unwrap(), DriverLibs::On);
    assert_eq!(DriverLibs::parse("off").unwrap(), DriverLibs::Off);
    assert!(DriverLibs::parse("").is_err());
}

#[test]
fn cdi_version_overrides_the_lowest_and_is_refused_when_too_low() {
    let host = FakeHost::new();
    let slice = ["--slice", "a=0:1GiB", "--dry-run"];
    let with = |version: &str| {
        let mut argv = slice.to_vec();
        argv.extend(["--cdi-version", version]);
        generate(&host.args(&argv), &host.env(), machine)
    };
    assert_eq!(with("0.6.0").unwrap().spec.cdi_version, "0.6.0");
    assert_eq!(with("v1.1.0").unwrap().spec.cdi_version, "1.1.0");
    assert_eq!(with("0.5.0").unwrap().spec.cdi_version, "0.5.0");
    let msg = with("0.4.0").unwrap_err().to_string();
    assert!(
        msg.starts_with("--cdi-version: CDI version 0.4.0 is too low"),
        "{msg}"
    );
    assert!(
        msg.contains("deviceNodes[].hostPath (device a) needs 0.5.0"),
        "{msg}"
    );
    let msg = with("0.9.0").unwrap_err().to_string();
    assert!(
        msg.contains("--cdi-version") && msg.contains("\"0.9.0\""),
        "{msg}"
    );
    // A refused version stops generation before anything is written.
    let args = host.args(&["--slice", "a=0:1GiB", "--cdi-version", "0.4.0"]);
    assert!(generate(&args, &host.env(), machine).is_err());
    assert!(!host.path("cdi").exists());
    assert!(!host.path("state").exists());
}

#[test]
fn generate_warns_about_slices_larger_than_their_gpu() {
    let host = FakeHost::new();
    let gpus = || {
        let mut gpus = machine()?;
        for gpu in &mut gpus {
            gpu.memory = Some(80 << 30);
        }
        Ok(gpus)
    };
    let args = host.args(&["--slice", "a=0:100TiB", "--dry-run"]);
    let generated = generate(&args, &host.env(), gpus).unwrap();
    assert_eq!(generated.warnings.len(), 1, "{:?}", generated.warnings);
    assert!(
        generated.warnings[0].contains("its limit 100TiB is more than GPU 0"),
        "{:?}",
        generated.warnings
    );
    let args = host.args(&["--slice", "a=0:48GiB", "--slice", "b=0:48GiB", "--dry-run"]);
    let generated = generate(&args, &host.env(), gpus).unwrap();
    assert_eq!(generated.warnings.len(), 1, "{:?}", generated.warnings);
    assert!(
        generated.warnings[0].contains("add up to 96GiB but it has 80GiB (a, b)"),
        "{:?}",
        generated.warnings
    );
}
