//! The byte layout of a ledger file: header, device table and process table, all made
//! of integers and atomics so that any bit pattern is a valid value, plus the checks
//! that tell a ledger from a foreign or damaged file.

use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::{LedgerError, LedgerSpec};

/// Format version written in the header; bump on any layout change.
pub const FORMAT_VERSION: u32 = 1;
/// Device entries per ledger.
pub const MAX_DEVICES: usize = 16;
/// Process entries per ledger.
pub const MAX_PROCESSES: usize = 512;

const MAGIC: [u8; 8] = *b"GPUSLICE";
const NAME_WORDS: usize = 8; // 64 bytes
const UUID_WORDS: usize = 8; // 64 bytes

/// The header at offset 0.
#[repr(C)]
pub struct Header {
    pub magic: [u8; 8],
    pub version: u32,
    pub header_bytes: u32,
    pub total_bytes: u64,
    pub max_devices: u32,
    pub max_processes: u32,
    pub device_bytes: u32,
    pub process_bytes: u32,
    pub default_limit: AtomicU64,
    pub created_unix: AtomicU64,
    pub high_water: AtomicU32,
    pub creator_pid: AtomicU32,
    pub name: [AtomicU64; NAME_WORDS],
    /// The slice's compute limits, 0 when none: see `crate::pack_compute`.
    pub compute_limits: AtomicU64,
    pub reserved: [AtomicU64; 7],
}

/// One device: state word, limit and UUID.
#[repr(C)]
pub struct DeviceEntry {
    pub state: AtomicU64,
    pub limit: AtomicU64,
    pub uuid: [AtomicU64; UUID_WORDS],
    pub context_estimate: AtomicU64,
    /// The compute budget's theoretical arrival time (monotonic ns; see
    /// gpuslice-compute's `Budget`).
    pub compute_tat: AtomicU64,
    /// GPU busy time charged to the slice on this device, in ns.
    pub compute_busy: AtomicU64,
    /// Allocations (and contexts) of the slice refused on this device for want of
    /// room, counted since the ledger was made. Zero in ledgers made before the counter
    /// existed (it was a reserved word), so the layout and version are unchanged.
    pub refused_allocations: AtomicU64,
    /// Time the slice's processes spent held back by the compute gate on this device
    /// (resting, or waiting for another slice's turn), in ns. Formerly reserved.
    pub throttled_ns: AtomicU64,
    pub reserved: [AtomicU64; 1],
}

/// One process: owner word, identity and charges per device.
#[repr(C)]
pub struct ProcessEntry {
    pub owner: AtomicU64,
    pub start_time: AtomicU64,
    pub pid_ns: AtomicU64,
    pub reserved: AtomicU64,
    pub charge: [AtomicU64; MAX_DEVICES],
    pub context: [AtomicU64; MAX_DEVICES],
}

const HEADER_BYTES: usize = size_of::<Header>();
const DEVICE_BYTES: usize = size_of::<DeviceEntry>();
const PROCESS_BYTES: usize = size_of::<ProcessEntry>();

pub fn device_offset(slot: usize) -> usize {
    HEADER_BYTES + slot * DEVICE_BYTES
}

pub fn process_offset(slot: usize) -> usize {
    device_offset(MAX_DEVICES) + slot * PROCESS_BYTES
}

pub fn total_bytes() -> usize {
    process_offset(MAX_PROCESSES)
}

