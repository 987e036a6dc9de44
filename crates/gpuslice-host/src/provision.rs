//! Making slices ready for the Kubernetes node plugin, one container's slice at a time:
//! [`Provisioner::provide`] creates (idempotently) the slice's ledger and pinned
//! configuration in the state folder and a CDI spec of its own in the CDI folder
//! (`gpuslice.io-slice_<name>.json`, one device, the same edits as `gpuslice cdi
//! generate`: device nodes, the interposer as `/etc/ld.so.preload`, the pinned
//! configuration, the agent's socket, the driver files), and returns the CDI device name
//! with the same edits for runtimes without CDI.
//!
//! Asking again for a slice gives the same slice: its ledger is kept while its limits
//! are the same, so every container given one device (of one pod or several) shares
//! that one ledger. The node plugin names a slice after its device ID
//! ([`slice_name`]), so two slices of one GPU have two ledgers.
//!
//! In a DaemonSet the host's driver is seen below `--driver-root` (NVIDIA's convention:
//! the host's root file system, or its driver's); the spec is read by the container
//! runtime on the host, so driver files are written with their paths on the host. The
//! interposer is copied into the state folder (`<state-dir>/lib`), which the host sees
//! at the same path, for the same reason.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::cdi::edits::{self, HostPaths};
use crate::cdi::host::DriverFile;
use crate::cdi::spec::{ContainerEdits, write_atomic};
use crate::cdi::{CdiError, DriverLibs, absolute_utf8, driver_files, find_nodes, state};
use crate::layout::HostLayout;
use crate::library::LIB_NAME;
use crate::slice::{KIND, Slice};

/// Where and how slices are provided.
#[derive(Debug, Clone)]
pub struct ProvisionOptions {
    /// The state folder and the agent's folder.
    pub layout: HostLayout,
    /// Where the per-slice CDI specs go (`/var/run/cdi`).
    pub cdi_dir: PathBuf,
    /// The interposer to give containers (copied into `<state-dir>/lib`).
    pub lib: PathBuf,
    /// Root of the file system whose `dev/` holds the NVIDIA device nodes.
    pub dev_root: PathBuf,
    /// Where the host's driver files are seen (the host's root file system, or `/`).
    pub driver_root: PathBuf,
    /// Whether to mount the driver files.
    pub driver_libs: DriverLibs,
}

/// What a container given one slice gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provided {
    /// The fully qualified CDI device name (`gpuslice.io/slice=NAME`).
    pub cdi_device: String,
    /// The CDI spec file written for the slice.
    pub spec_path: PathBuf,
    /// The same edits, for runtimes without CDI.
    pub edits: ContainerEdits,
    /// Things the operator should know (a missing `nvidia-uvm`, ...).
    pub warnings: Vec<String>,
}

/// Provides slices on this host.
#[derive(Debug)]
pub struct Provisioner {
    layout: HostLayout,
    cdi_dir: PathBuf,
    dev_root: PathBuf,
    paths: HostPaths,
    driver: Vec<DriverFile>,
    /// Warnings found once, at start (driver files).
    pub warnings: Vec<String>,
    /// One provision at a time: two containers of one pod arrive together.
    busy: Mutex<()>,
}

/// The slice name of a node plugin's device ID: `GPU-<uuid>::<profile>-<n>` with `::`
/// as `_` (a file name, a ledger name and a CDI device name; at most 62 characters since
/// the ID has at most 63).
pub fn slice_name(device_id: &str) -> String {
    device_id.replace("::", "_")
}

/// The CDI spec file of one slice.
pub fn spec_file(name: &str) -> String {
    format!("gpuslice.io-slice_{name}.json")
}

/// `path` (found below `root`) as the host names it: with `root` taken off the front.
fn on_host(root: &Path, path: &Path) -> Option<PathBuf> {
    if root == Path::new("/") {
        return Some(path.to_path_buf());
    }
    path.strip_prefix(root)
        .ok()
        .map(|rest| Path::new("/").join(rest))
}

