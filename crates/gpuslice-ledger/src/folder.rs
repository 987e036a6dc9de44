//! Where ledgers live, and which ledger files and folders a process trusts.
//!
//! **Where.** Each user has a ledger folder of their own, `/dev/shm/gpuslice-<uid>`
//! ([`default_ledger_dir`]), created with mode 0700 on first use. `/dev/shm` is root's
//! sticky folder, so once that folder exists nobody but its owner (and root) can remove
//! or rename it, and there is no shared folder in between whose owner could swap
//! entries. It is the only folder gpuslice ever creates for a ledger: a folder named by
//! `GPUSLICE_LEDGER` or `GPUSLICE_LEDGER_DIR` must exist already.
//!
//! **Trust.** Every ledger is opened through its folder: the folder is opened without
//! following a symbolic link at its own name and checked, then the file is opened
//! relative to that open folder, again without following a link, and checked. What is
//! checked is therefore exactly what is used. Accepted ([`Owners`] says whose):
//! - a folder owned by root or by this process's user, that other users cannot write,
//!   or can write only with the sticky bit set (like `/tmp` and `/dev/shm`, where nobody
//!   can remove or rename another's entries);
//! - a regular file owned by root, whatever its mode (the ledgers of CDI slices are
//!   root's and 0666, so that container processes of any user can join them), or owned
//!   by this process's user and writable by nobody else.
//!
//! Anything else is refused with [`LedgerError::Untrusted`], naming the file or folder,
//! what is wrong with it and how to fix it: another local user must never be able to
//! slip a file of theirs under a slice's processes (and so see their PIDs and usage, and
//! disturb them), nor replace one.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

use crate::LedgerError;

/// The folder under which each user's ledger folder lives.
pub const SHM_DIR: &str = "/dev/shm";
/// The name of a user's ledger folder in [`SHM_DIR`], before the uid.
pub const USER_DIR_PREFIX: &str = "gpuslice-";

/// The effective uid of this process: the user whose files it trusts besides root's.
pub fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The ledger folder of user `uid`: `/dev/shm/gpuslice-<uid>`.
pub fn user_ledger_dir(uid: u32) -> PathBuf {
    Path::new(SHM_DIR).join(format!("{USER_DIR_PREFIX}{uid}"))
}

/// This process's user's ledger folder: where ledgers live when neither
/// `GPUSLICE_LEDGER` nor `GPUSLICE_LEDGER_DIR` says otherwise.
pub fn default_ledger_dir() -> PathBuf {
    user_ledger_dir(effective_uid())
}

/// Every user's ledger folder in `base` (normally [`SHM_DIR`]), as (uid from the name,
/// folder), sorted by uid. Entries that are not named `gpuslice-<uid>` are left out; a
/// folder whose name does not match its owner is listed, and refused when its ledgers
/// are opened.
pub fn user_ledger_dirs(base: &Path) -> std::io::Result<Vec<(u32, PathBuf)>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(base)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(uid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(USER_DIR_PREFIX))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            dirs.push((uid, entry.path()));
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Whose ledgers and ledger folders a process accepts, besides root's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Owners {
    /// This process's user's (the effective uid): the normal case.
    #[default]
    Mine,
    /// Also user `uid`'s: for root reading that user's folder (`gpuslice status`).
    AlsoUser(u32),
    /// Anyone's, in any mode: only for the ledger that a container runtime mounted at
    /// the path the read-only pinned configuration names, where host root may show up
    /// as an unmapped uid (user namespaces). Links and non-regular files are still
    /// refused.
    Anyone,
}

impl Owners {
    fn admits(self, uid: u32) -> bool {
        match self {
            Self::Anyone => true,
            _ if uid == 0 || uid == effective_uid() => true,
            Self::AlsoUser(other) => uid == other,
            Self::Mine => false,
        }
    }
}

