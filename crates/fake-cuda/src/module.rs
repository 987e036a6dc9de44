//! Modules and kernels: loading a module charges `FAKE_CUDA_MODULE_BYTES` of context memory,
//! `cuModuleGetFunction` hands out a dummy function for any name, and the launch calls are
//! validated no-ops (recorded as kernel nodes while a stream is capturing).

use std::ffi::{CStr, c_char, c_uint, c_void};

use crate::driver::{Driver, Module, Out, api, handle, key, read_in};
use crate::types::*;

impl Driver {
    fn load_module(&mut self) -> Result<u64, CUresult> {
        let (ctx, dev) = self.current()?;
        let bytes = self.settings.module_bytes;
        self.charge(dev, 0, bytes)?;
        let k = self.new_handle();
        self.modules.insert(
            k,
            Module {
                ctx,
                dev,
                charged: bytes,
            },
        );
        Ok(k)
    }

    /// Unloads a module and forgets its functions.
    pub fn unload_module(&mut self, k: u64) -> bool {
        let Some(m) = self.modules.remove(&k) else {
            return false;
        };
        self.uncharge(m.dev, 0, m.charged);
        self.functions.retain(|_, (module, _)| *module != k);
        true
    }

    fn launch(&mut self, f: Handle, stream: Handle) -> Result<(), CUresult> {
        if !self.functions.contains_key(&key(f)) {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        let (sk, _, _) = self.stream(stream)?;
        if let Some(g) = self.capturing(sk) {
            self.add_kernel_node(g);
        } else {
            self.time_kernels(sk, 1);
        }
        Ok(())
    }
}

fn load(symbol: &str, module: *mut Handle, image: *const c_void) -> CUresult {
    api(symbol, |d| {
        // SAFETY: `module` is null or writable by the API contract.
        let out = unsafe { Out::new(module) }?;
        if image.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        out.set(handle(d.load_module()?));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadData(module: *mut Handle, image: *const c_void) -> CUresult {
    load("cuModuleLoadData", module, image)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadDataEx(
    module: *mut Handle,
    image: *const c_void,
    _num_options: c_uint,
    _options: *mut c_void,
    _option_values: *mut *mut c_void,
) -> CUresult {
    load("cuModuleLoadDataEx", module, image)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadFatBinary(
    module: *mut Handle,
    fat_cubin: *const c_void,
) -> CUresult {
    load("cuModuleLoadFatBinary", module, fat_cubin)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoad(module: *mut Handle, fname: *const c_char) -> CUresult {
    api("cuModuleLoad", |d| {
        // SAFETY: `module` is null or writable by the API contract.
        let out = unsafe { Out::new(module) }?;
        if fname.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-null and NUL-terminated by the API contract.
        let path = unsafe { CStr::from_ptr(fname) }
            .to_string_lossy()
            .into_owned();
        if !std::path::Path::new(&path).is_file() {
            return Err(CUDA_ERROR_FILE_NOT_FOUND);
        }
        out.set(handle(d.load_module()?));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleUnload(module: Handle) -> CUresult {
    api("cuModuleUnload", |d| {
        if d.unload_module(key(module)) {
            Ok(())
        } else {
            Err(CUDA_ERROR_INVALID_HANDLE)
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleGetFunction(
    hfunc: *mut Handle,
    module: Handle,
    name: *const c_char,
) -> CUresult {
    api("cuModuleGetFunction", |d| {
        // SAFETY: `hfunc` is null or writable by the API contract.
        let out = unsafe { Out::new(hfunc) }?;
        let m = key(module);
        if !d.modules.contains_key(&m) {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        if name.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-null and NUL-terminated by the API contract.
        let name = unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned();
        let existing = d
            .functions
            .iter()
            .find(|(_, (mm, n))| *mm == m && *n == name)
            .map(|(&f, _)| f);
        let f = match existing {
            Some(f) => f,
            None => {
                let f = d.new_handle();
                d.functions.insert(f, (m, name));
                f
            }
        };
        out.set(handle(f));
        Ok(())
    })
}

#[allow(clippy::too_many_arguments)]
fn launch_kernel(
    symbol: &str,
    f: Handle,
    grid: [c_uint; 3],
    block: [c_uint; 3],
    stream: Handle,
) -> CUresult {
    api(symbol, |d| {
        if grid.contains(&0) || block.contains(&0) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        d.launch(f, stream)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchKernel(
    f: Handle,
    grid_x: c_uint,
    grid_y: c_uint,
    grid_z: c_uint,
    block_x: c_uint,
    block_y: c_uint,
    block_z: c_uint,
    _shared_mem_bytes: c_uint,
    stream: Handle,
    _kernel_params: *mut *mut c_void,
    _extra: *mut *mut c_void,
) -> CUresult {
    launch_kernel(
        "cuLaunchKernel",
        f,
        [grid_x, grid_y, grid_z],
        [block_x, block_y, block_z],
        stream,
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchKernel_ptsz(
    f: Handle,
    grid_x: c_uint,
    grid_y: c_uint,
    grid_z: c_uint,
    block_x: c_uint,
    block_y: c_uint,
    block_z: c_uint,
    _shared_mem_bytes: c_uint,
    stream: Handle,
    _kernel_params: *mut *mut c_void,
    _extra: *mut *mut c_void,
) -> CUresult {
    launch_kernel(
        "cuLaunchKernel_ptsz",
        f,
        [grid_x, grid_y, grid_z],
        [block_x, block_y, block_z],
        stream,
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchCooperativeKernel(
    f: Handle,
    grid_x: c_uint,
    grid_y: c_uint,
    grid_z: c_uint,
    block_x: c_uint,
    block_y: c_uint,
    block_z: c_uint,
    _shared_mem_bytes: c_uint,
    stream: Handle,
    _kernel_params: *mut *mut c_void,
) -> CUresult {
    launch_kernel(
        "cuLaunchCooperativeKernel",
        f,
        [grid_x, grid_y, grid_z],
        [block_x, block_y, block_z],
        stream,
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchCooperativeKernel_ptsz(
    f: Handle,
    grid_x: c_uint,
    grid_y: c_uint,
    grid_z: c_uint,
    block_x: c_uint,
    block_y: c_uint,
    block_z: c_uint,
    _shared_mem_bytes: c_uint,
    stream: Handle,
    _kernel_params: *mut *mut c_void,
) -> CUresult {
    launch_kernel(
        "cuLaunchCooperativeKernel_ptsz",
        f,
        [grid_x, grid_y, grid_z],
        [block_x, block_y, block_z],
        stream,
    )
}

fn launch_ex(symbol: &str, config: *const CUlaunchConfig, f: Handle) -> CUresult {
    if config.is_null() {
        return api(symbol, |_| Err(CUDA_ERROR_INVALID_VALUE));
    }
    // SAFETY: non-null and pointing to a CUlaunchConfig by the API contract.
    let cfg = match unsafe { read_in(config) } {
        Ok(c) => c,
        Err(e) => return e,
    };
    launch_kernel(symbol, f, cfg.grid_dim, cfg.block_dim, cfg.h_stream)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchKernelEx(
    config: *const CUlaunchConfig,
    f: Handle,
    _kernel_params: *mut *mut c_void,
    _extra: *mut *mut c_void,
) -> CUresult {
    launch_ex("cuLaunchKernelEx", config, f)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchKernelEx_ptsz(
    config: *const CUlaunchConfig,
    f: Handle,
    _kernel_params: *mut *mut c_void,
    _extra: *mut *mut c_void,
) -> CUresult {
    launch_ex("cuLaunchKernelEx_ptsz", config, f)
}
