//! The gated launch and synchronisation hooks of compute slices: every kernel launch
//! goes through the gate of its context (`compute.rs`), and the synchronisations and the
//! destructions of streams and contexts close the meter's open groups first.
//!
//! Launch hooks are handed out only to processes whose slice has a compute limit
//! ([`is_launch_hook`]), so every other process launches straight into the driver.

// The hooks carry the driver's own symbol names, which are camelCase.
#![allow(non_snake_case)]

use std::ffi::{c_uint, c_void};

use crate::compute::{ContextCompute, Waited, kernel_kind};
use crate::ffi::*;
use crate::process::{Access, access, register_compute_exit_handler};
use crate::real::{call_driver, current_cuda_device};
use crate::slice::Slice;
use crate::table::id;

type EventFn = unsafe extern "C" fn(CUevent) -> CUresult;
type StreamFn = unsafe extern "C" fn(CUstream) -> CUresult;

/// Runs a launch of `kind` on `stream` through the slice's gate (see
/// `Compute::gated`); outside a slice, straight into the driver.
#[inline]
pub fn gated(
    stream: CUstream,
    per_thread: bool,
    kind: u64,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    let s = match access() {
        Access::PassThrough => return call(),
        Access::Refuse(code) => return code,
        Access::Slice(s) => s,
    };
    s.compute
        .gated(stream, per_thread, kind, |ctx| context_gate(s, ctx), call)
}

/// The gate of context `ctx` (current in this thread), made at its first launch; `None`
/// when the slice does not limit its device.
fn context_gate(s: &'static Slice, ctx: usize) -> Option<ContextCompute> {
    let dev = current_cuda_device().ok()?;
    let slot = s.device_entry(dev).ok().flatten()?;
    let gate = s.compute.context_gate(&s.ledger, dev, slot, ctx)?;
    register_compute_exit_handler();
    Some(gate)
}

type LaunchKernelFn = unsafe extern "C" fn(
    *mut c_void,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    CUstream,
    *mut *mut c_void,
    *mut *mut c_void,
) -> CUresult;
type LaunchCoopFn = unsafe extern "C" fn(
    *mut c_void,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    CUstream,
    *mut *mut c_void,
) -> CUresult;
type LaunchExFn = unsafe extern "C" fn(
    *const LaunchConfigHead,
    *mut c_void,
    *mut *mut c_void,
    *mut *mut c_void,
) -> CUresult;

/// The head of `CUlaunchConfig`: grid and block dimensions, shared memory, then the
/// stream (the attributes that follow are not read).
#[repr(C)]
pub struct LaunchConfigHead {
    dims: [c_uint; 6],
    shared_mem_bytes: c_uint,
    stream: CUstream,
}

macro_rules! launch_kernel_hook {
    ($name:ident, $id:expr, $per_thread:expr) => {
        /// Gated kernel launch.
        #[unsafe(no_mangle)]
        pub extern "C" fn $name(
            f: *mut c_void,
            gx: c_uint,
            gy: c_uint,
            gz: c_uint,
            bx: c_uint,
            by: c_uint,
            bz: c_uint,
            shared: c_uint,
            stream: CUstream,
            params: *mut *mut c_void,
            extra: *mut *mut c_void,
        ) -> CUresult {
            let kind = kernel_kind(f, [gx, gy, gz], [bx, by, bz]);
            gated(stream, $per_thread, kind, || {
                call_driver!(
                    $id,
                    LaunchKernelFn,
                    f,
                    gx,
                    gy,
                    gz,
                    bx,
                    by,
                    bz,
                    shared,
                    stream,
                    params,
                    extra
                )
            })
        }
    };
}

launch_kernel_hook!(cuLaunchKernel, id::cuLaunchKernel, false);
launch_kernel_hook!(cuLaunchKernel_ptsz, id::cuLaunchKernel_ptsz, true);

macro_rules! launch_coop_hook {
    ($name:ident, $id:expr, $per_thread:expr) => {
        /// Gated cooperative kernel launch.
        #[unsafe(no_mangle)]
        pub extern "C" fn $name(
            f: *mut c_void,
            gx: c_uint,
            gy: c_uint,
            gz: c_uint,
            bx: c_uint,
            by: c_uint,
            bz: c_uint,
            shared: c_uint,
            stream: CUstream,
            params: *mut *mut c_void,
        ) -> CUresult {
            let kind = kernel_kind(f, [gx, gy, gz], [bx, by, bz]);
            gated(stream, $per_thread, kind, || {
                call_driver!(
                    $id,
                    LaunchCoopFn,
                    f,
                    gx,
                    gy,
                    gz,
                    bx,
                    by,
                    bz,
                    shared,
                    stream,
                    params
                )
            })
        }
    };
}

launch_coop_hook!(
    cuLaunchCooperativeKernel,
    id::cuLaunchCooperativeKernel,
    false
);
launch_coop_hook!(
    cuLaunchCooperativeKernel_ptsz,
    id::cuLaunchCooperativeKernel_ptsz,
    true
);

macro_rules! launch_ex_hook {
    ($name:ident, $id:expr, $per_thread:expr) => {
        /// Gated extensible kernel launch (the stream is in the launch configuration).
        ///
        /// # Safety
        /// Driver contract: `config` points to a valid `CUlaunchConfig`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            config: *const LaunchConfigHead,
            f: *mut c_void,
            params: *mut *mut c_void,
            extra: *mut *mut c_void,
        ) -> CUresult {
            let call = || call_driver!($id, LaunchExFn, config, f, params, extra);
            if config.is_null() {
                return call();
            }
            // SAFETY: the caller's valid launch configuration.
            let (stream, dims) = unsafe { ((*config).stream, (*config).dims) };
            let kind = kernel_kind(f, [dims[0], dims[1], dims[2]], [dims[3], dims[4], dims[5]]);
            gated(stream, $per_thread, kind, call)
        }
    };
}

