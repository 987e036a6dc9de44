//! CUDA graphs with memory nodes: what an executable graph's allocation nodes need is
//! read at instantiation, and charged at launch (through the compute gate when the slice
//! has a compute limit).

// The hooks carry the driver's own symbol names, which are camelCase.
#![allow(non_snake_case)]

use std::ffi::{c_int, c_ulonglong, c_void};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::common::{PAGE, round_up};
use crate::books::set_tracked;
use crate::ffi::*;
use crate::lock::lock;
use crate::log::log_at;
use crate::process::{Access, access};
use crate::real::{call_driver, graph_mem_attribute};
use crate::slice::Holding;
use crate::table::id;

// CUDA graphs with memory nodes: what an executable graph's allocation nodes need is
// read at instantiation; at launch, the growth of the device's graph memory pool is
// charged first, and the charge is then set to what the pool really reserves.

type InstFlagsFn = unsafe extern "C" fn(*mut CUgraphExec, CUgraph, c_ulonglong) -> CUresult;
type InstParamsFn = unsafe extern "C" fn(*mut CUgraphExec, CUgraph, *mut c_void) -> CUresult;
type InstV2Fn =
    unsafe extern "C" fn(*mut CUgraphExec, CUgraph, *mut CUgraphNode, *mut i8, usize) -> CUresult;
type LaunchFn = unsafe extern "C" fn(CUgraphExec, CUstream) -> CUresult;
type ExecDestroyFn = unsafe extern "C" fn(CUgraphExec) -> CUresult;
type GraphTrimFn = unsafe extern "C" fn(CUdevice) -> CUresult;
type GetNodesFn = unsafe extern "C" fn(CUgraph, *mut CUgraphNode, *mut usize) -> CUresult;
type NodeTypeFn = unsafe extern "C" fn(CUgraphNode, *mut c_int) -> CUresult;
type AllocParamsFn = unsafe extern "C" fn(CUgraphNode, *mut CudaMemAllocNodeParams) -> CUresult;
type ChildGraphFn = unsafe extern "C" fn(CUgraphNode, *mut CUgraph) -> CUresult;

/// Executable graphs that have allocation nodes; zero means launches need no lookup.
static GRAPHS_WITH_MEMORY: AtomicUsize = AtomicUsize::new(0);

/// Sums a graph's allocation nodes per device, child graphs included.
fn graph_memory_needs(graph: CUgraph, depth: u32, out: &mut Vec<(CUdevice, u64)>) {
    if depth > 8 {
        return;
    }
    let mut count: usize = 0;
    if call_driver!(
        id::cuGraphGetNodes,
        GetNodesFn,
        graph,
        std::ptr::null_mut(),
        &mut count
    ) != CUDA_SUCCESS
        || count == 0
    {
        return;
    }
    let mut nodes: Vec<CUgraphNode> = vec![std::ptr::null_mut(); count];
    if call_driver!(
        id::cuGraphGetNodes,
        GetNodesFn,
        graph,
        nodes.as_mut_ptr(),
        &mut count
    ) != CUDA_SUCCESS
    {
        return;
    }
    for &node in nodes.iter().take(count) {
        let mut kind: c_int = -1;
        if call_driver!(id::cuGraphNodeGetType, NodeTypeFn, node, &mut kind) != CUDA_SUCCESS {
            continue;
        }
        if kind == CU_GRAPH_NODE_TYPE_MEM_ALLOC {
            // SAFETY: a plain C struct; all-zero is a valid bit pattern for it.
            let mut params: CudaMemAllocNodeParams = unsafe { std::mem::zeroed() };
            if call_driver!(
                id::cuGraphMemAllocNodeGetParams,
                AllocParamsFn,
                node,
                &mut params
            ) == CUDA_SUCCESS
            {
                let dev = params.pool_props.location.id;
                let bytes = params.bytesize as u64;
                match out.iter_mut().find(|(d, _)| *d == dev) {
                    Some(e) => e.1 = e.1.saturating_add(bytes),
                    None => out.push((dev, bytes)),
                }
            }
        } else if kind == CU_GRAPH_NODE_TYPE_GRAPH {
            let mut child: CUgraph = std::ptr::null_mut();
            if call_driver!(
                id::cuGraphChildGraphNodeGetGraph,
                ChildGraphFn,
                node,
                &mut child
            ) == CUDA_SUCCESS
            {
                graph_memory_needs(child, depth + 1, out);
            }
        }
    }
}