impl Provisioner {
    /// Checks the folders, finds the driver files and installs the interposer into the
    /// state folder.
    pub fn new(options: &ProvisionOptions) -> Result<Self, CdiError> {
        let (state_dir, _) = absolute_utf8("--state-dir", &options.layout.state_dir)?;
        let (agent_dir, agent_text) = absolute_utf8("--agent-dir", &options.layout.agent_dir)?;
        let (cdi_dir, _) = absolute_utf8("--cdi-dir", &options.cdi_dir)?;
        let (dev_root, _) = absolute_utf8("--dev-root", &options.dev_root)?;
        let (driver_root, _) = absolute_utf8("--driver-root", &options.driver_root)?;
        let layout = HostLayout::new(state_dir, agent_dir);
        let mut warnings = Vec::new();
        let driver = driver_files(options.driver_libs, &driver_root, &mut warnings)?
            .into_iter()
            .map(|f| {
                let host =
                    on_host(&driver_root, &f.host).unwrap_or_else(|| PathBuf::from(&f.container));
                DriverFile {
                    host,
                    container: f.container,
                }
            })
            .collect();

        // The interposer, where the host's runtime can mount it from.
        let lib_dir = layout.lib_dir();
        std::fs::create_dir_all(&lib_dir).map_err(|source| CdiError::Io {
            path: lib_dir.clone(),
            what: "creating the folder",
            source,
        })?;
        let installed = lib_dir.join(LIB_NAME);
        let bytes = std::fs::read(&options.lib).map_err(|source| CdiError::Io {
            path: options.lib.clone(),
            what: "reading the interposer",
            source,
        })?;
        if std::fs::read(&installed).ok().as_deref() != Some(&bytes[..]) {
            crate::cdi::spec::write_bytes_atomic(&installed, &bytes, 0o755)?;
        }
        let text = |p: PathBuf| p.to_string_lossy().into_owned();
        let paths = HostPaths {
            lib: text(installed),
            preload: text(layout.preload()),
            slices_dir: text(layout.slices_dir()),
            configs_dir: text(layout.configs_dir()),
            gpus_dir: text(layout.gpus_dir()),
            agent_dir: agent_text,
        };
        Ok(Self {
            layout,
            cdi_dir,
            dev_root,
            paths,
            driver,
            warnings,
            busy: Mutex::new(()),
        })
    }

    /// The host layout slices are provided in.
    pub fn layout(&self) -> &HostLayout {
        &self.layout
    }

    /// Makes `slice` ready (its ledger, pinned configuration and CDI spec) and says what
    /// a container given it gets. Idempotent: the same slice again keeps its ledger.
    pub fn provide(&self, slice: &Slice) -> Result<Provided, CdiError> {
        let _one_at_a_time = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        let mut warnings = Vec::new();
        let gpus: Vec<_> = slice.gpus.iter().collect();
        let nodes = find_nodes(&self.dev_root, &gpus, &mut warnings)?;
        state::prepare(&self.layout, std::slice::from_ref(slice))?;
        let spec = edits::build_spec(
            std::slice::from_ref(slice),
            &self.paths,
            &nodes,
            &self.driver,
        );
        std::fs::create_dir_all(&self.cdi_dir).map_err(|source| CdiError::Io {
            path: self.cdi_dir.clone(),
            what: "creating the CDI folder",
            source,
        })?;
        let spec_path = self.cdi_dir.join(spec_file(&slice.name));
        write_atomic(&spec_path, &spec.to_json(), 0o644)?;
        let edits = spec.devices.into_iter().next().map(|d| d.container_edits);
        Ok(Provided {
            cdi_device: format!("{KIND}={}", slice.name),
            spec_path,
            edits: edits.unwrap_or_default(),
            warnings,
        })
    }
}

