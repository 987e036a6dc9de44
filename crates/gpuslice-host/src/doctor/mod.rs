//! `gpuslice doctor`: checks a host in one pass and says what is wrong and how to fix it.
//! It owns the checks and the report ([`diagnose`], [`Report`]); the CLI only gathers
//! the flags and prints. The checks, each a list of [`Finding`]s:
//!
//! * **driver**: NVML and the GPUs it lists, each GPU's device node and
//!   `/dev/nvidiactl` / `/dev/nvidia-uvm`, the driver libraries CDI specs mount;
//! * **engines**: the container engines installed ([`engines`]), their versions, CDI
//!   support and the CDI spec versions they read;
//! * **specs**: every CDI spec in the spec folders parses and declares a known version;
//!   gpuslice's declare no less than the fields they use need and no more than an
//!   installed engine reads, and every host file and device node they name exists;
//! * **agent**: whether the agent answers on its socket, and the driver mode its
//!   start-up probe found;
//! * **ledgers**: the state folder's and `gpuslice run`'s ledger folders have the owners
//!   and modes gpuslice gives them, every ledger opens, and no ledger lists processes
//!   that are gone (stale entries, which count against their slice).
//!
//! A finding is fine, a warning (worth knowing, nothing broken) or a problem; any
//! problem makes `gpuslice doctor` exit non-zero.

pub mod engines;

use std::collections::HashSet;
use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gpuslice_config::format_size;
use gpuslice_ledger::folder::{effective_uid, user_ledger_dirs};
use gpuslice_ledger::{Ledger, Liveness, Owners};

use crate::cdi::host::{self, HostGpu, NodeState};
use crate::cdi::spec::Spec;
use crate::cdi::version::{self, CdiVersion};
use crate::layout::HostLayout;
use crate::slice::KIND;
use engines::{Cdi, Engine, Reads};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// As it should be.
    Ok,
    /// Worth knowing; nothing is broken.
    Warning,
    /// Something is wrong.
    Problem,
}

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The check: `driver`, `engines`, `specs`, `agent` or `ledgers`.
    pub area: &'static str,
    /// How bad.
    pub level: Level,
    /// What was found.
    pub text: String,
    /// How to fix it, for warnings and problems.
    pub fix: Option<String>,
}

/// Everything `gpuslice doctor` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// In the order checked.
    pub findings: Vec<Finding>,
}

impl Report {
    fn add(&mut self, area: &'static str, level: Level, text: String, fix: Option<String>) {
        self.findings.push(Finding {
            area,
            level,
            text,
            fix,
        });
    }
    fn ok(&mut self, area: &'static str, text: String) {
        self.add(area, Level::Ok, text, None);
    }
    fn warn(&mut self, area: &'static str, text: String, fix: impl Into<String>) {
        self.add(area, Level::Warning, text, Some(fix.into()));
    }
    fn problem(&mut self, area: &'static str, text: String, fix: impl Into<String>) {
        self.add(area, Level::Problem, text, Some(fix.into()));
    }

    /// The problems found.
    pub fn problems(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.level == Level::Problem)
    }
}

impl fmt::Display for Report {
    /// One line per finding (`ok`, `warning`, `PROBLEM`), its fix indented below, and a
    /// last line with the counts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut area = "";
        for finding in &self.findings {
            if finding.area != area {
                area = finding.area;
                writeln!(f, "{area}:")?;
            }
            let tag = match finding.level {
                Level::Ok => "ok",
                Level::Warning => "warning",
                Level::Problem => "PROBLEM",
            };
            writeln!(f, "  {tag}: {}", finding.text)?;
            if let Some(fix) = &finding.fix {
                writeln!(f, "      fix: {fix}")?;
            }
        }
        let count = |level| self.findings.iter().filter(|x| x.level == level).count();
        writeln!(
            f,
            "{} problem(s), {} warning(s)",
            count(Level::Problem),
            count(Level::Warning)
        )
    }
}

