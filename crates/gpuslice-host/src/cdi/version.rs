//! The `cdiVersion` a spec declares. A runtime refuses a whole spec whose version its CDI
//! library does not know (Podman 4.3 knows up to 0.5.0), so gpuslice declares the
//! **lowest version that has every field the spec uses**, the rule of the CDI project's
//! own spec library (`minimum_required_version` in the `container-device-interface`
//! crate, `cdi.MinimumRequiredVersion` in Go; the `cdi-tools` tests check this module
//! against the crate's function). `--cdi-version` may ask for a later version, never for
//! one that lacks a field the spec uses.
//!
//! The rules, for the fields gpuslice's [`Spec`] can hold (those of later versions,
//! `intelRdt`, `additionalGids`, `netDevices`, are never written):
//!
//! | version | needed for |
//! |---|---|
//! | 0.3.0 | everything else (the earliest version the libraries read) |
//! | 0.4.0 | a mount with a `type` |
//! | 0.5.0 | a device node with a `hostPath`; a device name that does not start with a letter |
//! | 0.6.0 | annotations (of the spec or of a device); a class with a `.` in the kind |

use std::fmt;
use std::str::FromStr;

use super::spec::Spec;

/// The released versions of the CDI specification, oldest first.
pub const KNOWN_VERSIONS: [CdiVersion; 10] = [
    CdiVersion::new(0, 1, 0),
    CdiVersion::new(0, 2, 0),
    CdiVersion::new(0, 3, 0),
    CdiVersion::new(0, 4, 0),
    CdiVersion::new(0, 5, 0),
    CdiVersion::new(0, 6, 0),
    CdiVersion::new(0, 7, 0),
    CdiVersion::new(0, 8, 0),
    CdiVersion::new(1, 0, 0),
    CdiVersion::new(1, 1, 0),
];

/// The earliest version the CDI libraries still read; no spec declares less.
pub const EARLIEST: CdiVersion = CdiVersion::new(0, 3, 0);

/// A version of the CDI specification, `MAJOR.MINOR.PATCH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CdiVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl CdiVersion {
    /// `major.minor.patch`.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Whether this is a released version of the specification.
    pub fn is_known(self) -> bool {
        KNOWN_VERSIONS.contains(&self)
    }
}

impl fmt::Display for CdiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A text that is not a version of the CDI specification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a released CDI specification version (expected one of {known}, e.g. 0.5.0)"
)]
pub struct BadVersion {
    /// The text given.
    pub text: String,
    /// The versions there are.
    pub known: String,
}

impl FromStr for CdiVersion {
    type Err = BadVersion;

    /// Parses `0.5.0` (a leading `v` is allowed, as the libraries allow it).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadVersion {
            text: text.to_string(),
            known: KNOWN_VERSIONS
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        };
        let trimmed = text.trim();
        let digits = trimmed.strip_prefix('v').unwrap_or(trimmed);
        let parts: Vec<u32> = digits
            .split('.')
            .map(|p| p.parse::<u32>().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        let version = match parts.as_slice() {
            [major, minor, patch] => Self::new(*major, *minor, *patch),
            _ => return Err(bad()),
        };
        if version.is_known() {
            Ok(version)
        } else {
            Err(bad())
        }
    }
}

/// One reason a spec needs a version: the version and the field that needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The version that first has the field.
    pub version: CdiVersion,
    /// The field, as a person reads it (`deviceNodes[].hostPath (device gpu0-8g)`).
    pub field: String,
}

/// Every field of `spec` that needs more than [`EARLIEST`], with the version it needs,
/// the first use of each kind only.
pub fn requirements(spec: &Spec) -> Vec<Requirement> {
    let mut found: Vec<Requirement> = Vec::new();
    let mut note = |version: CdiVersion, field: String| {
        if !found.iter().any(|r| r.version == version) {
            found.push(Requirement { version, field });
        }
    };
    let edits = spec
        .devices
        .iter()
        .map(|d| (format!("device {}", d.name), &d.container_edits))
        .chain(
            spec.container_edits
                .iter()
                .map(|e| ("the spec's containerEdits".to_string(), e)),
        );
    for (owner, edits) in edits {
        if edits
            .mounts
            .iter()
            .any(|m| m.mount_type.as_deref().is_some_and(|t| !t.is_empty()))
        {
            note(CdiVersion::new(0, 4, 0), format!("mounts[].type ({owner})"));
        }
        if edits
            .device_nodes
            .iter()
            .any(|n| n.host_path.as_deref().is_some_and(|p| !p.is_empty()))
        {
            note(
                CdiVersion::new(0, 5, 0),
                format!("deviceNodes[].hostPath ({owner})"),
            );
        }
    }
    if let Some(device) = spec
        .devices
        .iter()
        .find(|d| !d.name.chars().next().is_some_and(char::is_alphabetic))
    {
        note(
            CdiVersion::new(0, 5, 0),
            format!("a device name not starting with a letter ({})", device.name),
        );
    }
    if !spec.annotations.is_empty() {
        note(CdiVersion::new(0, 6, 0), "the spec's annotations".into());
    }
    if let Some(device) = spec.devices.iter().find(|d| !d.annotations.is_empty()) {
        note(
            CdiVersion::new(0, 6, 0),
            format!("annotations (device {})", device.name),
        );
    }
    if let Some((vendor, class)) = spec.kind.split_once('/')
        && !vendor.is_empty()
        && class.contains('.')
    {
        note(
            CdiVersion::new(0, 6, 0),
            format!("a class with a dot in the kind {}", spec.kind),
        );
    }
    found.sort_by_key(|r| r.version);
    found
}