/// Whether a ledger problem is about the file or its folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The ledger file.
    Ledger,
    /// The folder that holds it.
    Folder,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ledger => "ledger",
            Self::Folder => "ledger folder",
        })
    }
}

/// What makes a ledger or its folder unfit for use. Each message says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Distrust {
    /// A symbolic link stands at the name.
    SymbolicLink,
    /// The ledger is not a regular file.
    NotAFile,
    /// The folder is not a folder.
    NotAFolder,
    /// It belongs to another user who is not root.
    ForeignOwner {
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        me: u32,
    },
    /// A ledger of a user (not root) that others may write.
    WritableFile {
        /// Its permission bits.
        mode: u32,
    },
    /// A folder that others may write, without the sticky bit.
    WritableFolder {
        /// Its permission bits.
        mode: u32,
    },
    /// The folder does not exist, and it is not one gpuslice creates.
    MissingFolder,
}

impl fmt::Display for Distrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SymbolicLink => f.write_str(
                "is a symbolic link, which gpuslice does not follow (another user could point it at a file of theirs): give the real path, or remove the link",
            ),
            Self::NotAFile => f.write_str("is not a regular file: remove it, or choose another ledger path"),
            Self::NotAFolder => f.write_str("is not a folder: choose another ledger folder"),
            Self::ForeignOwner { owner, me } => write!(
                f,
                "belongs to user {owner}, neither to this user ({me}) nor to root, so it is not used (through it, another user could see and disturb the slice's processes): remove it (as its owner or root), or choose another ledger path"
            ),
            Self::WritableFile { mode } => write!(
                f,
                "is writable by other users (mode {mode:04o}), who could disturb the slice's processes through it: `chmod go-w` it, or remove it"
            ),
            Self::WritableFolder { mode } => write!(
                f,
                "is writable by other users (mode {mode:04o}) and not sticky, so they could replace the ledgers in it: `chmod go-w` it (or `chmod +t` it), or choose another ledger folder"
            ),
            Self::MissingFolder => write!(
                f,
                "does not exist, and gpuslice creates no ledger folder but the per-user default ({SHM_DIR}/{USER_DIR_PREFIX}<uid>): create it with mode 0700 (`mkdir -m 700`), or choose an existing folder"
            ),
        }
    }
}

fn untrusted(place: Place, path: &Path, problem: Distrust) -> LedgerError {
    LedgerError::Untrusted {
        path: path.to_path_buf(),
        place,
        problem,
    }
}

/// Checks the kind, owner and mode of an opened ledger or folder.
fn check(place: Place, path: &Path, fd: impl AsFd, owners: Owners) -> Result<(), LedgerError> {
    let stat =
        nix::sys::stat::fstat(fd).map_err(|e| io_error(path, "reading its owner and mode", e))?;
    let kind = stat.st_mode & libc::S_IFMT;
    match place {
        Place::Ledger if kind != libc::S_IFREG => {
            return Err(untrusted(place, path, Distrust::NotAFile));
        }
        Place::Folder if kind != libc::S_IFDIR => {
            return Err(untrusted(place, path, Distrust::NotAFolder));
        }
        _ => {}
    }
    if owners == Owners::Anyone {
        return Ok(());
    }
    let (owner, mode) = (stat.st_uid, stat.st_mode & 0o7777);
    if !owners.admits(owner) {
        return Err(untrusted(
            place,
            path,
            Distrust::ForeignOwner {
                owner,
                me: effective_uid(),
            },
        ));
    }
    let others_write = mode & 0o022 != 0;
    match place {
        Place::Ledger if others_write && owner != 0 => {
            Err(untrusted(place, path, Distrust::WritableFile { mode }))
        }
        Place::Folder if others_write && mode & 0o1000 == 0 => {
            Err(untrusted(place, path, Distrust::WritableFolder { mode }))
        }
        _ => Ok(()),
    }
}

/// The folder of a ledger, open and checked; files are opened relative to it.
pub(crate) struct Folder {
    fd: OwnedFd,
    owners: Owners,
}