/// A layout size as the header stores it (a `u32`). Only called in `const` blocks, so
/// the assert is checked when the crate compiles.
#[expect(
    clippy::cast_possible_truncation,
    reason = "the assert fails the compile unless n fits a u32"
)]
const fn layout_u32(n: usize) -> u32 {
    assert!(
        n <= u32::MAX as usize,
        "a ledger layout size must fit a u32"
    );
    n as u32
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

fn put_str(buf: &mut [u8], at: usize, words: usize, s: &str) {
    let bytes = s.as_bytes();
    let n = bytes.len().min(words * 8 - 1);
    buf[at..at + n].copy_from_slice(&bytes[..n]);
}

/// The bytes of a new ledger made from `spec`.
pub fn initial_image(spec: &LedgerSpec) -> Vec<u8> {
    let mut buf = vec![0u8; total_bytes()];
    buf[0..8].copy_from_slice(&MAGIC);
    put_u32(
        &mut buf,
        std::mem::offset_of!(Header, version),
        FORMAT_VERSION,
    );
    put_u32(
        &mut buf,
        std::mem::offset_of!(Header, header_bytes),
        const { layout_u32(HEADER_BYTES) },
    );
    put_u64(
        &mut buf,
        std::mem::offset_of!(Header, total_bytes),
        total_bytes() as u64,
    );
    put_u32(
        &mut buf,
        std::mem::offset_of!(Header, max_devices),
        const { layout_u32(MAX_DEVICES) },
    );
    put_u32(
        &mut buf,
        std::mem::offset_of!(Header, max_processes),
        const { layout_u32(MAX_PROCESSES) },
    );
    put_u32(
        &mut buf,
        std::mem::offset_of!(Header, device_bytes),
        const { layout_u32(DEVICE_BYTES) },
    );
    put_u32(
        &mut buf,
        std::mem::offset_of!(Header, process_bytes),
        const { layout_u32(PROCESS_BYTES) },
    );
    put_u64(
        &mut buf,
        std::mem::offset_of!(Header, default_limit),
        spec.default_limit.unwrap_or(0),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    put_u64(&mut buf, std::mem::offset_of!(Header, created_unix), now);
    put_u32(
        &mut buf,
        std::mem::offset_of!(Header, creator_pid),
        std::process::id(),
    );
    put_str(
        &mut buf,
        std::mem::offset_of!(Header, name),
        NAME_WORDS,
        &spec.name,
    );
    if let Some((hard, burst)) = spec.compute {
        put_u64(
            &mut buf,
            std::mem::offset_of!(Header, compute_limits),
            crate::pack_compute(hard, burst),
        );
    }
    for (slot, (uuid, limit)) in spec.devices.iter().enumerate() {
        let at = device_offset(slot);
        put_u64(
            &mut buf,
            at + std::mem::offset_of!(DeviceEntry, state),
            crate::DEVICE_READY,
        );
        put_u64(
            &mut buf,
            at + std::mem::offset_of!(DeviceEntry, limit),
            *limit,
        );
        put_str(
            &mut buf,
            at + std::mem::offset_of!(DeviceEntry, uuid),
            UUID_WORDS,
            uuid,
        );
    }
    buf
}

fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or([0; 4]))
}

/// Checks that `map` holds a ledger this code understands.
pub fn validate(map: &[u8], path: &Path) -> Result<(), LedgerError> {
    if map.len() < 8 || map[0..8] != MAGIC {
        return Err(LedgerError::Foreign {
            path: path.to_path_buf(),
        });
    }
    let corrupt = |reason: String| LedgerError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if map.len() < HEADER_BYTES {
        return Err(corrupt(format!(
            "it is {} bytes, shorter than a header",
            map.len()
        )));
    }
    let version = get_u32(map, std::mem::offset_of!(Header, version));
    if version != FORMAT_VERSION {
        return Err(LedgerError::Version {
            path: path.to_path_buf(),
            found: version,
            expected: FORMAT_VERSION,
        });
    }
    let fields = [
        (
            "header size",
            get_u32(map, std::mem::offset_of!(Header, header_bytes)) as usize,
            HEADER_BYTES,
        ),
        (
            "device entries",
            get_u32(map, std::mem::offset_of!(Header, max_devices)) as usize,
            MAX_DEVICES,
        ),
        (
            "process entries",
            get_u32(map, std::mem::offset_of!(Header, max_processes)) as usize,
            MAX_PROCESSES,
        ),
        (
            "device entry size",
            get_u32(map, std::mem::offset_of!(Header, device_bytes)) as usize,
            DEVICE_BYTES,
        ),
        (
            "process entry size",
            get_u32(map, std::mem::offset_of!(Header, process_bytes)) as usize,
            PROCESS_BYTES,
        ),
    ];
    for (what, found, expected) in fields {
        if found != expected {
            return Err(corrupt(format!("{what} is {found}, expected {expected}")));
        }
    }
    if map.len() < total_bytes() {
        return Err(corrupt(format!(
            "it is {} bytes, expected {}",
            map.len(),
            total_bytes()
        )));
    }
    let high_water = get_u32(map, std::mem::offset_of!(Header, high_water)) as usize;
    if high_water > MAX_PROCESSES {
        return Err(corrupt(format!(
            "{high_water} process entries in use, at most {MAX_PROCESSES} exist"
        )));
    }
    Ok(())
}

/// Reads a NUL-terminated string stored in words.
pub fn read_str(words: &[AtomicU64]) -> String {
    let mut bytes = Vec::with_capacity(words.len() * 8);
    for w in words {
        bytes.extend_from_slice(&w.load(Relaxed).to_ne_bytes());
    }
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

pub fn read_uuid(entry: &DeviceEntry) -> String {
    read_str(&entry.uuid)
}

pub fn write_uuid(entry: &DeviceEntry, uuid: &str) {
    let mut bytes = [0u8; UUID_WORDS * 8];
    let n = uuid.len().min(bytes.len() - 1);
    bytes[..n].copy_from_slice(&uuid.as_bytes()[..n]);
    for (i, w) in entry.uuid.iter().enumerate() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
        w.store(u64::from_ne_bytes(word), Relaxed);
    }
}
