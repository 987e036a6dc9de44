//! `gpuslice node --dry-run`: the inventory a node would advertise, as text, for a person
//! checking a node before installing (resources, device IDs, slices per GPU).

use std::fmt::Write;

use gpuslice_config::{format_size, human_size};

use crate::NodeError;
use crate::config::NodeConfig;
use crate::inventory::{GpuInventory, Inventory};

/// The inventory of `node` under `config`, from the GPUs `gpus` lists now.
pub fn dry_run(
    config: &NodeConfig,
    node: &str,
    gpus: &dyn GpuInventory,
) -> Result<String, NodeError> {
    let settings = config.for_node(node)?;
    let inventory = Inventory::build(
        &settings,
        gpus.gpus()
            .map_err(crate::inventory::InventoryError::from)?,
    )?;
    Ok(render(node, config.origin(), &inventory))
}

/// Renders an inventory.
pub fn render(node: &str, origin: &str, inventory: &Inventory) -> String {
    let settings = inventory.settings();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {node} (config {origin}): {} GPU(s) offered, reserve {} per GPU, preferred allocation: {}",
        inventory.gpus().len(),
        format_size(settings.reserve),
        settings.policy
    );
    let _ = writeln!(out, "\nresources:");
    for r in inventory.resources() {
        let mut sizes: Vec<String> = r.slices.iter().map(|s| human_size(s.memory)).collect();
        sizes.dedup();
        let compute = r.slices.first().and_then(|s| s.compute);
        let _ = writeln!(
            out,
            "  {:<32} {:>3} device(s), {} each{}",
            r.name,
            r.slices.len(),
            sizes.join(" / "),
            compute.map_or(String::new(), |c| format!(", {c}% compute")),
        );
    }
    for gpu in inventory.gpus() {
        let _ = writeln!(
            out,
            "\nGPU {} {} {}, {} ({}):",
            gpu.index,
            gpu.uuid,
            gpu.name,
            human_size(gpu.memory),
            gpu.health
        );
        let mut used = 0u64;
        let mut compute = 0u32;
        for r in inventory.resources() {
            for s in r.slices.iter().filter(|s| s.gpu_uuid == gpu.uuid) {
                used += s.memory;
                compute += s.compute.unwrap_or(0);
                let _ = writeln!(
                    out,
                    "  {:<60} {:>9}{}",
                    s.id.as_str(),
                    human_size(s.memory),
                    s.compute
                        .map_or(String::new(), |c| format!("  {c:>3}% compute")),
                );
            }
        }
        let left = gpu
            .memory
            .saturating_sub(settings.reserve)
            .saturating_sub(used);
        let _ = writeln!(
            out,
            "  slices: {} of memory, {}% of compute; unassigned: {}",
            human_size(used),
            compute,
            human_size(left)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{GpuHealth, GpuInfo, StaticGpus};

    #[test]
    fn shows_resources_ids_and_slices_per_gpu() {
        let config = NodeConfig::from_yaml(
            "default:\n  profiles:\n    - {name: 8g-30, memory: 8GiB, compute: 30, count: 2}\n    - {name: 4g-40, memory: 4GiB, compute: 40}\n",
            "node.yaml",
        )
        .unwrap();
        let gpus = StaticGpus::new(vec![GpuInfo {
            uuid: "GPU-5d1f0000-1111-2222-3333-444455556666".into(),
            index: 0,
            name: "NVIDIA H200".into(),
            memory: 141 << 30,
            health: GpuHealth::Healthy,
        }]);
        let text = dry_run(&config, "gpu-1", &gpus).unwrap();
        for want in [
            "node gpu-1 (config node.yaml): 1 GPU(s) offered, reserve 1GiB per GPU, preferred allocation: pack",
            "gpuslice.io/slice-8g-30",
            "2 device(s), 8GiB each, 30% compute",
            "GPU 0 GPU-5d1f0000-1111-2222-3333-444455556666 NVIDIA H200, 141GiB (Healthy):",
            "GPU-5d1f0000-1111-2222-3333-444455556666::8g-30-1",
            "GPU-5d1f0000-1111-2222-3333-444455556666::4g-40-0",
            "slices: 20GiB of memory, 100% of compute; unassigned: 120GiB",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        gpus.fail(Some("NVML: driver not loaded"));
        let e = dry_run(&config, "gpu-1", &gpus).unwrap_err().to_string();
        assert!(e.contains("driver not loaded"), "{e}");
    }
}
