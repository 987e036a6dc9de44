//! The socket side: bind the agent's unix socket, accept clients, authenticate each one by
//! its peer credentials, and answer with its own container's view.
//!
//! The caller is identified by the kernel, never by anything it sends: `SO_PEERCRED`
//! gives its PID as seen from the agent's (host) namespace, and `SO_PEERPIDFD` (Linux
//! 6.5+) a pidfd of the same process. After its namespace and cgroup have been read from
//! `/proc/<pid>`, the pidfd must still point to a live process, so the PID was not reused
//! by another process in between. Without `SO_PEERPIDFD` the start time of `/proc/<pid>`
//! is compared before and after instead.
//!
//! The socket's folder is mode 0755 and the socket 0666: any local process may ask, and
//! each learns only about its own container. The mode must stay 0666: the interposer in
//! every process of every slice asks, and those processes run as any uid (root, an image's
//! own user, or uids that a user namespace maps to unprivileged host uids), which no owner
//! or group could cover. File permissions would not be the access control anyway: what a
//! caller is told is decided by its kernel-given identity. The price is that any local
//! process can connect, so connections are bounded ([`crate::clients`]): each has one
//! deadline for its whole exchange, and when all places are taken the oldest one still
//! waiting on its peer makes room.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use gpuslice_agent_protocol::{DriverMode, Request, Response, SampleNumbering, read_message};
use nix::sys::socket::{getsockopt, sockopt};

use crate::AgentError;
use crate::clients::{ClientTable, DeadlineStream, Place, Refused};
use crate::host::{CachedHost, HostSource};
use crate::procfs::Procfs;
use crate::scope::Scope;

pub use crate::clients::{CLIENT_DEADLINE, MAX_CLIENTS};

static VERBOSE: AtomicBool = AtomicBool::new(false);

/// Logs every request when set.
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Relaxed);
}

/// Writes one line to standard error.
pub fn log(message: std::fmt::Arguments<'_>) {
    let line = format!("gpuslice agent: {message}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

fn debug(message: std::fmt::Arguments<'_>) {
    if VERBOSE.load(Relaxed) {
        log(message);
    }
}

/// The agent: the host's GPUs, the `/proc` it reads, and the probed driver behaviour.
#[derive(Debug)]
pub struct Agent {
    host: Arc<CachedHost>,
    procfs: Procfs,
    mode: DriverMode,
    own_samples: SampleNumbering,
    clients: ClientTable,
}

/// A connected client as the kernel identifies it.
struct Peer {
    pid: u32,
    pidfd: Option<OwnedFd>,
}

impl Agent {
    /// An agent answering from `host`, reading `procfs`, reporting the probed behaviour.
    pub fn new(
        host: Box<dyn HostSource>,
        procfs: Procfs,
        mode: DriverMode,
        own_samples: SampleNumbering,
    ) -> Self {
        Self::with_host(Arc::new(CachedHost::new(host)), procfs, mode, own_samples)
    }

    /// An agent answering from a host view it shares (with the enforcer).
    pub fn with_host(
        host: Arc<CachedHost>,
        procfs: Procfs,
        mode: DriverMode,
        own_samples: SampleNumbering,
    ) -> Self {
        Self {
            host,
            procfs,
            mode,
            own_samples,
            clients: ClientTable::default(),
        }
    }

    /// The answer for the process with host PID `pid`, whose identity `verify` confirms
    /// once its scope has been read.
    fn answer_for(&self, pid: u32, verify: impl FnOnce() -> bool) -> Response {
        let scope = match Scope::of(&self.procfs, pid) {
            Ok(s) => s,
            Err(e) => return Response::Error(e.to_string()),
        };
        if !verify() {
            return Response::Error(format!(
                "the calling process (host PID {pid}) exited while it was being identified"
            ));
        }
        let snapshot = match self.host.snapshot() {
            Ok(s) => s,
            Err(e) => return Response::Error(e.to_string()),
        };
        let view = scope.view(&self.procfs, &snapshot, self.mode, self.own_samples);
        debug(format_args!(
            "host PID {pid} (namespace {}, cgroup {}): {} GPU process(es) of its container",
            scope.pid_ns,
            scope.cgroup.as_deref().unwrap_or("-"),
            view.gpus.iter().map(|g| g.processes.len()).sum::<usize>()
        ));
        Response::View(view)
    }

    /// The answer for a process identified only by its host PID (for tests and tools that
    /// did the authentication themselves).
    pub fn answer(&self, host_pid: u32) -> Response {
        self.answer_for(host_pid, || true)
    }

    fn peer(stream: &UnixStream) -> Result<Peer, String> {
        let cred = getsockopt(stream, sockopt::PeerCredentials)
            .map_err(|e| format!("SO_PEERCRED failed: {e}"))?;
        let pid = u32::try_from(cred.pid()).unwrap_or(0);
        if pid == 0 {
            return Err("the caller's PID is not visible from the agent's PID namespace".into());
        }
        // Linux 6.5+; older kernels fall back to comparing start times.
        let pidfd = getsockopt(stream, sockopt::PeerPidfd).ok();
        Ok(Peer { pid, pidfd })
    }

    /// Serves one connection, within its deadline: reading the request and writing the
    /// answer together may take [`CLIENT_DEADLINE`] from its acceptance (not counting
    /// the time the agent takes to compute the answer).
    fn handle(&self, stream: UnixStream, place: &Place) {
        let mut io = DeadlineStream::new(&stream, place.deadline());
        let response = match Self::peer(&stream) {
            Err(e) => Response::Error(e),
            Ok(peer) => {
                let started = self.procfs.start_time(peer.pid);
                match read_message(&mut io) {
                    Err(e) => {
                        debug(format_args!("host PID {}: bad request: {e}", peer.pid));
                        return;
                    }
                    Ok(text) => {
                        place.computing();
                        let computing = std::time::Instant::now();
                        let response = match Request::decode(&text) {
                            Err(e) => Response::Error(e.to_string()),
                            Ok(Request::View) => self.answer_for(peer.pid, || {
                                still_the_same(&self.procfs, &peer, started)
                            }),
                        };
                        // The agent's own time is not the client's.
                        io.extend(computing.elapsed());
                        place.waiting();
                        response
                    }
                }
            }
        };
        if let Err(e) = io.write_all(response.encode().as_bytes()) {
            debug(format_args!("writing an answer failed: {e}"));
        }
    }

    /// Accepts clients until the listener fails, one thread per client, with at most
    /// [`MAX_CLIENTS`] connections open (see [`crate::clients`]).
    pub fn serve(self: Arc<Self>, listener: UnixListener) -> Result<(), AgentError> {
        loop {
            let (stream, _) = match listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(AgentError::Socket {
                        path: PathBuf::from("<listener>"),
                        what: "accepting a client",
                        source: e,
                    });
                }
            };
            let place = match self.clients.admit(&stream) {
                Ok(place) => place,
                Err(refused) => {
                    let why = match refused {
                        Refused::Busy => "the agent is busy; try again",
                        Refused::NoDescriptor => "the agent is out of file descriptors",
                    };
                    // One try without blocking: the accept loop never waits on a client.
                    let mut stream = stream;
                    if stream.set_nonblocking(true).is_ok() {
                        let _ = stream.write(Response::Error(why.into()).encode().as_bytes());
                    }
                    continue;
                }
            };
            let id = place.id();
            let agent = Arc::clone(&self);
            let spawned = std::thread::Builder::new()
                .name("gpuslice-agent-client".into())
                .spawn(move || {
                    agent.handle(stream, &place);
                    agent.clients.leave(place.id());
                });
            if let Err(e) = spawned {
                // The closure was dropped with the stream; give its place back.
                self.clients.leave(id);
                log(format_args!("cannot start a client thread: {e}"));
            }
        }
    }
}

