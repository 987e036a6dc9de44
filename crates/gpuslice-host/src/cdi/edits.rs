//! What injecting a slice device does to a container: the pure function from the slices
//! and the host's facts to the CDI spec. docs/cdi.md explains each edit.

use super::host::DriverFile;
use super::spec::{ContainerEdits, Device, DeviceNode, Mount, Spec};
use crate::layout::{
    CONTAINER_AGENT_DIR, CONTAINER_GPU_DIR, CONTAINER_LIB, CONTAINER_PINNED_CONFIG,
    CONTAINER_PRELOAD, CONTAINER_SLICE_DIR,
};
use crate::slice::{KIND, Slice};

/// Host paths the spec mounts (absolute, UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    /// The interposer library.
    pub lib: String,
    /// The `ld.so.preload` file naming [`CONTAINER_LIB`].
    pub preload: String,
    /// The folder holding one folder per slice (`<state-dir>/slices`).
    pub slices_dir: String,
    /// The folder holding each slice's pinned configuration (`<state-dir>/config`), out
    /// of the read-write slice folders.
    pub configs_dir: String,
    /// The host-wide per-GPU folder (`<state-dir>/gpus`).
    pub gpus_dir: String,
    /// The agent's socket folder.
    pub agent_dir: String,
}

/// The device nodes found on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostNodes {
    /// `(minor, node)` of each GPU's `/dev/nvidia<minor>`.
    pub gpus: Vec<(u32, DeviceNode)>,
    /// `/dev/nvidiactl`, `/dev/nvidia-uvm`, `/dev/nvidia-uvm-tools`: those present.
    pub shared: Vec<DeviceNode>,
}

/// The content of the `ld.so.preload` file mounted at `/etc/ld.so.preload`.
pub fn preload_text() -> String {
    format!("{CONTAINER_LIB}\n")
}

fn bind(host: &str, container: &str, read_only: bool) -> Mount {
    Mount {
        host_path: host.to_string(),
        container_path: container.to_string(),
        options: [
            if read_only { "ro" } else { "rw" },
            "nosuid",
            "nodev",
            "bind",
        ]
        .map(String::from)
        .to_vec(),
        mount_type: Some("bind".into()),
    }
}

/// The container edits of one slice device. Every device carries all it needs, so a
/// runtime that applies only device edits still gets a working slice.
pub fn slice_edits(
    slice: &Slice,
    paths: &HostPaths,
    nodes: &HostNodes,
    driver: &[DriverFile],
) -> ContainerEdits {
    let mut device_nodes: Vec<DeviceNode> = slice
        .gpus
        .iter()
        .filter_map(|g| {
            nodes
                .gpus
                .iter()
                .find(|(minor, _)| *minor == g.minor)
                .map(|(_, n)| n.clone())
        })
        .collect();
    device_nodes.extend(nodes.shared.iter().cloned());

    let mut mounts = vec![
        bind(&paths.lib, CONTAINER_LIB, true),
        bind(&paths.preload, CONTAINER_PRELOAD, true),
        bind(
            &format!("{}/{}", paths.slices_dir, slice.name),
            CONTAINER_SLICE_DIR,
            false,
        ),
        bind(&paths.gpus_dir, CONTAINER_GPU_DIR, false),
        bind(&paths.agent_dir, CONTAINER_AGENT_DIR, true),
        bind(
            &format!("{}/{}.env", paths.configs_dir, slice.name),
            CONTAINER_PINNED_CONFIG,
            true,
        ),
    ];
    mounts.extend(
        driver
            .iter()
            .map(|f| bind(&f.host.to_string_lossy(), &f.container, true)),
    );

    ContainerEdits {
        env: slice.env(),
        device_nodes,
        mounts,
        hooks: Vec::new(),
    }
}

