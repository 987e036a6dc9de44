//! NVML (`nvml.h` of CUDA 12 and 13): `nvmlReturn_t` codes, the versioned-structure
//! constants, and the structures of the memory, process-list, utilisation, accounting
//! and session queries.

use std::ffi::{c_uint, c_void};

pub type NvmlReturn = c_uint;
pub type NvmlDevice = *mut c_void;

pub const NVML_SUCCESS: NvmlReturn = 0;
pub const NVML_ERROR_UNINITIALIZED: NvmlReturn = 1;
pub const NVML_ERROR_INVALID_ARGUMENT: NvmlReturn = 2;
pub const NVML_ERROR_NO_PERMISSION: NvmlReturn = 4;
pub const NVML_ERROR_NOT_FOUND: NvmlReturn = 6;
pub const NVML_ERROR_INSUFFICIENT_SIZE: NvmlReturn = 7;
pub const NVML_ERROR_DRIVER_NOT_LOADED: NvmlReturn = 9;
pub const NVML_ERROR_FUNCTION_NOT_FOUND: NvmlReturn = 13;
pub const NVML_ERROR_ARGUMENT_VERSION_MISMATCH: NvmlReturn = 25;

/// `NVML_VALUE_NOT_AVAILABLE` as a 32-bit id: the `gpuInstanceId` and
/// `computeInstanceId` of a process outside MIG mode.
pub const NVML_VALUE_NOT_AVAILABLE: c_uint = c_uint::MAX;
/// `NVML_VALUE_NOT_AVAILABLE` as a 64-bit memory value.
pub const NVML_VALUE_NOT_AVAILABLE_U64: u64 = u64::MAX;

/// `nvmlMemory_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NvmlMemory {
    pub total: u64,
    pub free: u64,
    pub used: u64,
}

/// `nvmlMemory_v2_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NvmlMemoryV2 {
    pub version: c_uint,
    pub total: u64,
    pub reserved: u64,
    pub free: u64,
    pub used: u64,
}

/// `NVML_STRUCT_VERSION(name, version)`: the struct's size in the low 24 bits, the
/// version above them. Evaluated at compile time only (in the constants below).
#[expect(
    clippy::cast_possible_truncation,
    reason = "the assert makes the compile fail unless size is below 2^24, which fits a c_uint"
)]
const fn struct_version(size: usize, version: c_uint) -> c_uint {
    assert!(size < 1 << 24, "an NVML struct's size must fit 24 bits");
    (size as c_uint) | (version << 24)
}

/// `NVML_STRUCT_VERSION(Memory, 2)`.
pub const NVML_MEMORY_V2: c_uint = struct_version(std::mem::size_of::<NvmlMemoryV2>(), 2);

/// `nvmlPciInfo_t` (as filled by `nvmlDeviceGetPciInfo_v3`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NvmlPciInfo {
    pub bus_id_legacy: [u8; 16],
    pub domain: c_uint,
    pub bus: c_uint,
    pub device: c_uint,
    pub pci_device_id: c_uint,
    pub pci_sub_system_id: c_uint,
    pub bus_id: [u8; 32],
}

/// `nvmlUtilization_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NvmlUtilization {
    pub gpu: c_uint,
    pub memory: c_uint,
}

/// `nvmlProcessInfo_v1_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NvmlProcessInfoV1 {
    pub pid: c_uint,
    pub used_gpu_memory: u64,
}

/// `nvmlProcessInfo_v2_t`, also `nvmlProcessInfo_t` of the `_v3` calls.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NvmlProcessInfo {
    pub pid: c_uint,
    pub used_gpu_memory: u64,
    pub gpu_instance_id: c_uint,
    pub compute_instance_id: c_uint,
}

/// `nvmlProcessDetail_v1_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NvmlProcessDetail {
    pub pid: c_uint,
    pub used_gpu_memory: u64,
    pub gpu_instance_id: c_uint,
    pub compute_instance_id: c_uint,
    pub used_gpu_cc_protected_memory: u64,
}

/// `nvmlProcessDetailList_v1_t`.
#[repr(C)]
#[derive(Debug)]
pub struct NvmlProcessDetailList {
    pub version: c_uint,
    pub mode: c_uint,
    pub num_proc_array_entries: c_uint,
    pub proc_array: *mut NvmlProcessDetail,
}

/// `NVML_STRUCT_VERSION(ProcessDetailList, 1)`.
pub const NVML_PROCESS_DETAIL_LIST_V1: c_uint =
    struct_version(std::mem::size_of::<NvmlProcessDetailList>(), 1);
/// `NVML_PROCESS_MODE_COMPUTE`, `_GRAPHICS`, `_MPS`.
pub const NVML_PROCESS_MODE_COMPUTE: c_uint = 0;
pub const NVML_PROCESS_MODE_GRAPHICS: c_uint = 1;
pub const NVML_PROCESS_MODE_MPS: c_uint = 2;

