//! The slices a host offers: parsing `--slice NAME=GPUS:MEMORY[:compute=P[:burst=P]]` and
//! `--slices-file`, checking names (a slice name is a CDI device name and a folder name),
//! and resolving each slice's GPUs to this host's devices with the same matching as
//! `gpuslice run --gpus` ([`crate::gpus::resolve`]), giving [`Slice`]s; and the
//! warnings about slices larger than their GPUs ([`capacity_warnings`]).

use std::path::Path;

use gpuslice_config::{ComputeShares, DeviceSelector, SharesError, format_size, parse_size};
use serde::Deserialize;

use super::CdiError;
use crate::gpus::{self, GpuDevice, GpuError, GpuList, HostGpu};
pub use crate::slice::{MAX_NAME_LEN, Slice, is_valid_name};

/// Which GPUs a slice covers, as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuChoice {
    /// Every GPU of the host.
    All,
    /// These, in this order.
    List(GpuList),
}

/// A slice as given on the command line or in the slices file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceRequest {
    /// The slice's name (its CDI device name).
    pub name: String,
    /// Its GPUs.
    pub gpus: GpuChoice,
    /// Memory limit on each of its GPUs, in bytes.
    pub memory: u64,
    /// Compute limits (`None`: none, as for compute=100).
    pub compute: Option<ComputeShares>,
    /// Where it came from, for messages (`--slice "a=0:8GiB"`, `FILE: slice 2`).
    pub origin: String,
}

fn bad(origin: &str, reason: impl Into<String>) -> CdiError {
    CdiError::BadSlice {
        origin: origin.to_string(),
        reason: reason.into(),
    }
}

fn check_name(origin: &str, name: &str) -> Result<String, CdiError> {
    if is_valid_name(name) {
        Ok(name.to_string())
    } else {
        Err(bad(
            origin,
            format!(
                "{name:?} is not a slice name: use 1 to {MAX_NAME_LEN} characters of A-Z, a-z, 0-9, '.', '_' and '-', starting and ending with a letter or digit"
            ),
        ))
    }
}

fn parse_gpus(origin: &str, text: &str) -> Result<GpuChoice, CdiError> {
    if text.trim().eq_ignore_ascii_case("all") {
        return Ok(GpuChoice::All);
    }
    let mut list = Vec::new();
    for entry in text.split(',') {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(bad(
                origin,
                "the GPU list has an empty entry (expected e.g. 0, 0,1, GPU-5d1f or all)",
            ));
        }
        list.push(DeviceSelector::parse(entry).ok_or_else(|| {
            bad(
                origin,
                format!("{entry:?} is neither a device index (0, 1, ...) nor a GPU UUID (GPU-...)"),
            )
        })?);
    }
    Ok(GpuChoice::List(GpuList(list)))
}

fn parse_memory(origin: &str, text: &str) -> Result<u64, CdiError> {
    parse_size(text).map_err(|e| {
        bad(
            origin,
            format!("{text:?} is not a memory size: {e} (e.g. 8GiB, 512MiB, 8g)"),
        )
    })
}

fn parse_percent(origin: &str, key: &str, text: &str) -> Result<u32, CdiError> {
    let digits = text.trim().trim_end_matches('%');
    match digits.parse::<u32>() {
        Ok(p) if (1..=100).contains(&p) => Ok(p),
        _ => Err(bad(
            origin,
            format!("{key}={text:?} is not a whole percentage from 1 to 100"),
        )),
    }
}

/// The compute limits of `compute=` and `burst=`, as the interposer defines them
/// ([`ComputeShares::new`]: compute=100 is no compute limit).
fn shares(
    origin: &str,
    compute: Option<u32>,
    burst: Option<u32>,
) -> Result<Option<ComputeShares>, CdiError> {
    match (compute, burst) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(bad(
            origin,
            "burst needs compute (e.g. compute=30:burst=60)",
        )),
        (Some(c), b) => ComputeShares::new(c, b).map_err(|e| match e {
            SharesError::BurstBelowHard { hard, burst } => bad(
                origin,
                format!(
                    "burst={burst} is below compute={hard}; the burst limit is at least the hard limit"
                ),
            ),
            other => bad(origin, other.to_string()),
        }),
    }
}

