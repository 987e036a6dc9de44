//! `cuda-probe`: a stand-in for a CUDA application in tests. It opens the driver with
//! `dlopen("libcuda.so.1")`, finds `cuGetProcAddress_v2` with `dlsym` on that handle and
//! gets every other entry point through it (as the CUDA runtime does), then runs the
//! steps given as arguments and prints one line per step: `STEP rc=CODE key=value...`.
//!
//! Steps: `init`, `ctx[:ORDINAL]` (retain the primary context and make it current), `ctxrelease[:ORDINAL]`, `ctxreset[:ORDINAL]`,
//! `ctxcreate:SYMBOL` (`cuCtxCreate`, `cuCtxCreate_v2`, `_v3` or `_v4` on device 0, looked up with `dlsym` on the
//! driver's handle; the new context becomes current), `alloc:SIZE`, `fill:CHUNK` (allocate until refused),
//! `churn:CHUNK:N` (allocate and free N times), `freeall`, `meminfo`, `totalmem`, `pitch:WIDTHxHEIGHT`, `managed:SIZE`,
//! `async:SIZE`, `asyncfill:CHUNK`, `pool:SIZE` (user pool), `trim`, `sync`,
//! `vmm:SIZE`, `vmmfill:CHUNK`, `array:WxH`, `array3d:WxHxD`, `mipmap:WxH:LEVELS`,
//! `graph:SIZE` (a graph with an allocation node, launched), `graphtrim`,
//! `resolve:NAME` (which library serves the entry point), `direct-alloc:SIZE` (the
//! symbol as a program linked against libcuda would bind it), `ready:FILE`,
//! `wait:FILE`, `sleep:MS`, `fork:STEPS` (steps separated by `+`, run in a forked
//! child that then exits), `exit:CODE`, `pid:FILE` (writes `ns=PID host=PID`: its PID
//! and its PID as the `/proc` mount names it).
//!
//! NVML steps (NVML loaded like nvidia-smi: `dlopen`, then `dlsym` on the handle), on the
//! device with NVML index `I`: `nvml-mem:I` (`_v1` and `_v2` memory info),
//! `nvml-procs:I[:v1|v2|v3|graphics|graphics-v3|mps|mps-v3|detail]` (a process list as
//! `list=PID:BYTES,...`), `nvml-samples:I` (`nvmlDeviceGetProcessUtilization`,
//! `list=PID:SM:MEM,...`), `nvml-samples2:I` (`nvmlDeviceGetProcessesUtilizationInfo`),
//! `nvml-rates:I`, `nvml-acct:I` (`list=PID:RC:GPUUTIL:MAXMEM,...`), `nvml-enc:I`,
//! `nvml-fbc:I` (`list=PID:SESSION,...`), `nvml-resolve:NAME` (which library serves the
//! symbol through the handle and through `RTLD_DEFAULT`).
//!
//! Environment: `PROBE_CUDA_VERSION` (default 13000), `PROBE_PER_THREAD=1` to ask for
//! per-thread-default-stream entry points.

mod driver;
mod launch;
mod nvml;

use std::ffi::c_void;

use driver::Driver;

fn parse_size(text: &str) -> u64 {
    gpuslice_config::parse_bytes(text).unwrap_or_else(|e| panic!("size {text:?}: {e}"))
}

fn dims(text: &str) -> Vec<usize> {
    text.split('x')
        .map(|d| d.parse().expect("dimension"))
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut probe = Probe::new();
    run_steps(&mut probe, &args);
}

fn run_steps(probe: &mut Probe, steps: &[String]) {
    for step in steps {
        let (name, arg) = step.split_once(':').unwrap_or((step.as_str(), ""));
        let line = probe.step(name, arg);
        println!("{step} {line}");
    }
}

