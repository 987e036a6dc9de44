//! The unix-socket transport of the kubelet-facing gRPC servers and clients.
//!
//! The kubelet's clients do not agree on `:authority`: its device-plugin and DRA clients
//! send `localhost`, its plugin-watcher client (and kubelets before 1.26, and grpc-java
//! and grpc-python over unix sockets) send the socket's path. The `h2` crate under tonic
//! refuses a request whose `:authority` is not a valid URI authority with a stream
//! reset (PROTOCOL_ERROR), before any tower layer sees it, and has no setting to relax
//! that. So [`AuthorityFix`] sits between the socket and h2: it follows the HTTP/2
//! frames the client sends, decodes every header block (HPACK keeps state across blocks,
//! so all of them), replaces an `:authority` that is not a valid authority with
//! `localhost`, and encodes the block again for h2. Every other frame passes unchanged.
//! The server must keep h2's defaults for its header table (4096 bytes) and frame size
//! (16384 bytes), which the re-encoded blocks rely on.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use hyper_util::rt::TokioIo;
use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::{Stream, StreamExt, wrappers::UnixListenerStream};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

/// What replaces an `:authority` that h2 would refuse.
pub const REPLACEMENT_AUTHORITY: &str = "localhost";

/// The client connection preface of HTTP/2 with prior knowledge.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The largest frame payload every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's floor).
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// h2's default SETTINGS_HEADER_TABLE_SIZE, which bounds the client's encoder.
const HEADER_TABLE_SIZE: usize = 4096;
/// A header block longer than this closes the connection.
const MAX_HEADER_BLOCK: usize = 1 << 20;

/// Why a client's bytes could not be rewritten (the connection is then closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// A frame that breaks HTTP/2's framing rules.
    #[error("malformed HTTP/2 frame from the client: {0}")]
    Frame(&'static str),
    /// A header block that does not decode.
    #[error("malformed HPACK header block from the client: {0}")]
    Hpack(String),
}

/// A header block being collected (HEADERS, then CONTINUATION frames).
#[derive(Debug)]
struct OpenBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// Rewrites the client-to-server half of an HTTP/2 connection, without I/O: bytes in,
/// bytes out. See the module documentation.
pub struct AuthorityRewriter {
    input: Vec<u8>,
    preface_seen: bool,
    /// Not HTTP/2 with prior knowledge: everything passes unchanged, for h2 to refuse.
    passthrough: bool,
    open: Option<OpenBlock>,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
    rewritten: u64,
}

impl std::fmt::Debug for AuthorityRewriter {
    /// Where the rewriter stands; the HPACK tables have no `Debug`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityRewriter")
            .field("buffered", &self.input.len())
            .field("preface_seen", &self.preface_seen)
            .field("passthrough", &self.passthrough)
            .field("open", &self.open)
            .field("rewritten", &self.rewritten)
            .finish_non_exhaustive()
    }
}

