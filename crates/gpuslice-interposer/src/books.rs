//! The books of what this process charged: allocations by what they are keyed by,
//! stream-ordered pools and graph memory with what each was last charged, and how a
//! tracked charge is moved to what the driver says it holds.

use std::collections::HashMap;

use gpuslice_ledger::{DeviceSlot, Ledger, ProcessSlot};

use crate::ffi::CUdevice;

/// What kind of thing an allocation record is keyed by.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    /// A device pointer (`cuMemAlloc`, pitch, managed).
    Pointer(u64),
    /// A VMM handle (`cuMemCreate`).
    Handle(u64),
    /// A CUDA array or mipmapped array.
    Array(u64),
}

/// One charged allocation.
#[derive(Clone, Copy)]
pub struct Charge {
    /// Ledger device entry.
    pub device: DeviceSlot,
    /// Bytes charged.
    pub bytes: u64,
    /// Whether NVML's per-process usage shows this memory. Managed memory is charged in
    /// full but NVML does not show it, so it must not be taken for context memory.
    pub visible_to_nvml: bool,
}

impl Charge {
    /// A charge for device memory that NVML shows in the process's usage.
    pub fn device_memory(device: DeviceSlot, bytes: u64) -> Self {
        Charge {
            device,
            bytes,
            visible_to_nvml: true,
        }
    }
}

/// A memory pool's charge: the pool's reserved memory as last seen.
#[derive(Default)]
pub struct PoolBook {
    /// Pool -> (ledger device entry, bytes charged).
    pub charged: HashMap<usize, (DeviceSlot, u64)>,
    /// Pool -> CUDA device it lives on (from `cuMemPoolCreate` or the device's pool).
    pub device_of: HashMap<usize, CUdevice>,
    /// Pool -> the largest step by which it was seen to grow. Pools grow in chunks; the
    /// next growth is reserved at least this large, so that near the limit an
    /// allocation is refused *before* the pool grows past it.
    pub growth_step: HashMap<usize, u64>,
}

/// Graph memory: per device, what the graph memory pool holds; per executable graph,
/// what its allocation nodes need.
#[derive(Default)]
pub struct GraphBook {
    /// CUDA device -> (ledger device entry, bytes charged).
    pub charged: HashMap<CUdevice, (DeviceSlot, u64)>,
    /// Executable graph -> (CUDA device, bytes its allocation nodes need).
    pub needs: HashMap<usize, Vec<(CUdevice, u64)>>,
}

/// Moves a tracked charge `(device entry, bytes)` to `target` bytes. Growth is checked
/// against the limit unless `force`; returns false when it does not fit (the refusal
/// counted in the ledger).
pub fn set_tracked(
    ledger: &Ledger,
    entry: ProcessSlot,
    tracked: Option<&mut (DeviceSlot, u64)>,
    target: u64,
    force: bool,
) -> bool {
    let Some((device, charged)) = tracked else {
        return true;
    };
    if target > *charged {
        let grow = target - *charged;
        if force {
            ledger.force_charge(entry, *device, grow);
        } else if ledger.try_charge(entry, *device, grow).is_err() {
            return false;
        }
    } else {
        ledger.release(entry, *device, *charged - target);
    }
    *charged = target;
    true
}
