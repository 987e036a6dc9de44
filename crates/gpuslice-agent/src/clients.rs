//! The agent's connections: how many it serves at once, how long each may live, and who
//! makes room when all places are taken.
//!
//! The socket is open to every local process (see [`crate::server`]), so a client may
//! connect and then send nothing, or a byte now and then. Two rules keep such clients
//! from shutting real ones out:
//!
//! * **One deadline per connection.** A connection has [`CLIENT_DEADLINE`] from the
//!   moment it is accepted to send its whole request and take the whole answer (the
//!   time the agent spends computing the answer is added);
//!   [`DeadlineStream`] gives every read and write only the time that is left, so a
//!   client dripping one byte a second is dropped when the deadline passes, not kept
//!   alive by each byte.
//! * **The oldest waiting connection makes room.** When [`MAX_CLIENTS`] connections are
//!   open, a new one evicts the connection accepted first among those the agent is
//!   waiting on (for their request, or to take their answer) that are older than
//!   [`EVICTION_GRACE`]: its socket is shut down, which ends its thread's read or write
//!   at once. A real client sends its request as soon as it connects and is answered in
//!   milliseconds, well within the grace, during which nothing can evict it (without the
//!   grace, clients that reconnect whenever they are evicted would evict each other in a
//!   chain, and the newcomer with them). Connections the agent is computing an answer
//!   for are never evicted. A new client is answered "busy" only when every place is
//!   held by a connection being answered or younger than the grace, which takes a flood
//!   of [`MAX_CLIENTS`] new connections every [`EVICTION_GRACE`], not a slow drip.
//!
//! A limit per peer uid was not chosen: the processes of most containers run as root (or
//! as uids a user namespace maps to one host uid), so one container's flood would still
//! shut out another container's processes of the same uid.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most connections served at once.
pub const MAX_CLIENTS: usize = 64;
/// How long a connection may take, from being accepted to its answer being written.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(2);
/// How long a new connection is safe from eviction.
pub const EVICTION_GRACE: Duration = Duration::from_millis(250);

/// A connection's stream whose every read and write gets only the time left until the
/// connection's deadline.
#[derive(Debug)]
pub struct DeadlineStream<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
}

impl<'a> DeadlineStream<'a> {
    /// `stream`, which must be done by `deadline`.
    pub fn new(stream: &'a UnixStream, deadline: Instant) -> Self {
        Self { stream, deadline }
    }

    /// Moves the deadline `by` later (the time the agent itself took).
    pub fn extend(&mut self, by: Duration) {
        self.deadline += by;
    }

    /// The time left, or a timeout error once the deadline has passed.
    fn time_left(&self) -> std::io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the connection's deadline ({} ms from being accepted) has passed",
                    CLIENT_DEADLINE.as_millis()
                ),
            ));
        }
        Ok(left)
    }
}

/// Whether an error is a socket timeout (which may come a little before the deadline).
fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

impl Read for DeadlineStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            self.stream.set_read_timeout(Some(self.time_left()?))?;
            match (&mut &*self.stream).read(buf) {
                Err(e) if timed_out(&e) => continue,
                result => return result,
            }
        }
    }
}

impl Write for DeadlineStream<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            self.stream.set_write_timeout(Some(self.time_left()?))?;
            match (&mut &*self.stream).write(buf) {
                Err(e) if timed_out(&e) => continue,
                result => return result,
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One open connection as the table keeps it.
#[derive(Debug)]
struct Entry {
    id: u64,
    accepted: Instant,
    waiting_on_peer: Arc<AtomicBool>,
    /// A second handle on the socket, to shut it down when evicted.
    socket: UnixStream,
}

/// A connection's place in the [`ClientTable`].
#[derive(Debug)]
pub struct Place {
    id: u64,
    accepted: Instant,
    waiting_on_peer: Arc<AtomicBool>,
}

impl Place {
    /// The connection's number, to give the place back with [`ClientTable::leave`].
    pub fn id(&self) -> u64 {
        self.id
    }

    /// When the connection must be done.
    pub fn deadline(&self) -> Instant {
        self.accepted + CLIENT_DEADLINE
    }

    /// The agent is computing this connection's answer: it may not be evicted meanwhile.
    pub fn computing(&self) {
        self.waiting_on_peer.store(false, Relaxed);
    }

    /// The agent waits on the peer again (to take the answer): it may be evicted.
    pub fn waiting(&self) {
        self.waiting_on_peer.store(true, Relaxed);
    }
}

/// Why a connection got no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every place is taken by a connection whose answer is being computed or that is
    /// younger than the grace.
    Busy,
    /// The socket could not be duplicated (out of file descriptors).
    NoDescriptor,
}

