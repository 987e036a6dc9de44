//! The host's view of every GPU, from NVML in the host PID namespace: there, every driver
//! branch reports host PIDs and correct per-process memory, so nothing is ambiguous. The
//! snapshot is taken at most every [`SNAPSHOT_TTL`] and shared by concurrent clients.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gpuslice_agent_protocol::{Accounting, EncoderSession, FbcSession, ProcessKind, Sample};
use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use prometheus_client::metrics::counter::Counter;

use crate::AgentError;

/// How long a snapshot is reused.
pub const SNAPSHOT_TTL: Duration = Duration::from_millis(200);

/// One GPU process as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostProcess {
    /// Host PID.
    pub pid: u32,
    /// Compute, graphics or MPS.
    pub kind: ProcessKind,
    /// Memory it uses, `None` when the driver cannot say.
    pub used_memory: Option<u64>,
}

/// One GPU as the host sees it. Every PID in it is a host PID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostGpu {
    /// UUID.
    pub uuid: String,
    /// Processes.
    pub processes: Vec<HostProcess>,
    /// Utilization samples (every sample the driver has buffered).
    pub samples: Vec<Sample>,
    /// Accounting statistics of the accounted processes that still run.
    pub accounting: Vec<Accounting>,
    /// Encoder sessions.
    pub encoder_sessions: Vec<EncoderSession>,
    /// Frame-buffer-capture sessions.
    pub fbc_sessions: Vec<FbcSession>,
    /// Its memory, total and used, as NVML reports it (`None` where it cannot say).
    pub memory: Option<GpuMemory>,
    /// Its utilization in percent (`nvmlDeviceGetUtilizationRates`' `gpu`: the share
    /// of the last sample period in which a kernel ran), `None` where it cannot say.
    pub utilization: Option<u32>,
}

/// A GPU's memory as NVML reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuMemory {
    /// Total bytes.
    pub total: u64,
    /// Bytes in use.
    pub used: u64,
}

/// Where host snapshots come from (NVML, or a fixed list in tests).
pub trait HostSource: Send + Sync {
    /// Every GPU of the host, now.
    fn snapshot(&self) -> Result<Vec<HostGpu>, AgentError>;
}

/// A [`HostSource`] whose answers are reused for [`SNAPSHOT_TTL`].
pub struct CachedHost {
    source: Box<dyn HostSource>,
    cache: Mutex<Option<(Instant, Arc<Vec<HostGpu>>)>>,
    /// Snapshots that failed (each stops at its first failed NVML call).
    errors: Counter,
}

impl std::fmt::Debug for CachedHost {
    /// The cached snapshot and the error count; the source is a trait object.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedHost")
            .field("cache", &self.cache)
            .field("errors", &self.errors)
            .finish_non_exhaustive()
    }
}

impl CachedHost {
    /// Caches `source`.
    pub fn new(source: Box<dyn HostSource>) -> Self {
        Self {
            source,
            cache: Mutex::new(None),
            errors: Counter::default(),
        }
    }

    /// Counts failed snapshots (failed NVML calls: a snapshot stops at the first) in
    /// `errors` (the agent's `gpuslice_agent_nvml_errors_total`).
    pub fn counting_errors(mut self, errors: Counter) -> Self {
        self.errors = errors;
        self
    }

    fn take(&self) -> Result<Vec<HostGpu>, AgentError> {
        let snap = self.source.snapshot();
        if snap.is_err() {
            self.errors.inc();
        }
        snap
    }

    /// A snapshot taken now, neither from nor into the cache: for the enforcer, whose
    /// looks must not make the clients' answers older than they would otherwise be.
    pub fn fresh(&self) -> Result<Vec<HostGpu>, AgentError> {
        self.take()
    }

    /// A snapshot no older than [`SNAPSHOT_TTL`].
    pub fn snapshot(&self) -> Result<Arc<Vec<HostGpu>>, AgentError> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, snap)) = cache.as_ref()
            && at.elapsed() < SNAPSHOT_TTL
        {
            return Ok(Arc::clone(snap));
        }
        let snap = Arc::new(self.take()?);
        *cache = Some((Instant::now(), Arc::clone(&snap)));
        Ok(snap)
    }
}

/// NVML on the host.
#[derive(Debug)]
pub struct NvmlHost {
    nvml: Nvml,
    /// Only for processes that still exist: accounting keeps dead ones too.
    procfs: crate::procfs::Procfs,
}

/// The NVML library the agent loads.
pub const NVML_LIBRARY: &str = "libnvidia-ml.so.1";

impl NvmlHost {
    /// Loads and initialises NVML.
    pub fn init(procfs: crate::procfs::Procfs) -> Result<Self, AgentError> {
        let nvml = Nvml::builder()
            .lib_path(std::ffi::OsStr::new(NVML_LIBRARY))
            .init()
            .map_err(|source| AgentError::Nvml {
                what: format!("loading {NVML_LIBRARY}"),
                source,
            })?;
        Ok(Self { nvml, procfs })
    }

