//! The container engines `gpuslice doctor` looks for (Podman, Docker, containerd,
//! nerdctl, CRI-O): finding them on `PATH`, reading their versions, and what each
//! version does with CDI ([`assess`], a pure function of the name, the `--version`
//! output and the engine's CDI setting, so it is tested without the engines).
//!
//! The spec versions are those of the CDI library each release bundles, given as
//! "at least" where a range of releases bundles several: a spec that declares more than
//! an engine is known to read is a problem, more than it reads at least is a warning.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cdi::version::CdiVersion;

/// The engines looked for, by program name.
pub const ENGINES: [&str; 5] = ["podman", "docker", "containerd", "nerdctl", "crio"];

/// How long one `--version` (or `docker info`) may take.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(5);

/// The highest CDI spec version an engine reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// Exactly up to this version (its CDI library is known).
    UpTo(CdiVersion),
    /// At least up to this version (releases of this range bundle several).
    AtLeast(CdiVersion),
}

/// Whether an engine gives containers CDI devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cdi {
    /// It does (`--device vendor/class=name`).
    On,
    /// It can, once configured as said.
    Off(String),
    /// It cannot: the text says from which release it can.
    Unsupported(String),
    /// Its version could not be read.
    Unknown,
}

/// An engine found on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engine {
    /// `podman`, `docker`, ...
    pub name: &'static str,
    /// The program.
    pub path: PathBuf,
    /// Its version, if it could be read.
    pub version: Option<(u32, u32, u32)>,
    /// Its CDI support.
    pub cdi: Cdi,
    /// The spec versions it reads, where known.
    pub reads: Option<Reads>,
}

/// The first `MAJOR.MINOR[.PATCH]` in `text` (a leading `v` allowed).
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    text.split(|c: char| c.is_whitespace() || c == ',' || c == '"')
        .map(|w| w.trim_start_matches('v'))
        .find_map(|w| {
            let mut parts = w.split(['.', '-', '+', '~']);
            let major = parts.next()?.parse().ok()?;
            let minor = parts.next()?.parse().ok()?;
            let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            Some((major, minor, patch))
        })
}

const fn v(major: u32, minor: u32) -> CdiVersion {
    CdiVersion::new(major, minor, 0)
}

/// What engine `name` at `version_text` (its `--version` output) does with CDI.
/// `cdi_enabled` is its CDI setting where it has one (Docker's `features.cdi`,
/// containerd 1.7's `enable_cdi`): `None` when it could not be read.
pub fn assess(
    name: &'static str,
    path: &Path,
    version_text: &str,
    cdi_enabled: Option<bool>,
) -> Engine {
    let version = parse_version(version_text);
    let mut engine = Engine {
        name,
        path: path.to_path_buf(),
        version,
        cdi: Cdi::Unknown,
        reads: None,
    };
    let Some((major, minor, _)) = version else {
        return engine;
    };
    let at = (major, minor);
    let unsupported = |from: &str| Cdi::Unsupported(format!("CDI needs {name} {from} or later"));
    let (cdi, reads) = match name {
        "podman" if at < (4, 1) => (unsupported("4.1"), None),
        "podman" if at < (4, 3) => (Cdi::On, Some(Reads::AtLeast(v(0, 3)))),
        "podman" if at < (4, 6) => (Cdi::On, Some(Reads::UpTo(v(0, 5)))),
        "podman" => (Cdi::On, Some(Reads::AtLeast(v(0, 6)))),
        "docker" if major < 25 => (unsupported("25"), None),
        "docker" => (
            match cdi_enabled {
                Some(true) => Cdi::On,
                _ => Cdi::Off(
                    "set {\"features\": {\"cdi\": true}} in /etc/docker/daemon.json and restart dockerd (Docker 25 to 27 have CDI off by default)"
                        .into(),
                ),
            },
            Some(Reads::AtLeast(v(0, 6))),
        ),
        "containerd" if at < (1, 7) => (unsupported("1.7"), None),
        "containerd" if major < 2 => (
            match cdi_enabled {
                Some(true) => Cdi::On,
                _ => Cdi::Off(
                    "set enable_cdi = true (and cdi_spec_dirs) in the CRI plugin's section of /etc/containerd/config.toml and restart containerd"
                        .into(),
                ),
            },
            Some(Reads::AtLeast(v(0, 5))),
        ),
        "containerd" => (Cdi::On, Some(Reads::AtLeast(v(0, 6)))),
        "nerdctl" if major < 2 => (unsupported("2.0"), None),
        "nerdctl" => (Cdi::On, Some(Reads::AtLeast(v(0, 6)))),
        "crio" if at < (1, 23) => (unsupported("1.23"), None),
        "crio" => (Cdi::On, Some(Reads::AtLeast(v(0, 3)))),
        _ => (Cdi::Unknown, None),
    };
    engine.cdi = cdi;
    engine.reads = reads;
    engine
}

/// Finds `program` in the folders of `path_var` (a `PATH` value).
pub fn find_program(program: &str, path_var: &OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path_var)
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Runs `program args` with no input, for at most `limit`; its stdout and stderr
/// together, or `None` if it could not be started or did not end in time (it is then
/// killed).
pub fn output_of(program: &Path, args: &[&str], limit: Duration) -> Option<String> {
    let spawn = || {
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    // A program just written may be busy for a moment (another thread's fork held it
    // open): try again briefly.
    let mut tries = 0;
    let mut child = loop {
        match spawn() {
            Ok(child) => break child,
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => return None,
        }
    };
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut text);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    Some(text)
}

