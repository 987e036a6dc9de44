//! `gpuslice doctor`: its flags, and gathering what the checks read from this host (the
//! GPUs from NVML, the container engines on `PATH`). The checks and the report are
//! `gpuslice_host::doctor`'s.

use std::path::PathBuf;

use clap::Args;
use gpuslice_host::HostLayout;
use gpuslice_host::cdi::CdiError;
use gpuslice_host::cdi::host::nvml_gpus;
use gpuslice_host::doctor::{DoctorOptions, Observed, Report, diagnose, engines};
use gpuslice_host::layout::{
    DEFAULT_AGENT_DIR, DEFAULT_OUTPUT_DIR, DEFAULT_STATE_DIR, DYNAMIC_OUTPUT_DIR,
};

/// Flags of `gpuslice doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The state folder of `gpuslice cdi generate` and `gpuslice node`.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// The agent's folder (its socket is agent.sock there).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_AGENT_DIR)]
    pub agent_dir: PathBuf,

    /// A folder of CDI specs; repeat for more [default: /etc/cdi and /var/run/cdi].
    #[arg(long, value_name = "DIR")]
    pub spec_dir: Vec<PathBuf>,

    /// Root of the file system whose dev/ holds the NVIDIA device nodes.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub dev_root: PathBuf,

    /// Root of the file system the driver libraries are looked for in.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub driver_root: PathBuf,

    /// A ledger folder of `gpuslice run` to check; repeat for more [default: the
    /// caller's own, /dev/shm/gpuslice-<uid>; for root, every user's].
    #[arg(long, value_name = "DIR")]
    pub ledger_dir: Vec<PathBuf>,
}

impl DoctorArgs {
    /// The flags as the checks take them.
    pub fn options(&self) -> DoctorOptions {
        DoctorOptions {
            layout: HostLayout::new(&self.state_dir, &self.agent_dir),
            spec_dirs: if self.spec_dir.is_empty() {
                vec![DEFAULT_OUTPUT_DIR.into(), DYNAMIC_OUTPUT_DIR.into()]
            } else {
                self.spec_dir.clone()
            },
            dev_root: self.dev_root.clone(),
            driver_root: self.driver_root.clone(),
            ledger_dirs: (!self.ledger_dir.is_empty()).then(|| self.ledger_dir.clone()),
        }
    }
}

/// Runs every check on this host.
pub fn run(args: &DoctorArgs) -> Report {
    let observed = Observed {
        gpus: nvml_gpus().map_err(|e| match e {
            CdiError::Nvml(nvml) => nvml.to_string(),
            other => other.to_string(),
        }),
        engines: engines::detect(&std::env::var_os("PATH").unwrap_or_default()),
    };
    diagnose(&args.options(), &observed)
}