launch_ex_hook!(cuLaunchKernelEx, id::cuLaunchKernelEx, false);
launch_ex_hook!(cuLaunchKernelEx_ptsz, id::cuLaunchKernelEx_ptsz, true);

/// A synchronisation waiting for `waited`: the current context's open groups are closed
/// before it ([`Compute::before_wait`]), and after it succeeded what it waited for is
/// known to be done ([`Compute::after_wait`]).
fn synchronised(waited: Waited, wait: impl FnOnce() -> CUresult) -> CUresult {
    let Access::Slice(s) = access() else {
        return wait();
    };
    s.compute.before_wait(waited);
    let r = wait();
    if r == CUDA_SUCCESS {
        s.compute.after_wait(waited);
    }
    r
}

type VoidFn = unsafe extern "C" fn() -> CUresult;

/// `cuStreamDestroy` (the first version, same arguments).
#[unsafe(no_mangle)]
pub extern "C" fn cuStreamDestroy(stream: CUstream) -> CUresult {
    if let Access::Slice(s) = access() {
        s.compute.before_stream_destroy(stream);
    }
    call_driver!(id::cuStreamDestroy, StreamFn, stream)
}

/// `cuStreamDestroy_v2`: the stream's open group is closed while the stream exists.
#[unsafe(no_mangle)]
pub extern "C" fn cuStreamDestroy_v2(stream: CUstream) -> CUresult {
    if let Access::Slice(s) = access() {
        s.compute.before_stream_destroy(stream);
    }
    call_driver!(id::cuStreamDestroy_v2, StreamFn, stream)
}

/// `cuStreamSynchronize`: open groups are closed first.
#[unsafe(no_mangle)]
pub extern "C" fn cuStreamSynchronize(stream: CUstream) -> CUresult {
    let waited = Waited::Stream {
        handle: stream,
        per_thread: false,
    };
    synchronised(waited, || {
        call_driver!(id::cuStreamSynchronize, StreamFn, stream)
    })
}

/// `cuStreamSynchronize_ptsz`.
#[unsafe(no_mangle)]
pub extern "C" fn cuStreamSynchronize_ptsz(stream: CUstream) -> CUresult {
    let waited = Waited::Stream {
        handle: stream,
        per_thread: true,
    };
    synchronised(waited, || {
        call_driver!(id::cuStreamSynchronize_ptsz, StreamFn, stream)
    })
}

/// `cuCtxSynchronize`.
#[unsafe(no_mangle)]
pub extern "C" fn cuCtxSynchronize() -> CUresult {
    synchronised(Waited::Context(std::ptr::null_mut()), || {
        call_driver!(id::cuCtxSynchronize, VoidFn,)
    })
}

type CtxFn = unsafe extern "C" fn(CUcontext) -> CUresult;

/// `cuCtxSynchronize_v2` (what `cuGetProcAddress("cuCtxSynchronize")` gives at version
/// 13000, so what the CUDA 13 runtime's `cudaDeviceSynchronize` calls): the open groups
/// of `ctx` (the current context when null) are closed first.
#[unsafe(no_mangle)]
pub extern "C" fn cuCtxSynchronize_v2(ctx: CUcontext) -> CUresult {
    synchronised(Waited::Context(ctx), || {
        call_driver!(id::cuCtxSynchronize_v2, CtxFn, ctx)
    })
}

/// `cuEventSynchronize`.
#[unsafe(no_mangle)]
pub extern "C" fn cuEventSynchronize(event: CUevent) -> CUresult {
    synchronised(Waited::Event, || {
        call_driver!(id::cuEventSynchronize, EventFn, event)
    })
}

/// `cuCtxDestroy_v2`: the context's queued work is charged while the context exists.
#[unsafe(no_mangle)]
pub extern "C" fn cuCtxDestroy_v2(ctx: CUcontext) -> CUresult {
    if let Access::Slice(s) = access() {
        s.compute.before_context_destroy(ctx);
    }
    call_driver!(id::cuCtxDestroy_v2, CtxFn, ctx)
}

/// `cuCtxDestroy` (the name before CUDA 4, same arguments).
#[unsafe(no_mangle)]
pub extern "C" fn cuCtxDestroy(ctx: CUcontext) -> CUresult {
    if let Access::Slice(s) = access() {
        s.compute.before_context_destroy(ctx);
    }
    call_driver!(id::cuCtxDestroy, CtxFn, ctx)
}

/// Whether a table entry is a hook handed out only to compute-limited slices: the
/// launches, the synchronisations that close open groups, and the destructions of
/// streams and contexts that close them out.
pub fn is_launch_hook(entry: usize) -> bool {
    [
        id::cuLaunchKernel,
        id::cuLaunchKernel_ptsz,
        id::cuLaunchKernelEx,
        id::cuLaunchKernelEx_ptsz,
        id::cuLaunchCooperativeKernel,
        id::cuLaunchCooperativeKernel_ptsz,
        id::cuStreamSynchronize,
        id::cuStreamSynchronize_ptsz,
        id::cuCtxSynchronize,
        id::cuCtxSynchronize_v2,
        id::cuEventSynchronize,
        id::cuStreamDestroy,
        id::cuStreamDestroy_v2,
        id::cuCtxDestroy,
        id::cuCtxDestroy_v2,
    ]
    .contains(&entry)
}
