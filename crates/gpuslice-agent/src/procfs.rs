//! What the agent reads about a process from the host's `/proc`: its PID namespace (the
//! inode of `/proc/<pid>/ns/pid`), its PIDs in every namespace from the host's down to its
//! own (`NSpid:` in `/proc/<pid>/status`), its cgroup v2 path (`0::` in
//! `/proc/<pid>/cgroup`), its start time (`/proc/<pid>/stat`), its parent, its command
//! name and its mounts (`/proc/<pid>/mountinfo`, which the kernel writes: a process can
//! change its mounts only as far as its privileges allow, never what they are made of).
//!
//! The root is a parameter so that tests can build a fake tree. The agent always reads
//! the host's `/proc`, never a container's.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub use gpuslice_config::proc_status::parse_ns_pids;

/// A `/proc` tree.
#[derive(Debug, Clone)]
pub struct Procfs {
    root: PathBuf,
}

impl Default for Procfs {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl Procfs {
    /// The tree at `root` (normally `/proc`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The tree's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, pid: u32, file: &str) -> PathBuf {
        self.root.join(pid.to_string()).join(file)
    }

    /// Inode of the PID namespace of `pid`.
    pub fn pid_ns(&self, pid: u32) -> Option<u64> {
        std::fs::metadata(self.path(pid, "ns/pid"))
            .ok()
            .map(|m| m.ino())
    }

    /// The PIDs of `pid` from the host's namespace down to its own (`NSpid:`).
    pub fn ns_pids(&self, pid: u32) -> Option<Vec<u32>> {
        let text = std::fs::read_to_string(self.path(pid, "status")).ok()?;
        parse_ns_pids(&text)
    }

    /// The PID of `pid` in its own namespace (the last `NSpid:` entry).
    pub fn own_pid(&self, pid: u32) -> Option<u32> {
        self.ns_pids(pid)?.last().copied()
    }

    /// Its cgroup v2 path, `None` when it has none (cgroup v1 only) or cannot be read.
    pub fn cgroup(&self, pid: u32) -> Option<String> {
        let text = std::fs::read_to_string(self.path(pid, "cgroup")).ok()?;
        parse_cgroup_v2(&text)
    }

    /// Whether `/proc/<pid>/cgroup` can be read at all.
    pub fn has_cgroup_file(&self, pid: u32) -> bool {
        self.path(pid, "cgroup").exists()
    }

    /// Its start time in clock ticks since boot.
    pub fn start_time(&self, pid: u32) -> Option<u64> {
        let text = std::fs::read_to_string(self.path(pid, "stat")).ok()?;
        parse_start_time(&text)
    }

    /// Its command name (`comm`), for log lines.
    pub fn command(&self, pid: u32) -> Option<String> {
        let text = std::fs::read_to_string(self.path(pid, "comm")).ok()?;
        Some(text.trim_end().to_string())
    }

    /// Its mounts as it sees them, `None` when they cannot be read (it is gone).
    pub fn mounts(&self, pid: u32) -> Option<Vec<Mount>> {
        let text = std::fs::read_to_string(self.path(pid, "mountinfo")).ok()?;
        Some(parse_mountinfo(&text))
    }

    /// The mounts of the reading process itself (`/proc/self/mountinfo`).
    pub fn own_mounts(&self) -> Option<Vec<Mount>> {
        let text = std::fs::read_to_string(self.root.join("self/mountinfo")).ok()?;
        Some(parse_mountinfo(&text))
    }
}

/// One line of a `mountinfo` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The filesystem's device, `(major, minor)`.
    pub dev: (u32, u32),
    /// What of the filesystem is mounted: the path of a bind mount's source within its
    /// filesystem; a source file deleted (or replaced) since shows `//deleted` after it.
    pub root: String,
    /// Where, relative to the process's root directory.
    pub mount_point: String,
}

