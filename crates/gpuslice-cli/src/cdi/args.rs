//! The flags of `gpuslice cdi generate` and `gpuslice cdi list`. Values are taken as text
//! here and checked by the `cdi` module, whose errors name the flag.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{DEFAULT_AGENT_DIR, DEFAULT_OUTPUT_DIR, DEFAULT_STATE_DIR};

/// `gpuslice cdi ...`.
#[derive(Debug, Args)]
pub struct CdiArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: CdiCommand,
}

/// The subcommands of `gpuslice cdi`.
#[derive(Debug, Subcommand)]
pub enum CdiCommand {
    /// Write the CDI spec that offers this host's slices to containers
    /// (`podman run --device gpuslice.io/slice=NAME`).
    Generate(Box<GenerateArgs>),
    /// Print the CDI device names of the generated spec.
    List(ListArgs),
}

/// Flags of `gpuslice cdi generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// A slice to offer, as NAME=GPUS:MEMORY[:compute=PERCENT[:burst=PERCENT]]; repeat for
    /// more. GPUS is `all` or a comma-separated list of indices (as nvidia-smi numbers
    /// them), GPU UUIDs or unique UUID prefixes; MEMORY is the limit on each of those GPUs
    /// (e.g. gpu0-8g=0:8GiB, both=0,1:16GiB, gpu0-4g-30=GPU-5d1f:4GiB:compute=30).
    #[arg(long = "slice", value_name = "NAME=GPUS:MEMORY")]
    pub slices: Vec<String>,

    /// A JSON file of slices: {"slices": [{"name": "gpu0-8g", "gpus": [0], "memory":
    /// "8GiB", "compute": 30}]}. Taken together with --slice.
    #[arg(long, value_name = "FILE")]
    pub slices_file: Option<PathBuf>,

    /// Folder to write gpuslice.io-slice.json to (/etc/cdi or /var/run/cdi).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_OUTPUT_DIR)]
    pub output_dir: PathBuf,

    /// Folder for the host-side files the spec mounts: ld.so.preload, the slices' ledger
    /// folders (slices/NAME/) and the per-GPU folder (gpus/).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// Folder of the gpuslice agent's socket, mounted read-only into containers.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_AGENT_DIR)]
    pub agent_dir: PathBuf,

    /// The interposer library [default: $GPUSLICE_LIB, else libgpuslice.so next to this
    /// program or in ../lib].
    #[arg(long, value_name = "PATH")]
    pub lib: Option<PathBuf>,

    /// Mount the host's NVIDIA driver libraries (libcuda.so.1, libnvidia-ml.so.1, ...) and
    /// nvidia-smi into containers: auto (those found), on (fail unless libcuda.so.1 and
    /// libnvidia-ml.so.1 are found) or off (the NVIDIA container toolkit or the image
    /// provides them).
    #[arg(long, value_name = "WHEN", default_value = "auto")]
    pub driver_libs: String,

    /// Root of the file system the driver libraries are looked for in; paths below it
    /// are the paths in the container.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub driver_root: PathBuf,

    /// Root of the file system whose dev/ holds the NVIDIA device nodes.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub dev_root: PathBuf,

    /// The cdiVersion to declare [default: the lowest version that has every field the
    /// spec uses, e.g. 0.4.0, which every CDI runtime reads]. Refused when lower than
    /// that. Podman 4.3 (Debian 12) reads specs up to 0.5.0.
    #[arg(long, value_name = "VERSION")]
    pub cdi_version: Option<String>,

    /// Print the spec instead of writing it; creates nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Flags of `gpuslice cdi list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Folder holding gpuslice.io-slice.json [default: /etc/cdi, then /var/run/cdi].
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
}
