//! Which slice a host process belongs to, decided from what the kernel says about the
//! process and from files only the host can write; never from a slice's ledger or
//! anything else a container can write.
//!
//! * A slice is a pinned configuration file `<state-dir>/config/<name>.env`, written by
//!   `gpuslice cdi generate` and bind-mounted read-only at `/run/gpuslice/slice.env` into
//!   every container of the slice ([`SliceTable`]).
//! * A process belongs to the slice whose file it has among its mounts. The mount is
//!   recognised by its filesystem's device and the file's path within that filesystem
//!   (the `mountinfo` line), which a container cannot forge: a file it could create is
//!   in a folder of its own, never at `config/<name>.env` of the host's state folder.
//! * The cgroup of a process seen with the mount counts as the slice's from then on
//!   ([`Membership`]), so a process that leaves the mount behind (a new mount namespace
//!   with another root) stays in its slice; processes cannot leave their cgroup. A cgroup
//!   is learned only when every process in it shares one PID namespace other than the
//!   agent's, that is a container's own cgroup, never a host session's.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use gpuslice_config::{MemoryLimits, SliceConfig};

use crate::procfs::{Mount, Procfs, cgroup_within};

/// The folder of the pinned configurations below the state folder (the host file
/// layout, `gpuslice_host::layout`).
pub use gpuslice_host::layout::CONFIG_DIR;

/// One slice as the host's state folder defines it.
#[derive(Debug, Clone)]
pub struct SliceFile {
    /// The slice's name (the file's name without `.env`).
    pub name: String,
    /// The file, as the agent sees it.
    pub path: PathBuf,
    /// How the file shows in a container's `mountinfo`: its filesystem's device and its
    /// path within that filesystem. `None` when the agent could not work it out (the
    /// slice is then recognised by its cgroup only).
    pub mount_id: Option<((u32, u32), String)>,
    /// Its memory limits, or why the file does not parse (the slice is then held to
    /// nothing: a limit that cannot be read fails closed).
    pub memory: Result<MemoryLimits, String>,
}

impl SliceFile {
    /// The slice's memory limit on the GPU with this index and UUID: `Some(0)` when its
    /// file does not parse, `None` when it sets no limit there.
    pub fn memory_limit(&self, index: u32, uuid: &str) -> Option<u64> {
        match &self.memory {
            Ok(m) => m.limit_for(Some(index), uuid),
            Err(_) => Some(0),
        }
    }
}

/// Every slice of a state folder.
#[derive(Debug, Clone, Default)]
pub struct SliceTable {
    slices: Vec<SliceFile>,
}

impl SliceTable {
    /// Reads `<state_dir>/config/*.env`. A missing folder is an empty table; a file that
    /// cannot be read or parsed is a slice whose `memory` says why.
    pub fn load(state_dir: &Path, procfs: &Procfs) -> Self {
        let dir = state_dir.join(CONFIG_DIR);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Self::default();
        };
        let own_mounts = procfs.own_mounts().unwrap_or_default();
        let mut slices: Vec<SliceFile> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let path = e.path();
                let name = path
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".env")?
                    .to_string();
                if name.is_empty() || !path.is_file() {
                    return None;
                }
                let memory = SliceConfig::from_env_or_pinned(&[], &path)
                    .map(|c| c.memory)
                    .map_err(|e| e.to_string());
                let mount_id = mount_id(&path, &own_mounts);
                Some(SliceFile {
                    name,
                    path,
                    mount_id,
                    memory,
                })
            })
            .collect();
        slices.sort_by(|a, b| a.name.cmp(&b.name));
        Self { slices }
    }

    /// The slices, by name.
    pub fn slices(&self) -> &[SliceFile] {
        &self.slices
    }

    /// The slice named `name`.
    pub fn get(&self, name: &str) -> Option<&SliceFile> {
        self.slices.iter().find(|s| s.name == name)
    }

    /// The slice whose pinned file is among `mounts`, if any.
    pub fn slice_of_mounts(&self, mounts: &[Mount]) -> Option<&SliceFile> {
        mounts.iter().find_map(|m| {
            let root = m.root.strip_suffix("//deleted").unwrap_or(&m.root);
            self.slices.iter().find(|s| {
                s.mount_id
                    .as_ref()
                    .is_some_and(|(dev, r)| *dev == m.dev && r == root)
            })
        })
    }
}