/// Records the memory nodes of a graph just instantiated into `*exec`.
///
/// # Safety
/// `exec` is null or, when `r` is `CUDA_SUCCESS`, points to the `CUgraphExec` the driver
/// has just written.
unsafe fn after_instantiate(r: CUresult, exec: *mut CUgraphExec, graph: CUgraph) -> CUresult {
    if r != CUDA_SUCCESS || exec.is_null() {
        return r;
    }
    if let Access::Slice(s) = access() {
        let mut needs = Vec::new();
        graph_memory_needs(graph, 0, &mut needs);
        if !needs.is_empty() {
            // SAFETY: written by the driver on success.
            let exec = unsafe { *exec } as usize;
            log_at!(Debug, "graph {exec:#x} has memory nodes: {needs:?}");
            if lock(&s.graphs).needs.insert(exec, needs).is_none() {
                GRAPHS_WITH_MEMORY.fetch_add(1, Relaxed);
            }
        }
    }
    r
}

/// `cuGraphInstantiateWithFlags`.
///
/// # Safety
/// The caller keeps the driver's contract for this call: `exec` is null or valid for
/// writing one `CUgraphExec`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiateWithFlags(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    flags: c_ulonglong,
) -> CUresult {
    let r = call_driver!(
        id::cuGraphInstantiateWithFlags,
        InstFlagsFn,
        exec,
        graph,
        flags
    );
    // SAFETY: `exec` is null or writable, by this function's own contract; the driver
    // has written it when the call succeeded.
    unsafe { after_instantiate(r, exec, graph) }
}

/// `cuGraphInstantiateWithParams`.
///
/// # Safety
/// The caller keeps the driver's contract for this call: `exec` is null or valid for
/// writing one `CUgraphExec`. `params` points to a
/// `CUDA_GRAPH_INSTANTIATE_PARAMS` the driver may read and write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiateWithParams(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    params: *mut c_void,
) -> CUresult {
    let r = call_driver!(
        id::cuGraphInstantiateWithParams,
        InstParamsFn,
        exec,
        graph,
        params
    );
    // SAFETY: `exec` is null or writable, by this function's own contract; the driver
    // has written it when the call succeeded.
    unsafe { after_instantiate(r, exec, graph) }
}

/// `cuGraphInstantiateWithParams_ptsz`.
///
/// # Safety
/// The caller keeps the driver's contract for this call: `exec` is null or valid for
/// writing one `CUgraphExec`. `params` points to a
/// `CUDA_GRAPH_INSTANTIATE_PARAMS` the driver may read and write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiateWithParams_ptsz(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    params: *mut c_void,
) -> CUresult {
    let r = call_driver!(
        id::cuGraphInstantiateWithParams_ptsz,
        InstParamsFn,
        exec,
        graph,
        params
    );
    // SAFETY: `exec` is null or writable, by this function's own contract; the driver
    // has written it when the call succeeded.
    unsafe { after_instantiate(r, exec, graph) }
}

/// `cuGraphInstantiate_v2` (the CUDA 11 signature with an error node and log).
///
/// # Safety
/// The caller keeps the driver's contract for this call: `exec` is null or valid for
/// writing one `CUgraphExec`; `error_node` is null or writable; `log` is null or valid
/// for writing `log_size` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiate_v2(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    error_node: *mut CUgraphNode,
    log: *mut i8,
    log_size: usize,
) -> CUresult {
    let r = call_driver!(
        id::cuGraphInstantiate_v2,
        InstV2Fn,
        exec,
        graph,
        error_node,
        log,
        log_size
    );
    // SAFETY: `exec` is null or writable, by this function's own contract; the driver
    // has written it when the call succeeded.
    unsafe { after_instantiate(r, exec, graph) }
}