/// The device whose primary context [`release_at_exit`] releases.
static RELEASE_AT_EXIT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Registers an exit handler that releases the primary context of device `ordinal`, as
/// the CUDA runtime's teardown does: a library initialised after the slice was built,
/// whose handler therefore runs before the slice's own.
fn release_primary_at_exit(ordinal: i32) {
    RELEASE_AT_EXIT.store(ordinal, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: registers a plain extern "C" function with no arguments.
    unsafe { libc::atexit(release_at_exit) };
}

extern "C" fn release_at_exit() {
    let ordinal = RELEASE_AT_EXIT.load(std::sync::atomic::Ordering::Relaxed);
    if ordinal >= 0 {
        let rc = Driver::load().primary_release(ordinal, false);
        println!("release-at-exit rc={rc}");
    }
}

struct Probe {
    cu: Driver,
    pointers: Vec<u64>,
    async_pointers: Vec<u64>,
    handles: Vec<u64>,
    arrays: Vec<*mut c_void>,
    mipmaps: Vec<*mut c_void>,
    pool: *mut c_void,
    stream: *mut c_void,
    /// Contexts made by `ownctx`, newest last.
    own_contexts: Vec<*mut c_void>,
    nvml: Option<nvml::Nvml>,
}

impl Probe {
    fn nvml(&mut self) -> &nvml::Nvml {
        self.nvml.get_or_insert_with(nvml::Nvml::load)
    }

    fn new() -> Self {
        Self {
            cu: Driver::load(),
            pointers: Vec::new(),
            async_pointers: Vec::new(),
            handles: Vec::new(),
            arrays: Vec::new(),
            mipmaps: Vec::new(),
            pool: std::ptr::null_mut(),
            stream: std::ptr::null_mut(),
            own_contexts: Vec::new(),
            nvml: None,
        }
    }

    fn step(&mut self, name: &str, arg: &str) -> String {
        let cu = &self.cu;
        match name {
            "init" => format!("rc={}", cu.init()),
            "ctx" => format!("rc={}", cu.primary_ctx(arg.parse().unwrap_or(0))),
            "ctxrelease" => format!("rc={}", cu.primary_release(arg.parse().unwrap_or(0), false)),
            "ownctx" => {
                let (rc, ctx) = cu.own_ctx_create(arg.parse().unwrap_or(0));
                self.own_contexts.push(ctx);
                format!("rc={rc}")
            }
            "ownctxdestroy" => match self.own_contexts.pop() {
                Some(ctx) => format!("rc={}", cu.ctx_destroy(ctx)),
                None => "rc=-1".into(),
            },
            "ctxreset" => format!("rc={}", cu.primary_release(arg.parse().unwrap_or(0), true)),
            "ctxcreate" => format!("rc={}", cu.ctx_create(arg)),
            "alloc" => {
                let (rc, p) = cu.mem_alloc(parse_size(arg));
                if rc == 0 {
                    self.pointers.push(p);
                }
                format!("rc={rc}")
            }
            "direct-alloc" => {
                let (rc, p) = cu.direct_mem_alloc(parse_size(arg));
                if rc == 0 {
                    self.pointers.push(p);
                }
                format!("rc={rc}")
            }
            "managed" => {
                let (rc, p) = cu.mem_alloc_managed(parse_size(arg));
                if rc == 0 {
                    self.pointers.push(p);
                }
                format!("rc={rc}")
            }
            "fill" => {
                let chunk = parse_size(arg);
                let mut count = 0u64;
                let rc = loop {
                    let (rc, p) = cu.mem_alloc(chunk);
                    if rc != 0 {
                        break rc;
                    }
                    self.pointers.push(p);
                    count += 1;
                };
                format!("rc={rc} count={count} bytes={}", count * chunk)
            }
            "churn" => {
                let (chunk, iterations) = arg.split_once(':').expect("churn:CHUNK:ITERATIONS");
                let chunk = parse_size(chunk);
                let mut refused = 0u64;
                for _ in 0..iterations.parse::<u64>().expect("iterations") {
                    let (rc, p) = cu.mem_alloc(chunk);
                    if rc == 0 {
                        cu.mem_free(p);
                    } else {
                        refused += 1;
                    }
                }
                format!("rc=0 refused={refused}")
            }
            "pitch" => {
                let d = dims(arg);
                let (rc, p, pitch) = cu.mem_alloc_pitch(d[0], d[1]);
                if rc == 0 {
                    self.pointers.push(p);
                }
                format!("rc={rc} pitch={pitch}")
            }
            "freeall" => {
                let mut rc = 0;
                for p in self.pointers.drain(..) {
                    rc = rc.max(cu.mem_free(p));
                }
                for p in self.async_pointers.drain(..) {
                    rc = rc.max(cu.mem_free_async(p, self.stream));
                }
                for h in self.handles.drain(..) {
                    rc = rc.max(cu.mem_release(h));
                }
                for a in self.arrays.drain(..) {
                    rc = rc.max(cu.array_destroy(a));
                }
                for a in self.mipmaps.drain(..) {
                    rc = rc.max(cu.mipmap_destroy(a));
                }
                if !self.stream.is_null() {
                    cu.stream_sync(self.stream);
                }
                format!("rc={rc}")
            }
            "meminfo" => {
                let (rc, free, total) = cu.mem_get_info();
                format!("rc={rc} free={free} total={total}")
            }
            "totalmem" => {
                let (rc, total) = cu.device_total_mem(arg.parse().unwrap_or(0));
                format!("rc={rc} total={total}")
            }
            "async" | "pool" => {
                if self.stream.is_null() {
                    self.stream = cu.stream_create();
                }
                if name == "pool" && self.pool.is_null() {
                    self.pool = cu.pool_create(0);
                }
                let pool = if name == "pool" {
                    Some(self.pool)
                } else {
                    None
                };
                let (rc, p) = cu.mem_alloc_async(parse_size(arg), pool, self.stream);
                if rc == 0 {
                    self.async_pointers.push(p);
                }
                format!("rc={rc}")
            }
            "asyncfill" => {
                if self.stream.is_null() {
                    self.stream = cu.stream_create();
                }
                let chunk = parse_size(arg);
                let mut count = 0u64;
                let rc = loop {
                    let (rc, p) = cu.mem_alloc_async(chunk, None, self.stream);
                    if rc != 0 {
                        break rc;
                    }
                    self.async_pointers.push(p);
                    count += 1;
                };
                format!("rc={rc} count={count} bytes={}", count * chunk)
            }
            "sync" => format!("rc={}", cu.stream_sync(self.stream)),
            "trim" => {
                let pool = if self.pool.is_null() {
                    cu.device_mem_pool(0)
                } else {
                    self.pool
                };
                format!("rc={}", cu.pool_trim(pool, 0))
            }
            "vmm" | "vmmfill" => {
                let chunk = parse_size(arg);
                let mut count = 0u64;
                let rc = loop {
                    let (rc, h) = cu.mem_create(chunk, 0);
                    if rc != 0 {
                        break rc;
                    }
                    self.handles.push(h);
                    count += 1;
                    if name == "vmm" {
                        break 0;
                    }
                };
                format!("rc={rc} count={count} granularity={}", cu.granularity(0))
            }
            "array" => {
                let d = dims(arg);
                let (rc, a) = cu.array_create(d[0], d[1]);
                if rc == 0 {
                    self.arrays.push(a);
                }
                format!("rc={rc}")
            }
            "array3d" => {
                let d = dims(arg);
                let (rc, a) = cu.array3d_create(d[0], d[1], d[2]);
                if rc == 0 {
                    self.arrays.push(a);
                }
                format!("rc={rc}")
            }
            "mipmap" => {
                let (size, levels) = arg.split_once(':').expect("mipmap:WxH:LEVELS");
                let d = dims(size);
                let (rc, a) = cu.mipmap_create(d[0], d[1], levels.parse().expect("levels"));
                if rc == 0 {
                    self.mipmaps.push(a);
                }
                format!("rc={rc}")
            }
            "graph" => {
                if self.stream.is_null() {
                    self.stream = cu.stream_create();
                }
                let (rc, stage) = cu.graph_with_allocation(parse_size(arg), self.stream);
                format!("rc={rc} stage={stage}")
            }
            "graphtrim" => format!("rc={}", cu.graph_mem_trim(0)),
            "loop" => {
                let (kind, ms) = arg.split_once(':').expect("loop:KIND:MS");
                launch::timed_loop(cu, kind, ms.parse().expect("ms"))
            }
            "resolve" => format!("library={}", cu.resolve_library(arg)),
            "capture-beside" => launch::capture_beside(cu),
            "ready" => {
                std::fs::write(arg, b"ready").expect("write ready file");
                "rc=0".into()
            }
            "wait" => {
                while !std::path::Path::new(arg).exists() {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                "rc=0".into()
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(arg.parse().expect("ms")));
                "rc=0".into()
            }
            "fork" => {
                let steps: Vec<String> = arg.split('+').map(str::to_string).collect();
                // SAFETY: the child only runs the given steps (no locks held by other
                // threads: the probe is single-threaded) and exits.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    for step in &steps {
                        let (n, a) = step.split_once(':').unwrap_or((step.as_str(), ""));
                        let line = self.step(n, a);
                        println!("child:{step} {line}");
                    }
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                    // SAFETY: leaving the child without running the parent's atexit work
                    // twice is not the point here: exit normally like a program would.
                    unsafe { libc::exit(0) };
                }
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                format!("rc=0 child_pid={pid} child_status={status}")
            }
            "exit" => std::process::exit(arg.parse().unwrap_or(0)),
            "release-at-exit" => {
                release_primary_at_exit(arg.parse().unwrap_or(0));
                "rc=0".into()
            }
            "pid" => {
                let ns = std::process::id();
                let host = std::fs::read_link("/proc/self")
                    .ok()
                    .and_then(|p| p.to_str().and_then(|s| s.parse::<u32>().ok()))
                    .unwrap_or(ns);
                let text = format!("ns={ns} host={host}");
                std::fs::write(arg, &text).expect("write pid file");
                format!("rc=0 {text}")
            }
            "nvml-resolve" => self.nvml().resolve(arg),
            n if n.starts_with("nvml-") => self.nvml().step(n, arg),
            other => panic!("unknown step {other}"),
        }
    }
}
