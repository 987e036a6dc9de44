//! `cuGetProcAddress` / `cuGetProcAddress_v2`: maps a base name and a CUDA version to the
//! exported variant (`cuMemAlloc` at 12000 -> `cuMemAlloc_v2`), and to the `_ptsz` variant
//! when per-thread default-stream semantics are requested. The returned address is exactly
//! the address of the exported symbol in this library (the build links with `-Bsymbolic`).

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::OnceLock;

use crate::array::*;
use crate::context::*;
use crate::device::*;
use crate::driver::{Out, injected};
use crate::graph::*;
use crate::init::*;
use crate::memory::*;
use crate::module::*;
use crate::pool::*;
use crate::stream::*;
use crate::timing::*;
use crate::types::*;
use crate::vmm::*;

/// One versioned variant: from CUDA `min` on, the base name means `name` (address 0: the
/// variant exists in the real driver but not in the fake, e.g. 32-bit pointer v1 calls).
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    pub min: c_int,
    #[allow(dead_code, reason = "read by the tests and in Debug output")]
    pub name: &'static str,
    pub addr: usize,
}

/// All variants of a base name, plus its per-thread-default-stream variant.
#[derive(Debug, Clone)]
pub struct Entry {
    pub variants: Vec<Variant>,
    pub ptsz: Option<Variant>,
}

macro_rules! v {
    ($min:expr, $f:ident) => {
        Variant {
            min: $min,
            name: stringify!($f),
            addr: ($f as *const ()).expose_provenance(),
        }
    };
    ($min:expr, missing $name:literal) => {
        Variant {
            min: $min,
            name: $name,
            addr: 0,
        }
    };
}