/// Parses a `mountinfo` file; lines that do not parse are left out.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let _id = fields.next()?;
            let _parent = fields.next()?;
            let (major, minor) = fields.next()?.split_once(':')?;
            let root = fields.next()?;
            let mount_point = fields.next()?;
            Some(Mount {
                dev: (major.parse().ok()?, minor.parse().ok()?),
                root: unescape_mount_path(root),
                mount_point: unescape_mount_path(mount_point),
            })
        })
        .collect()
}

/// Undoes the kernel's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape_mount_path(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
            if let Ok(b) = u8::try_from(value) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses the cgroup v2 (`0::PATH`) line of a `cgroup` file.
pub fn parse_cgroup_v2(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end().to_string())
        .filter(|p| p.starts_with('/'))
}

/// Parses the start time (field 22) of a `stat` file.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// Whether cgroup `path` is `scope` or lies below it.
pub fn cgroup_within(path: &str, scope: &str) -> bool {
    if scope == "/" {
        return true;
    }
    let scope = scope.trim_end_matches('/');
    path == scope
        || path
            .strip_prefix(scope)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_cgroup_and_stat() {
        let status = "Name:\tpython\nTgid:\t4242\nNSpid:\t4242\t17\t2\nPPid:\t1\n";
        assert_eq!(parse_ns_pids(status), Some(vec![4242, 17, 2]));
        assert_eq!(parse_ns_pids("Name:\tx\n"), None);
        assert_eq!(parse_ns_pids("NSpid:\t\n"), None);
        assert_eq!(parse_ns_pids("NSpid:\t12\tx\n"), None);
        assert_eq!(
            parse_cgroup_v2("0::/kubepods/pod1/ctr\n"),
            Some("/kubepods/pod1/ctr".into())
        );
        assert_eq!(
            parse_cgroup_v2("12:memory:/docker/x\n1:name=systemd:/y\n"),
            None
        );
        assert_eq!(parse_cgroup_v2("12:memory:/a\n0::/b\n"), Some("/b".into()));
        let stat = "77 (a (b) c) S 1 77 77 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 999 1";
        assert_eq!(parse_start_time(stat), Some(123456));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn parses_mountinfo() {
        let text = "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw\n\
            40 36 8:3 /var/lib/gpuslice/config/a.env /run/gpuslice/slice.env ro - ext4 /dev/sda3 rw\n\
            41 36 8:3 /var/lib/gpuslice/config/b\\040c.env//deleted /run/with\\040space ro - ext4 /dev/sda3 rw\n\
            garbage line\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].dev, (98, 0));
        assert_eq!(m[1].root, "/var/lib/gpuslice/config/a.env");
        assert_eq!(m[1].mount_point, "/run/gpuslice/slice.env");
        assert_eq!(m[2].root, "/var/lib/gpuslice/config/b c.env//deleted");
        assert_eq!(m[2].mount_point, "/run/with space");
        assert_eq!(unescape_mount_path("a\\134b\\0"), "a\\b\\0");
    }

    #[test]
    fn cgroup_scope() {
        assert!(cgroup_within("/a/b", "/a"));
        assert!(cgroup_within("/a", "/a"));
        assert!(cgroup_within("/a", "/a/"));
        assert!(cgroup_within("/anything", "/"));
        assert!(!cgroup_within("/ab", "/a"));
        assert!(!cgroup_within("/", "/a"));
        assert!(!cgroup_within("/b/a", "/a"));
    }

    #[test]
    fn reads_this_process() {
        let proc = Procfs::default();
        let me = std::process::id();
        assert!(proc.pid_ns(me).is_some());
        assert!(proc.start_time(me).is_some());
        assert!(proc.ns_pids(me).is_some());
        assert_eq!(proc.pid_ns(u32::MAX), None);
        assert!(
            proc.mounts(me)
                .is_some_and(|m| m.iter().any(|m| m.mount_point == "/"))
        );
        assert!(proc.own_mounts().is_some_and(|m| !m.is_empty()));
        assert!(proc.command(me).is_some());
    }
}
