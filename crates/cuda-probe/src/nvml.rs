//! NVML as `nvidia-smi` reaches it: `dlopen("libnvidia-ml.so.1")`, then `dlsym` on that
//! handle for each function (so an interposer sees the lookups through its `dlsym`).
//! Each query returns one line of `key=value` fields for the probe's output; lists are
//! `list=a:b,c:d` sorted by PID.

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};

use gpuslice_cuda_abi::nvml::*;

/// The loaded NVML.
pub struct Nvml {
    lib: *mut c_void,
    init_rc: NvmlReturn,
}

fn join(items: impl IntoIterator<Item = String>) -> String {
    items.into_iter().collect::<Vec<_>>().join(",")
}

impl Nvml {
    /// Loads and initialises NVML like nvidia-smi.
    pub fn load() -> Self {
        // SAFETY: dlopen with a valid name.
        let lib = unsafe {
            libc::dlopen(
                c"libnvidia-ml.so.1".as_ptr(),
                libc::RTLD_NOW | libc::RTLD_LOCAL,
            )
        };
        assert!(!lib.is_null(), "dlopen(libnvidia-ml.so.1) failed");
        let mut me = Self { lib, init_rc: 0 };
        type Init = unsafe extern "C" fn() -> NvmlReturn;
        let p = me.sym("nvmlInit_v2");
        assert!(!p.is_null(), "libnvidia-ml.so.1 has no nvmlInit_v2");
        // SAFETY: nvmlInit_v2 takes no arguments.
        me.init_rc = unsafe { std::mem::transmute::<*mut c_void, Init>(p)() };
        me
    }

    fn sym(&self, name: &str) -> *mut c_void {
        let c = CString::new(name).expect("name");
        // SAFETY: a dlopen handle and a NUL-terminated name.
        unsafe { libc::dlsym(self.lib, c.as_ptr()) }
    }

