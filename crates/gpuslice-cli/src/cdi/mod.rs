//! `gpuslice cdi`: offering slices to containers through the Container Device Interface.
//! `gpuslice cdi generate` writes one CDI spec (kind `gpuslice.io/slice`, one device per
//! slice) and the host-side files it mounts; `podman run --device gpuslice.io/slice=NAME`
//! (or Docker 25+) then gives a container the slice with no other setup. `gpuslice cdi
//! list` prints the devices of the written spec. docs/cdi.md explains every edit.
//!
//! This module owns the flags ([`args`]) and what is printed; the work is
//! `gpuslice_host::cdi`, re-exported here.

pub mod args;

pub use gpuslice_host::cdi::*;

use args::{CdiCommand, GenerateArgs};

/// What a command prints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CdiOutput {
    /// For stdout.
    pub stdout: String,
    /// For stderr, one warning each.
    pub warnings: Vec<String>,
}

impl GenerateArgs {
    /// The flags as the host library takes them.
    pub fn options(&self) -> GenerateOptions {
        GenerateOptions {
            slices: self.slices.clone(),
            slices_file: self.slices_file.clone(),
            output_dir: self.output_dir.clone(),
            state_dir: self.state_dir.clone(),
            agent_dir: self.agent_dir.clone(),
            lib: self.lib.clone(),
            driver_libs: self.driver_libs.clone(),
            driver_root: self.driver_root.clone(),
            dev_root: self.dev_root.clone(),
            cdi_version: self.cdi_version.clone(),
            dry_run: self.dry_run,
        }
    }
}

/// `gpuslice cdi generate` with these flags; `gpus` lists the host's GPUs.
pub fn generate(
    args: &GenerateArgs,
    env: &CdiEnv,
    gpus: impl FnOnce() -> Result<Vec<host::HostGpu>, CdiError>,
) -> Result<Generated, CdiError> {
    gpuslice_host::cdi::generate(&args.options(), env, gpus)
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
            stdout: list(args.output_dir.as_deref())?,
            warnings: Vec::new(),
        }),
    }
}

#[cfg(test)]
mod tests;
