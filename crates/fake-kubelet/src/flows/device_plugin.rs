//! `fake-kubelet device-plugin`: serves the kubelet's `Registration` on
//! `<kubelet-dir>/device-plugins/kubelet.sock` (the library's [`FakeKubelet`]), waits
//! until the plugin of each wanted resource has registered and listed a healthy device,
//! then for each resource, as the kubelet's device manager does for a pod of one
//! container asking for one device: `GetPreferredAllocation` (when the plugin offers
//! it), `Allocate`, `PreStartContainer`. It writes what `Allocate` answered as JSON, and
//! keeps serving (the plugins' `ListAndWatch` streams open) until stopped.
//!
//! The JSON, by resource:
//! `{"<resource>": {"device_id", "cdi_devices": [names], "envs": {..}, "mounts":
//! [{container_path, host_path, read_only}], "devices": [{container_path, host_path,
//! permissions}]}}`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use kubelet_api::deviceplugin::v1beta1::{ContainerAllocateResponse, HEALTHY};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{Deadline, FlowError, make_dir, write_json};
use crate::{FakeKubelet, FakeKubeletError, Registered, is_extended_resource_name};

/// What `fake-kubelet device-plugin` was asked to do.
#[derive(Debug, Clone)]
pub struct DevicePluginFlow {
    /// The kubelet's folder; the sockets are in its `device-plugins/`.
    pub kubelet_dir: PathBuf,
    /// The extended resources to allocate one device of each, in order.
    pub resources: Vec<String>,
    /// Where the JSON goes.
    pub out: PathBuf,
    /// How long registration and allocation may take in all.
    pub timeout: Duration,
}

impl DevicePluginFlow {
    fn check(&self) -> Result<(), FlowError> {
        if self.resources.is_empty() {
            return Err(FlowError::Usage("give at least one --resource".into()));
        }
        let mut seen = BTreeSet::new();
        for r in &self.resources {
            if !is_extended_resource_name(r) {
                return Err(FlowError::Usage(format!(
                    "--resource {r:?} is not an extended resource name (domain/name, e.g. \
                     gpuslice.io/slice-8g-30)"
                )));
            }
            if !seen.insert(r) {
                return Err(FlowError::Usage(format!("--resource {r:?} is given twice")));
            }
        }
        Ok(())
    }
}

/// What `Allocate` answered for one container, as the JSON has it.
pub fn allocation_json(device_id: &str, c: &ContainerAllocateResponse) -> Value {
    let mounts: Vec<Value> = c
        .mounts
        .iter()
        .map(|m| {
            json!({"container_path": m.container_path, "host_path": m.host_path,
                   "read_only": m.read_only})
        })
        .collect();
    let devices: Vec<Value> = c
        .devices
        .iter()
        .map(|d| {
            json!({"container_path": d.container_path, "host_path": d.host_path,
                   "permissions": d.permissions})
        })
        .collect();
    let envs: BTreeMap<&String, &String> = c.envs.iter().collect();
    json!({
        "device_id": device_id,
        "cdi_devices": c.cdi_devices.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        "envs": envs,
        "mounts": mounts,
        "devices": devices,
    })
}