/// How `file` shows in `mountinfo` when bind-mounted: the device of its filesystem, and
/// its path within the filesystem, worked out from the mount of the agent's own view
/// that holds it (`own_mounts`: the last, deepest mount whose mount point contains it).
pub fn mount_id(file: &Path, own_mounts: &[Mount]) -> Option<((u32, u32), String)> {
    let file = std::fs::canonicalize(file).ok()?;
    let dev = std::fs::metadata(&file).ok()?.dev();
    let dev = (libc::major(dev), libc::minor(dev));
    let mut best: Option<(&Mount, &Path)> = None;
    for m in own_mounts.iter().filter(|m| m.dev == dev) {
        let Ok(rest) = file.strip_prefix(&m.mount_point) else {
            continue;
        };
        if best.is_none_or(|(b, _)| m.mount_point.len() >= b.mount_point.len()) {
            best = Some((m, rest));
        }
    }
    let (m, rest) = best?;
    let root = Path::new(&m.root).join(rest);
    Some((dev, root.to_str()?.to_string()))
}

/// Slice membership of host processes, with what it has learned about cgroups.
#[derive(Debug)]
pub struct Membership {
    procfs: Procfs,
    cgroupfs: PathBuf,
    agent_pid_ns: Option<u64>,
    /// Container cgroups and the slice each belongs to.
    learned: HashMap<String, String>,
    /// By host PID and start time: the slice whose file it has mounted, or none (its
    /// cgroup is then looked up each time: it may be learned later).
    known: HashMap<(u32, u64), Option<String>>,
}

impl Membership {
    /// Reads `procfs` and the cgroup v2 tree at `cgroupfs` (normally `/sys/fs/cgroup`).
    pub fn new(procfs: Procfs, cgroupfs: impl Into<PathBuf>) -> Self {
        let agent_pid_ns = procfs.pid_ns(std::process::id());
        Self {
            procfs,
            cgroupfs: cgroupfs.into(),
            agent_pid_ns,
            learned: HashMap::new(),
            known: HashMap::new(),
        }
    }

    /// The slice of host process `pid` started at `start_time`, by its mounts or its
    /// cgroup; `None` when it belongs to none (or is gone).
    pub fn slice_of(&mut self, table: &SliceTable, pid: u32, start_time: u64) -> Option<String> {
        let by_mount = match self.known.get(&(pid, start_time)) {
            Some(known) => known.clone(),
            None => {
                let Some(mounts) = self.procfs.mounts(pid) else {
                    return None; // gone
                };
                let by_mount = table.slice_of_mounts(&mounts).map(|s| s.name.clone());
                if let (Some(name), Some(cgroup)) = (&by_mount, self.procfs.cgroup(pid)) {
                    self.learn(pid, &cgroup, name);
                }
                self.known.insert((pid, start_time), by_mount.clone());
                by_mount
            }
        };
        by_mount.or_else(|| {
            let cgroup = self.procfs.cgroup(pid)?;
            self.by_cgroup(&cgroup)
        })
    }

    /// The slice of a learned cgroup that holds `cgroup`; learned cgroups that are gone
    /// are forgotten.
    fn by_cgroup(&mut self, cgroup: &str) -> Option<String> {
        let cgroupfs = &self.cgroupfs;
        self.learned
            .retain(|c, _| cgroupfs.join(c.trim_start_matches('/')).is_dir());
        self.learned
            .iter()
            .filter(|(c, _)| cgroup_within(cgroup, c))
            .max_by_key(|(c, _)| c.len())
            .map(|(_, name)| name.clone())
    }

