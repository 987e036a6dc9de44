//! `fake-kubelet dra`: the cluster side of a DRA driver on one node. It starts the
//! library's [`FakeApiServer`] with the Node, writes a kubeconfig that points at it,
//! waits for the driver's registration socket in `<kubelet-dir>/plugins_registry`,
//! registers the driver as the kubelet's plugin watcher does ([`DraDriver::register`]),
//! waits for the node's ResourceSlice, then plays the scheduler and the kubelet: creates
//! each claim allocated a share of device `gpu-0` (a `shareID` of its own,
//! `consumedCapacity` from the flags) and calls `NodePrepareResources` with all of them
//! at once. At SIGTERM or SIGINT it calls `NodeUnprepareResources` for all of them.
//!
//! The JSON written: `{"<claim>": {"uid", "cdi_devices": [ids], "error": null | "..."}}`;
//! after unpreparing, `<out>.unprepared`: `{"<claim>": null | "<error>"}`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use k8s_openapi::api::resource::v1::ResourceClaim;
use kubelet_api::dra::v1;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{Deadline, FlowError, io_error, make_dir, with_suffix, write_atomically, write_json};
use crate::apiserver::{FakeApiServer, Share, allocated_claim};
use crate::dra::{DraDriver, claim};

/// The DRA driver's name.
pub const DRIVER: &str = "gpuslice.io";
/// The device every claim is allocated on.
pub const DEVICE: &str = "gpu-0";
/// The claims' namespace.
pub const NAMESPACE: &str = "default";
/// What the scheduler books of `compute` for a claim that did not ask for it (the
/// capacity's default).
pub const DEFAULT_COMPUTE: &str = "1";

/// Why a `--claim` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not NAME=MEMORY,COMPUTE (e.g. a=8Gi,30, or c=2Gi, for no compute): {why}")]
pub struct ClaimSpecError {
    /// The value given.
    pub value: String,
    /// What is wrong with it.
    pub why: String,
}

/// One `--claim NAME=MEMORY,COMPUTE`: a claim of `memory` (a Kubernetes quantity) and
/// `compute` percent of the GPU, or no compute request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimSpec {
    /// The claim's name.
    pub name: String,
    /// The memory, as a quantity (`8Gi`).
    pub memory: String,
    /// The compute share in percent, `None` when the claim does not ask for compute.
    pub compute: Option<u32>,
}

/// Whether `text` is a plain quantity: digits, an optional fraction, an optional binary
/// or decimal suffix.
fn is_quantity(text: &str) -> bool {
    const SUFFIXES: [&str; 13] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E", "",
    ];
    SUFFIXES.iter().any(|suffix| {
        text.strip_suffix(suffix).is_some_and(|number| {
            let (whole, fraction) = number.split_once('.').unwrap_or((number, "0"));
            !whole.is_empty()
                && whole.bytes().all(|b| b.is_ascii_digit())
                && !fraction.is_empty()
                && fraction.bytes().all(|b| b.is_ascii_digit())
        })
    })
}

/// Whether `name` is a DNS-1123 subdomain, as object names must be.
fn is_object_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
}

impl FromStr for ClaimSpec {
    type Err = ClaimSpecError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let refuse = |why: &str| ClaimSpecError {
            value: value.to_string(),
            why: why.to_string(),
        };
        let (name, rest) = value.split_once('=').ok_or_else(|| refuse("no '='"))?;
        let (memory, compute) = rest
            .split_once(',')
            .ok_or_else(|| refuse("no ',' between the memory and the compute share"))?;
        if !is_object_name(name) {
            return Err(refuse(&format!(
                "the name {name:?} is not a lower-case DNS name"
            )));
        }
        if !is_quantity(memory) {
            return Err(refuse(&format!(
                "the memory {memory:?} is not a quantity such as 8Gi or 1536Mi"
            )));
        }
        let compute = match compute {
            "" => None,
            c => match c.parse::<u32>() {
                Ok(p @ 1..=100) => Some(p),
                _ => {
                    return Err(refuse(&format!(
                        "the compute share {c:?} is not a percentage from 1 to 100"
                    )));
                }
            },
        };
        Ok(Self {
            name: name.to_string(),
            memory: memory.to_string(),
            compute,
        })
    }
}

impl ClaimSpec {
    /// The claim as the scheduler leaves it ([`allocated_claim`]): one request asking
    /// for memory (and compute, if given), allocated one share of [`DEVICE`] in `pool`
    /// (the node), consuming the memory and the compute share, or the capacity's default
    /// compute when it did not ask for any.
    pub fn resource_claim(&self, pool: &str) -> ResourceClaim {
        let share = Share {
            device: DEVICE.into(),
            memory: Some(self.memory.clone()),
            compute: Some(
                self.compute
                    .map_or(DEFAULT_COMPUTE.to_string(), |c| c.to_string()),
            ),
        };
        allocated_claim(
            NAMESPACE,
            &self.name,
            pool,
            &[share],
            self.compute.is_some(),
        )
    }
}

