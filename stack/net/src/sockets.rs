//! Per-connection socket storage and the O(1) demultiplexer.
//!
//! smoltcp's `Interface` scans its whole `SocketSet` for every ingress segment
//! and every egress poll. So no socket shares a set here: each TCP socket lives
//! in a slot of its own, with a one-entry `SocketSet`, and the stack hands
//! smoltcp only the set of the connection a frame belongs to (found through a
//! hash map keyed by the TCP 4-tuple), or of a socket that has work to do.
//!
//! Slots are recycled: a slot goes back to an idle list when its connection
//! has fully closed. Payload buffers are not tied to a slot: a socket with
//! nothing buffered (an idle keep-alive connection, a closed slot) is
//! *parked* — its rx/tx buffers go to the worker's pool — and takes a pair
//! back before smoltcp or the application touches it again. So memory per
//! idle connection is the socket's state, not its buffers.

use std::collections::HashMap;

use smoltcp::iface::{Context, SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::IpEndpoint;

use crate::config::NetConfig;
use crate::ports::PortAllocator;
pub(crate) use crate::stream::NO_OWNER;
use crate::timer::TimerWheel;
use ferrogate_wire::FlowKey;

/// Index of a socket slot. Stable for the life of one connection's use of it.
pub(crate) type SockId = crate::stream::StreamId;

struct Closing {
    local_port: Option<u16>,
    /// Reset and reused at this time even if the peer never finishes closing.
    linger_until: Instant,
}

pub(crate) struct SockSlot {
    /// Exactly one TCP socket, at `handle`.
    pub(crate) set: SocketSet<'static>,
    handle: SocketHandle,
    /// The 4-tuple under which `SocketTable::map` finds this slot.
    key: Option<FlowKey>,
    /// Connection (index in the stack's connection table) this socket serves.
    pub(crate) owner: u32,
    closing: Option<Closing>,
    /// In the dirty list already.
    queued: bool,
    /// Holds empty, zero-capacity buffers; its own are in the pool.
    parked: bool,
    /// Waiting for a neighbour (ARP/NDP) before it can send.
    neighbour_wait: bool,
    /// Idle with grown buffers since then, at this sequence progress (see
    /// `hold_grown_idle`).
    grown_idle_since: Option<(Instant, (u32, u32))>,
}

impl SockSlot {
    pub(crate) fn tcp(&mut self) -> &mut tcp::Socket<'static> {
        self.set.get_mut::<tcp::Socket<'static>>(self.handle)
    }
}

pub(crate) struct SocketTable {
    slots: Vec<SockSlot>,
    idle: Vec<SockId>,
    map: HashMap<FlowKey, SockId>,
    /// Sockets with something to do in this poll (ingress, the application
    /// touched them, a timer came due), each once.
    dirty: Vec<SockId>,
    /// Sockets whose last send waited for a neighbour; an ARP/NDP frame wakes
    /// them (smoltcp would otherwise retry only after a 1 s silence).
    neighbour_waiters: Vec<SockId>,
    pub(crate) timers: TimerWheel,
    closing: usize,
    /// Buffer pairs of parked sockets, ready for the next socket that
    /// needs some; at most `SPARE_BUFFERS` are kept, the rest are freed.
    spare: Vec<BufferPair>,
    parked: usize,
    buffers_allocated: u64,
    /// Fast retransmits and retransmission timeouts of recycled sockets.
    retransmissions: (u64, u64, u64, u64),
    rx_size: usize,
    tx_size: usize,
    tx_size_max: usize,
    rx_size_max: usize,
    /// The TCP Timestamps clock's secret (None: timestamps off).
    timestamps: Option<u64>,
    /// Bytes grown buffers hold beyond their starting size, all together.
    grown_bytes: usize,
    grow_budget: usize,
    growth: BufferGrowth,
}

#[derive(Debug, Clone, Copy)]
enum BufferSide {
    Tx,
    Rx,
}

/// Buffers grown, and growths the budget refused.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BufferGrowth {
    pub(crate) tx_grown: u64,
    pub(crate) rx_grown: u64,
    pub(crate) refused: u64,
}

type BufferPair = (tcp::SocketBuffer<'static>, tcp::SocketBuffer<'static>);

/// Spare buffer pairs a worker keeps: enough for the sockets active at
/// once in a busy worker, so steady traffic allocates nothing, while memory
/// parked connections free goes back to the allocator.
const SPARE_BUFFERS: usize = 256;