/// The open connections (see the module documentation).
#[derive(Debug)]
pub struct ClientTable {
    entries: Mutex<Vec<Entry>>,
    next_id: AtomicU64,
    capacity: usize,
    grace: Duration,
}

impl Default for ClientTable {
    fn default() -> Self {
        Self::new(MAX_CLIENTS, EVICTION_GRACE)
    }
}

impl ClientTable {
    /// A table of `capacity` places whose connections are safe from eviction for
    /// `grace`.
    pub fn new(capacity: usize, grace: Duration) -> Self {
        Self {
            entries: Mutex::new(Vec::with_capacity(capacity)),
            next_id: AtomicU64::new(0),
            capacity: capacity.max(1),
            grace,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives a just-accepted connection a place, evicting the oldest connection the
    /// agent is waiting on when the table is full.
    pub fn admit(&self, stream: &UnixStream) -> Result<Place, Refused> {
        let socket = stream.try_clone().map_err(|_| Refused::NoDescriptor)?;
        let mut entries = self.lock();
        if entries.len() >= self.capacity {
            let now = Instant::now();
            let victim = entries
                .iter()
                .enumerate()
                .filter(|(_, e)| {
                    e.waiting_on_peer.load(Relaxed)
                        && now.saturating_duration_since(e.accepted) >= self.grace
                })
                .min_by_key(|(_, e)| (e.accepted, e.id))
                .map(|(i, _)| i)
                .ok_or(Refused::Busy)?;
            let evicted = entries.swap_remove(victim);
            // Ends the evicted connection's blocked read or write at once; its thread
            // then finds its place gone.
            let _ = evicted.socket.shutdown(Shutdown::Both);
        }
        let place = Place {
            id: self.next_id.fetch_add(1, Relaxed),
            accepted: Instant::now(),
            waiting_on_peer: Arc::new(AtomicBool::new(true)),
        };
        entries.push(Entry {
            id: place.id,
            accepted: place.accepted,
            waiting_on_peer: Arc::clone(&place.waiting_on_peer),
            socket,
        });
        Ok(place)
    }

    /// Connection `id` is done (or was evicted already).
    pub fn leave(&self, id: u64) {
        self.lock().retain(|e| e.id != id);
    }

    /// Connections holding a place.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no connection holds a place.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    #[test]
    fn a_full_table_evicts_the_oldest_connection_it_waits_on() {
        let table = ClientTable::new(2, Duration::ZERO);
        let (a, mut a_peer) = pair();
        let (b, _b_peer) = pair();
        let (c, _c_peer) = pair();
        let pa = table.admit(&a).unwrap();
        let pb = table.admit(&b).unwrap();
        let pc = table.admit(&c).unwrap();
        assert_eq!(table.len(), 2);
        // `a` was shut down: its peer reads end of file.
        let mut buf = [0u8; 1];
        a_peer
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(a_peer.read(&mut buf).unwrap(), 0);
        table.leave(pa.id());
        assert_eq!(table.len(), 2);
        // Connections being answered are never evicted; with all of them so, a new one
        // is refused.
        pb.computing();
        pc.computing();
        let (d, _d_peer) = pair();
        assert!(matches!(table.admit(&d), Err(Refused::Busy)));
        pc.waiting();
        let pd = table.admit(&d).unwrap();
        table.leave(pb.id());
        table.leave(pc.id());
        table.leave(pd.id());
        assert!(table.is_empty());
    }

    #[test]
    fn a_connection_younger_than_the_grace_is_not_evicted() {
        let table = ClientTable::new(1, Duration::from_secs(3600));
        let (a, _a_peer) = pair();
        let (b, _b_peer) = pair();
        let pa = table.admit(&a).unwrap();
        assert!(matches!(table.admit(&b), Err(Refused::Busy)));
        table.leave(pa.id());
        let pb = table.admit(&b).unwrap();
        table.leave(pb.id());
    }

    #[test]
    fn a_deadline_stream_stops_a_slow_peer_at_the_deadline() {
        let (ours, mut theirs) = pair();
        let deadline = Instant::now() + Duration::from_millis(300);
        let dripper = std::thread::spawn(move || {
            // One byte every 50 ms, for up to 10 s: each read gets a byte long before a
            // per-read timeout, but the connection's deadline still ends it.
            for _ in 0..200 {
                if theirs.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let mut stream = DeadlineStream::new(&ours, deadline);
        let mut buf = [0u8; 1];
        let err = loop {
            match stream.read(&mut buf) {
                Ok(0) => panic!("the dripping peer hung up first"),
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        assert!(Instant::now() >= deadline);
        drop(ours);
        dripper.join().unwrap();
    }
}
