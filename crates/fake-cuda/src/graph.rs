//! CUDA graphs with memory nodes. Alloc nodes get a fixed device address when they are added;
//! launching (or uploading) an executable graph makes the device's graph memory pool reserve
//! room for all of the graph's alloc nodes at once, charging any growth to the process.
//! Allocations the graph does not free itself stay outstanding (part of the pool's `used`)
//! until `cuMemFreeAsync` or another graph's free node; reserved memory stays until
//! `cuDeviceGraphMemTrim`.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void};

use crate::driver::{Alloc, AllocKind, Driver, Out, api, handle, key, ordinal, read_in, size_t};
use crate::types::*;
use fake_gpu::size::round_up;

/// The fields of the `CUmemPoolProps` of an alloc node the fake keeps.
#[derive(Debug, Clone, Copy)]
pub struct PoolPropFields {
    pub alloc_type: c_int,
    pub handle_types: c_int,
    pub location: CUmemLocation,
    pub max_size: usize,
    pub usage: u16,
}

/// What a node does.
#[derive(Debug, Clone, Copy)]
pub enum NodeKind {
    Alloc {
        dev: usize,
        bytes: u64,
        dptr: u64,
        props: PoolPropFields,
    },
    Free {
        dptr: u64,
    },
    Kernel,
    Empty,
}

/// A graph node.
#[derive(Debug, Clone, Copy)]
pub struct Node {
    pub kind: NodeKind,
}

/// A graph: its nodes in creation order.
#[derive(Debug, Default)]
pub struct Graph {
    pub nodes: Vec<u64>,
    /// Live executable graphs instantiated from it.
    pub execs: u32,
}

/// An executable graph: the memory work of one launch.
#[derive(Debug, Clone)]
pub struct Exec {
    pub graph: u64,
    /// (device, address, bytes) of every alloc node.
    pub allocs: Vec<(usize, u64, u64)>,
    /// Addresses of every free node.
    pub frees: Vec<u64>,
    /// `CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH`.
    pub auto_free: bool,
}

/// A device's graph memory pool.
#[derive(Debug, Default, Clone, Copy)]
pub struct GraphMem {
    pub used: u64,
    pub used_high: u64,
    pub reserved: u64,
    pub reserved_high: u64,
}

const AUTO_FREE_ON_LAUNCH: u64 = 1;

impl Driver {
    /// An empty graph.
    pub fn new_graph(&mut self) -> u64 {
        let g = self.new_handle();
        self.graphs.insert(g, Graph::default());
        g
    }

    fn add_node(
        &mut self,
        graph: u64,
        kind: NodeKind,
        deps: *const Handle,
        ndeps: usize,
    ) -> Result<u64, CUresult> {
        if !self.graphs.contains_key(&graph) || (ndeps > 0 && deps.is_null()) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let n = self.new_handle();
        self.nodes.insert(n, Node { kind });
        if let Some(g) = self.graphs.get_mut(&graph) {
            g.nodes.push(n);
        }
        Ok(n)
    }