    /// The NVML handle.
    pub fn nvml(&self) -> &Nvml {
        &self.nvml
    }
}

/// An empty list for "none" answers (not found, not supported, a missing symbol in an
/// older driver), the error otherwise.
fn list_or_empty<T>(r: Result<Vec<T>, NvmlError>) -> Result<Vec<T>, NvmlError> {
    match r {
        Ok(v) => Ok(v),
        Err(
            NvmlError::NotFound
            | NvmlError::NotSupported
            | NvmlError::FailedToLoadSymbol(_)
            | NvmlError::FunctionNotFound
            | NvmlError::NoPermission,
        ) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn memory(m: &UsedGpuMemory) -> Option<u64> {
    match m {
        UsedGpuMemory::Used(n) => Some(*n),
        UsedGpuMemory::Unavailable => None,
    }
}

impl HostSource for NvmlHost {
    fn snapshot(&self) -> Result<Vec<HostGpu>, AgentError> {
        let err = |what: String| move |source| AgentError::Nvml { what, source };
        let count = self
            .nvml
            .device_count()
            .map_err(err("counting devices".into()))?;
        let mut gpus = Vec::new();
        for index in 0..count {
            let dev = self
                .nvml
                .device_by_index(index)
                .map_err(err(format!("opening device {index}")))?;
            let uuid = dev.uuid().map_err(err(format!("UUID of device {index}")))?;
            let what = |w: &str| format!("{w} of {uuid}");
            let gpu_memory = match dev.memory_info() {
                Ok(m) => Some(GpuMemory {
                    total: m.total,
                    used: m.used,
                }),
                Err(NvmlError::NotSupported) => None,
                Err(e) => return Err(err(what("memory"))(e)),
            };
            let utilization = match dev.utilization_rates() {
                Ok(u) => Some(u.gpu.min(100)),
                Err(
                    NvmlError::NotSupported
                    | NvmlError::FailedToLoadSymbol(_)
                    | NvmlError::FunctionNotFound,
                ) => None,
                Err(e) => return Err(err(what("utilization"))(e)),
            };
            let mut gpu = HostGpu {
                uuid: uuid.clone(),
                memory: gpu_memory,
                utilization,
                ..HostGpu::default()
            };
            for (kind, list) in [
                (ProcessKind::Compute, dev.running_compute_processes()),
                (ProcessKind::Graphics, dev.running_graphics_processes()),
                (ProcessKind::Mps, dev.mps_running_compute_processes()),
            ] {
                for p in list_or_empty(list).map_err(err(what("processes")))? {
                    gpu.processes.push(HostProcess {
                        pid: p.pid,
                        kind,
                        used_memory: memory(&p.used_gpu_memory),
                    });
                }
            }
            for s in list_or_empty(dev.process_utilization_stats(None))
                .map_err(err(what("process utilization")))?
            {
                gpu.samples.push(Sample {
                    pid: s.pid,
                    timestamp: s.timestamp,
                    sm: s.sm_util,
                    mem: s.mem_util,
                    enc: s.enc_util,
                    dec: s.dec_util,
                });
            }
            for pid in list_or_empty(dev.accounting_pids()).map_err(err(what("accounting")))? {
                if self.procfs.pid_ns(pid).is_none() {
                    continue;
                }
                if let Ok(a) = dev.accounting_stats_for(pid) {
                    gpu.accounting.push(Accounting {
                        pid,
                        gpu_util: a.gpu_utilization.unwrap_or(u32::MAX),
                        mem_util: a.memory_utilization.unwrap_or(u32::MAX),
                        max_memory: a.max_memory_usage.unwrap_or(u64::MAX),
                        time: a.time,
                        start_time: a.start_time,
                        is_running: a.is_running,
                    });
                }
            }
            for e in list_or_empty(dev.encoder_sessions()).map_err(err(what("encoder sessions")))? {
                gpu.encoder_sessions.push(EncoderSession {
                    session_id: e.session_id,
                    pid: e.pid,
                    codec: e.codec_type.as_c(),
                    h_res: e.hres,
                    v_res: e.vres,
                    average_fps: e.average_fps,
                    average_latency: e.average_latency,
                });
            }
            for f in list_or_empty(dev.fbc_sessions_info()).map_err(err(what("FBC sessions")))? {
                gpu.fbc_sessions.push(FbcSession {
                    session_id: f.session_id,
                    pid: f.pid,
                    display_ordinal: f.display_ordinal,
                    session_type: f.session_type.as_c(),
                    flags: f.session_flags.bits(),
                    h_max: f.hres_max,
                    v_max: f.vres_max,
                    h_res: f.hres,
                    v_res: f.vres,
                    average_fps: f.average_fps,
                    average_latency: f.average_latency,
                });
            }
            gpus.push(gpu);
        }
        Ok(gpus)
    }
}
