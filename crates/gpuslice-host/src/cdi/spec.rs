//! The CDI spec file format (Container Device Interface, <https://github.com/cncf-tags/container-device-interface>):
//! serde types with the field names of the specification, and reading and writing the
//! file. Only the fields gpuslice writes are modelled; reading ignores fields it does not
//! know, so `gpuslice cdi list` reads specs of later versions too.
//!
//! Writing is atomic: the JSON goes to a hidden temporary file in the same folder (whose
//! name does not end in `.json`, so a runtime scanning the folder never reads it), is
//! synced, given mode 0644, and renamed over the spec.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::CdiError;

/// A CDI spec: a kind (`vendor/class`) and the devices of that kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// The version of the CDI specification the file follows.
    #[serde(rename = "cdiVersion")]
    pub cdi_version: String,
    /// `vendor/class`, e.g. `gpuslice.io/slice`.
    pub kind: String,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The devices.
    pub devices: Vec<Device>,
    /// Edits applied once when any device of the spec is injected.
    #[serde(
        rename = "containerEdits",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub container_edits: Option<ContainerEdits>,
}

/// One device of a spec; `kind=name` is its fully qualified name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The device's name within its kind.
    pub name: String,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// What injecting the device does to a container.
    #[serde(rename = "containerEdits")]
    pub container_edits: ContainerEdits,
}

/// Changes to a container's OCI runtime configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerEdits {
    /// `NAME=value` entries for the process environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Device nodes to create (and allow in the device cgroup).
    #[serde(rename = "deviceNodes", default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
    /// Mounts to add.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// OCI hooks to add.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<Hook>,
}

/// A device node. Without `type`, `major` and `minor` the runtime reads them from the
/// host's node (`hostPath`, else `path`) when the container is created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNode {
    /// Path of the node in the container.
    pub path: String,
    /// Path of the node on the host, when it differs from `path`.
    #[serde(rename = "hostPath", default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    /// `c`, `b`, `u` or `p`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    /// Major number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    /// Minor number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
    /// Cgroup permissions (`rwm` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
}

/// A mount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// The source on the host.
    #[serde(rename = "hostPath")]
    pub host_path: String,
    /// Where it appears in the container.
    #[serde(rename = "containerPath")]
    pub container_path: String,
    /// Mount options (`ro`, `bind`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// Mount type (`bind`).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub mount_type: Option<String>,
}

/// An OCI hook.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    /// `createContainer`, `startContainer`, ...
    #[serde(rename = "hookName")]
    pub hook_name: String,
    /// The program (a host path).
    pub path: String,
    /// Its arguments, the program name first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Its environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
}

impl Spec {
    /// The fully qualified names of the devices (`kind=name`), in file order.
    pub fn qualified_names(&self) -> Vec<String> {
        self.devices
            .iter()
            .map(|d| format!("{}={}", self.kind, d.name))
            .collect()
    }

    /// The spec as the file holds it: pretty JSON with a final newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a spec always serialises");
        text.push('\n');
        text
    }

    /// Reads a spec file.
    pub fn read(path: &Path) -> Result<Self, CdiError> {
        let text = fs::read_to_string(path).map_err(|source| CdiError::Io {
            path: path.to_path_buf(),
            what: "reading the CDI spec",
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| CdiError::BadSpecFile {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Writes `text` to `path` atomically with mode `mode`: the file is either the old one or
/// completely the new one, never half written.
pub fn write_atomic(path: &Path, text: &str, mode: u32) -> Result<(), CdiError> {
    write_bytes_atomic(path, text.as_bytes(), mode)
}

/// [`write_atomic`] for any bytes.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CdiError> {
    let io = |what, source| CdiError::Io {
        path: path.to_path_buf(),
        what,
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Hidden, and not ending in .json/.yaml: spec scanners skip it.
    let tmp: PathBuf = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| io("creating a temporary file next to it", e))?;
        // The umask may have taken bits away from `mode`; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| io("setting the mode", e))?;
        file.write_all(bytes).map_err(|e| io("writing", e))?;
        file.sync_all().map_err(|e| io("syncing", e))?;
        drop(file);
        fs::rename(&tmp, path).map_err(|e| io("renaming the temporary file over it", e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn sample() -> Spec {
        Spec {
            cdi_version: "0.6.0".into(),
            kind: "gpuslice.io/slice".into(),
            annotations: BTreeMap::new(),
            devices: vec![Device {
                name: "a".into(),
                annotations: BTreeMap::new(),
                container_edits: ContainerEdits {
                    env: vec!["A=1".into()],
                    device_nodes: vec![DeviceNode {
                        path: "/dev/nvidia0".into(),
                        host_path: Some("/host/dev/nvidia0".into()),
                        ..DeviceNode::default()
                    }],
                    mounts: vec![Mount {
                        host_path: "/h".into(),
                        container_path: "/c".into(),
                        options: vec!["ro".into(), "bind".into()],
                        mount_type: Some("bind".into()),
                    }],
                    hooks: vec![],
                },
            }],
            container_edits: None,
        }
    }

    #[test]
    fn field_names_are_the_specifications() {
        let value: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        assert_eq!(value["cdiVersion"], "0.6.0");
        assert_eq!(value["kind"], "gpuslice.io/slice");
        let edits = &value["devices"][0]["containerEdits"];
        assert_eq!(edits["env"][0], "A=1");
        assert_eq!(edits["deviceNodes"][0]["path"], "/dev/nvidia0");
        assert_eq!(edits["deviceNodes"][0]["hostPath"], "/host/dev/nvidia0");
        assert_eq!(edits["mounts"][0]["hostPath"], "/h");
        assert_eq!(edits["mounts"][0]["containerPath"], "/c");
        assert_eq!(edits["mounts"][0]["type"], "bind");
        // Empty and absent parts are left out rather than written as null or [].
        assert!(edits.get("hooks").is_none());
        assert!(edits["deviceNodes"][0].get("major").is_none());
        assert!(value.get("containerEdits").is_none());
        assert!(value.get("annotations").is_none());
    }

    #[test]
    fn written_specs_read_back_and_replace_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        write_atomic(&path, "old", 0o600).unwrap();
        let spec = sample();
        write_atomic(&path, &spec.to_json(), 0o644).unwrap();
        assert_eq!(Spec::read(&path).unwrap(), spec);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o644);
        assert_eq!(spec.qualified_names(), ["gpuslice.io/slice=a"]);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn unreadable_specs_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        fs::write(&path, "{ not json").unwrap();
        let msg = Spec::read(&path).unwrap_err().to_string();
        assert!(msg.contains("bad.json"), "{msg}");
        let msg = Spec::read(&dir.path().join("none.json"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("none.json"), "{msg}");
    }

    #[test]
    fn writing_into_a_missing_folder_fails_naming_the_file() {
        let msg = write_atomic(Path::new("/nonexistent-gpuslice/x.json"), "x", 0o644)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("/nonexistent-gpuslice/x.json"), "{msg}");
    }
}