/// Whether the peer is still the process that connected: its pidfd still refers to a live
/// process, or (without pidfd) its start time did not change.
fn still_the_same(procfs: &Procfs, peer: &Peer, started: Option<u64>) -> bool {
    match &peer.pidfd {
        Some(fd) => {
            // SAFETY: pidfd_send_signal with signal 0 only checks that the process the
            // pidfd refers to still exists; `fd` is an open pidfd.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    0,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
        }
        None => started.is_some() && procfs.start_time(peer.pid) == started,
    }
}

/// Creates the socket's folder (mode 0755), replaces a stale socket, binds, and opens the
/// socket to everyone (mode 0666): access is decided per caller by its identity.
pub fn bind(path: &Path) -> Result<UnixListener, AgentError> {
    let err = |what: &'static str| {
        move |source| AgentError::Socket {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(err("creating its folder"))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(err("setting its folder's mode to 0755"))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(AgentError::InUse {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path).map_err(err("removing a stale socket"))?;
        }
        Ok(_) => {
            return Err(AgentError::Socket {
                path: path.to_path_buf(),
                what: "binding",
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a file that is not a socket is in the way",
                ),
            });
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(err("binding"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(err("setting its mode to 0666"))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{HostGpu, HostProcess};
    use gpuslice_agent_protocol::{ProcessKind, query};
    use std::time::Duration;

    struct Fixed(Vec<HostGpu>);
    impl HostSource for Fixed {
        fn snapshot(&self) -> Result<Vec<HostGpu>, AgentError> {
            Ok(self.0.clone())
        }
    }

    #[test]
    fn answers_a_caller_about_its_own_namespace_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/agent.sock");
        let listener = bind(&path).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o666);
        assert_eq!(
            std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
            0o755
        );
        // This test process and a child are in one namespace; host PID 1 (init) is a GPU
        // process of another container as far as this test knows, unless the test itself
        // runs as PID 1's sibling in the same namespace, which is fine too.
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id();
        let own = Procfs::default().own_pid(child.id()).unwrap();
        let gpus = vec![HostGpu {
            uuid: "GPU-x".into(),
            processes: vec![
                HostProcess {
                    pid: child.id(),
                    kind: ProcessKind::Compute,
                    used_memory: Some(42),
                },
                HostProcess {
                    pid: u32::MAX - 1,
                    kind: ProcessKind::Compute,
                    used_memory: Some(1),
                },
            ],
            ..HostGpu::default()
        }];
        let agent = Arc::new(Agent::new(
            Box::new(Fixed(gpus)),
            Procfs::default(),
            DriverMode::Translated,
            SampleNumbering::Translated,
        ));
        std::thread::spawn({
            let agent = Arc::clone(&agent);
            move || agent.serve(listener)
        });
        let r = query(&path, Request::View, Duration::from_secs(2)).unwrap();
        let Response::View(view) = r else {
            panic!("{r:?}")
        };
        assert_eq!(view.mode, DriverMode::Translated);
        let pids: Vec<(u32, Option<u64>)> = view.gpus[0]
            .processes
            .iter()
            .map(|p| (p.pid, p.used_memory))
            .collect();
        assert_eq!(pids, vec![(own, Some(42))]);
        assert!(matches!(agent.answer(me), Response::View(_)));
        assert!(matches!(agent.answer(u32::MAX - 2), Response::Error(_)));
        // A second agent on the same socket is refused.
        assert!(matches!(bind(&path), Err(AgentError::InUse { .. })));
        // Garbage gets an error, not a view.
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"gpuslice-agent 1\nsteal\nend\n").unwrap();
        let text = read_message(&mut s).unwrap();
        assert!(text.contains("error"), "{text}");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// An agent on a fresh socket, serving in a thread.
    fn serving_agent(dir: &Path) -> PathBuf {
        let path = dir.join("agent.sock");
        let listener = bind(&path).unwrap();
        let agent = Arc::new(Agent::new(
            Box::new(Fixed(vec![HostGpu {
                uuid: "GPU-x".into(),
                ..HostGpu::default()
            }])),
            Procfs::default(),
            DriverMode::Translated,
            SampleNumbering::Translated,
        ));
        std::thread::spawn(move || agent.serve(listener));
        path
    }

    #[test]
    fn a_connection_that_drips_is_closed_at_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = serving_agent(dir.path());
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_nonblocking(true).unwrap();
        let start = std::time::Instant::now();
        let limit = Duration::from_secs(12);
        // One byte every 200 ms, never a whole request, until the agent hangs up.
        let closed = loop {
            if start.elapsed() > limit {
                break false;
            }
            let mut buf = [0u8; 64];
            match std::io::Read::read(&mut s, &mut buf) {
                Ok(0) => break true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                _ => break true,
            }
            if s.write_all(b"x").is_err() {
                break true;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(
            closed && start.elapsed() < CLIENT_DEADLINE * 5,
            "a client sending a byte every 200 ms was still connected after {:?}",
            start.elapsed()
        );
    }

    /// A slow-drip client until `stop` (or `until`): it connects, sends one byte a second
    /// and never a whole request, and connects again as soon as the agent hangs up (after
    /// 100 ms if the connection lasted less than a second).
    fn drip(path: &Path, stop: &AtomicBool, until: std::time::Instant) {
        while !stop.load(Relaxed) && std::time::Instant::now() < until {
            let Ok(mut s) = UnixStream::connect(path) else {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            let opened = std::time::Instant::now();
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut buf = [0u8; 256];
            while !stop.load(Relaxed) && std::time::Instant::now() < until {
                match std::io::Read::read(&mut s, &mut buf) {
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        if s.write_all(b"x").is_err() {
                            break;
                        }
                    }
                    // Closed, or answered ("busy"): the agent is done with it.
                    _ => break,
                }
            }
            if opened.elapsed() < Duration::from_secs(1) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    #[test]
    fn slow_drip_clients_do_not_shut_out_a_real_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = serving_agent(dir.path());
        let stop = Arc::new(AtomicBool::new(false));
        let until = std::time::Instant::now() + Duration::from_secs(30);
        let flood: Vec<_> = (0..MAX_CLIENTS)
            .map(|_| {
                let (path, stop) = (path.clone(), Arc::clone(&stop));
                std::thread::spawn(move || drip(&path, &stop, until))
            })
            .collect();
        // Let the flood take every place.
        std::thread::sleep(Duration::from_millis(1500));
        let mut answers = Vec::new();
        for _ in 0..3 {
            // A few tries each, as a client that is refused once may try again.
            let answer = (0..3)
                .map(|_| {
                    let r = query(&path, Request::View, Duration::from_secs(3));
                    if !matches!(r, Ok(Response::View(_))) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    r
                })
                .find(|r| matches!(r, Ok(Response::View(_))));
            answers.push(answer.is_some());
        }
        stop.store(true, Relaxed);
        for t in flood {
            t.join().unwrap();
        }
        assert_eq!(
            answers,
            vec![true; 3],
            "real requests were refused while slow clients held the agent"
        );
    }
}
