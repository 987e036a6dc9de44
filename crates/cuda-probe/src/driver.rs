//! The driver API as the probe reaches it: `dlopen("libcuda.so.1")`, `dlsym` of
//! `cuGetProcAddress_v2` on that handle, then every entry point by base name, CUDA
//! version and stream flag, like the CUDA runtime.

use std::ffi::{CStr, CString, c_int, c_uint, c_void};
use std::ptr::null_mut;

use gpuslice_cuda_abi::cuda::{
    CU_AD_FORMAT_FLOAT, CU_MEM_ALLOCATION_TYPE_PINNED, CU_MEM_LOCATION_TYPE_DEVICE,
    CUmemAllocationProp, CUmemLocation, CUmemPoolProps, CuGetProcAddressFn, CudaArray3dDescriptor,
    CudaArrayDescriptor, CudaMemAllocNodeParams,
};

/// The loaded driver.
pub struct Driver {
    handle: *mut c_void,
    get_proc: CuGetProcAddressFn,
    version: c_int,
    flags: u64,
}

/// Calls entry point `$name` (a base name) with signature `$ty`.
macro_rules! cu {
    ($self:expr, $name:expr, $ty:ty, $($arg:expr),*) => {{
        let p = $self.entry($name);
        if p.is_null() {
            500
        } else {
            // SAFETY: the driver returned this entry point for this base name and
            // version; `$ty` is its documented C signature.
            let f = unsafe { std::mem::transmute::<*mut c_void, $ty>(p) };
            // SAFETY: the arguments follow the driver's contract.
            unsafe { f($($arg),*) }
        }
    }};
}

