//! The plan of a `gpuslice run`: everything decided before anything is created or
//! started. It validates flag values (size, name, log level), finds the ledger folder and
//! the interposer library, and builds the child's environment. All of it is pure
//! functions of the flags and of the environment handed in, so tests drive it directly.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use gpuslice_config::{
    ComputeShares, DeviceSelector, ENV_LEDGER, ENV_LEDGER_DIR, ENV_LOG, ENV_MEMORY, ENV_SLICE_NAME,
    LogLevel, MemoryLimits, SharesError, parse_size,
};
use gpuslice_ledger::{LedgerSpec, default_ledger_dir};

pub use gpuslice_host::library::{ENV_LIB, LIB_NAME, find_library};
/// The longest slice name.
pub const MAX_NAME_LEN: usize = 63;

/// What can be wrong with a run's plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// `--memory` does not parse.
    #[error("--memory {value:?} is not a memory size: {source} (e.g. 4GiB, 512MiB, 8g)")]
    BadMemory {
        /// The value.
        value: String,
        /// Why.
        source: gpuslice_config::SizeError,
    },
    /// `--name` is not usable.
    #[error(
        "--name {0:?} is not a slice name: use 1 to {MAX_NAME_LEN} characters of A-Z, a-z, 0-9, '.', '_' and '-', not starting with '.'"
    )]
    BadName(String),
    /// `--log` is not a level.
    #[error("{flag} {value:?} is not a compute share: {reason}")]
    BadCompute {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    #[error("--log {0:?} is not a log level (expected off, error, warn, info, debug or trace)")]
    BadLog(String),
    /// The interposer library could not be found or used.
    #[error(transparent)]
    Library(#[from] gpuslice_host::library::LibraryError),
    /// A path could not be read.
    #[error("{source_name}: {path}: {source}")]
    Io {
        /// Where the path came from.
        source_name: String,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The ledger path is not valid UTF-8, so the interposer could not read it.
    #[error("{source_name}: the ledger path {path:?} is not valid UTF-8")]
    LedgerPathNotUtf8 {
        /// Where the folder came from.
        source_name: String,
        /// The path.
        path: PathBuf,
    },
    /// The inherited `LD_PRELOAD` is not valid UTF-8.
    #[error("the inherited LD_PRELOAD is not valid UTF-8")]
    PreloadNotUtf8,
}

/// A validated `--log` value, spelled as `GPUSLICE_LOG` expects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogName(pub String);

/// Parses `--memory`.
pub fn parse_memory(text: &str) -> Result<u64, PlanError> {
    parse_size(text).map_err(|source| PlanError::BadMemory {
        value: text.into(),
        source,
    })
}

/// Checks `--name`: `[A-Za-z0-9._-]`, 1 to 63 characters, not a hidden file name.
pub fn validate_name(text: &str) -> Result<String, PlanError> {
    let ok = !text.is_empty()
        && text.len() <= MAX_NAME_LEN
        && !text.starts_with('.')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(text.to_string())
    } else {
        Err(PlanError::BadName(text.into()))
    }
}

/// Checks `--log`.
pub fn parse_log(text: &str) -> Result<LogName, PlanError> {
    LogLevel::parse_name(text)
        .map(|_| LogName(text.trim().to_ascii_lowercase()))
        .ok_or_else(|| PlanError::BadLog(text.into()))
}

/// The ledger folder: `--ledger-dir`, else `GPUSLICE_LEDGER_DIR`, else the caller's
/// per-user default (`/dev/shm/gpuslice-<uid>`, created 0700 when the ledger is; any
/// other folder must exist). Returns the folder and what it came from (for messages).
pub fn ledger_dir(flag: Option<&Path>, env: Option<&OsStr>) -> (PathBuf, String) {
    if let Some(dir) = flag {
        return (dir.to_path_buf(), "--ledger-dir".into());
    }
    match env {
        Some(v) if !v.is_empty() => (PathBuf::from(v), ENV_LEDGER_DIR.into()),
        _ => (default_ledger_dir(), "the default ledger folder".into()),
    }
}

/// `LD_PRELOAD` for the child: `lib` first, then the inherited entries (which glibc
/// separates by ':' or blanks), without repeating `lib`.
pub fn prepend_preload(lib: &str, existing: Option<&str>) -> String {
    let mut parts = vec![lib];
    parts.extend(
        existing
            .unwrap_or("")
            .split([':', ' ', '\t', '\n'])
            .filter(|p| !p.is_empty() && *p != lib),
    );
    parts.join(":")
}

/// Parses `--compute` and `--burst` (whole percentages; the burst at least the limit),
/// with the interposer's own definition of what they mean ([`ComputeShares::new`]):
/// `--compute 100` is the whole GPU, no compute limit.
pub fn parse_compute(
    hard: Option<&str>,
    burst: Option<&str>,
) -> Result<Option<ComputeShares>, PlanError> {
    let percent = |flag: &'static str, value: &str| {
        gpuslice_config::compute::parse_percent(flag, value, false).map_err(|e| {
            PlanError::BadCompute {
                flag,
                value: value.to_string(),
                reason: match e {
                    gpuslice_config::ConfigError::BadCompute { reason, .. } => reason,
                    other => other.to_string(),
                },
            }
        })
    };
    let Some(hard) = hard else {
        return Ok(None);
    };
    let hard = percent("--compute", hard)?;
    let burst = burst.map(|b| percent("--burst", b)).transpose()?;
    ComputeShares::new(hard, burst).map_err(|e| PlanError::BadCompute {
        flag: "--burst",
        value: burst.map(|b| b.to_string()).unwrap_or_default(),
        reason: match e {
            SharesError::BurstBelowHard { hard, .. } => format!("it is below --compute {hard}"),
            other => other.to_string(),
        },
    })
}