/// The rate one connection is given room for: buffers grow to twice
/// this rate's bandwidth-delay product at most. Without it a buffer-capped
/// flow on a LAN would grow as far as on a long path (the congestion window
/// of a flow the buffer caps keeps growing: nothing validates it), holding
/// memory that buys nothing. 1 Gbit/s at a 1 ms round trip (the RTT's
/// resolution) is 256 KiB; at 50 ms the configured maximum decides.
const RATE_PER_CONNECTION_BYTES_PER_MS: usize = 125_000;

fn rate_cap(srtt: smoltcp::time::Duration) -> usize {
    let ms = (srtt.total_millis() as usize).max(1);
    (2 * RATE_PER_CONNECTION_BYTES_PER_MS * ms).next_power_of_two()
}

/// How long an idle connection keeps grown buffers before parking them.
const GROWN_IDLE_HOLD: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(1_000);

fn no_buffers() -> BufferPair {
    // An empty Vec does not allocate.
    (
        tcp::SocketBuffer::new(Vec::new()),
        tcp::SocketBuffer::new(Vec::new()),
    )
}

impl SocketTable {
    /// Sized for `max_connections` (a client and an upstream socket each) so
    /// that steady state neither rehashes nor grows.
    pub(crate) fn new(cfg: &NetConfig, now: Instant) -> Self {
        let n = cfg.max_connections.saturating_mul(2).max(16);
        Self {
            slots: Vec::with_capacity(n),
            idle: Vec::with_capacity(n),
            map: HashMap::with_capacity(n),
            dirty: Vec::with_capacity(n),
            neighbour_waiters: Vec::with_capacity(64),
            timers: TimerWheel::new(n, now),
            closing: 0,
            spare: Vec::with_capacity(SPARE_BUFFERS),
            parked: 0,
            buffers_allocated: 0,
            retransmissions: (0, 0, 0, 0),
            rx_size: cfg.tcp_rx_buffer,
            tx_size: cfg.tcp_tx_buffer,
            tx_size_max: cfg.tcp_tx_buffer_max.max(cfg.tcp_tx_buffer),
            rx_size_max: cfg.tcp_rx_buffer_max.max(cfg.tcp_rx_buffer),
            timestamps: cfg
                .tcp_timestamps
                .then_some(cfg.random_seed.rotate_left(17) ^ 0x7473_7661_6c5f_6b65),
            grown_bytes: 0,
            grow_budget: cfg.tcp_buffer_budget,
            growth: BufferGrowth::default(),
        }
    }

    /// Sockets parked now (see the module doc).
    pub(crate) fn parked(&self) -> usize {
        self.parked
    }

    /// Buffer pairs allocated because the pool was empty.
    pub(crate) fn buffers_allocated(&self) -> u64 {
        self.buffers_allocated
    }

    /// Fast retransmits and retransmission timeouts of the connections
    /// whose sockets were recycled so far.
    pub(crate) fn retransmissions(&self) -> (u64, u64, u64, u64) {
        self.retransmissions
    }

    /// Bytes grown buffers hold now beyond their starting size.
    pub(crate) fn grown_bytes(&self) -> usize {
        self.grown_bytes
    }

    pub(crate) fn growth(&self) -> BufferGrowth {
        self.growth
    }

    /// Gives `id` bigger payload buffers where they cap its flight (see
    /// `tcp::Socket::{tx,rx}_buffer_growth_wanted`) and the worker's
    /// budget allows. At most a few times per connection (each step
    /// doubles), never per segment: the allocation and the copy of what is
    /// buffered are a connection's, like its first buffers.
    pub(crate) fn grow_if_capped(&mut self, id: SockId) {
        if self.slots[id as usize].parked {
            return;
        }
        self.grow(id, BufferSide::Tx);
        self.grow(id, BufferSide::Rx);
    }

    fn grow(&mut self, id: SockId, side: BufferSide) {
        let size_max = match side {
            BufferSide::Tx => self.tx_size_max,
            BufferSide::Rx => self.rx_size_max,
        };
        let sock = self.slots[id as usize].tcp();
        let max = size_max.min(rate_cap(sock.smoothed_rtt()));
        let (want, have) = match side {
            BufferSide::Tx => (sock.take_tx_buffer_growth(max), sock.send_capacity()),
            BufferSide::Rx => (sock.take_rx_buffer_growth(max), sock.recv_capacity()),
        };
        let Some(want) = want else {
            return;
        };
        let extra = want - have;
        if self.grown_bytes + extra > self.grow_budget {
            self.growth.refused += 1;
            return;
        }
        // The old buffer is freed: the pool keeps pairs of the starting
        // size, and a grown one returns to the allocator when it parks.
        let bigger = tcp::SocketBuffer::new(vec![0u8; want]);
        let grown = match side {
            BufferSide::Tx => sock.grow_tx_buffer(bigger).is_ok(),
            BufferSide::Rx => sock.grow_rx_buffer(bigger).is_ok(),
        };
        if grown {
            self.grown_bytes += extra;
            match side {
                BufferSide::Tx => self.growth.tx_grown += 1,
                BufferSide::Rx => self.growth.rx_grown += 1,
            }
        }
    }

