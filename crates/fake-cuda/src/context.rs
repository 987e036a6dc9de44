//! Contexts: primary-context retain/release/reset, created contexts, the thread-local current
//! context stack, and `cuCtxSynchronize`. Every active context charges
//! `FAKE_CUDA_CONTEXT_BYTES` to the process; tearing one down frees what it owned.

use std::ffi::{c_int, c_uint, c_void};

use crate::driver::{
    AllocKind, Context, Driver, Out, api, current_key, handle, key, ordinal, with_stack,
};
use crate::types::*;

impl Driver {
    /// Activates a context: charges the context bytes.
    fn activate(&mut self, ctx: u64) -> Result<(), CUresult> {
        let dev = self
            .contexts
            .get(&ctx)
            .ok_or(CUDA_ERROR_INVALID_CONTEXT)?
            .dev;
        self.charge(dev, 0, self.settings.context_bytes)?;
        self.record_activity(dev);
        if let Some(c) = self.contexts.get_mut(&ctx) {
            c.active = true;
        }
        Ok(())
    }

    /// Frees everything `ctx` owns and returns its context bytes; a primary context also
    /// takes its device's pool and graph memory with it.
    pub fn teardown(&mut self, ctx: u64) {
        let Some(c) = self.contexts.get(&ctx) else {
            return;
        };
        if !c.active {
            return;
        }
        let (dev, primary) = (c.dev, c.primary);
        let doomed: Vec<u64> = self
            .allocs
            .iter()
            .filter(|(_, a)| {
                (a.ctx == ctx && a.kind == AllocKind::Direct)
                    || (primary && a.dev == dev && a.kind != AllocKind::Direct)
            })
            .map(|(&b, _)| b)
            .collect();
        for b in doomed {
            let _ = self.free_alloc(b);
        }
        let arrays: Vec<u64> = self
            .arrays
            .iter()
            .filter(|(_, a)| a.ctx == ctx)
            .map(|(&k, _)| k)
            .collect();
        for k in arrays {
            if let Some(a) = self.arrays.remove(&k) {
                self.uncharge(a.dev, a.charged, 0);
            }
        }
        let modules: Vec<u64> = self
            .modules
            .iter()
            .filter(|(_, m)| m.ctx == ctx)
            .map(|(&k, _)| k)
            .collect();
        for k in modules {
            self.unload_module(k);
        }
        let streams: Vec<u64> = self
            .streams
            .iter()
            .filter(|(_, s)| s.ctx == ctx)
            .map(|(&k, _)| k)
            .collect();
        let events: Vec<u64> = self
            .event_ctx
            .iter()
            .filter(|&(_, &c)| c == ctx)
            .map(|(&k, _)| k)
            .collect();
        for k in streams {
            self.streams.remove(&k);
            self.dead_handles.insert(k);
        }
        for k in events {
            self.events.remove(&k);
            self.event_ctx.remove(&k);
            self.dead_handles.insert(k);
        }
        if primary {
            let pools: Vec<u64> = self
                .pools
                .iter()
                .filter(|(_, p)| p.dev == dev)
                .map(|(&k, _)| k)
                .collect();
            for p in pools {
                self.pool_trim(p, 0);
            }
            self.graph_mem_trim(dev);
        }
        self.uncharge(dev, 0, self.settings.context_bytes);
        if let Some(c) = self.contexts.get_mut(&ctx) {
            c.active = false;
        }
    }

    fn create_context(&mut self, dev: CUdevice) -> Result<u64, CUresult> {
        let dev = self.device(dev)?;
        let ctx = self.new_handle();
        self.contexts.insert(
            ctx,
            Context {
                dev,
                primary: false,
                active: false,
            },
        );
        if let Err(e) = self.activate(ctx) {
            self.contexts.remove(&ctx);
            return Err(e);
        }
        with_stack(|s| s.push(ctx));
        Ok(ctx)
    }

