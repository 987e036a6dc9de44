//! What `gpuslice cdi generate` learns from the host: its GPUs (index, UUID and device
//! minor number, through NVML), the NVIDIA device nodes under `--dev-root`, and the
//! NVIDIA user-space driver files under `--driver-root` (found with `ldconfig -p` and in
//! the usual library folders).
//!
//! The finding is split into pure functions over text and folders (tested with fake
//! roots) and thin functions that ask NVML or run `ldconfig`.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use super::CdiError;
use super::spec::DeviceNode;
pub use crate::gpus::HostGpu;
use crate::gpus::NVML_LIBRARY;

/// Lists this host's GPUs through NVML (`libnvidia-ml.so.1`).
pub fn nvml_gpus() -> Result<Vec<HostGpu>, CdiError> {
    let nvml = nvml_wrapper::Nvml::builder()
        .lib_path(OsStr::new(NVML_LIBRARY))
        .init()?;
    (0..nvml.device_count()?)
        .map(|index| {
            let device = nvml.device_by_index(index)?;
            Ok(HostGpu {
                index,
                uuid: gpuslice_config::canonical_uuid(&device.uuid()?),
                minor: device.minor_number()?,
                memory: device.memory_info().ok().map(|m| m.total),
            })
        })
        .collect()
}

/// `root` joined with the absolute `path` (`/dev/nvidia0` under `/tmp/x` is
/// `/tmp/x/dev/nvidia0`).
pub fn under_root(root: &Path, path: &str) -> PathBuf {
    let relative: PathBuf = Path::new(path)
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    root.join(relative)
}

/// What is at a device node's place on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeState {
    /// A character device (symbolic links followed): the entry for the spec.
    Present(DeviceNode),
    /// Nothing there.
    Missing(PathBuf),
    /// Something that is not a character device.
    NotADevice(PathBuf),
}

/// Looks for the device node `path` (e.g. `/dev/nvidia0`) under `dev_root`. The entry has
/// no type or numbers: the runtime reads them from the host's node when it creates a
/// container, so a spec stays right when a driver reload gives `nvidia-uvm` another major.
pub fn device_node(dev_root: &Path, path: &str) -> NodeState {
    let host = under_root(dev_root, path);
    match fs::metadata(&host) {
        Ok(meta) if meta.file_type().is_char_device() => {
            let host_text = host.to_string_lossy().into_owned();
            NodeState::Present(DeviceNode {
                path: path.to_string(),
                host_path: (host_text != path).then_some(host_text),
                ..DeviceNode::default()
            })
        }
        Ok(_) => NodeState::NotADevice(host),
        Err(_) => NodeState::Missing(host),
    }
}

/// A driver file to mount: the host file (symbolic links resolved) and where it goes in
/// the container (its path below `--driver-root`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverFile {
    /// The file on the host.
    pub host: PathBuf,
    /// Its path in the container.
    pub container: String,
}

/// The libraries whose folder is the driver's library folder; both are needed by every
/// CUDA program under gpuslice (the interposer uses NVML).
pub const KEY_LIBRARIES: [&str; 2] = ["libcuda.so.1", "libnvidia-ml.so.1"];

/// Driver libraries mounted from the driver's library folder: every file whose name
/// starts with one of these (the soname link and the versioned file alike).
pub const LIBRARY_PREFIXES: [&str; 6] = [
    "libcuda.so.",
    "libnvidia-ml.so.",
    "libnvidia-ptxjitcompiler.so.",
    "libnvidia-nvvm.so.",
    "libnvidia-gpucomp.so.",
    "libcudadebugger.so.",
];

/// Where driver libraries are looked for when `ldconfig -p` does not list them, in order.
pub const LIBRARY_DIRS: [&str; 8] = [
    "/usr/local/nvidia/lib64",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib",
];

/// Where `nvidia-smi` is looked for, in order.
pub const BINARY_DIRS: [&str; 4] = [
    "/usr/bin",
    "/usr/local/nvidia/bin",
    "/usr/local/bin",
    "/bin",
];

/// The tag `ldconfig -p` gives libraries of this machine's architecture.
pub fn ldconfig_arch_tag() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "AArch64"
    } else {
        "x86-64"
    }
}

/// Parses `ldconfig -p`: the `(name, path)` of each library of the given architecture tag
/// (`\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1`).
pub fn parse_ldconfig(text: &str, arch_tag: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let (left, path) = line.split_once(" => ")?;
            let (name, flags) = left.trim().split_once(' ')?;
            let flags = flags.trim().strip_prefix('(')?.strip_suffix(')')?;
            flags
                .split(',')
                .any(|f| f.trim() == arch_tag)
                .then(|| (name.to_string(), path.trim().to_string()))
        })
        .collect()
}

/// Runs `ldconfig -p`; `None` if it cannot be run.
pub fn run_ldconfig() -> Option<String> {
    ["ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"]
        .iter()
        .find_map(|program| {
            let out = Command::new(program)
                .arg("-p")
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        })
}

