//! The wire protocol between `libgpuslice.so` (inside a container) and the host-side
//! `gpuslice agent`: what a client may ask, what the agent answers, a strict line-based
//! text encoding of both, and a small blocking client over a unix stream socket.
//!
//! It uses the standard library only, so that the interposer, which must not pull in
//! dependencies, can link it.
//!
//! # Encoding
//!
//! A message is ASCII text, one record per line, fields separated by single spaces.
//! It starts with the line `gpuslice-agent 1` (name and protocol version) and ends with
//! the line `end`. A request is
//!
//! ```text
//! gpuslice-agent 1
//! view
//! end
//! ```
//!
//! and its answer either `error <message>` or the caller's view:
//!
//! ```text
//! gpuslice-agent 1
//! mode translated samples=host-pids
//! pid 2 48213
//! gpu GPU-5d1f0c2e-8a4b-4c1d-9e2f-0123456789ab
//! proc 2 compute 2451570688
//! sample 2 1732280000123456 7 3 0 0
//! acct 2 7 3 2451570688 1200 1732279990000000 1
//! enc 17 2 0 1920 1080 30 900
//! fbc 4 2 0 1 0 3840 2160 1920 1080 60 500
//! end
//! ```
//!
//! Every PID in an answer is already in the caller's PID namespace, except the second
//! field of a `pid` line: the host PID of that GPU process of the caller's container, for
//! a caller that must translate what a driver which shows host PIDs says (`pid` lines come
//! before the first `gpu` line). Numbers are decimal;
//! a value the driver reports as not available is `na`. Anything else — an unknown
//! record, a missing or extra field, a record before its `gpu` line, text after `end`, a
//! line longer than [`MAX_LINE`] or a message longer than [`MAX_MESSAGE`] — is an error.

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The first word of every message.
pub const MAGIC: &str = "gpuslice-agent";
/// The protocol version this crate speaks.
pub const VERSION: u32 = 1;
/// Longest line accepted, in bytes (newline excluded).
pub const MAX_LINE: usize = 512;
/// Longest message accepted, in bytes.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Where the agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/gpuslice/agent/agent.sock";
/// The variable that tells the interposer where the agent listens.
pub const ENV_SOCKET: &str = "GPUSLICE_AGENT_SOCKET";

/// How the driver shows processes to a caller inside a PID namespace (found by the
/// agent's start-up probe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverMode {
    /// Host PIDs of every process on the host (drivers before 535.113).
    HostPids,
    /// The list is translated into the caller's namespace and filtered, but per-process
    /// memory is 0 or not available (535.113 to 560, all 535.x/550.x).
    TranslatedBrokenMemory,
    /// List and memory translated and filtered (565 and later).
    Translated,
    /// Not probed, or the probe could not decide.
    Unknown,
}

impl DriverMode {
    /// The word used on the wire and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DriverMode::HostPids => "host-pids",
            DriverMode::TranslatedBrokenMemory => "translated-broken-memory",
            DriverMode::Translated => "translated",
            DriverMode::Unknown => "unknown",
        }
    }

    /// Parses [`DriverMode::as_str`].
    pub fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "host-pids" => DriverMode::HostPids,
            "translated-broken-memory" => DriverMode::TranslatedBrokenMemory,
            "translated" => DriverMode::Translated,
            "unknown" => DriverMode::Unknown,
            _ => return None,
        })
    }
}

impl fmt::Display for DriverMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the driver numbers a namespaced caller's *own* per-process utilization samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleNumbering {
    /// Under the caller's namespace PIDs (570.86 and later).
    Translated,
    /// Under host PIDs.
    HostPids,
    /// Not probed, or no sample was seen.
    Unknown,
}

