//! The interposer's side of the host agent: when `GPUSLICE_AGENT_SOCKET` names a socket,
//! ask the agent for this container's view (a non-blocking connect, then 200 ms per read
//! and write), and keep the answer for 250 ms. A failure is logged once per process and
//! remembered for two seconds, during which the NVML view uses the driver's own answer.
//!
//! No thread is started; the cache is a mutex that is only ever *tried*, so a process that
//! forked while another thread held it never waits for it.

use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gpuslice_agent_protocol::{
    ClientError, DriverMode, ENV_SOCKET, Request, Response, SampleNumbering, View, exchange,
};

use crate::log::log_at;

/// How long an answer is reused.
const ANSWER_TTL: Duration = Duration::from_millis(250);
/// How long a failure is remembered before the agent is tried again.
const FAILURE_TTL: Duration = Duration::from_secs(2);
/// Per read and write.
const IO_TIMEOUT: Duration = Duration::from_millis(200);

enum Cached {
    Answer(Instant, Arc<View>),
    Failed(Instant),
}

static CACHE: Mutex<Option<Cached>> = Mutex::new(None);
static FAILURE_LOGGED: AtomicU32 = AtomicU32::new(0);
/// The last mode and sample numbering an agent reported to this process (0: none yet).
static LAST_MODE: AtomicU8 = AtomicU8::new(0);
static LAST_SAMPLES: AtomicU8 = AtomicU8::new(0);

/// The socket configured for this process, if any.
pub fn socket() -> Option<String> {
    std::env::var(ENV_SOCKET)
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// The agent's view for this process's container, if an agent is configured and answers.
pub fn view() -> Option<Arc<View>> {
    let socket = socket()?;
    let mut guard = CACHE.try_lock().ok();
    if let Some(cache) = guard.as_deref() {
        match cache {
            Some(Cached::Answer(at, view)) if at.elapsed() < ANSWER_TTL => {
                return Some(Arc::clone(view));
            }
            Some(Cached::Failed(at)) if at.elapsed() < FAILURE_TTL => return None,
            _ => {}
        }
    }
    let result = ask(&socket);
    let (entry, answer) = match result {
        Ok(view) => {
            remember_mode(&view);
            let view = Arc::new(view);
            (
                Cached::Answer(Instant::now(), Arc::clone(&view)),
                Some(view),
            )
        }
        Err(message) => {
            let pid = std::process::id();
            if FAILURE_LOGGED.swap(pid, Relaxed) != pid {
                crate::log::line(
                    gpuslice_config::LogLevel::Warn,
                    format_args!(
                        "{message}; NVML shows the driver's own answer, limited to this slice's processes"
                    ),
                );
            }
            (Cached::Failed(Instant::now()), None)
        }
    };
    if let Some(cache) = guard.as_deref_mut() {
        *cache = Some(entry);
    }
    answer
}

fn remember_mode(view: &View) {
    LAST_MODE.store(
        match view.mode {
            DriverMode::HostPids => 1,
            DriverMode::TranslatedBrokenMemory => 2,
            DriverMode::Translated => 3,
            DriverMode::Unknown => 4,
        },
        Relaxed,
    );
    LAST_SAMPLES.store(
        match view.own_samples {
            SampleNumbering::Translated => 1,
            SampleNumbering::HostPids => 2,
            SampleNumbering::Unknown => 3,
        },
        Relaxed,
    );
}

/// The driver mode an agent last reported to this process.
pub fn last_mode() -> Option<DriverMode> {
    Some(match LAST_MODE.load(Relaxed) {
        1 => DriverMode::HostPids,
        2 => DriverMode::TranslatedBrokenMemory,
        3 => DriverMode::Translated,
        4 => DriverMode::Unknown,
        _ => return None,
    })
}

/// How an agent last said the driver numbers this container's own samples.
pub fn last_sample_numbering() -> Option<SampleNumbering> {
    Some(match LAST_SAMPLES.load(Relaxed) {
        1 => SampleNumbering::Translated,
        2 => SampleNumbering::HostPids,
        3 => SampleNumbering::Unknown,
        _ => return None,
    })
}

fn ask(socket: &str) -> Result<View, String> {
    let mut stream = connect(socket).map_err(|e| {
        ClientError::Connect {
            socket: socket.to_string(),
            source: e,
        }
        .to_string()
    })?;
    let io = |e: std::io::Error| {
        ClientError::Io {
            socket: socket.to_string(),
            source: e,
        }
        .to_string()
    };
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    match exchange(&mut stream, Request::View, socket).map_err(|e| e.to_string())? {
        Response::View(view) => {
            log_at!(
                Debug,
                "agent at {socket}: driver mode {}, {} GPU(s)",
                view.mode,
                view.gpus.len()
            );
            Ok(view)
        }
        Response::Error(message) => {
            Err(format!("the gpuslice agent at {socket} refused: {message}"))
        }
    }
}

/// Connects without waiting: a unix socket either accepts at once or refuses (`EAGAIN`
/// when the agent's backlog is full).
#[expect(
    clippy::cast_possible_truncation,
    reason = "AF_UNIX is 1 (a C ABI constant), which every sa_family_t holds"
)]
const UNIX_FAMILY: libc::sa_family_t = libc::AF_UNIX as libc::sa_family_t;

fn connect(path: &str) -> std::io::Result<UnixStream> {
    // SAFETY: an all-zero sockaddr_un is a valid (unnamed) address to fill in.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = UNIX_FAMILY;
    let bytes = path.as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a usable socket path",
        ));
    }
    for (dst, &b) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = b as libc::c_char;
    }
    // SAFETY: plain socket creation.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we own; from here on the stream closes it.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // Shorter than `sun_path` (checked above), so it fits.
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sa_family_t>() + bytes.len())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes.
    let rc = unsafe { libc::connect(fd, (&raw const addr).cast::<libc::sockaddr>(), len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}