/// What `fake-kubelet dra` was asked to do.
#[derive(Debug, Clone)]
pub struct DraFlow {
    /// The kubelet's folder (`plugins_registry/` under it).
    pub kubelet_dir: PathBuf,
    /// The node's name.
    pub node: String,
    /// Where the kubeconfig of the fake API server goes.
    pub kubeconfig_out: PathBuf,
    /// The claims.
    pub claims: Vec<ClaimSpec>,
    /// Where the JSON goes.
    pub out: PathBuf,
    /// How long each phase (setting up, unpreparing) may take.
    pub timeout: Duration,
}

impl DraFlow {
    fn check(&self) -> Result<(), FlowError> {
        if !is_object_name(&self.node) {
            return Err(FlowError::Usage(format!(
                "--node {:?} is not a lower-case DNS name",
                self.node
            )));
        }
        if self.claims.is_empty() {
            return Err(FlowError::Usage("give at least one --claim".into()));
        }
        let mut seen = BTreeSet::new();
        for c in &self.claims {
            if !seen.insert(&c.name) {
                return Err(FlowError::Usage(format!(
                    "--claim {:?} is given twice",
                    c.name
                )));
            }
        }
        Ok(())
    }
}

/// `NodeUnprepareResources` for `claims`; writes `<out>.unprepared`.
async fn unprepare(
    flow: &DraFlow,
    driver: &mut DraDriver,
    claims: &[(String, v1::Claim)],
) -> Result<(), FlowError> {
    let refs: Vec<v1::Claim> = claims.iter().map(|(_, c)| c.clone()).collect();
    let answer = tokio::time::timeout(flow.timeout, driver.unprepare(&refs))
        .await
        .map_err(|_| FlowError::Timeout {
            after: flow.timeout,
            what: "NodeUnprepareResources".into(),
        })?
        .map_err(|status| FlowError::Rpc {
            call: "NodeUnprepareResources".into(),
            status,
        })?;
    let mut out = serde_json::Map::new();
    for (name, c) in claims {
        let error = match answer.claims.get(&c.uid) {
            Some(r) if r.error.is_empty() => Value::Null,
            Some(r) => Value::String(r.error.clone()),
            None => Value::String("no answer for this claim".into()),
        };
        if let Value::String(e) = &error {
            eprintln!("fake-kubelet: unpreparing claim {name}: {e}");
        }
        out.insert(name.clone(), error);
    }
    let path = with_suffix(&flow.out, ".unprepared");
    write_json(&path, &Value::Object(out))?;
    println!("fake-kubelet: unprepared; wrote {}", path.display());
    Ok(())
}

