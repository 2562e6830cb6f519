//! The L4 splice: two TCP streams of one worker joined byte for byte, for
//! TCP listeners. Sans-IO over the [`Ends`] trait (implemented for the
//! worker's [`Streams`], and by [`TlsPair`] for a client end whose TLS is
//! terminated here), so the state machine is tested in memory.
//!
//! - **Back-pressure**: a direction reads from its source only as much as
//!   its destination's send buffer has room for, through a caller-lent
//!   scratch buffer that holds nothing between calls. A slow side fills
//!   its send buffer, the other side's receive window closes: memory per
//!   connection is the two sockets' buffers, nothing more.
//! - **Half-close**: a FIN from one side (once every byte before it is
//!   forwarded) becomes a FIN to the other; the other direction stays open
//!   until it ends too.
//! - **Reset**: a side that is reset (or closes before its direction
//!   ended, e.g. aborted) resets the other.

pub mod udp;

use ferrogate_net::{StreamId, StreamState, Streams};

/// One side of a splice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The accepted connection.
    Client,
    /// The connection to the upstream endpoint.
    Upstream,
}

impl End {
    pub fn other(self) -> End {
        match self {
            End::Client => End::Upstream,
            End::Upstream => End::Client,
        }
    }
}

/// What a splice needs of its two streams.
pub trait Ends {
    fn state(&mut self, e: End) -> StreamState;
    /// Bytes received and not read yet.
    fn recv_queue(&mut self, e: End) -> usize;
    fn recv(&mut self, e: End, buf: &mut [u8]) -> usize;
    fn send_space(&mut self, e: End) -> usize;
    fn send(&mut self, e: End, data: &[u8]) -> usize;
    /// FIN after what is queued; false when it cannot be queued yet (a TLS
    /// end whose close_notify is not all in the socket): asked again on the
    /// next run.
    fn close(&mut self, e: End) -> bool;
    /// RST.
    fn abort(&mut self, e: End);
    /// The peer sent its last byte (its FIN; on TLS its close_notify too):
    /// once `recv_queue` is empty, its direction has ended.
    fn peer_done(&mut self, e: End) -> bool {
        fin_received(self.state(e))
    }
    /// The side went away: reset, aborted, or (TLS) its session failed.
    fn gone(&mut self, e: End) -> bool {
        is_closed(self.state(e))
    }
}

/// The peer's FIN came. (A stream still in its handshake may not receive
/// yet, which is no FIN either.)
fn fin_received(s: StreamState) -> bool {
    matches!(
        s,
        StreamState::CloseWait
            | StreamState::LastAck
            | StreamState::Closing
            | StreamState::TimeWait
    )
}

/// Reset or aborted (or never connected).
fn is_closed(s: StreamState) -> bool {
    matches!(s, StreamState::Closed | StreamState::Listen)
}

/// The two streams of a splice in the worker's [`Streams`].
pub struct StreamPair<'s, 'n> {
    pub net: &'s mut Streams<'n>,
    pub client: StreamId,
    pub upstream: StreamId,
}

impl StreamPair<'_, '_> {
    fn id(&self, e: End) -> StreamId {
        match e {
            End::Client => self.client,
            End::Upstream => self.upstream,
        }
    }
}

impl Ends for StreamPair<'_, '_> {
    fn state(&mut self, e: End) -> StreamState {
        let id = self.id(e);
        self.net.stream(id).state()
    }
    fn recv_queue(&mut self, e: End) -> usize {
        let id = self.id(e);
        self.net.stream(id).recv_queue()
    }
    fn recv(&mut self, e: End, buf: &mut [u8]) -> usize {
        let id = self.id(e);
        self.net.stream(id).recv_slice(buf)
    }
    fn send_space(&mut self, e: End) -> usize {
        let id = self.id(e);
        let s = self.net.stream(id);
        if s.may_send() { s.send_space() } else { 0 }
    }
    fn send(&mut self, e: End, data: &[u8]) -> usize {
        let id = self.id(e);
        self.net.stream(id).send_slice(data)
    }
    fn close(&mut self, e: End) -> bool {
        let id = self.id(e);
        self.net.stream(id).close();
        true
    }
    fn abort(&mut self, e: End) {
        let id = self.id(e);
        self.net.stream(id).abort()
    }
}

