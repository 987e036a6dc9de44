//! The node config: how each GPU of a node is cut into slices, as a ConfigMap holds it
//! (YAML). It owns the file format, the merge of the cluster default with a node's
//! override, and every check that needs no GPU (names, counts, compute shares). The
//! checks that need the GPUs' memory are in [`crate::inventory`].
//!
//! ```yaml
//! default:                   # every node, unless nodes.<name> says otherwise
//!   mode: auto               # auto (default), device-plugin, dra or both (see [`Mode`])
//!   profiles:                # or `split: {count: 4}`: each GPU in 4 equal slices
//!     - {name: 8g-30, memory: 8GiB, compute: 30, count: 2}
//!     - {name: 4g, memory: 4GiB, count: 1}
//!   reserve: 1GiB            # memory of each GPU kept out of every slice (default 1GiB)
//!   policy: pack             # GetPreferredAllocation: pack (default) or spread
//!   gpus: all                # or a list of indices / UUIDs: [0, "GPU-5d1f..."]
//!   draGpus: [1]             # mode both only: these through DRA, the others by profiles
//! nodes:
//!   gpu-node-7:              # node name, as in spec.nodeName
//!     split: {count: 2, compute: true}
//! ```
//!
//! A field given in a node's section replaces the default's; `profiles` and `split`
//! replace each other.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use gpuslice_config::{DeviceSelector, format_size, parse_size};
use serde::Deserialize;

/// Memory of each GPU that no slice may use unless the config says otherwise: room for
/// the driver's own reservation (which NVML's total may include) and for host tools.
pub const DEFAULT_RESERVE: u64 = 1 << 30;
/// The prefix of every resource: a profile `8g-30` is the resource
/// `gpuslice.io/slice-8g-30`.
pub const RESOURCE_PREFIX: &str = "gpuslice.io/slice-";
/// The longest profile name. A device ID is `GPU-<uuid>::<profile>-<n>`: 42 characters
/// of UUID and separator, the profile name, and up to 3 for `-<n>`, within the kubelet's 63.
pub const MAX_PROFILE_NAME_LEN: usize = 18;
/// The most slices of one profile on one GPU (keeps `-<n>` at two digits).
pub const MAX_SLICES_PER_PROFILE: u32 = 99;
/// The smallest slice: less memory than a CUDA context takes is no use to anyone.
pub const MIN_SLICE_MEMORY: u64 = 256 << 20;

/// Why a node config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the node config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Not YAML, or not the shape of a node config (unknown or misspelt field, wrong type).
    #[error("the node config {origin} is malformed: {source}")]
    Malformed {
        /// Where the text came from.
        origin: String,
        /// The parser's message, with the line and column.
        source: serde_yaml_ng::Error,
    },
    /// A field has a value that cannot work.
    #[error("the node config {origin}: {field}: {reason}")]
    Invalid {
        /// Where the text came from.
        origin: String,
        /// The field, as a path: `nodes.gpu-7.profiles[1].memory`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The device plugins would serve the node, and neither the default nor the node's
    /// section says how to cut its GPUs.
    #[error(
        "the node config {origin} gives node {node:?} no slices for the device plugin: give \
         `default.profiles` (or `default.split`), or `nodes.{node}.profiles`, or set its \
         mode to dra"
    )]
    NoSlicing {
        /// Where the text came from.
        origin: String,
        /// The node.
        node: String,
    },
}

/// How `GetPreferredAllocation` picks among free slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllocationPolicy {
    /// Fill the busiest GPU first, keeping other GPUs whole for large slices.
    #[default]
    Pack,
    /// Put each slice on the least busy GPU, spreading load.
    Spread,
}

impl fmt::Display for AllocationPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pack => "pack",
            Self::Spread => "spread",
        })
    }
}

/// How a node offers its GPUs to Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// DRA when the cluster has it with consumable capacity (the API server serves
    /// `resource.k8s.io/v1` and keeps a device's `allowMultipleAllocations`), the device
    /// plugin with the profiles otherwise. Decided at start, from definite answers only:
    /// while the API server cannot be reached, the node waits rather than guess.
    #[default]
    Auto,
    /// Every offered GPU through the device plugins, one resource per profile.
    DevicePlugin,
    /// Every offered GPU through DRA; the start fails, visibly, on a cluster without
    /// DRA or without consumable capacity.
    Dra,
    /// The GPUs of `draGpus` through DRA, the other offered GPUs through the profiles:
    /// no GPU is ever offered both ways.
    Both,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::DevicePlugin => "device-plugin",
            Self::Dra => "dra",
            Self::Both => "both",
        })
    }
}