/// `nvmlProcessUtilizationSample_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NvmlProcessUtilizationSample {
    pub pid: c_uint,
    pub time_stamp: u64,
    pub sm_util: c_uint,
    pub mem_util: c_uint,
    pub enc_util: c_uint,
    pub dec_util: c_uint,
}

/// `nvmlProcessUtilizationInfo_v1_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NvmlProcessUtilizationInfo {
    pub time_stamp: u64,
    pub pid: c_uint,
    pub sm_util: c_uint,
    pub mem_util: c_uint,
    pub enc_util: c_uint,
    pub dec_util: c_uint,
    pub jpg_util: c_uint,
    pub ofa_util: c_uint,
}

/// `nvmlProcessesUtilizationInfo_v1_t`.
#[repr(C)]
#[derive(Debug)]
pub struct NvmlProcessesUtilizationInfo {
    pub version: c_uint,
    pub process_samples_count: c_uint,
    pub last_seen_time_stamp: u64,
    pub proc_util_array: *mut NvmlProcessUtilizationInfo,
}

/// `NVML_STRUCT_VERSION(ProcessesUtilizationInfo, 1)`.
pub const NVML_PROCESSES_UTILIZATION_INFO_V1: c_uint =
    struct_version(std::mem::size_of::<NvmlProcessesUtilizationInfo>(), 1);

/// `nvmlAccountingStats_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NvmlAccountingStats {
    pub gpu_utilization: c_uint,
    pub memory_utilization: c_uint,
    pub max_memory_usage: u64,
    pub time: u64,
    pub start_time: u64,
    pub is_running: c_uint,
    pub reserved: [c_uint; 5],
}

/// `nvmlEncoderSessionInfo_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NvmlEncoderSessionInfo {
    pub session_id: c_uint,
    pub pid: c_uint,
    pub vgpu_instance: c_uint,
    pub codec_type: c_uint,
    pub h_resolution: c_uint,
    pub v_resolution: c_uint,
    pub average_fps: c_uint,
    pub average_latency: c_uint,
}

/// `nvmlFBCSessionInfo_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NvmlFbcSessionInfo {
    pub session_id: c_uint,
    pub pid: c_uint,
    pub vgpu_instance: c_uint,
    pub display_ordinal: c_uint,
    pub session_type: c_uint,
    pub session_flags: c_uint,
    pub h_max_resolution: c_uint,
    pub v_max_resolution: c_uint,
    pub h_resolution: c_uint,
    pub v_resolution: c_uint,
    pub average_fps: c_uint,
    pub average_latency: c_uint,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn layouts_match_nvml_h() {
        assert_eq!(size_of::<NvmlMemory>(), 24);
        assert_eq!(size_of::<NvmlMemoryV2>(), 40);
        assert_eq!(offset_of!(NvmlMemoryV2, total), 8);
        assert_eq!(offset_of!(NvmlMemoryV2, used), 32);
        assert_eq!(NVML_MEMORY_V2, 0x0200_0028);
        assert_eq!(size_of::<NvmlPciInfo>(), 68);
        assert_eq!(offset_of!(NvmlPciInfo, bus_id), 36);
        assert_eq!(size_of::<NvmlUtilization>(), 8);
        assert_eq!(size_of::<NvmlProcessInfoV1>(), 16);
        assert_eq!(size_of::<NvmlProcessInfo>(), 24);
        assert_eq!(align_of::<NvmlProcessInfo>(), 8);
        assert_eq!(offset_of!(NvmlProcessInfo, used_gpu_memory), 8);
        assert_eq!(offset_of!(NvmlProcessInfo, compute_instance_id), 20);
        assert_eq!(size_of::<NvmlProcessDetail>(), 32);
        assert_eq!(
            offset_of!(NvmlProcessDetail, used_gpu_cc_protected_memory),
            24
        );
        assert_eq!(size_of::<NvmlProcessDetailList>(), 24);
        assert_eq!(offset_of!(NvmlProcessDetailList, proc_array), 16);
        assert_eq!(NVML_PROCESS_DETAIL_LIST_V1, 0x0100_0018);
        assert_eq!(size_of::<NvmlProcessUtilizationSample>(), 32);
        assert_eq!(offset_of!(NvmlProcessUtilizationSample, time_stamp), 8);
        assert_eq!(offset_of!(NvmlProcessUtilizationSample, sm_util), 16);
        assert_eq!(size_of::<NvmlProcessUtilizationInfo>(), 40);
        assert_eq!(offset_of!(NvmlProcessUtilizationInfo, pid), 8);
        assert_eq!(size_of::<NvmlProcessesUtilizationInfo>(), 24);
        assert_eq!(
            offset_of!(NvmlProcessesUtilizationInfo, proc_util_array),
            16
        );
        assert_eq!(NVML_PROCESSES_UTILIZATION_INFO_V1, 0x0100_0018);
        assert_eq!(size_of::<NvmlAccountingStats>(), 56);
        assert_eq!(offset_of!(NvmlAccountingStats, is_running), 32);
        assert_eq!(size_of::<NvmlEncoderSessionInfo>(), 32);
        assert_eq!(size_of::<NvmlFbcSessionInfo>(), 48);
    }
}
