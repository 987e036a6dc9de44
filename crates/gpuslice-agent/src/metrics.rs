//! The agent's `/metrics`: what every slice of the host holds, what each GPU holds as
//! NVML reports it, and what the agent itself did, in the Prometheus text format
//! (OpenMetrics, as `prometheus-client` encodes it), over plain HTTP on
//! [`MetricsOptions::addr`] (default port [`DEFAULT_METRICS_PORT`]).
//!
//! Every number comes from what the system holds at the scrape: the slices from their
//! ledgers through the host's slice listing (`gpuslice_host::listing`, the same reading
//! as `gpuslice status`, without sweeping: sweeping is the enforcer's, under its rules),
//! the GPUs from the agent's cached NVML snapshot, and the agent's own counters
//! ([`AgentCounters`]) from where the things they count happen. The one number that
//! needs a past, a slice's compute use over the last 10 s, comes from the busy-time
//! history that the exporter's sampler keeps ([`crate::compute_window`]). A slice whose
//! ledger cannot be read, or whose pinned configuration is broken, is never left out: it
//! shows as `gpuslice_slice_failed_closed{slice,reason} 1`. Under `gpuslice node`, every
//! series of a slice also names who holds it ([`crate::owners`]: `namespace`, `pod`,
//! `container` and `claim`, empty while not known).
//!
//! The HTTP server is `tiny_http` (synchronous, as the rest of the agent), bound by
//! [`MetricsServer::bind`] and served on a thread of its own by [`MetricsServer::spawn`],
//! which starts the sampler's thread too.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gpuslice_host::listing::{Alive, SliceStatus, StatusReport};
use gpuslice_ledger::folder::SHM_DIR;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::AgentError;
use crate::compute_window::{ComputeWindow, MeterKey, SAMPLE_PERIOD};
use crate::host::{CachedHost, HostGpu};
use crate::membership::SliceTable;
use crate::owners::{OwnerLabels, SliceOwners};
use crate::procfs::Procfs;
use crate::server::log;

/// The default port of `/metrics`. The Prometheus project's list of default port
/// allocations has given away every port from 9100 to 9999 (dcgm-exporter's 9400 and
/// HAMi's 9394 and 9395 among them); this one lies past that range and past the ports
/// of the Kubernetes components (10248 to 10259) that run on the same nodes.
pub const DEFAULT_METRICS_PORT: u16 = 10420;

/// The default address of `/metrics`: every interface, [`DEFAULT_METRICS_PORT`].
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:10420";

/// The agent's own counters, shared (they are reference-counted) by the parts that
/// count and the exporter.
#[derive(Debug, Clone, Default)]
pub struct AgentCounters {
    /// Processes the enforcer killed.
    pub enforcement_kills: Counter,
    /// Processes the enforcer would have killed (report only).
    pub enforcement_reports: Counter,
    /// Ledger entries of dead processes the sweep freed.
    pub reclaimed_entries: Counter,
    /// Failed NVML snapshots (each stops at its first failed NVML call).
    pub nvml_errors: Counter,
}

/// Where and what `/metrics` serves.
#[derive(Debug, Clone)]
pub struct MetricsOptions {
    /// The address to listen on (port 0: any free port, logged at start).
    pub addr: SocketAddr,
    /// The state folder: the slices of `gpuslice cdi generate` and the node plugin.
    pub state_dir: PathBuf,
    /// The base of the per-user ledger folders of `gpuslice run` (`/dev/shm`), whose
    /// `gpuslice-<uid>` folders are listed; `None`: none.
    pub run_ledgers: Option<PathBuf>,
    /// Who holds each slice (`gpuslice node`: the pods); `None`: no owner labels.
    pub owners: Option<Arc<dyn SliceOwners>>,
}