impl Default for AuthorityRewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl AuthorityRewriter {
    /// A rewriter for a new connection.
    pub fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Self {
            input: Vec::new(),
            preface_seen: false,
            passthrough: false,
            open: None,
            decoder,
            encoder: Encoder::new(),
            rewritten: 0,
        }
    }

    /// How many `:authority` values were replaced so far.
    pub fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// Takes `bytes` from the client and appends what h2 should read to `out`. Bytes of
    /// an incomplete frame are kept for the next call.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        if self.passthrough {
            out.extend_from_slice(bytes);
            return Ok(());
        }
        self.input.extend_from_slice(bytes);
        if !self.preface_seen {
            let n = self.input.len().min(PREFACE.len());
            if self.input[..n] != PREFACE[..n] {
                self.passthrough = true;
                out.append(&mut self.input);
                return Ok(());
            }
            if n < PREFACE.len() {
                return Ok(());
            }
            out.extend_from_slice(PREFACE);
            self.input.drain(..PREFACE.len());
            self.preface_seen = true;
        }
        let mut at = 0;
        while self.input.len() - at >= FRAME_HEADER_LEN {
            let head = &self.input[at..at + FRAME_HEADER_LEN];
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            if self.input.len() - at < FRAME_HEADER_LEN + len {
                break;
            }
            let kind = head[3];
            let flags = head[4];
            let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let frame_end = at + FRAME_HEADER_LEN + len;
            let payload_start = at + FRAME_HEADER_LEN;
            match kind {
                HEADERS => {
                    if self.open.is_some() {
                        return Err(RewriteError::Frame("HEADERS inside an open header block"));
                    }
                    let payload = &self.input[payload_start..frame_end];
                    let block = headers_fragment(payload, flags)?;
                    self.open = Some(OpenBlock {
                        stream_id,
                        end_stream: flags & FLAG_END_STREAM != 0,
                        priority: block.priority,
                        fragment: block.fragment.to_vec(),
                    });
                    if flags & FLAG_END_HEADERS != 0 {
                        self.finish_block(out)?;
                    }
                }
                CONTINUATION => {
                    let open = self
                        .open
                        .as_mut()
                        .ok_or(RewriteError::Frame("CONTINUATION without HEADERS"))?;
                    if open.stream_id != stream_id {
                        return Err(RewriteError::Frame("CONTINUATION on another stream"));
                    }
                    open.fragment
                        .extend_from_slice(&self.input[payload_start..frame_end]);
                    if open.fragment.len() > MAX_HEADER_BLOCK {
                        return Err(RewriteError::Frame("header block too large"));
                    }
                    if flags & FLAG_END_HEADERS != 0 {
                        self.finish_block(out)?;
                    }
                }
                _ => {
                    if self.open.is_some() {
                        return Err(RewriteError::Frame(
                            "another frame inside an open header block",
                        ));
                    }
                    out.extend_from_slice(&self.input[at..frame_end]);
                }
            }
            at = frame_end;
        }
        self.input.drain(..at);
        Ok(())
    }

    /// Decodes the open block, fixes `:authority`, and writes it out again as HEADERS
    /// and CONTINUATION frames.
    fn finish_block(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let Some(block) = self.open.take() else {
            return Ok(());
        };
        let mut headers = self
            .decoder
            .decode(&block.fragment)
            .map_err(|e| RewriteError::Hpack(e.to_string()))?;
        for (name, value) in headers.iter_mut() {
            if name.as_slice() == b":authority"
                && http::uri::Authority::try_from(value.as_slice()).is_err()
            {
                tracing::debug!(
                    authority = %String::from_utf8_lossy(value),
                    "replacing an :authority that h2 would refuse"
                );
                *value = REPLACEMENT_AUTHORITY.as_bytes().to_vec();
                self.rewritten += 1;
            }
        }
        let encoded = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let priority_len = if block.priority.is_some() { 5 } else { 0 };
        let first_room = MAX_FRAME_PAYLOAD - priority_len;
        let (first, mut rest) = encoded.split_at(encoded.len().min(first_room));
        let mut flags = 0;
        if block.end_stream {
            flags |= FLAG_END_STREAM;
        }
        if block.priority.is_some() {
            flags |= FLAG_PRIORITY;
        }
        if rest.is_empty() {
            flags |= FLAG_END_HEADERS;
        }
        write_frame_header(
            out,
            priority_len + first.len(),
            HEADERS,
            flags,
            block.stream_id,
        );
        if let Some(priority) = block.priority {
            out.extend_from_slice(&priority);
        }
        out.extend_from_slice(first);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD));
            let flags = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
            write_frame_header(out, chunk.len(), CONTINUATION, flags, block.stream_id);
            out.extend_from_slice(chunk);
            rest = tail;
        }
        Ok(())
    }
}

struct HeadersFragment<'a> {
    priority: Option<[u8; 5]>,
    fragment: &'a [u8],
}

/// The header block fragment of a HEADERS frame's payload, without padding.
fn headers_fragment(payload: &[u8], flags: u8) -> Result<HeadersFragment<'_>, RewriteError> {
    let mut rest = payload;
    let mut pad = 0;
    if flags & FLAG_PADDED != 0 {
        let (&n, tail) = rest
            .split_first()
            .ok_or(RewriteError::Frame("padded HEADERS without a pad length"))?;
        pad = usize::from(n);
        rest = tail;
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        let (p, tail) = rest
            .split_first_chunk::<5>()
            .ok_or(RewriteError::Frame("HEADERS too short for its priority"))?;
        priority = Some(*p);
        rest = tail;
    }
    if pad > rest.len() {
        return Err(RewriteError::Frame("HEADERS padding longer than the frame"));
    }
    Ok(HeadersFragment {
        priority,
        fragment: &rest[..rest.len() - pad],
    })
}

/// Appends an HTTP/2 frame header.
pub fn write_frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream_id: u32) {
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
}

/// A server-side connection whose incoming bytes go through an [`AuthorityRewriter`].
#[derive(Debug)]
pub struct AuthorityFix<T> {
    inner: T,
    rewriter: AuthorityRewriter,
    ready: Vec<u8>,
    ready_at: usize,
    scratch: Box<[u8]>,
    eof: bool,
}

