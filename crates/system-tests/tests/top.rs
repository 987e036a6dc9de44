//! `gpuslice top` end to end on the fake GPU: `gpuslice run` makes a 1 GiB slice whose
//! `cuda-probe` holds 100 MiB (and its 300 MiB context) and was refused one allocation
//! too large for it. The live view runs in a real terminal, a detached tmux session of
//! 80x24 on a server of its own; the test sends it keys and reads the screen with
//! `capture-pane`: the slice's row shows its usage and limit, the GPU's totals show the
//! fake GPU's memory, Enter shows the slice's process, and `q` exits with 0; SIGTERM
//! ends it too, with 0; after either the terminal's settings are as before. `--once`
//! is checked as text. Without tmux the live test says SKIPPED (`.ci/run` installs it).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gpuslice_ledger::Ledger;
use system_tests::{Bench, MIB, output_within, pid_file, wait_for};

/// A slice made by `gpuslice run`, its probe holding memory until the slice is dropped.
struct HeldSlice {
    run: Child,
    done: PathBuf,
    /// The probe's PID.
    pid: u32,
    ledger: PathBuf,
}

impl HeldSlice {
    /// `gpuslice run --name NAME --memory 1GiB -- cuda-probe ...`: a context, 100 MiB, an
    /// allocation of 2 GiB refused, then it waits.
    fn start(bench: &Bench, name: &str) -> Self {
        let dir = bench.dir.path();
        let ready = dir.join(format!("{name}.ready"));
        let pid_path = dir.join(format!("{name}.pid"));
        let done = dir.join(format!("{name}.done"));
        let run = bench
            .plain(&bench.build.join("gpuslice"))
            .env("GPUSLICE_LIB", bench.interposer())
            .args(["run", "--name", name, "--memory", "1GiB", "--"])
            .arg(bench.build.join("cuda-probe"))
            .args(["init", "ctx", "alloc:100M", "alloc:2G"])
            .arg(format!("pid:{}", pid_path.display()))
            .arg(format!("ready:{}", ready.display()))
            .arg(format!("wait:{}", done.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start gpuslice run");
        let mut held = Self {
            run,
            done,
            pid: 0,
            ledger: bench.ledger(name),
        };
        wait_for(&ready, "the slice's probe");
        held.pid = pid_file(&pid_path).0;
        held
    }
}

impl Drop for HeldSlice {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.done, b"done");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.run.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.run.kill();
        let _ = self.run.wait();
    }
}

/// The environment `gpuslice top` needs on the bench, as `export` lines of a script.
fn exports(bench: &Bench) -> String {
    bench
        .env
        .iter()
        .map(|(k, v)| format!("export {k}='{v}'\n"))
        .collect()
}

/// The slice's ledger holds 400 MiB (100 MiB and the context) of 1 GiB, and counted
/// the refused allocation; returns how many refusals it counts now.
fn check_ledger(held: &HeldSlice) -> u64 {
    let ledger = Ledger::open(&held.ledger).expect("the slice's ledger");
    let device = ledger.devices().into_iter().next().expect("a device entry");
    assert_eq!(device.limit, 1 << 30);
    assert_eq!(device.used, 400 * MIB, "100 MiB and a 300 MiB context");
    let refused = ledger.refused_allocations(device.slot);
    assert!(refused >= 1, "the 2 GiB allocation was refused");
    refused
}

/// A tmux server of the test's own (its socket in the bench), killed when dropped.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn command(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.arg("-S").arg(&self.socket).stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> String {
        let out = output_within(self.command().args(args), Duration::from_secs(30));
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The screen, once `ready` holds for it (within 60 s).
    fn screen_when(&self, what: &str, mut ready: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.run(&["capture-pane", "-p", "-t", "top"]);
            if ready(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {what}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self
            .command()
            .arg("kill-server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn line_with<'a>(screen: &'a str, text: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.contains(text))
        .unwrap_or_else(|| panic!("no line with {text:?}:\n{screen}"))
}

#[test]
fn top_shows_a_held_slice_in_80_by_24_and_q_exits_0() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!(
            "SKIPPED top_shows_a_held_slice_in_80_by_24_and_q_exits_0: tmux is not installed"
        );
        return;
    }
    let bench = Bench::new();
    let held = HeldSlice::start(&bench, "held");
    check_ledger(&held);

    let (tmux, exit) = live_top(&bench);

    // The slice's row: the process's 400 MiB of the 1 GiB limit, no compute limit, the
    // refusals the ledger counted, one process; the GPU's row: the fake GPU's 80 GiB.
    // (The refusals are compared once the screen shows what the ledger counts: the
    // count is read afresh at every refresh.)
    let refused_cell = |screen: &str| {
        let row = screen.lines().find(|l| l.contains("held"))?;
        row.split_whitespace().nth(7).map(str::to_string)
    };
    let mut refused = String::new();
    let screen = tmux.screen_when("the slice's row with the ledger's refusals", |s| {
        refused = check_ledger(&held).to_string();
        s.contains("400MiB/1GiB") && refused_cell(s).as_deref() == Some(refused.as_str())
    });
    let row = line_with(&screen, "held");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "+held",
            "0",
            "[|||",
            "]",
            "400MiB/1GiB",
            "-",
            "0.0s",
            &refused,
            "1"
        ],
        "{screen}"
    );
    let gpu = line_with(&screen, "GPU-00000000");
    assert!(gpu.starts_with("0 ") && gpu.contains("/80GiB"), "{screen}");
    assert!(screen.lines().all(|l| l.chars().count() <= 80), "{screen}");

    // Enter shows the slice's process.
    tmux.run(&["send-keys", "-t", "top", "Enter"]);
    let pid = format!("pid {}", held.pid);
    let screen = tmux.screen_when("the process", |s| s.contains(&pid));
    let process = line_with(&screen, &pid);
    assert!(
        process.contains("alive") && process.contains("400MiB"),
        "{screen}"
    );

    // q quits with 0 and gives the terminal back.
    tmux.run(&["send-keys", "-t", "top", "q"]);
    assert_eq!(exit_status(&exit), "EXIT=0 TTY=same");
}

