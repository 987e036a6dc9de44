//! What `gpuslice top` shows, as plain values: a [`Model`] made from two readings of the
//! host ([`Reading`]: the slice listing `gpuslice status` uses and the GPUs as NVML
//! reports them), one a refresh before the other. A slice's compute use is the growth of
//! its ledger's GPU busy time between the two readings over the wall time between them;
//! everything else is what the newer reading holds. Also the formatting of its cells
//! (sizes, bars, shares), so that all of it is tested without a terminal.

use std::collections::BTreeMap;
use std::time::Instant;

use gpuslice_host::gpus::GpuUsage;
use gpuslice_host::listing::{Alive, Origin, StatusReport};

/// One look at the host.
#[derive(Debug, Clone)]
pub struct Reading {
    /// The slices, as `gpuslice status` lists them.
    pub report: StatusReport,
    /// The GPUs as NVML reports them, or why there is no report.
    pub gpus: Result<Vec<GpuUsage>, String>,
    /// When it was read.
    pub at: Instant,
    /// The wall clock then, seconds since the epoch (for the title).
    pub unix: u64,
    /// Where slices were looked for (for "no slices in ...").
    pub looked: String,
}

/// What the screen shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// The GPUs: those NVML reports, then any other a slice names.
    pub gpus: Vec<GpuRow>,
    /// The slices, in the listing's order.
    pub slices: Vec<SliceRow>,
    /// What could not be read (a folder, NVML).
    pub notes: Vec<String>,
    /// When the newer reading was taken, seconds since the epoch.
    pub unix: u64,
    /// Where slices were looked for.
    pub looked: String,
}

/// A GPU's totals.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuRow {
    /// Its NVML index (`None`: a GPU a slice names that NVML did not report).
    pub index: Option<u32>,
    /// Its UUID.
    pub uuid: String,
    /// Its memory, as NVML reports it.
    pub memory_total: Option<u64>,
    /// Its memory in use (every process), as NVML reports it.
    pub memory_used: Option<u64>,
    /// The sum of the slices' memory limits on it (slices without a limit add nothing).
    pub slices_memory_limit: u64,
    /// The sum of the slices' compute limits on it, in percent.
    pub slices_compute_percent: u32,
    /// Its utilization in percent, as NVML reports it.
    pub utilization_percent: Option<u32>,
}

/// One slice.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceRow {
    /// What tells it apart from the others across readings: its ledger file.
    pub key: String,
    /// Its name.
    pub name: String,
    /// Where it came from.
    pub origin: Origin,
    /// Why its ledger cannot be used (`LedgerError::kind`), if it cannot: it fails closed.
    pub failed: Option<String>,
    /// Its GPUs.
    pub devices: Vec<DeviceRow>,
    /// Its processes, with what each has charged on each GPU.
    pub processes: Vec<ProcessRow>,
}

/// A slice on one GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRow {
    /// The GPU as the rows name it: its index, or the start of its UUID.
    pub gpu: String,
    /// Its UUID.
    pub uuid: String,
    /// The slice's memory limit on it (`None`: not limited).
    pub limit: Option<u64>,
    /// What the slice's processes have charged on it.
    pub used: u64,
    /// The slice's compute limit in percent (`None`: not compute-limited).
    pub compute_limit_percent: Option<u32>,
    /// The share of the GPU it used between the two readings, 0 to 1 (`None`: not
    /// compute-limited, so not metered, or no earlier reading to compare with).
    pub compute_used: Option<f64>,
    /// Time its processes were held back by the compute gate, in seconds, in all.
    pub throttled_seconds: f64,
    /// Allocations refused for want of room, in all.
    pub refused: u64,
    /// Its processes, not known to be gone, that hold memory on it.
    pub processes: usize,
}

/// A process of a slice, on one GPU (or on none, while it holds nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRow {
    /// Its PID, in its own PID namespace.
    pub pid: u32,
    /// Whether it runs.
    pub alive: Alive,
    /// The GPU as the rows name it (`None`: it holds nothing).
    pub gpu: Option<String>,
    /// Bytes it has charged there, its context included.
    pub charged: u64,
}

