//! Kernel and graph launches for the compute-limit tests: a module with one kernel,
//! launched through `cuLaunchKernel`, `cuLaunchKernelEx`, `cuLaunchCooperativeKernel` or
//! a CUDA graph of kernel nodes, in loops timed on the driver's clock (the fake driver's
//! virtual clock when it has one, else the host's).

use std::ffi::{c_int, c_uint, c_void};
use std::ptr::null_mut;

use gpuslice_cuda_abi::cuda::{CUlaunchConfig, CudaKernelNodeParams};

use crate::driver::Driver;

/// The driver's clock: `fakeCudaClockNow`/`fakeCudaClockSleep` when the driver exports
/// them (and its clock runs), else the host's.
pub struct ProbeClock {
    now: Option<unsafe extern "C" fn() -> u64>,
    sleep: Option<unsafe extern "C" fn(u64)>,
    busy: Option<unsafe extern "C" fn() -> u64>,
    start: std::time::Instant,
}

impl ProbeClock {
    pub fn new(cu: &Driver) -> Self {
        let sym = |name: &std::ffi::CStr| cu.symbol(name);
        let (n, s, b) = (
            sym(c"fakeCudaClockNow"),
            sym(c"fakeCudaClockSleep"),
            sym(c"fakeCudaBusyNs"),
        );
        // SAFETY: the fake driver exports these with exactly these signatures.
        let now = (!n.is_null()).then(|| unsafe {
            std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> u64>(n)
        });
        // SAFETY: the fake driver exports `fakeCudaClockSleep` as `void (uint64_t)`.
        let sleep = (!s.is_null())
            .then(|| unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn(u64)>(s) });
        // SAFETY: the fake driver exports `fakeCudaBusyNs` as `uint64_t (void)`.
        let busy = (!b.is_null()).then(|| unsafe {
            std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> u64>(b)
        });
        let mut clock = ProbeClock {
            now,
            sleep,
            busy,
            start: std::time::Instant::now(),
        };
        if clock.now.is_some() && clock.virtual_now() == 0 {
            clock.now = None;
        }
        clock
    }

    fn virtual_now(&self) -> u64 {
        // SAFETY: see `new`.
        self.now.map(|f| unsafe { f() }).unwrap_or(0)
    }

    pub fn now_ns(&self) -> u64 {
        match self.now {
            // SAFETY: see `new`.
            Some(f) => unsafe { f() },
            None => u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX),
        }
    }

    pub fn sleep_ns(&self, ns: u64) {
        match (self.now, self.sleep) {
            // SAFETY: see `new`.
            (Some(_), Some(f)) => unsafe { f(ns) },
            _ => std::thread::sleep(std::time::Duration::from_nanos(ns)),
        }
    }

    /// GPU time used so far, if the driver says.
    pub fn busy_ns(&self) -> Option<u64> {
        // SAFETY: see `new`.
        self.busy.map(|f| unsafe { f() })
    }
}

/// A loaded kernel.
pub struct Kernels {
    func: *mut c_void,
    stream: *mut c_void,
}

type LaunchFn = unsafe extern "C" fn(
    *mut c_void,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    *mut c_void,
    *mut *mut c_void,
    *mut *mut c_void,
) -> c_int;
type CoopFn = unsafe extern "C" fn(
    *mut c_void,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    *mut c_void,
    *mut *mut c_void,
) -> c_int;

impl Kernels {
    /// Loads a module and gets its kernel; launches go to `stream`.
    pub fn load(cu: &Driver, stream: *mut c_void) -> Result<Self, c_int> {
        let mut module = null_mut();
        let image = b"fake-module\0";
        let rc = cu.call2(
            "cuModuleLoadData",
            (&mut module as *mut *mut c_void).cast(),
            image.as_ptr() as *mut c_void,
        );
        if rc != 0 {
            return Err(rc);
        }
        let mut func = null_mut();
        let rc = cu.call3(
            "cuModuleGetFunction",
            (&mut func as *mut *mut c_void).cast(),
            module,
            c"kernel".as_ptr() as *mut c_void,
        );
        if rc != 0 {
            return Err(rc);
        }
        Ok(Kernels { func, stream })
    }