impl<T> AuthorityFix<T> {
    /// Wraps an accepted connection.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            rewriter: AuthorityRewriter::new(),
            ready: Vec::new(),
            ready_at: 0,
            scratch: vec![0; 16 * 1024].into_boxed_slice(),
            eof: false,
        }
    }

    /// The connection it wraps.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityFix<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_at < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_at);
                buf.put_slice(&this.ready[this.ready_at..this.ready_at + n]);
                this.ready_at += n;
                if this.ready_at == this.ready.len() {
                    this.ready.clear();
                    this.ready_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let got = read.filled();
            if got.is_empty() {
                this.eof = true;
                // An incomplete frame at the end: hand it over as it is.
                this.ready.append(&mut this.rewriter.input);
                continue;
            }
            if let Err(e) = this.rewriter.feed(got, &mut this.ready) {
                tracing::warn!("closing a kubelet connection: {e}");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<T: Connected> Connected for AuthorityFix<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Binds a unix socket for a gRPC server, replacing a stale socket file left by an
/// earlier run.
pub fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}

/// The connections of `listener`, each behind an [`AuthorityFix`], for
/// `tonic::transport::Server::serve_with_incoming*`.
pub fn incoming(
    listener: UnixListener,
) -> impl Stream<Item = io::Result<AuthorityFix<UnixStream>>> + Send + 'static {
    UnixListenerStream::new(listener).map(|conn| conn.map(AuthorityFix::new))
}