/// One kind of slice: a resource of its own, `count` of them on every GPU offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The profile's name; the resource is [`RESOURCE_PREFIX`] + name.
    pub name: String,
    /// Memory limit of each slice, in bytes.
    pub memory: u64,
    /// Compute share of each slice in percent of the GPU, if limited.
    pub compute: Option<u32>,
    /// Slices of this profile on each GPU.
    pub count: u32,
}

impl Profile {
    /// The extended resource that offers this profile's slices.
    pub fn resource_name(&self) -> String {
        resource_name(&self.name)
    }
}

/// Each GPU cut into `count` equal slices of what its memory less the reserve leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The profile's name (default `1of<count>`).
    pub name: String,
    /// Slices per GPU.
    pub count: u32,
    /// Whether each slice also gets `100 / count` percent of the GPU's time.
    pub compute: bool,
}

/// How a node's GPUs are cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slicing {
    /// Fixed profiles, the same on every GPU.
    Profiles(Vec<Profile>),
    /// Equal slices sized after each GPU.
    Split(Split),
}

/// Which of the node's GPUs are offered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GpuSelection {
    /// Every GPU NVML lists.
    #[default]
    All,
    /// These GPUs, by index (as `nvidia-smi` numbers them) or UUID (or a unique prefix).
    Only(Vec<DeviceSelector>),
}

/// The settings of one node: the default merged with the node's section, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// How the node offers its GPUs.
    pub mode: Mode,
    /// How the device plugins cut the GPUs; always there in modes `device-plugin` and
    /// `both`, and the fallback of mode `auto`.
    pub slicing: Option<Slicing>,
    /// Memory of each GPU kept out of every slice, in bytes.
    pub reserve: u64,
    /// The `GetPreferredAllocation` policy.
    pub policy: AllocationPolicy,
    /// Which GPUs are offered.
    pub gpus: GpuSelection,
    /// Mode `both`: the offered GPUs that go through DRA.
    pub dra_gpus: Vec<DeviceSelector>,
}

/// A parsed and checked node config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    origin: String,
    default: Section,
    nodes: BTreeMap<String, Section>,
}

/// One section (the default or a node's), each field optional.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Section {
    mode: Option<Mode>,
    slicing: Option<Slicing>,
    reserve: Option<u64>,
    policy: Option<AllocationPolicy>,
    gpus: Option<GpuSelection>,
    dra_gpus: Option<Vec<DeviceSelector>>,
}

/// The extended resource name of a profile.
pub fn resource_name(profile: &str) -> String {
    format!("{RESOURCE_PREFIX}{profile}")
}

/// Whether `name` can name a profile: 1 to [`MAX_PROFILE_NAME_LEN`] characters of
/// `a-z 0-9 - .`, starting and ending with a letter or digit. Such a name makes a valid
/// extended resource name, CDI device name, file name and device ID part.
pub fn is_valid_profile_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let edge = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= MAX_PROFILE_NAME_LEN
        && edge(bytes[0])
        && edge(bytes[bytes.len() - 1])
        && bytes.iter().all(|&b| edge(b) || b == b'-' || b == b'.')
}