impl SampleNumbering {
    /// The word used on the wire and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SampleNumbering::Translated => "translated",
            SampleNumbering::HostPids => "host-pids",
            SampleNumbering::Unknown => "unknown",
        }
    }

    /// Parses [`SampleNumbering::as_str`].
    pub fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "translated" => SampleNumbering::Translated,
            "host-pids" => SampleNumbering::HostPids,
            "unknown" => SampleNumbering::Unknown,
            _ => return None,
        })
    }
}

/// What kind of GPU client a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProcessKind {
    /// A compute context (CUDA).
    Compute,
    /// A graphics context.
    Graphics,
    /// A client of the MPS server.
    Mps,
}

impl ProcessKind {
    /// The word used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessKind::Compute => "compute",
            ProcessKind::Graphics => "graphics",
            ProcessKind::Mps => "mps",
        }
    }

    /// Parses [`ProcessKind::as_str`].
    pub fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "compute" => ProcessKind::Compute,
            "graphics" => ProcessKind::Graphics,
            "mps" => ProcessKind::Mps,
            _ => return None,
        })
    }
}

/// One GPU process of the caller's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Process {
    /// PID in the caller's namespace.
    pub pid: u32,
    /// Compute, graphics or MPS.
    pub kind: ProcessKind,
    /// Device memory it uses (contexts included), `None` when the driver cannot say.
    pub used_memory: Option<u64>,
}

/// One per-process utilization sample (`nvmlProcessUtilizationSample_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// PID in the caller's namespace.
    pub pid: u32,
    /// When it was taken (microseconds since the epoch, as NVML reports).
    pub timestamp: u64,
    /// SM utilization, percent.
    pub sm: u32,
    /// Memory (frame buffer bandwidth) utilization, percent.
    pub mem: u32,
    /// Encoder utilization, percent.
    pub enc: u32,
    /// Decoder utilization, percent.
    pub dec: u32,
}

/// Accounting statistics of one process (`nvmlAccountingStats_t`; values the driver
/// reports as not available are `0xFFFFFFFF` / `u64::MAX`, as in NVML).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accounting {
    /// PID in the caller's namespace.
    pub pid: u32,
    /// `gpuUtilization`.
    pub gpu_util: u32,
    /// `memoryUtilization`.
    pub mem_util: u32,
    /// `maxMemoryUsage`.
    pub max_memory: u64,
    /// `time` (milliseconds).
    pub time: u64,
    /// `startTime` (microseconds since the epoch).
    pub start_time: u64,
    /// `isRunning`.
    pub is_running: bool,
}

/// One encoder session (`nvmlEncoderSessionInfo_t`, less the vGPU instance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderSession {
    /// `sessionId`.
    pub session_id: u32,
    /// PID in the caller's namespace.
    pub pid: u32,
    /// `codecType`.
    pub codec: u32,
    /// `hResolution`.
    pub h_res: u32,
    /// `vResolution`.
    pub v_res: u32,
    /// `averageFps`.
    pub average_fps: u32,
    /// `averageLatency`.
    pub average_latency: u32,
}

/// One frame-buffer-capture session (`nvmlFBCSessionInfo_t`, less the vGPU instance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FbcSession {
    /// `sessionId`.
    pub session_id: u32,
    /// PID in the caller's namespace.
    pub pid: u32,
    /// `displayOrdinal`.
    pub display_ordinal: u32,
    /// `sessionType`.
    pub session_type: u32,
    /// `sessionFlags`.
    pub flags: u32,
    /// `hMaxResolution`.
    pub h_max: u32,
    /// `vMaxResolution`.
    pub v_max: u32,
    /// `hResolution`.
    pub h_res: u32,
    /// `vResolution`.
    pub v_res: u32,
    /// `averageFPS`.
    pub average_fps: u32,
    /// `averageLatency`.
    pub average_latency: u32,
}