    /// Keeps the grown buffers of an idle connection for `GROWN_IDLE_HOLD`:
    /// a bulk transfer pauses between round trips (a proxied upload's
    /// upstream side drains after each of the client's flights), and
    /// parking would free the buffers only to allocate and grow them again
    /// a round trip later. Returns when to look again; once the hold is
    /// over the socket parks like any idle one.
    pub(crate) fn hold_grown_idle(&mut self, id: SockId, now: Instant) -> Option<Instant> {
        let (tx_size, rx_size) = (self.tx_size, self.rx_size);
        let s = &mut self.slots[id as usize];
        if s.parked {
            return None;
        }
        let closing = s.closing.is_some();
        let sock = s.tcp();
        let grown = sock.send_capacity() > tx_size || sock.recv_capacity() > rx_size;
        let idle = sock.state() == tcp::State::Established && !closing && sock.buffers_empty();
        if !(grown && idle) {
            s.grown_idle_since = None;
            return None;
        }
        // Idle at the end of every pass is not idle: a transfer whose
        // owner drains the socket each pass leaves it empty each time. The
        // hold restarts whenever data moved.
        let progress = sock.sequence_progress();
        let since = match s.grown_idle_since {
            Some((since, at)) if at == progress => since,
            _ => {
                s.grown_idle_since = Some((now, progress));
                now
            }
        };
        let until = since + GROWN_IDLE_HOLD;
        if now >= until {
            // `park_if_idle` parks it now.
            s.grown_idle_since = None;
            return None;
        }
        Some(until)
    }

    /// Accounts the buffers leaving a parked socket; true if they are of
    /// the starting sizes (the pool keeps only those).
    fn release(
        &mut self,
        rx: &tcp::SocketBuffer<'static>,
        tx: &tcp::SocketBuffer<'static>,
    ) -> bool {
        let (rx_cap, tx_cap) = (rx.capacity(), tx.capacity());
        self.grown_bytes -=
            rx_cap.saturating_sub(self.rx_size) + tx_cap.saturating_sub(self.tx_size);
        rx_cap == self.rx_size && tx_cap == self.tx_size
    }

    fn buffer_pair(&mut self) -> BufferPair {
        if let Some(pair) = self.spare.pop() {
            return pair;
        }
        self.buffers_allocated += 1;
        (
            tcp::SocketBuffer::new(vec![0u8; self.rx_size]),
            tcp::SocketBuffer::new(vec![0u8; self.tx_size]),
        )
    }

    /// Gives a parked socket buffers again. Every path to smoltcp and to the
    /// application goes through here first.
    pub(crate) fn unpark(&mut self, id: SockId) {
        if !self.slots[id as usize].parked {
            return;
        }
        let (rx, tx) = self.buffer_pair();
        let s = &mut self.slots[id as usize];
        // A parked socket holds empty zero-capacity buffers: the swap
        // cannot be refused, and smoltcp must never run it without them.
        let empty = s.tcp().replace_buffers(rx, tx);
        assert!(empty.is_ok(), "a parked socket holds buffered bytes");
        s.parked = false;
        self.parked -= 1;
    }

    /// Parks `id` if it has nothing buffered and is established (an idle
    /// connection) or closed (an idle slot).
    pub(crate) fn park_if_idle(&mut self, id: SockId) -> bool {
        let s = &mut self.slots[id as usize];
        if s.parked {
            return false;
        }
        let (closing, key) = (s.closing.is_some(), s.key.is_some());
        // Grown buffers stay through the short pauses of a transfer (see
        // `hold_grown_idle`); a closed socket gives them up at once.
        let held = s.grown_idle_since.is_some();
        let sock = s.tcp();
        let grown = sock.send_capacity() > self.tx_size || sock.recv_capacity() > self.rx_size;
        let idle = match sock.state() {
            tcp::State::Established => !closing && sock.buffers_empty() && !(grown && held),
            tcp::State::Closed => !key,
            _ => false,
        };
        if !idle {
            return false;
        }
        let (rx, tx) = no_buffers();
        let Ok((mut rx, mut tx)) = s.tcp().replace_buffers(rx, tx) else {
            return false;
        };
        s.parked = true;
        s.grown_idle_since = None;
        self.parked += 1;
        if self.release(&rx, &tx) && self.spare.len() < SPARE_BUFFERS {
            // A closed socket's buffers may hold stale bytes.
            rx.clear();
            tx.clear();
            self.spare.push((rx, tx));
        }
        true
    }

