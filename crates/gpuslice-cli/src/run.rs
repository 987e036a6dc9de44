//! `gpuslice run` from start to end: plan, hold the slice's ledger, run the program with
//! the interposer preloaded, clean up, and report the program's exit code.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use gpuslice_config::ENV_LEDGER_DIR;

use crate::cli::RunArgs;
use crate::plan::{self, ENV_LIB, PlanError, RunPlan};
use crate::slice::{Finish, SliceClaim, SliceError};
use crate::supervise::{self, SignalGuard, SuperviseError};
use gpuslice_host::gpus::{self, GpuDevice, GpuError};

/// Why a run failed before the program's exit code was known.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A flag or the environment is unusable.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// `--gpus` could not be resolved.
    #[error(transparent)]
    Gpus(#[from] GpuError),
    /// The slice's ledger could not be held.
    #[error(transparent)]
    Slice(#[from] SliceError),
    /// The program could not be run.
    #[error(transparent)]
    Supervise(#[from] SuperviseError),
}

impl RunError {
    /// The exit code for this error: 127 or 126 when the program cannot be started (as
    /// shells do), 125 when gpuslice itself failed; the program did not run in any case.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Supervise(e) => e.exit_code(),
            _ => 125,
        }
    }
}

/// The outcome of a run whose program ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// The exit code to exit with.
    pub code: i32,
    /// Things to tell the user on stderr.
    pub warnings: Vec<String>,
}

/// What a run reads from its surroundings.
#[derive(Debug, Clone, Default)]
pub struct RunEnv {
    /// `GPUSLICE_LEDGER_DIR`.
    pub ledger_dir: Option<OsString>,
    /// `GPUSLICE_LIB`.
    pub lib: Option<OsString>,
    /// `LD_PRELOAD`.
    pub ld_preload: Option<OsString>,
    /// The running `gpuslice` executable.
    pub exe: Option<PathBuf>,
    /// This process's PID (for the default name).
    pub pid: u32,
}

impl RunEnv {
    /// Reads this process's surroundings.
    pub fn from_process() -> Self {
        Self {
            ledger_dir: std::env::var_os(ENV_LEDGER_DIR),
            lib: std::env::var_os(ENV_LIB),
            ld_preload: std::env::var_os("LD_PRELOAD"),
            exe: std::env::current_exe().ok(),
            pid: std::process::id(),
        }
    }
}

/// Decides everything about a run. `devices` lists the machine's GPUs; it is called
/// only with `--gpus`.
pub fn plan(
    args: &RunArgs,
    env: &RunEnv,
    devices: impl FnOnce() -> Result<Vec<GpuDevice>, GpuError>,
) -> Result<RunPlan, RunError> {
    let limit = args.memory.as_deref().map(plan::parse_memory).transpose()?;
    let compute = plan::parse_compute(args.compute.as_deref(), args.burst.as_deref())?;
    let name = match &args.name {
        Some(name) => plan::validate_name(name)?,
        None => format!("run-{}", env.pid),
    };
    let log = args.log.as_deref().map(plan::parse_log).transpose()?;
    let gpu_list = args.gpus.as_deref().map(gpus::parse_gpu_list).transpose()?;
    let lib = plan::find_library(args.lib.as_deref(), env.lib.as_deref(), env.exe.as_deref())
        .map_err(PlanError::from)?;
    let dir = plan::ledger_dir(args.ledger_dir.as_deref(), env.ledger_dir.as_deref());
    let gpus = match &gpu_list {
        Some(list) => Some(gpus::resolve(list, &devices()?)?),
        None => None,
    };
    Ok(RunPlan::new(limit, gpus, name, dir, lib, log)?.with_compute(compute))
}

