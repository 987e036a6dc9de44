//! Tests of which ledgers a process trusts: links, other users' files and folders,
//! files and folders others can write, and the folders that are (not) created.

use super::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

const GIB: u64 = 1 << 30;
/// A uid that no test process runs as.
const OTHER: u32 = 4242;

fn spec() -> LedgerSpec {
    LedgerSpec {
        name: "trust".into(),
        default_limit: Some(GIB),
        devices: Vec::new(),
        compute: None,
    }
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn is_root() -> bool {
    folder::effective_uid() == 0
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
}

fn untrusted(err: &LedgerError) -> Option<(Place, &Distrust)> {
    match err {
        LedgerError::Untrusted { place, problem, .. } => Some((*place, problem)),
        _ => None,
    }
}

#[test]
fn ledgers_are_created_private_and_without_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.ledger");
    Ledger::create_or_open(&path, &spec()).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("a.ledger")]);
}

#[test]
fn a_symbolic_link_at_a_ledger_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.ledger");
    Ledger::create_or_open(&real, &spec()).unwrap();
    let link = dir.path().join("link.ledger");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    for err in [
        Ledger::open(&link).err().unwrap(),
        Ledger::create_or_open(&link, &spec()).err().unwrap(),
        Ledger::open_file(&link, Owners::Anyone).err().unwrap(),
    ] {
        assert_eq!(
            untrusted(&err),
            Some((Place::Ledger, &Distrust::SymbolicLink)),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("link.ledger"), "{text}");
        assert!(text.contains("symbolic link"), "{text}");
    }
    // A dangling link is refused too, and nothing is created where it points.
    let dangling = dir.path().join("dangling.ledger");
    std::os::unix::fs::symlink(dir.path().join("target"), &dangling).unwrap();
    let err = Ledger::create_or_open(&dangling, &spec()).err().unwrap();
    assert_eq!(
        untrusted(&err),
        Some((Place::Ledger, &Distrust::SymbolicLink)),
        "{err}"
    );
    assert!(!dir.path().join("target").exists());
}

#[test]
fn a_ledger_in_a_linked_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("real")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
    let err = Ledger::create_or_open(&dir.path().join("link/a.ledger"), &spec())
        .err()
        .unwrap();
    assert_eq!(
        untrusted(&err),
        Some((Place::Folder, &Distrust::SymbolicLink)),
        "{err}"
    );
    assert!(
        fs::read_dir(dir.path().join("real"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn a_ledger_that_is_not_a_regular_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.ledger");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let err = Ledger::open(&fifo).err().unwrap();
    assert_eq!(
        untrusted(&err),
        Some((Place::Ledger, &Distrust::NotAFile)),
        "{err}"
    );
}

#[test]
fn a_missing_folder_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nonexistent/dir/x");
    let err = Ledger::create_or_open(&path, &spec()).err().unwrap();
    assert_eq!(
        untrusted(&err),
        Some((Place::Folder, &Distrust::MissingFolder)),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&dir.path().join("nonexistent/dir").display().to_string()),
        "{err}"
    );
    assert!(!dir.path().join("nonexistent").exists());
    // Opening reports the missing file as missing.
    let err = Ledger::open(&path).err().unwrap();
    assert!(
        matches!(&err, LedgerError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{err}"
    );
}

#[test]
fn a_ledger_others_can_write_is_refused_unless_it_is_roots() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.ledger");
    Ledger::create_or_open(&path, &spec()).unwrap();
    set_mode(&path, 0o666);
    // As root, make it another user's file and admit that user: still refused.
    let owners = if is_root() {
        chown(&path, OTHER);
        Owners::AlsoUser(OTHER)
    } else {
        Owners::Mine
    };
    for mode in [0o666, 0o620, 0o602] {
        set_mode(&path, mode);
        let err = Ledger::open_as(&path, owners).err().unwrap();
        assert_eq!(
            untrusted(&err),
            Some((Place::Ledger, &Distrust::WritableFile { mode })),
            "{err}"
        );
        assert!(err.to_string().contains("chmod go-w"), "{err}");
    }
    set_mode(&path, 0o644);
    Ledger::open_as(&path, owners).unwrap();
    if is_root() {
        // Root's own ledgers are trusted in any mode (CDI makes them 0666).
        chown(&path, 0);
        set_mode(&path, 0o666);
        Ledger::open(&path).unwrap();
    }
}

#[test]
fn a_ledger_or_folder_of_another_user_is_refused() {
    if !is_root() {
        eprintln!(
            "SKIPPED a_ledger_or_folder_of_another_user_is_refused: needs root to give files to another user"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.ledger");
    Ledger::create_or_open(&path, &spec()).unwrap();
    chown(&path, OTHER);
    for err in [
        Ledger::open(&path).err().unwrap(),
        Ledger::create_or_open(&path, &spec()).err().unwrap(),
    ] {
        assert_eq!(
            untrusted(&err),
            Some((
                Place::Ledger,
                &Distrust::ForeignOwner {
                    owner: OTHER,
                    me: 0
                }
            )),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("a.ledger") && text.contains("4242"), "{text}");
    }
    // Root may read it when it says whose it is (gpuslice status).
    Ledger::open_as(&path, Owners::AlsoUser(OTHER)).unwrap();
    // A folder of another user: refused before any file in it is looked at.
    chown(&path, 0);
    chown(dir.path(), OTHER);
    let err = Ledger::open(&path).err().unwrap();
    assert_eq!(
        untrusted(&err),
        Some((
            Place::Folder,
            &Distrust::ForeignOwner {
                owner: OTHER,
                me: 0
            }
        )),
        "{err}"
    );
    let err = Ledger::create_or_open(&dir.path().join("new.ledger"), &spec())
        .err()
        .unwrap();
    assert!(matches!(untrusted(&err), Some((Place::Folder, _))), "{err}");
    assert!(!dir.path().join("new.ledger").exists());
    chown(dir.path(), 0);
}

#[test]
fn a_ledger_in_a_folder_others_can_write_needs_the_sticky_bit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.ledger");
    set_mode(dir.path(), 0o777);
    let err = Ledger::create_or_open(&path, &spec()).err().unwrap();
    assert_eq!(
        untrusted(&err),
        Some((Place::Folder, &Distrust::WritableFolder { mode: 0o777 })),
        "{err}"
    );
    assert!(!path.exists());
    // Like /tmp and /dev/shm: others can add names but not take ours away.
    set_mode(dir.path(), 0o1777);
    Ledger::create_or_open(&path, &spec()).unwrap();
    Ledger::open(&path).unwrap();
}

#[test]
fn anyone_admits_a_mounted_ledger_of_any_owner_and_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    Ledger::create_or_open(&path, &spec()).unwrap();
    set_mode(&path, 0o666);
    set_mode(dir.path(), 0o777);
    if is_root() {
        chown(&path, OTHER);
        chown(dir.path(), OTHER);
    }
    assert!(Ledger::open(&path).is_err());
    Ledger::open_as(&path, Owners::Anyone).unwrap();
    Ledger::create_or_open_as(&path, &spec(), Owners::Anyone).unwrap();
    if is_root() {
        chown(dir.path(), 0);
    }
}