fn build() -> HashMap<&'static str, Entry> {
    let mut t: HashMap<&'static str, Entry> = HashMap::new();
    let mut add = |base: &'static str, variants: Vec<Variant>, ptsz: Option<Variant>| {
        t.insert(base, Entry { variants, ptsz });
    };
    add("cuInit", vec![v!(2000, cuInit)], None);
    add(
        "cuDriverGetVersion",
        vec![v!(2020, cuDriverGetVersion)],
        None,
    );
    add("cuGetErrorString", vec![v!(6000, cuGetErrorString)], None);
    add("cuGetErrorName", vec![v!(6000, cuGetErrorName)], None);
    add(
        "cuGetProcAddress",
        vec![v!(11030, cuGetProcAddress), v!(12000, cuGetProcAddress_v2)],
        None,
    );
    add("cuDeviceGet", vec![v!(2000, cuDeviceGet)], None);
    add("cuDeviceGetCount", vec![v!(2000, cuDeviceGetCount)], None);
    add("cuDeviceGetName", vec![v!(2000, cuDeviceGetName)], None);
    add(
        "cuDeviceGetUuid",
        vec![v!(9020, cuDeviceGetUuid), v!(11040, cuDeviceGetUuid_v2)],
        None,
    );
    add(
        "cuDeviceTotalMem",
        vec![
            v!(2000, missing "cuDeviceTotalMem"),
            v!(3020, cuDeviceTotalMem_v2),
        ],
        None,
    );
    add(
        "cuDeviceGetAttribute",
        vec![v!(2000, cuDeviceGetAttribute)],
        None,
    );
    add(
        "cuDeviceGetPCIBusId",
        vec![v!(4010, cuDeviceGetPCIBusId)],
        None,
    );
    add(
        "cuDeviceGetByPCIBusId",
        vec![v!(4010, cuDeviceGetByPCIBusId)],
        None,
    );
    add(
        "cuDeviceGetDefaultMemPool",
        vec![v!(11020, cuDeviceGetDefaultMemPool)],
        None,
    );
    add(
        "cuDeviceGetMemPool",
        vec![v!(11020, cuDeviceGetMemPool)],
        None,
    );
    add(
        "cuDeviceSetMemPool",
        vec![v!(11020, cuDeviceSetMemPool)],
        None,
    );
    add(
        "cuDeviceGetGraphMemAttribute",
        vec![v!(11040, cuDeviceGetGraphMemAttribute)],
        None,
    );
    add(
        "cuDeviceSetGraphMemAttribute",
        vec![v!(11040, cuDeviceSetGraphMemAttribute)],
        None,
    );
    add(
        "cuDeviceGraphMemTrim",
        vec![v!(11040, cuDeviceGraphMemTrim)],
        None,
    );
    add(
        "cuDevicePrimaryCtxRetain",
        vec![v!(7000, cuDevicePrimaryCtxRetain)],
        None,
    );
    add(
        "cuDevicePrimaryCtxRelease",
        vec![
            v!(7000, cuDevicePrimaryCtxRelease),
            v!(11000, cuDevicePrimaryCtxRelease_v2),
        ],
        None,
    );
    add(
        "cuDevicePrimaryCtxReset",
        vec![
            v!(7000, cuDevicePrimaryCtxReset),
            v!(11000, cuDevicePrimaryCtxReset_v2),
        ],
        None,
    );
    add(
        "cuDevicePrimaryCtxSetFlags",
        vec![
            v!(7000, cuDevicePrimaryCtxSetFlags),
            v!(11000, cuDevicePrimaryCtxSetFlags_v2),
        ],
        None,
    );
    add(
        "cuDevicePrimaryCtxGetState",
        vec![v!(7000, cuDevicePrimaryCtxGetState)],
        None,
    );
    add(
        "cuCtxCreate",
        vec![v!(2000, cuCtxCreate), v!(3020, cuCtxCreate_v2)],
        None,
    );
    add(
        "cuCtxDestroy",
        vec![v!(2000, cuCtxDestroy), v!(4000, cuCtxDestroy_v2)],
        None,
    );
    add(
        "cuCtxPushCurrent",
        vec![v!(2000, cuCtxPushCurrent), v!(4000, cuCtxPushCurrent_v2)],
        None,
    );
    add(
        "cuCtxPopCurrent",
        vec![v!(2000, cuCtxPopCurrent), v!(4000, cuCtxPopCurrent_v2)],
        None,
    );
    add("cuCtxSetCurrent", vec![v!(4000, cuCtxSetCurrent)], None);
    add("cuCtxGetCurrent", vec![v!(4000, cuCtxGetCurrent)], None);
    add("cuCtxGetDevice", vec![v!(2000, cuCtxGetDevice)], None);
    add(
        "cuCtxSynchronize",
        vec![v!(2000, cuCtxSynchronize), v!(13000, cuCtxSynchronize_v2)],
        None,
    );
    add(
        "cuMemGetInfo",
        vec![v!(2000, missing "cuMemGetInfo"), v!(3020, cuMemGetInfo_v2)],
        None,
    );
    add(
        "cuMemAlloc",
        vec![v!(2000, missing "cuMemAlloc"), v!(3020, cuMemAlloc_v2)],
        None,
    );
    add(
        "cuMemFree",
        vec![v!(2000, missing "cuMemFree"), v!(3020, cuMemFree_v2)],
        None,
    );
    add(
        "cuMemAllocPitch",
        vec![
            v!(2000, missing "cuMemAllocPitch"),
            v!(3020, cuMemAllocPitch_v2),
        ],
        None,
    );
    add(
        "cuMemGetAddressRange",
        vec![
            v!(2000, missing "cuMemGetAddressRange"),
            v!(3020, cuMemGetAddressRange_v2),
        ],
        None,
    );
    add("cuMemAllocManaged", vec![v!(6000, cuMemAllocManaged)], None);
    add(
        "cuMemAllocHost",
        vec![v!(2000, cuMemAllocHost), v!(3020, cuMemAllocHost_v2)],
        None,
    );
    add("cuMemHostAlloc", vec![v!(2020, cuMemHostAlloc)], None);
    add("cuMemFreeHost", vec![v!(2000, cuMemFreeHost)], None);
    add(
        "cuMemAllocAsync",
        vec![v!(11020, cuMemAllocAsync)],
        Some(v!(11020, cuMemAllocAsync_ptsz)),
    );
    add(
        "cuMemAllocFromPoolAsync",
        vec![v!(11020, cuMemAllocFromPoolAsync)],
        Some(v!(11020, cuMemAllocFromPoolAsync_ptsz)),
    );
    add(
        "cuMemFreeAsync",
        vec![v!(11020, cuMemFreeAsync)],
        Some(v!(11020, cuMemFreeAsync_ptsz)),
    );
    add("cuMemPoolCreate", vec![v!(11020, cuMemPoolCreate)], None);
    add("cuMemPoolDestroy", vec![v!(11020, cuMemPoolDestroy)], None);
    add("cuMemPoolTrimTo", vec![v!(11020, cuMemPoolTrimTo)], None);
    add(
        "cuMemPoolGetAttribute",
        vec![v!(11020, cuMemPoolGetAttribute)],
        None,
    );
    add(
        "cuMemPoolSetAttribute",
        vec![v!(11020, cuMemPoolSetAttribute)],
        None,
    );
    add("cuStreamCreate", vec![v!(2000, cuStreamCreate)], None);
    add(
        "cuStreamCreateWithPriority",
        vec![v!(5050, cuStreamCreateWithPriority)],
        None,
    );
    add(
        "cuStreamDestroy",
        vec![v!(2000, cuStreamDestroy), v!(4000, cuStreamDestroy_v2)],
        None,
    );
    add(
        "cuStreamSynchronize",
        vec![v!(2000, cuStreamSynchronize)],
        Some(v!(7000, cuStreamSynchronize_ptsz)),
    );
    add("cuStreamQuery", vec![v!(2000, cuStreamQuery)], None);
    add(
        "cuStreamIsCapturing",
        vec![v!(10000, cuStreamIsCapturing)],
        Some(v!(10000, cuStreamIsCapturing_ptsz)),
    );
    add(
        "cuStreamBeginCapture",
        vec![
            v!(10000, cuStreamBeginCapture),
            v!(10010, cuStreamBeginCapture_v2),
        ],
        None,
    );
    add(
        "cuStreamEndCapture",
        vec![v!(10000, cuStreamEndCapture)],
        None,
    );
    add(
        "cuThreadExchangeStreamCaptureMode",
        vec![v!(10010, cuThreadExchangeStreamCaptureMode)],
        None,
    );
    add("cuEventCreate", vec![v!(2000, cuEventCreate)], None);
    add(
        "cuEventDestroy",
        vec![v!(2000, cuEventDestroy), v!(4000, cuEventDestroy_v2)],
        None,
    );
    add("cuEventRecord", vec![v!(2000, cuEventRecord)], None);
    add("cuEventQuery", vec![v!(2000, cuEventQuery)], None);
    add(
        "cuEventElapsedTime",
        vec![
            v!(2000, cuEventElapsedTime),
            v!(12080, cuEventElapsedTime_v2),
        ],
        None,
    );
    add(
        "cuEventSynchronize",
        vec![v!(2000, cuEventSynchronize)],
        None,
    );
    add(
        "cuMemGetAllocationGranularity",
        vec![v!(10020, cuMemGetAllocationGranularity)],
        None,
    );
    add("cuMemCreate", vec![v!(10020, cuMemCreate)], None);
    add("cuMemRelease", vec![v!(10020, cuMemRelease)], None);
    add(
        "cuMemAddressReserve",
        vec![v!(10020, cuMemAddressReserve)],
        None,
    );
    add("cuMemAddressFree", vec![v!(10020, cuMemAddressFree)], None);
    add("cuMemMap", vec![v!(10020, cuMemMap)], None);
    add("cuMemUnmap", vec![v!(10020, cuMemUnmap)], None);
    add("cuMemSetAccess", vec![v!(10020, cuMemSetAccess)], None);
    add(
        "cuMemGetAllocationPropertiesFromHandle",
        vec![v!(10020, cuMemGetAllocationPropertiesFromHandle)],
        None,
    );
    add(
        "cuMemRetainAllocationHandle",
        vec![v!(11000, cuMemRetainAllocationHandle)],
        None,
    );
    add(
        "cuMemExportToShareableHandle",
        vec![v!(10020, cuMemExportToShareableHandle)],
        None,
    );
    add(
        "cuMemImportFromShareableHandle",
        vec![v!(10020, cuMemImportFromShareableHandle)],
        None,
    );
    add(
        "cuArrayCreate",
        vec![
            v!(2000, missing "cuArrayCreate"),
            v!(3020, cuArrayCreate_v2),
        ],
        None,
    );
    add(
        "cuArray3DCreate",
        vec![
            v!(2000, missing "cuArray3DCreate"),
            v!(3020, cuArray3DCreate_v2),
        ],
        None,
    );
    add("cuArrayDestroy", vec![v!(2000, cuArrayDestroy)], None);
    add(
        "cuMipmappedArrayCreate",
        vec![v!(5000, cuMipmappedArrayCreate)],
        None,
    );
    add(
        "cuMipmappedArrayDestroy",
        vec![v!(5000, cuMipmappedArrayDestroy)],
        None,
    );
    add(
        "cuArrayGetMemoryRequirements",
        vec![v!(11060, cuArrayGetMemoryRequirements)],
        None,
    );
    add(
        "cuMipmappedArrayGetMemoryRequirements",
        vec![v!(11060, cuMipmappedArrayGetMemoryRequirements)],
        None,
    );
    add("cuModuleLoad", vec![v!(2000, cuModuleLoad)], None);
    add("cuModuleLoadData", vec![v!(2000, cuModuleLoadData)], None);
    add(
        "cuModuleLoadDataEx",
        vec![v!(2010, cuModuleLoadDataEx)],
        None,
    );
    add(
        "cuModuleLoadFatBinary",
        vec![v!(2000, cuModuleLoadFatBinary)],
        None,
    );
    add("cuModuleUnload", vec![v!(2000, cuModuleUnload)], None);
    add(
        "cuModuleGetFunction",
        vec![v!(2000, cuModuleGetFunction)],
        None,
    );
    add(
        "cuLaunchKernel",
        vec![v!(4000, cuLaunchKernel)],
        Some(v!(7000, cuLaunchKernel_ptsz)),
    );
    add(
        "cuLaunchKernelEx",
        vec![v!(11060, cuLaunchKernelEx)],
        Some(v!(11060, cuLaunchKernelEx_ptsz)),
    );
    add(
        "cuLaunchCooperativeKernel",
        vec![v!(9000, cuLaunchCooperativeKernel)],
        Some(v!(9000, cuLaunchCooperativeKernel_ptsz)),
    );
    add("cuGraphCreate", vec![v!(10000, cuGraphCreate)], None);
    add("cuGraphDestroy", vec![v!(10000, cuGraphDestroy)], None);
    add(
        "cuGraphAddMemAllocNode",
        vec![v!(11040, cuGraphAddMemAllocNode)],
        None,
    );
    add(
        "cuGraphAddMemFreeNode",
        vec![v!(11040, cuGraphAddMemFreeNode)],
        None,
    );
    add(
        "cuGraphAddKernelNode",
        vec![
            v!(10000, cuGraphAddKernelNode),
            v!(12000, cuGraphAddKernelNode_v2),
        ],
        None,
    );
    add(
        "cuGraphAddEmptyNode",
        vec![v!(10000, cuGraphAddEmptyNode)],
        None,
    );
    add("cuGraphGetNodes", vec![v!(10000, cuGraphGetNodes)], None);
    add(
        "cuGraphNodeGetType",
        vec![v!(10000, cuGraphNodeGetType)],
        None,
    );
    add(
        "cuGraphMemAllocNodeGetParams",
        vec![v!(11040, cuGraphMemAllocNodeGetParams)],
        None,
    );
    add(
        "cuGraphMemFreeNodeGetParams",
        vec![v!(11040, cuGraphMemFreeNodeGetParams)],
        None,
    );
    add(
        "cuGraphInstantiate",
        vec![
            v!(10000, cuGraphInstantiate),
            v!(11000, cuGraphInstantiate_v2),
            v!(12000, cuGraphInstantiateWithFlags),
        ],
        None,
    );
    add(
        "cuGraphInstantiateWithFlags",
        vec![v!(11040, cuGraphInstantiateWithFlags)],
        None,
    );
    add(
        "cuGraphInstantiateWithParams",
        vec![v!(12000, cuGraphInstantiateWithParams)],
        None,
    );
    add(
        "cuGraphExecDestroy",
        vec![v!(10000, cuGraphExecDestroy)],
        None,
    );
    add(
        "cuGraphLaunch",
        vec![v!(10000, cuGraphLaunch)],
        Some(v!(10000, cuGraphLaunch_ptsz)),
    );
    add(
        "cuGraphUpload",
        vec![v!(11010, cuGraphUpload)],
        Some(v!(11010, cuGraphUpload_ptsz)),
    );
    t
}