fn launch_graph(exec: CUgraphExec, call: impl FnOnce() -> CUresult) -> CUresult {
    if GRAPHS_WITH_MEMORY.load(Relaxed) == 0 {
        return call();
    }
    let s = match access() {
        Access::Slice(s) => s,
        Access::Refuse(code) => return code,
        Access::PassThrough => return call(),
    };
    let mut book = lock(&s.graphs);
    let Some(needs) = book.needs.get(&(exec as usize)).cloned() else {
        drop(book);
        return call();
    };
    let mut charged_growth: Vec<(CUdevice, u64)> = Vec::new();
    for (dev, need) in &needs {
        let device = match s.device_entry(*dev) {
            Ok(Some(d)) => d,
            Ok(None) => continue,
            Err(e) => return e,
        };
        let reserved =
            graph_mem_attribute(*dev, CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT).unwrap_or(0);
        let used = graph_mem_attribute(*dev, CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT).unwrap_or(0);
        let tracked = book.charged.entry(*dev).or_insert((device, 0));
        set_tracked(&s.ledger, s.entry, Some(tracked), reserved, true);
        let wanted = used.saturating_add(*need);
        let growth = if wanted > reserved {
            round_up(wanted - reserved, PAGE)
        } else {
            0
        };
        if growth > 0 {
            if let Err(code) =
                s.reserve_holding(device, growth, "CUDA graph memory", Holding::Graphs)
            {
                for (d, g) in charged_growth {
                    if let Some(t) = book.charged.get_mut(&d) {
                        s.unreserve(t.0, g);
                        t.1 -= g;
                    }
                }
                return code;
            }
            tracked.1 += growth;
            charged_growth.push((*dev, growth));
        }
    }
    let r = call();
    for (dev, _) in &needs {
        if let Some(reserved) = graph_mem_attribute(*dev, CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT) {
            set_tracked(
                &s.ledger,
                s.entry,
                book.charged.get_mut(dev),
                reserved,
                true,
            );
        }
    }
    r
}

/// `cuGraphLaunch`: graph memory is charged, and the launch passes the compute gate.
#[unsafe(no_mangle)]
pub extern "C" fn cuGraphLaunch(exec: CUgraphExec, stream: CUstream) -> CUresult {
    launch_graph(exec, || {
        crate::launch::gated(stream, false, crate::compute::graph_kind(exec), || {
            call_driver!(id::cuGraphLaunch, LaunchFn, exec, stream)
        })
    })
}

/// `cuGraphLaunch_ptsz`.
#[unsafe(no_mangle)]
pub extern "C" fn cuGraphLaunch_ptsz(exec: CUgraphExec, stream: CUstream) -> CUresult {
    launch_graph(exec, || {
        crate::launch::gated(stream, true, crate::compute::graph_kind(exec), || {
            call_driver!(id::cuGraphLaunch_ptsz, LaunchFn, exec, stream)
        })
    })
}

/// `cuGraphUpload`.
#[unsafe(no_mangle)]
pub extern "C" fn cuGraphUpload(exec: CUgraphExec, stream: CUstream) -> CUresult {
    launch_graph(exec, || {
        call_driver!(id::cuGraphUpload, LaunchFn, exec, stream)
    })
}

/// `cuGraphUpload_ptsz`.
#[unsafe(no_mangle)]
pub extern "C" fn cuGraphUpload_ptsz(exec: CUgraphExec, stream: CUstream) -> CUresult {
    launch_graph(exec, || {
        call_driver!(id::cuGraphUpload_ptsz, LaunchFn, exec, stream)
    })
}

/// `cuGraphExecDestroy`.
#[unsafe(no_mangle)]
pub extern "C" fn cuGraphExecDestroy(exec: CUgraphExec) -> CUresult {
    let r = call_driver!(id::cuGraphExecDestroy, ExecDestroyFn, exec);
    if r == CUDA_SUCCESS
        && GRAPHS_WITH_MEMORY.load(Relaxed) > 0
        && let Access::Slice(s) = access()
        && lock(&s.graphs).needs.remove(&(exec as usize)).is_some()
    {
        GRAPHS_WITH_MEMORY.fetch_sub(1, Relaxed);
    }
    r
}

/// `cuDeviceGraphMemTrim`: the graph pool shrinks, and so does its charge.
#[unsafe(no_mangle)]
pub extern "C" fn cuDeviceGraphMemTrim(dev: CUdevice) -> CUresult {
    let r = call_driver!(id::cuDeviceGraphMemTrim, GraphTrimFn, dev);
    if r == CUDA_SUCCESS
        && let Access::Slice(s) = access()
    {
        s.reconcile_graph_memory();
    }
    r
}