    /// One launch by `kind`: kernel, ex or coop.
    pub fn launch(&self, cu: &Driver, kind: &str) -> c_int {
        match kind {
            "ex" => {
                let config = CUlaunchConfig {
                    grid_dim: [1, 1, 1],
                    block_dim: [32, 1, 1],
                    shared_mem_bytes: 0,
                    h_stream: self.stream,
                    attrs: null_mut(),
                    num_attrs: 0,
                };
                cu.call4(
                    "cuLaunchKernelEx",
                    (&config as *const CUlaunchConfig) as *mut c_void,
                    self.func,
                    null_mut(),
                    null_mut(),
                )
            }
            "coop" => {
                let p = cu.entry("cuLaunchCooperativeKernel");
                if p.is_null() {
                    return 500;
                }
                // SAFETY: the entry point of this name has this signature.
                let f = unsafe { std::mem::transmute::<*mut c_void, CoopFn>(p) };
                // SAFETY: a valid function and stream; no parameters.
                unsafe { f(self.func, 1, 1, 1, 32, 1, 1, 0, self.stream, null_mut()) }
            }
            _ => {
                let p = cu.entry("cuLaunchKernel");
                if p.is_null() {
                    return 500;
                }
                // SAFETY: the entry point of this name has this signature.
                let f = unsafe { std::mem::transmute::<*mut c_void, LaunchFn>(p) };
                // SAFETY: a valid function and stream; no parameters.
                unsafe {
                    f(
                        self.func,
                        1,
                        1,
                        1,
                        32,
                        1,
                        1,
                        0,
                        self.stream,
                        null_mut(),
                        null_mut(),
                    )
                }
            }
        }
    }

    /// An executable graph of `nodes` kernel nodes.
    pub fn graph(&self, cu: &Driver, nodes: usize) -> Result<*mut c_void, c_int> {
        let mut graph = null_mut();
        let rc = cu.call2(
            "cuGraphCreate",
            (&mut graph as *mut *mut c_void).cast(),
            null_mut(),
        );
        if rc != 0 {
            return Err(rc);
        }
        let params = CudaKernelNodeParams {
            func: self.func,
            grid_dim: [1, 1, 1],
            block_dim: [32, 1, 1],
            shared_mem_bytes: 0,
            kernel_params: null_mut(),
            extra: null_mut(),
        };
        let mut prev: *mut c_void = null_mut();
        for _ in 0..nodes {
            let mut node = null_mut();
            let deps: *mut c_void = if prev.is_null() {
                null_mut()
            } else {
                (&mut prev as *mut *mut c_void).cast()
            };
            let rc = cu.call5(
                "cuGraphAddKernelNode",
                (&mut node as *mut *mut c_void).cast(),
                graph,
                deps,
                usize::from(!prev.is_null()) as *mut c_void,
                (&params as *const CudaKernelNodeParams) as *mut c_void,
            );
            if rc != 0 {
                return Err(rc);
            }
            prev = node;
        }
        let mut exec = null_mut();
        let rc = cu.call3(
            "cuGraphInstantiateWithFlags",
            (&mut exec as *mut *mut c_void).cast(),
            graph,
            null_mut(),
        );
        if rc != 0 {
            return Err(rc);
        }
        Ok(exec)
    }
}

