//! Compute limits: the share of a GPU's time a slice may use, from gpuslice's own
//! variables or the names vgpu-controller and HAMi-core deployments already set.
//!
//! A value that does not parse is an error naming the variable, never "no limit".

use crate::ConfigError;

/// gpuslice's own variable: the hard compute limit in percent of each GPU (1 to 100).
pub const ENV_COMPUTE: &str = "GPUSLICE_COMPUTE";
/// gpuslice's own variable: the soft limit (burst) in percent, at least the hard limit.
/// The slice may use up to this much while no other slice wants the GPU.
pub const ENV_COMPUTE_BURST: &str = "GPUSLICE_COMPUTE_BURST";
/// gpuslice's own variable: how GPU busy time is measured (`events`, the default, or
/// `nvml`, kept for comparison; see docs/compute.md).
pub const ENV_COMPUTE_METHOD: &str = "GPUSLICE_COMPUTE_METHOD";
/// gpuslice's own variable (tuning): how far, in milliseconds of GPU time, a slice may
/// run ahead of its share before it rests (1 to 100, default 5). Larger: longer bursts
/// and rests, fewer transitions; smaller: a smoother share, at some throughput.
pub const ENV_COMPUTE_BAND_MS: &str = "GPUSLICE_COMPUTE_BAND_MS";
/// gpuslice's own variable (tuning): how much GPU work, in milliseconds, a process of a
/// compute slice may have queued (1 to 100, default 2).
pub const ENV_COMPUTE_QUEUE_MS: &str = "GPUSLICE_COMPUTE_QUEUE_MS";
/// gpuslice's own variable (tuning, experimental): for a slice alone on the GPU, how far
/// ahead of its share, in milliseconds, it may still be when it ends a rest (0 to 100;
/// unset: the band, no hysteresis). 0 makes a slice alone run and rest a band at a time.
pub const ENV_COMPUTE_ALONE_RESUME_MS: &str = "GPUSLICE_COMPUTE_ALONE_RESUME_MS";
/// vgpu-controller: hard compute limit in percent (0 means no limit).
pub const ENV_VGPU_CORE: &str = "CUDA_CORE_LIMIT";
/// vgpu-controller: soft compute limit in percent (0 means none).
pub const ENV_VGPU_CORE_SOFT: &str = "CUDA_CORE_SOFT_LIMIT";
/// HAMi-core: compute limit in percent of SMs (0 means no limit).
pub const ENV_HAMI_SM: &str = "CUDA_DEVICE_SM_LIMIT";

const ALL: [&str; 9] = [
    ENV_COMPUTE,
    ENV_COMPUTE_BURST,
    ENV_COMPUTE_METHOD,
    ENV_COMPUTE_BAND_MS,
    ENV_COMPUTE_QUEUE_MS,
    ENV_COMPUTE_ALONE_RESUME_MS,
    ENV_VGPU_CORE,
    ENV_VGPU_CORE_SOFT,
    ENV_HAMI_SM,
];

/// Whether `key` is one of the compute variables.
pub fn is_compute_var(key: &str) -> bool {
    ALL.contains(&key)
}

/// How the slice's GPU busy time is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputeMethod {
    /// Timing events recorded after each launch on the launch's stream.
    #[default]
    Events,
    /// The driver's per-process utilization samples from NVML.
    Nvml,
}

/// A slice's compute limit as every part of gpuslice means it: the interposer (from the
/// variables), `gpuslice run` (from `--compute`/`--burst`) and `gpuslice cdi` (from a
/// slice's `compute=`/`burst=`) all build it with [`ComputeShares::new`], so the limits
/// one writes into a ledger are the limits the others expect to find there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComputeShares {
    /// Hard limit in percent of each GPU (1 to 99): never more, whatever else runs.
    pub hard: u32,
    /// Soft limit in percent (above `hard`, at most 100), used while no other slice
    /// wants the GPU.
    pub burst: Option<u32>,
}

/// Why a hard limit and a burst make no compute limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharesError {
    /// A share outside 1 to 100 percent.
    #[error("{0}% is not a share of a GPU (1 to 100 percent)")]
    OutOfRange(u32),
    /// A burst below the hard limit.
    #[error("the burst {burst}% is below the hard limit {hard}%")]
    BurstBelowHard {
        /// The hard limit.
        hard: u32,
        /// The burst.
        burst: u32,
    },
}