/// Where `gpuslice doctor` looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoctorOptions {
    /// The state folder and the agent's folder.
    pub layout: HostLayout,
    /// The CDI spec folders (`/etc/cdi`, `/var/run/cdi`).
    pub spec_dirs: Vec<PathBuf>,
    /// Root of the file system whose `dev/` holds the NVIDIA device nodes.
    pub dev_root: PathBuf,
    /// Root of the file system the driver libraries are looked for in.
    pub driver_root: PathBuf,
    /// `gpuslice run`'s ledger folders to check; `None`: the caller's own, or every
    /// user's for root.
    pub ledger_dirs: Option<Vec<PathBuf>>,
}

/// What `gpuslice doctor` reads from the host besides files: the GPUs (from NVML, or why
/// not) and the engines found.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The GPUs, or why NVML could not list them.
    pub gpus: Result<Vec<HostGpu>, String>,
    /// The container engines installed.
    pub engines: Vec<Engine>,
}

/// Runs every check.
pub fn diagnose(options: &DoctorOptions, observed: &Observed) -> Report {
    let mut report = Report::default();
    check_driver(options, &observed.gpus, &mut report);
    check_engines(&observed.engines, &mut report);
    check_specs(options, &observed.engines, &mut report);
    check_agent(&options.layout, &mut report);
    check_ledgers(options, &mut report);
    report
}

const TRY_WITHOUT_GPU: &str = "install the NVIDIA driver; to try gpuslice without a GPU, see docs/cdi.md, \"Trying it without a GPU\"";

fn check_driver(options: &DoctorOptions, gpus: &Result<Vec<HostGpu>, String>, r: &mut Report) {
    const AREA: &str = "driver";
    let gpus = match gpus {
        Ok(gpus) if gpus.is_empty() => {
            r.problem(AREA, "NVML lists no GPUs".into(), TRY_WITHOUT_GPU);
            &[][..]
        }
        Ok(gpus) => {
            for g in gpus {
                let memory = g.memory.map(format_size).unwrap_or_else(|| "?".into());
                r.ok(
                    AREA,
                    format!(
                        "GPU {} {} ({memory}), /dev/nvidia{}",
                        g.index, g.uuid, g.minor
                    ),
                );
            }
            &gpus[..]
        }
        Err(e) => {
            r.problem(
                AREA,
                format!("NVML (libnvidia-ml.so.1) cannot list the GPUs: {e}"),
                TRY_WITHOUT_GPU,
            );
            &[][..]
        }
    };
    let mut nodes: Vec<String> = gpus
        .iter()
        .map(|g| format!("/dev/nvidia{}", g.minor))
        .collect();
    nodes.extend(["/dev/nvidiactl".to_string(), "/dev/nvidia-uvm".into()]);
    for node in &nodes {
        match host::device_node(&options.dev_root, node) {
            NodeState::Present(_) => {}
            NodeState::Missing(path) if node == "/dev/nvidia-uvm" => r.warn(
                AREA,
                format!("{} does not exist yet", path.display()),
                "load the nvidia-uvm module (nvidia-modprobe -u -c=0, or run any CUDA program), then run gpuslice cdi generate again",
            ),
            NodeState::Missing(path) => r.problem(
                AREA,
                format!("{} does not exist", path.display()),
                "load the NVIDIA driver (nvidia-modprobe -c=0)",
            ),
            NodeState::NotADevice(path) => r.problem(
                AREA,
                format!("{} is not a character device", path.display()),
                "remove it and load the NVIDIA driver, which creates the node",
            ),
        }
    }
    let ldconfig = if options.driver_root == Path::new("/") {
        host::run_ldconfig()
    } else {
        None
    };
    let found = host::find_driver_files(&options.driver_root, ldconfig.as_deref());
    if found.missing.is_empty() {
        r.ok(
            AREA,
            format!(
                "device nodes present; {} driver file(s) to mount into containers",
                found.files.len()
            ),
        );
    } else {
        r.problem(
            AREA,
            format!(
                "{} not found (looked in {})",
                found.missing.join(" and "),
                found.looked.join(", ")
            ),
            "install the NVIDIA driver's user-space libraries, or give cdi generate --driver-root",
        );
    }
}