#[test]
fn top_gives_the_terminal_back_on_sigterm() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("SKIPPED top_gives_the_terminal_back_on_sigterm: tmux is not installed");
        return;
    }
    let bench = Bench::new();
    let held = HeldSlice::start(&bench, "held");
    let (tmux, exit) = live_top(&bench);
    tmux.screen_when("the slice's row", |s| s.contains("400MiB/1GiB"));

    // `kill` (SIGTERM) to `gpuslice top`, the child of the pane's shell: it exits 0 and
    // the terminal is as the shell left it (not raw).
    let shell: u32 = tmux
        .run(&["display-message", "-p", "-t", "top", "#{pane_pid}"])
        .trim()
        .parse()
        .expect("the pane's PID");
    let top = child_named(shell, "gpuslice").expect("gpuslice top under the pane's shell");
    let sent = Command::new("kill")
        .args(["-TERM", &top.to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    assert_eq!(exit_status(&exit), "EXIT=0 TTY=same");
    drop(held);
}

/// Starts `gpuslice top` on the bench's slices in an 80x24 tmux session named `top`, from
/// a shell script that writes, once top has exited, `EXIT=<status> TTY=same|changed` (the
/// terminal's settings as `stty -g` prints them, before and after) to the file returned.
fn live_top(bench: &Bench) -> (Tmux, PathBuf) {
    let dir = bench.dir.path();
    let exit = dir.join("top.exit");
    let script = dir.join("top.sh");
    std::fs::write(
        &script,
        format!(
            "{}before=$(stty -g)\n'{}' top --ledger-dir '{}' --state-dir '{}'\ncode=$?\n\
             if [ \"$before\" = \"$(stty -g)\" ]; then tty=same; else tty=changed; fi\n\
             echo \"EXIT=$code TTY=$tty\" > '{}'\n",
            exports(bench),
            bench.build.join("gpuslice").display(),
            dir.join("ledgers").display(),
            dir.join("state").display(),
            exit.display()
        ),
    )
    .unwrap();
    let tmux = Tmux {
        socket: dir.join("tmux.sock"),
    };
    tmux.run(&[
        "-f",
        "/dev/null",
        "new-session",
        "-d",
        "-x",
        "80",
        "-y",
        "24",
        "-s",
        "top",
        &format!("sh '{}'", script.display()),
    ]);
    (tmux, exit)
}

/// The line the script of [`live_top`] wrote once top exited (within 10 s of its file).
fn exit_status(exit: &std::path::Path) -> String {
    wait_for(exit, "gpuslice top to exit");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(exit).unwrap_or_default();
        if text.ends_with('\n') || Instant::now() > deadline {
            return text.trim().to_string();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first child of `parent` whose command name is `name`, from /proc.
fn child_named(parent: u32, name: &str) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": the command may hold spaces and parentheses.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let ppid = stat[close + 1..].split_whitespace().nth(1);
            if &stat[open + 1..close] == name && ppid == Some(parent.to_string().as_str()) {
                return Some(pid);
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn top_once_prints_one_frame_as_plain_text() {
    let bench = Bench::new();
    let dir = bench.dir.path();
    let held = HeldSlice::start(&bench, "held");
    check_ledger(&held);
    let state = dir.join("state");
    let once = |width: &str| {
        let out = output_within(
            bench
                .plain(&bench.build.join("gpuslice"))
                .args(["top", "--once", "--width", width, "--ledger-dir"])
                .arg(dir.join("ledgers"))
                .arg("--state-dir")
                .arg(&state),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    let text = once("80");
    assert!(!text.contains('\x1b'), "escape codes: {text:?}");
    assert!(text.starts_with("gpuslice top  "), "{text}");
    assert!(
        text.contains("1 slice  1 GPU") && !text.contains("q quit"),
        "{text}"
    );
    let row = line_with(&text, "held");
    assert!(
        row.contains("400MiB/1GiB") && row.split_whitespace().nth(1) == Some("0"),
        "{text}"
    );
    // Every slice's processes, without a key.
    let process = line_with(&text, &format!("pid {}", held.pid));
    assert!(process.contains("alive"), "{text}");
    assert!(
        text.lines()
            .all(|l| l.chars().count() <= 80 && l == l.trim_end()),
        "{text}"
    );
    // At 80 columns the GPU's UUID is cut short; at 120 it fits whole.
    let uuid = system_tests::fake_uuid(0);
    assert!(
        !text.contains(&uuid) && text.contains("GPU-00000000-"),
        "{text}"
    );
    assert!(once("120").contains(&uuid));
    // An empty host says where it looked.
    let empty = output_within(
        bench
            .plain(&bench.build.join("gpuslice"))
            .args(["top", "--once", "--width", "300", "--ledger-dir"])
            .arg(dir.join("nothing-here"))
            .arg("--state-dir")
            .arg(&state)
            .stdout(Stdio::piped()),
        Duration::from_secs(60),
    );
    let empty_text = String::from_utf8_lossy(&empty.stdout);
    assert!(empty.status.success(), "{empty:?}");
    assert!(
        empty_text.contains(&format!(
            "no slices in {}",
            dir.join("nothing-here").display()
        )),
        "{empty_text}"
    );
}
