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

/// The compute limits of a slice, in percent of one GPU's time, the same on every GPU.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ComputeLimits {
    /// Hard limit: never more, whatever else runs. `None` means no compute limit.
    pub hard_percent: Option<u32>,
    /// Soft limit: how much the slice may use while no other slice wants the GPU.
    pub burst_percent: Option<u32>,
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
        self.hard_percent.is_some_and(|p| p < 100)
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

        if let Some(b) = burst {
            let Some(h) = hard else {
                return Err(ConfigError::BadCompute {
                    var: burst_var.into(),
                    value: b.to_string(),
                    reason: format!(
                        "a soft limit needs a hard limit ({ENV_COMPUTE}, {ENV_VGPU_CORE} or {ENV_HAMI_SM})"
                    ),
                });
            };
            if b < h {
                return Err(ConfigError::BadCompute {
                    var: burst_var.into(),
                    value: b.to_string(),
                    reason: format!("it is below the hard limit {h} set by {hard_var}"),
                });
            }
        }

        let mut source = Vec::new();
        if hard.is_some() {
            source.push(hard_var);
        }
        if burst.is_some() {
            source.push(burst_var);
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
            hard_percent: hard,
            burst_percent: burst.filter(|&b| Some(b) != hard),
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
        if let Some(h) = self.hard_percent {
            env.push((ENV_COMPUTE.to_string(), h.to_string()));
        }
        if let Some(b) = self.burst_percent {
            env.push((ENV_COMPUTE_BURST.to_string(), b.to_string()));
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
        assert_eq!((c.hard_percent, c.burst_percent), (Some(30), Some(80)));
        assert!(c.is_limited());
        assert_eq!(c.source, "GPUSLICE_COMPUTE, GPUSLICE_COMPUTE_BURST");
        assert_eq!(
            c.to_env(),
            vec![
                ("GPUSLICE_COMPUTE".to_string(), "30".to_string()),
                ("GPUSLICE_COMPUTE_BURST".to_string(), "80".to_string())
            ]
        );
        // 100 is the whole GPU: valid, and no limit.
        assert!(!limits(&[(ENV_COMPUTE, "100")]).unwrap().is_limited());
        // A burst equal to the hard limit is no burst.
        let c = limits(&[(ENV_COMPUTE, "30"), (ENV_COMPUTE_BURST, "30")]).unwrap();
        assert_eq!(c.burst_percent, None);
    }

    #[test]
    fn compatible_names_and_precedence() {
        let c = limits(&[(ENV_VGPU_CORE, "50"), (ENV_VGPU_CORE_SOFT, "90")]).unwrap();
        assert_eq!((c.hard_percent, c.burst_percent), (Some(50), Some(90)));
        let c = limits(&[(ENV_HAMI_SM, "25")]).unwrap();
        assert_eq!(c.hard_percent, Some(25));
        assert_eq!(c.source, "CUDA_DEVICE_SM_LIMIT");
        // Zero is "no limit" in the compatible names.
        assert!(!limits(&[(ENV_HAMI_SM, "0")]).unwrap().is_limited());
        assert!(!limits(&[(ENV_VGPU_CORE, "0")]).unwrap().is_limited());
        // gpuslice's own name wins.
        let c = limits(&[(ENV_HAMI_SM, "25"), (ENV_COMPUTE, "40")]).unwrap();
        assert_eq!(c.hard_percent, Some(40));
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
