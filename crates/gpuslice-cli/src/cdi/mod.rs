//! `gpuslice cdi`: offering slices to containers through the Container Device Interface.
//! `gpuslice cdi generate` writes one CDI spec (kind `gpuslice.io/slice`, one device per
//! slice) and the host-side files it mounts; `podman run --device gpuslice.io/slice=NAME`
//! (or Docker 25+) then gives a container the slice with no other setup. `gpuslice cdi
//! list` prints the devices of the written spec. docs/cdi.md explains every edit.
//!
//! The submodules: [`args`] (flags), [`slices`] (parsing and resolving slices), [`host`]
//! (GPUs, device nodes and driver files of the host), [`edits`] (the spec, as a pure
//! function), [`state`] (the host-side files) and [`spec`] (the file format).

pub mod args;
pub mod edits;
pub mod host;
pub mod slices;
pub mod spec;
pub mod state;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use gpuslice_ledger::LedgerError;

use crate::plan::{self, ENV_LIB, PlanError};
use args::{CdiCommand, GenerateArgs, ListArgs};
use edits::{HostNodes, HostPaths};
use host::{HostGpu, NodeState};
use slices::SliceRequest;
use spec::{Spec, write_atomic};
use state::StateLayout;

/// The CDI kind of gpuslice's devices.
pub const KIND: &str = "gpuslice.io/slice";
/// The spec's file name in the output folder.
pub const SPEC_FILE: &str = "gpuslice.io-slice.json";
/// The CDI specification version the spec declares. Everything used here needs at most
/// 0.5.0 (`hostPath` on device nodes, device names starting with a digit; mount `type`
/// needs 0.4.0); 0.6.0 is read by runtimes whose CDI library dates from mid-2023 on.
pub const CDI_VERSION: &str = "0.6.0";
/// Default `--output-dir`.
pub const DEFAULT_OUTPUT_DIR: &str = "/etc/cdi";
/// The other folder runtimes read specs from, by default.
pub const DYNAMIC_OUTPUT_DIR: &str = "/var/run/cdi";
/// Default `--state-dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/gpuslice";
/// Default `--agent-dir`.
pub const DEFAULT_AGENT_DIR: &str = "/run/gpuslice/agent";
/// The ledger's file name in a slice's folder.
pub const LEDGER_FILE: &str = "ledger";

/// The interposer in the container.
pub const CONTAINER_LIB: &str = "/usr/local/lib/gpuslice/libgpuslice.so";
/// The dynamic loader's preload list in the container.
pub const CONTAINER_PRELOAD: &str = "/etc/ld.so.preload";
/// The slice's folder in the container (the ledger lives there).
pub const CONTAINER_SLICE_DIR: &str = "/run/gpuslice/slice";
/// The slice's ledger in the container.
pub const CONTAINER_LEDGER: &str = "/run/gpuslice/slice/ledger";
/// The agent's folder in the container.
pub const CONTAINER_AGENT_DIR: &str = "/run/gpuslice/agent";
/// The agent's socket in the container.
pub const CONTAINER_AGENT_SOCKET: &str = "/run/gpuslice/agent/agent.sock";
/// The host-wide per-GPU folder in the container.
pub const CONTAINER_GPU_DIR: &str = "/run/gpuslice/gpus";

/// The compute limit in percent (read by the interposer's compute limiter).
pub const ENV_COMPUTE: &str = "GPUSLICE_COMPUTE";
/// The burst compute limit in percent.
pub const ENV_COMPUTE_BURST: &str = "GPUSLICE_COMPUTE_BURST";
/// The host-wide per-GPU folder.
pub const ENV_GPU_DIR: &str = "GPUSLICE_GPU_DIR";
/// The agent's socket.
pub const ENV_AGENT_SOCKET: &str = "GPUSLICE_AGENT_SOCKET";

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
    Library(#[from] PlanError),
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

/// What a command prints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CdiOutput {
    /// For stdout.
    pub stdout: String,
    /// For stderr, one warning each.
    pub warnings: Vec<String>,
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

fn absolute_utf8(flag: &'static str, path: &Path) -> Result<(PathBuf, String), CdiError> {
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

fn requests(args: &GenerateArgs) -> Result<Vec<SliceRequest>, CdiError> {
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
fn find_nodes(
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

/// `gpuslice cdi generate`: plans everything, then (unless `--dry-run`) creates the
/// host-side files and writes the spec. `gpus` lists the host's GPUs.
pub fn generate(
    args: &GenerateArgs,
    env: &CdiEnv,
    gpus: impl FnOnce() -> Result<Vec<HostGpu>, CdiError>,
) -> Result<Generated, CdiError> {
    let requests = requests(args)?;
    let driver_mode = DriverLibs::parse(&args.driver_libs)?;
    let lib = plan::find_library(args.lib.as_deref(), env.lib.as_deref(), env.exe.as_deref())?;
    let (_, lib_text) = absolute_utf8("--lib", &lib)?;
    let (output_dir, _) = absolute_utf8("--output-dir", &args.output_dir)?;
    let (state_dir, _) = absolute_utf8("--state-dir", &args.state_dir)?;
    let (agent_dir, agent_text) = absolute_utf8("--agent-dir", &args.agent_dir)?;
    let (dev_root, _) = absolute_utf8("--dev-root", &args.dev_root)?;
    let (driver_root, _) = absolute_utf8("--driver-root", &args.driver_root)?;

    let host_gpus = gpus()?;
    let slices = slices::resolve(&requests, &host_gpus)?;

    let mut warnings = Vec::new();
    let used: Vec<&HostGpu> = slices.iter().flat_map(|s| s.gpus.iter()).collect();
    let nodes = find_nodes(&dev_root, &used, &mut warnings)?;

    let driver_files = match driver_mode {
        DriverLibs::Off => Vec::new(),
        mode => {
            let ldconfig = if driver_root == Path::new("/") {
                host::run_ldconfig()
            } else {
                None
            };
            let found = host::find_driver_files(&driver_root, ldconfig.as_deref());
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
    };

    let layout = StateLayout {
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
    let spec = edits::build_spec(&slices, &paths, &nodes, &driver_files);
    let mut report: Vec<String> = slices.iter().map(edits::describe).collect();

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
pub fn list(args: &ListArgs) -> Result<String, CdiError> {
    let candidates: Vec<PathBuf> = match &args.output_dir {
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

/// Runs a `gpuslice cdi` subcommand with this process's surroundings and the host's NVML.
pub fn run(command: &CdiCommand) -> Result<CdiOutput, CdiError> {
    match command {
        CdiCommand::Generate(args) => {
            let generated = generate(args, &CdiEnv::from_process(), host::nvml_gpus)?;
            let stdout = match &generated.path {
                None => generated.spec.to_json(),
                Some(path) => {
                    let mut text = format!(
                        "wrote {} with {} CDI device(s):\n",
                        path.display(),
                        generated.spec.devices.len()
                    );
                    for line in &generated.report {
                        text.push_str(&format!("  {line}\n"));
                    }
                    text
                }
            };
            Ok(CdiOutput {
                stdout,
                warnings: generated.warnings,
            })
        }
        CdiCommand::List(args) => Ok(CdiOutput {
            stdout: list(args)?,
            warnings: Vec::new(),
        }),
    }
}

#[cfg(test)]
mod tests;