/// Everything a run needs, decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPlan {
    /// The memory limit on each limited GPU, if any.
    pub limit: Option<u64>,
    /// The compute limits, if any.
    pub compute: Option<ComputeShares>,
    /// The GPUs given with `--gpus`, as canonical UUIDs in the given order; `None` limits
    /// every GPU the program uses.
    pub gpus: Option<Vec<String>>,
    /// The slice's name.
    pub name: String,
    /// The ledger file (absolute, valid UTF-8).
    pub ledger: PathBuf,
    /// The interposer (absolute, canonical).
    pub lib: PathBuf,
    /// `--log`, if given.
    pub log: Option<LogName>,
}

impl RunPlan {
    /// Puts the plan together; `ledger_dir` comes with the name of its source.
    pub fn new(
        limit: Option<u64>,
        gpus: Option<Vec<String>>,
        name: String,
        ledger_dir: (PathBuf, String),
        lib: PathBuf,
        log: Option<LogName>,
    ) -> Result<Self, PlanError> {
        let (dir, source_name) = ledger_dir;
        let ledger =
            std::path::absolute(dir.join(format!("{name}.ledger"))).map_err(|e| PlanError::Io {
                source_name: source_name.clone(),
                path: dir.clone(),
                source: e,
            })?;
        if ledger.to_str().is_none() {
            return Err(PlanError::LedgerPathNotUtf8 {
                source_name,
                path: ledger,
            });
        }
        Ok(Self {
            limit,
            compute: None,
            gpus,
            name,
            ledger,
            lib,
            log,
        })
    }

    /// Sets the compute limits.
    pub fn with_compute(mut self, compute: Option<ComputeShares>) -> Self {
        self.compute = compute;
        self
    }

    /// The memory limits, as the interposer will read them.
    pub fn limits(&self) -> MemoryLimits {
        let Some(limit) = self.limit else {
            return MemoryLimits::default();
        };
        match &self.gpus {
            None => MemoryLimits {
                all_devices: Some(limit),
                per_device: Vec::new(),
            },
            Some(uuids) => MemoryLimits {
                all_devices: None,
                per_device: uuids
                    .iter()
                    .map(|u| (DeviceSelector::Uuid(u.clone()), limit))
                    .collect(),
            },
        }
    }

    /// The ledger to create, consistent with [`RunPlan::limits`].
    pub fn ledger_spec(&self) -> LedgerSpec {
        // Without a memory limit the devices are still entered (unlimited), because the
        // compute budget lives in the device entries.
        let limit = self.limit.unwrap_or(u64::MAX);
        match &self.gpus {
            None => LedgerSpec {
                name: self.name.clone(),
                default_limit: self.limit.or(self.compute.map(|_| u64::MAX)),
                devices: Vec::new(),
                compute: self.compute.map(ComputeShares::to_pair),
            },
            Some(uuids) => LedgerSpec {
                name: self.name.clone(),
                default_limit: None,
                devices: uuids.iter().map(|u| (u.clone(), limit)).collect(),
                compute: self.compute.map(ComputeShares::to_pair),
            },
        }
    }

