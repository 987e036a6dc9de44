//! The simulated machine's device list as configured by the environment (`FAKE_GPU_COUNT`,
//! `FAKE_GPU_MEMORY`, `FAKE_GPU_UUIDS`, `FAKE_GPU_NAME`), UUID parsing, and the
//! `CUDA_VISIBLE_DEVICES` filter of the CUDA driver.

use crate::size::{GIB, env_size};

/// Most devices the simulation supports.
pub const MAX_DEVICES: usize = 16;
/// Default name of every device.
pub const DEFAULT_NAME: &str = "NVIDIA H100 80GB HBM3 (fake)";
/// Default memory of every device.
pub const DEFAULT_MEMORY: u64 = 80 * GIB;

/// One simulated device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Physical index (NVML order).
    pub index: usize,
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub uuid: String,
    /// The 16 raw bytes of `uuid`.
    pub uuid_bytes: [u8; 16],
    /// Marketing name.
    pub name: String,
    /// Total memory in bytes.
    pub memory: u64,
}

impl DeviceConfig {
    /// PCI bus number of the device (index + 1, domain 0, device 0, function 0).
    pub fn pci_bus(&self) -> u32 {
        // index < MAX_DEVICES (the parser's bound), so this never saturates.
        u32::try_from(self.index + 1).unwrap_or(u32::MAX)
    }
}

/// All simulated devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuConfig {
    /// The devices in physical order.
    pub devices: Vec<DeviceConfig>,
}

/// The default UUID of device `index`.
pub fn default_uuid(index: usize) -> String {
    format!("GPU-00000000-0000-4000-8000-{index:012x}")
}

/// Parses `GPU-11111111-2222-3333-4444-555555555555` (the `GPU-` prefix is optional) into its
/// 16 bytes.
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let text = text.trim();
    let body = text
        .strip_prefix("GPU-")
        .or_else(|| text.strip_prefix("gpu-"))
        .unwrap_or(text);
    let groups: Vec<&str> = body.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lens != [8, 4, 4, 4, 12] {
        return None;
    }
    let hex: String = groups.concat();
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = hex.get(2 * i..2 * i + 2)?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// Formats 16 UUID bytes as `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn format_uuid(bytes: &[u8; 16]) -> String {
    let h: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

impl GpuConfig {
    /// Builds the configuration from explicit values; `uuids` entries that are missing or do
    /// not parse are replaced by the default UUID of their index.
    pub fn new(count: usize, memory: u64, uuids: &[&str], name: &str) -> Self {
        let count = count.min(MAX_DEVICES);
        let devices = (0..count)
            .map(|index| {
                let parsed = uuids.get(index).and_then(|u| parse_uuid(u));
                let uuid_bytes =
                    parsed.unwrap_or_else(|| parse_uuid(&default_uuid(index)).unwrap_or([0; 16]));
                DeviceConfig {
                    index,
                    uuid: format_uuid(&uuid_bytes),
                    uuid_bytes,
                    name: name.to_string(),
                    memory,
                }
            })
            .collect();
        Self { devices }
    }

    /// Reads `FAKE_GPU_COUNT` (default 1, at most 16), `FAKE_GPU_MEMORY` (default 80GiB),
    /// `FAKE_GPU_UUIDS` (comma list) and `FAKE_GPU_NAME`.
    pub fn from_env() -> Self {
        let count = match std::env::var("FAKE_GPU_COUNT") {
            Ok(v) => v.trim().parse::<usize>().unwrap_or_else(|_| {
                eprintln!("fake-gpu: ignoring FAKE_GPU_COUNT={v:?}");
                1
            }),
            Err(_) => 1,
        };
        let memory = env_size("FAKE_GPU_MEMORY", DEFAULT_MEMORY);
        let uuids = std::env::var("FAKE_GPU_UUIDS").unwrap_or_default();
        let uuids: Vec<&str> = uuids
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let name = std::env::var("FAKE_GPU_NAME").unwrap_or_else(|_| DEFAULT_NAME.to_string());
        Self::new(count, memory, &uuids, &name)
    }