    fn alloc_node(
        &mut self,
        graph: u64,
        props: PoolPropFields,
        bytes: u64,
        deps: *const Handle,
        ndeps: usize,
    ) -> Result<(u64, u64), CUresult> {
        if props.alloc_type != CU_MEM_ALLOCATION_TYPE_PINNED
            || props.location.type_ != CU_MEM_LOCATION_TYPE_DEVICE
            || bytes == 0
        {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let dev = self.device(props.location.id)?;
        if !self.graphs.contains_key(&graph) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let gran = self.settings.granularity;
        let dptr = self.alloc_va(dev, round_up(bytes, gran), gran);
        let kind = NodeKind::Alloc {
            dev,
            bytes,
            dptr,
            props,
        };
        let n = self.add_node(graph, kind, deps, ndeps)?;
        self.graph_vas.insert(dptr, (dev, bytes));
        Ok((n, dptr))
    }

    fn free_node(
        &mut self,
        graph: u64,
        dptr: u64,
        deps: *const Handle,
        ndeps: usize,
    ) -> Result<u64, CUresult> {
        if !self.graph_vas.contains_key(&dptr) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        self.add_node(graph, NodeKind::Free { dptr }, deps, ndeps)
    }

    /// Records a kernel launch on a capturing stream.
    pub fn add_kernel_node(&mut self, graph: u64) {
        let _ = self.add_node(graph, NodeKind::Kernel, std::ptr::null(), 0);
    }

    /// `cuMemAllocAsync` on a capturing stream: a graph alloc node.
    pub fn capture_alloc(&mut self, graph: u64, dev: usize, bytes: u64) -> Result<u64, CUresult> {
        let props = PoolPropFields {
            alloc_type: CU_MEM_ALLOCATION_TYPE_PINNED,
            handle_types: 0,
            location: CUmemLocation {
                type_: CU_MEM_LOCATION_TYPE_DEVICE,
                id: ordinal(dev)?,
            },
            max_size: 0,
            usage: 0,
        };
        self.alloc_node(graph, props, bytes, std::ptr::null(), 0)
            .map(|(_, dptr)| dptr)
    }

    /// `cuMemFreeAsync` on a capturing stream: a graph free node.
    pub fn capture_free(&mut self, graph: u64, dptr: u64) -> Result<(), CUresult> {
        self.free_node(graph, dptr, std::ptr::null(), 0).map(|_| ())
    }

    fn instantiate(&mut self, graph: u64, flags: u64) -> Result<u64, CUresult> {
        let g = self.graphs.get(&graph).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let mut allocs = Vec::new();
        let mut frees = Vec::new();
        for n in &g.nodes {
            match self.nodes.get(n).map(|n| n.kind) {
                Some(NodeKind::Alloc {
                    dev, bytes, dptr, ..
                }) => allocs.push((dev, dptr, bytes)),
                Some(NodeKind::Free { dptr }) => frees.push(dptr),
                _ => {}
            }
        }
        if (!allocs.is_empty() || !frees.is_empty()) && g.execs > 0 {
            // A graph with memory nodes may have one executable graph at a time.
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let e = self.new_handle();
        self.execs.insert(
            e,
            Exec {
                graph,
                allocs,
                frees,
                auto_free: flags & AUTO_FREE_ON_LAUNCH != 0,
            },
        );
        if let Some(g) = self.graphs.get_mut(&graph) {
            g.execs += 1;
        }
        Ok(e)
    }

    fn exec_destroy(&mut self, e: u64) -> Result<(), CUresult> {
        let x = self.execs.remove(&e).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if let Some(g) = self.graphs.get_mut(&x.graph) {
            g.execs = g.execs.saturating_sub(1);
        }
        Ok(())
    }

    /// Launches (or only uploads) an executable graph.
    fn exec_run(&mut self, e: u64, stream: Handle, upload_only: bool) -> Result<(), CUresult> {
        let (_, ctx, _) = self.stream(stream)?;
        let x = self.execs.get(&e).ok_or(CUDA_ERROR_INVALID_VALUE)?.clone();
        if !upload_only {
            let outstanding: Vec<u64> = x
                .allocs
                .iter()
                .map(|a| a.1)
                .filter(|p| self.allocs.contains_key(p))
                .collect();
            if !outstanding.is_empty() {
                if !x.auto_free {
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
                for p in outstanding {
                    let _ = self.free_alloc(p);
                }
            }
        }
        let mut per_dev: BTreeMap<usize, u64> = BTreeMap::new();
        for &(dev, _, bytes) in &x.allocs {
            *per_dev.entry(dev).or_default() += bytes;
        }
        let chunk = self.settings.pool_chunk;
        for (&dev, &sum) in &per_dev {
            let gm = self.graph_mem[dev];
            let need = gm.used.saturating_add(sum);
            if need > gm.reserved {
                let grow = round_up(need - gm.reserved, chunk);
                self.charge(dev, grow, 0)?;
                let gm = &mut self.graph_mem[dev];
                gm.reserved += grow;
                gm.reserved_high = gm.reserved_high.max(gm.reserved);
            }
        }
        if upload_only {
            return Ok(());
        }
        let kernels = self
            .graphs
            .get(&x.graph)
            .map(|g| {
                g.nodes
                    .iter()
                    .filter(|n| matches!(self.nodes.get(n).map(|n| n.kind), Some(NodeKind::Kernel)))
                    .count() as u64
            })
            .unwrap_or(1);
        let (sk, _, _) = self.stream(stream)?;
        self.time_kernels(sk, kernels);
        for (&dev, &sum) in &per_dev {
            let gm = &mut self.graph_mem[dev];
            gm.used_high = gm.used_high.max(gm.used.saturating_add(sum));
        }
        for &(dev, dptr, bytes) in &x.allocs {
            if x.frees.contains(&dptr) {
                continue;
            }
            self.graph_mem[dev].used += bytes;
            self.allocs.insert(
                dptr,
                Alloc {
                    size: bytes,
                    charged: 0,
                    dev,
                    ctx,
                    kind: AllocKind::Graph { bytes },
                },
            );
        }
        for &dptr in &x.frees {
            let own = x.allocs.iter().any(|a| a.1 == dptr);
            let is_graph = matches!(
                self.allocs.get(&dptr).map(|a| a.kind),
                Some(AllocKind::Graph { .. })
            );
            if !own && is_graph {
                let _ = self.free_alloc(dptr);
            }
        }
        Ok(())
    }

    /// Releases a device's unused graph memory (in whole chunks).
    pub fn graph_mem_trim(&mut self, dev: usize) {
        let chunk = self.settings.pool_chunk;
        let Some(gm) = self.graph_mem.get_mut(dev) else {
            return;
        };
        let keep = round_up(gm.used, chunk).min(gm.reserved);
        let released = gm.reserved - keep;
        gm.reserved = keep;
        self.uncharge(dev, released, 0);
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphCreate(ph_graph: *mut Handle, _flags: u32) -> CUresult {
    api("cuGraphCreate", |d| {
        // SAFETY: `ph_graph` is null or writable by the API contract.
        let out = unsafe { Out::new(ph_graph) }?;
        out.set(handle(d.new_graph()));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphDestroy(graph: Handle) -> CUresult {
    api("cuGraphDestroy", |d| {
        let g = d
            .graphs
            .remove(&key(graph))
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        for n in g.nodes {
            d.nodes.remove(&n);
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphAddMemAllocNode(
    ph_node: *mut Handle,
    graph: Handle,
    deps: *const Handle,
    num_deps: usize,
    params: *mut CudaMemAllocNodeParams,
) -> CUresult {
    api("cuGraphAddMemAllocNode", |d| {
        // SAFETY: `ph_node` is null or writable, `params` null or a valid in/out struct.
        let (out, params) = unsafe { (Out::new(ph_node)?, Out::new(params)?) };
        let p = params.get();
        let props = PoolPropFields {
            alloc_type: p.pool_props.alloc_type,
            handle_types: p.pool_props.handle_types,
            location: p.pool_props.location,
            max_size: p.pool_props.max_size,
            usage: p.pool_props.usage,
        };
        let (node, dptr) = d.alloc_node(key(graph), props, p.bytesize as u64, deps, num_deps)?;
        params.set(CudaMemAllocNodeParams { dptr, ..p });
        out.set(handle(node));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphAddMemFreeNode(
    ph_node: *mut Handle,
    graph: Handle,
    deps: *const Handle,
    num_deps: usize,
    dptr: CUdeviceptr,
) -> CUresult {
    api("cuGraphAddMemFreeNode", |d| {
        // SAFETY: `ph_node` is null or writable by the API contract.
        let out = unsafe { Out::new(ph_node) }?;
        out.set(handle(d.free_node(key(graph), dptr, deps, num_deps)?));
        Ok(())
    })
}

fn add_simple(
    symbol: &str,
    ph_node: *mut Handle,
    graph: Handle,
    deps: *const Handle,
    n: usize,
    params_ok: bool,
    kind: NodeKind,
) -> CUresult {
    api(symbol, |d| {
        // SAFETY: `ph_node` is null or writable by the API contract.
        let out = unsafe { Out::new(ph_node) }?;
        if !params_ok {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        out.set(handle(d.add_node(key(graph), kind, deps, n)?));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphAddKernelNode_v2(
    ph_node: *mut Handle,
    graph: Handle,
    deps: *const Handle,
    num_deps: usize,
    params: *const c_void,
) -> CUresult {
    add_simple(
        "cuGraphAddKernelNode_v2",
        ph_node,
        graph,
        deps,
        num_deps,
        !params.is_null(),
        NodeKind::Kernel,
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphAddKernelNode(
    ph_node: *mut Handle,
    graph: Handle,
    deps: *const Handle,
    num_deps: usize,
    params: *const c_void,
) -> CUresult {
    add_simple(
        "cuGraphAddKernelNode",
        ph_node,
        graph,
        deps,
        num_deps,
        !params.is_null(),
        NodeKind::Kernel,
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphAddEmptyNode(
    ph_node: *mut Handle,
    graph: Handle,
    deps: *const Handle,
    num_deps: usize,
) -> CUresult {
    add_simple(
        "cuGraphAddEmptyNode",
        ph_node,
        graph,
        deps,
        num_deps,
        true,
        NodeKind::Empty,
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphGetNodes(
    graph: Handle,
    nodes: *mut Handle,
    num_nodes: *mut usize,
) -> CUresult {
    api("cuGraphGetNodes", |d| {
        // SAFETY: `num_nodes` is null or a valid in/out count by the API contract.
        let count = unsafe { Out::new(num_nodes) }?;
        let g = d.graphs.get(&key(graph)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if nodes.is_null() {
            count.set(g.nodes.len());
            return Ok(());
        }
        let room = count.get();
        for i in 0..room {
            let v = g.nodes.get(i).map_or(std::ptr::null_mut(), |&n| handle(n));
            // SAFETY: `nodes` holds `room` entries by the API contract.
            unsafe { nodes.add(i).write_unaligned(v) };
        }
        count.set(room.min(g.nodes.len()));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphNodeGetType(node: Handle, node_type: *mut c_int) -> CUresult {
    api("cuGraphNodeGetType", |d| {
        // SAFETY: `node_type` is null or writable by the API contract.
        let out = unsafe { Out::new(node_type) }?;
        let n = d.nodes.get(&key(node)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        out.set(match n.kind {
            NodeKind::Alloc { .. } => CU_GRAPH_NODE_TYPE_MEM_ALLOC,
            NodeKind::Free { .. } => CU_GRAPH_NODE_TYPE_MEM_FREE,
            NodeKind::Kernel => CU_GRAPH_NODE_TYPE_KERNEL,
            NodeKind::Empty => CU_GRAPH_NODE_TYPE_EMPTY,
        });
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphMemAllocNodeGetParams(
    node: Handle,
    params_out: *mut CudaMemAllocNodeParams,
) -> CUresult {
    api("cuGraphMemAllocNodeGetParams", |d| {
        // SAFETY: `params_out` is null or writable by the API contract.
        let out = unsafe { Out::new(params_out) }?;
        let Some(NodeKind::Alloc {
            bytes, dptr, props, ..
        }) = d.nodes.get(&key(node)).map(|n| n.kind)
        else {
            return Err(CUDA_ERROR_INVALID_VALUE);
        };
        out.set(CudaMemAllocNodeParams {
            pool_props: CUmemPoolProps {
                alloc_type: props.alloc_type,
                handle_types: props.handle_types,
                location: props.location,
                win32_security_attributes: std::ptr::null_mut(),
                max_size: props.max_size,
                usage: props.usage,
                reserved: [0; 54],
            },
            access_descs: std::ptr::null(),
            access_desc_count: 0,
            bytesize: size_t(bytes)?,
            dptr,
        });
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphMemFreeNodeGetParams(
    node: Handle,
    dptr_out: *mut CUdeviceptr,
) -> CUresult {
    api("cuGraphMemFreeNodeGetParams", |d| {
        // SAFETY: `dptr_out` is null or writable by the API contract.
        let out = unsafe { Out::new(dptr_out) }?;
        match d.nodes.get(&key(node)).map(|n| n.kind) {
            Some(NodeKind::Free { dptr }) => {
                out.set(dptr);
                Ok(())
            }
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    })
}

fn instantiate(symbol: &str, exec: *mut Handle, graph: Handle, flags: u64) -> CUresult {
    api(symbol, |d| {
        // SAFETY: `exec` is null or writable by the API contract.
        let out = unsafe { Out::new(exec) }?;
        out.set(handle(d.instantiate(key(graph), flags)?));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiateWithFlags(
    exec: *mut Handle,
    graph: Handle,
    flags: u64,
) -> CUresult {
    instantiate("cuGraphInstantiateWithFlags", exec, graph, flags)
}

/// `cuGraphInstantiate_v2(phGraphExec, hGraph, phErrorNode, logBuffer, bufferSize)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiate_v2(
    exec: *mut Handle,
    graph: Handle,
    error_node: *mut Handle,
    log_buffer: *mut c_char,
    buffer_size: usize,
) -> CUresult {
    // SAFETY: optional out-parameters, null or writable by the API contract.
    unsafe { clear_diag(error_node, log_buffer, buffer_size) };
    instantiate("cuGraphInstantiate_v2", exec, graph, 0)
}

/// `cuGraphInstantiate` (CUDA 10 signature, same as `_v2`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiate(
    exec: *mut Handle,
    graph: Handle,
    error_node: *mut Handle,
    log_buffer: *mut c_char,
    buffer_size: usize,
) -> CUresult {
    // SAFETY: optional out-parameters, null or writable by the API contract.
    unsafe { clear_diag(error_node, log_buffer, buffer_size) };
    instantiate("cuGraphInstantiate", exec, graph, 0)
}

/// Clears the diagnostics of the old instantiate calls.
///
/// # Safety
/// `error_node` null or writable; `log` null or valid for `size` bytes.
unsafe fn clear_diag(error_node: *mut Handle, log: *mut c_char, size: usize) {
    // SAFETY: per this function's contract.
    unsafe {
        if let Some(o) = Out::optional(error_node) {
            o.set(std::ptr::null_mut());
        }
        if !log.is_null() && size > 0 {
            log.write(0);
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiateWithParams(
    exec: *mut Handle,
    graph: Handle,
    params: *mut CudaGraphInstantiateParams,
) -> CUresult {
    api("cuGraphInstantiateWithParams", |d| {
        // SAFETY: `exec` is null or writable, `params` null or a valid in/out struct.
        let (out, params) = unsafe { (Out::new(exec)?, Out::new(params)?) };
        let p = params.get();
        let result = d.instantiate(key(graph), p.flags).and_then(|e| {
            let uploaded = if p.flags & CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD != 0 {
                d.exec_run(e, p.h_upload_stream, true)
            } else {
                Ok(())
            };
            if let Err(err) = uploaded {
                let _ = d.exec_destroy(e);
                return Err(err);
            }
            Ok(e)
        });
        params.set(CudaGraphInstantiateParams {
            h_err_node_out: std::ptr::null_mut(),
            result_out: c_int::from(result.is_err()),
            ..p
        });
        out.set(handle(result?));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphExecDestroy(exec: Handle) -> CUresult {
    api("cuGraphExecDestroy", |d| d.exec_destroy(key(exec)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphLaunch(exec: Handle, stream: Handle) -> CUresult {
    api("cuGraphLaunch", |d| d.exec_run(key(exec), stream, false))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphLaunch_ptsz(exec: Handle, stream: Handle) -> CUresult {
    api("cuGraphLaunch_ptsz", |d| {
        d.exec_run(key(exec), stream, false)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphUpload(exec: Handle, stream: Handle) -> CUresult {
    api("cuGraphUpload", |d| d.exec_run(key(exec), stream, true))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphUpload_ptsz(exec: Handle, stream: Handle) -> CUresult {
    api("cuGraphUpload_ptsz", |d| {
        d.exec_run(key(exec), stream, true)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGraphMemTrim(dev: CUdevice) -> CUresult {
    api("cuDeviceGraphMemTrim", |d| {
        let dev = d.device(dev)?;
        d.graph_mem_trim(dev);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetGraphMemAttribute(
    dev: CUdevice,
    attr: c_int,
    value: *mut c_void,
) -> CUresult {
    api("cuDeviceGetGraphMemAttribute", |d| {
        // SAFETY: the attributes are `cuuint64_t`; `value` is null or writable.
        let out = unsafe { Out::new(value.cast::<u64>()) }?;
        let gm = d.graph_mem[d.device(dev)?];
        out.set(match attr {
            CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT => gm.used,
            CU_GRAPH_MEM_ATTR_USED_MEM_HIGH => gm.used_high,
            CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT => gm.reserved,
            CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH => gm.reserved_high,
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        });
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceSetGraphMemAttribute(
    dev: CUdevice,
    attr: c_int,
    value: *mut c_void,
) -> CUresult {
    api("cuDeviceSetGraphMemAttribute", |d| {
        // SAFETY: the attributes are `cuuint64_t`; `value` is null or readable.
        let v = unsafe { read_in(value.cast::<u64>().cast_const()) }?;
        let dev = d.device(dev)?;
        let gm = &mut d.graph_mem[dev];
        match attr {
            CU_GRAPH_MEM_ATTR_USED_MEM_HIGH if v == 0 => gm.used_high = gm.used,
            CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH if v == 0 => gm.reserved_high = gm.reserved,
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        }
        Ok(())
    })
}
