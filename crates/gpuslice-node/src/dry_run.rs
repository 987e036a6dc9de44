//! `gpuslice node --dry-run`: what a node would offer, as text, for a person checking a
//! node before installing: its mode and which GPUs go which way, the device plugins'
//! inventory (resources, device IDs, slices per GPU) and the ResourceSlice the DRA
//! driver would publish (as YAML). It asks no API server, so for mode `auto` it shows
//! both outcomes.

use std::fmt::Write;

use gpuslice_config::{format_size, human_size};

use crate::NodeError;
use crate::config::{GpuSelection, Mode, NodeConfig};
use crate::dra::publish::resource_slice;
use crate::inventory::{GpuInfo, GpuInventory, Inventory};
use crate::modes::{Decision, assign};

/// What `node` would offer under `config`, from the GPUs `gpus` lists now;
/// `driver_version` is published as the devices' `driverVersion`.
pub fn dry_run(
    config: &NodeConfig,
    node: &str,
    gpus: &dyn GpuInventory,
    driver_version: Option<&str>,
) -> Result<String, NodeError> {
    let settings = config.for_node(node)?;
    let listed = gpus
        .gpus()
        .map_err(crate::inventory::InventoryError::from)?;
    let mut out = String::new();
    let show = |decision: Decision, out: &mut String| -> Result<(), NodeError> {
        let assigned = assign(&settings, decision, listed.clone())?;
        let only = |uuids: &std::collections::BTreeSet<String>| -> Vec<GpuInfo> {
            listed
                .iter()
                .filter(|g| uuids.contains(&gpuslice_config::canonical_uuid(&g.uuid)))
                .cloned()
                .collect()
        };
        if !assigned.device_plugin.is_empty() {
            let mut dp = settings.clone();
            dp.gpus = GpuSelection::All;
            let inventory = Inventory::build(&dp, only(&assigned.device_plugin))?;
            let _ = writeln!(out, "device plugins:\n");
            out.push_str(&render(node, config.origin(), &inventory));
        }
        if !assigned.dra.is_empty() {
            let slice = resource_slice(
                node,
                &only(&assigned.dra),
                settings.reserve,
                driver_version,
                None,
                1,
            );
            let yaml = serde_yaml_ng::to_string(&slice)
                .unwrap_or_else(|e| format!("# cannot render the ResourceSlice: {e}\n"));
            let _ = writeln!(
                out,
                "{}DRA (driver gpuslice.io): the ResourceSlice it would publish:\n---\n{yaml}",
                if assigned.device_plugin.is_empty() {
                    ""
                } else {
                    "\n"
                }
            );
        }
        Ok(())
    };
    let _ = writeln!(out, "node {node}: mode {}\n", settings.mode);
    match settings.mode {
        Mode::DevicePlugin => show(Decision::DevicePlugin, &mut out)?,
        Mode::Dra => show(Decision::Dra, &mut out)?,
        Mode::Both => show(Decision::Both, &mut out)?,
        Mode::Auto => {
            let _ = writeln!(
                out,
                "== if the cluster has DRA with consumable capacity (1.36+, or 1.34/1.35 with the DRAConsumableCapacity gate):\n"
            );
            show(Decision::Dra, &mut out)?;
            let _ = writeln!(out, "== otherwise:\n");
            if settings.slicing.is_some() {
                show(Decision::DevicePlugin, &mut out)?;
            } else {
                let _ = writeln!(
                    out,
                    "nothing: the config gives no profiles (nor split), and gpuslice node stops with an error"
                );
            }
        }
    }
    Ok(out)
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
    use crate::inventory::{GpuHealth, StaticGpus};

    fn h200(index: u32) -> GpuInfo {
        GpuInfo {
            uuid: format!("GPU-5d1f000{index}-1111-2222-3333-444455556666"),
            index,
            name: "NVIDIA H200".into(),
            memory: 141 << 30,
            health: GpuHealth::Healthy,
        }
    }

    #[test]
    fn mode_both_shows_each_gpu_one_way_and_the_resource_slice_as_yaml() {
        let config = NodeConfig::from_yaml(
            "default:\n  mode: both\n  draGpus: [1]\n  profiles: [{name: 8g, memory: 8GiB}]\n",
            "node.yaml",
        )
        .unwrap();
        let gpus = StaticGpus::new(vec![h200(0), h200(1)]);
        let text = dry_run(&config, "gpu-1", &gpus, Some("580.95.05")).unwrap();
        let (plugins, dra) = text.split_once("DRA (driver gpuslice.io)").unwrap();
        assert!(
            plugins.contains("GPU-5d1f0000-1111-2222-3333-444455556666::8g-0"),
            "{text}"
        );
        assert!(!plugins.contains("GPU-5d1f0001"), "{text}");
        let yaml = dra.split_once("---\n").unwrap().1;
        let slice: serde_json::Value = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(slice["apiVersion"], "resource.k8s.io/v1");
        assert_eq!(slice["kind"], "ResourceSlice");
        assert_eq!(slice["metadata"]["name"], "gpu-1-gpuslice.io");
        let devices = slice["spec"]["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 1, "{yaml}");
        assert_eq!(devices[0]["name"], "gpu-1");
        assert_eq!(devices[0]["allowMultipleAllocations"], true);
        assert_eq!(
            devices[0]["attributes"]["uuid"]["string"],
            "GPU-5d1f0001-1111-2222-3333-444455556666"
        );
        assert_eq!(
            devices[0]["attributes"]["driverVersion"]["version"],
            "580.95.5"
        );
        assert_eq!(devices[0]["capacity"]["memory"]["value"], "140Gi");
        assert_eq!(devices[0]["capacity"]["compute"]["value"], "100");
    }

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
        let text = dry_run(&config, "gpu-1", &gpus, None).unwrap();
        for want in [
            "node gpu-1: mode auto",
            "== otherwise:",
            "DRA (driver gpuslice.io): the ResourceSlice it would publish:",
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
        let e = dry_run(&config, "gpu-1", &gpus, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("driver not loaded"), "{e}");
    }
}
