//! Whether the GPUs that a slice's per-device limits name are here. A limit keyed by an
//! index or a UUID (or UUID prefix) that matches no GPU limits nothing, and would leave
//! the real GPUs unlimited without a word; the slice refuses instead (fail closed). It
//! is checked once per process, when the slice's state is built.
//!
//! "Here" means listed by NVML: the host's GPUs, or a container's, numbered as
//! `nvidia-smi` numbers them and not cut down by `CUDA_VISIBLE_DEVICES` (a limit for a
//! GPU that `CUDA_VISIBLE_DEVICES` hides is not a mistake). So that NVML stays unloaded
//! where it is not needed, limits keyed by UUID are first matched against the devices
//! CUDA shows (`gpuslice run --gpus` and CDI slices name exactly those); NVML is asked
//! only for index limits and for UUIDs CUDA does not show. When NVML cannot be used
//! then, the slice refuses too: nothing can tell that the GPU exists. A check that
//! passed is remembered, so a forked child (same configuration, same machine) does not
//! ask the driver again.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use gpuslice_config::{DeviceSelector, SliceConfig};

use crate::ffi::CUDA_SUCCESS;
use crate::real::{call_driver, device_uuid};
use crate::table::id;

type CountFn = unsafe extern "C" fn(*mut std::ffi::c_int) -> crate::ffi::CUresult;

/// The UUIDs of the devices CUDA shows this process, or `None` before `cuInit` (or
/// when the process has not loaded the driver: it is never loaded just for this).
fn cuda_devices() -> Option<Vec<(Option<u32>, String)>> {
    if !crate::real::cuda_loaded() {
        return None;
    }
    let mut count: std::ffi::c_int = 0;
    if call_driver!(id::cuDeviceGetCount, CountFn, &mut count) != CUDA_SUCCESS {
        return None;
    }
    (0..count)
        .map(|dev| device_uuid(dev).ok().map(|uuid| (None, uuid)))
        .collect()
}

fn describe(devices: &[(Option<u32>, String)]) -> String {
    if devices.is_empty() {
        return "NVML lists no GPU".into();
    }
    let list: Vec<String> = devices
        .iter()
        .map(|(i, u)| match i {
            Some(i) => format!("{i} {u}"),
            None => u.clone(),
        })
        .collect();
    format!("the GPUs here are {}", list.join(", "))
}

/// Set once a check passed in this process (or the parent it was forked from).
static PASSED: AtomicBool = AtomicBool::new(false);

/// Checks that every per-device limit of `config` names a GPU that is here; the error
/// names the variable and the selector.
pub fn check(config: &SliceConfig) -> Result<(), String> {
    if PASSED.load(Relaxed) {
        return Ok(());
    }
    let result = look(config);
    if result.is_ok() {
        PASSED.store(true, Relaxed);
    }
    result
}

fn look(config: &SliceConfig) -> Result<(), String> {
    let limits = &config.memory;
    if limits.per_device.is_empty() {
        return Ok(());
    }
    if !limits.has_index_selectors()
        && let Some(cuda) = cuda_devices()
        && limits.selectors_matching_none(&cuda).is_empty()
    {
        return Ok(());
    }
    let nvml = if crate::nvml::init() {
        crate::nvml::all_devices()
    } else {
        None
    };
    let Some(nvml) = nvml else {
        let sel = limits
            .per_device
            .iter()
            .map(|(s, _)| s)
            .find(|s| matches!(s, DeviceSelector::Index(_)))
            .or_else(|| limits.per_device.first().map(|(s, _)| s))
            .map(ToString::to_string)
            .unwrap_or_default();
        return Err(format!(
            "{} sets a limit for {sel}, and NVML (libnvidia-ml.so.1), which tells which GPUs are here, cannot be used",
            config.memory_source
        ));
    };
    let present: Vec<(Option<u32>, String)> = nvml.into_iter().map(|(i, u)| (Some(i), u)).collect();
    match limits.selectors_matching_none(&present).first() {
        None => Ok(()),
        Some(sel) => Err(format!(
            "{} sets a limit for {sel}, but there is no such GPU ({}); a limit for a GPU that is not here would leave the real ones unlimited",
            config.memory_source,
            describe(&present)
        )),
    }
}