/// A ledger path split into its folder and its file name.
fn split(path: &Path) -> Result<(PathBuf, OsString), LedgerError> {
    let name = path
        .file_name()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| LedgerError::Io {
            path: path.to_path_buf(),
            what: "finding its file name",
            source: std::io::Error::new(ErrorKind::InvalidInput, "the path names no file"),
        })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name.to_os_string()))
}

fn io_error(path: &Path, what: &'static str, errno: Errno) -> LedgerError {
    LedgerError::Io {
        path: path.to_path_buf(),
        what,
        source: std::io::Error::from(errno),
    }
}

impl Folder {
    /// Opens and checks the folder of the ledger `ledger`, and returns it with the
    /// ledger's file name. With `create`, a missing folder is created when it is this
    /// process's user's default folder ([`default_ledger_dir`], mode 0700), and refused
    /// otherwise; without it, a missing folder is an I/O error of kind `NotFound`.
    pub(crate) fn of(
        ledger: &Path,
        owners: Owners,
        create: bool,
    ) -> Result<(Self, OsString), LedgerError> {
        let (dir, name) = split(ledger)?;
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::open(&dir, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if create => {
                if dir != default_ledger_dir() {
                    return Err(untrusted(Place::Folder, &dir, Distrust::MissingFolder));
                }
                // Only the last component: its parent is /dev/shm, which must exist.
                match nix::unistd::mkdir(&dir, Mode::S_IRWXU) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io_error(ledger, "creating its folder", e)),
                }
                nix::fcntl::open(&dir, flags, Mode::empty())
                    .map_err(|e| Self::open_error(&dir, ledger, e))?
            }
            Err(e) => return Err(Self::open_error(&dir, ledger, e)),
        };
        check(Place::Folder, &dir, &fd, owners)?;
        Ok((Self { fd, owners }, name))
    }

    fn open_error(dir: &Path, ledger: &Path, errno: Errno) -> LedgerError {
        match errno {
            Errno::ELOOP => untrusted(Place::Folder, dir, Distrust::SymbolicLink),
            // With O_PATH, a link at the name is opened itself and fails O_DIRECTORY.
            Errno::ENOTDIR
                if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) =>
            {
                untrusted(Place::Folder, dir, Distrust::SymbolicLink)
            }
            Errno::ENOTDIR => untrusted(Place::Folder, dir, Distrust::NotAFolder),
            e => io_error(ledger, "opening its folder", e),
        }
    }

    /// Opens the ledger `name` in this folder for reading and writing, and checks it.
    /// `path` is its full path, for messages. A missing file is an I/O error of kind
    /// `NotFound`.
    pub(crate) fn open_ledger(&self, name: &OsStr, path: &Path) -> Result<File, LedgerError> {
        let flags = OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(&self.fd, name, flags, Mode::empty()).map_err(|e| match e {
            Errno::ELOOP => untrusted(Place::Ledger, path, Distrust::SymbolicLink),
            e => io_error(path, "opening", e),
        })?;
        check(Place::Ledger, path, &fd, self.owners)?;
        Ok(File::from(fd))
    }

    /// Creates `name` in this folder (it must not exist), mode 0600, for writing.
    pub(crate) fn create_new(&self, name: &OsStr) -> Result<File, Errno> {
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(&self.fd, name, flags, Mode::S_IRUSR | Mode::S_IWUSR)?;
        Ok(File::from(fd))
    }

    /// Gives the file `from` of this folder the second name `to` (never replacing one).
    pub(crate) fn link(&self, from: &OsStr, to: &OsStr) -> Result<(), Errno> {
        nix::unistd::linkat(&self.fd, from, &self.fd, to, AtFlags::empty())
    }

    /// Removes the name `name` from this folder.
    pub(crate) fn remove(&self, name: &OsStr) -> Result<(), Errno> {
        nix::unistd::unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir)
    }
}