/// The lowest version that has every field `spec` uses.
pub fn minimum_version(spec: &Spec) -> CdiVersion {
    requirements(spec)
        .iter()
        .map(|r| r.version)
        .max()
        .unwrap_or(EARLIEST)
        .max(EARLIEST)
}

/// Why `version` cannot be declared for `spec`: it is too low for a field it uses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "CDI version {asked} is too low for this spec: {field} needs {needed}; the lowest version this spec can declare is {minimum} (the default)"
)]
pub struct TooLow {
    /// The version asked for.
    pub asked: CdiVersion,
    /// The first field it lacks.
    pub field: String,
    /// The version that field needs.
    pub needed: CdiVersion,
    /// The lowest version the spec can declare.
    pub minimum: CdiVersion,
}

/// The version to declare for `spec`: `asked` if given and high enough, else the lowest
/// that has every field the spec uses.
pub fn choose(spec: &Spec, asked: Option<CdiVersion>) -> Result<CdiVersion, TooLow> {
    let minimum = minimum_version(spec);
    match asked {
        None => Ok(minimum),
        Some(asked) if asked < EARLIEST => Err(TooLow {
            asked,
            field: "any spec (the CDI libraries read no older version)".into(),
            needed: EARLIEST,
            minimum,
        }),
        Some(asked) => match requirements(spec).into_iter().find(|r| r.version > asked) {
            None => Ok(asked),
            Some(r) => Err(TooLow {
                asked,
                field: r.field,
                needed: r.version,
                minimum,
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdi::spec::{ContainerEdits, Device, DeviceNode, Mount};
    use std::collections::BTreeMap;

    fn spec(name: &str, host_path: Option<&str>, mount_type: Option<&str>) -> Spec {
        Spec {
            cdi_version: String::new(),
            kind: "gpuslice.io/slice".into(),
            annotations: BTreeMap::new(),
            devices: vec![Device {
                name: name.into(),
                annotations: BTreeMap::new(),
                container_edits: ContainerEdits {
                    device_nodes: vec![DeviceNode {
                        path: "/dev/nvidia0".into(),
                        host_path: host_path.map(String::from),
                        ..DeviceNode::default()
                    }],
                    mounts: vec![Mount {
                        host_path: "/h".into(),
                        container_path: "/c".into(),
                        options: vec!["ro".into()],
                        mount_type: mount_type.map(String::from),
                    }],
                    ..ContainerEdits::default()
                },
            }],
            container_edits: None,
        }
    }

    #[test]
    fn versions_parse_and_print() {
        assert_eq!("0.5.0".parse(), Ok(CdiVersion::new(0, 5, 0)));
        assert_eq!("v1.1.0".parse(), Ok(CdiVersion::new(1, 1, 0)));
        assert_eq!(CdiVersion::new(0, 6, 0).to_string(), "0.6.0");
        for bad in ["", "0.5", "0.9.0", "x.y.z", "0.5.0.1", "2.0.0"] {
            let err = bad.parse::<CdiVersion>().expect_err(bad);
            assert!(err.to_string().contains("0.3.0, 0.4.0"), "{err}");
        }
        assert!(CdiVersion::new(0, 10, 0) > CdiVersion::new(0, 9, 0));
    }

    #[test]
    fn the_lowest_version_follows_the_fields_used() {
        assert_eq!(minimum_version(&spec("a", None, None)), EARLIEST);
        assert_eq!(
            minimum_version(&spec("a", None, Some("bind"))),
            CdiVersion::new(0, 4, 0)
        );
        assert_eq!(
            minimum_version(&spec("a", Some("/x/dev/nvidia0"), None)),
            CdiVersion::new(0, 5, 0)
        );
        assert_eq!(
            minimum_version(&spec("0-8g", None, None)),
            CdiVersion::new(0, 5, 0)
        );
        // Empty values count as absent, as in the CDI libraries.
        assert_eq!(minimum_version(&spec("a", Some(""), Some(""))), EARLIEST);
        let mut annotated = spec("a", None, None);
        annotated.devices[0]
            .annotations
            .insert("k".into(), "v".into());
        assert_eq!(minimum_version(&annotated), CdiVersion::new(0, 6, 0));
        let mut dotted = spec("a", None, None);
        dotted.kind = "gpuslice.io/slice.v2".into();
        assert_eq!(minimum_version(&dotted), CdiVersion::new(0, 6, 0));
    }

    #[test]
    fn a_version_too_low_for_a_field_is_refused_naming_it() {
        let s = spec("gpu0", Some("/x/dev/nvidia0"), Some("bind"));
        assert_eq!(choose(&s, None), Ok(CdiVersion::new(0, 5, 0)));
        assert_eq!(
            choose(&s, Some(CdiVersion::new(0, 6, 0))),
            Ok(CdiVersion::new(0, 6, 0))
        );
        let err = choose(&s, Some(CdiVersion::new(0, 4, 0))).unwrap_err();
        assert_eq!(err.needed, CdiVersion::new(0, 5, 0));
        let msg = err.to_string();
        assert!(
            msg.contains("deviceNodes[].hostPath (device gpu0)"),
            "{msg}"
        );
        assert!(
            msg.contains("lowest version this spec can declare is 0.5.0"),
            "{msg}"
        );
        let err = choose(&s, Some(CdiVersion::new(0, 3, 0))).unwrap_err();
        assert!(err.to_string().contains("mounts[].type"), "{err}");
        // Nothing declares less than the libraries read.
        let bare = spec("a", None, None);
        assert_eq!(choose(&bare, Some(EARLIEST)), Ok(EARLIEST));
        let err = choose(&bare, Some(CdiVersion::new(0, 2, 0))).unwrap_err();
        assert_eq!(err.needed, EARLIEST);
    }
}