    /// Learns `cgroup` for slice `name` if it is a container's own: not the root, and
    /// every process in it in `pid`'s PID namespace, which is not the agent's.
    fn learn(&mut self, pid: u32, cgroup: &str, name: &str) {
        if cgroup == "/" || self.learned.contains_key(cgroup) {
            return;
        }
        let Some(ns) = self.procfs.pid_ns(pid) else {
            return;
        };
        if Some(ns) == self.agent_pid_ns {
            return;
        }
        let procs = self
            .cgroupfs
            .join(cgroup.trim_start_matches('/'))
            .join("cgroup.procs");
        let Ok(text) = std::fs::read_to_string(procs) else {
            return;
        };
        let all_in_ns = text
            .split_ascii_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .all(|p| self.procfs.pid_ns(p).is_none_or(|n| n == ns));
        if all_in_ns {
            self.learned.insert(cgroup.to_string(), name.to_string());
        }
    }

    /// Forgets processes that are not in `alive` (host PIDs).
    pub fn forget_all_but(&mut self, alive: &HashSet<u32>) {
        self.known.retain(|(pid, _), _| alive.contains(pid));
    }

    /// The cgroups learned so far, with their slices.
    pub fn learned(&self) -> impl Iterator<Item = (&str, &str)> {
        self.learned.iter().map(|(c, n)| (c.as_str(), n.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(dev: (u32, u32), root: &str, at: &str) -> Mount {
        Mount {
            dev,
            root: root.into(),
            mount_point: at.into(),
        }
    }

    /// A state folder with slices `a` (1 GiB) and `broken`, seen by a fake `/proc`.
    fn state() -> (tempfile::TempDir, SliceTable, (u32, u32)) {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("state/config");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(
            config.join("a.env"),
            "GPUSLICE_SLICE=a\nGPUSLICE_MEMORY=1GiB\n",
        )
        .unwrap();
        std::fs::write(config.join("broken.env"), "GPUSLICE_MEMORY=lots\n").unwrap();
        std::fs::write(config.join("not-a-slice.txt"), "x").unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        let dev = std::fs::metadata(&real).unwrap().dev();
        let dev = (libc::major(dev), libc::minor(dev));
        // The agent's view: the temporary folder is a mount of `/srv/tmpfs-root`.
        let proc = dir.path().join("proc");
        std::fs::create_dir_all(proc.join("self")).unwrap();
        std::fs::write(
            proc.join("self/mountinfo"),
            format!(
                "1 0 {}:{} /srv/tmpfs-root {} rw - tmpfs t rw\n2 1 0:99 / /elsewhere rw - tmpfs t rw\n",
                dev.0,
                dev.1,
                real.display()
            ),
        )
        .unwrap();
        let table = SliceTable::load(&dir.path().join("state"), &Procfs::new(&proc));
        (dir, table, dev)
    }

    #[test]
    fn a_state_folder_defines_the_slices_and_how_their_files_show_when_mounted() {
        let (_dir, table, dev) = state();
        let names: Vec<&str> = table.slices().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "broken"]);
        let a = table.get("a").unwrap();
        assert_eq!(
            a.mount_id,
            Some((dev, "/srv/tmpfs-root/state/config/a.env".to_string()))
        );
        assert_eq!(a.memory_limit(0, "GPU-x"), Some(1 << 30));
        // A limit that cannot be read holds the slice to nothing.
        let broken = table.get("broken").unwrap();
        assert!(
            broken
                .memory
                .as_ref()
                .unwrap_err()
                .contains("GPUSLICE_MEMORY")
        );
        assert_eq!(broken.memory_limit(0, "GPU-x"), Some(0));
        assert!(
            SliceTable::load(Path::new("/nonexistent"), &Procfs::default())
                .slices()
                .is_empty()
        );
    }

    #[test]
    fn a_process_is_in_the_slice_whose_file_it_has_mounted_and_nothing_else_counts() {
        let (_dir, table, dev) = state();
        let at = "/run/gpuslice/slice.env";
        let root = "/srv/tmpfs-root/state/config/a.env";
        let found = |mounts: &[Mount]| table.slice_of_mounts(mounts).map(|s| s.name.clone());
        assert_eq!(found(&[mount(dev, root, at)]), Some("a".into()));
        // Replaced on the host since (a new `cdi generate`): still the slice's.
        assert_eq!(
            found(&[mount(dev, &format!("{root}//deleted"), at)]),
            Some("a".into())
        );
        // A file of the same name elsewhere on the same filesystem (say in the slice's
        // writable folder), or on another filesystem, is not the slice's file.
        let copy = "/srv/tmpfs-root/state/slices/a/config/a.env";
        assert_eq!(found(&[mount(dev, copy, at)]), None);
        assert_eq!(found(&[mount((0, 4242), root, at)]), None);
        assert_eq!(found(&[]), None);
    }

    #[test]
    fn a_containers_cgroup_keeps_a_process_that_left_the_mount_behind_in_its_slice() {
        let (dir, table, dev) = state();
        let proc = dir.path().join("proc");
        let cgroupfs = dir.path().join("cgroup");
        let root = "/srv/tmpfs-root/state/config/a.env";
        let with_mount = format!(
            "1 0 0:1 / / rw - overlay o rw\n2 1 {}:{} {root} /run/gpuslice/slice.env ro - tmpfs t rw\n",
            dev.0, dev.1
        );
        let without = "1 0 0:1 / / rw - overlay o rw\n".to_string();
        std::fs::write(dir.path().join("ns-container"), "").unwrap();
        std::fs::write(dir.path().join("ns-host"), "").unwrap();
        let me = std::process::id();
        // 100 and 101 are a container (own PID namespace and cgroup); 101 left the mount
        // behind. 200 and 201 share the agent's namespace and a host session's cgroup;
        // 200 has slice a's file mounted (by hand, on the host).
        for (pid, ns, cgroup, mounts) in [
            (100, "ns-container", "/ctr/a", &with_mount),
            (101, "ns-container", "/ctr/a", &without),
            (200, "ns-host", "/user", &with_mount),
            (201, "ns-host", "/user", &without),
            (me, "ns-host", "/user", &without),
        ] {
            let d = proc.join(pid.to_string());
            std::fs::create_dir_all(d.join("ns")).unwrap();
            std::os::unix::fs::symlink(dir.path().join(ns), d.join("ns/pid")).unwrap();
            std::fs::write(d.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
            std::fs::write(d.join("mountinfo"), mounts).unwrap();
        }
        for (cgroup, procs) in [
            ("ctr/a", "100\n101\n"),
            ("user", &format!("200\n201\n{me}\n")),
        ] {
            std::fs::create_dir_all(cgroupfs.join(cgroup)).unwrap();
            std::fs::write(cgroupfs.join(cgroup).join("cgroup.procs"), procs).unwrap();
        }
        let mut m = Membership::new(Procfs::new(&proc), &cgroupfs);
        // Before anything of the container was seen with the mount: not known.
        assert_eq!(m.slice_of(&table, 101, 1), None);
        assert_eq!(m.slice_of(&table, 100, 1), Some("a".into()));
        assert_eq!(m.learned().collect::<Vec<_>>(), [("/ctr/a", "a")]);
        assert_eq!(m.slice_of(&table, 101, 1), Some("a".into()));
        // On the host the mount counts, the session's cgroup is not learned.
        assert_eq!(m.slice_of(&table, 200, 1), Some("a".into()));
        assert_eq!(m.slice_of(&table, 201, 1), None);
        assert_eq!(m.learned().count(), 1);
        // A cgroup that is gone is forgotten.
        std::fs::remove_dir_all(cgroupfs.join("ctr")).unwrap();
        m.forget_all_but(&HashSet::new());
        assert_eq!(m.slice_of(&table, 101, 1), None);
        assert_eq!(m.learned().count(), 0);
    }
}
