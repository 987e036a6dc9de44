//! One gRPC call written as raw HTTP/2 frames, with any `:authority`, including the
//! socket path that the kubelet's plugin watcher (and kubelets before 1.26) send and that
//! `http::Uri`, hence tonic's client, cannot even express.

use std::path::Path;

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The HTTP/2 error code h2 resets a malformed request with.
pub const PROTOCOL_ERROR: u32 = 0x1;

/// How a raw call failed.
#[derive(Debug, thiserror::Error)]
pub enum RawCallError {
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The server reset the stream (h2 does so for a malformed request).
    #[error("the server reset the stream with HTTP/2 error code {0}")]
    Reset(u32),
    /// The server closed the connection.
    #[error("the server sent GOAWAY with HTTP/2 error code {0}")]
    GoAway(u32),
    /// The answer broke HTTP/2 or gRPC framing.
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// A frame to send is longer than an HTTP/2 frame's 24-bit length can say.
    #[error("a frame of {0} bytes is too long for HTTP/2")]
    TooLong(usize),
    /// The call completed with a gRPC error.
    #[error("gRPC status {code}: {message}")]
    Status {
        /// The gRPC status code.
        code: String,
        /// Its message.
        message: String,
    },
}

fn frame(
    out: &mut Vec<u8>,
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) -> Result<(), RawCallError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&len| len < 1 << 24)
        .ok_or(RawCallError::TooLong(payload.len()))?;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Calls `method` (`/package.Service/Method`) on the gRPC server at `socket` with the
/// encoded `request`, sending `authority` as `:authority`; returns the encoded answer.
pub async fn unary(
    socket: &Path,
    authority: &str,
    method: &str,
    request: &[u8],
) -> Result<Vec<u8>, RawCallError> {
    let mut conn = UnixStream::connect(socket).await?;
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[])?;
    let headers: [(&[u8], &[u8]); 6] = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", method.as_bytes()),
        (b":authority", authority.as_bytes()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ];
    let block = Encoder::new().encode(headers);
    frame(&mut out, HEADERS, END_HEADERS, 1, &block)?;
    let mut body = vec![0];
    let request_len =
        u32::try_from(request.len()).map_err(|_| RawCallError::TooLong(request.len()))?;
    body.extend_from_slice(&request_len.to_be_bytes());
    body.extend_from_slice(request);
    frame(&mut out, DATA, END_STREAM, 1, &body)?;
    conn.write_all(&out).await?;

    let mut decoder = Decoder::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut data = Vec::new();
    let mut open_block: Option<Vec<u8>> = None;
    let mut stream_ended = false;
    while !stream_ended {
        let mut head = [0u8; 9];
        conn.read_exact(&mut head).await?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload).await?;
        let code = |p: &[u8], at: usize| -> u32 {
            p.get(at..at + 4)
                .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        match kind {
            SETTINGS if flags & ACK == 0 => {
                let mut ack = Vec::new();
                frame(&mut ack, SETTINGS, ACK, 0, &[])?;
                conn.write_all(&ack).await?;
            }
            PING if flags & ACK == 0 => {
                let mut pong = Vec::new();
                frame(&mut pong, PING, ACK, 0, &payload)?;
                conn.write_all(&pong).await?;
            }
            RST_STREAM if stream == 1 => return Err(RawCallError::Reset(code(&payload, 0))),
            GOAWAY => return Err(RawCallError::GoAway(code(&payload, 4))),
            HEADERS | CONTINUATION if stream == 1 => {
                let fragment = if kind == HEADERS {
                    strip(&payload, flags)?
                } else {
                    payload.as_slice()
                };
                let block = open_block.get_or_insert_with(Vec::new);
                block.extend_from_slice(fragment);
                if flags & END_HEADERS != 0 {
                    let block = open_block.take().unwrap_or_default();
                    let decoded = decoder
                        .decode(&block)
                        .map_err(|e| RawCallError::Malformed(format!("HPACK: {e}")))?;
                    for (n, v) in decoded {
                        fields.push((
                            String::from_utf8_lossy(&n).into_owned(),
                            String::from_utf8_lossy(&v).into_owned(),
                        ));
                    }
                }
                if kind == HEADERS && flags & END_STREAM != 0 {
                    stream_ended = true;
                }
            }
            DATA if stream == 1 => {
                data.extend_from_slice(strip(&payload, flags & PADDED)?);
                if flags & END_STREAM != 0 {
                    stream_ended = true;
                }
            }
            _ => {}
        }
    }
    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    if field(":status").as_deref() != Some("200") {
        return Err(RawCallError::Malformed(format!(
            "HTTP status {:?}",
            field(":status")
        )));
    }
    match field("grpc-status").as_deref() {
        Some("0") => {}
        other => {
            return Err(RawCallError::Status {
                code: other.unwrap_or("missing").to_string(),
                message: field("grpc-message").unwrap_or_default(),
            });
        }
    }
    if data.len() < 5 || data[0] != 0 {
        return Err(RawCallError::Malformed(
            "no uncompressed gRPC message".into(),
        ));
    }
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    data.get(5..5 + len)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| RawCallError::Malformed("truncated gRPC message".into()))
}

/// A HEADERS or DATA payload without its padding (and priority fields).
fn strip(payload: &[u8], flags: u8) -> Result<&[u8], RawCallError> {
    let bad = || RawCallError::Malformed("bad padding".into());
    let mut rest = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&n, tail) = rest.split_first().ok_or_else(bad)?;
        pad = usize::from(n);
        rest = tail;
    }
    if flags & PRIORITY != 0 {
        rest = rest.get(5..).ok_or_else(bad)?;
    }
    rest.get(..rest.len().checked_sub(pad).ok_or_else(bad)?)
        .ok_or_else(bad)
}
