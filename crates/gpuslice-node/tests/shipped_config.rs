//! The node config that `kubectl apply -k deploy/kubernetes` installs (the ConfigMap's
//! `config.yaml`) is one `gpuslice node` accepts, and cuts an 80 GiB GPU into slices
//! without oversubscribing it.

use std::path::Path;

use gpuslice_node::NodeConfig;
use gpuslice_node::inventory::{GpuHealth, GpuInfo, Inventory};

#[test]
fn the_config_map_of_the_manifests_is_a_valid_node_config() {
    let manifest =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes/base/node-config.yaml");
    let text = std::fs::read_to_string(&manifest).expect("deploy/kubernetes/base/node-config.yaml");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("YAML");
    let config_yaml = doc["data"]["config.yaml"]
        .as_str()
        .expect("the ConfigMap has data.config.yaml");
    let config = NodeConfig::from_yaml(config_yaml, "deploy/kubernetes/base/node-config.yaml")
        .unwrap_or_else(|e| panic!("{e}"));
    let settings = config
        .for_node("any-node")
        .unwrap_or_else(|e| panic!("{e}"));
    // An 80 GiB GPU, the smallest that the shipped profiles are meant for.
    let gpu = GpuInfo {
        uuid: "GPU-00000000-0000-0000-0000-000000000001".into(),
        index: 0,
        name: "NVIDIA A100-SXM4-80GB".into(),
        memory: 80 << 30,
        health: GpuHealth::Healthy,
    };
    let inventory = Inventory::build(&settings, vec![gpu]).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = inventory
        .resources()
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert!(names.contains(&"gpuslice.io/slice-8g-30"), "{names:?}");
    assert!(inventory.resources().iter().all(|r| !r.slices.is_empty()));
}
