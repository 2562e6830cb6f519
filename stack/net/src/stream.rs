//! The stream API: what applications see of TCP. A [`Streams`] handle lends
//! the sockets of one worker for the length of one call into the
//! application; a [`Stream`] is one socket, by id. No smoltcp type crosses
//! this boundary except the time values (plain microseconds).

use std::net::{IpAddr, SocketAddr};

use smoltcp::iface::Context;
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::IpEndpoint;

use crate::config::NetConfig;
use crate::datagram::{self, SendDrop, UdpPorts};
use crate::device::FrameQueue;
use crate::ports::PortAllocator;
use crate::sockets::SocketTable;

/// A TCP stream (socket slot) of this worker; stable while its owner holds it.
pub type StreamId = u32;

/// Who an open stream belongs to: an application-defined token, reported
/// back when the stream has events. [`NO_OWNER`]: nobody (closing, probes).
pub type Owner = u32;

/// A stream that belongs to no application object (closing, or polled by
/// the application itself, e.g. a health probe).
pub const NO_OWNER: Owner = u32::MAX;

/// The TCP states (RFC 9293), as the application sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    Closed,
    Listen,
    SynSent,
    SynReceived,
    Established,
    FinWait1,
    FinWait2,
    CloseWait,
    Closing,
    LastAck,
    TimeWait,
}

impl From<tcp::State> for StreamState {
    fn from(s: tcp::State) -> Self {
        match s {
            tcp::State::Closed => StreamState::Closed,
            tcp::State::Listen => StreamState::Listen,
            tcp::State::SynSent => StreamState::SynSent,
            tcp::State::SynReceived => StreamState::SynReceived,
            tcp::State::Established => StreamState::Established,
            tcp::State::FinWait1 => StreamState::FinWait1,
            tcp::State::FinWait2 => StreamState::FinWait2,
            tcp::State::CloseWait => StreamState::CloseWait,
            tcp::State::Closing => StreamState::Closing,
            tcp::State::LastAck => StreamState::LastAck,
            tcp::State::TimeWait => StreamState::TimeWait,
        }
    }
}

/// One stream, borrowed from [`Streams`]: reads, writes and shutdown.
pub struct Stream<'a> {
    sock: &'a mut tcp::Socket<'static>,
}

impl Stream<'_> {
    pub fn state(&self) -> StreamState {
        self.sock.state().into()
    }

    /// Received bytes are waiting.
    pub fn can_recv(&self) -> bool {
        self.sock.can_recv()
    }

    /// The peer may still send (no FIN received yet, or data left).
    pub fn may_recv(&self) -> bool {
        self.sock.may_recv()
    }

    /// We may still send (no FIN sent).
    pub fn may_send(&self) -> bool {
        self.sock.may_send()
    }

    /// Bytes received and not read yet.
    pub fn recv_queue(&self) -> usize {
        self.sock.recv_queue()
    }

    /// Free room in the send buffer.
    pub fn send_space(&self) -> usize {
        self.sock.send_capacity() - self.sock.send_queue()
    }

    /// Copies received bytes into `buf`; 0 when there are none (or the
    /// stream cannot receive).
    pub fn recv_slice(&mut self, buf: &mut [u8]) -> usize {
        self.sock.recv_slice(buf).unwrap_or(0)
    }

    /// Copies received bytes into `buf` and leaves them queued; 0 when there
    /// are none.
    pub fn peek_slice(&mut self, buf: &mut [u8]) -> usize {
        self.sock.peek_slice(buf).unwrap_or(0)
    }

    /// Lends the received bytes to `f`, which returns how many it consumed
    /// and a value. None when the stream cannot receive.
    pub fn recv_with<R>(&mut self, f: impl FnOnce(&mut [u8]) -> (usize, R)) -> Option<R> {
        self.sock.recv(f).ok()
    }

    /// Queues as much of `data` as fits; returns how much.
    pub fn send_slice(&mut self, data: &[u8]) -> usize {
        self.sock.send_slice(data).unwrap_or(0)
    }

    /// Lends free send-buffer space to `f`, which returns how much it
    /// filled and a value. None when the stream cannot send.
    pub fn send_with<R>(&mut self, f: impl FnOnce(&mut [u8]) -> (usize, R)) -> Option<R> {
        self.sock.send(f).ok()
    }

    /// Not closed, listening or in TIME-WAIT.
    pub fn is_active(&self) -> bool {
        self.sock.is_active()
    }

    /// Sends a FIN once the queued data is out (a half-close: receiving
    /// goes on).
    pub fn close(&mut self) {
        self.sock.close()
    }

    /// Resets the connection (RST), dropping anything queued.
    pub fn abort(&mut self) {
        self.sock.abort()
    }

    /// The peer's address, while connected.
    pub fn remote(&self) -> Option<SocketAddr> {
        self.sock
            .remote_endpoint()
            .map(|e| SocketAddr::new(e.addr.into(), e.port))
    }

    pub fn local_port(&self) -> Option<u16> {
        self.sock.local_endpoint().map(|e| e.port)
    }

    /// Our address and port of the connection (the VIP a client reached).
    pub fn local(&self) -> Option<SocketAddr> {
        self.sock
            .local_endpoint()
            .map(|e| SocketAddr::new(e.addr.into(), e.port))
    }
}