impl NodeConfig {
    /// Reads and checks a node config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// Parses and checks a node config; `origin` names it in errors (a file, a ConfigMap).
    /// Every section is checked, merged with the default, so that a bad override is
    /// found on every node, not only on the node it names.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            serde_yaml_ng::from_str(text).map_err(|source| ConfigError::Malformed {
                origin: origin.to_string(),
                source,
            })?;
        let ctx = Ctx { origin };
        let default = ctx.section(raw.default.unwrap_or_default(), "default")?;
        let mut nodes = BTreeMap::new();
        for (node, section) in raw.nodes {
            if node.trim().is_empty() {
                return Err(ctx.invalid("nodes", "a node name is empty"));
            }
            let section = ctx.section(section, &format!("nodes.{node}"))?;
            nodes.insert(node, section);
        }
        let config = Self {
            origin: origin.to_string(),
            default,
            nodes,
        };
        for node in config.nodes.keys() {
            config.for_node(node)?;
        }
        // Nodes with no section of their own take the default alone. Its profiles may be
        // missing (each node's section has them), but nothing else may be wrong.
        match config.settings(None, "(a node with no section)") {
            Ok(_) | Err(ConfigError::NoSlicing { .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(config)
    }

    /// Where the config came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The names of the nodes with a section of their own.
    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    /// The settings of `node`: its section over the default.
    pub fn for_node(&self, node: &str) -> Result<NodeSettings, ConfigError> {
        self.settings(self.nodes.get(node), node)
    }

    /// The settings of a node with section `own` (none: the default alone).
    fn settings(&self, own: Option<&Section>, node: &str) -> Result<NodeSettings, ConfigError> {
        let mode = own
            .and_then(|s| s.mode)
            .or(self.default.mode)
            .unwrap_or_default();
        let slicing = own
            .and_then(|s| s.slicing.clone())
            .or_else(|| self.default.slicing.clone());
        if slicing.is_none() && matches!(mode, Mode::DevicePlugin | Mode::Both) {
            return Err(ConfigError::NoSlicing {
                origin: self.origin.clone(),
                node: node.to_string(),
            });
        }
        let dra_gpus = own
            .and_then(|s| s.dra_gpus.clone())
            .or_else(|| self.default.dra_gpus.clone());
        let (at, whose) = if own.is_some() {
            (format!("nodes.{node}"), format!("node {node}"))
        } else {
            ("default".to_string(), "the default".to_string())
        };
        let ctx = Ctx {
            origin: &self.origin,
        };
        let dra_gpus = match (mode, dra_gpus) {
            (Mode::Both, Some(list)) => list,
            (Mode::Both, None) => {
                return Err(ctx.invalid(
                    &format!("{at}.draGpus"),
                    format!("mode both needs `draGpus`, the GPUs that go through DRA ({whose})"),
                ));
            }
            (_, Some(_)) => {
                return Err(ctx.invalid(
                    &format!("{at}.draGpus"),
                    format!(
                        "`draGpus` is for mode both only, and {whose} has mode {mode}: in mode dra \
                         every offered GPU goes through DRA, in mode device-plugin none does"
                    ),
                ));
            }
            (_, None) => Vec::new(),
        };
        let settings = NodeSettings {
            mode,
            slicing,
            reserve: own
                .and_then(|s| s.reserve)
                .or(self.default.reserve)
                .unwrap_or(DEFAULT_RESERVE),
            policy: own
                .and_then(|s| s.policy)
                .or(self.default.policy)
                .unwrap_or_default(),
            gpus: own
                .and_then(|s| s.gpus.clone())
                .or_else(|| self.default.gpus.clone())
                .unwrap_or_default(),
            dra_gpus,
        };
        Ok(settings)
    }
}

struct Ctx<'a> {
    origin: &'a str,
}