impl MetricsOptions {
    /// `/metrics` on `addr` for the slices of `state_dir` and of `gpuslice run`.
    pub fn new(addr: SocketAddr, state_dir: PathBuf) -> Self {
        Self {
            addr,
            state_dir,
            run_ledgers: Some(PathBuf::from(SHM_DIR)),
            owners: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SliceGpu {
    slice: String,
    gpu_uuid: String,
    #[prometheus(flatten)]
    owner: OwnerLabels,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SliceInfo {
    slice: String,
    ledger: String,
    source: String,
    #[prometheus(flatten)]
    owner: OwnerLabels,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FailedClosed {
    slice: String,
    reason: String,
    #[prometheus(flatten)]
    owner: OwnerLabels,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Gpu {
    gpu_uuid: String,
}

type IntFamily<L> = Family<L, Gauge>;
type RatioFamily<L> = Family<L, Gauge<f64, AtomicU64>>;
type CountFamily<L> = Family<L, Counter>;
type SecondsFamily<L> = Family<L, Counter<f64, AtomicU64>>;

/// The metered (slice, GPU)s of a listing, with their busy time: the devices of the
/// compute-limited slices (the others have no meter).
fn metered(slices: &[SliceStatus]) -> impl Iterator<Item = (MeterKey, u64)> + '_ {
    slices
        .iter()
        .filter(|s| s.error.is_none() && s.compute_percent.is_some())
        .flat_map(|s| {
            s.devices.iter().map(|d| {
                (
                    MeterKey {
                        ledger: s.path.clone(),
                        gpu_uuid: d.uuid.clone(),
                    },
                    d.busy_ns,
                )
            })
        })
}

/// Renders the metrics of one scrape.
#[derive(Debug)]
pub struct Exporter {
    options: MetricsOptions,
    host: Arc<CachedHost>,
    procfs: Procfs,
    counters: AgentCounters,
    /// The compute-limited slices' busy time over the last seconds.
    window: ComputeWindow,
    /// What the last scrape logged (each is logged when it first appears, not at every
    /// scrape).
    logged: Mutex<Vec<String>>,
}

impl Exporter {
    /// An exporter of the slices `options` names, the GPUs of `host` and `counters`.
    pub fn new(
        options: MetricsOptions,
        host: Arc<CachedHost>,
        procfs: Procfs,
        counters: AgentCounters,
    ) -> Self {
        Self {
            options,
            host,
            procfs,
            counters,
            window: ComputeWindow::default(),
            logged: Mutex::new(Vec::new()),
        }
    }

    /// Logs the lines of `now` that the last scrape did not log.
    fn log_new(&self, now: Vec<String>) {
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        for line in now.iter().filter(|l| !logged.contains(l)) {
            log(format_args!("metrics: {line}"));
        }
        *logged = now;
    }

    /// The slices now, state folder first.
    fn slices(&self) -> StatusReport {
        let mut report = StatusReport::default();
        if let Some(base) = &self.options.run_ledgers {
            match gpuslice_host::listing::collect_every_user(base, false) {
                Ok(r) => report = report.merge(r),
                Err(e) => report.notes.push(e.to_string()),
            }
        }
        gpuslice_host::listing::collect_state_dir(&self.options.state_dir, false).merge(report)
    }

    /// Reads every compute-limited slice's busy time into the history of
    /// `gpuslice_slice_compute_used_ratio` (the sampler's thread does, about every
    /// [`SAMPLE_PERIOD`]).
    pub fn sample(&self) {
        let report = self.slices();
        self.window.record(Instant::now(), metered(&report.slices));
    }

    /// The metrics now, in the text format.
    pub fn render(&self) -> String {
        let report = self.slices();
        let now = Instant::now();
        let compute_used: BTreeMap<MeterKey, f64> = metered(&report.slices)
            .filter_map(|(key, busy)| {
                let ratio = self.window.ratio(&key, now, busy)?;
                Some((key, ratio))
            })
            .collect();
        let mut lines = report.notes.clone();
        let gpus = match self.host.snapshot() {
            Ok(g) => g,
            Err(e) => {
                lines.push(e.to_string());
                Arc::new(Vec::new())
            }
        };
        self.log_new(lines);
        let config = SliceTable::load(&self.options.state_dir, &self.procfs);
        let broken_configs: Vec<(String, String)> = config
            .slices()
            .iter()
            .filter(|s| s.memory.is_err())
            .map(|s| (s.name.clone(), "config".to_string()))
            .collect();
        encode(
            &report.slices,
            &gpus,
            &broken_configs,
            &compute_used,
            &self.counters,
            self.options.owners.as_deref(),
        )
    }
}

/// The text of one scrape: `slices` as listed, `gpus` as NVML reports them, the slices
/// whose pinned configuration is broken (name, reason), the compute-limited slices'
/// use over the window (those with a share yet), the agent's counters, and who holds
/// each slice.
fn encode(
    slices: &[SliceStatus],
    gpus: &[HostGpu],
    broken_configs: &[(String, String)],
    compute_used: &BTreeMap<MeterKey, f64>,
    counters: &AgentCounters,
    owners: Option<&dyn SliceOwners>,
) -> String {
    let limit = IntFamily::<SliceGpu>::default();
    let used = IntFamily::<SliceGpu>::default();
    let compute = RatioFamily::<SliceGpu>::default();
    let burst = RatioFamily::<SliceGpu>::default();
    let processes = IntFamily::<SliceGpu>::default();
    let refused = CountFamily::<SliceGpu>::default();
    let throttled = SecondsFamily::<SliceGpu>::default();
    let used_compute = RatioFamily::<SliceGpu>::default();
    let info = IntFamily::<SliceInfo>::default();
    let failed = IntFamily::<FailedClosed>::default();
    let gpu_total = IntFamily::<Gpu>::default();
    let gpu_used = IntFamily::<Gpu>::default();
    let gpu_limits = IntFamily::<Gpu>::default();
    let gpu_compute_limits = RatioFamily::<Gpu>::default();
    let gpu_utilization = RatioFamily::<Gpu>::default();

    let bytes = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let mut limits_per_gpu: BTreeMap<String, u64> = BTreeMap::new();
    // The sum of the slices' compute limits per GPU, in percent.
    let mut compute_per_gpu: BTreeMap<String, u64> = BTreeMap::new();
    for g in gpus {
        limits_per_gpu.entry(g.uuid.clone()).or_default();
        compute_per_gpu.entry(g.uuid.clone()).or_default();
        let labels = Gpu {
            gpu_uuid: g.uuid.clone(),
        };
        if let Some(m) = g.memory {
            gpu_total.get_or_create(&labels).set(bytes(m.total));
            gpu_used.get_or_create(&labels).set(bytes(m.used));
        }
        if let Some(u) = g.utilization {
            gpu_utilization
                .get_or_create(&labels)
                .set(f64::from(u) / 100.0);
        }
    }
    for s in slices {
        let owner = OwnerLabels::of(owners, &s.name);
        info.get_or_create(&SliceInfo {
            slice: s.name.clone(),
            ledger: s.path.clone(),
            source: s.origin.as_str().to_string(),
            owner: owner.clone(),
        })
        .set(1);
        if s.error.is_some() {
            failed
                .get_or_create(&FailedClosed {
                    slice: s.name.clone(),
                    reason: s.error_kind.unwrap_or("unreadable").to_string(),
                    owner: owner.clone(),
                })
                .set(1);
            continue;
        }
        for d in &s.devices {
            let labels = SliceGpu {
                slice: s.name.clone(),
                gpu_uuid: d.uuid.clone(),
                owner: owner.clone(),
            };
            limit.get_or_create(&labels).set(bytes(d.limit_bytes));
            used.get_or_create(&labels).set(bytes(d.used_bytes));
            let holders = s
                .processes
                .iter()
                .filter(|p| p.alive != Alive::Dead && p.devices.iter().any(|c| c.uuid == d.uuid))
                .count();
            processes
                .get_or_create(&labels)
                .set(i64::try_from(holders).unwrap_or(i64::MAX));
            refused.get_or_create(&labels).inc_by(d.refused_allocations);
            throttled
                .get_or_create(&labels)
                .inc_by(d.throttled_ns as f64 / 1e9);
            if let Some(hard) = s.compute_percent {
                compute.get_or_create(&labels).set(f64::from(hard) / 100.0);
                let sum = compute_per_gpu.entry(d.uuid.clone()).or_default();
                *sum = sum.saturating_add(u64::from(hard));
                let key = MeterKey {
                    ledger: s.path.clone(),
                    gpu_uuid: d.uuid.clone(),
                };
                if let Some(&ratio) = compute_used.get(&key) {
                    used_compute.get_or_create(&labels).set(ratio);
                }
            }
            if let Some(soft) = s.compute_burst_percent {
                burst.get_or_create(&labels).set(f64::from(soft) / 100.0);
            }
            let sum = limits_per_gpu.entry(d.uuid.clone()).or_default();
            *sum = sum.saturating_add(d.limit_bytes);
        }
    }
    for (slice, reason) in broken_configs {
        failed
            .get_or_create(&FailedClosed {
                slice: slice.clone(),
                reason: reason.clone(),
                owner: OwnerLabels::of(owners, slice),
            })
            .set(1);
    }
    for (uuid, sum) in limits_per_gpu {
        gpu_limits
            .get_or_create(&Gpu { gpu_uuid: uuid })
            .set(bytes(sum));
    }
    for (uuid, percent) in compute_per_gpu {
        gpu_compute_limits
            .get_or_create(&Gpu { gpu_uuid: uuid })
            .set(percent as f64 / 100.0);
    }

    let mut r = Registry::with_prefix("gpuslice");
    let ratio = || Unit::Other("ratio".into());
    r.register_with_unit(
        "slice_memory_limit",
        "The slice's memory limit on the GPU, from its ledger",
        Unit::Bytes,
        limit,
    );
    r.register_with_unit(
        "slice_memory_used",
        "Memory the slice's processes have charged on the GPU, from its ledger",
        Unit::Bytes,
        used,
    );
    r.register_with_unit(
        "slice_compute_limit",
        "The slice's compute limit on the GPU (1 is the whole GPU); absent when not limited",
        ratio(),
        compute,
    );
    r.register_with_unit(
        "slice_compute_burst",
        "The slice's soft (burst) compute limit on the GPU; absent when it has none",
        ratio(),
        burst,
    );
    r.register_with_unit(
        "slice_compute_used",
        "The share of the GPU the slice's kernels used over the last 10 s (its compute meter's busy time over wall time; over the time watched when the agent has watched the slice for less); absent when not limited",
        ratio(),
        used_compute,
    );
    r.register(
        "slice_processes",
        "Processes of the slice, not known to be gone, holding memory on the GPU",
        processes,
    );
    r.register(
        "slice_refused_allocations",
        "Allocations (contexts included) refused to the slice's processes on the GPU for want of room in the slice, from its ledger",
        refused,
    );
    r.register_with_unit(
        "slice_throttled",
        "Time the slice's processes spent held back by the compute gate on the GPU, from its ledger",
        Unit::Seconds,
        throttled,
    );
    r.register(
        "slice_info",
        "A slice of the host (1): its name, ledger file and source (run, cdi, device-plugin, dra)",
        info,
    );
    r.register(
        "slice_failed_closed",
        "A slice that holds its processes to nothing because its ledger or pinned configuration cannot be used (1), and why",
        failed,
    );
    r.register_with_unit(
        "gpu_memory_total",
        "The GPU's memory as NVML reports it",
        Unit::Bytes,
        gpu_total,
    );
    r.register_with_unit(
        "gpu_memory_used",
        "The GPU's memory in use as NVML reports it",
        Unit::Bytes,
        gpu_used,
    );
    r.register_with_unit(
        "gpu_slices_memory_limit",
        "The sum of the memory limits of the slices on the GPU",
        Unit::Bytes,
        gpu_limits,
    );
    r.register_with_unit(
        "gpu_slices_compute_limit",
        "The sum of the compute limits of the slices on the GPU (above 1: oversubscribed)",
        ratio(),
        gpu_compute_limits,
    );
    r.register_with_unit(
        "gpu_utilization",
        "The share of the last sample period in which a kernel ran on the GPU, as NVML reports it",
        ratio(),
        gpu_utilization,
    );
    r.register(
        "agent_enforcement_kills",
        "Processes the agent killed to hold a slice to its memory limit",
        counters.enforcement_kills.clone(),
    );
    r.register(
        "agent_enforcement_reports",
        "Processes the agent would have killed (memory enforcement: report)",
        counters.enforcement_reports.clone(),
    );
    r.register(
        "agent_reclaimed_entries",
        "Ledger entries of processes that are gone, freed by the agent",
        counters.reclaimed_entries.clone(),
    );
    r.register(
        "agent_nvml_errors",
        "The agent's NVML snapshots that failed (each stops at its first failed call)",
        counters.nvml_errors.clone(),
    );
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &r);
    text
}

/// The content type of the text `prometheus-client` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `/metrics`, bound and not yet served.
pub struct MetricsServer {
    server: tiny_http::Server,
    addr: SocketAddr,
}

impl std::fmt::Debug for MetricsServer {
    /// The address; `tiny_http::Server` has no `Debug`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MetricsServer {
    /// Listens on `addr`.
    pub fn bind(addr: SocketAddr) -> Result<Self, AgentError> {
        let server = tiny_http::Server::http(addr).map_err(|e| AgentError::Metrics {
            addr,
            reason: e.to_string(),
        })?;
        let addr = server.server_addr().to_ip().unwrap_or(addr);
        Ok(Self { server, addr })
    }

    /// The address it listens on (with the port chosen when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `exporter` on a thread of its own, for ever, and samples the slices'
    /// compute use on another ([`Exporter::sample`] every [`SAMPLE_PERIOD`]).
    pub fn spawn(self, exporter: Exporter) -> Result<(), AgentError> {
        log(format_args!(
            "serving metrics on http://{}/metrics",
            self.addr
        ));
        let exporter = Arc::new(exporter);
        let sampled = Arc::clone(&exporter);
        std::thread::Builder::new()
            .name("metrics-sampler".into())
            .spawn(move || {
                loop {
                    sampled.sample();
                    std::thread::sleep(SAMPLE_PERIOD);
                }
            })
            .map_err(|source| AgentError::Thread { source })?;
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || self.serve(&exporter))
            .map(|_| ())
            .map_err(|source| AgentError::Thread { source })
    }

    fn serve(&self, exporter: &Exporter) {
        for request in self.server.incoming_requests() {
            let path = request.url().split('?').next().unwrap_or_default();
            let method = request.method().clone();
            let response = match (&method, path) {
                (tiny_http::Method::Get | tiny_http::Method::Head, "/metrics") => {
                    let mut response = tiny_http::Response::from_string(exporter.render());
                    if let Ok(h) = tiny_http::Header::from_bytes("Content-Type", CONTENT_TYPE) {
                        response.add_header(h);
                    }
                    response
                }
                (_, "/metrics") => {
                    tiny_http::Response::from_string("only GET and HEAD\n").with_status_code(405)
                }
                _ => tiny_http::Response::from_string("not found; see /metrics\n")
                    .with_status_code(404),
            };
            if let Err(e) = request.respond(response) {
                log(format_args!("metrics: answering a scrape: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::GpuMemory;
    use gpuslice_host::listing::{DeviceStatus, Origin, ProcessDevice, ProcessStatus};

    fn slice(name: &str, devices: &[(&str, u64, u64)]) -> SliceStatus {
        SliceStatus {
            name: name.into(),
            origin: Origin::Cdi,
            path: format!("/state/slices/{name}/ledger"),
            created_unix: Some(1),
            default_limit_bytes: None,
            compute_percent: None,
            compute_burst_percent: None,
            devices: devices
                .iter()
                .map(|&(uuid, limit, used)| DeviceStatus {
                    uuid: uuid.into(),
                    limit_bytes: limit,
                    used_bytes: used,
                    busy_ns: 0,
                    refused_allocations: 0,
                    throttled_ns: 0,
                })
                .collect(),
            processes: Vec::new(),
            error: None,
            error_kind: None,
        }
    }

    #[test]
    fn slices_gpus_and_counters_are_encoded_with_their_units() {
        let mut a = slice("a", &[("GPU-1", 1 << 30, 400 << 20)]);
        a.compute_percent = Some(30);
        a.compute_burst_percent = Some(60);
        a.devices[0].refused_allocations = 4;
        a.devices[0].throttled_ns = 2_500_000_000;
        a.processes = vec![
            ProcessStatus {
                pid: 7,
                alive: Alive::Alive,
                devices: vec![ProcessDevice {
                    uuid: "GPU-1".into(),
                    charged_bytes: 400 << 20,
                    context_bytes: 300 << 20,
                }],
            },
            ProcessStatus {
                pid: 8,
                alive: Alive::Dead,
                devices: vec![ProcessDevice {
                    uuid: "GPU-1".into(),
                    charged_bytes: 1,
                    context_bytes: 0,
                }],
            },
        ];
        let mut b = slice("b", &[("GPU-1", 2 << 30, 0)]);
        b.devices[0].throttled_ns = 7;
        let mut d = slice("d", &[("GPU-1", 1 << 30, 0)]);
        d.compute_percent = Some(50);
        let mut bad = slice("bad", &[]);
        bad.error = Some("ledger /x is corrupt: y".into());
        bad.error_kind = Some("corrupt");
        let gpus = [HostGpu {
            uuid: "GPU-1".into(),
            memory: Some(GpuMemory {
                total: 80 << 30,
                used: 5 << 30,
            }),
            utilization: Some(37),
            ..HostGpu::default()
        }];
        let compute_used = BTreeMap::from([(
            MeterKey {
                ledger: "/state/slices/a/ledger".into(),
                gpu_uuid: "GPU-1".into(),
            },
            0.29,
        )]);
        let counters = AgentCounters::default();
        counters.enforcement_kills.inc();
        counters.reclaimed_entries.inc_by(3);
        let text = encode(
            &[a, b, d, bad],
            &gpus,
            &[("c".into(), "config".into())],
            &compute_used,
            &counters,
            None,
        );
        for line in [
            "# TYPE gpuslice_slice_memory_limit_bytes gauge",
            "# UNIT gpuslice_slice_memory_limit_bytes bytes",
            "gpuslice_slice_memory_limit_bytes{slice=\"a\",gpu_uuid=\"GPU-1\"} 1073741824",
            "gpuslice_slice_memory_used_bytes{slice=\"a\",gpu_uuid=\"GPU-1\"} 419430400",
            "gpuslice_slice_compute_limit_ratio{slice=\"a\",gpu_uuid=\"GPU-1\"} 0.3",
            "gpuslice_slice_compute_burst_ratio{slice=\"a\",gpu_uuid=\"GPU-1\"} 0.6",
            "gpuslice_slice_processes{slice=\"a\",gpu_uuid=\"GPU-1\"} 1",
            "gpuslice_slice_processes{slice=\"b\",gpu_uuid=\"GPU-1\"} 0",
            "gpuslice_slice_info{slice=\"bad\",ledger=\"/state/slices/bad/ledger\",source=\"cdi\"} 1",
            "gpuslice_slice_failed_closed{slice=\"bad\",reason=\"corrupt\"} 1",
            "gpuslice_slice_failed_closed{slice=\"c\",reason=\"config\"} 1",
            "gpuslice_gpu_memory_total_bytes{gpu_uuid=\"GPU-1\"} 85899345920",
            "gpuslice_gpu_memory_used_bytes{gpu_uuid=\"GPU-1\"} 5368709120",
            "gpuslice_gpu_slices_memory_limit_bytes{gpu_uuid=\"GPU-1\"} 4294967296",
            "# TYPE gpuslice_slice_refused_allocations counter",
            "gpuslice_slice_refused_allocations_total{slice=\"a\",gpu_uuid=\"GPU-1\"} 4",
            "gpuslice_slice_refused_allocations_total{slice=\"b\",gpu_uuid=\"GPU-1\"} 0",
            "# TYPE gpuslice_slice_throttled_seconds counter",
            "# UNIT gpuslice_slice_throttled_seconds seconds",
            "gpuslice_slice_throttled_seconds_total{slice=\"a\",gpu_uuid=\"GPU-1\"} 2.5",
            "gpuslice_slice_throttled_seconds_total{slice=\"b\",gpu_uuid=\"GPU-1\"} 7e-9",
            "# TYPE gpuslice_slice_compute_used_ratio gauge",
            "# UNIT gpuslice_slice_compute_used_ratio ratio",
            "gpuslice_slice_compute_used_ratio{slice=\"a\",gpu_uuid=\"GPU-1\"} 0.29",
            "gpuslice_gpu_slices_compute_limit_ratio{gpu_uuid=\"GPU-1\"} 0.8",
            "# UNIT gpuslice_gpu_utilization_ratio ratio",
            "gpuslice_gpu_utilization_ratio{gpu_uuid=\"GPU-1\"} 0.37",
            "# TYPE gpuslice_agent_enforcement_kills counter",
            "gpuslice_agent_enforcement_kills_total 1",
            "gpuslice_agent_reclaimed_entries_total 3",
            "gpuslice_agent_nvml_errors_total 0",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        assert!(
            !text.contains("compute_limit_ratio{slice=\"b\""),
            "b has no compute limit:\n{text}"
        );
        // b has no meter, d no share yet (the sampler has not watched it long enough).
        for s in ["b", "d"] {
            assert!(
                !text.contains(&format!("compute_used_ratio{{slice=\"{s}\"")),
                "{s}:\n{text}"
            );
        }
    }

    /// A fixed table of owners, as `gpuslice node` would have resolved them.
    #[derive(Debug)]
    struct Owners(Vec<(&'static str, crate::owners::SliceOwner)>);

    impl SliceOwners for Owners {
        fn owner(&self, slice: &str) -> Option<crate::owners::SliceOwner> {
            self.0
                .iter()
                .find(|(s, _)| *s == slice)
                .map(|(_, o)| o.clone())
        }
    }

    #[test]
    fn every_series_of_a_slice_names_its_pod_empty_while_unknown() {
        use crate::owners::SliceOwner;
        let owners = Owners(vec![
            (
                "dp",
                SliceOwner {
                    namespace: "ml".into(),
                    pod: "train-0".into(),
                    container: "main".into(),
                    claim: None,
                },
            ),
            (
                "dra",
                SliceOwner {
                    namespace: "ml".into(),
                    pod: "serve-0".into(),
                    container: "infer".into(),
                    claim: Some("gpu-claim".into()),
                },
            ),
        ]);
        let mut dp = slice("dp", &[("GPU-1", 1 << 30, 0)]);
        dp.origin = Origin::DevicePlugin;
        let mut dra = slice("dra", &[("GPU-1", 2 << 30, 0)]);
        dra.origin = Origin::Dra;
        let mut broken = slice("dra", &[]);
        broken.error = Some("bad".into());
        broken.error_kind = Some("corrupt");
        let other = slice("run-1", &[("GPU-1", 1 << 30, 0)]);
        let text = encode(
            &[dp, dra, other],
            &[],
            &[("dp".into(), "config".into())],
            &BTreeMap::new(),
            &AgentCounters::default(),
            Some(&owners),
        );
        for line in [
            "gpuslice_slice_memory_limit_bytes{slice=\"dp\",gpu_uuid=\"GPU-1\",namespace=\"ml\",pod=\"train-0\",container=\"main\",claim=\"\"} 1073741824",
            "gpuslice_slice_processes{slice=\"dp\",gpu_uuid=\"GPU-1\",namespace=\"ml\",pod=\"train-0\",container=\"main\",claim=\"\"} 0",
            "gpuslice_slice_memory_limit_bytes{slice=\"dra\",gpu_uuid=\"GPU-1\",namespace=\"ml\",pod=\"serve-0\",container=\"infer\",claim=\"gpu-claim\"} 2147483648",
            "gpuslice_slice_info{slice=\"dra\",ledger=\"/state/slices/dra/ledger\",source=\"dra\",namespace=\"ml\",pod=\"serve-0\",container=\"infer\",claim=\"gpu-claim\"} 1",
            "gpuslice_slice_failed_closed{slice=\"dp\",reason=\"config\",namespace=\"ml\",pod=\"train-0\",container=\"main\",claim=\"\"} 1",
            "gpuslice_slice_memory_limit_bytes{slice=\"run-1\",gpu_uuid=\"GPU-1\",namespace=\"\",pod=\"\",container=\"\",claim=\"\"} 1073741824",
            "gpuslice_slice_info{slice=\"run-1\",ledger=\"/state/slices/run-1/ledger\",source=\"cdi\",namespace=\"\",pod=\"\",container=\"\",claim=\"\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        let text = encode(
            &[broken],
            &[],
            &[],
            &BTreeMap::new(),
            &AgentCounters::default(),
            Some(&owners),
        );
        assert!(
            text.lines().any(|l| l
                == "gpuslice_slice_failed_closed{slice=\"dra\",reason=\"corrupt\",namespace=\"ml\",pod=\"serve-0\",container=\"infer\",claim=\"gpu-claim\"} 1"),
            "{text}"
        );
    }
}