/// The whole spec: one device per slice, in the order given, declaring the lowest CDI
/// version that has every field it uses ([`super::version::minimum_version`]).
pub fn build_spec(
    slices: &[Slice],
    paths: &HostPaths,
    nodes: &HostNodes,
    driver: &[DriverFile],
) -> Spec {
    let mut spec = Spec {
        cdi_version: String::new(),
        kind: KIND.into(),
        annotations: Default::default(),
        devices: slices
            .iter()
            .map(|s| Device {
                name: s.name.clone(),
                annotations: Default::default(),
                container_edits: slice_edits(s, paths, nodes, driver),
            })
            .collect(),
        container_edits: None,
    };
    spec.cdi_version = super::version::minimum_version(&spec).to_string();
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpus::HostGpu;
    use crate::layout::CONTAINER_LEDGER;
    use gpuslice_config::SliceConfig;
    use std::path::PathBuf;

    const GIB: u64 = 1 << 30;
    const U0: &str = "GPU-aaaa1111-0000-4000-8000-000000000000";
    const U1: &str = "GPU-bbbb2222-0000-4000-8000-000000000000";

    fn gpu(index: u32, uuid: &str) -> HostGpu {
        HostGpu {
            index,
            uuid: uuid.into(),
            minor: index + 4,
            memory: None,
        }
    }

    fn node(path: &str) -> DeviceNode {
        DeviceNode {
            path: path.into(),
            ..DeviceNode::default()
        }
    }

    fn paths() -> HostPaths {
        HostPaths {
            lib: "/opt/gs/libgpuslice.so".into(),
            preload: "/var/lib/gpuslice/ld.so.preload".into(),
            slices_dir: "/var/lib/gpuslice/slices".into(),
            configs_dir: "/var/lib/gpuslice/config".into(),
            gpus_dir: "/var/lib/gpuslice/gpus".into(),
            agent_dir: "/run/gpuslice/agent".into(),
        }
    }

    fn nodes() -> HostNodes {
        HostNodes {
            gpus: vec![(4, node("/dev/nvidia4")), (5, node("/dev/nvidia5"))],
            shared: vec![node("/dev/nvidiactl"), node("/dev/nvidia-uvm")],
        }
    }

    fn both() -> Slice {
        Slice {
            name: "both".into(),
            gpus: vec![gpu(1, U1), gpu(0, U0)],
            memory: 16 * GIB,
            compute: Some(gpuslice_config::ComputeShares {
                hard: 30,
                burst: Some(60),
            }),
        }
    }

    #[test]
    fn a_slice_gets_its_gpus_nodes_and_the_shared_ones() {
        let edits = slice_edits(&both(), &paths(), &nodes(), &[]);
        let paths: Vec<&str> = edits.device_nodes.iter().map(|n| n.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/dev/nvidia5",
                "/dev/nvidia4",
                "/dev/nvidiactl",
                "/dev/nvidia-uvm"
            ]
        );
    }

    #[test]
    fn mounts_and_their_modes() {
        let driver = [DriverFile {
            host: PathBuf::from("/usr/lib/x86_64-linux-gnu/libcuda.so.550"),
            container: "/usr/lib/x86_64-linux-gnu/libcuda.so.1".into(),
        }];
        let edits = slice_edits(&both(), &paths(), &nodes(), &driver);
        let got: Vec<(&str, &str, &str)> = edits
            .mounts
            .iter()
            .map(|m| {
                assert_eq!(m.mount_type.as_deref(), Some("bind"));
                assert_eq!(m.options[1..], ["nosuid", "nodev", "bind"]);
                (
                    m.host_path.as_str(),
                    m.container_path.as_str(),
                    m.options[0].as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("/opt/gs/libgpuslice.so", CONTAINER_LIB, "ro"),
                (
                    "/var/lib/gpuslice/ld.so.preload",
                    "/etc/ld.so.preload",
                    "ro"
                ),
                ("/var/lib/gpuslice/slices/both", "/run/gpuslice/slice", "rw"),
                ("/var/lib/gpuslice/gpus", "/run/gpuslice/gpus", "rw"),
                ("/run/gpuslice/agent", "/run/gpuslice/agent", "ro"),
                (
                    "/var/lib/gpuslice/config/both.env",
                    "/run/gpuslice/slice.env",
                    "ro"
                ),
                (
                    "/usr/lib/x86_64-linux-gnu/libcuda.so.550",
                    "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
                    "ro"
                ),
            ]
        );
        assert!(edits.hooks.is_empty());
        assert_eq!(preload_text(), format!("{CONTAINER_LIB}\n"));
    }

    #[test]
    fn the_environment_is_keyed_by_uuid_and_sets_nothing_of_nvidias() {
        let env = both().env();
        assert_eq!(
            env,
            [
                "GPUSLICE_SLICE=both".to_string(),
                format!("GPUSLICE_MEMORY={U1}=16GiB,{U0}=16GiB"),
                "GPUSLICE_COMPUTE=30".into(),
                "GPUSLICE_COMPUTE_BURST=60".into(),
                "GPUSLICE_LEDGER=/run/gpuslice/slice/ledger".into(),
                "GPUSLICE_GPU_DIR=/run/gpuslice/gpus".into(),
                "GPUSLICE_AGENT_SOCKET=/run/gpuslice/agent/agent.sock".into(),
            ]
        );
        assert!(!env.iter().any(|e| e.contains("VISIBLE_DEVICES")));

        let mut plain = both();
        plain.compute = None;
        assert!(!plain.env().iter().any(|e| e.contains("COMPUTE")));
    }

    #[test]
    fn the_interposer_reads_the_environment_as_meant() {
        let env = both().env();
        let pairs: Vec<(&str, &str)> = env.iter().map(|e| e.split_once('=').unwrap()).collect();
        let cfg = SliceConfig::from_vars(pairs).expect("the interposer accepts it");
        assert_eq!(cfg.slice_name.as_deref(), Some("both"));
        assert_eq!(cfg.ledger_path.as_deref(), Some(CONTAINER_LEDGER));
        assert_eq!(cfg.memory.all_devices, None);
        // Indices mean nothing in the container: only the UUIDs carry limits.
        assert_eq!(cfg.memory.limit_for(Some(0), U0), Some(16 * GIB));
        assert_eq!(cfg.memory.limit_for(Some(0), U1), Some(16 * GIB));
        assert_eq!(
            cfg.memory
                .limit_for(Some(0), "GPU-cccc0000-0000-4000-8000-000000000000"),
            None
        );
    }

    #[test]
    fn the_pinned_configuration_is_the_environment_and_the_interposer_reads_it() {
        let path = std::env::temp_dir().join(format!("gpuslice-pinned-{}.env", std::process::id()));
        std::fs::write(&path, both().pinned_config_text()).unwrap();
        // Even with the variables gone from the environment.
        let cfg = SliceConfig::from_env_or_pinned(&[], &path).expect("the interposer accepts it");
        std::fs::remove_file(&path).unwrap();
        let env = both().env();
        let pairs: Vec<(&str, &str)> = env.iter().map(|e| e.split_once('=').unwrap()).collect();
        let mut from_env = SliceConfig::from_vars(pairs).unwrap();
        from_env.pinned_file = Some(path.display().to_string());
        assert_eq!(cfg, from_env);
    }

    #[test]
    fn the_spec_has_one_device_per_slice() {
        let mut other = both();
        other.name = "gpu0-8g".into();
        other.gpus = vec![gpu(0, U0)];
        let spec = build_spec(&[both(), other.clone()], &paths(), &nodes(), &[]);
        // Mount types need 0.4.0; no device node has a hostPath and both names start
        // with a letter.
        assert_eq!(spec.cdi_version, "0.4.0");
        let mut digit = other.clone();
        digit.name = "0-8g".into();
        let digits = build_spec(&[digit], &paths(), &nodes(), &[]);
        assert_eq!(digits.cdi_version, "0.5.0");
        assert_eq!(
            spec.qualified_names(),
            ["gpuslice.io/slice=both", "gpuslice.io/slice=gpu0-8g"]
        );
        assert_eq!(
            other.describe(),
            format!("gpuslice.io/slice=gpu0-8g: 16GiB on GPU 0 ({U0}), compute 30% (burst 60%)")
        );
    }
}