/// Where a splice stands after a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Bytes may still flow (one direction at least).
    Open,
    /// Both directions ended with a FIN, each forwarded.
    Done,
    /// This side was reset (or went away mid-stream); the other was reset.
    Reset(End),
}

/// One direction's state.
#[derive(Debug, Default, Clone, Copy)]
struct Dir {
    bytes: u64,
    /// The source's FIN was forwarded to the destination.
    fin_sent: bool,
}

/// Most bytes one run moves (per direction) before it yields, so that one
/// busy connection does not hold the worker; the caller runs it again.
pub const RUN_BUDGET: usize = 256 * 1024;

/// One spliced connection: two directions, bytes counted each way.
#[derive(Debug, Default, Clone)]
pub struct Splice {
    /// Client → upstream.
    up: Dir,
    /// Upstream → client.
    down: Dir,
    status: Option<Status>,
}

/// What one run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub status: Status,
    /// Bytes moved in this run (both directions).
    pub moved: usize,
    /// The run stopped at its budget with bytes still waiting: run again.
    pub more: bool,
}

impl Splice {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes forwarded client → upstream.
    pub fn bytes_up(&self) -> u64 {
        self.up.bytes
    }

    /// Bytes forwarded upstream → client.
    pub fn bytes_down(&self) -> u64 {
        self.down.bytes
    }

    /// Whether `from`'s FIN reached the other side.
    pub fn fin_forwarded(&self, from: End) -> bool {
        self.dir(from).fin_sent
    }

    fn dir(&self, from: End) -> &Dir {
        match from {
            End::Client => &self.up,
            End::Upstream => &self.down,
        }
    }

    fn dir_mut(&mut self, from: End) -> &mut Dir {
        match from {
            End::Client => &mut self.up,
            End::Upstream => &mut self.down,
        }
    }

    /// Moves bytes both ways as far as the send buffers allow, forwards
    /// FINs, propagates resets. `scratch` is any buffer (its size is the
    /// copy unit); it holds nothing after the call.
    pub fn run(&mut self, io: &mut impl Ends, scratch: &mut [u8]) -> Run {
        if let Some(status) = self.status {
            return Run {
                status,
                moved: 0,
                more: false,
            };
        }
        let mut moved = 0;
        let mut more = false;
        for from in [End::Client, End::Upstream] {
            let (n, left) = self.pump(io, from, scratch);
            moved += n;
            more |= left;
        }
        // A side that is closed (RST received, or aborted) while a
        // direction through it had not ended: reset the other.
        for side in [End::Client, End::Upstream] {
            if io.gone(side) && !(self.up.fin_sent && self.down.fin_sent) {
                io.abort(side.other());
                let status = Status::Reset(side);
                self.status = Some(status);
                return Run {
                    status,
                    moved,
                    more: false,
                };
            }
        }
        let status = if self.up.fin_sent && self.down.fin_sent {
            Status::Done
        } else {
            Status::Open
        };
        if status == Status::Done {
            self.status = Some(status);
        }
        Run {
            status,
            moved,
            more: more && status == Status::Open,
        }
    }

    /// One direction: bytes from `from` to its other side, then its FIN.
    /// Returns the bytes moved and whether the budget stopped it.
    fn pump(&mut self, io: &mut impl Ends, from: End, scratch: &mut [u8]) -> (usize, bool) {
        let to = from.other();
        if self.dir(from).fin_sent {
            return (0, false);
        }
        let mut moved = 0;
        loop {
            let avail = io.recv_queue(from);
            if avail == 0 {
                break;
            }
            if moved >= RUN_BUDGET {
                return (moved, true);
            }
            let room = io.send_space(to).min(scratch.len()).min(avail);
            if room == 0 {
                // The destination is full: its ACKs will wake us.
                return (moved, false);
            }
            let n = io.recv(from, &mut scratch[..room]);
            if n == 0 {
                break;
            }
            let sent = io.send(to, &scratch[..n]);
            debug_assert_eq!(sent, n, "send space was checked");
            moved += n;
            self.dir_mut(from).bytes += n as u64;
        }
        // The source's FIN came and every byte before it is forwarded. (A
        // closed source is a reset, handled by the caller.)
        if io.peer_done(from) && io.recv_queue(from) == 0 && io.close(to) {
            self.dir_mut(from).fin_sent = true;
        }
        (moved, false)
    }
}

mod tls;

pub use tls::TlsPair;

#[cfg(test)]
mod tests;
