//! CDI specs checked and applied by the `container-device-interface` crate, the Rust port
//! of the library Podman, Docker and containerd use. It owns two things:
//!
//! * checking a spec the way a runtime will read it: [`read_spec`] parses the file, checks
//!   it against the CDI JSON schema the crate carries and validates names, versions and
//!   edits; [`load_cache`] loads spec folders like a runtime does;
//! * applying CDI devices to an OCI runtime `config.json` ([`inject`], [`inject_json`]),
//!   which `gpuslice-cdi-inject` does for runtimes without CDI support (plain `crun`).
//!
//! The crate is heavy (a JSON schema validator and its dependencies), so it lives here and
//! not in the `gpuslice` binary.

use std::path::{Path, PathBuf};

use container_device_interface::cache::Cache;
use container_device_interface::spec::Spec as CdiSpec;
use container_device_interface::spec_dirs::with_spec_dirs;
use oci_spec::runtime::Spec as OciSpec;

/// The CDI kind of gpuslice's slices.
pub const SLICE_KIND: &str = "gpuslice.io/slice";
/// The folders runtimes read specs from, lowest priority first.
pub const DEFAULT_SPEC_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum CdiToolsError {
    /// A spec file that a runtime would refuse.
    #[error("{path}: {message}")]
    Spec {
        /// The file.
        path: PathBuf,
        /// Why, with the crate's chain of causes.
        message: String,
    },
    /// The spec folders could not be loaded.
    #[error("loading the CDI specs in {dirs}: {message}")]
    Load {
        /// The folders.
        dirs: String,
        /// Why.
        message: String,
    },
    /// A spec folder path that is not UTF-8.
    #[error("--spec-dir {0:?} is not valid UTF-8")]
    DirNotUtf8(PathBuf),
    /// A device name that is not one.
    #[error(
        "--device {0:?} is not a CDI device name (expected VENDOR/CLASS=NAME, e.g. gpuslice.io/slice=gpu0-8g, or a slice name alone); `gpuslice cdi list` prints the slices this host offers"
    )]
    BadDeviceName(String),
    /// No device was asked for.
    #[error("no --device given: name at least one CDI device to inject")]
    NoDevices,
    /// Devices that no spec offers.
    #[error(
        "no CDI spec in {dirs} offers {missing}; the specs there offer: {known} (`gpuslice cdi list` prints gpuslice's slices; `gpuslice doctor` checks the specs)"
    )]
    Unresolved {
        /// The devices.
        missing: String,
        /// The folders.
        dirs: String,
        /// What is offered.
        known: String,
    },
    /// Two slices for one container.
    #[error(
        "{first} and {second} are both gpuslice slices, but a container gets one slice (their limits and ledgers would overwrite each other); define one slice over several GPUs instead"
    )]
    TwoSlices {
        /// One.
        first: String,
        /// The other.
        second: String,
    },
    /// The runtime config does not parse.
    #[error("the OCI runtime config is not valid: {0}")]
    Config(#[source] serde_json::Error),
    /// The crate refused to apply the edits.
    #[error("injecting {devices}: {message}")]
    Inject {
        /// The devices.
        devices: String,
        /// Why.
        message: String,
    },
}

/// Reads one spec file as a runtime would: the raw file against the CDI JSON schema,
/// then parsed (unknown fields refused) and validated (kind, version, device names,
/// edits).
pub fn read_spec(path: &Path) -> Result<CdiSpec, CdiToolsError> {
    let spec_error = |message: String| CdiToolsError::Spec {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| spec_error(e.to_string()))?;
    container_device_interface::schema::validate_builtin(&bytes)
        .map_err(|e| spec_error(format!("{e:#}")))?;
    container_device_interface::spec::read_spec(&path.to_path_buf(), 0)
        .map_err(|e| spec_error(format!("{e:#}")))
}