/// Everything about one GPU that belongs to the caller's container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuView {
    /// The GPU's UUID (`GPU-...`).
    pub uuid: String,
    /// Its processes.
    pub processes: Vec<Process>,
    /// Their utilization samples.
    pub samples: Vec<Sample>,
    /// Their accounting statistics.
    pub accounting: Vec<Accounting>,
    /// Their encoder sessions.
    pub encoder_sessions: Vec<EncoderSession>,
    /// Their frame-buffer-capture sessions.
    pub fbc_sessions: Vec<FbcSession>,
}

/// The agent's answer to [`Request::View`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// How the driver behaves in PID namespaces.
    pub mode: DriverMode,
    /// How it numbers a namespaced caller's own utilization samples.
    pub own_samples: SampleNumbering,
    /// Every GPU of the host, with what of it belongs to the caller.
    pub gpus: Vec<GpuView>,
    /// The GPU processes of the caller's container: (PID in the caller's namespace, host
    /// PID).
    pub pids: Vec<(u32, u32)>,
}

impl View {
    /// The caller's PID of the process with host PID `host`, if it is the container's.
    pub fn pid_from_host(&self, host: u32) -> Option<u32> {
        self.pids.iter().find(|p| p.1 == host).map(|p| p.0)
    }

    /// The host PID of the container's process with PID `pid` in the caller's namespace.
    pub fn host_pid_of(&self, pid: u32) -> Option<u32> {
        self.pids.iter().find(|p| p.0 == pid).map(|p| p.1)
    }

    /// The view of the GPU with `uuid` (compared without regard to case).
    pub fn gpu(&self, uuid: &str) -> Option<&GpuView> {
        self.gpus.iter().find(|g| g.uuid.eq_ignore_ascii_case(uuid))
    }
}

/// What a client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// The caller's own container's view of every GPU.
    View,
}

/// What the agent answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The caller's view.
    View(View),
    /// The request was refused or failed; the text says why.
    Error(String),
}

/// A message that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// 1-based line number (0: the message as a whole).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "gpuslice agent protocol: {}", self.reason)
        } else {
            write!(
                f,
                "gpuslice agent protocol, line {}: {}",
                self.line, self.reason
            )
        }
    }
}

impl std::error::Error for ProtocolError {}

fn bad(line: usize, reason: impl Into<String>) -> ProtocolError {
    ProtocolError {
        line,
        reason: reason.into(),
    }
}

/// Why a client exchange failed.
#[derive(Debug)]
pub enum ClientError {
    /// Connecting to the socket failed.
    Connect {
        /// The socket.
        socket: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Sending or receiving failed (including timeouts).
    Io {
        /// The socket.
        socket: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The answer does not follow the protocol.
    Protocol {
        /// The socket.
        socket: String,
        /// What is wrong.
        source: ProtocolError,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { socket, source } => {
                write!(
                    f,
                    "cannot connect to the gpuslice agent at {socket}: {source}"
                )
            }
            ClientError::Io { socket, source } => {
                write!(f, "gpuslice agent at {socket}: {source}")
            }
            ClientError::Protocol { socket, source } => {
                write!(f, "gpuslice agent at {socket}: {source}")
            }
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect { source, .. } | ClientError::Io { source, .. } => Some(source),
            ClientError::Protocol { source, .. } => Some(source),
        }
    }
}

// ------------------------------------------------------------------------------ encoding

fn header() -> String {
    format!("{MAGIC} {VERSION}\n")
}

fn opt_u64(v: Option<u64>) -> String {
    v.map_or_else(|| "na".to_string(), |v| v.to_string())
}

impl Request {
    /// The request as text.
    pub fn encode(&self) -> String {
        match self {
            Request::View => format!("{}view\nend\n", header()),
        }
    }

