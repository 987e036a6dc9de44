//! The `fake-kubelet` binary on its own: bad flags are refused naming the flag and the
//! value, a device plugin that never registers fails the run naming the resource and
//! writes nothing, and `dra` serves its API server (with the Node) at the URL of the
//! kubeconfig it writes, then fails naming the registration socket no driver created,
//! or stops at SIGTERM naming what it was waiting for. The flows with a real plugin on
//! the other side are in the system tests (`fake_kubelet_flows.rs`), against
//! `gpuslice node` and the DRA driver.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fake-kubelet");
/// Far more than any of these runs needs: only a hang reaches it.
const LIMIT: Duration = Duration::from_secs(60);

/// A child killed (and reaped) when the test ends, however it ends.
struct Reaped(Option<Child>);

impl Reaped {
    fn spawn(args: &[&str]) -> Self {
        let child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start fake-kubelet");
        Self(Some(child))
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.0.as_ref().expect("running").id() as libc::pid_t;
        // SAFETY: kill(2) on our own child, which is not reaped yet (we hold it).
        unsafe { libc::kill(pid, signal) };
    }

    /// Waits for the exit (killing it after LIMIT), and returns its output.
    fn output(mut self) -> Output {
        let mut child = self.0.take().expect("running");
        let start = Instant::now();
        while child.try_wait().expect("try_wait").is_none() {
            if start.elapsed() > LIMIT {
                let _ = child.kill();
                panic!("fake-kubelet did not exit within {LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("output")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn run(args: &[&str]) -> Output {
    Reaped::spawn(args).output()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < LIMIT, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_flags_are_refused_naming_the_flag_and_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let kc = format!("{d}/kc.yaml");
    let out = format!("{d}/out.json");
    let dra = |claims: &[&str]| {
        let mut args = vec![
            "dra",
            "--kubelet-dir",
            &d,
            "--node",
            "h200",
            "--kubeconfig-out",
            &kc,
            "--out",
            &out,
        ];
        for c in claims {
            args.extend(["--claim", c]);
        }
        run(&args)
    };
    for (claim, why) in [
        ("a=8Gi", "no ','"),
        ("a=lots,30", "the memory \"lots\""),
        ("a=8Gi,150", "the compute share \"150\""),
        ("Big=8Gi,30", "the name \"Big\""),
    ] {
        let o = dra(&[claim]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{claim}: {err}");
        assert!(
            err.contains("--claim") && err.contains(&format!("{claim:?}")) && err.contains(why),
            "{claim}: {err}"
        );
    }
    let o = dra(&["a=1Gi,10", "a=2Gi,"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("--claim \"a\" is given twice"),
        "{}",
        stderr(&o)
    );
    assert!(!Path::new(&kc).exists(), "a refused run wrote a kubeconfig");

    let o = run(&["device-plugin", "--kubelet-dir", &d, "--out", &out]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--resource"), "{}", stderr(&o));
    let o = run(&[
        "device-plugin",
        "--kubelet-dir",
        &d,
        "--out",
        &out,
        "--resource",
        "slice-8g",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("--resource \"slice-8g\" is not an extended resource name"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "device-plugin",
        "--kubelet-dir",
        &d,
        "--out",
        &out,
        "--resource",
        "example.com/a",
        "--timeout-secs",
        "soon",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--timeout-secs") && stderr(&o).contains("soon"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_plugin_that_never_registers_fails_the_run_naming_its_resource() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let out = dir.path().join("out.json");
    let o = run(&[
        "device-plugin",
        "--kubelet-dir",
        &d,
        "--resource",
        "example.com/a",
        "--resource",
        "example.com/b",
        "--out",
        &out.display().to_string(),
        "--timeout-secs",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(
            "timed out after 1s waiting for the device plugins of example.com/a, \
             example.com/b to register"
        ),
        "{err}"
    );
    assert!(!out.exists(), "a failed run wrote its output");
    // It served the kubelet's socket meanwhile.
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!(
            "serving Registration on {d}/device-plugins/kubelet.sock"
        )),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// The server URL of a kubeconfig, read as YAML.
fn server_of(kubeconfig: &Path) -> String {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(doc["current-context"].as_str(), Some("fake"), "{text}");
    doc["clusters"][0]["cluster"]["server"]
        .as_str()
        .unwrap_or_else(|| panic!("no server in {text}"))
        .to_string()
}

/// `GET path` from `http://host:port`, as (status line, body).
fn http_get(server: &str, path: &str) -> (String, String) {
    let addr = server.strip_prefix("http://").expect("an http URL");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the API server");
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.lines().next().unwrap_or_default().to_string();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn dra_args<'a>(d: &'a str, kc: &'a str, out: &'a str, timeout: &'a str) -> Vec<&'a str> {
    vec![
        "dra",
        "--kubelet-dir",
        d,
        "--node",
        "h200",
        "--kubeconfig-out",
        kc,
        "--claim",
        "a=8Gi,30",
        "--claim",
        "c=2Gi,",
        "--out",
        out,
        "--timeout-secs",
        timeout,
    ]
}

#[test]
fn dra_serves_the_node_at_its_kubeconfig_then_fails_naming_the_missing_socket() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let kc = dir.path().join("kubeconfig.yaml");
    let out = dir.path().join("claims.json");
    let child = Reaped::spawn(&dra_args(
        &d,
        &kc.display().to_string(),
        &out.display().to_string(),
        "8",
    ));
    wait_for(&kc);
    let server = server_of(&kc);
    let (status, body) = http_get(&server, "/api/v1/nodes/h200");
    assert!(status.contains(" 200 "), "{status}: {body}");
    let node: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(node["metadata"]["name"], "h200");
    let (status, _) = http_get(&server, "/api/v1/nodes/other");
    assert!(status.contains(" 404 "), "{status}");

    let o = child.output();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "timed out after 8s waiting for {d}/plugins_registry/gpuslice.io-reg.sock"
        )),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn sigterm_before_the_driver_comes_stops_dra_naming_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let kc = dir.path().join("kubeconfig.yaml");
    let out = dir.path().join("claims.json");
    let child = Reaped::spawn(&dra_args(
        &d,
        &kc.display().to_string(),
        &out.display().to_string(),
        "60",
    ));
    wait_for(&kc);
    let start = Instant::now();
    child.signal(libc::SIGTERM);
    let o = child.output();
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "slow to stop: {:?}",
        start.elapsed()
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("interrupted (SIGTERM or SIGINT) while waiting for"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}