fn reads_text(reads: Option<Reads>) -> String {
    match reads {
        Some(Reads::UpTo(v)) => format!("reads CDI specs up to {v}"),
        Some(Reads::AtLeast(v)) => format!("reads CDI specs up to {v} at least"),
        None => "reads no CDI specs".into(),
    }
}

fn check_engines(engines: &[Engine], r: &mut Report) {
    const AREA: &str = "engines";
    if engines.is_empty() {
        r.warn(
            AREA,
            format!(
                "no container engine found ({})",
                engines::ENGINES.join(", ")
            ),
            "install one, e.g. apt-get install podman (Podman 4.1 or later reads CDI specs)",
        );
        return;
    }
    for e in engines {
        let version = e
            .version
            .map(|(a, b, c)| format!("{a}.{b}.{c}"))
            .unwrap_or_else(|| "of unknown version".into());
        let head = format!("{} {version} ({})", e.name, e.path.display());
        match &e.cdi {
            Cdi::On => r.ok(AREA, format!("{head}: CDI on, {}", reads_text(e.reads))),
            Cdi::Off(how) => r.warn(
                AREA,
                format!("{head}: CDI is off, {}", reads_text(e.reads)),
                how.clone(),
            ),
            Cdi::Unsupported(why) => r.warn(
                AREA,
                format!("{head}: no CDI support"),
                format!("{why}; with an older engine use gpuslice-cdi-inject on a plain OCI bundle (docs/cdi.md)"),
            ),
            Cdi::Unknown => r.warn(
                AREA,
                format!("{head}: its version could not be read, so its CDI support is not known"),
                format!("run {} --version", e.path.display()),
            ),
        }
    }
}

/// The spec files of `dir` (`*.json`, `*.yaml`, `*.yml`), sorted.
fn spec_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.extension()
                        .is_some_and(|x| x == "json" || x == "yaml" || x == "yml")
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn check_specs(options: &DoctorOptions, engines: &[Engine], r: &mut Report) {
    const AREA: &str = "specs";
    let regenerate =
        "run gpuslice cdi generate again (it writes the spec and every host file it mounts)";
    let mut ours = 0;
    for dir in &options.spec_dirs {
        for path in spec_files(dir) {
            let shown = path.display();
            if path.extension().is_some_and(|x| x != "json") {
                r.ok(AREA, format!("{shown}: YAML spec, not checked"));
                continue;
            }
            let value: serde_json::Value = match std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
            {
                Ok(value) => value,
                Err(e) => {
                    r.problem(
                        AREA,
                        format!("{shown} is not a readable CDI spec: {e}"),
                        "fix or remove it: the runtime refuses the whole file (Podman then says only \"unresolvable CDI devices\")",
                    );
                    continue;
                }
            };
            let declared = value["cdiVersion"].as_str().unwrap_or("");
            let kind = value["kind"].as_str().unwrap_or("");
            let declared: CdiVersion = match declared.parse() {
                Ok(v) => v,
                Err(e) => {
                    r.problem(
                        AREA,
                        format!("{shown} (kind {kind:?}): cdiVersion {e}"),
                        "fix or remove it: runtimes refuse the whole file",
                    );
                    continue;
                }
            };
            if kind != KIND {
                r.ok(AREA, format!("{shown}: kind {kind}, CDI {declared}"));
                continue;
            }
            ours += 1;
            let spec = match Spec::read(&path) {
                Ok(spec) => spec,
                Err(e) => {
                    r.problem(AREA, e.to_string(), regenerate);
                    continue;
                }
            };
            check_our_spec(&path, &spec, declared, engines, r);
        }
    }
    if ours == 0 {
        let dirs: Vec<String> = options
            .spec_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        r.warn(
            AREA,
            format!("no gpuslice spec (kind {KIND}) in {}", dirs.join(", ")),
            "offer slices with sudo gpuslice cdi generate --slice NAME=GPUS:MEMORY (docs/cdi.md)",
        );
    }
}