/// The GPU as rows name it: its NVML index, else the UUID's first hex digits.
fn gpu_label(uuid: &str, indices: &BTreeMap<&str, u32>) -> String {
    match indices.get(uuid) {
        Some(i) => i.to_string(),
        None => uuid.trim_start_matches("GPU-").chars().take(4).collect(),
    }
}

impl Model {
    /// The model of `now`, with compute use measured against `before` (the reading a
    /// refresh earlier; `None`: the first, so no compute use yet).
    pub fn build(before: Option<&Reading>, now: &Reading) -> Self {
        let mut notes = now.report.notes.clone();
        let nvml: &[GpuUsage] = match &now.gpus {
            Ok(g) => g,
            Err(why) => {
                notes.push(format!("no GPU totals: {why}"));
                &[]
            }
        };
        let indices: BTreeMap<&str, u32> =
            nvml.iter().map(|g| (g.uuid.as_str(), g.index)).collect();
        let mut gpus: Vec<GpuRow> = nvml
            .iter()
            .map(|g| GpuRow {
                index: Some(g.index),
                uuid: g.uuid.clone(),
                memory_total: g.memory_total,
                memory_used: g.memory_used,
                slices_memory_limit: 0,
                slices_compute_percent: 0,
                utilization_percent: g.utilization_percent,
            })
            .collect();
        // Busy time of every (ledger, GPU) in the earlier reading.
        let busy_before: BTreeMap<(&str, &str), u64> = before
            .map(|b| {
                b.report
                    .slices
                    .iter()
                    .flat_map(|s| {
                        s.devices
                            .iter()
                            .map(move |d| ((s.path.as_str(), d.uuid.as_str()), d.busy_ns))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let wall_ns = before
            .map(|b| now.at.saturating_duration_since(b.at).as_nanos() as f64)
            .unwrap_or(0.0);

        let mut slices = Vec::new();
        for s in &now.report.slices {
            let mut row = SliceRow {
                key: s.path.clone(),
                name: s.name.clone(),
                origin: s.origin,
                failed: s
                    .error
                    .as_ref()
                    .map(|_| s.error_kind.unwrap_or("unreadable").to_string()),
                devices: Vec::new(),
                processes: Vec::new(),
            };
            if row.failed.is_some() {
                slices.push(row);
                continue;
            }
            for d in &s.devices {
                let limit = (d.limit_bytes != u64::MAX).then_some(d.limit_bytes);
                let compute_used = s.compute_percent.and_then(|_| {
                    let earlier = busy_before.get(&(s.path.as_str(), d.uuid.as_str()))?;
                    let grown = d.busy_ns.checked_sub(*earlier)?;
                    (wall_ns > 0.0).then(|| grown as f64 / wall_ns)
                });
                let holders = s
                    .processes
                    .iter()
                    .filter(|p| {
                        p.alive != Alive::Dead && p.devices.iter().any(|c| c.uuid == d.uuid)
                    })
                    .count();
                row.devices.push(DeviceRow {
                    gpu: gpu_label(&d.uuid, &indices),
                    uuid: d.uuid.clone(),
                    limit,
                    used: d.used_bytes,
                    compute_limit_percent: s.compute_percent,
                    compute_used,
                    throttled_seconds: d.throttled_ns as f64 / 1e9,
                    refused: d.refused_allocations,
                    processes: holders,
                });
                let gpu = match gpus.iter_mut().find(|g| g.uuid == d.uuid) {
                    Some(g) => g,
                    None => {
                        gpus.push(GpuRow {
                            index: None,
                            uuid: d.uuid.clone(),
                            memory_total: None,
                            memory_used: None,
                            slices_memory_limit: 0,
                            slices_compute_percent: 0,
                            utilization_percent: None,
                        });
                        gpus.last_mut().expect("just pushed")
                    }
                };
                gpu.slices_memory_limit =
                    gpu.slices_memory_limit.saturating_add(limit.unwrap_or(0));
                gpu.slices_compute_percent += s.compute_percent.unwrap_or(0);
            }
            for p in &s.processes {
                if p.devices.is_empty() {
                    row.processes.push(ProcessRow {
                        pid: p.pid,
                        alive: p.alive,
                        gpu: None,
                        charged: 0,
                    });
                }
                for c in &p.devices {
                    row.processes.push(ProcessRow {
                        pid: p.pid,
                        alive: p.alive,
                        gpu: Some(gpu_label(&c.uuid, &indices)),
                        charged: c.charged_bytes,
                    });
                }
            }
            slices.push(row);
        }
        Self {
            gpus,
            slices,
            notes,
            unix: now.unix,
            looked: now.looked.clone(),
        }
    }

    /// Whether a slice is compute-limited, so that its compute use can be measured.
    pub fn any_compute_limit(report: &StatusReport) -> bool {
        report
            .slices
            .iter()
            .any(|s| s.error.is_none() && s.compute_percent.is_some())
    }
}

/// A size in few characters: `80GiB`, `1.5GiB`, `400MiB`, `12KiB`, `0B`.
pub fn size(bytes: u64) -> String {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    const TIB: u64 = 1 << 40;
    let scaled = |unit: u64, name: &str| {
        let value = bytes as f64 / unit as f64;
        if bytes.is_multiple_of(unit) || value >= 100.0 {
            format!("{value:.0}{name}")
        } else {
            format!("{value:.1}{name}")
        }
    };
    if bytes >= TIB {
        scaled(TIB, "TiB")
    } else if bytes >= GIB {
        scaled(GIB, "GiB")
    } else if bytes >= MIB {
        format!("{:.0}MiB", bytes as f64 / MIB as f64)
    } else if bytes >= KIB {
        format!("{:.0}KiB", bytes as f64 / KIB as f64)
    } else {
        format!("{bytes}B")
    }
}

/// `used` of `total` as a bar `width` characters wide, brackets included: `[|||   ]`.
/// An unknown or zero total gives an empty bar; more than the total, a full one.
pub fn bar(used: u64, total: Option<u64>, width: usize) -> String {
    let inner = width.saturating_sub(2);
    let filled = match total {
        Some(t) if t > 0 => {
            // round(min(used / t, 1) * inner), in integers: floor((2 * used * inner + t) / 2t).
            let (used_capped, t) = (u128::from(used.min(t)), u128::from(t));
            let n = (2 * used_capped * inner as u128 + t) / (2 * t);
            // n <= inner, since used_capped <= t.
            let n = usize::try_from(n).unwrap_or(inner);
            // Anything in use shows.
            if used > 0 { n.max(1) } else { n }
        }
        _ => 0,
    };
    if width < 2 {
        return "|".repeat(filled.min(width));
    }
    format!("[{}{}]", "|".repeat(filled), " ".repeat(inner - filled))
}

/// `used/limit` of memory: `400MiB/1GiB`; `none` without a limit.
pub fn used_of(used: u64, limit: Option<u64>) -> String {
    let limit = limit.map(size).unwrap_or_else(|| "none".into());
    format!("{}/{limit}", size(used))
}

/// Compute use against the limit: `27%/30%`, `-/30%` before it is measured, `-`
/// without a limit.
pub fn compute_of(used: Option<f64>, limit_percent: Option<u32>) -> String {
    match (used, limit_percent) {
        (_, None) => "-".into(),
        (Some(u), Some(l)) => format!("{:.0}%/{l}%", u * 100.0),
        (None, Some(l)) => format!("-/{l}%"),
    }
}

/// Seconds in at most 7 characters: `0.0s`, `999.9s`, `86399s`, `1234h`.
pub fn seconds(s: f64) -> String {
    if s < 1000.0 {
        format!("{s:.1}s")
    } else if s < 100_000.0 {
        format!("{s:.0}s")
    } else {
        format!("{:.0}h", s / 3600.0)
    }
}

/// `text` cut to `width` characters, the last one `…` when it was cut.
pub fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut cut: String = text.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuslice_host::listing::{DeviceStatus, ProcessDevice, ProcessStatus, SliceStatus};
    use std::time::Duration;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    const A: &str = "GPU-aaaa1111-0000-4000-8000-000000000000";
    const B: &str = "GPU-bbbb2222-0000-4000-8000-000000000000";

    fn slice(name: &str, compute: Option<u32>, devices: Vec<DeviceStatus>) -> SliceStatus {
        SliceStatus {
            name: name.into(),
            origin: Origin::Run,
            path: format!("/ledgers/{name}.ledger"),
            created_unix: Some(1),
            default_limit_bytes: None,
            compute_percent: compute,
            compute_burst_percent: None,
            devices,
            processes: Vec::new(),
            error: None,
            error_kind: None,
        }
    }

    fn device(uuid: &str, limit: u64, used: u64, busy_ns: u64) -> DeviceStatus {
        DeviceStatus {
            uuid: uuid.into(),
            limit_bytes: limit,
            used_bytes: used,
            busy_ns,
            refused_allocations: 0,
            throttled_ns: 0,
        }
    }

    fn reading(slices: Vec<SliceStatus>, at: Instant) -> Reading {
        Reading {
            report: StatusReport {
                slices,
                notes: Vec::new(),
            },
            gpus: Ok(vec![GpuUsage {
                index: 0,
                uuid: A.into(),
                memory_total: Some(80 * GIB),
                memory_used: Some(2 * GIB),
                utilization_percent: Some(40),
            }]),
            at,
            unix: 0,
            looked: "/ledgers".into(),
        }
    }

    #[test]
    fn compute_use_is_the_growth_of_busy_time_over_wall_time() {
        let t0 = Instant::now();
        let before = reading(
            vec![
                slice("c", Some(30), vec![device(A, 4 * GIB, 0, 5_000_000_000)]),
                slice("m", None, vec![device(A, 2 * GIB, GIB, 0)]),
            ],
            t0,
        );
        let now = reading(
            vec![
                slice("c", Some(30), vec![device(A, 4 * GIB, 0, 5_600_000_000)]),
                slice("m", None, vec![device(A, 2 * GIB, GIB, 0)]),
            ],
            t0 + Duration::from_secs(2),
        );
        let model = Model::build(Some(&before), &now);
        let c = &model.slices[0].devices[0];
        assert!((c.compute_used.unwrap() - 0.3).abs() < 1e-9, "{c:?}");
        assert_eq!(
            compute_of(c.compute_used, c.compute_limit_percent),
            "30%/30%"
        );
        // Not compute-limited: not metered.
        let m = &model.slices[1].devices[0];
        assert_eq!(m.compute_used, None);
        assert_eq!(compute_of(m.compute_used, m.compute_limit_percent), "-");
        // The first reading has nothing to compare with.
        let first = Model::build(None, &now);
        assert_eq!(first.slices[0].devices[0].compute_used, None);
        assert_eq!(compute_of(None, Some(30)), "-/30%");
        // A ledger made anew (busy time went back) is not measured.
        let fresh = reading(
            vec![slice("c", Some(30), vec![device(A, 4 * GIB, 0, 1)])],
            t0 + Duration::from_secs(3),
        );
        assert_eq!(
            Model::build(Some(&now), &fresh).slices[0].devices[0].compute_used,
            None
        );
    }

    #[test]
    fn gpus_sum_their_slices_and_keep_nvml_numbers() {
        let t0 = Instant::now();
        let mut limited = slice("c", Some(30), vec![device(A, 4 * GIB, MIB, 0)]);
        limited.devices.push(device(B, 8 * GIB, 0, 0));
        let unlimited = slice("u", Some(50), vec![device(A, u64::MAX, GIB, 0)]);
        let model = Model::build(None, &reading(vec![limited, unlimited], t0));
        assert_eq!(model.gpus.len(), 2);
        let a = &model.gpus[0];
        assert_eq!(a.index, Some(0));
        assert_eq!(
            (a.memory_total, a.memory_used),
            (Some(80 * GIB), Some(2 * GIB))
        );
        assert_eq!(a.slices_memory_limit, 4 * GIB);
        assert_eq!(a.slices_compute_percent, 80);
        assert_eq!(a.utilization_percent, Some(40));
        // B is named by a slice only: no NVML numbers, labelled by its UUID.
        let b = &model.gpus[1];
        assert_eq!((b.index, b.memory_total), (None, None));
        assert_eq!(b.slices_memory_limit, 8 * GIB);
        assert_eq!(model.slices[0].devices[1].gpu, "bbbb");
        assert_eq!(model.slices[0].devices[0].gpu, "0");
        assert_eq!(model.slices[1].devices[0].limit, None);
    }

    #[test]
    fn counters_processes_failures_and_notes_are_carried() {
        let t0 = Instant::now();
        let mut s = slice("s", None, vec![device(A, 4 * GIB, 400 * MIB, 0)]);
        s.devices[0].refused_allocations = 3;
        s.devices[0].throttled_ns = 2_500_000_000;
        s.processes = vec![
            ProcessStatus {
                pid: 10,
                alive: Alive::Alive,
                devices: vec![ProcessDevice {
                    uuid: A.into(),
                    charged_bytes: 400 * MIB,
                    context_bytes: 300 * MIB,
                }],
            },
            ProcessStatus {
                pid: 11,
                alive: Alive::Dead,
                devices: vec![ProcessDevice {
                    uuid: A.into(),
                    charged_bytes: MIB,
                    context_bytes: 0,
                }],
            },
            ProcessStatus {
                pid: 12,
                alive: Alive::Alive,
                devices: Vec::new(),
            },
        ];
        let mut broken = slice("broken", None, Vec::new());
        broken.error = Some("cut short".into());
        broken.error_kind = Some("truncated");
        let mut now = reading(vec![s, broken], t0);
        now.report.notes.push("cannot list /x".into());
        now.gpus = Err("NVML (libnvidia-ml.so.1): not found".into());
        let model = Model::build(None, &now);
        let d = &model.slices[0].devices[0];
        assert_eq!((d.refused, d.processes), (3, 1));
        assert!((d.throttled_seconds - 2.5).abs() < 1e-9);
        // Without NVML the GPU is named by its UUID.
        assert_eq!(d.gpu, "aaaa");
        let p = &model.slices[0].processes;
        assert_eq!(p.len(), 3);
        assert_eq!((p[0].pid, p[0].charged), (10, 400 * MIB));
        assert_eq!((p[2].pid, p[2].gpu.as_deref()), (12, None));
        assert_eq!(model.slices[1].failed.as_deref(), Some("truncated"));
        assert_eq!(
            model.notes,
            [
                "cannot list /x",
                "no GPU totals: NVML (libnvidia-ml.so.1): not found"
            ]
        );
        assert!(!Model::any_compute_limit(&now.report));
    }

    #[test]
    fn cells_are_short() {
        assert_eq!(size(0), "0B");
        assert_eq!(size(512), "512B");
        assert_eq!(size(12 << 10), "12KiB");
        assert_eq!(size(400 * MIB), "400MiB");
        assert_eq!(size(GIB), "1GiB");
        assert_eq!(size(3 * GIB / 2), "1.5GiB");
        assert_eq!(size(80 * GIB - MIB), "80.0GiB");
        assert_eq!(size(141 * GIB + MIB), "141GiB");
        assert_eq!(size(2 << 40), "2TiB");
        assert_eq!(used_of(400 * MIB, Some(GIB)), "400MiB/1GiB");
        assert_eq!(used_of(GIB, None), "1GiB/none");
        assert_eq!(bar(0, Some(GIB), 12), "[          ]");
        assert_eq!(bar(GIB / 2, Some(GIB), 12), "[|||||     ]");
        assert_eq!(bar(1, Some(GIB), 12), "[|         ]");
        assert_eq!(bar(2 * GIB, Some(GIB), 12), "[||||||||||]");
        assert_eq!(bar(GIB, None, 6), "[    ]");
        assert_eq!(bar(GIB, Some(GIB), 1), "|");
        assert_eq!(bar(GIB, Some(GIB), 0), "");
        assert_eq!(seconds(0.0), "0.0s");
        assert_eq!(seconds(12.34), "12.3s");
        assert_eq!(seconds(5000.4), "5000s");
        assert_eq!(seconds(720_000.0), "200h");
        assert_eq!(fit("training-job", 8), "trainin…");
        assert_eq!(fit("short", 8), "short");
        assert_eq!(fit("x", 0), "");
    }
}
