//! Initialisation, version and error-string entry points (the ones that work before
//! `cuInit`, except `cuInit` itself).

use std::ffi::{c_char, c_int, c_uint};

use crate::driver::{Out, injected};
use crate::types::*;

/// The CUDA version the fake driver reports.
pub const DRIVER_VERSION: c_int = 13000;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuInit(flags: c_uint) -> CUresult {
    if let Some(code) = injected("cuInit") {
        return code;
    }
    if flags != 0 {
        return CUDA_ERROR_INVALID_VALUE;
    }
    crate::driver::init()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDriverGetVersion(version: *mut c_int) -> CUresult {
    if let Some(code) = injected("cuDriverGetVersion") {
        return code;
    }
    // SAFETY: `version` is null or writable by the API contract.
    match unsafe { Out::new(version) } {
        Ok(out) => {
            out.set(DRIVER_VERSION);
            CUDA_SUCCESS
        }
        Err(e) => e,
    }
}

fn string_out(
    symbol: &str,
    code: CUresult,
    out: *mut *const c_char,
    lookup: fn(c_int) -> Option<&'static std::ffi::CStr>,
) -> CUresult {
    if let Some(c) = injected(symbol) {
        return c;
    }
    // SAFETY: `out` is null or writable by the API contract.
    let Ok(out) = (unsafe { Out::new(out) }) else {
        return CUDA_ERROR_INVALID_VALUE;
    };
    match lookup(code) {
        Some(s) => {
            out.set(s.as_ptr());
            CUDA_SUCCESS
        }
        None => {
            out.set(std::ptr::null());
            CUDA_ERROR_INVALID_VALUE
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetErrorString(error: CUresult, p_str: *mut *const c_char) -> CUresult {
    string_out("cuGetErrorString", error, p_str, crate::errors::description)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetErrorName(error: CUresult, p_str: *mut *const c_char) -> CUresult {
    string_out("cuGetErrorName", error, p_str, crate::errors::name)
}