/// Whether a config file turns a CDI setting on: a line `key = true` (TOML) or
/// `"key": true` (JSON), comments aside.
fn setting_on(file: &Path, key: &str) -> Option<bool> {
    let text = std::fs::read_to_string(file).ok()?;
    Some(text.lines().any(|line| {
        let line = line.split('#').next().unwrap_or("");
        let compact: String = line.chars().filter(|c| !c.is_whitespace()).collect();
        compact.contains(&format!("{key}=true")) || compact.contains(&format!("\"{key}\":true"))
    }))
}

/// The engines installed on this host (found on `path_var`), with their versions and
/// CDI support.
pub fn detect(path_var: &OsStr) -> Vec<Engine> {
    ENGINES
        .iter()
        .filter_map(|&name| {
            let path = find_program(name, path_var)?;
            let version_text = output_of(&path, &["--version"], COMMAND_LIMIT).unwrap_or_default();
            let cdi_enabled = match name {
                // Docker 25+ lists its CDI folders when CDI is on.
                "docker" => output_of(
                    &path,
                    &["info", "--format", "{{json .CDISpecDirs}}"],
                    COMMAND_LIMIT,
                )
                .map(|t| t.contains("cdi"))
                .filter(|&on| on)
                .or_else(|| setting_on(Path::new("/etc/docker/daemon.json"), "cdi")),
                "containerd" => setting_on(Path::new("/etc/containerd/config.toml"), "enable_cdi"),
                _ => None,
            };
            Some(assess(name, &path, &version_text, cdi_enabled))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(name: &'static str, text: &str, enabled: Option<bool>) -> Engine {
        assess(name, Path::new("/usr/bin/x"), text, enabled)
    }

    #[test]
    fn versions_are_read_from_what_engines_print() {
        assert_eq!(parse_version("podman version 4.3.1"), Some((4, 3, 1)));
        assert_eq!(
            parse_version("Docker version 25.0.3, build 4debf41"),
            Some((25, 0, 3))
        );
        assert_eq!(
            parse_version("containerd github.com/containerd/containerd v1.7.24 61f9fd88"),
            Some((1, 7, 24))
        );
        assert_eq!(
            parse_version("crio version 1.28.1\nVersion:        1.28.1"),
            Some((1, 28, 1))
        );
        assert_eq!(parse_version("nerdctl version 2.0.3"), Some((2, 0, 3)));
        assert_eq!(parse_version("no version here"), None);
    }

    #[test]
    fn what_each_engine_does_with_cdi() {
        let podman = at("podman", "podman version 4.3.1", None);
        assert_eq!(podman.cdi, Cdi::On);
        assert_eq!(podman.reads, Some(Reads::UpTo(v(0, 5))));
        assert!(matches!(
            at("podman", "podman version 3.4.4", None).cdi,
            Cdi::Unsupported(_)
        ));
        assert_eq!(
            at("podman", "podman version 5.2.0", None).reads,
            Some(Reads::AtLeast(v(0, 6)))
        );
        let docker = at("docker", "Docker version 25.0.3, build x", None);
        assert!(matches!(&docker.cdi, Cdi::Off(how) if how.contains("daemon.json")));
        assert_eq!(
            at("docker", "Docker version 26.1.0", Some(true)).cdi,
            Cdi::On
        );
        assert!(matches!(
            at("docker", "Docker version 24.0.7", None).cdi,
            Cdi::Unsupported(m) if m.contains("25")
        ));
        let containerd = at("containerd", "containerd x v1.7.2 y", Some(false));
        assert!(matches!(&containerd.cdi, Cdi::Off(how) if how.contains("enable_cdi")));
        assert_eq!(at("containerd", "containerd x v2.0.0 y", None).cdi, Cdi::On);
        assert_eq!(at("crio", "crio version 1.28.1", None).cdi, Cdi::On);
        assert_eq!(at("podman", "garbage", None).cdi, Cdi::Unknown);
    }

    #[test]
    fn commands_are_bounded_in_time() {
        let sh = Path::new("/bin/sh");
        assert_eq!(
            output_of(sh, &["-c", "echo out; echo err >&2"], COMMAND_LIMIT).as_deref(),
            Some("out\nerr\n")
        );
        let start = Instant::now();
        assert_eq!(
            output_of(sh, &["-c", "sleep 30"], Duration::from_millis(200)),
            None
        );
        assert!(start.elapsed() < Duration::from_secs(10));
        assert_eq!(
            output_of(Path::new("/nonexistent/x"), &[], COMMAND_LIMIT),
            None
        );
    }

    #[test]
    fn programs_are_found_on_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("podman");
        std::fs::write(&prog, "#!/bin/sh\necho podman version 4.3.1\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([Path::new("/nonexistent"), dir.path()]).unwrap();
        assert_eq!(find_program("podman", &path), Some(prog.clone()));
        assert_eq!(find_program("docker", &path), None);
        let found = detect(&path);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].version, Some((4, 3, 1)));
        assert_eq!(found[0].reads, Some(Reads::UpTo(v(0, 5))));
    }
}