impl ComputeShares {
    /// The one definition of what a hard limit and a burst (whole percentages, 1 to
    /// 100) mean. A hard limit of 100 is the whole GPU: no compute limit at all (`None`;
    /// the slice takes no part in the GPU's turns), with or without a burst (which can
    /// then only be 100). A burst equal to the hard limit is no burst. A burst below the
    /// hard limit is an error.
    pub fn new(hard: u32, burst: Option<u32>) -> Result<Option<Self>, SharesError> {
        for p in std::iter::once(hard).chain(burst) {
            if !(1..=100).contains(&p) {
                return Err(SharesError::OutOfRange(p));
            }
        }
        if let Some(b) = burst
            && b < hard
        {
            return Err(SharesError::BurstBelowHard { hard, burst: b });
        }
        Ok((hard < 100).then_some(Self {
            hard,
            burst: burst.filter(|&b| b != hard),
        }))
    }

    /// As the ledger stores it: (hard, burst).
    pub fn to_pair(self) -> (u32, Option<u32>) {
        (self.hard, self.burst)
    }
}

impl std::fmt::Display for ComputeShares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}%", self.hard)?;
        if let Some(b) = self.burst {
            write!(f, " (burst {b}%)")?;
        }
        Ok(())
    }
}

/// The compute limits of a slice, in percent of one GPU's time, the same on every GPU.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ComputeLimits {
    /// The limit; `None` means no compute limit.
    pub shares: Option<ComputeShares>,
    /// The measurement.
    pub method: ComputeMethod,
    /// Tuning: the band in milliseconds (`None`: the default).
    pub band_ms: Option<u32>,
    /// Tuning: the queue bound in milliseconds (`None`: the default).
    pub queue_ms: Option<u32>,
    /// Tuning: where a slice alone on the GPU ends a rest, in milliseconds ahead of its
    /// share (`None`: the band).
    pub alone_resume_ms: Option<u32>,
    /// Which variables the limits came from, for messages.
    pub source: String,
}

impl ComputeLimits {
    /// Whether time on the GPU is limited at all.
    pub fn is_limited(&self) -> bool {
        self.shares.is_some()
    }

    /// Parses the compute variables among `(name, value)` pairs. gpuslice's own names win
    /// over the compatible ones.
    pub fn from_vars<'a>(
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ConfigError> {
        let mut found: Vec<(&str, &str)> = Vec::new();
        for (k, v) in vars {
            if is_compute_var(k) {
                found.retain(|(old, _)| *old != k);
                found.push((k, v));
            }
        }
        let get = |name: &str| found.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);

        let method = match get(ENV_COMPUTE_METHOD).map(str::trim) {
            None | Some("") | Some("events") => ComputeMethod::Events,
            Some("nvml") => ComputeMethod::Nvml,
            Some(other) => {
                return Err(ConfigError::BadCompute {
                    var: ENV_COMPUTE_METHOD.into(),
                    value: other.into(),
                    reason: "expected events or nvml".into(),
                });
            }
        };

        let (hard_var, hard) = if let Some(v) = get(ENV_COMPUTE) {
            (ENV_COMPUTE, Some(parse_percent(ENV_COMPUTE, v, false)?))
        } else if let Some(v) = get(ENV_VGPU_CORE) {
            (ENV_VGPU_CORE, parse_percent(ENV_VGPU_CORE, v, true)?.into())
        } else if let Some(v) = get(ENV_HAMI_SM) {
            (ENV_HAMI_SM, parse_percent(ENV_HAMI_SM, v, true)?.into())
        } else {
            ("", None)
        };
        // The compatible names use 0 for "no limit".
        let hard = hard.filter(|&p| p > 0);

        let (burst_var, burst) = if let Some(v) = get(ENV_COMPUTE_BURST) {
            (
                ENV_COMPUTE_BURST,
                Some(parse_percent(ENV_COMPUTE_BURST, v, false)?),
            )
        } else if let Some(v) = get(ENV_VGPU_CORE_SOFT) {
            let p = parse_percent(ENV_VGPU_CORE_SOFT, v, true)?;
            (ENV_VGPU_CORE_SOFT, (p > 0).then_some(p))
        } else {
            ("", None)
        };

        let shares = match (hard, burst) {
            (None, None) => None,
            (None, Some(b)) => {
                return Err(ConfigError::BadCompute {
                    var: burst_var.into(),
                    value: b.to_string(),
                    reason: format!(
                        "a soft limit needs a hard limit ({ENV_COMPUTE}, {ENV_VGPU_CORE} or {ENV_HAMI_SM})"
                    ),
                });
            }
            (Some(h), b) => ComputeShares::new(h, b).map_err(|e| ConfigError::BadCompute {
                var: burst_var.into(),
                value: b.map(|b| b.to_string()).unwrap_or_default(),
                reason: match e {
                    SharesError::BurstBelowHard { hard, .. } => {
                        format!("it is below the hard limit {hard} set by {hard_var}")
                    }
                    other => other.to_string(),
                },
            })?,
        };

