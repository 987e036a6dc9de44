//! Drives the real `gpuslice` binary: the child's environment, exit codes and signals
//! passing through, limits that fail closed, names in use, and `status --json`. Nothing
//! here touches a GPU or NVML. Runs that start a program preload the real interposer
//! from `target/debug/libgpuslice.so` (it does nothing in a program that never calls
//! CUDA); without it those tests are skipped with a note.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gpuslice_ledger::{DeviceSlot, Ledger, LedgerSpec};

const GIB: u64 = 1 << 30;
const UUID: &str = "GPU-00000000-0000-4000-8000-000000000000";

fn gpuslice() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpuslice"));
    for var in [
        "LD_PRELOAD",
        "GPUSLICE_MEMORY",
        "GPUSLICE_LEDGER",
        "GPUSLICE_LEDGER_DIR",
        "GPUSLICE_SLICE",
        "GPUSLICE_LOG",
        "GPUSLICE_LIB",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// The interposer built by this workspace: `target/debug/libgpuslice.so`, next to the
/// `deps` folder this test runs from.
fn interposer() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let lib = exe.parent()?.parent()?.join("libgpuslice.so");
    lib.is_file().then(|| lib.canonicalize().ok()).flatten()
}

macro_rules! require_interposer {
    () => {
        match interposer() {
            Some(lib) => lib,
            None => {
                eprintln!(
                    "skipped: target/debug/libgpuslice.so is not built (run `cargo build --workspace`)"
                );
                return;
            }
        }
    };
}

fn run_in(dir: &Path, lib: &Path, extra: &[&str], command: &[&str]) -> Command {
    let mut cmd = gpuslice();
    cmd.arg("run")
        .arg("--memory")
        .arg("4GiB")
        .arg("--ledger-dir")
        .arg(dir)
        .arg("--lib")
        .arg(lib)
        .args(extra)
        .arg("--")
        .args(command);
    cmd
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().expect("gpuslice starts")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Names in a folder, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Waits until `path` exists (a guard against hanging, not a timing assertion).
fn wait_for(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "gpuslice ended ({status}) before {} appeared",
                path.display()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A program that runs until its `go` file appears; always released and reaped, even
/// when the test fails.
struct Held {
    child: Child,
    go: PathBuf,
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.go, b"");
        let _ = self.child.wait();
    }
}

#[test]
fn run_gives_the_program_the_slice_environment() {
    let lib = require_interposer!();
    let dir = tempfile::tempdir().unwrap();
    let out = output(&mut run_in(
        dir.path(),
        &lib,
        &["--name", "env-test"],
        &[
            "sh",
            "-c",
            r#"echo "$GPUSLICE_MEMORY $GPUSLICE_LEDGER $GPUSLICE_SLICE"; echo "$LD_PRELOAD"; test -f "$GPUSLICE_LEDGER" && echo ledger-present"#,
        ],
    ));
    assert!(out.status.success(), "{out:?}");
    let ledger = dir.path().join("env-test.ledger");
    assert_eq!(
        text(&out.stdout),
        format!(
            "4GiB {} env-test\n{}\nledger-present\n",
            ledger.display(),
            lib.display()
        )
    );
    assert!(!ledger.exists(), "the ledger is removed after the run");
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
}

#[test]
fn run_prepends_the_interposer_to_an_inherited_preload() {
    let lib = require_interposer!();
    let dir = tempfile::tempdir().unwrap();
    // The inherited entries are the interposer itself and a link to it (the loader maps
    // one file once, so the gpuslice process and the program stay sane): the interposer
    // must come first and only once, the other entry after it.
    let link = dir.path().join("link-to-interposer.so");
    std::os::unix::fs::symlink(&lib, &link).unwrap();
    let out = output(
        run_in(
            dir.path(),
            &lib,
            &[],
            &["sh", "-c", r#"echo "$LD_PRELOAD""#],
        )
        .env(
            "LD_PRELOAD",
            format!("{} {}", link.display(), lib.display()),
        ),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout).trim_end(),
        format!("{}:{}", lib.display(), link.display())
    );
}

