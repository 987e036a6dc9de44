//! Streams, events and stream capture. Work is never actually queued: stream order is
//! ignored, and every synchronisation point (`cuStreamSynchronize`, `cuEventSynchronize`,
//! `cuCtxSynchronize`) lets the memory pools release memory above their thresholds. A stream
//! in capture mode turns `cuMemAllocAsync` / `cuMemFreeAsync` / kernel launches into graph
//! nodes.

use std::cell::Cell;
use std::ffi::{c_int, c_uint};

use crate::driver::{Driver, Out, Stream, api, handle, key};
use crate::types::*;

impl Driver {
    /// The graph stream `sk` is capturing into (`sk` 0 is a default stream: never).
    pub fn capturing(&self, sk: u64) -> Option<u64> {
        if sk == 0 {
            None
        } else {
            self.streams.get(&sk)?.capture
        }
    }

    /// Before a call that stream capture prohibits (a query or a synchronisation): in
    /// any mode but relaxed, a thread may not make one while another thread captures in
    /// global mode, or while it captures itself; the call fails and the capture is
    /// invalidated, as the real driver does.
    pub fn check_capture_safe(&mut self) -> Result<(), CUresult> {
        if CAPTURE_MODE.get() == CU_STREAM_CAPTURE_MODE_RELAXED {
            return Ok(());
        }
        let me = thread_id();
        let mut prohibited = false;
        for st in self.streams.values_mut() {
            if st.capture.is_some()
                && (st.capture_mode == CU_STREAM_CAPTURE_MODE_GLOBAL
                    || (st.capture_thread == me
                        && st.capture_mode != CU_STREAM_CAPTURE_MODE_RELAXED))
            {
                st.capture_invalidated = true;
                prohibited = true;
            }
        }
        if prohibited {
            Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)
        } else {
            Ok(())
        }
    }

    fn create_stream(&mut self) -> Result<u64, CUresult> {
        let (ctx, dev) = self.current()?;
        let k = self.new_handle();
        self.streams.insert(
            k,
            Stream {
                ctx,
                dev,
                capture: None,
                capture_mode: CU_STREAM_CAPTURE_MODE_GLOBAL,
                capture_thread: 0,
                capture_invalidated: false,
            },
        );
        Ok(k)
    }

    fn destroy_stream(&mut self, s: Handle) -> Result<(), CUresult> {
        self.check_not_dead("stream", key(s));
        self.streams
            .remove(&key(s))
            .map(|_| ())
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    }

    fn sync_stream(&mut self, s: Handle) -> Result<(), CUresult> {
        let (sk, _, _) = self.stream(s)?;
        if self.capturing(sk).is_some() {
            return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
        }
        self.check_capture_safe()?;
        self.timing.wait_stream(Some(sk));
        self.synchronize();
        Ok(())
    }

    /// `cuStreamQuery`: not ready while work queued on the stream has not completed.
    fn query_stream(&mut self, s: Handle) -> Result<(), CUresult> {
        let (sk, _, _) = self.stream(s)?;
        if self.capturing(sk).is_some() {
            return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
        }
        self.check_capture_safe()?;
        if self.timing.stream_done(sk) {
            Ok(())
        } else {
            Err(CUDA_ERROR_NOT_READY)
        }
    }

    fn capture_status(&self, s: Handle) -> Result<c_int, CUresult> {
        let (sk, _, _) = self.stream(s)?;
        Ok(if self.capturing(sk).is_some() {
            CU_STREAM_CAPTURE_STATUS_ACTIVE
        } else {
            CU_STREAM_CAPTURE_STATUS_NONE
        })
    }

    fn begin_capture(&mut self, s: Handle, mode: c_int) -> Result<(), CUresult> {
        let (sk, _, _) = self.stream(s)?;
        if sk == 0 {
            return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
        }
        if self.capturing(sk).is_some() {
            return Err(CUDA_ERROR_ILLEGAL_STATE);
        }
        let g = self.new_graph();
        if let Some(st) = self.streams.get_mut(&sk) {
            st.capture = Some(g);
            st.capture_mode = mode;
            st.capture_thread = thread_id();
            st.capture_invalidated = false;
        }
        Ok(())
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamCreate(ph_stream: *mut Handle, _flags: c_uint) -> CUresult {
    api("cuStreamCreate", |d| {
        // SAFETY: `ph_stream` is null or writable by the API contract.
        let out = unsafe { Out::new(ph_stream) }?;
        out.set(handle(d.create_stream()?));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamCreateWithPriority(
    ph_stream: *mut Handle,
    _flags: c_uint,
    _priority: c_int,
) -> CUresult {
    api("cuStreamCreateWithPriority", |d| {
        // SAFETY: `ph_stream` is null or writable by the API contract.
        let out = unsafe { Out::new(ph_stream) }?;
        out.set(handle(d.create_stream()?));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamDestroy_v2(stream: Handle) -> CUresult {
    api("cuStreamDestroy_v2", |d| d.destroy_stream(stream))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamDestroy(stream: Handle) -> CUresult {
    api("cuStreamDestroy", |d| d.destroy_stream(stream))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamSynchronize(stream: Handle) -> CUresult {
    api("cuStreamSynchronize", |d| d.sync_stream(stream))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamSynchronize_ptsz(stream: Handle) -> CUresult {
    api("cuStreamSynchronize_ptsz", |d| d.sync_stream(stream))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamQuery(stream: Handle) -> CUresult {
    api("cuStreamQuery", |d| d.query_stream(stream))
}

fn is_capturing(symbol: &str, stream: Handle, status: *mut c_int) -> CUresult {
    api(symbol, |d| {
        // SAFETY: `status` is null or writable by the API contract.
        let out = unsafe { Out::new(status) }?;
        out.set(d.capture_status(stream)?);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamIsCapturing(stream: Handle, status: *mut c_int) -> CUresult {
    is_capturing("cuStreamIsCapturing", stream, status)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamIsCapturing_ptsz(stream: Handle, status: *mut c_int) -> CUresult {
    is_capturing("cuStreamIsCapturing_ptsz", stream, status)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamBeginCapture_v2(stream: Handle, mode: c_int) -> CUresult {
    api("cuStreamBeginCapture_v2", |d| d.begin_capture(stream, mode))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamBeginCapture(stream: Handle) -> CUresult {
    api("cuStreamBeginCapture", |d| {
        d.begin_capture(stream, CU_STREAM_CAPTURE_MODE_GLOBAL)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamEndCapture(stream: Handle, ph_graph: *mut Handle) -> CUresult {
    api("cuStreamEndCapture", |d| {
        // SAFETY: `ph_graph` is null or writable by the API contract.
        let out = unsafe { Out::new(ph_graph) }?;
        let (sk, _, _) = d.stream(stream)?;
        let g = d.capturing(sk).ok_or(CUDA_ERROR_ILLEGAL_STATE)?;
        let mut invalidated = false;
        if let Some(st) = d.streams.get_mut(&sk) {
            st.capture = None;
            invalidated = std::mem::take(&mut st.capture_invalidated);
        }
        if invalidated {
            return Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
        }
        out.set(handle(g));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventCreate(ph_event: *mut Handle, _flags: c_uint) -> CUresult {
    api("cuEventCreate", |d| {
        // SAFETY: `ph_event` is null or writable by the API contract.
        let out = unsafe { Out::new(ph_event) }?;
        let (ctx, _) = d.current()?;
        let k = d.new_handle();
        d.events.insert(k);
        d.event_ctx.insert(k, ctx);
        out.set(handle(k));
        Ok(())
    })
}

fn destroy_event(symbol: &str, event: Handle) -> CUresult {
    api(symbol, |d| {
        d.check_not_dead("event", key(event));
        d.event_ctx.remove(&key(event));
        if d.events.remove(&key(event)) {
            Ok(())
        } else {
            Err(CUDA_ERROR_INVALID_HANDLE)
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventDestroy_v2(event: Handle) -> CUresult {
    destroy_event("cuEventDestroy_v2", event)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventDestroy(event: Handle) -> CUresult {
    destroy_event("cuEventDestroy", event)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventRecord(event: Handle, stream: Handle) -> CUresult {
    api("cuEventRecord", |d| {
        d.check_not_dead("event", key(event));
        if !d.events.contains(&key(event)) {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        let (sk, _, _) = d.stream(stream)?;
        d.timing.record(key(event), sk);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventQuery(event: Handle) -> CUresult {
    api("cuEventQuery", |d| {
        d.check_not_dead("event", key(event));
        if !d.events.contains(&key(event)) {
            Err(CUDA_ERROR_INVALID_HANDLE)
        } else if let Err(e) = d.check_capture_safe() {
            Err(e)
        } else if d.timing.done(key(event)) {
            Ok(())
        } else {
            Err(CUDA_ERROR_NOT_READY)
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventSynchronize(event: Handle) -> CUresult {
    api("cuEventSynchronize", |d| {
        d.check_not_dead("event", key(event));
        if !d.events.contains(&key(event)) {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        d.check_capture_safe()?;
        d.timing.wait_event(key(event));
        d.synchronize();
        Ok(())
    })
}

thread_local! {
    /// This thread's stream-capture mode (`cuThreadExchangeStreamCaptureMode`).
    static CAPTURE_MODE: Cell<c_int> = const { Cell::new(CU_STREAM_CAPTURE_MODE_GLOBAL) };
}

/// The calling thread's id.
fn thread_id() -> u64 {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // A thread id is positive: the bits read the same unsigned.
    u64::from(tid.cast_unsigned())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuThreadExchangeStreamCaptureMode(mode: *mut c_int) -> CUresult {
    api("cuThreadExchangeStreamCaptureMode", |_| {
        if mode.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-null, readable and writable by the API contract.
        let wanted = unsafe { *mode };
        let old = CAPTURE_MODE.replace(wanted);
        // SAFETY: `mode` is non-null (checked above) and writable by the API contract.
        unsafe { *mode = old };
        Ok(())
    })
}