        let mut source = Vec::new();
        if shares.is_some() {
            source.push(hard_var);
            if shares.is_some_and(|s| s.burst.is_some()) {
                source.push(burst_var);
            }
        }
        let millis = |var: &str, min: u32| -> Result<Option<u32>, ConfigError> {
            let Some(value) = get(var) else {
                return Ok(None);
            };
            match value.trim().parse::<u32>() {
                Ok(n) if (min..=100).contains(&n) => Ok(Some(n)),
                _ => Err(ConfigError::BadCompute {
                    var: var.into(),
                    value: value.into(),
                    reason: format!("expected a whole number of milliseconds, {min} to 100"),
                }),
            }
        };
        let band_ms = millis(ENV_COMPUTE_BAND_MS, 1)?;
        let queue_ms = millis(ENV_COMPUTE_QUEUE_MS, 1)?;
        let alone_resume_ms = millis(ENV_COMPUTE_ALONE_RESUME_MS, 0)?;

        Ok(Self {
            shares,
            method,
            band_ms,
            queue_ms,
            alone_resume_ms,
            source: source.join(", "),
        })
    }

    /// Renders as `GPUSLICE_COMPUTE`/`GPUSLICE_COMPUTE_BURST` pairs.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some(s) = self.shares {
            env.push((ENV_COMPUTE.to_string(), s.hard.to_string()));
            if let Some(b) = s.burst {
                env.push((ENV_COMPUTE_BURST.to_string(), b.to_string()));
            }
        }
        env
    }
}