#[test]
fn exit_codes_and_deaths_pass_through() {
    let lib = require_interposer!();
    let dir = tempfile::tempdir().unwrap();
    let out = output(&mut run_in(dir.path(), &lib, &[], &["sh", "-c", "exit 7"]));
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let out = output(&mut run_in(
        dir.path(),
        &lib,
        &[],
        &["sh", "-c", "kill -9 $$"],
    ));
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    let out = output(&mut run_in(dir.path(), &lib, &[], &["true"]));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
}

#[test]
fn a_missing_program_exits_127_and_names_it() {
    let lib = require_interposer!();
    let dir = tempfile::tempdir().unwrap();
    let out = output(&mut run_in(
        dir.path(),
        &lib,
        &[],
        &["gpuslice-test-no-such-program", "arg"],
    ));
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(text(&out.stderr).contains("gpuslice-test-no-such-program"));
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
}

#[test]
fn signals_are_forwarded_to_the_program() {
    let lib = require_interposer!();
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let script = format!(
        r#"trap 'exit 3' TERM; trap 'echo usr1' USR1; touch '{}'; while :; do sleep 0.05; done"#,
        started.display()
    );
    let mut child = run_in(dir.path(), &lib, &["--name", "sig"], &["sh", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&started, &mut child);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).unwrap();
    // SIGUSR1 and SIGTERM are different signals, so neither can swallow the other; the
    // trap for SIGUSR1 runs before the one for SIGTERM only if it arrives first, so only
    // the exit code is asserted for SIGTERM.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(!dir.path().join("sig.ledger").exists());
}

#[test]
fn unusable_limits_fail_closed_and_never_run_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let touch = ["touch", marker.to_str().unwrap()];
    let lib = interposer().unwrap_or_else(|| dir.path().join("libgpuslice.so"));
    for (args, flag) in [
        (&["--memory", "lots"][..], "--memory"),
        (&["--memory", "0"][..], "--memory"),
        (&["--memory", ""][..], "--memory"),
        (&[][..], "--memory"),
        (&["--memory", "4GiB", "--name", "../escape"][..], "--name"),
        (&["--memory", "4GiB", "--log", "loud"][..], "--log"),
        (&["--memory", "4GiB", "--gpus", "first"][..], "--gpus"),
    ] {
        let out = output(
            gpuslice()
                .arg("run")
                .args(args)
                .arg("--ledger-dir")
                .arg(dir.path())
                .arg("--lib")
                .arg(&lib)
                .arg("--")
                .args(touch),
        );
        assert!(!out.status.success(), "{args:?}: {out:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(!marker.exists(), "{args:?} ran the program");
    }
    // A library that does not exist: refused, naming --lib.
    let out = output(
        gpuslice()
            .args(["run", "--memory", "4GiB", "--lib"])
            .arg(dir.path().join("missing.so"))
            .arg("--ledger-dir")
            .arg(dir.path())
            .arg("--")
            .args(touch),
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--lib"), "{out:?}");
    assert!(!marker.exists());
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
}

#[test]
fn a_name_in_use_is_refused() {
    let lib = require_interposer!();
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let go = dir.path().join("go");
    let script = format!(
        "touch '{}'; while [ ! -e '{}' ]; do sleep 0.05; done",
        started.display(),
        go.display()
    );
    let child = run_in(
        dir.path(),
        &lib,
        &["--name", "shared"],
        &["sh", "-c", &script],
    )
    .spawn()
    .unwrap();
    let mut first = Held {
        child,
        go: go.clone(),
    };
    wait_for(&started, &mut first.child);
    assert!(dir.path().join("shared.ledger").exists());

    let marker = dir.path().join("second-ran");
    let out = output(&mut run_in(
        dir.path(),
        &lib,
        &["--name", "shared"],
        &["touch", marker.to_str().unwrap()],
    ));
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("'shared'") && stderr.contains("--name"),
        "{stderr}"
    );
    assert!(!marker.exists(), "the second program must not run");

    std::fs::write(&go, b"").unwrap();
    let status = first.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!dir.path().join("shared.ledger").exists());

    // Once the first run is over, the name is free again.
    let out = output(&mut run_in(
        dir.path(),
        &lib,
        &["--name", "shared"],
        &["touch", marker.to_str().unwrap()],
    ));
    assert!(out.status.success(), "{out:?}");
    assert!(marker.exists());
}