    /// Sockets ever created (each allocated its buffers once).
    pub(crate) fn created(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn closing(&self) -> usize {
        self.closing
    }

    /// Slots serving a connection now (open, opening or closing): every
    /// slot not on the idle list.
    pub(crate) fn in_use(&self) -> usize {
        self.slots.len() - self.idle.len()
    }

    pub(crate) fn lookup(&self, key: &FlowKey) -> Option<SockId> {
        self.map.get(key).copied()
    }

    pub(crate) fn slot(&mut self, id: SockId) -> &mut SockSlot {
        &mut self.slots[id as usize]
    }

    /// The socket, with its buffers: a parked one takes a pair back and is
    /// queued, so this poll parks it again if it stays idle.
    pub(crate) fn tcp(&mut self, id: SockId) -> &mut tcp::Socket<'static> {
        if self.slots[id as usize].parked {
            self.unpark(id);
            self.mark(id);
        }
        self.slots[id as usize].tcp()
    }

    /// False for an idle slot (no connection, nothing to send).
    pub(crate) fn is_live(&self, id: SockId) -> bool {
        self.slots[id as usize].key.is_some()
    }

    /// A closed socket, reused or new.
    pub(crate) fn take(&mut self) -> SockId {
        if let Some(id) = self.idle.pop() {
            // listen/connect derive the window scale from the buffers.
            self.unpark(id);
            return id;
        }
        let (rx, tx) = self.buffer_pair();
        let mut sock = tcp::Socket::new(rx, tx);
        // The window scale of every connection must announce the largest
        // receive buffer it may grow to.
        sock.set_rx_buffer_max(self.rx_size_max);
        // The proxy writes whole heads and body slices; Nagle would only
        // delay the last segment of each.
        sock.set_nagle_enabled(false);
        sock.set_congestion_control(tcp::CongestionControl::Cubic);
        sock.set_timestamps_from_clock(self.timestamps);
        let mut set = SocketSet::new(vec![SocketStorage::EMPTY]);
        let handle = set.add(sock);
        let id = self.slots.len() as SockId;
        self.slots.push(SockSlot {
            set,
            handle,
            key: None,
            owner: NO_OWNER,
            closing: None,
            queued: false,
            parked: false,
            neighbour_wait: false,
            grown_idle_since: None,
        });
        self.timers.grow_to(self.slots.len());
        id
    }

    /// Makes `id` reachable by frames of `key`.
    pub(crate) fn register(&mut self, id: SockId, key: FlowKey) {
        self.slots[id as usize].key = Some(key);
        self.map.insert(key, id);
    }

    /// Returns a socket that never left the Closed/Listen state to the idle
    /// list without any close handshake.
    pub(crate) fn put_back(&mut self, id: SockId) {
        let s = &mut self.slots[id as usize];
        if let Some(key) = s.key.take() {
            self.map.remove(&key);
        }
        s.owner = NO_OWNER;
        let sock = s.tcp();
        if sock.state() != tcp::State::Closed {
            sock.abort();
        }
        let (fast, timeouts, stale_syn_acks) = sock.take_retransmission_counts();
        self.retransmissions.0 += u64::from(fast);
        self.retransmissions.1 += u64::from(timeouts);
        self.retransmissions.2 += u64::from(stale_syn_acks);
        self.retransmissions.3 += u64::from(sock.take_paws_rejected());
        self.timers.cancel(id);
        self.park_if_idle(id);
        self.idle.push(id);
    }

    /// Opens an active connection for `owner` and registers its 4-tuple.
    pub(crate) fn connect(
        &mut self,
        iface: &mut Context,
        owner: u32,
        remote: IpEndpoint,
        local_port: u16,
    ) -> Option<SockId> {
        let id = self.take();
        let sock = self.tcp(id);
        if sock.connect(iface, remote, local_port).is_err() {
            self.park_if_idle(id);
            self.idle.push(id);
            return None;
        }
        let local = sock
            .local_endpoint()
            .expect("connected socket has a local endpoint");
        self.register(
            id,
            FlowKey {
                local: local.addr,
                local_port: local.port,
                remote: remote.addr,
                remote_port: remote.port,
            },
        );
        self.slots[id as usize].owner = owner;
        self.mark(id);
        Some(id)
    }

