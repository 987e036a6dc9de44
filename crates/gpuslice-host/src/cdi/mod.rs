//! Offering slices to containers through the Container Device Interface: the work of
//! `gpuslice cdi generate` ([`generate`]: one CDI spec, kind `gpuslice.io/slice`, one
//! device per slice, and the host-side files it mounts; `podman run --device
//! gpuslice.io/slice=NAME` or Docker 25+ then gives a container the slice with no other
//! setup) and `gpuslice cdi list` ([`list`]). The node plugin reuses the same pieces for
//! its per-slice specs (`crate::provision`). docs/cdi.md explains every edit.
//!
//! The submodules: [`slices`] (parsing and resolving slices), [`host`] (device nodes and
//! driver files of the host), [`edits`] (the spec, as a pure function), [`state`] (the
//! host-side files), [`spec`] (the file format) and [`version`] (the `cdiVersion` it
//! declares: the lowest that has every field it uses).

pub mod edits;
pub mod host;
pub mod slices;
pub mod spec;
pub mod state;
pub mod version;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use gpuslice_ledger::LedgerError;

use crate::layout::HostLayout;
use crate::library::{self, ENV_LIB, LibraryError};
use edits::{HostNodes, HostPaths};
use host::{HostGpu, NodeState};
use slices::{Slice, SliceRequest};
use spec::{Spec, write_atomic};

pub use crate::layout::{
    CONTAINER_AGENT_DIR, CONTAINER_AGENT_SOCKET, CONTAINER_GPU_DIR, CONTAINER_LEDGER,
    CONTAINER_LIB, CONTAINER_PRELOAD, CONTAINER_SLICE_DIR, DEFAULT_AGENT_DIR, DEFAULT_OUTPUT_DIR,
    DEFAULT_STATE_DIR, DYNAMIC_OUTPUT_DIR, LEDGER_FILE,
};
pub use crate::slice::{ENV_AGENT_SOCKET, KIND};
pub use gpuslice_config::ENV_GPU_DIR;
pub use gpuslice_config::compute::{ENV_COMPUTE, ENV_COMPUTE_BURST};

/// The spec's file name in the output folder.
pub const SPEC_FILE: &str = "gpuslice.io-slice.json";