    /// The variables to set in the child's environment (all others are inherited
    /// untouched). `inherited_preload` is the current `LD_PRELOAD`.
    pub fn child_env(&self, inherited_preload: Option<&str>) -> Vec<(String, String)> {
        let text = |p: &Path| p.to_str().map(str::to_string).unwrap_or_default();
        let mut env = vec![
            (
                "LD_PRELOAD".to_string(),
                prepend_preload(&text(&self.lib), inherited_preload),
            ),
            (ENV_LEDGER.to_string(), text(&self.ledger)),
            (ENV_SLICE_NAME.to_string(), self.name.clone()),
        ];
        if self.limit.is_some() {
            env.push((ENV_MEMORY.to_string(), self.limits().to_env_value()));
        }
        let compute = gpuslice_config::ComputeLimits {
            shares: self.compute,
            ..Default::default()
        };
        env.extend(compute.to_env());
        if let Some(log) = &self.log {
            env.push((ENV_LOG.to_string(), log.0.clone()));
        }
        if let Some(uuids) = &self.gpus {
            env.push(("CUDA_VISIBLE_DEVICES".to_string(), uuids.join(",")));
        }
        env
    }
}

/// Reads the inherited `LD_PRELOAD` (absent when unset).
pub fn inherited_preload(value: Option<OsString>) -> Result<Option<String>, PlanError> {
    value
        .map(|v| v.into_string().map_err(|_| PlanError::PreloadNotUtf8))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuslice_config::SliceConfig;

    const GIB: u64 = 1 << 30;
    const U0: &str = "GPU-aaaa1111-0000-4000-8000-000000000000";
    const U1: &str = "GPU-bbbb2222-0000-4000-8000-000000000000";

    fn plan(gpus: Option<Vec<&str>>) -> RunPlan {
        RunPlan::new(
            Some(4 * GIB),
            gpus.map(|g| g.into_iter().map(String::from).collect()),
            "job-1".into(),
            (PathBuf::from("/dev/shm/gs"), "--ledger-dir".into()),
            PathBuf::from("/opt/gs/lib/libgpuslice.so"),
            None,
        )
        .unwrap()
    }

    fn get<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("4GiB").unwrap(), 4 * GIB);
        assert_eq!(parse_memory("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_memory("8g").unwrap(), 8 * GIB);
        for bad in ["lots", "", "0", "-1", "4GB-oops"] {
            let msg = parse_memory(bad).unwrap_err().to_string();
            assert!(msg.contains("--memory"), "{bad}: {msg}");
        }
    }

    #[test]
    fn names() {
        for good in ["a", "run-123", "A.b_c-9", &"x".repeat(63)] {
            assert_eq!(validate_name(good).unwrap(), good);
        }
        for bad in [
            "",
            "a/b",
            "a b",
            "..",
            ".hidden",
            "é",
            "a:b",
            &"x".repeat(64),
        ] {
            let msg = validate_name(bad).expect_err(bad).to_string();
            assert!(msg.contains("--name"), "{msg}");
        }
    }

    #[test]
    fn log_levels() {
        assert_eq!(parse_log(" Info ").unwrap(), LogName("info".into()));
        assert!(parse_log("loud").unwrap_err().to_string().contains("--log"));
    }

    #[test]
    fn ledger_dir_precedence() {
        let flag = Path::new("/flag");
        let env = OsStr::new("/env");
        assert_eq!(ledger_dir(Some(flag), Some(env)).0, flag);
        assert_eq!(ledger_dir(None, Some(env)).0, Path::new("/env"));
        assert_eq!(
            ledger_dir(None, Some(OsStr::new(""))).0,
            default_ledger_dir()
        );
        assert_eq!(ledger_dir(None, None).0, default_ledger_dir());
    }

    #[test]
    fn preload_is_prepended_once() {
        let lib = "/opt/libgpuslice.so";
        assert_eq!(prepend_preload(lib, None), lib);
        assert_eq!(prepend_preload(lib, Some("")), lib);
        assert_eq!(
            prepend_preload(lib, Some("/a.so /b.so:/c.so")),
            "/opt/libgpuslice.so:/a.so:/b.so:/c.so"
        );
        assert_eq!(
            prepend_preload(lib, Some("/a.so:/opt/libgpuslice.so")),
            "/opt/libgpuslice.so:/a.so"
        );
    }

    #[test]
    fn child_env_without_gpus_limits_every_device() {
        let p = plan(None);
        let env = p.child_env(Some("/x.so"));
        assert_eq!(
            get(&env, "LD_PRELOAD"),
            Some("/opt/gs/lib/libgpuslice.so:/x.so")
        );
        assert_eq!(get(&env, ENV_LEDGER), Some("/dev/shm/gs/job-1.ledger"));
        assert_eq!(get(&env, ENV_MEMORY), Some("4GiB"));
        assert_eq!(get(&env, ENV_SLICE_NAME), Some("job-1"));
        assert_eq!(get(&env, ENV_LOG), None);
        assert_eq!(get(&env, "CUDA_VISIBLE_DEVICES"), None);
        let spec = p.ledger_spec();
        assert_eq!(spec.default_limit, Some(4 * GIB));
        assert!(spec.devices.is_empty());
        assert_eq!(spec.name, "job-1");
    }

    #[test]
    fn child_env_with_gpus_limits_exactly_those() {
        let mut p = plan(Some(vec![U1, U0]));
        p.log = Some(LogName("debug".into()));
        let env = p.child_env(None);
        assert_eq!(
            get(&env, "CUDA_VISIBLE_DEVICES"),
            Some(&*format!("{U1},{U0}"))
        );
        assert_eq!(
            get(&env, ENV_MEMORY),
            Some(&*format!("{U1}=4GiB,{U0}=4GiB"))
        );
        assert_eq!(get(&env, ENV_LOG), Some("debug"));
        assert_eq!(get(&env, "LD_PRELOAD"), Some("/opt/gs/lib/libgpuslice.so"));
        let spec = p.ledger_spec();
        assert_eq!(spec.default_limit, None);
        assert_eq!(
            spec.devices,
            [(U1.to_string(), 4 * GIB), (U0.to_string(), 4 * GIB)]
        );
    }

    #[test]
    fn the_interposer_reads_the_environment_as_the_ledger_says() {
        for p in [plan(None), plan(Some(vec![U0, U1]))] {
            let env = p.child_env(None);
            let cfg = SliceConfig::from_vars(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .expect("the interposer accepts the environment");
            assert_eq!(cfg.ledger_path.as_deref(), p.ledger.to_str());
            assert_eq!(cfg.slice_name.as_deref(), Some("job-1"));
            let spec = p.ledger_spec();
            assert_eq!(cfg.memory.all_devices, spec.default_limit);
            for (uuid, limit) in &spec.devices {
                assert_eq!(cfg.memory.limit_for(None, uuid), Some(*limit));
            }
        }
    }

    #[test]
    fn compute_flags_mean_what_the_interposer_reads() {
        // Both edges, with and without a burst, with and without --gpus: the limits
        // written into the ledger are the limits the interposer reads from the child's
        // environment (it refuses a ledger whose compute limits differ).
        for (hard, burst) in [
            ("1", None),
            ("1", Some("1")),
            ("1", Some("100")),
            ("30", Some("30")),
            ("99", Some("100")),
            ("100", None),
            ("100", Some("100")),
        ] {
            for gpus in [None, Some(vec![U0])] {
                let p = plan(gpus.clone()).with_compute(parse_compute(Some(hard), burst).unwrap());
                let env = p.child_env(None);
                let cfg = SliceConfig::from_vars(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .expect("the interposer accepts the environment");
                assert_eq!(
                    cfg.compute.shares.map(|s| s.to_pair()),
                    p.ledger_spec().compute,
                    "--compute {hard} --burst {burst:?} --gpus {gpus:?}"
                );
            }
        }
        assert_eq!(parse_compute(Some("100"), None).unwrap(), None);
        assert_eq!(
            parse_compute(Some("1"), Some("100")).unwrap(),
            Some(ComputeShares {
                hard: 1,
                burst: Some(100)
            })
        );
        let err = parse_compute(Some("50"), Some("20"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--burst") && err.contains("below --compute 50"),
            "{err}"
        );
    }

    #[test]
    fn relative_ledger_dirs_become_absolute() {
        let p = RunPlan::new(
            Some(GIB),
            None,
            "n".into(),
            (PathBuf::from("rel"), "--ledger-dir".into()),
            PathBuf::from("/l.so"),
            None,
        )
        .unwrap();
        assert!(p.ledger.is_absolute());
        assert!(p.ledger.ends_with("rel/n.ledger"));
    }
}