/// Runs `gpuslice run`. Call it before any other thread is started: it blocks the
/// forwarded signals.
pub fn run(args: RunArgs) -> Result<RunOutcome, RunError> {
    let env = RunEnv::from_process();
    let plan = plan(&args, &env, gpus::nvml_devices)?;
    let preload = plan::inherited_preload(env.ld_preload)?;
    let guard = SignalGuard::block()?;
    let claim = SliceClaim::claim(&plan.ledger, &plan.ledger_spec())?;

    let (program, program_args) = args.command.split_first().expect("clap requires a command");
    let mut command = Command::new(program);
    command
        .args(program_args)
        .envs(plan.child_env(preload.as_deref()));

    let status = match supervise::run(command, guard) {
        Ok(status) => status,
        Err(e) => {
            if matches!(e, SuperviseError::Spawn { .. }) {
                claim.abandon();
            } else {
                let _ = claim.finish();
            }
            return Err(e.into());
        }
    };
    let mut warnings = Vec::new();
    let (name, path) = (claim.name().to_string(), claim.path().to_path_buf());
    match claim.finish() {
        Ok(Finish::Removed) => {}
        Ok(Finish::StillRunning(pids)) => warnings.push(format!(
            "the program exited, but processes of slice '{name}' still run (PID {}); its ledger {} stays until they end",
            pids.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            path.display()
        )),
        Err(e) => warnings.push(format!("cleaning up slice '{name}': {e}")),
    }
    Ok(RunOutcome {
        code: supervise::exit_code(status),
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command as Sub};
    use clap::Parser;

    const U0: &str = "GPU-aaaa1111-0000-4000-8000-000000000000";
    const U1: &str = "GPU-bbbb2222-0000-4000-8000-000000000000";

    fn args(extra: &[&str]) -> RunArgs {
        let argv = ["gpuslice", "run", "--memory", "2GiB"]
            .into_iter()
            .chain(extra.iter().copied())
            .chain(["--", "true"]);
        match Cli::try_parse_from(argv).unwrap().command {
            Sub::Run(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn env_with_lib() -> (tempfile::TempDir, RunEnv) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("libgpuslice.so"), b"\x7fELF").unwrap();
        let env = RunEnv {
            exe: Some(dir.path().join("gpuslice")),
            pid: 4242,
            ..RunEnv::default()
        };
        (dir, env)
    }

    fn machine() -> Result<Vec<GpuDevice>, GpuError> {
        Ok(vec![
            GpuDevice {
                index: 0,
                uuid: U0.into(),
            },
            GpuDevice {
                index: 1,
                uuid: U1.into(),
            },
        ])
    }

    #[test]
    fn defaults_without_gpus_never_ask_for_devices() {
        let (dir, env) = env_with_lib();
        let p = plan(&args(&[]), &env, || panic!("NVML must not be asked")).unwrap();
        assert_eq!(p.name, "run-4242");
        assert_eq!(p.limit, Some(2 << 30));
        assert_eq!(p.gpus, None);
        assert_eq!(
            p.ledger,
            gpuslice_ledger::default_ledger_dir().join("run-4242.ledger")
        );
        assert_eq!(
            p.lib,
            dir.path().join("libgpuslice.so").canonicalize().unwrap()
        );
    }

    #[test]
    fn gpus_resolve_through_the_device_list() {
        let (_dir, mut env) = env_with_lib();
        env.ledger_dir = Some("/tmp/gs-env".into());
        let p = plan(
            &args(&["--gpus", "1,GPU-aaaa", "--name", "x"]),
            &env,
            machine,
        )
        .unwrap();
        assert_eq!(p.gpus, Some(vec![U1.to_string(), U0.to_string()]));
        assert_eq!(p.ledger, PathBuf::from("/tmp/gs-env/x.ledger"));

        let err = plan(&args(&["--gpus", "3"]), &env, machine).unwrap_err();
        assert!(err.to_string().contains("--gpus"), "{err}");
        assert_eq!(err.exit_code(), 125);
    }

    #[test]
    fn bad_values_are_refused_naming_the_flag() {
        let (_dir, env) = env_with_lib();
        for (extra, flag) in [
            (&["--name", "a/b"][..], "--name"),
            (&["--name", ""][..], "--name"),
            (&["--gpus", "zero"][..], "--gpus"),
            (&["--gpus", "0,,1"][..], "--gpus"),
            (&["--log", "loud"][..], "--log"),
        ] {
            let err = plan(&args(extra), &env, machine).expect_err(flag);
            assert!(err.to_string().contains(flag), "{extra:?}: {err}");
            assert_eq!(err.exit_code(), 125);
        }
        for memory in ["lots", "0", "", "-1"] {
            let mut a = args(&[]);
            a.memory = Some(memory.into());
            let err = plan(&a, &env, machine).expect_err(memory);
            assert!(err.to_string().contains("--memory"), "{memory}: {err}");
        }
        let p = plan(&args(&["--log", "DEBUG"]), &env, machine).unwrap();
        assert_eq!(p.log.unwrap().0, "debug");
    }

    #[test]
    fn a_missing_library_stops_the_plan() {
        let env = RunEnv {
            exe: Some(PathBuf::from("/nonexistent/bin/gpuslice")),
            ..RunEnv::default()
        };
        let err = plan(&args(&[]), &env, machine).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/bin"), "{err}");
    }
}