/// The symbol table, built once.
pub fn table() -> &'static HashMap<&'static str, Entry> {
    static TABLE: OnceLock<HashMap<&'static str, Entry>> = OnceLock::new();
    TABLE.get_or_init(build)
}

/// Resolves `symbol` for `version` and `flags`: the chosen variant, or
/// (error code, `CUdriverProcAddressQueryResult`).
pub fn resolve(
    symbol: &str,
    version: c_int,
    flags: u64,
    env_per_thread: bool,
) -> Result<Variant, (CUresult, c_int)> {
    let entry = table()
        .get(symbol)
        .ok_or((CUDA_ERROR_NOT_FOUND, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND))?;
    let not_sufficient = (
        CUDA_ERROR_NOT_FOUND,
        CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT,
    );
    let chosen = entry
        .variants
        .iter()
        .filter(|v| v.min <= version)
        .max_by_key(|v| v.min)
        .copied()
        .ok_or(not_sufficient)?;
    if chosen.addr == 0 {
        return Err(not_sufficient);
    }
    let per_thread = flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM != 0
        || (flags
            & (CU_GET_PROC_ADDRESS_LEGACY_STREAM | CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM)
            == 0
            && env_per_thread);
    match entry.ptsz {
        Some(p) if per_thread && p.min <= version => Ok(p),
        _ => Ok(chosen),
    }
}