/// What can go wrong in `gpuslice cdi`.
#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    /// No slice was asked for.
    #[error(
        "cdi generate needs at least one --slice NAME=GPUS:MEMORY (e.g. --slice gpu0-8g=0:8GiB) or a --slices-file; whole GPUs are not slices and are not offered"
    )]
    NoSlices,
    /// A slice that cannot be used.
    #[error("{origin}: {reason}")]
    BadSlice {
        /// The flag and value (or file and entry) it came from.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// Two slices with one name.
    #[error(
        "the slice name {name:?} is given twice ({first} and {second}); CDI device names must be unique"
    )]
    DuplicateName {
        /// The name.
        name: String,
        /// Where it was given first.
        first: String,
        /// Where it was given again.
        second: String,
    },
    /// The slices file is not valid.
    #[error("--slices-file {path}: {source}")]
    SlicesFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// `--cdi-version` is not a version of the CDI specification.
    #[error("--cdi-version: {0}")]
    BadCdiVersion(#[from] version::BadVersion),
    /// `--cdi-version` is lower than the fields of the spec need.
    #[error("--cdi-version: {0}")]
    CdiVersionTooLow(#[from] version::TooLow),
    /// `--driver-libs` has a value it does not take.
    #[error("--driver-libs {0:?} is not one of auto, on and off")]
    BadDriverLibs(String),
    /// `--driver-libs on`, and a key library is missing.
    #[error(
        "--driver-libs on: cannot find {missing} (looked in {looked}); give --driver-libs off if the NVIDIA container toolkit or the image provides the driver"
    )]
    DriverLibsMissing {
        /// The missing libraries.
        missing: String,
        /// Where they were looked for.
        looked: String,
    },
    /// NVML could not list the GPUs.
    #[error("cdi generate needs NVML (libnvidia-ml.so.1) to find the GPUs, and it failed: {0}")]
    Nvml(#[from] nvml_wrapper::error::NvmlError),
    /// A device node the slices need is not there.
    #[error(
        "{path} {problem}, but {needed_by} needs it; is the NVIDIA driver loaded? (device nodes are looked for under --dev-root {dev_root})"
    )]
    DeviceNode {
        /// The host path.
        path: PathBuf,
        /// `does not exist` or `is not a character device`.
        problem: &'static str,
        /// What needs it.
        needed_by: String,
        /// `--dev-root`.
        dev_root: PathBuf,
    },
    /// The interposer library could not be found.
    #[error(transparent)]
    Library(#[from] LibraryError),
    /// A path that a JSON spec cannot hold.
    #[error("{flag}: the path {path:?} is not valid UTF-8, which a CDI spec cannot hold")]
    NotUtf8 {
        /// The flag it came from.
        flag: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A file operation failed.
    #[error("{path}: {what}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// A spec file that does not parse.
    #[error("{path} is not a CDI spec gpuslice can read: {source}")]
    BadSpecFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// A slice's ledger could not be created or checked.
    #[error("slice {slice}: {source}")]
    Ledger {
        /// The slice.
        slice: String,
        /// Why.
        source: LedgerError,
    },
    /// A slice's limits changed while processes still use its ledger. Nothing was
    /// changed.
    #[error(
        "slice {slice}: its ledger {path} has other limits and still lists processes (PID {processes}, as their containers number them), so nothing was changed; stop the containers using {KIND}={slice}, or give the slice another name. Entries of processes that are gone (a container killed with SIGKILL leaves them) are freed by the host agent, `gpuslice agent --state-dir {state_dir}`, within about 2 s: start it (or wait for it) and run cdi generate again"
    )]
    LedgerInUse {
        /// The slice.
        slice: String,
        /// The ledger.
        path: PathBuf,
        /// The PIDs listed, each with what is known of it.
        processes: String,
        /// `--state-dir`, whose ledgers the agent sweeps.
        state_dir: PathBuf,
    },
    /// A slice to be removed still has running processes. Nothing was changed.
    #[error(
        "slice {slice}: its ledger {path} still lists running processes (PID {processes}), so it was not removed; stop them first"
    )]
    SliceInUse {
        /// The slice.
        slice: String,
        /// The ledger.
        path: PathBuf,
        /// The PIDs listed.
        processes: String,
    },
    /// `cdi list` found no spec.
    #[error(
        "no gpuslice CDI spec found (looked for {looked}); write one with gpuslice cdi generate"
    )]
    NoSpec {
        /// The files looked for.
        looked: String,
    },
}

/// `--driver-libs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverLibs {
    /// Mount the driver files that are found.
    Auto,
    /// Mount them, and fail unless the key libraries are found.
    On,
    /// Mount none.
    Off,
}

impl DriverLibs {
    /// Parses `--driver-libs`.
    pub fn parse(text: &str) -> Result<Self, CdiError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "on" | "yes" | "true" => Ok(Self::On),
            "off" | "no" | "false" => Ok(Self::Off),
            _ => Err(CdiError::BadDriverLibs(text.into())),
        }
    }
}

/// What `gpuslice cdi` reads from its surroundings.
#[derive(Debug, Clone, Default)]
pub struct CdiEnv {
    /// `GPUSLICE_LIB`.
    pub lib: Option<OsString>,
    /// The running `gpuslice` executable.
    pub exe: Option<PathBuf>,
}

impl CdiEnv {
    /// Reads this process's surroundings.
    pub fn from_process() -> Self {
        Self {
            lib: std::env::var_os(ENV_LIB),
            exe: std::env::current_exe().ok(),
        }
    }
}

/// The result of `cdi generate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// The spec.
    pub spec: Spec,
    /// Where it was written (`None` with `--dry-run`).
    pub path: Option<PathBuf>,
    /// One line per slice (devices, limits, ledgers).
    pub report: Vec<String>,
    /// Things the user should know.
    pub warnings: Vec<String>,
}

pub(crate) fn absolute_utf8(
    flag: &'static str,
    path: &Path,
) -> Result<(PathBuf, String), CdiError> {
    let absolute = std::path::absolute(path).map_err(|source| CdiError::Io {
        path: path.to_path_buf(),
        what: "making the path absolute",
        source,
    })?;
    match absolute.to_str() {
        Some(text) => Ok((absolute.clone(), text.to_string())),
        None => Err(CdiError::NotUtf8 {
            flag,
            path: absolute,
        }),
    }
}