/// The driver files found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverSearch {
    /// Files to mount, libraries first (by folder and name), then `nvidia-smi`.
    pub files: Vec<DriverFile>,
    /// Key libraries that were not found.
    pub missing: Vec<&'static str>,
    /// The folders looked in, for messages.
    pub looked: Vec<String>,
}

fn parent_text(path: &str) -> Option<String> {
    Path::new(path)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Finds the driver files below `root`. `ldconfig` is the output of `ldconfig -p` (only
/// meaningful when `root` is `/`); libraries it lists win over the fixed folders.
pub fn find_driver_files(root: &Path, ldconfig: Option<&str>) -> DriverSearch {
    let listed = ldconfig
        .map(|text| parse_ldconfig(text, ldconfig_arch_tag()))
        .unwrap_or_default();
    let mut search = DriverSearch::default();
    if ldconfig.is_some() {
        search.looked.push("ldconfig -p".into());
    }
    search.looked.extend(
        LIBRARY_DIRS
            .iter()
            .map(|d| under_root(root, d).display().to_string()),
    );

    let mut dirs: Vec<String> = Vec::new();
    for key in KEY_LIBRARIES {
        let from_ldconfig = listed
            .iter()
            .find(|(name, path)| name == key && under_root(root, path).is_file())
            .and_then(|(_, path)| parent_text(path));
        let found = from_ldconfig.or_else(|| {
            LIBRARY_DIRS
                .iter()
                .find(|dir| under_root(root, dir).join(key).is_file())
                .map(|dir| dir.to_string())
        });
        match found {
            Some(dir) if !dirs.contains(&dir) => dirs.push(dir),
            Some(_) => {}
            None => search.missing.push(key),
        }
    }

    for dir in &dirs {
        let Ok(entries) = fs::read_dir(under_root(root, dir)) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| LIBRARY_PREFIXES.iter().any(|p| name.starts_with(p)))
            .collect();
        names.sort();
        for name in names {
            let container = format!("{}/{name}", dir.trim_end_matches('/'));
            // Mount what the name resolves to: a bind mount of a symbolic link would
            // mount its target anyway, and a dangling link is skipped.
            if let Ok(host) = fs::canonicalize(under_root(root, &container))
                && host.is_file()
            {
                search.files.push(DriverFile { host, container });
            }
        }
    }

    if let Some(dir) = BINARY_DIRS
        .iter()
        .find(|dir| under_root(root, dir).join("nvidia-smi").is_file())
    {
        let container = format!("{dir}/nvidia-smi");
        if let Ok(host) = fs::canonicalize(under_root(root, &container)) {
            search.files.push(DriverFile { host, container });
        }
    }
    search
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn paths_under_a_root() {
        assert_eq!(
            under_root(Path::new("/tmp/x"), "/dev/nvidia0"),
            Path::new("/tmp/x/dev/nvidia0")
        );
        assert_eq!(
            under_root(Path::new("/"), "/dev/nvidia0"),
            Path::new("/dev/nvidia0")
        );
    }

    #[test]
    fn device_nodes_must_be_character_devices() {
        let root = tempfile::tempdir().unwrap();
        let dev = root.path().join("dev");
        fs::create_dir(&dev).unwrap();
        symlink("/dev/null", dev.join("nvidia0")).unwrap();
        fs::write(dev.join("nvidiactl"), "").unwrap();

        match device_node(root.path(), "/dev/nvidia0") {
            NodeState::Present(node) => {
                assert_eq!(node.path, "/dev/nvidia0");
                assert_eq!(
                    node.host_path.as_deref(),
                    Some(&*dev.join("nvidia0").to_string_lossy())
                );
                assert_eq!(
                    (node.major, node.minor, node.device_type),
                    (None, None, None)
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            device_node(root.path(), "/dev/nvidiactl"),
            NodeState::NotADevice(dev.join("nvidiactl"))
        );
        assert_eq!(
            device_node(root.path(), "/dev/nvidia-uvm"),
            NodeState::Missing(dev.join("nvidia-uvm"))
        );
        // On the real root the host path is the path, so it is left out.
        match device_node(Path::new("/"), "/dev/null") {
            NodeState::Present(node) => assert_eq!(node.host_path, None),
            other => panic!("{other:?}"),
        }
    }

    const LDCONFIG: &str = "\
1234 libs found in cache `/etc/ld.so.cache'
\tlibnvidia-ml.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1
\tlibnvidia-ml.so.1 (libc6) => /usr/lib/i386-linux-gnu/libnvidia-ml.so.1
\tlibcuda.so.1 (libc6,AArch64) => /usr/lib/aarch64-linux-gnu/libcuda.so.1
\tlibcuda.so.1 (libc6,x86-64) => /opt/driver/lib/libcuda.so.1
\tlibc.so.6 (libc6,x86-64, OS ABI: Linux 3.2.0) => /lib/x86_64-linux-gnu/libc.so.6
Cache generated by: ldconfig (Ubuntu GLIBC 2.39-0ubuntu8) stable release version 2.39
";

    #[test]
    fn ldconfig_output_is_filtered_by_architecture() {
        let x86 = parse_ldconfig(LDCONFIG, "x86-64");
        assert_eq!(
            x86,
            [
                (
                    "libnvidia-ml.so.1".to_string(),
                    "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1".to_string()
                ),
                (
                    "libcuda.so.1".to_string(),
                    "/opt/driver/lib/libcuda.so.1".to_string()
                ),
                (
                    "libc.so.6".to_string(),
                    "/lib/x86_64-linux-gnu/libc.so.6".to_string()
                ),
            ]
        );
        let arm = parse_ldconfig(LDCONFIG, "AArch64");
        assert_eq!(arm.len(), 1);
        assert_eq!(arm[0].1, "/usr/lib/aarch64-linux-gnu/libcuda.so.1");
    }

    fn fake_driver_root() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let lib = root.path().join("usr/lib/x86_64-linux-gnu");
        let bin = root.path().join("usr/bin");
        fs::create_dir_all(&lib).unwrap();
        fs::create_dir_all(&bin).unwrap();
        for real in [
            "libcuda.so.550.54.15",
            "libnvidia-ml.so.550.54.15",
            "libnvidia-nvvm.so.550.54.15",
            "libnvidia-gpucomp.so.550.54.15",
            "libnvidia-cfg.so.550.54.15",
        ] {
            fs::write(lib.join(real), b"\x7fELF").unwrap();
        }
        symlink("libcuda.so.550.54.15", lib.join("libcuda.so.1")).unwrap();
        symlink("libcuda.so.1", lib.join("libcuda.so")).unwrap();
        symlink("libnvidia-ml.so.550.54.15", lib.join("libnvidia-ml.so.1")).unwrap();
        symlink(
            "libnvidia-nvvm.so.550.54.15",
            lib.join("libnvidia-nvvm.so.4"),
        )
        .unwrap();
        symlink("gone.so", lib.join("libnvidia-ptxjitcompiler.so.1")).unwrap();
        fs::write(bin.join("nvidia-smi"), b"\x7fELF").unwrap();
        root
    }

    #[test]
    fn driver_files_are_found_below_a_root() {
        let root = fake_driver_root();
        let lib = root.path().join("usr/lib/x86_64-linux-gnu");
        let found = find_driver_files(root.path(), None);
        assert!(found.missing.is_empty(), "{found:?}");
        let pairs: Vec<(String, PathBuf)> = found
            .files
            .iter()
            .map(|f| (f.container.clone(), f.host.clone()))
            .collect();
        let real = |name: &str| lib.join(name).canonicalize().unwrap();
        let d = "/usr/lib/x86_64-linux-gnu";
        assert_eq!(
            pairs,
            [
                (format!("{d}/libcuda.so.1"), real("libcuda.so.550.54.15")),
                (
                    format!("{d}/libcuda.so.550.54.15"),
                    real("libcuda.so.550.54.15")
                ),
                (
                    format!("{d}/libnvidia-gpucomp.so.550.54.15"),
                    real("libnvidia-gpucomp.so.550.54.15")
                ),
                (
                    format!("{d}/libnvidia-ml.so.1"),
                    real("libnvidia-ml.so.550.54.15")
                ),
                (
                    format!("{d}/libnvidia-ml.so.550.54.15"),
                    real("libnvidia-ml.so.550.54.15")
                ),
                (
                    format!("{d}/libnvidia-nvvm.so.4"),
                    real("libnvidia-nvvm.so.550.54.15")
                ),
                (
                    format!("{d}/libnvidia-nvvm.so.550.54.15"),
                    real("libnvidia-nvvm.so.550.54.15")
                ),
                (
                    "/usr/bin/nvidia-smi".to_string(),
                    root.path()
                        .join("usr/bin/nvidia-smi")
                        .canonicalize()
                        .unwrap()
                ),
            ]
        );
    }

    #[test]
    fn ldconfig_answers_win_and_missing_libraries_are_reported() {
        let root = fake_driver_root();
        // A second copy of libcuda elsewhere, which ldconfig names.
        let other = root.path().join("opt/driver/lib");
        fs::create_dir_all(&other).unwrap();
        fs::write(other.join("libcuda.so.1"), b"\x7fELF").unwrap();
        let found = find_driver_files(root.path(), Some(LDCONFIG));
        assert!(
            found
                .files
                .iter()
                .any(|f| f.container == "/opt/driver/lib/libcuda.so.1"),
            "{found:?}"
        );
        assert!(found.looked.contains(&"ldconfig -p".to_string()));

        let empty = tempfile::tempdir().unwrap();
        let found = find_driver_files(empty.path(), None);
        assert_eq!(found.missing, KEY_LIBRARIES);
        assert!(found.files.is_empty());
        assert_eq!(found.looked.len(), LIBRARY_DIRS.len());
    }
}