/// Parses a whole percentage (`30` or `30%`). `allow_zero` is for the compatible names,
/// where 0 means "no limit".
pub fn parse_percent(var: &str, value: &str, allow_zero: bool) -> Result<u32, ConfigError> {
    let bad = |reason: &str| ConfigError::BadCompute {
        var: var.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let text = value.trim();
    let text = text.strip_suffix('%').unwrap_or(text).trim();
    if text.is_empty() {
        return Err(bad("it is empty"));
    }
    let n: u32 = text
        .parse()
        .map_err(|_| bad("expected a whole number of percent, 1 to 100"))?;
    if n > 100 {
        return Err(bad("more than 100 percent"));
    }
    if n == 0 && !allow_zero {
        return Err(bad(
            "0 percent would stop the GPU; leave the variable unset for no limit",
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(vars: &[(&str, &str)]) -> Result<ComputeLimits, ConfigError> {
        ComputeLimits::from_vars(vars.iter().copied())
    }

    #[test]
    fn no_variables_no_limit() {
        let c = limits(&[]).unwrap();
        assert!(!c.is_limited());
        assert_eq!(c.method, ComputeMethod::Events);
    }

    #[test]
    fn own_names() {
        let c = limits(&[(ENV_COMPUTE, "30"), (ENV_COMPUTE_BURST, "80%")]).unwrap();
        assert_eq!(
            c.shares,
            Some(ComputeShares {
                hard: 30,
                burst: Some(80)
            })
        );
        assert!(c.is_limited());
        assert_eq!(c.source, "GPUSLICE_COMPUTE, GPUSLICE_COMPUTE_BURST");
        assert_eq!(
            c.to_env(),
            vec![
                ("GPUSLICE_COMPUTE".to_string(), "30".to_string()),
                ("GPUSLICE_COMPUTE_BURST".to_string(), "80".to_string())
            ]
        );
        // A burst equal to the hard limit is no burst.
        let c = limits(&[(ENV_COMPUTE, "30"), (ENV_COMPUTE_BURST, "30")]).unwrap();
        assert_eq!(
            c.shares,
            Some(ComputeShares {
                hard: 30,
                burst: None
            })
        );
    }

    #[test]
    fn the_edges_one_and_a_hundred_percent() {
        // 100 is the whole GPU: no compute limit, with or without a burst (of 100).
        for vars in [
            &[(ENV_COMPUTE, "100")][..],
            &[(ENV_COMPUTE, "100%"), (ENV_COMPUTE_BURST, "100")][..],
            &[(ENV_VGPU_CORE, "100"), (ENV_VGPU_CORE_SOFT, "100")][..],
            &[(ENV_HAMI_SM, "100")][..],
        ] {
            let c = limits(vars).unwrap();
            assert_eq!(c.shares, None, "{vars:?}");
            assert!(!c.is_limited() && c.to_env().is_empty(), "{vars:?}");
        }
        // 1 is a limit, and may burst to the whole GPU.
        let c = limits(&[(ENV_COMPUTE, "1")]).unwrap();
        assert_eq!(
            c.shares,
            Some(ComputeShares {
                hard: 1,
                burst: None
            })
        );
        let c = limits(&[(ENV_COMPUTE, "1"), (ENV_COMPUTE_BURST, "100")]).unwrap();
        assert_eq!(
            c.shares,
            Some(ComputeShares {
                hard: 1,
                burst: Some(100)
            })
        );
        assert_eq!(c.to_env()[1].1, "100");
        // 99 with a burst of 100 is still a limit.
        let c = limits(&[(ENV_COMPUTE, "99"), (ENV_COMPUTE_BURST, "100")]).unwrap();
        assert_eq!(
            c.shares,
            Some(ComputeShares {
                hard: 99,
                burst: Some(100)
            })
        );
    }

    #[test]
    fn shares_are_defined_once() {
        assert_eq!(ComputeShares::new(100, None), Ok(None));
        assert_eq!(ComputeShares::new(100, Some(100)), Ok(None));
        assert_eq!(
            ComputeShares::new(30, Some(30)),
            Ok(Some(ComputeShares {
                hard: 30,
                burst: None
            }))
        );
        assert_eq!(
            ComputeShares::new(50, Some(20)),
            Err(SharesError::BurstBelowHard {
                hard: 50,
                burst: 20
            })
        );
        assert_eq!(ComputeShares::new(0, None), Err(SharesError::OutOfRange(0)));
        assert_eq!(
            ComputeShares::new(30, Some(101)),
            Err(SharesError::OutOfRange(101))
        );
        let s = ComputeShares::new(30, Some(80)).unwrap().unwrap();
        assert_eq!(
            (s.to_pair(), s.to_string()),
            ((30, Some(80)), "30% (burst 80%)".into())
        );
    }

    #[test]
    fn compatible_names_and_precedence() {
        let c = limits(&[(ENV_VGPU_CORE, "50"), (ENV_VGPU_CORE_SOFT, "90")]).unwrap();
        assert_eq!(
            c.shares,
            Some(ComputeShares {
                hard: 50,
                burst: Some(90)
            })
        );
        let c = limits(&[(ENV_HAMI_SM, "25")]).unwrap();
        assert_eq!(c.shares.unwrap().hard, 25);
        assert_eq!(c.source, "CUDA_DEVICE_SM_LIMIT");
        // Zero is "no limit" in the compatible names.
        assert!(!limits(&[(ENV_HAMI_SM, "0")]).unwrap().is_limited());
        assert!(!limits(&[(ENV_VGPU_CORE, "0")]).unwrap().is_limited());
        // gpuslice's own name wins.
        let c = limits(&[(ENV_HAMI_SM, "25"), (ENV_COMPUTE, "40")]).unwrap();
        assert_eq!(c.shares.unwrap().hard, 40);
    }

    #[test]
    fn bad_values_fail_closed_and_name_the_variable() {
        for (var, value) in [
            (ENV_COMPUTE, "0"),
            (ENV_COMPUTE, "abc"),
            (ENV_COMPUTE, "150"),
            (ENV_COMPUTE, "30.5"),
            (ENV_COMPUTE, ""),
            (ENV_VGPU_CORE, "-5"),
            (ENV_HAMI_SM, "lots"),
            (ENV_COMPUTE_METHOD, "magic"),
        ] {
            let e = limits(&[(var, value)]).unwrap_err().to_string();
            assert!(e.contains(var), "{e}");
        }
        let e = limits(&[(ENV_COMPUTE_BURST, "80")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs a hard limit"), "{e}");
        let e = limits(&[(ENV_COMPUTE, "50"), (ENV_COMPUTE_BURST, "30")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("below the hard limit 50"), "{e}");
    }

    #[test]
    fn tuning_knobs_are_whole_milliseconds_and_fail_closed() {
        let c = limits(&[
            (ENV_COMPUTE, "30"),
            (ENV_COMPUTE_BAND_MS, "10"),
            (ENV_COMPUTE_QUEUE_MS, " 4 "),
        ])
        .unwrap();
        assert_eq!((c.band_ms, c.queue_ms), (Some(10), Some(4)));
        let c = limits(&[(ENV_COMPUTE, "30"), (ENV_COMPUTE_ALONE_RESUME_MS, "0")]).unwrap();
        assert_eq!(c.alone_resume_ms, Some(0));
        assert_eq!(limits(&[(ENV_COMPUTE, "30")]).unwrap().band_ms, None);
        for (var, value) in [
            (ENV_COMPUTE_BAND_MS, "0"),
            (ENV_COMPUTE_BAND_MS, "101"),
            (ENV_COMPUTE_QUEUE_MS, "2ms"),
            (ENV_COMPUTE_QUEUE_MS, ""),
            (ENV_COMPUTE_ALONE_RESUME_MS, "-1"),
            (ENV_COMPUTE_ALONE_RESUME_MS, "101"),
        ] {
            let err = limits(&[(ENV_COMPUTE, "30"), (var, value)]).unwrap_err();
            assert!(err.to_string().starts_with(var), "{err}");
        }
    }
}