    /// Starts closing (FIN) or resets a socket; it is reused once closed.
    pub(crate) fn retire(
        &mut self,
        id: SockId,
        local_port: Option<u16>,
        reset: bool,
        now: Instant,
        linger: smoltcp::time::Duration,
    ) {
        self.unpark(id);
        let s = &mut self.slots[id as usize];
        s.owner = NO_OWNER;
        let sock = s.tcp();
        if reset {
            sock.abort();
        } else {
            sock.close();
        }
        s.closing = Some(Closing {
            local_port,
            linger_until: now + linger,
        });
        self.closing += 1;
        // The next egress of this socket sends its FIN or RST.
        self.mark(id);
    }

    /// Queues `id` for processing in the current poll.
    pub(crate) fn mark(&mut self, id: SockId) {
        let s = &mut self.slots[id as usize];
        if !s.queued {
            s.queued = true;
            self.dirty.push(id);
        }
    }

    pub(crate) fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Moves the dirty list to the end of `into`; the sockets stay queued
    /// (a second `mark` is a no-op) until `unqueue`.
    pub(crate) fn take_dirty_append(&mut self, into: &mut Vec<SockId>) {
        into.extend_from_slice(&self.dirty);
        self.dirty.clear();
    }

    /// Queues every socket whose timer is due.
    pub(crate) fn fire_timers(&mut self, now: Instant) {
        let (slots, dirty) = (&mut self.slots, &mut self.dirty);
        self.timers.advance(now, |id| {
            let s = &mut slots[id as usize];
            if !s.queued {
                s.queued = true;
                dirty.push(id);
            }
        });
    }

    /// Marks a socket as processed, so the next `mark` queues it again.
    pub(crate) fn unqueue(&mut self, id: SockId) {
        self.slots[id as usize].queued = false;
    }

    pub(crate) fn set_neighbour_wait(&mut self, id: SockId) {
        let s = &mut self.slots[id as usize];
        if !s.neighbour_wait {
            s.neighbour_wait = true;
            self.neighbour_waiters.push(id);
        }
    }

    /// A neighbour may have become known: every waiting socket gets polled.
    pub(crate) fn wake_neighbour_waiters(&mut self) {
        while let Some(id) = self.neighbour_waiters.pop() {
            self.slots[id as usize].neighbour_wait = false;
            self.mark(id);
        }
    }

    /// The time a closing socket must be given up at, if it is closing.
    pub(crate) fn linger_until(&self, id: SockId) -> Option<Instant> {
        self.slots[id as usize]
            .closing
            .as_ref()
            .map(|c| c.linger_until)
    }

    /// Moves a closing socket back to idle once it has fully closed (or has
    /// lingered too long, or `force`). True if it was reclaimed.
    pub(crate) fn reclaim_if_done(
        &mut self,
        id: SockId,
        ports: &mut PortAllocator,
        now: Instant,
        force: bool,
    ) -> bool {
        let s = &mut self.slots[id as usize];
        let Some(c) = &s.closing else {
            return false;
        };
        let linger_until = c.linger_until;
        let state = s.tcp().state();
        // TIME_WAIT holds no data; new client connections use new ports,
        // and upstream ports are reused round-robin, far apart in time.
        let done = force
            || state == tcp::State::Closed
            || state == tcp::State::TimeWait
            || now >= linger_until;
        if !done {
            return false;
        }
        let c = s.closing.take().expect("closing");
        self.closing -= 1;
        if let Some(p) = c.local_port {
            ports.free(p);
        }
        // Reuse resets the socket (`listen`/`connect`); the RST that `abort`
        // queues here is never sent, which TIME_WAIT tolerates.
        self.put_back(id);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::rate_cap;
    use smoltcp::time::Duration;

    #[test]
    fn buffers_grow_to_twice_a_gigabit_round_trip_at_most() {
        assert_eq!(rate_cap(Duration::ZERO), 256 * 1024);
        assert_eq!(rate_cap(Duration::from_millis(1)), 256 * 1024);
        assert_eq!(rate_cap(Duration::from_millis(10)), 4 * 1024 * 1024);
        assert!(rate_cap(Duration::from_millis(50)) >= 12_500_000);
    }
}