impl Ctx<'_> {
    fn invalid(&self, field: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.to_string(),
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    fn section(&self, raw: RawSection, at: &str) -> Result<Section, ConfigError> {
        let slicing = match (raw.profiles, raw.split) {
            (Some(_), Some(_)) => {
                return Err(self.invalid(
                    at,
                    "give either `profiles` or `split`, not both: they are two ways to cut a GPU",
                ));
            }
            (Some(profiles), None) => Some(Slicing::Profiles(self.profiles(profiles, at)?)),
            (None, Some(split)) => Some(Slicing::Split(self.split(split, &format!("{at}.split"))?)),
            (None, None) => None,
        };
        let reserve = match raw.reserve {
            None => None,
            Some(value) => Some(self.size(value, &format!("{at}.reserve"), true)?),
        };
        let gpus = match raw.gpus {
            None => None,
            Some(RawGpus::Keyword(word)) if word == "all" => Some(GpuSelection::All),
            Some(RawGpus::Keyword(word)) => {
                return Err(self.invalid(
                    &format!("{at}.gpus"),
                    format!("{word:?} is neither `all` nor a list of GPU indices and UUIDs"),
                ));
            }
            Some(RawGpus::List(list)) => {
                if list.is_empty() {
                    return Err(self.invalid(
                        &format!("{at}.gpus"),
                        "the list is empty: leave `gpus` out (or write `all`) to offer every GPU",
                    ));
                }
                Some(GpuSelection::Only(
                    self.selectors(list, &format!("{at}.gpus"))?,
                ))
            }
        };
        let dra_gpus = match raw.dra_gpus {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(self.invalid(
                    &format!("{at}.draGpus"),
                    "the list is empty: with no GPU through DRA, use mode device-plugin",
                ));
            }
            Some(list) => Some(self.selectors(list, &format!("{at}.draGpus"))?),
        };
        Ok(Section {
            mode: raw.mode,
            slicing,
            reserve,
            policy: raw.policy,
            gpus,
            dra_gpus,
        })
    }

    /// A list of GPUs by index or UUID, each once.
    fn selectors(
        &self,
        list: Vec<RawScalar>,
        field: &str,
    ) -> Result<Vec<DeviceSelector>, ConfigError> {
        let mut selectors = Vec::new();
        for (i, item) in list.into_iter().enumerate() {
            let text = match item {
                RawScalar::Int(n) => n.to_string(),
                RawScalar::Text(t) => t,
            };
            let selector = DeviceSelector::parse(&text).ok_or_else(|| {
                self.invalid(
                    &format!("{field}[{i}]"),
                    format!("{text:?} is not a GPU index (0, 1, ...) or UUID (GPU-...)"),
                )
            })?;
            if selectors.contains(&selector) {
                return Err(self.invalid(
                    &format!("{field}[{i}]"),
                    format!("{selector} is listed twice"),
                ));
            }
            selectors.push(selector);
        }
        Ok(selectors)
    }

    fn profiles(&self, raw: Vec<RawProfile>, at: &str) -> Result<Vec<Profile>, ConfigError> {
        if raw.is_empty() {
            return Err(self.invalid(
                &format!("{at}.profiles"),
                "the list is empty: a node needs at least one profile",
            ));
        }
        let mut names = BTreeSet::new();
        let mut compute_sum = 0u32;
        let mut profiles = Vec::new();
        for (i, p) in raw.into_iter().enumerate() {
            let here = format!("{at}.profiles[{i}]");
            if !is_valid_profile_name(&p.name) {
                return Err(self.invalid(
                    &format!("{here}.name"),
                    format!(
                        "{:?} cannot name a profile: use 1 to {MAX_PROFILE_NAME_LEN} characters \
                         of a-z, 0-9, '-' and '.', starting and ending with a letter or digit \
                         (it becomes the resource {RESOURCE_PREFIX}<name> and part of each \
                         device ID)",
                        p.name
                    ),
                ));
            }
            if !names.insert(p.name.clone()) {
                return Err(self.invalid(
                    &format!("{here}.name"),
                    format!("the profile {:?} is defined twice", p.name),
                ));
            }
            let memory = self.size(p.memory, &format!("{here}.memory"), false)?;
            if memory < MIN_SLICE_MEMORY {
                return Err(self.invalid(
                    &format!("{here}.memory"),
                    format!(
                        "{} is less than the smallest slice, {}",
                        format_size(memory),
                        format_size(MIN_SLICE_MEMORY)
                    ),
                ));
            }
            let compute = match p.compute {
                None => None,
                Some(value) => Some(self.percent(value, &format!("{here}.compute"))?),
            };
            let count = p.count.unwrap_or(1);
            if count == 0 || count > MAX_SLICES_PER_PROFILE {
                return Err(self.invalid(
                    &format!("{here}.count"),
                    format!("{count} slices: give 1 to {MAX_SLICES_PER_PROFILE} per GPU"),
                ));
            }
            if let Some(c) = compute {
                compute_sum = compute_sum.saturating_add(c.saturating_mul(count));
            }
            profiles.push(Profile {
                name: p.name,
                memory,
                compute,
                count,
            });
        }
        if compute_sum > 100 {
            let detail: Vec<String> = profiles
                .iter()
                .filter_map(|p| {
                    p.compute
                        .map(|c| format!("{} × {c}% ({})", p.count, p.name))
                })
                .collect();
            return Err(self.invalid(
                &format!("{at}.profiles"),
                format!(
                    "the compute shares of one GPU add up to {compute_sum}% ({}), more than 100%: \
                     a GPU cannot be oversubscribed",
                    detail.join(" + ")
                ),
            ));
        }
        Ok(profiles)
    }

    fn split(&self, raw: RawSplit, at: &str) -> Result<Split, ConfigError> {
        if raw.count == 0 || raw.count > MAX_SLICES_PER_PROFILE {
            return Err(self.invalid(
                &format!("{at}.count"),
                format!(
                    "{} slices: give 1 to {MAX_SLICES_PER_PROFILE} per GPU",
                    raw.count
                ),
            ));
        }
        let compute = raw.compute.unwrap_or(false);
        if compute && raw.count > 100 {
            return Err(self.invalid(
                &format!("{at}.compute"),
                "more than 100 slices cannot each have a whole percent of the GPU",
            ));
        }
        let name = raw.name.unwrap_or_else(|| format!("1of{}", raw.count));
        if !is_valid_profile_name(&name) {
            return Err(self.invalid(
                &format!("{at}.name"),
                format!(
                    "{name:?} cannot name a profile: use 1 to {MAX_PROFILE_NAME_LEN} characters \
                     of a-z, 0-9, '-' and '.', starting and ending with a letter or digit"
                ),
            ));
        }
        Ok(Split {
            name,
            count: raw.count,
            compute,
        })
    }

    fn size(&self, value: RawScalar, field: &str, zero_ok: bool) -> Result<u64, ConfigError> {
        match value {
            RawScalar::Int(0) | RawScalar::Text(_) if zero_ok && value.is_zero() => Ok(0),
            RawScalar::Int(n) => match u64::try_from(n) {
                Ok(bytes) if bytes > 0 => Ok(bytes),
                _ => Err(self.invalid(field, format!("{n} bytes is not a size"))),
            },
            RawScalar::Text(text) => parse_size(&text)
                .map_err(|e| self.invalid(field, format!("{text:?} is not a size: {e}"))),
        }
    }

    fn percent(&self, value: RawScalar, field: &str) -> Result<u32, ConfigError> {
        let text = match value {
            RawScalar::Int(n) => n.to_string(),
            RawScalar::Text(t) => t,
        };
        let number = text.trim().strip_suffix('%').unwrap_or(text.trim()).trim();
        match number.parse::<u32>() {
            Ok(n @ 1..=100) => Ok(n),
            _ => Err(self.invalid(
                field,
                format!(
                    "{text:?} is not a compute share: give whole percent of the GPU, 1 to 100 \
                     (leave `compute` out for no compute limit)"
                ),
            )),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    default: Option<RawSection>,
    #[serde(default)]
    nodes: BTreeMap<String, RawSection>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
struct RawSection {
    mode: Option<Mode>,
    profiles: Option<Vec<RawProfile>>,
    split: Option<RawSplit>,
    reserve: Option<RawScalar>,
    policy: Option<AllocationPolicy>,
    gpus: Option<RawGpus>,
    dra_gpus: Option<Vec<RawScalar>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    memory: RawScalar,
    compute: Option<RawScalar>,
    count: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSplit {
    count: u32,
    name: Option<String>,
    compute: Option<bool>,
}

/// A YAML scalar written either as a number or as text (`8GiB`, `30%`).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawScalar {
    Int(i64),
    Text(String),
}

impl RawScalar {
    fn is_zero(&self) -> bool {
        match self {
            Self::Int(n) => *n == 0,
            Self::Text(t) => t.trim().trim_end_matches(char::is_alphabetic).trim() == "0",
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawGpus {
    Keyword(String),
    List(Vec<RawScalar>),
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::from_yaml(text, "test.yaml")
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn profiles_with_defaults() {
        let config = parse(
            "default:\n  profiles:\n    - {name: 8g-30, memory: 8GiB, compute: 30, count: 2}\n    - {name: 4g, memory: 4096m}\n",
        )
        .unwrap();
        let s = config.for_node("any").unwrap();
        assert_eq!(
            s.slicing,
            Some(Slicing::Profiles(vec![
                Profile {
                    name: "8g-30".into(),
                    memory: 8 * GIB,
                    compute: Some(30),
                    count: 2
                },
                Profile {
                    name: "4g".into(),
                    memory: 4 * GIB,
                    compute: None,
                    count: 1
                },
            ]))
        );
        assert_eq!(s.mode, Mode::Auto);
        assert_eq!(s.reserve, DEFAULT_RESERVE);
        assert_eq!(s.policy, AllocationPolicy::Pack);
        assert_eq!(s.gpus, GpuSelection::All);
    }

    #[test]
    fn node_override_replaces_fields_of_the_default() {
        let config = parse(
            "default:\n  profiles: [{name: a, memory: 8GiB}]\n  reserve: 2GiB\n  policy: spread\nnodes:\n  n1:\n    split: {count: 4, compute: true}\n    gpus: [1, GPU-abc]\n  n2:\n    reserve: 0\n",
        )
        .unwrap();
        let n1 = config.for_node("n1").unwrap();
        assert_eq!(
            n1.slicing,
            Some(Slicing::Split(Split {
                name: "1of4".into(),
                count: 4,
                compute: true
            }))
        );
        assert_eq!(n1.reserve, 2 * GIB);
        assert_eq!(n1.policy, AllocationPolicy::Spread);
        assert_eq!(
            n1.gpus,
            GpuSelection::Only(vec![
                DeviceSelector::Index(1),
                DeviceSelector::Uuid("GPU-abc".into())
            ])
        );
        let n2 = config.for_node("n2").unwrap();
        assert_eq!(n2.reserve, 0);
        assert!(matches!(n2.slicing, Some(Slicing::Profiles(_))));
        assert_eq!(config.for_node("other").unwrap().reserve, 2 * GIB);
    }

    #[test]
    fn modes_pick_what_needs_profiles_and_dra_gpus_belong_to_mode_both() {
        // dra needs no profiles; device-plugin and both do.
        let dra = parse("default:\n  mode: dra\n").unwrap();
        let s = dra.for_node("n").unwrap();
        assert_eq!((s.mode, s.slicing.is_none()), (Mode::Dra, true));
        let e = parse("default:\n  mode: device-plugin\n")
            .unwrap()
            .for_node("n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no slices for the device plugin"), "{e}");
        // auto without profiles parses: the profiles are only its fallback.
        assert!(parse("default: {}\n").unwrap().for_node("n").is_ok());
        // both needs draGpus, and draGpus needs both.
        let e = parse("default:\n  mode: both\n  profiles: [{name: a, memory: 8GiB}]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("default.draGpus") && e.contains("mode both needs"),
            "{e}"
        );
        let e = err(
            "default:\n  profiles: [{name: a, memory: 8GiB}]\nnodes:\n  g1:\n    mode: dra\n    draGpus: [0]\n",
        );
        assert!(
            e.contains("nodes.g1.draGpus") && e.contains("mode dra"),
            "{e}"
        );
        let both = parse(
            "default:\n  mode: both\n  draGpus: [1, GPU-abc]\n  profiles: [{name: a, memory: 8GiB}]\n",
        )
        .unwrap()
        .for_node("n")
        .unwrap();
        assert_eq!(
            both.dra_gpus,
            [
                DeviceSelector::Index(1),
                DeviceSelector::Uuid("GPU-abc".into())
            ]
        );
        // A node's mode over the default's; a misspelt mode names the choices.
        let config = parse(
            "default:\n  mode: dra\nnodes:\n  old:\n    mode: device-plugin\n    split: {count: 2}\n",
        )
        .unwrap();
        assert_eq!(config.for_node("old").unwrap().mode, Mode::DevicePlugin);
        let e = err("default:\n  mode: dpa\n");
        assert!(e.contains("device-plugin") && e.contains("both"), "{e}");
        let e =
            err("default:\n  mode: both\n  draGpus: []\n  profiles: [{name: a, memory: 8GiB}]\n");
        assert!(e.contains("default.draGpus") && e.contains("empty"), "{e}");
    }

    #[test]
    fn compute_oversubscription_is_refused_naming_the_profiles() {
        let e = err(
            "default:\n  profiles:\n    - {name: 8g-30, memory: 8GiB, compute: 30, count: 2}\n    - {name: 4g-70, memory: 4GiB, compute: 70}\n",
        );
        assert!(e.contains("default.profiles"), "{e}");
        assert!(e.contains("130%"), "{e}");
        assert!(e.contains("2 × 30% (8g-30) + 1 × 70% (4g-70)"), "{e}");
    }

    #[test]
    fn a_bad_node_override_is_found_whatever_the_node() {
        let e = err(
            "default:\n  profiles: [{name: a, memory: 8GiB}]\nnodes:\n  gpu-7:\n    profiles: [{name: a, memory: 8GiB, compute: 60, count: 2}]\n",
        );
        assert!(e.contains("nodes.gpu-7.profiles"), "{e}");
        assert!(e.contains("120%"), "{e}");
    }

    #[test]
    fn malformed_and_invalid_fields_are_named() {
        let cases = [
            ("default: [", "malformed"),
            ("default:\n  profile: []\n", "unknown field `profile`"),
            (
                "default:\n  profiles: [{name: A, memory: 8GiB}]\n",
                "default.profiles[0].name",
            ),
            (
                "default:\n  profiles: [{name: a, memory: 8GiB}, {name: a, memory: 1GiB}]\n",
                "default.profiles[1].name: the profile \"a\" is defined twice",
            ),
            (
                "default:\n  profiles: [{name: a, memory: 8XB}]\n",
                "default.profiles[0].memory",
            ),
            (
                "default:\n  profiles: [{name: a, memory: 1MiB}]\n",
                "smallest slice",
            ),
            (
                "default:\n  profiles: [{name: a, memory: 1GiB, count: 0}]\n",
                "default.profiles[0].count",
            ),
            (
                "default:\n  profiles: [{name: a, memory: 1GiB, compute: 0}]\n",
                "default.profiles[0].compute",
            ),
            (
                "default:\n  profiles: [{name: a, memory: 1GiB, compute: 101}]\n",
                "default.profiles[0].compute",
            ),
            (
                "default:\n  profiles: []\n",
                "default.profiles: the list is empty",
            ),
            ("default:\n  split: {count: 0}\n", "default.split.count"),
            (
                "default:\n  split: {count: 2}\n  profiles: [{name: a, memory: 1GiB}]\n",
                "not both",
            ),
            (
                "default:\n  split: {count: 2}\n  gpus: some\n",
                "default.gpus",
            ),
            (
                "default:\n  split: {count: 2}\n  gpus: [0, 0]\n",
                "default.gpus[1]",
            ),
            (
                "default:\n  split: {count: 2}\n  gpus: [x]\n",
                "default.gpus[0]",
            ),
            (
                "default:\n  split: {count: 2}\n  policy: random\n",
                "unknown variant `random`",
            ),
            (
                "default:\n  split: {count: 2}\n  reserve: -1\n",
                "default.reserve",
            ),
            (
                "default:\n  profiles: [{name: a-very-long-profile-name, memory: 1GiB}]\n",
                "default.profiles[0].name",
            ),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert!(e.contains("test.yaml"), "{text:?}: {e}");
            assert!(e.contains(want), "{text:?}: wanted {want:?} in {e}");
        }
    }

    #[test]
    fn a_node_without_slicing_is_an_error_naming_it() {
        let config =
            parse("default:\n  mode: device-plugin\nnodes:\n  n1:\n    split: {count: 2}\n")
                .unwrap();
        assert!(config.for_node("n1").is_ok());
        let e = config.for_node("n2").unwrap_err().to_string();
        assert!(e.contains("\"n2\""), "{e}");
    }

    #[test]
    fn profile_names() {
        for good in ["a", "8g-30", "1of4", "x.y", "abcdefghijklmnopqr"] {
            assert!(is_valid_profile_name(good), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a/b",
            "abcdefghijklmnopqrs",
            "a b",
        ] {
            assert!(!is_valid_profile_name(bad), "{bad}");
        }
        assert_eq!(resource_name("8g-30"), "gpuslice.io/slice-8g-30");
    }
}