/// Runs launches of `kind` for `ms` milliseconds of the driver's clock and reports
/// what the GPU did. `light`: each iteration waits 1 ms on the CPU, launches two
/// kernels and waits for them. `graph`: launches a graph of 4 kernel nodes.
/// `sidestream`: kernels, and once, after 1000 of them, four on a second stream that is
/// not used again. `once`: a single launch, not waited for. `bigsync`: 30 kernels, a graph
/// of 200 kernels and one more kernel, then a stream synchronisation (`bigctxsync`: a
/// context synchronisation). `streamchurn`: a new
/// stream per iteration, 8 kernels on it, then the stream is destroyed.
pub fn timed_loop(cu: &Driver, kind: &str, ms: u64) -> String {
    let stream = cu.stream_create();
    let kernels = match Kernels::load(cu, stream) {
        Ok(k) => k,
        Err(rc) => return format!("rc={rc} stage=load"),
    };
    let exec = if kind == "graph" || kind == "bigsync" || kind == "bigctxsync" {
        match kernels.graph(cu, if kind == "graph" { 4 } else { 200 }) {
            Ok(e) => e,
            Err(rc) => return format!("rc={rc} stage=graph"),
        }
    } else {
        null_mut()
    };
    let side_stream = if kind == "sidestream" {
        cu.stream_create()
    } else {
        null_mut()
    };
    if kind == "once" {
        // One launch, left queued: the process exits with work on the GPU.
        return format!("rc={} iterations=1", kernels.launch(cu, "kernel"));
    }
    let clock = ProbeClock::new(cu);
    let busy0 = clock.busy_ns().unwrap_or(0);
    let t0 = clock.now_ns();
    let end = t0 + ms * 1_000_000;
    let mut iterations = 0u64;
    while clock.now_ns() < end {
        let rc = match kind {
            "graph" => cu.call2("cuGraphLaunch", exec, stream),
            "streamchurn" => {
                // A stream made for a few launches and destroyed with them still queued.
                let side = Kernels {
                    func: kernels.func,
                    stream: cu.stream_create(),
                };
                let mut rc = 0;
                for _ in 0..8 {
                    rc = rc.max(side.launch(cu, "kernel"));
                }
                rc.max(cu.stream_destroy(side.stream))
            }
            "bigsync" | "bigctxsync" => {
                // Short kernels, then much longer work (a graph of 200 kernels) and one
                // more kernel, then a wait for the stream, as a training step ends
                // with `loss.item()` (`bigctxsync`: for the context, as
                // `torch.cuda.synchronize()` does).
                let mut rc = 0;
                for _ in 0..30 {
                    rc = rc.max(kernels.launch(cu, "kernel"));
                }
                rc = rc.max(cu.call2("cuGraphLaunch", exec, stream));
                rc = rc.max(kernels.launch(cu, "kernel"));
                rc.max(if kind == "bigsync" {
                    cu.stream_sync(stream)
                } else {
                    cu.ctx_sync()
                })
            }
            "light" => {
                clock.sleep_ns(1_000_000);
                let a = kernels.launch(cu, "kernel");
                let b = kernels.launch(cu, "kernel");
                let c = cu.stream_sync(stream);
                a.max(b).max(c)
            }
            "sidestream" => {
                // A few launches on a second stream, once, then that stream is never used
                // again (as PyTorch does with a graph's warm-up stream).
                if iterations == 1000 {
                    let side = Kernels {
                        func: kernels.func,
                        stream: side_stream,
                    };
                    for _ in 0..4 {
                        let rc = side.launch(cu, "kernel");
                        if rc != 0 {
                            return format!("rc={rc} stage=side iterations={iterations}");
                        }
                    }
                }
                kernels.launch(cu, "kernel")
            }
            other => kernels.launch(cu, other),
        };
        if rc != 0 {
            return format!("rc={rc} stage=launch iterations={iterations}");
        }
        iterations += 1;
    }
    let rc = cu.stream_sync(stream);
    let wall = clock.now_ns() - t0;
    let busy = clock.busy_ns().map(|b| b - busy0).unwrap_or(0);
    format!(
        "rc={rc} iterations={iterations} busy_ns={busy} wall_ns={wall} share_permille={}",
        busy * 1000 / wall.max(1)
    )
}

/// One thread captures a graph in global mode on one stream while it launches kernels
/// on another stream (which the interposer gates and times). The driver prohibits
/// queries and synchronisations while a global-mode capture runs, unless the calling
/// thread is in relaxed mode; a prohibited call invalidates the capture. Reports the
/// result of ending the capture.
pub fn capture_beside(cu: &Driver) -> String {
    let captured = cu.stream_create();
    let other = cu.stream_create();
    let kernels = match Kernels::load(cu, captured) {
        Ok(k) => k,
        Err(rc) => return format!("rc={rc} stage=load"),
    };
    let beside = Kernels {
        func: kernels.func,
        stream: other,
    };
    // Resolved for CUDA 13: `cuStreamBeginCapture_v2`; CU_STREAM_CAPTURE_MODE_GLOBAL is 0.
    let begin = cu.call2("cuStreamBeginCapture", captured, null_mut());
    if begin != 0 {
        return format!("rc={begin} stage=begin");
    }
    let in_graph = kernels.launch(cu, "kernel");
    let mut launched = 0;
    for _ in 0..20 {
        if beside.launch(cu, "kernel") == 0 {
            launched += 1;
        }
    }
    let mut graph: *mut c_void = null_mut();
    let end = cu.call2(
        "cuStreamEndCapture",
        captured,
        (&mut graph as *mut *mut c_void).cast(),
    );
    format!("rc={end} captured_launch={in_graph} launched_beside={launched}")
}