impl Provisioner {
    /// Removes the slice `name` ([`Slice::name`]): its CDI spec first (no container can be given it any
    /// more), then its ledger and pinned configuration ([`state::remove_slice`]: refused
    /// while a process of it runs; the spec is then written back, so the slice stays
    /// whole). Removing a slice that does not exist is no error. Returns the PIDs of
    /// other PID namespaces its ledger still listed.
    pub fn withdraw(&self, name: &str) -> Result<Vec<u32>, CdiError> {
        let _one_at_a_time = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        let spec_path = self.cdi_dir.join(spec_file(name));
        let spec = match std::fs::read(&spec_path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(CdiError::Io {
                    path: spec_path,
                    what: "reading the slice's CDI spec",
                    source,
                });
            }
        };
        if spec.is_some() {
            std::fs::remove_file(&spec_path).map_err(|source| CdiError::Io {
                path: spec_path.clone(),
                what: "removing the slice's CDI spec",
                source,
            })?;
        }
        match state::remove_slice(&self.layout, name) {
            Ok(removed) => Ok(removed.unknown),
            Err(e) => {
                if let Some(bytes) = spec {
                    let _ = crate::cdi::spec::write_bytes_atomic(&spec_path, &bytes, 0o644);
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpus::HostGpu;
    use gpuslice_ledger::Ledger;
    use std::os::unix::fs::symlink;

    /// The device entry of the ledger's first GPU.
    const GPU0: gpuslice_ledger::DeviceSlot = gpuslice_ledger::DeviceSlot::new(0);

    const GIB: u64 = 1 << 30;
    const U0: &str = "GPU-aaaa1111-0000-4000-8000-000000000000";

    fn host() -> (tempfile::TempDir, Provisioner) {
        let root = tempfile::tempdir().unwrap();
        let p = root.path();
        std::fs::create_dir_all(p.join("dev")).unwrap();
        for node in ["nvidia0", "nvidiactl", "nvidia-uvm"] {
            symlink("/dev/null", p.join("dev").join(node)).unwrap();
        }
        std::fs::write(p.join("libgpuslice.so"), b"\x7fELF fake").unwrap();
        let provisioner = Provisioner::new(&ProvisionOptions {
            layout: HostLayout::new(p.join("state"), p.join("agent")),
            cdi_dir: p.join("cdi"),
            lib: p.join("libgpuslice.so"),
            dev_root: p.to_path_buf(),
            driver_root: p.join("driver"),
            driver_libs: DriverLibs::Off,
        })
        .unwrap();
        (root, provisioner)
    }

    fn slice(id: &str, memory: u64) -> Slice {
        Slice {
            name: slice_name(id),
            gpus: vec![HostGpu {
                index: 0,
                uuid: U0.into(),
                minor: 0,
                memory: None,
            }],
            memory,
            compute: None,
        }
    }

    #[test]
    fn a_slice_gets_its_ledger_pinned_config_and_spec_and_keeps_them() {
        let (root, p) = host();
        let a = slice(&format!("{U0}::8g-30-0"), 8 * GIB);
        let got = p.provide(&a).unwrap();
        assert_eq!(got.cdi_device, format!("gpuslice.io/slice={U0}_8g-30-0"));
        assert!(got.spec_path.starts_with(root.path().join("cdi")));
        let ledger = p.layout().ledger(&a.name);
        assert_eq!(Ledger::open(&ledger).unwrap().devices()[0].limit, 8 * GIB);
        assert!(p.layout().pinned_config(&a.name).exists());
        assert!(
            got.edits
                .mounts
                .iter()
                .any(|m| m.container_path == "/etc/ld.so.preload")
        );
        assert!(
            got.edits
                .mounts
                .iter()
                .any(|m| m.host_path.ends_with("state/lib/libgpuslice.so"))
        );
        // Asked again (another container of the pod): the same, shared ledger.
        let l = Ledger::open(&ledger).unwrap();
        let slot = l.register().unwrap();
        l.try_charge(slot, GPU0, GIB).unwrap();
        assert_eq!(p.provide(&a).unwrap(), got);
        assert_eq!(Ledger::open(&ledger).unwrap().used(GPU0), GIB);
        // Another slice of the same GPU has a ledger of its own.
        let b = slice(&format!("{U0}::8g-30-1"), 8 * GIB);
        p.provide(&b).unwrap();
        assert_ne!(p.layout().ledger(&b.name), ledger);
        assert_eq!(
            Ledger::open(&p.layout().ledger(&b.name))
                .unwrap()
                .used(GPU0),
            0
        );
    }

    #[test]
    fn a_withdrawn_slice_leaves_no_file_and_one_in_use_is_kept_whole() {
        let (root, p) = host();
        let a = slice(&format!("{U0}::claim-a"), 8 * GIB);
        let got = p.provide(&a).unwrap();
        let ledger = p.layout().ledger(&a.name);
        // A process of the slice still runs (this one): refused, nothing removed.
        let l = Ledger::open(&ledger).unwrap();
        let slot = l.register().unwrap();
        let err = p.withdraw(&a.name).unwrap_err().to_string();
        assert!(err.contains("still lists running processes"), "{err}");
        assert!(err.contains(&a.name), "{err}");
        assert!(got.spec_path.exists() && ledger.exists());
        assert!(p.layout().pinned_config(&a.name).exists());
        l.unregister(slot);
        drop(l);
        assert_eq!(p.withdraw(&a.name).unwrap(), Vec::<u32>::new());
        assert!(!got.spec_path.exists());
        assert!(!p.layout().slice_dir(&a.name).exists());
        assert!(!p.layout().pinned_config(&a.name).exists());
        // Again: nothing to do, no error.
        p.withdraw(&a.name).unwrap();
        let left: Vec<_> = std::fs::read_dir(root.path().join("cdi"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn driver_files_are_named_by_their_host_paths() {
        assert_eq!(
            on_host(
                Path::new("/driver-root"),
                Path::new("/driver-root/usr/lib/x.so")
            ),
            Some(PathBuf::from("/usr/lib/x.so"))
        );
        assert_eq!(
            on_host(Path::new("/"), Path::new("/usr/lib/x.so")),
            Some(PathBuf::from("/usr/lib/x.so"))
        );
        assert_eq!(
            on_host(Path::new("/driver-root"), Path::new("/opt/x.so")),
            None
        );
    }
}