/// The worker's streams, lent to the application for one call: stream
/// access, opening connections, handing streams back to close.
pub struct Streams<'a> {
    pub(crate) sockets: &'a mut SocketTable,
    pub(crate) iface: &'a mut Context,
    pub(crate) ports: &'a mut PortAllocator,
    pub(crate) cfg: &'a NetConfig,
    pub(crate) now: Instant,
    pub(crate) pass: u64,
    pub(crate) tx: &'a mut FrameQueue,
    pub(crate) udp: &'a mut UdpPorts,
}

impl Streams<'_> {
    /// The same streams for a shorter call, so one poll can lend them to
    /// several owners in turn.
    pub fn reborrow(&mut self) -> Streams<'_> {
        Streams {
            sockets: self.sockets,
            iface: self.iface,
            ports: self.ports,
            cfg: self.cfg,
            now: self.now,
            pass: self.pass,
            tx: self.tx,
            udp: self.udp,
        }
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    /// The current pass over the streams with events: an owner runs at
    /// most once per pass, however many of its streams had events.
    pub fn pass(&self) -> u64 {
        self.pass
    }

    pub fn linger(&self) -> Duration {
        self.cfg.linger
    }

    pub fn stream(&mut self, id: StreamId) -> Stream<'_> {
        Stream {
            sock: self.sockets.tcp(id),
        }
    }

    /// Local ports for outgoing connections (this worker's range).
    pub fn ports(&mut self) -> &mut PortAllocator {
        self.ports
    }

    /// Opens a connection to `remote` from `local_port`, owned by `owner`
    /// (its events wake it). None when smoltcp refuses (no route, port).
    pub fn connect(
        &mut self,
        owner: Owner,
        remote: SocketAddr,
        local_port: u16,
    ) -> Option<StreamId> {
        let remote = IpEndpoint::new(remote.ip().into(), remote.port());
        self.sockets.connect(self.iface, owner, remote, local_port)
    }

    pub fn owner(&mut self, id: StreamId) -> Owner {
        self.sockets.slot(id).owner
    }

    /// Gives `id` to `owner` (its events wake that owner from now on).
    pub fn set_owner(&mut self, id: StreamId, owner: Owner) {
        self.sockets.slot(id).owner = owner;
    }

    /// Hands a stream back: FIN (or RST with `reset`), then it lingers until
    /// closed and is reused; `local_port` is freed with it.
    pub fn retire(&mut self, id: StreamId, local_port: Option<u16>, reset: bool) {
        self.sockets
            .retire(id, local_port, reset, self.now, self.cfg.linger);
    }

    /// Queues `id` for egress and timers in this poll (after writing to it).
    pub fn mark(&mut self, id: StreamId) {
        self.sockets.mark(id);
    }

    /// A local port for a UDP session (from the upstream range, shared with
    /// TCP connections): datagrams to it reach [`crate::App::datagram`]
    /// until [`Self::unbind_udp`]. None: no port free, or UDP sessions hold
    /// their share (half the range) already.
    /// Sessions get at most half of the range (TCP keeps the rest).
    pub fn bind_udp(&mut self) -> Option<u16> {
        if !self.udp.quota_left() {
            return None;
        }
        let port = self.ports.alloc()?;
        self.udp.set_bound(port, true);
        Some(port)
    }

    pub fn unbind_udp(&mut self, port: u16) {
        if self.udp.is_bound(port) {
            self.udp.set_bound(port, false);
            self.ports.free(port);
        }
    }

    /// Frames the transmit queue still takes before this poll's frames
    /// are sent: an application with many datagrams to send stops here
    /// rather than have them dropped (`SendDrop::QueueFull`).
    pub fn tx_room(&self) -> usize {
        self.tx.capacity() - self.tx.len()
    }

    /// Sends one datagram from `local` (one of our addresses) to `remote`,
    /// to the link-layer address `peer_mac` or, when None, to the one the
    /// neighbour cache has for `remote`'s next hop (when it has none, the
    /// neighbours are asked again soon).
    pub fn send_datagram(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        peer_mac: Option<[u8; 6]>,
        payload: &[u8],
    ) -> Result<(), SendDrop> {
        let mac = match peer_mac {
            Some(m) => Some(m),
            None => match self.iface.next_hop_hardware_addr(&remote.ip().into()) {
                Some(smoltcp::wire::HardwareAddress::Ethernet(e)) => Some(e.0),
                _ => None,
            },
        };
        let Some(mac) = mac else {
            self.udp.neighbour_missed = true;
            return Err(SendDrop::NoNeighbour);
        };
        datagram::emit(
            self.tx,
            self.cfg.mac,
            mac,
            local,
            remote,
            payload,
            self.cfg.tx_checksum_offload,
        )
    }

    /// One of our addresses to send to `remote` from: `preferred` when it
    /// is of the same family, else the first of that family.
    pub fn source_for(&self, remote: IpAddr, preferred: IpAddr) -> Option<IpAddr> {
        if preferred.is_ipv4() == remote.is_ipv4() {
            return Some(preferred);
        }
        self.cfg
            .addresses
            .iter()
            .map(|(a, _)| *a)
            .find(|a| a.is_ipv4() == remote.is_ipv4())
    }
}