    /// Parses a request.
    pub fn decode(text: &str) -> Result<Self, ProtocolError> {
        let lines = body_lines(text)?;
        match lines.as_slice() {
            [(_, "view")] => Ok(Request::View),
            [] => Err(bad(0, "empty request")),
            [(n, other)] => Err(bad(*n, format!("unknown request {other:?}"))),
            [_, (n, _), ..] => Err(bad(*n, "a request has exactly one line")),
        }
    }
}

impl Response {
    /// The response as text.
    pub fn encode(&self) -> String {
        let mut out = header();
        match self {
            Response::Error(message) => {
                let clean: String = message
                    .chars()
                    .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
                    .take(MAX_LINE - 10)
                    .collect();
                let clean = clean.trim();
                let clean = if clean.is_empty() {
                    "unspecified"
                } else {
                    clean
                };
                out.push_str(&format!("error {clean}\n"));
            }
            Response::View(view) => {
                out.push_str(&format!(
                    "mode {} samples={}\n",
                    view.mode.as_str(),
                    view.own_samples.as_str()
                ));
                for (pid, host) in &view.pids {
                    out.push_str(&format!("pid {pid} {host}\n"));
                }
                for gpu in &view.gpus {
                    out.push_str(&format!("gpu {}\n", gpu.uuid));
                    for p in &gpu.processes {
                        out.push_str(&format!(
                            "proc {} {} {}\n",
                            p.pid,
                            p.kind.as_str(),
                            opt_u64(p.used_memory)
                        ));
                    }
                    for s in &gpu.samples {
                        out.push_str(&format!(
                            "sample {} {} {} {} {} {}\n",
                            s.pid, s.timestamp, s.sm, s.mem, s.enc, s.dec
                        ));
                    }
                    for a in &gpu.accounting {
                        out.push_str(&format!(
                            "acct {} {} {} {} {} {} {}\n",
                            a.pid,
                            a.gpu_util,
                            a.mem_util,
                            a.max_memory,
                            a.time,
                            a.start_time,
                            u8::from(a.is_running)
                        ));
                    }
                    for e in &gpu.encoder_sessions {
                        out.push_str(&format!(
                            "enc {} {} {} {} {} {} {}\n",
                            e.session_id,
                            e.pid,
                            e.codec,
                            e.h_res,
                            e.v_res,
                            e.average_fps,
                            e.average_latency
                        ));
                    }
                    for s in &gpu.fbc_sessions {
                        out.push_str(&format!(
                            "fbc {} {} {} {} {} {} {} {} {} {} {}\n",
                            s.session_id,
                            s.pid,
                            s.display_ordinal,
                            s.session_type,
                            s.flags,
                            s.h_max,
                            s.v_max,
                            s.h_res,
                            s.v_res,
                            s.average_fps,
                            s.average_latency
                        ));
                    }
                }
            }
        }
        out.push_str("end\n");
        out
    }