/// A private name next to `name` for building a file before it is published.
pub(crate) fn temporary_name(name: &OsStr) -> OsString {
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".tmp.{}", std::process::id()));
    debug_assert!(!tmp.as_bytes().contains(&b'/'));
    tmp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn owners_admit_root_and_this_user() {
        let me = effective_uid();
        assert!(Owners::Mine.admits(0));
        assert!(Owners::Mine.admits(me));
        let other = if me == 4242 { 4243 } else { 4242 };
        assert!(!Owners::Mine.admits(other));
        assert!(Owners::AlsoUser(other).admits(other));
        assert!(Owners::Anyone.admits(other));
    }

    #[test]
    fn the_default_folder_is_per_user() {
        assert_eq!(user_ledger_dir(1000), Path::new("/dev/shm/gpuslice-1000"));
        assert_eq!(default_ledger_dir(), user_ledger_dir(effective_uid()));
    }

    #[test]
    fn user_folders_are_found_by_name() {
        let base = tempfile::tempdir().unwrap();
        for name in [
            "gpuslice-1000",
            "gpuslice-0",
            "gpuslice-gpus",
            "gpuslice-",
            "other",
        ] {
            std::fs::create_dir(base.path().join(name)).unwrap();
        }
        std::fs::write(base.path().join("gpuslice-7"), b"a file").unwrap();
        let found = user_ledger_dirs(base.path()).unwrap();
        assert_eq!(
            found,
            vec![
                (0, base.path().join("gpuslice-0")),
                (1000, base.path().join("gpuslice-1000")),
            ]
        );
    }

    #[test]
    fn folders_writable_by_others_need_the_sticky_bit() {
        let dir = tempfile::tempdir().unwrap();
        set_mode(dir.path(), 0o777);
        let err = Folder::of(&dir.path().join("x"), Owners::Mine, false)
            .err()
            .unwrap();
        assert!(
            matches!(
                &err,
                LedgerError::Untrusted {
                    place: Place::Folder,
                    problem: Distrust::WritableFolder { mode: 0o777 },
                    ..
                }
            ),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(text.contains("chmod"), "{text}");
        set_mode(dir.path(), 0o1777);
        Folder::of(&dir.path().join("x"), Owners::Mine, false).unwrap();
        set_mode(dir.path(), 0o700);
        Folder::of(&dir.path().join("x"), Owners::Mine, false).unwrap();
    }

    #[test]
    fn a_missing_folder_is_created_only_when_it_is_the_default() {
        let base = tempfile::tempdir().unwrap();
        let missing = base.path().join("a/b");
        let err = Folder::of(&missing.join("x"), Owners::Mine, true)
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                LedgerError::Untrusted {
                    problem: Distrust::MissingFolder,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("mkdir -m 700"), "{err}");
        assert!(!base.path().join("a").exists());
        // Without `create`, a missing folder is NotFound.
        let err = Folder::of(&missing.join("x"), Owners::Mine, false)
            .err()
            .unwrap();
        assert!(
            matches!(&err, LedgerError::Io { source, .. } if source.kind() == ErrorKind::NotFound),
            "{err}"
        );
    }

    #[test]
    fn a_folder_that_is_a_link_or_a_file_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let real = base.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = Folder::of(&link.join("x"), Owners::Mine, true)
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                LedgerError::Untrusted {
                    place: Place::Folder,
                    problem: Distrust::SymbolicLink,
                    ..
                }
            ),
            "{err}"
        );
        let file = base.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = Folder::of(&file.join("x"), Owners::Mine, true)
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                LedgerError::Untrusted {
                    problem: Distrust::NotAFolder,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn temporary_names_are_hidden_and_private() {
        let tmp = temporary_name(OsStr::new("a.ledger"));
        let tmp = tmp.to_str().unwrap();
        assert!(tmp.starts_with(".a.ledger.tmp."), "{tmp}");
    }
}