/// What `cdi generate` is asked to do (its flags, checked by [`generate`], whose errors
/// name the flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateOptions {
    /// `--slice` values, `NAME=GPUS:MEMORY[:compute=PERCENT[:burst=PERCENT]]`.
    pub slices: Vec<String>,
    /// `--slices-file`.
    pub slices_file: Option<PathBuf>,
    /// `--output-dir`: where the spec goes.
    pub output_dir: PathBuf,
    /// `--state-dir`.
    pub state_dir: PathBuf,
    /// `--agent-dir`.
    pub agent_dir: PathBuf,
    /// `--lib`.
    pub lib: Option<PathBuf>,
    /// `--driver-libs`: auto, on or off.
    pub driver_libs: String,
    /// `--driver-root`.
    pub driver_root: PathBuf,
    /// `--dev-root`.
    pub dev_root: PathBuf,
    /// `--cdi-version`: the version to declare instead of the lowest that has every
    /// field the spec uses (refused when lower than that).
    pub cdi_version: Option<String>,
    /// `--dry-run`: plan only, create nothing.
    pub dry_run: bool,
}

fn requests(args: &GenerateOptions) -> Result<Vec<SliceRequest>, CdiError> {
    let mut requests = args
        .slices
        .iter()
        .map(|s| slices::parse_slice_arg(s))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(path) = &args.slices_file {
        let text = std::fs::read_to_string(path).map_err(|source| CdiError::Io {
            path: path.clone(),
            what: "reading --slices-file",
            source,
        })?;
        requests.extend(slices::parse_slices_file(path, &text)?);
    }
    slices::check_requests(&requests)?;
    Ok(requests)
}

/// Finds the device nodes of the GPUs in `gpus` and the shared ones under `dev_root`.
pub(crate) fn find_nodes(
    dev_root: &Path,
    gpus: &[&HostGpu],
    warnings: &mut Vec<String>,
) -> Result<HostNodes, CdiError> {
    let required = |path: &str, needed_by: String| match host::device_node(dev_root, path) {
        NodeState::Present(node) => Ok(node),
        NodeState::Missing(p) => Err(CdiError::DeviceNode {
            path: p,
            problem: "does not exist",
            needed_by,
            dev_root: dev_root.to_path_buf(),
        }),
        NodeState::NotADevice(p) => Err(CdiError::DeviceNode {
            path: p,
            problem: "is not a character device",
            needed_by,
            dev_root: dev_root.to_path_buf(),
        }),
    };
    let mut nodes = HostNodes::default();
    for gpu in gpus {
        if nodes.gpus.iter().any(|(m, _)| *m == gpu.minor) {
            continue;
        }
        let path = format!("/dev/nvidia{}", gpu.minor);
        let node = required(&path, format!("GPU {} ({})", gpu.index, gpu.uuid))?;
        nodes.gpus.push((gpu.minor, node));
    }
    nodes
        .shared
        .push(required("/dev/nvidiactl", "every CUDA program".into())?);
    match host::device_node(dev_root, "/dev/nvidia-uvm") {
        NodeState::Present(node) => nodes.shared.push(node),
        _ => warnings.push(format!(
            "{} is missing: the nvidia-uvm module is not loaded yet, and CUDA cannot start in these containers without it. Load it (nvidia-modprobe -u -c=0, or run any CUDA program on the host) and run cdi generate again",
            host::under_root(dev_root, "/dev/nvidia-uvm").display()
        )),
    }
    if let NodeState::Present(node) = host::device_node(dev_root, "/dev/nvidia-uvm-tools") {
        nodes.shared.push(node);
    }
    Ok(nodes)
}

/// The driver files to mount under `mode`, found below `driver_root`; what is missing
/// becomes a warning (`auto`) or an error (`on`).
pub(crate) fn driver_files(
    driver_mode: DriverLibs,
    driver_root: &Path,
    warnings: &mut Vec<String>,
) -> Result<Vec<host::DriverFile>, CdiError> {
    Ok(match driver_mode {
        DriverLibs::Off => Vec::new(),
        mode => {
            let ldconfig = if driver_root == Path::new("/") {
                host::run_ldconfig()
            } else {
                None
            };
            let found = host::find_driver_files(driver_root, ldconfig.as_deref());
            if !found.missing.is_empty() {
                let missing = found.missing.join(" and ");
                let looked = found.looked.join(", ");
                if mode == DriverLibs::On {
                    return Err(CdiError::DriverLibsMissing { missing, looked });
                }
                warnings.push(format!(
                    "--driver-libs auto: {missing} not found (looked in {looked}); containers must get the driver libraries elsewhere (the NVIDIA container toolkit, or the image)"
                ));
            }
            found.files
        }
    })
}