    /// Parses a response.
    pub fn decode(text: &str) -> Result<Self, ProtocolError> {
        let lines = body_lines(text)?;
        let Some(&(first_no, first)) = lines.first() else {
            return Err(bad(0, "empty response"));
        };
        if let Some(message) = first.strip_prefix("error ") {
            if lines.len() > 1 {
                return Err(bad(lines[1].0, "nothing may follow an error line"));
            }
            return Ok(Response::Error(message.to_string()));
        }
        let fields: Vec<&str> = first.split(' ').collect();
        let (mode, own_samples) = match fields.as_slice() {
            ["mode", mode, samples] => {
                let mode = DriverMode::parse(mode)
                    .ok_or_else(|| bad(first_no, format!("unknown driver mode {mode:?}")))?;
                let samples = samples
                    .strip_prefix("samples=")
                    .and_then(SampleNumbering::parse)
                    .ok_or_else(|| bad(first_no, format!("bad sample numbering {samples:?}")))?;
                (mode, samples)
            }
            _ => {
                return Err(bad(
                    first_no,
                    "a response starts with `mode MODE samples=NUMBERING` or `error MESSAGE`",
                ));
            }
        };
        let mut view = View {
            mode,
            own_samples,
            gpus: Vec::new(),
            pids: Vec::new(),
        };
        for &(no, line) in &lines[1..] {
            let f: Vec<&str> = line.split(' ').collect();
            let kind = f[0];
            if kind == "pid" {
                if !view.gpus.is_empty() {
                    return Err(bad(no, "`pid` lines come before the first `gpu` line"));
                }
                let [_, pid, host] = f.as_slice() else {
                    return Err(bad(no, "`pid` takes 2 fields"));
                };
                view.pids.push((num32(no, pid)?, num32(no, host)?));
                continue;
            }
            if kind == "gpu" {
                let [_, uuid] = f.as_slice() else {
                    return Err(bad(no, "`gpu` takes one field"));
                };
                if uuid.is_empty() {
                    return Err(bad(no, "empty GPU UUID"));
                }
                view.gpus.push(GpuView {
                    uuid: uuid.to_string(),
                    ..GpuView::default()
                });
                continue;
            }
            let Some(gpu) = view.gpus.last_mut() else {
                return Err(bad(no, format!("`{kind}` before any `gpu` line")));
            };
            let args = &f[1..];
            let want = |n: usize| {
                if args.len() == n {
                    Ok(())
                } else {
                    Err(bad(
                        no,
                        format!("`{kind}` takes {n} fields, found {}", args.len()),
                    ))
                }
            };
            match kind {
                "proc" => {
                    want(3)?;
                    let pid = num32(no, args[0])?;
                    let kind = ProcessKind::parse(args[1])
                        .ok_or_else(|| bad(no, format!("unknown process kind {:?}", args[1])))?;
                    let used_memory = if args[2] == "na" {
                        None
                    } else {
                        Some(num64(no, args[2])?)
                    };
                    gpu.processes.push(Process {
                        pid,
                        kind,
                        used_memory,
                    });
                }
                "sample" => {
                    want(6)?;
                    gpu.samples.push(Sample {
                        pid: num32(no, args[0])?,
                        timestamp: num64(no, args[1])?,
                        sm: num32(no, args[2])?,
                        mem: num32(no, args[3])?,
                        enc: num32(no, args[4])?,
                        dec: num32(no, args[5])?,
                    });
                }
                "acct" => {
                    want(7)?;
                    gpu.accounting.push(Accounting {
                        pid: num32(no, args[0])?,
                        gpu_util: num32(no, args[1])?,
                        mem_util: num32(no, args[2])?,
                        max_memory: num64(no, args[3])?,
                        time: num64(no, args[4])?,
                        start_time: num64(no, args[5])?,
                        is_running: match args[6] {
                            "0" => false,
                            "1" => true,
                            other => {
                                return Err(bad(
                                    no,
                                    format!("isRunning must be 0 or 1: {other:?}"),
                                ));
                            }
                        },
                    });
                }
                "enc" => {
                    want(7)?;
                    gpu.encoder_sessions.push(EncoderSession {
                        session_id: num32(no, args[0])?,
                        pid: num32(no, args[1])?,
                        codec: num32(no, args[2])?,
                        h_res: num32(no, args[3])?,
                        v_res: num32(no, args[4])?,
                        average_fps: num32(no, args[5])?,
                        average_latency: num32(no, args[6])?,
                    });
                }
                "fbc" => {
                    want(11)?;
                    gpu.fbc_sessions.push(FbcSession {
                        session_id: num32(no, args[0])?,
                        pid: num32(no, args[1])?,
                        display_ordinal: num32(no, args[2])?,
                        session_type: num32(no, args[3])?,
                        flags: num32(no, args[4])?,
                        h_max: num32(no, args[5])?,
                        v_max: num32(no, args[6])?,
                        h_res: num32(no, args[7])?,
                        v_res: num32(no, args[8])?,
                        average_fps: num32(no, args[9])?,
                        average_latency: num32(no, args[10])?,
                    });
                }
                other => return Err(bad(no, format!("unknown record {other:?}"))),
            }
        }
        Ok(Response::View(view))
    }
}

fn num64(line: usize, text: &str) -> Result<u64, ProtocolError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.len() > 20 {
        return Err(bad(line, format!("not a number: {text:?}")));
    }
    text.parse()
        .map_err(|_| bad(line, format!("number out of range: {text:?}")))
}