/// A gRPC channel to a unix socket, sending `:authority: localhost` as the kubelet does.
/// It connects lazily, on the first call.
pub fn channel(path: &Path) -> Channel {
    let path: PathBuf = path.to_path_buf();
    Endpoint::from_static("http://localhost").connect_with_connector_lazy(tower::service_fn(
        move |_| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let h = &bytes[at..at + 9];
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            let id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
            out.push((h[3], h[4], id, bytes[at + 9..at + 9 + len].to_vec()));
            at += 9 + len;
        }
        out
    }

    fn request(authority: &str, path: &str) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (b":method", b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (b":path", path.as_bytes().to_vec()),
            (b":authority", authority.as_bytes().to_vec()),
            (b"content-type", b"application/grpc".to_vec()),
            (b"te", b"trailers".to_vec()),
        ]
    }

    fn encode(enc: &mut Encoder<'_>, headers: &[(&'static [u8], Vec<u8>)]) -> Vec<u8> {
        enc.encode(headers.iter().map(|(n, v)| (*n, v.as_slice())))
    }

    /// Runs the client's bytes through a rewriter in pieces of `step` bytes and decodes
    /// what h2 would see: (stream, end_stream, headers) per header block, other frames
    /// as they were.
    /// A decoded header block: stream, END_STREAM, headers.
    type Block = (u32, bool, Vec<(Vec<u8>, Vec<u8>)>);

    fn through(bytes: &[u8], step: usize) -> (Vec<Block>, Vec<u8>) {
        let mut rw = AuthorityRewriter::new();
        let mut out = Vec::new();
        for chunk in bytes.chunks(step) {
            rw.feed(chunk, &mut out).unwrap();
        }
        assert!(out.starts_with(PREFACE));
        let mut dec = Decoder::new();
        let mut blocks = Vec::new();
        let mut others = Vec::new();
        let mut open: Option<(u32, bool, Vec<u8>)> = None;
        for (kind, flags, id, payload) in frames(&out[PREFACE.len()..]) {
            match kind {
                HEADERS => {
                    assert!(payload.len() <= MAX_FRAME_PAYLOAD);
                    let frag = headers_fragment(&payload, flags).unwrap().fragment.to_vec();
                    open = Some((id, flags & FLAG_END_STREAM != 0, frag));
                    if flags & FLAG_END_HEADERS != 0 {
                        let (id, end, frag) = open.take().unwrap();
                        blocks.push((id, end, dec.decode(&frag).unwrap()));
                    }
                }
                CONTINUATION => {
                    open.as_mut().unwrap().2.extend_from_slice(&payload);
                    if flags & FLAG_END_HEADERS != 0 {
                        let (id, end, frag) = open.take().unwrap();
                        blocks.push((id, end, dec.decode(&frag).unwrap()));
                    }
                }
                _ => {
                    write_frame_header(&mut others, payload.len(), kind, flags, id);
                    others.extend_from_slice(&payload);
                }
            }
        }
        (blocks, others)
    }

    #[test]
    fn a_path_authority_becomes_localhost_and_state_stays_in_step() {
        let mut enc = Encoder::new();
        let mut client = PREFACE.to_vec();
        write_frame_header(&mut client, 0, 0x4, 0, 0); // SETTINGS
        // Three requests: the second and third reuse the first's dynamic table entries.
        for (authority, i) in [
            "/var/lib/kubelet/plugins_registry/x.sock",
            "localhost",
            "/a.sock",
        ]
        .into_iter()
        .zip(0u32..)
        {
            let block = encode(
                &mut enc,
                &request(authority, "/v1beta1.DevicePlugin/Allocate"),
            );
            let stream = 1 + 2 * i;
            write_frame_header(&mut client, block.len(), HEADERS, FLAG_END_HEADERS, stream);
            client.extend_from_slice(&block);
            write_frame_header(&mut client, 5, 0x0, FLAG_END_STREAM, stream); // DATA
            client.extend_from_slice(&[0, 0, 0, 0, 0]);
        }
        for step in [1, 7, 4096] {
            let (blocks, others) = through(&client, step);
            assert_eq!(blocks.len(), 3);
            for ((id, end, headers), i) in blocks.iter().zip(0u32..) {
                assert_eq!(*id, 1 + 2 * i);
                assert!(!end);
                let authority = headers.iter().find(|(n, _)| n == b":authority").unwrap();
                assert_eq!(authority.1, b"localhost");
                let path = headers.iter().find(|(n, _)| n == b":path").unwrap();
                assert_eq!(path.1, b"/v1beta1.DevicePlugin/Allocate");
                assert_eq!(headers.len(), 6);
            }
            // SETTINGS and the three DATA frames, unchanged.
            assert_eq!(frames(&others).len(), 4);
        }
    }

    #[test]
    fn padding_priority_continuation_and_large_blocks() {
        let mut enc = Encoder::new();
        let mut headers = request("/p.sock", "/x");
        // A value larger than one frame, so that the output needs CONTINUATION frames too.
        headers.push((b"x-big", vec![b'a'; 40_000]));
        let block = encode(&mut enc, &headers);
        let (first, rest) = block.split_at(100);
        let mut client = PREFACE.to_vec();
        // HEADERS with padding (3 bytes), priority, END_STREAM; then CONTINUATION frames.
        let payload_len = 1 + 5 + first.len() + 3;
        write_frame_header(
            &mut client,
            payload_len,
            HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            3,
        );
        client.push(3);
        client.extend_from_slice(&[0, 0, 0, 1, 16]);
        client.extend_from_slice(first);
        client.extend_from_slice(&[0, 0, 0]);
        let chunks: Vec<&[u8]> = rest.chunks(16_000).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let flags = if i + 1 == chunks.len() {
                FLAG_END_HEADERS
            } else {
                0
            };
            write_frame_header(&mut client, chunk.len(), CONTINUATION, flags, 3);
            client.extend_from_slice(chunk);
        }
        let (blocks, _) = through(&client, 1000);
        assert_eq!(blocks.len(), 1);
        let (id, end, got) = &blocks[0];
        assert_eq!((*id, *end), (3, true));
        assert_eq!(
            got.iter().find(|(n, _)| n == b":authority").unwrap().1,
            b"localhost"
        );
        assert_eq!(
            got.iter().find(|(n, _)| n == b"x-big").unwrap().1.len(),
            40_000
        );
    }

    #[test]
    fn not_http2_passes_through_and_broken_frames_are_errors() {
        let mut rw = AuthorityRewriter::new();
        let mut out = Vec::new();
        rw.feed(b"GET / HTTP/1.1\r\n\r\n", &mut out).unwrap();
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");

        let mut rw = AuthorityRewriter::new();
        let mut client = PREFACE.to_vec();
        write_frame_header(&mut client, 1, CONTINUATION, FLAG_END_HEADERS, 1);
        client.push(0x82);
        let e = rw.feed(&client, &mut Vec::new()).unwrap_err();
        assert_eq!(e, RewriteError::Frame("CONTINUATION without HEADERS"));

        let mut rw = AuthorityRewriter::new();
        let mut client = PREFACE.to_vec();
        write_frame_header(&mut client, 1, HEADERS, FLAG_END_HEADERS, 1);
        client.push(0xff); // an index far past both tables
        assert!(matches!(
            rw.feed(&client, &mut Vec::new()),
            Err(RewriteError::Hpack(_))
        ));
    }
}