fn env_per_thread() -> bool {
    static V: OnceLock<bool> = OnceLock::new();
    *V.get_or_init(|| {
        std::env::var("CUDA_API_PER_THREAD_DEFAULT_STREAM").is_ok_and(|v| v.trim() == "1")
    })
}

/// Shared body of both entry points.
///
/// # Safety
/// `symbol` null or a C string; `pfn` null or writable; `status` null or writable.
unsafe fn get_proc(
    name: &str,
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
    status: *mut c_int,
) -> CUresult {
    if let Some(code) = injected(name) {
        return code;
    }
    // SAFETY: per this function's contract.
    let status = unsafe { Out::optional(status) };
    // SAFETY: per this function's contract.
    let Ok(pfn) = (unsafe { Out::new(pfn) }) else {
        return CUDA_ERROR_INVALID_VALUE;
    };
    pfn.set(std::ptr::null_mut());
    if symbol.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    // SAFETY: non-null and NUL-terminated by this function's contract.
    let sym = unsafe { CStr::from_ptr(symbol) }.to_string_lossy();
    let (code, st) = match resolve(&sym, version, flags, env_per_thread()) {
        Ok(v) => {
            pfn.set(std::ptr::with_exposed_provenance_mut(v.addr));
            (CUDA_SUCCESS, CU_GET_PROC_ADDRESS_SUCCESS)
        }
        Err(e) => e,
    };
    if let Some(s) = status {
        s.set(st);
    }
    code
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    cuda_version: c_int,
    flags: u64,
    symbol_status: *mut c_int,
) -> CUresult {
    // SAFETY: forwarded API contract.
    unsafe {
        get_proc(
            "cuGetProcAddress_v2",
            symbol,
            pfn,
            cuda_version,
            flags,
            symbol_status,
        )
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    cuda_version: c_int,
    flags: u64,
) -> CUresult {
    // SAFETY: forwarded API contract.
    unsafe {
        get_proc(
            "cuGetProcAddress",
            symbol,
            pfn,
            cuda_version,
            flags,
            std::ptr::null_mut(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let v = resolve("cuMemAlloc", 12000, 0, false).expect("found");
        assert_eq!(v.name, "cuMemAlloc_v2");
        assert_eq!(v.addr, (cuMemAlloc_v2 as *const ()).addr());
        assert_eq!(
            resolve("cuMemAlloc", 3000, 0, false).map(|v| v.name),
            Err((
                CUDA_ERROR_NOT_FOUND,
                CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT
            ))
        );
        assert_eq!(
            resolve("cuMemAlloc", 1000, 0, false).map(|v| v.name),
            Err((
                CUDA_ERROR_NOT_FOUND,
                CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT
            ))
        );
        assert_eq!(
            resolve("cuNoSuchThing", 12000, 0, false).map(|v| v.name),
            Err((CUDA_ERROR_NOT_FOUND, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND))
        );
        assert_eq!(
            resolve("cuMemAlloc_v2", 12000, 0, false).map(|v| v.name),
            Err((CUDA_ERROR_NOT_FOUND, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND))
        );
        assert_eq!(
            resolve("cuCtxDestroy", 3020, 0, false).map(|v| v.name),
            Ok("cuCtxDestroy")
        );
        assert_eq!(
            resolve("cuCtxDestroy", 4000, 0, false).map(|v| v.name),
            Ok("cuCtxDestroy_v2")
        );
        assert_eq!(
            resolve("cuDeviceGetUuid", 11030, 0, false).map(|v| v.name),
            Ok("cuDeviceGetUuid")
        );
        assert_eq!(
            resolve("cuDeviceGetUuid", 12000, 0, false).map(|v| v.name),
            Ok("cuDeviceGetUuid_v2")
        );
        assert_eq!(
            resolve("cuGetProcAddress", 12000, 0, false).map(|v| v.name),
            Ok("cuGetProcAddress_v2")
        );
        assert_eq!(
            resolve("cuGraphInstantiate", 12000, 0, false).map(|v| v.name),
            Ok("cuGraphInstantiateWithFlags")
        );
    }

    #[test]
    fn per_thread() {
        let name = |flags, env| resolve("cuMemAllocAsync", 12000, flags, env).map(|v| v.name);
        assert_eq!(name(0, false), Ok("cuMemAllocAsync"));
        assert_eq!(name(1, false), Ok("cuMemAllocAsync"));
        assert_eq!(name(2, false), Ok("cuMemAllocAsync_ptsz"));
        assert_eq!(name(0, true), Ok("cuMemAllocAsync_ptsz"));
        assert_eq!(name(1, true), Ok("cuMemAllocAsync"));
        assert_eq!(
            resolve("cuMemAlloc", 12000, 2, false).map(|v| v.name),
            Ok("cuMemAlloc_v2")
        );
        assert_eq!(
            resolve("cuLaunchKernel", 12000, 2, false).map(|v| v.name),
            Ok("cuLaunchKernel_ptsz")
        );
    }

    #[test]
    fn every_variant_is_distinct() {
        let mut by_addr: HashMap<usize, &str> = HashMap::new();
        for e in table().values() {
            for v in e.variants.iter().chain(e.ptsz.iter()) {
                if v.addr != 0 {
                    let first = *by_addr.entry(v.addr).or_insert(v.name);
                    assert_eq!(first, v.name, "two names share one address");
                }
            }
        }
    }
}