    fn destroy_context(&mut self, ctx: u64) -> Result<(), CUresult> {
        match self.contexts.get(&ctx) {
            Some(c) if !c.primary => {}
            _ => return Err(CUDA_ERROR_INVALID_CONTEXT),
        }
        self.teardown(ctx);
        self.contexts.remove(&ctx);
        with_stack(|s| s.retain(|&c| c != ctx));
        Ok(())
    }

    fn primary_release(&mut self, dev: CUdevice) -> Result<(), CUresult> {
        let dev = self.device(dev)?;
        let p = &mut self.primaries[dev];
        if p.refs == 0 {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
        p.refs -= 1;
        if p.refs == 0 {
            let ctx = p.ctx;
            self.teardown(ctx);
        }
        Ok(())
    }

    fn primary_reset(&mut self, dev: CUdevice) -> Result<(), CUresult> {
        let dev = self.device(dev)?;
        let ctx = self.primaries[dev].ctx;
        self.teardown(ctx);
        self.primaries[dev].refs = 0;
        self.primaries[dev].flags = 0;
        Ok(())
    }

    fn known_context(&self, ctx: u64) -> Result<(), CUresult> {
        if self.contexts.contains_key(&ctx) {
            Ok(())
        } else {
            Err(CUDA_ERROR_INVALID_CONTEXT)
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(pctx: *mut Handle, dev: CUdevice) -> CUresult {
    api("cuDevicePrimaryCtxRetain", |d| {
        // SAFETY: `pctx` is null or writable by the API contract.
        let out = unsafe { Out::new(pctx) }?;
        let dev = d.device(dev)?;
        let ctx = d.primaries[dev].ctx;
        if d.primaries[dev].refs == 0 && !d.contexts.get(&ctx).is_some_and(|c| c.active) {
            d.activate(ctx)?;
        }
        d.primaries[dev].refs += 1;
        out.set(handle(ctx));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    api("cuDevicePrimaryCtxRelease_v2", |d| d.primary_release(dev))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease(dev: CUdevice) -> CUresult {
    api("cuDevicePrimaryCtxRelease", |d| d.primary_release(dev))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxReset_v2(dev: CUdevice) -> CUresult {
    api("cuDevicePrimaryCtxReset_v2", |d| d.primary_reset(dev))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxReset(dev: CUdevice) -> CUresult {
    api("cuDevicePrimaryCtxReset", |d| d.primary_reset(dev))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxGetState(
    dev: CUdevice,
    flags: *mut c_uint,
    active: *mut c_int,
) -> CUresult {
    api("cuDevicePrimaryCtxGetState", |d| {
        // SAFETY: both are null or writable by the API contract.
        let (f, a) = unsafe { (Out::new(flags)?, Out::new(active)?) };
        let dev = d.device(dev)?;
        let p = &d.primaries[dev];
        let is_active = d.contexts.get(&p.ctx).is_some_and(|c| c.active);
        f.set(p.flags);
        a.set(c_int::from(is_active));
        Ok(())
    })
}

fn set_flags(symbol: &str, dev: CUdevice, flags: c_uint) -> CUresult {
    api(symbol, |d| {
        let dev = d.device(dev)?;
        d.primaries[dev].flags = flags;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxSetFlags_v2(dev: CUdevice, flags: c_uint) -> CUresult {
    set_flags("cuDevicePrimaryCtxSetFlags_v2", dev, flags)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxSetFlags(dev: CUdevice, flags: c_uint) -> CUresult {
    set_flags("cuDevicePrimaryCtxSetFlags", dev, flags)
}

fn ctx_create(symbol: &str, pctx: *mut Handle, dev: CUdevice) -> CUresult {
    api(symbol, |d| {
        // SAFETY: `pctx` is null or writable by the API contract.
        let out = unsafe { Out::new(pctx) }?;
        out.set(handle(d.create_context(dev)?));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v2(
    pctx: *mut Handle,
    _flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    ctx_create("cuCtxCreate_v2", pctx, dev)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate(pctx: *mut Handle, _flags: c_uint, dev: CUdevice) -> CUresult {
    ctx_create("cuCtxCreate", pctx, dev)
}

/// `cuCtxCreate_v3(pctx, paramsArray, numParams, flags, dev)`: execution affinity ignored.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v3(
    pctx: *mut Handle,
    _params: *mut c_void,
    _num_params: c_int,
    _flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    ctx_create("cuCtxCreate_v3", pctx, dev)
}

/// `cuCtxCreate_v4(pctx, ctxCreateParams, flags, dev)`: the parameters are ignored.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v4(
    pctx: *mut Handle,
    _params: *mut c_void,
    _flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    ctx_create("cuCtxCreate_v4", pctx, dev)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxDestroy_v2(ctx: Handle) -> CUresult {
    api("cuCtxDestroy_v2", |d| d.destroy_context(key(ctx)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxDestroy(ctx: Handle) -> CUresult {
    api("cuCtxDestroy", |d| d.destroy_context(key(ctx)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSetCurrent(ctx: Handle) -> CUresult {
    api("cuCtxSetCurrent", |d| {
        let k = key(ctx);
        if k == 0 {
            with_stack(|s| s.pop());
            return Ok(());
        }
        d.known_context(k)?;
        with_stack(|s| {
            s.pop();
            s.push(k);
        });
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetCurrent(pctx: *mut Handle) -> CUresult {
    api("cuCtxGetCurrent", |_| {
        // SAFETY: `pctx` is null or writable by the API contract.
        let out = unsafe { Out::new(pctx) }?;
        out.set(handle(current_key().unwrap_or(0)));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetDevice(device: *mut CUdevice) -> CUresult {
    api("cuCtxGetDevice", |d| {
        // SAFETY: `device` is null or writable by the API contract.
        let out = unsafe { Out::new(device) }?;
        out.set(ordinal(d.current()?.1)?);
        Ok(())
    })
}

fn push(symbol: &str, ctx: Handle) -> CUresult {
    api(symbol, |d| {
        let k = key(ctx);
        d.known_context(k)?;
        with_stack(|s| s.push(k));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxPushCurrent_v2(ctx: Handle) -> CUresult {
    push("cuCtxPushCurrent_v2", ctx)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxPushCurrent(ctx: Handle) -> CUresult {
    push("cuCtxPushCurrent", ctx)
}

fn pop(symbol: &str, pctx: *mut Handle) -> CUresult {
    api(symbol, |_| {
        // SAFETY: `pctx` is null (not wanted) or writable by the API contract.
        let out = unsafe { Out::optional(pctx) };
        let top = with_stack(|s| s.pop())
            .flatten()
            .ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        if let Some(out) = out {
            out.set(handle(top));
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxPopCurrent_v2(pctx: *mut Handle) -> CUresult {
    pop("cuCtxPopCurrent_v2", pctx)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxPopCurrent(pctx: *mut Handle) -> CUresult {
    pop("cuCtxPopCurrent", pctx)
}

/// `cuCtxSynchronize_v2` (what `cuGetProcAddress("cuCtxSynchronize")` gives from
/// version 13000 on, as driver 580 does): a null context is the current one; another must exist (this
/// driver synchronises all of its work either way).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSynchronize_v2(ctx: Handle) -> CUresult {
    api("cuCtxSynchronize_v2", |d| {
        let k = key(ctx);
        if k == 0 {
            d.current()?;
        } else {
            d.known_context(k)?;
        }
        d.check_capture_safe()?;
        d.timing.wait_stream(None);
        d.synchronize();
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    api("cuCtxSynchronize", |d| {
        d.current()?;
        d.check_capture_safe()?;
        d.timing.wait_stream(None);
        d.synchronize();
        Ok(())
    })
}