/// Runs the flow: prepares, writes [`DraFlow::out`], waits for `stop`, unprepares.
pub async fn run(flow: &DraFlow, stop: CancellationToken) -> Result<(), FlowError> {
    flow.check()?;
    let deadline = Deadline::new(flow.timeout, stop.clone());
    let api = FakeApiServer::start()
        .await
        .map_err(io_error("starting the fake API server"))?;
    api.add_node(&flow.node);
    write_atomically(&flow.kubeconfig_out, &api.kubeconfig())?;
    println!(
        "fake-kubelet: API server at {}, node {}; kubeconfig in {}",
        api.url(),
        flow.node,
        flow.kubeconfig_out.display()
    );

    let registry = flow.kubelet_dir.join("plugins_registry");
    make_dir(&registry)?;
    let socket = registry.join(format!("{DRIVER}-reg.sock"));
    deadline
        .wait(&format!("{}", socket.display()), async {
            while !socket.exists() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await?;
    let mut driver = deadline
        .wait(
            "the DRA driver's registration",
            DraDriver::register(&registry, deadline.left()),
        )
        .await??;
    println!(
        "fake-kubelet: registered DRA driver {} (versions {:?}, endpoint {})",
        driver.info.name, driver.info.supported_versions, driver.info.endpoint
    );

    let slice_name = format!("{}-{DRIVER}", flow.node);
    deadline
        .wait(
            &format!("ResourceSlice {slice_name}"),
            api.wait_slice(&slice_name, deadline.left()),
        )
        .await?
        .ok_or_else(|| deadline.timeout(format!("ResourceSlice {slice_name}")))?;
    let published = api.slice_json(&slice_name).unwrap_or(Value::Null);
    println!("fake-kubelet: resourceslice {slice_name}: {published}");

    let claims: Vec<(String, v1::Claim)> = flow
        .claims
        .iter()
        .map(|spec| {
            let uid = api.put_claim(spec.resource_claim(&flow.node));
            (spec.name.clone(), claim(NAMESPACE, &spec.name, &uid))
        })
        .collect();
    let refs: Vec<v1::Claim> = claims.iter().map(|(_, c)| c.clone()).collect();
    let answer = deadline
        .wait("NodePrepareResources", driver.prepare(&refs))
        .await?
        .map_err(|status| FlowError::Rpc {
            call: "NodePrepareResources".into(),
            status,
        })?;
    let mut out = serde_json::Map::new();
    let mut failed = Vec::new();
    for (name, c) in &claims {
        let (cdi, error) = match answer.claims.get(&c.uid) {
            Some(r) => (
                r.devices
                    .iter()
                    .flat_map(|d| d.cdi_device_ids.iter().cloned())
                    .collect(),
                r.error.clone(),
            ),
            None => (Vec::new(), "no answer for this claim".to_string()),
        };
        if error.is_empty() {
            println!(
                "fake-kubelet: claim {name} ({}): CDI devices {cdi:?}",
                c.uid
            );
        } else {
            failed.push(format!("{name}: {error}"));
        }
        let error = if error.is_empty() {
            Value::Null
        } else {
            Value::String(error)
        };
        out.insert(
            name.clone(),
            json!({"uid": c.uid, "cdi_devices": cdi, "error": error}),
        );
    }
    write_json(&flow.out, &Value::Object(out))?;
    if !failed.is_empty() {
        // Leave nothing prepared behind; the claims' errors are what the run failed on.
        if let Err(e) = unprepare(flow, &mut driver, &claims).await {
            eprintln!("fake-kubelet: {e}");
        }
        return Err(FlowError::Claims(failed.join("; ")));
    }
    println!(
        "fake-kubelet: wrote {}; serving until SIGTERM or SIGINT",
        flow.out.display()
    );
    stop.cancelled().await;
    unprepare(flow, &mut driver, &claims).await?;
    drop(api);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_flags_parse() {
        assert_eq!(
            "a=8Gi,30".parse::<ClaimSpec>().unwrap(),
            ClaimSpec {
                name: "a".into(),
                memory: "8Gi".into(),
                compute: Some(30)
            }
        );
        assert_eq!("c=1.5Gi,".parse::<ClaimSpec>().unwrap().compute, None);
        for (bad, why) in [
            ("a", "no '='"),
            ("a=8Gi", "no ','"),
            ("=8Gi,30", "the name \"\""),
            ("A=8Gi,30", "the name \"A\""),
            ("a=lots,30", "the memory \"lots\""),
            ("a=8gi,30", "the memory \"8gi\""),
            ("a=8Gi,0", "the compute share \"0\""),
            ("a=8Gi,101", "the compute share \"101\""),
            ("a=8Gi,x", "the compute share \"x\""),
        ] {
            let e = bad.parse::<ClaimSpec>().unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("{bad:?} is not NAME=MEMORY,COMPUTE")) && e.contains(why),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn the_claim_is_allocated_as_the_scheduler_would() {
        let spec: ClaimSpec = "b=4Gi,".parse().unwrap();
        let c = serde_json::to_value(spec.resource_claim("h200")).unwrap();
        assert_eq!(c["metadata"]["namespace"], "default");
        let request = &c["spec"]["devices"]["requests"][0];
        assert_eq!(request["exactly"]["deviceClassName"], "gpuslice.io");
        // It did not ask for compute: the driver must give it no compute limit.
        assert!(
            request["exactly"]["capacity"]["requests"]
                .get("compute")
                .is_none()
        );
        let result = &c["status"]["allocation"]["devices"]["results"][0];
        assert_eq!(
            result,
            &json!({"driver": "gpuslice.io", "pool": "h200", "device": "gpu-0",
                    "request": "gpu", "shareID": "b-share-0",
                    "consumedCapacity": {"memory": "4Gi", "compute": "1"}})
        );
        let spec: ClaimSpec = "a=8Gi,30".parse().unwrap();
        let c = serde_json::to_value(spec.resource_claim("h200")).unwrap();
        let request = &c["spec"]["devices"]["requests"][0];
        assert!(
            request["exactly"]["capacity"]["requests"]
                .get("compute")
                .is_some()
        );
        let result = &c["status"]["allocation"]["devices"]["results"][0];
        assert_eq!(
            result["consumedCapacity"],
            json!({"memory": "8Gi", "compute": "30"})
        );
    }
}