    /// Number of devices.
    pub fn count(&self) -> usize {
        self.devices.len()
    }

    /// Physical indices of the devices visible under `CUDA_VISIBLE_DEVICES = spec` (`None`:
    /// unset), in visible order. Entries are indices or (prefixes of) `GPU-` UUIDs; the list
    /// is cut at the first invalid, ambiguous or repeated entry, like the real driver.
    pub fn visible_devices(&self, spec: Option<&str>) -> Vec<usize> {
        let Some(spec) = spec else {
            return (0..self.count()).collect();
        };
        let mut out: Vec<usize> = Vec::new();
        for entry in spec.split(',') {
            let entry = entry.trim();
            let found = if !entry.is_empty() && entry.bytes().all(|b| b.is_ascii_digit()) {
                entry.parse::<usize>().ok().filter(|&i| i < self.count())
            } else if entry.len() > 4 && entry[..4].eq_ignore_ascii_case("GPU-") {
                let want = entry.to_ascii_lowercase();
                let mut hits = self
                    .devices
                    .iter()
                    .filter(|d| d.uuid.to_ascii_lowercase().starts_with(&want));
                match (hits.next(), hits.next()) {
                    (Some(d), None) => Some(d.index),
                    _ => None,
                }
            } else {
                None
            };
            match found {
                Some(i) if !out.contains(&i) => out.push(i),
                _ => break,
            }
        }
        out
    }

    /// [`Self::visible_devices`] for the process's own `CUDA_VISIBLE_DEVICES`.
    pub fn visible_from_env(&self) -> Vec<usize> {
        let spec = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        self.visible_devices(spec.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(n: usize) -> GpuConfig {
        GpuConfig::new(
            n,
            DEFAULT_MEMORY,
            &["GPU-11111111-2222-3333-4444-555555555555", "bogus"],
            DEFAULT_NAME,
        )
    }

    #[test]
    fn uuids() {
        let c = cfg(3);
        assert_eq!(
            c.devices[0].uuid,
            "GPU-11111111-2222-3333-4444-555555555555"
        );
        assert_eq!(
            c.devices[0].uuid_bytes,
            [
                0x11, 0x11, 0x11, 0x11, 0x22, 0x22, 0x33, 0x33, 0x44, 0x44, 0x55, 0x55, 0x55, 0x55,
                0x55, 0x55
            ]
        );
        assert_eq!(
            c.devices[1].uuid,
            "GPU-00000000-0000-4000-8000-000000000001"
        );
        assert_eq!(c.devices[2].uuid, default_uuid(2));
        assert_eq!(default_uuid(10), "GPU-00000000-0000-4000-8000-00000000000a");
        assert_eq!(parse_uuid("GPU-1234"), None);
        assert_eq!(parse_uuid("GPU-1111111g-2222-3333-4444-555555555555"), None);
        assert_eq!(c.devices[2].pci_bus(), 3);
    }

    #[test]
    fn visible_devices() {
        let c = cfg(4);
        assert_eq!(c.visible_devices(None), vec![0, 1, 2, 3]);
        assert_eq!(c.visible_devices(Some("")), Vec::<usize>::new());
        assert_eq!(c.visible_devices(Some("2,0")), vec![2, 0]);
        assert_eq!(c.visible_devices(Some("1,7,2")), vec![1]);
        assert_eq!(c.visible_devices(Some("1,1,2")), vec![1]);
        assert_eq!(c.visible_devices(Some("-1")), Vec::<usize>::new());
        assert_eq!(c.visible_devices(Some("GPU-1111,3")), vec![0, 3]);
        assert_eq!(
            c.visible_devices(Some("3,GPU-00000000-0000-4000-8000-000000000002")),
            vec![3, 2]
        );
        // Prefix shared by devices 1..3: ambiguous, so the list stops there.
        assert_eq!(c.visible_devices(Some("0,GPU-0000")), vec![0]);
        assert_eq!(c.visible_devices(Some("MIG-1,0")), Vec::<usize>::new());
    }
}