/// Parses one `--slice` value: `NAME=GPUS:MEMORY[:compute=PERCENT[:burst=PERCENT]]`.
pub fn parse_slice_arg(text: &str) -> Result<SliceRequest, CdiError> {
    let origin = format!("--slice {text:?}");
    let Some((name, rest)) = text.split_once('=') else {
        return Err(bad(
            &origin,
            "expected NAME=GPUS:MEMORY[:compute=PERCENT], e.g. gpu0-8g=0:8GiB",
        ));
    };
    let name = check_name(&origin, name.trim())?;
    let mut parts = rest.split(':');
    let gpus = parse_gpus(&origin, parts.next().unwrap_or(""))?;
    let memory = match parts.next() {
        Some(m) if !m.trim().is_empty() => parse_memory(&origin, m.trim())?,
        _ => {
            return Err(bad(
                &origin,
                "MEMORY is missing: expected NAME=GPUS:MEMORY, e.g. gpu0-8g=0:8GiB",
            ));
        }
    };
    let (mut compute, mut burst) = (None, None);
    for option in parts {
        let (key, value) = option.split_once('=').unwrap_or((option, ""));
        let slot = match key.trim() {
            "compute" => &mut compute,
            "burst" => &mut burst,
            other => {
                return Err(bad(
                    &origin,
                    format!("unknown option {other:?} (expected compute=PERCENT or burst=PERCENT)"),
                ));
            }
        };
        if slot.is_some() {
            return Err(bad(&origin, format!("{} is given twice", key.trim())));
        }
        *slot = Some(parse_percent(&origin, key.trim(), value)?);
    }
    let compute = shares(&origin, compute, burst)?;
    Ok(SliceRequest {
        name,
        gpus,
        memory,
        compute,
        origin,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlicesFile {
    slices: Vec<FileSlice>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSlice {
    name: String,
    gpus: FileGpus,
    memory: String,
    #[serde(default)]
    compute: Option<u32>,
    #[serde(default)]
    burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileGpus {
    Text(String),
    List(Vec<FileGpu>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileGpu {
    Index(u32),
    Text(String),
}

/// Parses the text of a `--slices-file`; `path` is used in messages.
pub fn parse_slices_file(path: &Path, text: &str) -> Result<Vec<SliceRequest>, CdiError> {
    let file: SlicesFile = serde_json::from_str(text).map_err(|source| CdiError::SlicesFile {
        path: path.to_path_buf(),
        source,
    })?;
    file.slices
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let origin = format!(
                "--slices-file {}: slice {} ({:?})",
                path.display(),
                i + 1,
                s.name
            );
            let name = check_name(&origin, &s.name)?;
            let gpus_text = match s.gpus {
                FileGpus::Text(t) => t,
                FileGpus::List(list) => list
                    .iter()
                    .map(|g| match g {
                        FileGpu::Index(i) => i.to_string(),
                        FileGpu::Text(t) => t.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
            };
            let gpus = parse_gpus(&origin, &gpus_text)?;
            let memory = parse_memory(&origin, &s.memory)?;
            let compute = s
                .compute
                .map(|p| parse_percent(&origin, "compute", &p.to_string()))
                .transpose()?;
            let burst = s
                .burst
                .map(|p| parse_percent(&origin, "burst", &p.to_string()))
                .transpose()?;
            let compute = shares(&origin, compute, burst)?;
            Ok(SliceRequest {
                name,
                gpus,
                memory,
                compute,
                origin,
            })
        })
        .collect()
}

/// Refuses an empty list and names given twice.
pub fn check_requests(requests: &[SliceRequest]) -> Result<(), CdiError> {
    if requests.is_empty() {
        return Err(CdiError::NoSlices);
    }
    for (i, r) in requests.iter().enumerate() {
        if let Some(first) = requests[..i].iter().find(|f| f.name == r.name) {
            return Err(CdiError::DuplicateName {
                name: r.name.clone(),
                first: first.origin.clone(),
                second: r.origin.clone(),
            });
        }
    }
    Ok(())
}

/// Turns a `--gpus` matching error into one that names the slice instead of `--gpus`.
fn gpu_error(origin: &str, error: GpuError) -> CdiError {
    let reason = match error {
        GpuError::Unknown { device, available } => {
            format!("no GPU matches {device}; this host has {available}")
        }
        GpuError::Ambiguous { device, matches } => {
            format!("{device} is ambiguous, it matches {matches}; give more of the UUID")
        }
        GpuError::Duplicate {
            uuid,
            first,
            second,
        } => format!("the GPU list names {uuid} twice (as {first} and {second})"),
        other => other.to_string(),
    };
    bad(origin, reason)
}

/// Finds each request's GPUs among `host` (this host's GPUs in NVML order).
pub fn resolve(requests: &[SliceRequest], host: &[HostGpu]) -> Result<Vec<Slice>, CdiError> {
    let devices: Vec<GpuDevice> = host
        .iter()
        .map(|g| GpuDevice {
            index: g.index,
            uuid: g.uuid.clone(),
        })
        .collect();
    requests
        .iter()
        .map(|r| {
            let gpus = match &r.gpus {
                GpuChoice::All => {
                    if host.is_empty() {
                        return Err(bad(&r.origin, "GPUS is all, but this host has no GPUs"));
                    }
                    host.to_vec()
                }
                GpuChoice::List(list) => gpus::resolve(list, &devices)
                    .map_err(|e| gpu_error(&r.origin, e))?
                    .into_iter()
                    .map(|uuid| {
                        let gpu = host
                            .iter()
                            .find(|g| g.uuid == uuid)
                            .expect("resolve returns UUIDs of the host's devices");
                        gpu.clone()
                    })
                    .collect(),
            };
            Ok(Slice {
                name: r.name.clone(),
                gpus,
                memory: r.memory,
                compute: r.compute,
            })
        })
        .collect()
}

/// Warnings about memory the GPUs do not have: a slice whose limit is more than one of
/// its GPUs has, and a GPU whose slices add up to more than it has. Both are allowed: a
/// slice's limit is a ceiling its processes may not pass, not memory set aside for it.
/// A slice larger than its GPU is simply not limited below the GPU's own size (its
/// processes see the GPU's memory as the total, as `cudaMemGetInfo` reports the lesser
/// of the two); slices that add up to more than the GPU share it first come, first
/// served, and when the GPU is full an allocation fails with out-of-memory even though
/// its slice is under its limit. GPUs whose memory is not known are not checked.
pub fn capacity_warnings(slices: &[Slice]) -> Vec<String> {
    let mut warnings = Vec::new();
    for slice in slices {
        for gpu in &slice.gpus {
            if let Some(total) = gpu.memory.filter(|&total| slice.memory > total) {
                warnings.push(format!(
                    "slice {}: its limit {} is more than GPU {} ({}) has ({}); allowed, but the limit holds nothing back there: its processes can use the whole GPU",
                    slice.name,
                    format_size(slice.memory),
                    gpu.index,
                    gpu.uuid,
                    format_size(total)
                ));
            }
        }
    }
    let mut gpus: Vec<&HostGpu> = Vec::new();
    for gpu in slices.iter().flat_map(|s| &s.gpus) {
        if !gpus.iter().any(|g| g.uuid == gpu.uuid) {
            gpus.push(gpu);
        }
    }
    for gpu in gpus {
        let Some(total) = gpu.memory else { continue };
        let on_it: Vec<&Slice> = slices
            .iter()
            .filter(|s| s.gpus.iter().any(|g| g.uuid == gpu.uuid))
            .collect();
        let sum: u128 = on_it.iter().map(|s| u128::from(s.memory)).sum();
        if on_it.len() > 1 && sum > u128::from(total) {
            let names: Vec<&str> = on_it.iter().map(|s| s.name.as_str()).collect();
            warnings.push(format!(
                "the slices on GPU {} ({}) add up to {} but it has {} ({}); allowed (limits are ceilings, not reservations), but when they are all used at once an allocation fails with out-of-memory before its slice reaches its limit",
                gpu.index,
                gpu.uuid,
                format_size(u64::try_from(sum).unwrap_or(u64::MAX)),
                format_size(total),
                names.join(", ")
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const A: &str = "GPU-aaaa1111-0000-4000-8000-000000000000";
    const B: &str = "GPU-aaaa2222-0000-4000-8000-000000000000";

    fn shares(hard: u32, burst: Option<u32>) -> ComputeShares {
        ComputeShares { hard, burst }
    }

    fn host() -> Vec<HostGpu> {
        [A, B]
            .iter()
            .zip(0u32..)
            .map(|(u, i)| HostGpu {
                index: i,
                uuid: u.to_string(),
                minor: 10 + i,
                memory: None,
            })
            .collect()
    }

    fn one(text: &str) -> Result<Slice, CdiError> {
        let r = parse_slice_arg(text)?;
        Ok(resolve(&[r], &host())?.remove(0))
    }

    #[test]
    fn slices_parse_and_resolve() {
        let s = one("gpu0-8g=0:8GiB").unwrap();
        assert_eq!(s.name, "gpu0-8g");
        assert_eq!(s.memory, 8 * GIB);
        assert_eq!(s.gpus, vec![host()[0].clone()]);
        assert_eq!(s.compute, None);

        let s = one("gpu0-4g-30=GPU-aaaa1:4GiB:compute=30").unwrap();
        assert_eq!(s.gpus[0].uuid, A);
        assert_eq!(s.compute, Some(shares(30, None)));

        let s = one("both=1,0:16g:compute=25%:burst=50").unwrap();
        assert_eq!(s.gpus, vec![host()[1].clone(), host()[0].clone()]);
        assert_eq!(s.memory, 16 * GIB);
        assert_eq!(s.compute, Some(shares(25, Some(50))));

        // compute=100 is the whole GPU, no compute limit (as the interposer reads it);
        // a burst equal to the limit is no burst.
        for text in ["a=0:1GiB:compute=100", "a=0:1GiB:compute=100:burst=100"] {
            assert_eq!(one(text).unwrap().compute, None, "{text}");
        }
        let s = one("a=0:1GiB:compute=30:burst=30").unwrap();
        assert_eq!(s.compute, Some(shares(30, None)));
        let s = one("a=0:1GiB:compute=1:burst=100").unwrap();
        assert_eq!(s.compute, Some(shares(1, Some(100))));

        let s = one("every=all:1GiB").unwrap();
        assert_eq!(s.gpus, host());
    }

    #[test]
    fn bad_slices_name_the_flag_and_the_problem() {
        for (text, needle) in [
            ("gpu0", "NAME=GPUS:MEMORY"),
            ("gpu0=0", "MEMORY is missing"),
            ("gpu0=0:", "MEMORY is missing"),
            ("gpu0=0:lots", "not a memory size"),
            ("gpu0=0:0", "not a memory size"),
            ("=0:8GiB", "not a slice name"),
            ("-a=0:8GiB", "not a slice name"),
            ("a-=0:8GiB", "not a slice name"),
            ("a:b=0:8GiB", "not a slice name"),
            ("a/b=0:8GiB", "not a slice name"),
            ("a=x:8GiB", "neither a device index"),
            ("a=0,,1:8GiB", "empty entry"),
            ("a=0:8GiB:compute=0", "percentage"),
            ("a=0:8GiB:compute=101", "percentage"),
            ("a=0:8GiB:compute=abc", "percentage"),
            ("a=0:8GiB:burst=50", "burst needs compute"),
            ("a=0:8GiB:compute=50:burst=40", "below compute"),
            ("a=0:8GiB:compute=5:compute=6", "given twice"),
            ("a=0:8GiB:speed=3", "unknown option"),
        ] {
            let msg = parse_slice_arg(text).expect_err(text).to_string();
            assert!(
                msg.contains("--slice") && msg.contains(needle),
                "{text}: {msg}"
            );
        }
        assert!(is_valid_name(&"x".repeat(63)));
        assert!(!is_valid_name(&"x".repeat(64)));
        assert!(is_valid_name("7"));
    }

    #[test]
    fn gpus_that_do_not_match_name_the_slice_not_gpus() {
        for (text, needle) in [
            ("a=5:1GiB", "no GPU matches index 5"),
            ("a=GPU-aaaa:1GiB", "ambiguous"),
            ("a=0,GPU-aaaa1:1GiB", "twice"),
        ] {
            let msg = one(text).expect_err(text).to_string();
            assert!(
                msg.contains("--slice") && msg.contains(needle),
                "{text}: {msg}"
            );
            assert!(!msg.contains("--gpus"), "{msg}");
        }
        let r = parse_slice_arg("a=all:1GiB").unwrap();
        let msg = resolve(&[r], &[]).unwrap_err().to_string();
        assert!(msg.contains("no GPUs"), "{msg}");
    }

    #[test]
    fn names_must_be_unique_and_at_least_one_slice_is_needed() {
        let msg = check_requests(&[]).unwrap_err().to_string();
        assert!(msg.contains("--slice"), "{msg}");
        let a = parse_slice_arg("x=0:1GiB").unwrap();
        let b = parse_slice_arg("x=1:2GiB").unwrap();
        let msg = check_requests(&[a.clone(), b]).unwrap_err().to_string();
        assert!(msg.contains("\"x\"") && msg.contains("x=1:2GiB"), "{msg}");
        check_requests(&[a]).unwrap();
    }

    #[test]
    fn slices_files() {
        let path = Path::new("/etc/slices.json");
        let text = r#"{"slices": [
            {"name": "s1", "gpus": [1, "GPU-aaaa1"], "memory": "2GiB", "compute": 40, "burst": 80},
            {"name": "s2", "gpus": "all", "memory": "1g"}
        ]}"#;
        let requests = parse_slices_file(path, text).unwrap();
        let slices = resolve(&requests, &host()).unwrap();
        assert_eq!(slices[0].gpus, vec![host()[1].clone(), host()[0].clone()]);
        assert_eq!(
            (slices[0].memory, slices[0].compute),
            (2 * GIB, Some(shares(40, Some(80))))
        );
        assert_eq!(slices[1].gpus, host());

        for (text, needle) in [
            (r#"{"slices": [{"name": "s", "gpus": [0]}]}"#, "memory"),
            (
                r#"{"slices": [{"name": "s", "gpus": [0], "memory": "1g", "x": 1}]}"#,
                "x",
            ),
            (
                r#"{"slices": [{"name": "a b", "gpus": [0], "memory": "1g"}]}"#,
                "slice 1",
            ),
            (
                r#"{"slices": [{"name": "s", "gpus": [0], "memory": "1g", "compute": 0}]}"#,
                "percentage",
            ),
            ("[", "EOF"),
        ] {
            let msg = parse_slices_file(path, text).expect_err(text).to_string();
            assert!(
                msg.contains("/etc/slices.json") && msg.contains(needle),
                "{msg}"
            );
        }
    }

    #[test]
    fn slices_larger_than_their_gpu_are_warned_about() {
        let mut gpus = host();
        gpus[0].memory = Some(80 * GIB);
        let slice = |name: &str, gpus: Vec<HostGpu>, memory: u64| Slice {
            name: name.into(),
            gpus,
            memory,
            compute: None,
        };
        // Within the GPU, alone and together: nothing to say.
        let fits = [
            slice("a", vec![gpus[0].clone()], 40 * GIB),
            slice("b", vec![gpus[0].clone()], 40 * GIB),
        ];
        assert!(capacity_warnings(&fits).is_empty());
        // 100 TiB on an 80 GiB GPU.
        let huge = [slice("a", vec![gpus[0].clone()], 100 * 1024 * GIB)];
        let warnings = capacity_warnings(&huge);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with(&format!(
                "slice a: its limit 100TiB is more than GPU 0 ({A}) has (80GiB); allowed"
            )),
            "{warnings:?}"
        );
        // Three slices on GPU 0 adding up to 96 GiB; GPU 1's memory is not known.
        let over = [
            slice("a", vec![gpus[0].clone()], 32 * GIB),
            slice("b", vec![gpus[0].clone(), gpus[1].clone()], 32 * GIB),
            slice("c", vec![gpus[0].clone()], 32 * GIB),
            slice("d", vec![gpus[1].clone()], 1024 * GIB),
        ];
        let warnings = capacity_warnings(&over);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with(&format!(
                "the slices on GPU 0 ({A}) add up to 96GiB but it has 80GiB (a, b, c); allowed"
            )),
            "{warnings:?}"
        );
    }
}