fn dirs_text(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loads every spec in `dirs` (later folders win on conflicting names), as a runtime does.
pub fn load_cache(dirs: &[PathBuf]) -> Result<Cache, CdiToolsError> {
    let texts = dirs
        .iter()
        .map(|d| {
            d.to_str()
                .map(str::to_string)
                .ok_or_else(|| CdiToolsError::DirNotUtf8(d.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut cache = Cache::default();
    cache.configure(vec![with_spec_dirs(&refs)]);
    cache.refresh().map_err(|e| CdiToolsError::Load {
        dirs: dirs_text(dirs),
        message: e.to_string(),
    })?;
    Ok(cache)
}

/// The fully qualified name for `--device`: `vendor/class=name` as given, or a bare name
/// taken as a gpuslice slice.
pub fn qualify(device: &str) -> Result<String, CdiToolsError> {
    let bad = || CdiToolsError::BadDeviceName(device.to_string());
    match device.split_once('=') {
        Some((kind, name)) => {
            let (vendor, class) = kind.split_once('/').ok_or_else(bad)?;
            if vendor.is_empty() || class.is_empty() || name.is_empty() {
                return Err(bad());
            }
            Ok(device.to_string())
        }
        None if !device.is_empty() && !device.contains('/') => Ok(format!("{SLICE_KIND}={device}")),
        None => Err(bad()),
    }
}

/// Keeps one entry per variable, the last one given, at the place of the first. The crate
/// appends a device's variables even when the config already sets them, and with two
/// entries `getenv` would see the first while CDI means the device's to win.
pub fn dedupe_env(env: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(env.len());
    for entry in env {
        let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
        match out
            .iter_mut()
            .find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
        {
            Some(existing) => existing.clone_from(entry),
            None => out.push(entry.clone()),
        }
    }
    out
}

/// Applies the edits of `devices` (fully qualified, or bare slice names) from the specs in
/// `cache` to `config`. At most one gpuslice slice per container.
pub fn inject(
    cache: &mut Cache,
    dirs: &[PathBuf],
    devices: &[String],
    config: &mut OciSpec,
) -> Result<(), CdiToolsError> {
    if devices.is_empty() {
        return Err(CdiToolsError::NoDevices);
    }
    let names = devices
        .iter()
        .map(|d| qualify(d))
        .collect::<Result<Vec<_>, _>>()?;
    let slices: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with(&format!("{SLICE_KIND}=")))
        .collect();
    if let [first, second, ..] = slices.as_slice() {
        return Err(CdiToolsError::TwoSlices {
            first: first.to_string(),
            second: second.to_string(),
        });
    }
    let missing: Vec<&str> = names
        .iter()
        .filter(|n| cache.get_device(n).is_none())
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        let known = cache.list_devices();
        return Err(CdiToolsError::Unresolved {
            missing: missing.join(", "),
            dirs: dirs_text(dirs),
            known: if known.is_empty() {
                "nothing".into()
            } else {
                known.join(", ")
            },
        });
    }
    // Given a config without mounts, the crate starts the list with an empty mount (no
    // destination), which runtimes refuse; start it empty instead.
    if config.mounts().is_none() {
        config.set_mounts(Some(Vec::new()));
    }
    cache
        .inject_devices(Some(config), names.clone())
        .map_err(|e| CdiToolsError::Inject {
            devices: names.join(", "),
            message: e.to_string(),
        })?;
    if let Some(process) = config.process_mut()
        && let Some(env) = process.env()
    {
        let env = dedupe_env(env);
        process.set_env(Some(env));
    }
    Ok(())
}

/// Reads an OCI runtime config, applies the devices from the specs in `dirs`, and returns
/// the new config as pretty JSON.
pub fn inject_json(
    dirs: &[PathBuf],
    devices: &[String],
    config_json: &str,
) -> Result<String, CdiToolsError> {
    let mut config: OciSpec = serde_json::from_str(config_json).map_err(CdiToolsError::Config)?;
    let mut cache = load_cache(dirs)?;
    inject(&mut cache, dirs, devices, &mut config)?;
    let mut text = serde_json::to_string_pretty(&config).map_err(CdiToolsError::Config)?;
    text.push('\n');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_are_qualified() {
        assert_eq!(qualify("gpu0-8g").unwrap(), "gpuslice.io/slice=gpu0-8g");
        assert_eq!(qualify("nvidia.com/gpu=0").unwrap(), "nvidia.com/gpu=0");
        for bad in ["", "a/b", "=x", "a=b", "/c=x", "v/=x", "v/c="] {
            let msg = qualify(bad).expect_err(bad).to_string();
            assert!(msg.contains("--device"), "{msg}");
        }
    }

    #[test]
    fn the_last_value_of_a_variable_wins_in_the_first_place() {
        let env: Vec<String> = ["PATH=/bin", "A=1", "B=2", "A=3", "C", "C"]
            .map(String::from)
            .to_vec();
        assert_eq!(dedupe_env(&env), ["PATH=/bin", "A=3", "B=2", "C"]);
    }

    #[test]
    fn bad_configs_and_empty_device_lists_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = [dir.path().to_path_buf()];
        let err = inject_json(&dirs, &["a".into()], "{ nope").unwrap_err();
        assert!(matches!(err, CdiToolsError::Config(_)), "{err}");
        let err = inject_json(&dirs, &[], "{\"ociVersion\": \"1.0.2\"}").unwrap_err();
        assert!(matches!(err, CdiToolsError::NoDevices), "{err}");
    }
}