#[test]
fn a_stale_ledger_is_replaced() {
    let lib = require_interposer!();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.ledger");
    // An earlier slice of this name whose processes are all gone.
    drop(
        Ledger::create_or_open(
            &path,
            &LedgerSpec {
                name: "old".into(),
                default_limit: Some(GIB),
                devices: Vec::new(),
                compute: None,
            },
        )
        .unwrap(),
    );
    let script =
        r#"gpuslice_status=$("$0" status --json --ledger-dir "$1") && echo "$gpuslice_status""#;
    let out = output(&mut run_in(
        dir.path(),
        &lib,
        &["--name", "old"],
        &[
            "sh",
            "-c",
            script,
            env!("CARGO_BIN_EXE_gpuslice"),
            dir.path().to_str().unwrap(),
        ],
    ));
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Inside the run, the slice has the new limit (4GiB), not the stale one.
    assert_eq!(json["slices"][0]["name"], "old");
    assert_eq!(json["slices"][0]["default_limit_bytes"], 4 * GIB);
    assert!(!path.exists());
}

#[test]
fn status_json_lists_slices_processes_and_broken_files() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::create_or_open(
        &dir.path().join("train.ledger"),
        &LedgerSpec {
            name: "train".into(),
            default_limit: None,
            devices: vec![(UUID.into(), 4 * GIB)],
            compute: None,
        },
    )
    .unwrap();
    let slot = ledger.register().unwrap();
    ledger.try_charge(slot, DeviceSlot::new(0), GIB).unwrap();
    std::fs::write(dir.path().join("bad.ledger"), b"definitely not a ledger").unwrap();

    let out = output(
        gpuslice()
            .args([
                "status",
                "--state-dir",
                "/nonexistent-gpuslice-state",
                "--json",
                "--ledger-dir",
            ])
            .arg(dir.path()),
    );
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let slices = json["slices"].as_array().unwrap();
    assert_eq!(slices.len(), 2, "{json}");

    let bad = &slices[0];
    assert!(
        bad["error"].as_str().unwrap().contains("bad.ledger"),
        "{bad}"
    );

    let train = &slices[1];
    assert_eq!(train["name"], "train");
    assert_eq!(train["error"], serde_json::Value::Null);
    assert_eq!(
        train["devices"],
        serde_json::json!([{"uuid": UUID, "limit_bytes": 4 * GIB, "used_bytes": GIB, "busy_ns": 0, "refused_allocations": 0, "throttled_ns": 0}])
    );
    assert_eq!(
        train["processes"],
        serde_json::json!([{
            "pid": std::process::id(),
            "alive": "alive",
            "devices": [{"uuid": UUID, "charged_bytes": GIB, "context_bytes": 0}],
        }])
    );

    // The tables say the same.
    let out = output(
        gpuslice()
            .args([
                "status",
                "--state-dir",
                "/nonexistent-gpuslice-state",
                "--ledger-dir",
            ])
            .arg(dir.path()),
    );
    assert!(out.status.success(), "{out:?}");
    let table = text(&out.stdout);
    assert!(table.contains("slice train"), "{table}");
    assert!(table.contains("25.0%"), "{table}");
    assert!(
        table.contains("error: ") && table.contains("bad.ledger"),
        "{table}"
    );
    ledger.unregister(slot);
}

#[test]
fn status_of_a_missing_folder_lists_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none");
    let out = output(
        gpuslice()
            .args([
                "status",
                "--state-dir",
                "/nonexistent-gpuslice-state",
                "--json",
                "--ledger-dir",
            ])
            .arg(&missing),
    );
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json, serde_json::json!({"slices": []}));
    // GPUSLICE_LEDGER_DIR is the folder when --ledger-dir is not given.
    let out = output(
        gpuslice()
            .args(["status", "--state-dir", "/nonexistent-gpuslice-state"])
            .env("GPUSLICE_LEDGER_DIR", &missing),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains(&format!("no slices in {}", missing.display())));
}