impl Driver {
    /// Loads the driver like the runtime does.
    pub fn load() -> Self {
        // SAFETY: dlopen/dlsym with valid strings.
        let handle =
            unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!handle.is_null(), "dlopen(libcuda.so.1) failed");
        // SAFETY: `handle` is the non-null dlopen handle just checked, and the name is a
        // NUL-terminated literal.
        let p = unsafe { libc::dlsym(handle, c"cuGetProcAddress_v2".as_ptr()) };
        assert!(!p.is_null(), "libcuda.so.1 has no cuGetProcAddress_v2");
        let version = std::env::var("PROBE_CUDA_VERSION")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(13000);
        let flags = if std::env::var("PROBE_PER_THREAD").as_deref() == Ok("1") {
            2
        } else {
            0
        };
        Self {
            handle,
            // SAFETY: cuGetProcAddress_v2's signature.
            get_proc: unsafe { std::mem::transmute::<*mut c_void, CuGetProcAddressFn>(p) },
            version,
            flags,
        }
    }

    /// A symbol of the loaded driver library (not an entry point: the fake's extras).
    pub fn symbol(&self, name: &CStr) -> *mut c_void {
        // SAFETY: dlsym on our own handle with a valid name.
        unsafe { libc::dlsym(self.handle, name.as_ptr()) }
    }

    /// Calls an entry point that takes two pointer-sized arguments.
    pub fn call2(&self, name: &str, a: *mut c_void, b: *mut c_void) -> c_int {
        cu!(
            self,
            name,
            unsafe extern "C" fn(*mut c_void, *mut c_void) -> c_int,
            a,
            b
        )
    }

    /// Calls an entry point that takes three pointer-sized arguments.
    pub fn call3(&self, name: &str, a: *mut c_void, b: *mut c_void, c: *mut c_void) -> c_int {
        cu!(
            self,
            name,
            unsafe extern "C" fn(*mut c_void, *mut c_void, *mut c_void) -> c_int,
            a,
            b,
            c
        )
    }

    /// Calls an entry point that takes four pointer-sized arguments.
    pub fn call4(
        &self,
        name: &str,
        a: *mut c_void,
        b: *mut c_void,
        c: *mut c_void,
        d: *mut c_void,
    ) -> c_int {
        cu!(
            self,
            name,
            unsafe extern "C" fn(*mut c_void, *mut c_void, *mut c_void, *mut c_void) -> c_int,
            a,
            b,
            c,
            d
        )
    }

    /// Calls an entry point that takes five pointer-sized arguments.
    pub fn call5(
        &self,
        name: &str,
        a: *mut c_void,
        b: *mut c_void,
        c: *mut c_void,
        d: *mut c_void,
        e: *mut c_void,
    ) -> c_int {
        cu!(
            self,
            name,
            unsafe extern "C" fn(
                *mut c_void,
                *mut c_void,
                *mut c_void,
                *mut c_void,
                *mut c_void,
            ) -> c_int,
            a,
            b,
            c,
            d,
            e
        )
    }

    /// The entry point for a base name.
    pub fn entry(&self, name: &str) -> *mut c_void {
        let c = CString::new(name).expect("name");
        let mut p = null_mut();
        let mut status = 0;
        // SAFETY: valid out pointers.
        let rc =
            unsafe { (self.get_proc)(c.as_ptr(), &mut p, self.version, self.flags, &mut status) };
        if rc != 0 { null_mut() } else { p }
    }

    /// Which shared object serves the entry point `name`.
    pub fn resolve_library(&self, name: &str) -> String {
        let p = self.entry(name);
        if p.is_null() {
            return "none".into();
        }
        // SAFETY: a plain C struct, zero is valid.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        // SAFETY: dladdr on a code address.
        if unsafe { libc::dladdr(p, &mut info) } == 0 || info.dli_fname.is_null() {
            return "unknown".into();
        }
        // SAFETY: dladdr returns a NUL-terminated path.
        let path = unsafe { CStr::from_ptr(info.dli_fname) }
            .to_string_lossy()
            .into_owned();
        let file = path.rsplit('/').next().unwrap_or(&path).to_string();
        let symbol = if info.dli_sname.is_null() {
            "?".to_string()
        } else {
            // SAFETY: dladdr filled `dli_sname` with a NUL-terminated name (checked
            // non-null above) that lives as long as the loaded library.
            unsafe { CStr::from_ptr(info.dli_sname) }
                .to_string_lossy()
                .into_owned()
        };
        format!("{file} symbol={symbol}")
    }

    pub fn init(&self) -> c_int {
        cu!(self, "cuInit", unsafe extern "C" fn(c_uint) -> c_int, 0)
    }

    pub fn primary_ctx(&self, ordinal: c_int) -> c_int {
        let mut dev = 0;
        let rc = cu!(
            self,
            "cuDeviceGet",
            unsafe extern "C" fn(*mut c_int, c_int) -> c_int,
            &mut dev,
            ordinal
        );
        if rc != 0 {
            return rc;
        }
        let mut ctx = null_mut();
        let rc = cu!(
            self,
            "cuDevicePrimaryCtxRetain",
            unsafe extern "C" fn(*mut *mut c_void, c_int) -> c_int,
            &mut ctx,
            dev
        );
        if rc != 0 {
            return rc;
        }
        cu!(
            self,
            "cuCtxSetCurrent",
            unsafe extern "C" fn(*mut c_void) -> c_int,
            ctx
        )
    }

    /// Creates a context on device 0 with the driver function `symbol` (a `cuCtxCreate`
    /// variant), found with `dlsym` on the driver's handle.
    pub fn ctx_create(&self, symbol: &str) -> c_int {
        let name = CString::new(symbol).expect("symbol");
        let p = self.symbol(&name);
        if p.is_null() {
            return 500;
        }
        let mut ctx: *mut c_void = null_mut();
        match symbol {
            "cuCtxCreate" | "cuCtxCreate_v2" => {
                type F = unsafe extern "C" fn(*mut *mut c_void, c_uint, c_int) -> c_int;
                // SAFETY: the driver's cuCtxCreate/_v2 has this signature.
                let f = unsafe { std::mem::transmute::<*mut c_void, F>(p) };
                // SAFETY: a valid out pointer, flags 0, device 0.
                unsafe { f(&mut ctx, 0, 0) }
            }
            "cuCtxCreate_v3" => {
                type F = unsafe extern "C" fn(
                    *mut *mut c_void,
                    *mut c_void,
                    c_int,
                    c_uint,
                    c_int,
                ) -> c_int;
                // SAFETY: the driver's cuCtxCreate_v3 has this signature.
                let f = unsafe { std::mem::transmute::<*mut c_void, F>(p) };
                // SAFETY: a valid out pointer and no affinity parameters.
                unsafe { f(&mut ctx, null_mut(), 0, 0, 0) }
            }
            "cuCtxCreate_v4" => {
                type F =
                    unsafe extern "C" fn(*mut *mut c_void, *mut c_void, c_uint, c_int) -> c_int;
                // SAFETY: the driver's cuCtxCreate_v4 has this signature.
                let f = unsafe { std::mem::transmute::<*mut c_void, F>(p) };
                // SAFETY: a valid out pointer and no creation parameters.
                unsafe { f(&mut ctx, null_mut(), 0, 0) }
            }
            other => panic!("ctxcreate: {other} is not a cuCtxCreate variant"),
        }
    }

    /// Releases (or, with `reset`, resets) the primary context of device `ordinal`.
    pub fn primary_release(&self, ordinal: c_int, reset: bool) -> c_int {
        let mut dev = 0;
        let rc = cu!(
            self,
            "cuDeviceGet",
            unsafe extern "C" fn(*mut c_int, c_int) -> c_int,
            &mut dev,
            ordinal
        );
        if rc != 0 {
            return rc;
        }
        if reset {
            cu!(
                self,
                "cuDevicePrimaryCtxReset",
                unsafe extern "C" fn(c_int) -> c_int,
                dev
            )
        } else {
            cu!(
                self,
                "cuDevicePrimaryCtxRelease",
                unsafe extern "C" fn(c_int) -> c_int,
                dev
            )
        }
    }

    /// `cuCtxCreate` on device `ordinal`: a context of the process's own, made current.
    pub fn own_ctx_create(&self, ordinal: c_int) -> (c_int, *mut c_void) {
        let mut ctx = null_mut();
        let rc = cu!(
            self,
            "cuCtxCreate",
            unsafe extern "C" fn(*mut *mut c_void, c_uint, c_int) -> c_int,
            &mut ctx,
            0,
            ordinal
        );
        (rc, ctx)
    }

    /// `cuCtxDestroy`.
    pub fn ctx_destroy(&self, ctx: *mut c_void) -> c_int {
        cu!(
            self,
            "cuCtxDestroy",
            unsafe extern "C" fn(*mut c_void) -> c_int,
            ctx
        )
    }

    pub fn mem_alloc(&self, size: u64) -> (c_int, u64) {
        let mut p = 0u64;
        let rc = cu!(
            self,
            "cuMemAlloc",
            unsafe extern "C" fn(*mut u64, usize) -> c_int,
            &mut p,
            size_t(size)
        );
        (rc, p)
    }

    pub fn direct_mem_alloc(&self, size: u64) -> (c_int, u64) {
        // SAFETY: dlsym with RTLD_DEFAULT, as a program linked against libcuda binds.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"cuMemAlloc_v2".as_ptr()) };
        if p.is_null() {
            return (500, 0);
        }
        // SAFETY: cuMemAlloc_v2's signature.
        let f = unsafe {
            std::mem::transmute::<*mut c_void, unsafe extern "C" fn(*mut u64, usize) -> c_int>(p)
        };
        let mut ptr = 0u64;
        // SAFETY: valid out pointer.
        let rc = unsafe { f(&mut ptr, size_t(size)) };
        (rc, ptr)
    }

    pub fn mem_alloc_managed(&self, size: u64) -> (c_int, u64) {
        let mut p = 0u64;
        let rc = cu!(
            self,
            "cuMemAllocManaged",
            unsafe extern "C" fn(*mut u64, usize, c_uint) -> c_int,
            &mut p,
            size_t(size),
            1
        );
        (rc, p)
    }

    pub fn mem_alloc_pitch(&self, width: usize, height: usize) -> (c_int, u64, usize) {
        let mut p = 0u64;
        let mut pitch = 0usize;
        let rc = cu!(
            self,
            "cuMemAllocPitch",
            unsafe extern "C" fn(*mut u64, *mut usize, usize, usize, c_uint) -> c_int,
            &mut p,
            &mut pitch,
            width,
            height,
            4
        );
        (rc, p, pitch)
    }

    pub fn mem_free(&self, p: u64) -> c_int {
        cu!(self, "cuMemFree", unsafe extern "C" fn(u64) -> c_int, p)
    }

    pub fn mem_get_info(&self) -> (c_int, usize, usize) {
        let (mut free, mut total) = (0usize, 0usize);
        let rc = cu!(
            self,
            "cuMemGetInfo",
            unsafe extern "C" fn(*mut usize, *mut usize) -> c_int,
            &mut free,
            &mut total
        );
        (rc, free, total)
    }

    pub fn device_total_mem(&self, dev: c_int) -> (c_int, usize) {
        let mut total = 0usize;
        let rc = cu!(
            self,
            "cuDeviceTotalMem",
            unsafe extern "C" fn(*mut usize, c_int) -> c_int,
            &mut total,
            dev
        );
        (rc, total)
    }

    pub fn stream_create(&self) -> *mut c_void {
        let mut s = null_mut();
        cu!(
            self,
            "cuStreamCreate",
            unsafe extern "C" fn(*mut *mut c_void, c_uint) -> c_int,
            &mut s,
            0
        );
        s
    }

    pub fn stream_destroy(&self, s: *mut c_void) -> c_int {
        cu!(
            self,
            "cuStreamDestroy",
            unsafe extern "C" fn(*mut c_void) -> c_int,
            s
        )
    }

    /// `cuCtxSynchronize` of the current context, as the runtime calls it at the
    /// probe's CUDA version: from 13.0 on the driver hands out `cuCtxSynchronize_v2`,
    /// which takes the context (null: the current one).
    pub fn ctx_sync(&self) -> c_int {
        if self.version >= 13000 {
            cu!(
                self,
                "cuCtxSynchronize",
                unsafe extern "C" fn(*mut c_void) -> c_int,
                null_mut()
            )
        } else {
            cu!(self, "cuCtxSynchronize", unsafe extern "C" fn() -> c_int,)
        }
    }

    pub fn stream_sync(&self, s: *mut c_void) -> c_int {
        cu!(
            self,
            "cuStreamSynchronize",
            unsafe extern "C" fn(*mut c_void) -> c_int,
            s
        )
    }

    pub fn pool_create(&self, dev: c_int) -> *mut c_void {
        let props = CUmemPoolProps {
            alloc_type: CU_MEM_ALLOCATION_TYPE_PINNED,
            handle_types: 0,
            location: CUmemLocation {
                type_: CU_MEM_LOCATION_TYPE_DEVICE,
                id: dev,
            },
            win32_security_attributes: null_mut(),
            max_size: 0,
            usage: 0,
            reserved: [0; 54],
        };
        let mut pool = null_mut();
        cu!(
            self,
            "cuMemPoolCreate",
            unsafe extern "C" fn(*mut *mut c_void, *const CUmemPoolProps) -> c_int,
            &mut pool,
            &props
        );
        pool
    }

    pub fn device_mem_pool(&self, dev: c_int) -> *mut c_void {
        let mut pool = null_mut();
        cu!(
            self,
            "cuDeviceGetMemPool",
            unsafe extern "C" fn(*mut *mut c_void, c_int) -> c_int,
            &mut pool,
            dev
        );
        pool
    }

    pub fn pool_trim(&self, pool: *mut c_void, keep: usize) -> c_int {
        cu!(
            self,
            "cuMemPoolTrimTo",
            unsafe extern "C" fn(*mut c_void, usize) -> c_int,
            pool,
            keep
        )
    }

    pub fn mem_alloc_async(
        &self,
        size: u64,
        pool: Option<*mut c_void>,
        stream: *mut c_void,
    ) -> (c_int, u64) {
        let mut p = 0u64;
        let rc = match pool {
            None => cu!(
                self,
                "cuMemAllocAsync",
                unsafe extern "C" fn(*mut u64, usize, *mut c_void) -> c_int,
                &mut p,
                size_t(size),
                stream
            ),
            Some(pool) => cu!(
                self,
                "cuMemAllocFromPoolAsync",
                unsafe extern "C" fn(*mut u64, usize, *mut c_void, *mut c_void) -> c_int,
                &mut p,
                size_t(size),
                pool,
                stream
            ),
        };
        (rc, p)
    }

    pub fn mem_free_async(&self, p: u64, stream: *mut c_void) -> c_int {
        cu!(
            self,
            "cuMemFreeAsync",
            unsafe extern "C" fn(u64, *mut c_void) -> c_int,
            p,
            stream
        )
    }

    fn alloc_prop(dev: c_int) -> CUmemAllocationProp {
        CUmemAllocationProp {
            type_: CU_MEM_ALLOCATION_TYPE_PINNED,
            requested_handle_types: 0,
            location: CUmemLocation {
                type_: CU_MEM_LOCATION_TYPE_DEVICE,
                id: dev,
            },
            win32_handle_meta_data: null_mut(),
            alloc_flags: [0; 8],
        }
    }

    pub fn granularity(&self, dev: c_int) -> usize {
        let prop = Self::alloc_prop(dev);
        let mut g = 0usize;
        cu!(
            self,
            "cuMemGetAllocationGranularity",
            unsafe extern "C" fn(*mut usize, *const CUmemAllocationProp, c_int) -> c_int,
            &mut g,
            &prop,
            0
        );
        g
    }

    pub fn mem_create(&self, size: u64, dev: c_int) -> (c_int, u64) {
        let prop = Self::alloc_prop(dev);
        let mut h = 0u64;
        let rc = cu!(
            self,
            "cuMemCreate",
            unsafe extern "C" fn(*mut u64, usize, *const CUmemAllocationProp, u64) -> c_int,
            &mut h,
            size_t(size),
            &prop,
            0
        );
        (rc, h)
    }

    pub fn mem_release(&self, h: u64) -> c_int {
        cu!(self, "cuMemRelease", unsafe extern "C" fn(u64) -> c_int, h)
    }

    pub fn array_create(&self, w: usize, h: usize) -> (c_int, *mut c_void) {
        let desc = CudaArrayDescriptor {
            width: w,
            height: h,
            format: CU_AD_FORMAT_FLOAT,
            num_channels: 4,
        };
        let mut a = null_mut();
        let rc = cu!(
            self,
            "cuArrayCreate",
            unsafe extern "C" fn(*mut *mut c_void, *const CudaArrayDescriptor) -> c_int,
            &mut a,
            &desc
        );
        (rc, a)
    }

    pub fn array3d_create(&self, w: usize, h: usize, d: usize) -> (c_int, *mut c_void) {
        let desc = CudaArray3dDescriptor {
            width: w,
            height: h,
            depth: d,
            format: CU_AD_FORMAT_FLOAT,
            num_channels: 4,
            flags: 0,
        };
        let mut a = null_mut();
        let rc = cu!(
            self,
            "cuArray3DCreate",
            unsafe extern "C" fn(*mut *mut c_void, *const CudaArray3dDescriptor) -> c_int,
            &mut a,
            &desc
        );
        (rc, a)
    }

    pub fn mipmap_create(&self, w: usize, h: usize, levels: c_uint) -> (c_int, *mut c_void) {
        let desc = CudaArray3dDescriptor {
            width: w,
            height: h,
            depth: 0,
            format: CU_AD_FORMAT_FLOAT,
            num_channels: 4,
            flags: 0,
        };
        let mut a = null_mut();
        let rc = cu!(
            self,
            "cuMipmappedArrayCreate",
            unsafe extern "C" fn(*mut *mut c_void, *const CudaArray3dDescriptor, c_uint) -> c_int,
            &mut a,
            &desc,
            levels
        );
        (rc, a)
    }

    pub fn array_destroy(&self, a: *mut c_void) -> c_int {
        cu!(
            self,
            "cuArrayDestroy",
            unsafe extern "C" fn(*mut c_void) -> c_int,
            a
        )
    }

    pub fn mipmap_destroy(&self, a: *mut c_void) -> c_int {
        cu!(
            self,
            "cuMipmappedArrayDestroy",
            unsafe extern "C" fn(*mut c_void) -> c_int,
            a
        )
    }

    /// Builds a graph with one allocation node of `size` and a free node after it,
    /// instantiates and launches it. Returns the first failing code and the stage.
    pub fn graph_with_allocation(&self, size: u64, stream: *mut c_void) -> (c_int, &'static str) {
        let mut graph = null_mut();
        let rc = cu!(
            self,
            "cuGraphCreate",
            unsafe extern "C" fn(*mut *mut c_void, c_uint) -> c_int,
            &mut graph,
            0
        );
        if rc != 0 {
            return (rc, "create");
        }
        let mut params = CudaMemAllocNodeParams {
            pool_props: CUmemPoolProps {
                alloc_type: CU_MEM_ALLOCATION_TYPE_PINNED,
                handle_types: 0,
                location: CUmemLocation {
                    type_: CU_MEM_LOCATION_TYPE_DEVICE,
                    id: 0,
                },
                win32_security_attributes: null_mut(),
                max_size: 0,
                usage: 0,
                reserved: [0; 54],
            },
            access_descs: std::ptr::null(),
            access_desc_count: 0,
            bytesize: size_t(size),
            dptr: 0,
        };
        let mut alloc_node = null_mut();
        let rc = cu!(
            self,
            "cuGraphAddMemAllocNode",
            unsafe extern "C" fn(
                *mut *mut c_void,
                *mut c_void,
                *const *mut c_void,
                usize,
                *mut CudaMemAllocNodeParams,
            ) -> c_int,
            &mut alloc_node,
            graph,
            std::ptr::null(),
            0,
            &mut params
        );
        if rc != 0 {
            return (rc, "alloc-node");
        }
        let mut free_node = null_mut();
        let rc = cu!(
            self,
            "cuGraphAddMemFreeNode",
            unsafe extern "C" fn(
                *mut *mut c_void,
                *mut c_void,
                *const *mut c_void,
                usize,
                u64,
            ) -> c_int,
            &mut free_node,
            graph,
            &alloc_node,
            1,
            params.dptr
        );
        if rc != 0 {
            return (rc, "free-node");
        }
        let mut exec = null_mut();
        let rc = cu!(
            self,
            "cuGraphInstantiateWithFlags",
            unsafe extern "C" fn(*mut *mut c_void, *mut c_void, u64) -> c_int,
            &mut exec,
            graph,
            0
        );
        if rc != 0 {
            return (rc, "instantiate");
        }
        let rc = cu!(
            self,
            "cuGraphLaunch",
            unsafe extern "C" fn(*mut c_void, *mut c_void) -> c_int,
            exec,
            stream
        );
        if rc != 0 {
            cu!(
                self,
                "cuGraphExecDestroy",
                unsafe extern "C" fn(*mut c_void) -> c_int,
                exec
            );
            return (rc, "launch");
        }
        self.stream_sync(stream);
        let rc = cu!(
            self,
            "cuGraphExecDestroy",
            unsafe extern "C" fn(*mut c_void) -> c_int,
            exec
        );
        (rc, "done")
    }

    pub fn graph_mem_trim(&self, dev: c_int) -> c_int {
        cu!(
            self,
            "cuDeviceGraphMemTrim",
            unsafe extern "C" fn(c_int) -> c_int,
            dev
        )
    }
}

/// A byte count as the driver API's `size_t`. A size beyond it (none on a 64-bit host)
/// asks for more than any GPU has, which the driver refuses the same way.
fn size_t(size: u64) -> usize {
    usize::try_from(size).unwrap_or(usize::MAX)
}