    /// Which library serves `name` when looked up through the handle and through
    /// `RTLD_DEFAULT` (as a program linked against NVML binds it).
    pub fn resolve(&self, name: &str) -> String {
        let c = CString::new(name).expect("name");
        let through_handle = self.sym(name);
        // SAFETY: RTLD_DEFAULT lookup of a NUL-terminated name.
        let default = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c.as_ptr()) };
        format!(
            "handle={} default={}",
            library_of(through_handle),
            library_of(default)
        )
    }

    fn device(&self, index: u32) -> Result<NvmlDevice, String> {
        if self.init_rc != 0 {
            return Err(format!("rc={}", self.init_rc));
        }
        type ByIndex = unsafe extern "C" fn(c_uint, *mut NvmlDevice) -> NvmlReturn;
        let p = self.sym("nvmlDeviceGetHandleByIndex_v2");
        let mut dev: NvmlDevice = std::ptr::null_mut();
        // SAFETY: the function of that name and signature; a valid out pointer.
        let rc = unsafe { std::mem::transmute::<*mut c_void, ByIndex>(p)(index, &mut dev) };
        if rc == 0 {
            Ok(dev)
        } else {
            Err(format!("rc={rc}"))
        }
    }

    /// Runs one NVML step; `arg` is `INDEX` or `INDEX:VARIANT`.
    pub fn step(&self, name: &str, arg: &str) -> String {
        let (index, variant) = arg.split_once(':').unwrap_or((arg, ""));
        let dev = match self.device(index.parse().unwrap_or(0)) {
            Ok(d) => d,
            Err(e) => return e,
        };
        match name {
            "nvml-mem" => self.memory(dev),
            "nvml-procs" => self.processes(dev, variant),
            "nvml-samples" => self.samples(dev),
            "nvml-samples2" => self.samples_v2(dev),
            "nvml-rates" => self.rates(dev),
            "nvml-acct" => self.accounting(dev),
            "nvml-enc" => self.sessions(
                dev,
                "nvmlDeviceGetEncoderSessions",
                |s: &NvmlEncoderSessionInfo| (s.pid, s.session_id),
            ),
            "nvml-fbc" => {
                self.sessions(dev, "nvmlDeviceGetFBCSessions", |s: &NvmlFbcSessionInfo| {
                    (s.pid, s.session_id)
                })
            }
            "nvml-smi" => self.smi_table(index.parse().unwrap_or(0)),
            other => panic!("unknown NVML step {other}"),
        }
    }

    /// nvidia-smi's process table as the driver's RM controls give it (the fake NVML's
    /// test hook issues them through libc's `ioctl`, where the interposer sits).
    fn smi_table(&self, index: c_int) -> String {
        let p = self.sym("fakeNvmlSmiTable");
        if p.is_null() {
            return "rc=-2 (not the fake NVML)".into();
        }
        type Table = unsafe extern "C" fn(c_int, *mut c_char, usize) -> c_int;
        // SAFETY: the fake's hook has this signature.
        let table = unsafe { std::mem::transmute::<*mut c_void, Table>(p) };
        let mut out = vec![0u8; 4096];
        // SAFETY: a buffer of the length given.
        let rc = unsafe { table(index, out.as_mut_ptr().cast(), out.len()) };
        let text = String::from_utf8_lossy(&out[..out.iter().position(|&b| b == 0).unwrap_or(0)])
            .into_owned();
        if rc == 0 {
            format!("rc=0 {text}")
        } else {
            format!("rc={rc} error={}", text.replace(' ', "_"))
        }
    }

    fn f<T>(&self, name: &str) -> T {
        let p = self.sym(name);
        assert!(!p.is_null(), "no {name}");
        assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
        // SAFETY: T is the function pointer type of `name` (checked to be pointer sized);
        // the caller names the right signature.
        unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) }
    }

    fn memory(&self, dev: NvmlDevice) -> String {
        let v1: unsafe extern "C" fn(NvmlDevice, *mut NvmlMemory) -> NvmlReturn =
            self.f("nvmlDeviceGetMemoryInfo");
        let v2: unsafe extern "C" fn(NvmlDevice, *mut NvmlMemoryV2) -> NvmlReturn =
            self.f("nvmlDeviceGetMemoryInfo_v2");
        let mut m = NvmlMemory::default();
        let mut m2 = NvmlMemoryV2 {
            version: NVML_MEMORY_V2,
            ..NvmlMemoryV2::default()
        };
        // SAFETY: valid device handle and structs.
        let (rc1, rc2) = unsafe { (v1(dev, &mut m), v2(dev, &mut m2)) };
        format!(
            "rc={} total={} used={} free={} rc2={rc2} total2={} used2={} free2={} reserved2={}",
            rc1, m.total, m.used, m.free, m2.total, m2.used, m2.free, m2.reserved
        )
    }

    fn list<T: Copy + Default>(
        &self,
        dev: NvmlDevice,
        name: &str,
        key: impl Fn(&T) -> (u32, u64),
    ) -> String {
        let f: unsafe extern "C" fn(NvmlDevice, *mut c_uint, *mut T) -> NvmlReturn = self.f(name);
        let mut count: c_uint = 0;
        // SAFETY: a count query with a null array.
        let rc0 = unsafe { f(dev, &mut count, std::ptr::null_mut()) };
        let mut buf = vec![T::default(); count as usize + 4];
        let mut n = room(buf.len());
        // SAFETY: `buf` holds `n` records.
        let rc = unsafe { f(dev, &mut n, buf.as_mut_ptr()) };
        let mut items: Vec<(u32, u64)> =
            buf[..(n as usize).min(buf.len())].iter().map(key).collect();
        items.sort();
        format!(
            "rc={rc} rc0={rc0} count0={count} n={n} list={}",
            join(items.iter().map(|(p, m)| format!("{p}:{m}")))
        )
    }

    fn processes(&self, dev: NvmlDevice, variant: &str) -> String {
        let v1 = |i: &NvmlProcessInfoV1| (i.pid, i.used_gpu_memory);
        let v2 = |i: &NvmlProcessInfo| (i.pid, i.used_gpu_memory);
        match variant {
            "v1" => self.list(dev, "nvmlDeviceGetComputeRunningProcesses", v1),
            "v2" => self.list(dev, "nvmlDeviceGetComputeRunningProcesses_v2", v2),
            "" | "v3" => self.list(dev, "nvmlDeviceGetComputeRunningProcesses_v3", v2),
            "graphics" => self.list(dev, "nvmlDeviceGetGraphicsRunningProcesses", v1),
            "graphics-v3" => self.list(dev, "nvmlDeviceGetGraphicsRunningProcesses_v3", v2),
            "mps" => self.list(dev, "nvmlDeviceGetMPSComputeRunningProcesses", v1),
            "mps-v3" => self.list(dev, "nvmlDeviceGetMPSComputeRunningProcesses_v3", v2),
            "detail" => self.detail(dev),
            other => panic!("unknown process list {other}"),
        }
    }

    fn detail(&self, dev: NvmlDevice) -> String {
        let f: unsafe extern "C" fn(NvmlDevice, *mut NvmlProcessDetailList) -> NvmlReturn =
            self.f("nvmlDeviceGetRunningProcessDetailList");
        let mut buf = vec![NvmlProcessDetail::default(); 64];
        let mut list = NvmlProcessDetailList {
            version: NVML_PROCESS_DETAIL_LIST_V1,
            mode: 0,
            num_proc_array_entries: room(buf.len()),
            proc_array: buf.as_mut_ptr(),
        };
        // SAFETY: the list points to `count` records.
        let rc = unsafe { f(dev, &mut list) };
        let n = (list.num_proc_array_entries as usize).min(buf.len());
        let mut items: Vec<(u32, u64)> = buf[..n]
            .iter()
            .map(|d| (d.pid, d.used_gpu_memory))
            .collect();
        items.sort();
        format!(
            "rc={rc} n={n} list={}",
            join(items.iter().map(|(p, m)| format!("{p}:{m}")))
        )
    }

    fn samples(&self, dev: NvmlDevice) -> String {
        let f: unsafe extern "C" fn(
            NvmlDevice,
            *mut NvmlProcessUtilizationSample,
            *mut c_uint,
            u64,
        ) -> NvmlReturn = self.f("nvmlDeviceGetProcessUtilization");
        let mut count: c_uint = 0;
        // SAFETY: a count query with a null array.
        let rc0 = unsafe { f(dev, std::ptr::null_mut(), &mut count, 0) };
        let mut buf = vec![NvmlProcessUtilizationSample::default(); count as usize + 4];
        let mut n = room(buf.len());
        // SAFETY: `buf` holds `n` samples.
        let rc = unsafe { f(dev, buf.as_mut_ptr(), &mut n, 0) };
        let n = if rc == 0 { n as usize } else { 0 };
        let mut items: Vec<(u32, u32, u32)> = buf[..n.min(buf.len())]
            .iter()
            .map(|s| (s.pid, s.sm_util, s.mem_util))
            .collect();
        items.sort();
        format!(
            "rc={rc} rc0={rc0} n={n} list={}",
            join(items.iter().map(|(p, s, m)| format!("{p}:{s}:{m}")))
        )
    }

    fn samples_v2(&self, dev: NvmlDevice) -> String {
        let f: unsafe extern "C" fn(NvmlDevice, *mut NvmlProcessesUtilizationInfo) -> NvmlReturn =
            self.f("nvmlDeviceGetProcessesUtilizationInfo");
        let mut head = NvmlProcessesUtilizationInfo {
            version: NVML_PROCESSES_UTILIZATION_INFO_V1,
            process_samples_count: 0,
            last_seen_time_stamp: 0,
            proc_util_array: std::ptr::null_mut(),
        };
        // SAFETY: a count query with a null array.
        let rc0 = unsafe { f(dev, &mut head) };
        let mut buf =
            vec![NvmlProcessUtilizationInfo::default(); head.process_samples_count as usize + 4];
        head.process_samples_count = room(buf.len());
        head.proc_util_array = buf.as_mut_ptr();
        // SAFETY: the array holds `count` records.
        let rc = unsafe { f(dev, &mut head) };
        let n = if rc == 0 {
            head.process_samples_count as usize
        } else {
            0
        };
        let mut items: Vec<(u32, u32)> = buf[..n.min(buf.len())]
            .iter()
            .map(|s| (s.pid, s.sm_util))
            .collect();
        items.sort();
        format!(
            "rc={rc} rc0={rc0} n={n} list={}",
            join(items.iter().map(|(p, s)| format!("{p}:{s}")))
        )
    }

    fn rates(&self, dev: NvmlDevice) -> String {
        let f: unsafe extern "C" fn(NvmlDevice, *mut NvmlUtilization) -> NvmlReturn =
            self.f("nvmlDeviceGetUtilizationRates");
        let mut r = NvmlUtilization::default();
        // SAFETY: valid handle and struct.
        let rc = unsafe { f(dev, &mut r) };
        format!("rc={rc} gpu={} memory={}", r.gpu, r.memory)
    }

    fn accounting(&self, dev: NvmlDevice) -> String {
        let pids: unsafe extern "C" fn(NvmlDevice, *mut c_uint, *mut c_uint) -> NvmlReturn =
            self.f("nvmlDeviceGetAccountingPids");
        let stats: unsafe extern "C" fn(
            NvmlDevice,
            c_uint,
            *mut NvmlAccountingStats,
        ) -> NvmlReturn = self.f("nvmlDeviceGetAccountingStats");
        let mut buf = vec![0 as c_uint; 64];
        let mut n = room(buf.len());
        // SAFETY: `buf` holds `n` PIDs.
        let rc = unsafe { pids(dev, &mut n, buf.as_mut_ptr()) };
        let mut list: Vec<u32> = buf[..(n as usize).min(buf.len())].to_vec();
        list.sort();
        let items = list.iter().map(|&pid| {
            let mut s = NvmlAccountingStats::default();
            // SAFETY: valid handle and struct.
            let rc = unsafe { stats(dev, pid, &mut s) };
            format!("{pid}:{rc}:{}:{}", s.gpu_utilization, s.max_memory_usage)
        });
        format!("rc={rc} n={n} list={}", join(items))
    }

    fn sessions<T: Default + Clone>(
        &self,
        dev: NvmlDevice,
        name: &str,
        key: impl Fn(&T) -> (u32, u32),
    ) -> String {
        let f: unsafe extern "C" fn(NvmlDevice, *mut c_uint, *mut T) -> NvmlReturn = self.f(name);
        let mut count: c_uint = 0;
        // SAFETY: a count query (count 0) with a null array.
        let rc0 = unsafe { f(dev, &mut count, std::ptr::null_mut()) };
        let mut buf = vec![T::default(); count as usize + 4];
        let mut n = room(buf.len());
        // SAFETY: `buf` holds `n` records.
        let rc = unsafe { f(dev, &mut n, buf.as_mut_ptr()) };
        let mut items: Vec<(u32, u32)> =
            buf[..(n as usize).min(buf.len())].iter().map(key).collect();
        items.sort();
        format!(
            "rc={rc} rc0={rc0} count0={count} n={n} list={}",
            join(items.iter().map(|(p, id)| format!("{p}:{id}")))
        )
    }
}

fn library_of(p: *mut c_void) -> String {
    if p.is_null() {
        return "none".into();
    }
    // SAFETY: an all-zero Dl_info is a valid out-parameter.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the address.
    if unsafe { libc::dladdr(p, &mut info) } == 0 || info.dli_fname.is_null() {
        return "unknown".into();
    }
    // SAFETY: dladdr filled a NUL-terminated file name.
    let name = unsafe { CStr::from_ptr(info.dli_fname.cast::<c_char>()) };
    let name = name.to_string_lossy();
    name.rsplit('/').next().unwrap_or(&name).to_string()
}

/// A buffer's length as NVML's count. Saturating only ever tells NVML less room than
/// there is.
fn room(len: usize) -> c_uint {
    c_uint::try_from(len).unwrap_or(c_uint::MAX)
}