/// `gpuslice cdi generate`: plans everything, then (unless `--dry-run`) creates the
/// host-side files and writes the spec. `gpus` lists the host's GPUs.
pub fn generate(
    args: &GenerateOptions,
    env: &CdiEnv,
    gpus: impl FnOnce() -> Result<Vec<HostGpu>, CdiError>,
) -> Result<Generated, CdiError> {
    let requests = requests(args)?;
    let asked_version = args
        .cdi_version
        .as_deref()
        .map(str::parse::<version::CdiVersion>)
        .transpose()?;
    let driver_mode = DriverLibs::parse(&args.driver_libs)?;
    let lib = library::find_library(args.lib.as_deref(), env.lib.as_deref(), env.exe.as_deref())?;
    let (_, lib_text) = absolute_utf8("--lib", &lib)?;
    let (output_dir, _) = absolute_utf8("--output-dir", &args.output_dir)?;
    let (state_dir, _) = absolute_utf8("--state-dir", &args.state_dir)?;
    let (agent_dir, agent_text) = absolute_utf8("--agent-dir", &args.agent_dir)?;
    let (dev_root, _) = absolute_utf8("--dev-root", &args.dev_root)?;
    let (driver_root, _) = absolute_utf8("--driver-root", &args.driver_root)?;

    let host_gpus = gpus()?;
    let slices = slices::resolve(&requests, &host_gpus)?;

    let mut warnings = slices::capacity_warnings(&slices);
    let used: Vec<&HostGpu> = slices.iter().flat_map(|s| s.gpus.iter()).collect();
    let nodes = find_nodes(&dev_root, &used, &mut warnings)?;

    let driver_files = driver_files(driver_mode, &driver_root, &mut warnings)?;

    let layout = HostLayout {
        state_dir,
        agent_dir,
    };
    let text = |p: PathBuf| p.to_string_lossy().into_owned();
    let paths = HostPaths {
        lib: lib_text,
        preload: text(layout.preload()),
        slices_dir: text(layout.slices_dir()),
        configs_dir: text(layout.configs_dir()),
        gpus_dir: text(layout.gpus_dir()),
        agent_dir: agent_text,
    };
    let mut spec = edits::build_spec(&slices, &paths, &nodes, &driver_files);
    spec.cdi_version = version::choose(&spec, asked_version)?.to_string();
    let mut report: Vec<String> = slices.iter().map(Slice::describe).collect();

    if args.dry_run {
        return Ok(Generated {
            spec,
            path: None,
            report,
            warnings,
        });
    }
    report.extend(state::prepare(&layout, &slices)?);
    std::fs::create_dir_all(&output_dir).map_err(|source| CdiError::Io {
        path: output_dir.clone(),
        what: "creating the output folder",
        source,
    })?;
    let path = output_dir.join(SPEC_FILE);
    write_atomic(&path, &spec.to_json(), 0o644)?;
    Ok(Generated {
        spec,
        path: Some(path),
        report,
        warnings,
    })
}

/// `gpuslice cdi list`: the qualified device names of the written spec, one a line.
/// `output_dir` is `--output-dir`; without it the default folders are read.
pub fn list(output_dir: Option<&Path>) -> Result<String, CdiError> {
    let candidates: Vec<PathBuf> = match output_dir {
        Some(dir) => vec![dir.join(SPEC_FILE)],
        None => [DEFAULT_OUTPUT_DIR, DYNAMIC_OUTPUT_DIR]
            .iter()
            .map(|d| Path::new(d).join(SPEC_FILE))
            .collect(),
    };
    let found: Vec<&PathBuf> = candidates.iter().filter(|p| p.exists()).collect();
    if found.is_empty() {
        return Err(CdiError::NoSpec {
            looked: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let mut out = String::new();
    for path in found {
        for name in Spec::read(path)?.qualified_names() {
            out.push_str(&name);
            out.push('\n');
        }
    }
    Ok(out)
}