fn num32(line: usize, text: &str) -> Result<u32, ProtocolError> {
    let v = num64(line, text)?;
    u32::try_from(v).map_err(|_| bad(line, format!("number out of range: {text:?}")))
}

/// Checks the header and the `end` line and returns the lines in between with their
/// 1-based numbers.
fn body_lines(text: &str) -> Result<Vec<(usize, &str)>, ProtocolError> {
    if text.len() > MAX_MESSAGE {
        return Err(bad(0, format!("message longer than {MAX_MESSAGE} bytes")));
    }
    if !text.is_ascii() {
        return Err(bad(0, "message is not ASCII"));
    }
    let Some(body) = text.strip_suffix('\n') else {
        return Err(bad(0, "message does not end with a newline"));
    };
    let lines: Vec<&str> = body.split('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        if line.len() > MAX_LINE {
            return Err(bad(i + 1, format!("line longer than {MAX_LINE} bytes")));
        }
        if line.is_empty() || line.starts_with(' ') || line.ends_with(' ') || line.contains("  ") {
            return Err(bad(i + 1, "empty field or stray space"));
        }
        if line.bytes().any(|b| b.is_ascii_control()) {
            return Err(bad(i + 1, "control character"));
        }
    }
    let expected = format!("{MAGIC} {VERSION}");
    match lines.first() {
        Some(first) if *first == expected => {}
        Some(first) if first.starts_with(MAGIC) => {
            return Err(bad(
                1,
                format!("unsupported protocol version {first:?} (this side speaks {expected:?})"),
            ));
        }
        _ => return Err(bad(1, format!("message does not start with {expected:?}"))),
    }
    match lines.last() {
        Some(&"end") if lines.len() >= 2 => {}
        _ => return Err(bad(lines.len(), "message does not end with `end`")),
    }
    Ok(lines[1..lines.len() - 1]
        .iter()
        .enumerate()
        .map(|(i, l)| (i + 2, *l))
        .collect())
}

// ------------------------------------------------------------------------------ transport

/// Reads one message (through its `end` line) from `reader`, refusing more than
/// [`MAX_MESSAGE`] bytes.
pub fn read_message(reader: &mut impl Read) -> std::io::Result<String> {
    let mut reader = BufReader::new(reader.take(MAX_MESSAGE as u64 + 1));
    let mut text = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before the end of the message",
            ));
        }
        text.push_str(&line);
        if text.len() > MAX_MESSAGE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "message too long",
            ));
        }
        if line == "end\n" {
            return Ok(text);
        }
    }
}

/// Sends `request` on a connected stream and reads and parses the answer. The caller
/// sets the stream's timeouts.
pub fn exchange(
    stream: &mut UnixStream,
    request: Request,
    socket: &str,
) -> Result<Response, ClientError> {
    let io = |source| ClientError::Io {
        socket: socket.to_string(),
        source,
    };
    stream.write_all(request.encode().as_bytes()).map_err(io)?;
    let text = read_message(stream).map_err(io)?;
    Response::decode(&text).map_err(|source| ClientError::Protocol {
        socket: socket.to_string(),
        source,
    })
}

/// Connects to the agent at `socket`, asks `request` and returns the answer, giving up
/// after `timeout` for each read and write. (Connecting to a unix socket does not wait
/// unless the listener's backlog is full.)
pub fn query(socket: &Path, request: Request, timeout: Duration) -> Result<Response, ClientError> {
    let name = socket.display().to_string();
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        socket: name.clone(),
        source,
    })?;
    let io = |source| ClientError::Io {
        socket: name.clone(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    exchange(&mut stream, request, &name)
}

#[cfg(test)]
mod tests;