fn check_our_spec(
    path: &Path,
    spec: &Spec,
    declared: CdiVersion,
    engines: &[Engine],
    r: &mut Report,
) {
    const AREA: &str = "specs";
    let shown = path.display();
    let mut fine = true;
    if let Err(too_low) = version::choose(spec, Some(declared)) {
        fine = false;
        r.problem(
            AREA,
            format!("{shown}: {too_low}"),
            "run gpuslice cdi generate again, which declares the lowest version that fits",
        );
    }
    for engine in engines.iter().filter(|e| e.cdi == Cdi::On) {
        let (limit, exact) = match engine.reads {
            Some(Reads::UpTo(v)) => (v, true),
            Some(Reads::AtLeast(v)) => (v, false),
            None => continue,
        };
        if declared <= limit {
            continue;
        }
        fine = false;
        let text = format!(
            "{shown} declares CDI {declared}, but {} {} reads specs up to {limit}{}",
            engine.name,
            engine
                .version
                .map(|(a, b, c)| format!("{a}.{b}.{c}"))
                .unwrap_or_default(),
            if exact { "" } else { " (at least)" }
        );
        let fix = format!(
            "run gpuslice cdi generate again without --cdi-version (it declares the lowest version that fits), or with --cdi-version {limit}"
        );
        if exact {
            r.problem(AREA, text, fix);
        } else {
            r.warn(AREA, text, fix);
        }
    }
    for device in &spec.devices {
        let edits = &device.container_edits;
        for mount in &edits.mounts {
            if std::fs::symlink_metadata(&mount.host_path).is_err() {
                fine = false;
                r.problem(
                    AREA,
                    format!(
                        "{shown}: device {} mounts {}, which does not exist (into {})",
                        device.name, mount.host_path, mount.container_path
                    ),
                    "run gpuslice cdi generate again (it writes the spec and every host file it mounts)",
                );
            }
        }
        for node in &edits.device_nodes {
            let host_path = node.host_path.as_deref().unwrap_or(&node.path);
            let is_device = std::fs::metadata(host_path)
                .is_ok_and(|m| m.file_type().is_char_device() || m.file_type().is_block_device());
            if !is_device {
                fine = false;
                r.problem(
                    AREA,
                    format!(
                        "{shown}: device {} needs the device node {host_path}, which is missing or not a device",
                        device.name
                    ),
                    "load the NVIDIA driver, then run gpuslice cdi generate again",
                );
            }
        }
    }
    if fine {
        r.ok(
            AREA,
            format!(
                "{shown}: CDI {declared}, {} slice(s) ({}), every host file present",
                spec.devices.len(),
                spec.devices
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
}

fn check_agent(layout: &HostLayout, r: &mut Report) {
    const AREA: &str = "agent";
    let socket = layout.agent_socket();
    if !socket.exists() {
        r.warn(
            AREA,
            format!("not running (no socket at {})", socket.display()),
            "start it: sudo gpuslice agent (nvidia-smi inside containers, host-side memory enforcement, freeing the entries of killed containers)",
        );
        return;
    }
    use gpuslice_agent_protocol::{Request, Response, query};
    match query(&socket, Request::View, Duration::from_secs(3)) {
        Ok(Response::View(view)) => r.ok(
            AREA,
            format!(
                "answers at {}; its probe found driver mode {}, {} GPU(s)",
                socket.display(),
                view.mode,
                view.gpus.len()
            ),
        ),
        Ok(Response::Error(e)) => r.problem(
            AREA,
            format!("at {} it answers with an error: {e}", socket.display()),
            "look at the agent's log; restart it (sudo gpuslice agent)",
        ),
        Err(e) => r.problem(
            AREA,
            format!("{} does not answer: {e}", socket.display()),
            "the agent is gone or stuck; restart it (sudo gpuslice agent), which replaces a stale socket",
        ),
    }
}

/// The PID namespaces that still have a process (readable as root), or `None`.
fn live_pid_namespaces() -> Option<HashSet<u64>> {
    if effective_uid() != 0 {
        return None;
    }
    let mut set = HashSet::new();
    for entry in std::fs::read_dir("/proc").ok()?.filter_map(Result::ok) {
        if let Ok(meta) = std::fs::metadata(entry.path().join("ns/pid")) {
            set.insert(meta.ino());
        }
    }
    Some(set)
}

fn mode_text(mode: u32) -> String {
    format!("{:04o}", mode & 0o7777)
}

/// How a folder's mode is judged.
#[derive(Clone, Copy)]
enum ModeRule {
    /// Exactly this mode (the state folder's, which gpuslice sets).
    Exactly(u32),
    /// Writable by nobody but its owner unless sticky (a ledger folder, as the
    /// interposer requires); this mode is the fix.
    Private(u32),
}

/// Checks one folder's owner (`owner` or root) and mode.
fn check_folder(path: &Path, rule: ModeRule, owner: u32, what: &str, r: &mut Report) -> bool {
    const AREA: &str = "ledgers";
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(_) => return false,
    };
    if !meta.is_dir() {
        r.problem(
            AREA,
            format!("{} ({what}) is not a folder", path.display()),
            "remove it; gpuslice creates the folder",
        );
        return false;
    }
    let actual = meta.mode() & 0o7777;
    let mut fine = true;
    let (wrong, mode, why) = match rule {
        ModeRule::Exactly(mode) => (actual != mode, mode, String::new()),
        ModeRule::Private(mode) => (
            actual & 0o022 != 0 && actual & 0o1000 == 0,
            mode,
            ": other users could plant or swap its ledgers, so the interposer refuses them"
                .to_string(),
        ),
    };
    if wrong {
        fine = false;
        r.problem(
            AREA,
            format!(
                "{} ({what}) has mode {}, not {}{why}",
                path.display(),
                mode_text(actual),
                mode_text(mode)
            ),
            format!("chmod {} {}", mode_text(mode), path.display()),
        );
    }
    if meta.uid() != owner && meta.uid() != 0 {
        fine = false;
        r.problem(
            AREA,
            format!(
                "{} ({what}) belongs to user {}, not {owner}",
                path.display(),
                meta.uid()
            ),
            format!("chown {owner} {}", path.display()),
        );
    }
    fine
}

/// Opens one ledger and reports it and its stale entries.
fn check_ledger(
    path: &Path,
    slice: &str,
    owners: Owners,
    live_ns: Option<&HashSet<u64>>,
    stale_fix: &str,
    r: &mut Report,
) {
    const AREA: &str = "ledgers";
    let ledger = match Ledger::open_as(path, owners) {
        Ok(l) => l,
        Err(e) => {
            r.problem(
                AREA,
                format!("slice {slice}: {e}"),
                "remove the file if no process uses the slice; gpuslice makes a new one",
            );
            return;
        }
    };
    let processes = ledger.processes();
    let stale: Vec<String> = processes
        .iter()
        .filter(|p| match p.liveness {
            Liveness::Dead => true,
            Liveness::Alive => false,
            // Another PID namespace: stale when no process is left in it.
            Liveness::Unknown => live_ns.is_some_and(|live| !live.contains(&p.pid_ns)),
        })
        .map(|p| {
            let charged: u64 = p.charges.iter().sum();
            format!("PID {} ({} charged)", p.pid, format_size(charged))
        })
        .collect();
    if ledger.intact().is_err() {
        r.problem(
            AREA,
            format!("slice {slice}: {} was cut short while read", path.display()),
            "a process of the slice truncated it; stop the slice's processes and run cdi generate again",
        );
        return;
    }
    if stale.is_empty() {
        r.ok(
            AREA,
            format!(
                "slice {slice}: {} process(es), no stale entries",
                processes.len()
            ),
        );
    } else {
        r.problem(
            AREA,
            format!(
                "slice {slice}: {} stale entr{} of processes that are gone: {} (they count against the slice)",
                stale.len(),
                if stale.len() == 1 { "y" } else { "ies" },
                stale.join(", ")
            ),
            stale_fix.to_string(),
        );
    }
}

fn check_ledgers(options: &DoctorOptions, r: &mut Report) {
    const AREA: &str = "ledgers";
    let me = effective_uid();
    let live_ns = live_pid_namespaces();
    let layout = &options.layout;
    let state_owner = std::fs::symlink_metadata(&layout.state_dir)
        .map(|m| m.uid())
        .unwrap_or(0);
    let slices_dir = layout.slices_dir();
    if slices_dir.exists() {
        check_folder(
            &slices_dir,
            ModeRule::Exactly(crate::cdi::state::SLICES_DIR_MODE),
            state_owner,
            "the CDI slices' folder",
            r,
        );
        check_folder(
            &layout.gpus_dir(),
            ModeRule::Exactly(0o1777),
            state_owner,
            "the per-GPU folder",
            r,
        );
        match std::fs::read_dir(&slices_dir) {
            Err(e) => r.warn(
                AREA,
                format!("{} cannot be read: {e}", slices_dir.display()),
                "run gpuslice doctor as root to check the CDI and Kubernetes slices",
            ),
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect();
                names.sort();
                for name in names {
                    let dir = layout.slice_dir(&name);
                    check_folder(
                        &dir,
                        ModeRule::Exactly(0o755),
                        state_owner,
                        "a slice's folder",
                        r,
                    );
                    if !layout.pinned_config(&name).exists() {
                        r.problem(
                            AREA,
                            format!(
                                "slice {name}: its pinned configuration {} is missing",
                                layout.pinned_config(&name).display()
                            ),
                            "run gpuslice cdi generate again (or let gpuslice node provide the slice again)",
                        );
                    }
                    check_ledger(
                        &layout.ledger(&name),
                        &name,
                        Owners::AlsoUser(state_owner),
                        live_ns.as_ref(),
                        &format!(
                            "start the agent, which frees them within about 2 s: sudo gpuslice agent --state-dir {}",
                            layout.state_dir.display()
                        ),
                        r,
                    );
                }
            }
        }
    } else {
        r.ok(
            AREA,
            format!("no CDI slices ({} does not exist)", slices_dir.display()),
        );
    }

    let run_dirs: Vec<(u32, PathBuf)> = match &options.ledger_dirs {
        Some(dirs) => dirs
            .iter()
            .map(|d| {
                let uid = std::fs::symlink_metadata(d).map(|m| m.uid()).unwrap_or(me);
                (uid, d.clone())
            })
            .collect(),
        None if me == 0 => {
            user_ledger_dirs(Path::new(gpuslice_ledger::folder::SHM_DIR)).unwrap_or_default()
        }
        None => vec![(me, gpuslice_ledger::default_ledger_dir())],
    };
    for (uid, dir) in run_dirs {
        if !dir.exists() {
            continue;
        }
        check_folder(
            &dir,
            ModeRule::Private(0o700),
            uid,
            "gpuslice run's ledger folder",
            r,
        );
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|e| {
                e.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "ledger"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        for file in files {
            let name = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            check_ledger(
                &file,
                &name,
                Owners::AlsoUser(uid),
                live_ns.as_ref(),
                "gpuslice status frees the entries of dead processes (it sweeps as it reads)",
                r,
            );
        }
    }
}

#[cfg(test)]
mod tests;