/// Waits for the plugins of `wanted` to register; keeps the others too (their
/// `ListAndWatch` streams stay open while they are held).
async fn registrations(
    kubelet: &FakeKubelet,
    wanted: &[String],
    deadline: &Deadline,
) -> Result<(BTreeMap<String, Registered>, Vec<Registered>), FlowError> {
    let mut mine = BTreeMap::new();
    let mut others = Vec::new();
    loop {
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|r| !mine.contains_key(*r))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            return Ok((mine, others));
        }
        let what = format!("the device plugins of {} to register", missing.join(", "));
        match deadline
            .wait(&what, kubelet.next_registration(deadline.left()))
            .await?
        {
            Ok(r) if wanted.iter().any(|w| w == r.resource()) => {
                println!(
                    "fake-kubelet: {} registered on {}",
                    r.resource(),
                    r.endpoint.display()
                );
                // A plugin that registers again replaces its earlier registration.
                mine.insert(r.resource().to_string(), r);
            }
            Ok(r) => {
                println!("fake-kubelet: {} registered (not asked for)", r.resource());
                others.push(r);
            }
            Err(FakeKubeletError::Refused(why)) => {
                eprintln!("fake-kubelet: refused a registration: {why}");
            }
            Err(FakeKubeletError::Timeout(..)) => return Err(deadline.timeout(what)),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Allocates one device of `plugin`'s resource to one container, as the kubelet does.
async fn allocate_one(plugin: &mut Registered, deadline: &Deadline) -> Result<Value, FlowError> {
    let resource = plugin.resource().to_string();
    let listed = deadline
        .wait(
            &format!("a healthy device of {resource}"),
            plugin.wait_devices(deadline.left(), "a healthy device", |d| {
                d.iter().any(|d| d.health == HEALTHY)
            }),
        )
        .await??;
    let mut healthy: Vec<&str> = listed
        .iter()
        .filter(|d| d.health == HEALTHY)
        .map(|d| d.id.as_str())
        .collect();
    healthy.sort_unstable();
    let rpc = |call: &str| {
        let call = format!("{call} of {resource}");
        move |status| FlowError::Rpc { call, status }
    };
    let offers_preferred = plugin
        .request
        .options
        .as_ref()
        .is_some_and(|o| o.get_preferred_allocation_available);
    let device_id = if offers_preferred {
        let picked = deadline
            .wait(
                &format!("GetPreferredAllocation of {resource}"),
                plugin.preferred(&healthy, &[], 1),
            )
            .await?
            .map_err(rpc("GetPreferredAllocation"))?;
        match picked.as_slice() {
            [one] if healthy.contains(&one.as_str()) => one.clone(),
            other => {
                return Err(FlowError::Answer(format!(
                    "GetPreferredAllocation of {resource} picked {other:?}, not one of the \
                     healthy devices offered {healthy:?}"
                )));
            }
        }
    } else {
        healthy[0].to_string()
    };
    let response = deadline
        .wait(
            &format!("Allocate of {resource}"),
            plugin.allocate(&[&[device_id.as_str()]]),
        )
        .await?
        .map_err(rpc("Allocate"))?;
    let [container] = response.container_responses.as_slice() else {
        return Err(FlowError::Answer(format!(
            "Allocate of {resource} for one container answered {} containers",
            response.container_responses.len()
        )));
    };
    deadline
        .wait(
            &format!("PreStartContainer of {resource}"),
            plugin.pre_start(&[device_id.as_str()]),
        )
        .await?
        .map_err(rpc("PreStartContainer"))?;
    let cdi: Vec<&str> = container
        .cdi_devices
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    println!(
        "fake-kubelet: {resource}: allocated {device_id}; CDI devices {cdi:?}; {} variables, \
         {} mounts, {} device nodes",
        container.envs.len(),
        container.mounts.len(),
        container.devices.len()
    );
    Ok(allocation_json(&device_id, container))
}

/// Runs the flow: allocates, writes [`DevicePluginFlow::out`], then serves until `stop`.
pub async fn run(flow: &DevicePluginFlow, stop: CancellationToken) -> Result<(), FlowError> {
    flow.check()?;
    let dir = flow.kubelet_dir.join("device-plugins");
    make_dir(&dir)?;
    let deadline = Deadline::new(flow.timeout, stop.clone());
    let mut kubelet = FakeKubelet::start(&dir).await?;
    println!(
        "fake-kubelet: serving Registration on {}",
        kubelet.socket().display()
    );
    let (mut mine, others) = registrations(&kubelet, &flow.resources, &deadline).await?;
    let mut out = serde_json::Map::new();
    for resource in &flow.resources {
        let plugin = mine.get_mut(resource).ok_or_else(|| {
            FlowError::Answer(format!("the device plugin of {resource} did not register"))
        })?;
        out.insert(resource.clone(), allocate_one(plugin, &deadline).await?);
    }
    write_json(&flow.out, &Value::Object(out))?;
    println!(
        "fake-kubelet: wrote {}; serving until SIGTERM or SIGINT",
        flow.out.display()
    );
    stop.cancelled().await;
    drop(others);
    drop(mine);
    kubelet.stop().await;
    println!("fake-kubelet: stopped");
    Ok(())
}
