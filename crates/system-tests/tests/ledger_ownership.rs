//! Slices of several local users on one host: another user can neither slip a ledger of
//! theirs under a slice's processes, nor capture root's ledger through a folder of
//! theirs, nor reach the ledgers of CDI slices; links at a ledger's name are refused,
//! and a ledger in a missing folder creates nothing. Each user gets a private default
//! folder, and `gpuslice status` finds it.
//!
//! The tests with two users run processes under uids that nothing else uses (`setpriv`),
//! so they need root; without it each prints why it was skipped. Every process runs under
//! `timeout`, so a hang becomes a failure.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use gpuslice_ledger::{Ledger, Owners};
use system_tests::{Bench, Report, wait_for};

const USER_A: u32 = 61_001;
const USER_B: u32 = 61_002;
/// Used only by the default-folder test, whose folder is in the real `/dev/shm`.
const USER_C: u32 = 61_003;
const CUDA_ERROR_NOT_PERMITTED: u64 = 800;
/// Seconds any process of these tests may take.
const LIMIT_S: &str = "60";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn setpriv_works() -> bool {
    Command::new("setpriv")
        .args(["--reuid=61001", "--regid=61001", "--clear-groups", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

macro_rules! require_two_users {
    ($name:literal) => {
        if !is_root() || !setpriv_works() {
            eprintln!(
                "SKIPPED {}: needs root and util-linux's setpriv to run processes as two other users",
                $name
            );
            return;
        }
    };
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

/// A bench that other users can use: its folder is 0755 (the ledger folder in it stays
/// root's, 0700), and each user's fake GPU state lives in the shared folder `world`.
fn shared_bench() -> Bench {
    let bench = Bench::new();
    chmod(bench.dir.path(), 0o755);
    let world = bench.dir.path().join("world");
    std::fs::create_dir(&world).unwrap();
    chmod(&world, 0o1777);
    bench
}

/// `program` with the bench environment, under `timeout`, as user `uid` (`None`: as this
/// process's user).
fn bounded(bench: &Bench, uid: Option<u32>, program: &Path) -> Command {
    let mut cmd = bench.plain(Path::new("timeout"));
    cmd.arg(LIMIT_S);
    if let Some(uid) = uid {
        cmd.args([
            "setpriv".to_string(),
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
            "--".into(),
        ]);
        let state = bench.dir.path().join(format!("world/gpu-{uid}.state"));
        cmd.env("FAKE_GPU_STATE", state);
    }
    cmd.arg(program);
    cmd
}

/// `cuda-probe` with the interposer, `env` and `steps`, as `uid`, under `timeout`.
fn probe(bench: &Bench, uid: Option<u32>, env: &[(&str, &str)], steps: &[&str]) -> Command {
    let mut cmd = bounded(bench, uid, &bench.build.join("cuda-probe"));
    cmd.env("LD_PRELOAD", bench.interposer());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(steps);
    cmd
}

fn report(cmd: &mut Command) -> Report {
    Report::from(&cmd.output().expect("spawn"))
}

fn ledgers_in(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ledger"))
        .collect();
    found.sort();
    found
}

/// A process started in the background, let go and waited for when dropped.
struct Running {
    child: Option<Child>,
    release: PathBuf,
}

impl Running {
    fn start(mut cmd: Command, release: PathBuf) -> Self {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        Self {
            child: Some(child),
            release,
        }
    }

    /// Lets it end, and returns what it printed.
    fn finish(mut self) -> Report {
        std::fs::write(&self.release, b"go").unwrap();
        let child = self.child.take().expect("running");
        Report::from(&child.wait_with_output().expect("wait"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.release, b"go");
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

#[test]
fn a_ledger_planted_by_another_user_is_refused_by_name() {
    require_two_users!("a_ledger_planted_by_another_user_is_refused_by_name");
    let bench = shared_bench();
    // A shared folder like the old /dev/shm/gpuslice: root's, sticky, world-writable.
    let shared = bench.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o1777);
    let env = [
        ("GPUSLICE_LEDGER_DIR", s(&shared)),
        ("GPUSLICE_MEMORY", "4GiB".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // User A creates the slice's ledger under its predictable name, and opens it to all.
    let r = report(&mut probe(&bench, Some(USER_A), &env, &["init", "ctx"]));
    assert_eq!(r.rc("init"), 0, "{}", r.text());
    let planted = ledgers_in(&shared);
    assert_eq!(planted.len(), 1, "{planted:?}\n{}", r.text());
    let planted = planted[0].clone();
    assert_eq!(std::fs::metadata(&planted).unwrap().uid(), USER_A);
    chmod(&planted, 0o666);

    // User B and root, with the same limits: refused, naming the file and its owner,
    // and never in A's ledger.
    for uid in [Some(USER_B), None] {
        let ready = bench.dir.path().join(format!("world/ready-{uid:?}"));
        let release = bench.dir.path().join(format!("world/release-{uid:?}"));
        let ready_step = format!("ready:{}", s(&ready));
        let wait_step = format!("wait:{}", s(&release));
        let running = Running::start(
            probe(
                &bench,
                uid,
                &env,
                &["init", "ctx", "alloc:64M", &ready_step, &wait_step],
            ),
            release,
        );
        wait_for(&ready, "the second user's probe");
        let joined = Ledger::open_as(&planted, Owners::Anyone)
            .unwrap()
            .processes();
        let r = running.finish();
        assert!(joined.is_empty(), "{joined:?}\n{}", r.text());
        assert_eq!(r.rc("init"), CUDA_ERROR_NOT_PERMITTED, "{}", r.text());
        assert!(r.rc("alloc:64M") != 0, "{}", r.text());
        assert!(
            r.stderr.contains(&s(&planted)) && r.stderr.contains("belongs to user 61001"),
            "{}",
            r.text()
        );
    }
    assert_eq!(ledgers_in(&shared), vec![planted]);
}

#[test]
fn a_folder_of_another_user_cannot_capture_roots_ledger() {
    require_two_users!("a_folder_of_another_user_cannot_capture_roots_ledger");
    let bench = shared_bench();
    let theirs = bench.dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(USER_A), Some(USER_A)).unwrap();
    chmod(&theirs, 0o755);

    // `gpuslice run` of root with --ledger-dir in A's folder: refused before the program
    // starts, naming the folder; nothing is created there that A could swap.
    let out = bounded(&bench, None, &bench.build.join("gpuslice"))
        .args(["run", "--name", "job", "--memory", "1GiB", "--ledger-dir"])
        .arg(&theirs)
        .arg("--")
        .arg(bench.build.join("cuda-probe"))
        .args(["init", "ctx", "alloc:64M"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        stderr.contains(&format!("ledger folder {}", s(&theirs)))
            && stderr.contains("belongs to user 61001"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "the program ran: {out:?}");

    // Nor a process of root configured by the environment.
    let path = theirs.join("root.ledger");
    let r = report(&mut probe(
        &bench,
        None,
        &[("GPUSLICE_LEDGER", &s(&path)), ("GPUSLICE_MEMORY", "1GiB")],
        &["init", "ctx", "alloc:64M"],
    ));
    assert_eq!(r.rc("init"), CUDA_ERROR_NOT_PERMITTED, "{}", r.text());
    assert!(r.stderr.contains(&s(&theirs)), "{}", r.text());
    assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0);
}

#[test]
fn a_symbolic_link_at_a_ledger_path_is_refused() {
    let bench = Bench::new();
    let real = bench.ledger("real");
    let r = report(&mut probe(
        &bench,
        None,
        &[("GPUSLICE_LEDGER", &s(&real)), ("GPUSLICE_MEMORY", "1GiB")],
        &["init", "ctx"],
    ));
    assert_eq!(r.rc("ctx"), 0, "{}", r.text());
    assert!(real.exists());

    // A link to a ledger, and a link to where one would be created.
    let link = bench.ledger("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let dangling = bench.ledger("dangling");
    let target = bench.dir.path().join("made-through-a-link.ledger");
    std::os::unix::fs::symlink(&target, &dangling).unwrap();
    for path in [&link, &dangling] {
        let r = report(&mut probe(
            &bench,
            None,
            &[("GPUSLICE_LEDGER", &s(path)), ("GPUSLICE_MEMORY", "1GiB")],
            &["init", "ctx", "alloc:64M"],
        ));
        assert_eq!(r.rc("init"), CUDA_ERROR_NOT_PERMITTED, "{}", r.text());
        assert!(
            r.stderr.contains(&s(path)) && r.stderr.contains("symbolic link"),
            "{}",
            r.text()
        );
    }
    assert!(!target.exists());
    assert!(Ledger::open(&real).unwrap().processes().is_empty());

    // A linked ledger folder.
    let folder_link = bench.dir.path().join("ledgers-link");
    std::os::unix::fs::symlink(bench.dir.path().join("ledgers"), &folder_link).unwrap();
    let r = report(&mut probe(
        &bench,
        None,
        &[
            ("GPUSLICE_LEDGER_DIR", &s(&folder_link)),
            ("GPUSLICE_MEMORY", "1GiB"),
        ],
        &["init", "ctx"],
    ));
    assert_eq!(r.rc("init"), CUDA_ERROR_NOT_PERMITTED, "{}", r.text());
    assert!(
        r.stderr.contains(&s(&folder_link)) && r.stderr.contains("symbolic link"),
        "{}",
        r.text()
    );
}

#[test]
fn a_ledger_in_a_missing_folder_creates_nothing() {
    let bench = Bench::new();
    let missing = bench.dir.path().join("nonexistent");
    let path = missing.join("dir/x");
    let r = report(&mut probe(
        &bench,
        None,
        &[("GPUSLICE_LEDGER", &s(&path)), ("GPUSLICE_MEMORY", "1GiB")],
        &["init", "ctx", "alloc:64M"],
    ));
    assert_eq!(r.rc("init"), CUDA_ERROR_NOT_PERMITTED, "{}", r.text());
    assert!(
        r.stderr.contains(&s(&missing.join("dir"))) && r.stderr.contains("does not exist"),
        "{}",
        r.text()
    );
    assert!(!missing.exists(), "{} was created", missing.display());
}

#[test]
fn host_users_cannot_reach_the_ledgers_of_cdi_slices() {
    require_two_users!("host_users_cannot_reach_the_ledgers_of_cdi_slices");
    let bench = shared_bench();
    let host = bench.dir.path();
    system_tests::fake_device_nodes(host);
    let state = host.join("state");
    let out = bounded(&bench, None, &bench.build.join("gpuslice"))
        .args([
            "cdi",
            "generate",
            "--slice",
            "a=0:1GiB",
            "--driver-libs",
            "off",
        ])
        .args(["--dev-root", &s(&host.join("root"))])
        .args(["--output-dir", &s(&host.join("cdi"))])
        .args(["--state-dir", &s(&state)])
        .args(["--agent-dir", &s(&host.join("agent"))])
        .args(["--lib", &s(&bench.interposer())])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let ledger = state.join("slices/a/ledger");
    // Root's, 0666 for the containers of any user...
    let meta = std::fs::metadata(&ledger).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o666));
    Ledger::open(&ledger).unwrap();
    // ...but a host user cannot get to it: not to write, not to read.
    for how in ["exec 3<> \"$0\"", "exec 3< \"$0\""] {
        let out = bounded(&bench, Some(USER_A), Path::new("sh"))
            .args(["-c", how])
            .arg(&ledger)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "user A opened {}: {out:?}",
            s(&ledger)
        );
    }
    let r = report(&mut probe(
        &bench,
        Some(USER_A),
        &[
            ("GPUSLICE_LEDGER", &s(&ledger)),
            ("GPUSLICE_MEMORY", "1GiB"),
        ],
        &["init", "ctx"],
    ));
    assert_eq!(r.rc("init"), CUDA_ERROR_NOT_PERMITTED, "{}", r.text());
    assert!(r.stderr.contains(&s(&ledger)), "{}", r.text());
}

/// Removes a user's default ledger folder in the real /dev/shm when dropped.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn each_user_has_a_private_default_folder_that_status_finds() {
    require_two_users!("each_user_has_a_private_default_folder_that_status_finds");
    let mut bench = shared_bench();
    bench.env.retain(|(k, _)| k != "GPUSLICE_LEDGER_DIR");
    let folder = gpuslice_ledger::user_ledger_dir(USER_C);
    let _ = std::fs::remove_dir_all(&folder);
    let _cleanup = RemoveDir(folder.clone());

    let ready = bench.dir.path().join("world/ready");
    let release = bench.dir.path().join("world/release");
    let ready_step = format!("ready:{}", s(&ready));
    let wait_step = format!("wait:{}", s(&release));
    let mut cmd = probe(
        &bench,
        Some(USER_C),
        &[("GPUSLICE_MEMORY", "1GiB")],
        &["init", "ctx", "alloc:64M", &ready_step, &wait_step],
    );
    cmd.env_remove("GPUSLICE_LEDGER_DIR");
    let running = Running::start(cmd, release);
    wait_for(&ready, "user C's probe");

    // /dev/shm/gpuslice-61003: C's, 0700, with a private ledger in it.
    let meta = std::fs::symlink_metadata(&folder).unwrap();
    assert!(meta.is_dir());
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (USER_C, 0o700));
    let ledgers = ledgers_in(&folder);
    assert_eq!(ledgers.len(), 1, "{ledgers:?}");
    let meta = std::fs::metadata(&ledgers[0]).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (USER_C, 0o600));

    // `gpuslice status` finds it: C's own folder for C, every user's for root.
    let ledger_path = s(&ledgers[0]);
    for uid in [Some(USER_C), None] {
        let mut cmd = bounded(&bench, uid, &bench.build.join("gpuslice"));
        cmd.args(["status", "--json", "--no-sweep"])
            .env_remove("GPUSLICE_LEDGER_DIR");
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{out:?}");
        let at = text
            .find(&format!("\"path\": \"{ledger_path}\""))
            .unwrap_or_else(|| panic!("status as {uid:?} misses {ledger_path}:\n{text}"));
        let rest = &text[at..];
        let slice = &rest[..rest.find("\"error\"").unwrap_or(rest.len())];
        assert!(slice.contains("\"alive\": \"alive\""), "{text}");
    }
    let r = running.finish();
    assert_eq!(r.rc("alloc:64M"), 0, "{}", r.text());
}
