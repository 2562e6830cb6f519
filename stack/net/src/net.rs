//! The per-worker TCP/IP layer: a smoltcp interface that owns the VIPs and
//! listening ports, and runs the streams an [`App`] uses. Sans-IO: frames and
//! time go in (`handle_frame`, `poll(now, app)`), frames come out
//! (`drain_tx`), and `poll_at` says when to come back.
//!
//! Work is proportional to events, not to open connections: each frame is
//! demultiplexed by its 4-tuple to the one socket it belongs to (see
//! `sockets.rs`) and given to smoltcp together with that socket alone; only
//! sockets that received a frame, were touched by their owner, or whose
//! timer came due are polled for egress, and only their owners run.

use std::net::{IpAddr, SocketAddr};

use smoltcp::iface::{Config, Interface, PollResult, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

use ferrogate_wire::{self as wire, FrameClass, RxDrop, TcpMeta};

use crate::config::NetConfig;
use crate::datagram::{Datagram, UdpPorts};
use crate::device::{DeviceStats, FrameQueue, QueueDevice};
use crate::neighbors::NeighborPrimer;
use crate::ports::PortAllocator;
use crate::sockets::{NO_OWNER, SockId, SocketTable};
use crate::stream::{Owner, StreamId, Streams};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid MAC address {0:02x?}: must be unicast")]
    BadMac([u8; 6]),
    #[error("no service address configured")]
    NoAddress,
    #[error("more than 8 service addresses per worker")]
    TooManyAddresses,
    #[error("listener port {0} lies inside the upstream port range")]
    ListenerInPortRange(u16),
}

fn ip_of(a: smoltcp::wire::IpAddress) -> IpAddr {
    a.into()
}

/// What runs on the streams: the HTTP proxy, later L4 proxies. Every call
/// gets the worker's streams for its duration; none may block.
pub trait App {
    /// Whether one more connection may be accepted; when not, a SYN to a
    /// listening port is answered with RST (counted `overload_rejected`).
    fn can_accept(&self) -> bool;

    /// `stream` has just received its SYN on `local_port`: the application
    /// takes it (its owner token) or refuses it (None: the stream is reset).
    fn accept(&mut self, streams: Streams<'_>, stream: StreamId, local_port: u16) -> Option<Owner>;

    /// A stream of `owner` had events (a frame, a timer, a write): run it.
    /// Called for every such stream; the application runs an owner at most
    /// once per [`Streams::pass`].
    fn run(&mut self, streams: Streams<'_>, owner: Owner, stream: StreamId);

    /// When `owner` wants `stream`'s timer to fire without events (its
    /// deadline); None: only TCP's own timers.
    fn deadline(&self, owner: Owner, stream: StreamId) -> Option<Instant>;

    /// Once per poll, after the received frames and before the passes: the
    /// application's own timers (health probes, …).
    fn poll(&mut self, streams: Streams<'_>);

    /// When [`App::poll`] has timed work next (None: only on events).
    fn poll_at(&self) -> Option<Instant>;

    /// After each pass: owners that stopped with work left mark a stream
    /// (`Streams::mark`) to run again in the next one.
    fn end_pass(&mut self, streams: Streams<'_>);

    /// A datagram to one of our UDP ports: a listening one
    /// ([`Net::set_udp_ports`]) or one the application bound
    /// ([`Streams::bind_udp`]). Default: ignored.
    fn datagram(&mut self, _streams: Streams<'_>, _d: &Datagram<'_>) {}

    /// ICMP says a datagram sent from `local` (a bound port) to `remote`
    /// could not be delivered. Default: ignored.
    fn datagram_unreachable(
        &mut self,
        _streams: Streams<'_>,
        _local: SocketAddr,
        _remote: SocketAddr,
    ) {
    }
}

/// Counters of the TCP/IP layer of one worker.
#[derive(Debug, Default, Clone, Copy)]
pub struct NetStats {
    /// Frames queued by `handle_frame`; once polled, each has one outcome.
    pub rx_frames: u64,
    /// Given to smoltcp: to a stream, a new listening socket, or its own
    /// protocols (ARP, ICMP, NDP; UDP answered unreachable).
    pub rx_handed: u64,
    /// TCP to one of our addresses that no socket takes: answered with RST.
    pub rx_rst_no_socket: u64,
    /// The same for a segment that is itself a RST: dropped, unanswered.
    pub rx_drop_no_socket: u64,
    pub rx_drop_malformed: u64,
    pub rx_drop_unknown_ethertype: u64,
    pub rx_drop_vlan: u64,
    pub rx_drop_not_for_us: u64,
    pub rx_drop_fragment: u64,
    /// A datagram (or an ICMP error about one) for the application with a
    /// bad checksum, or from a source no reply may go to (broadcast,
    /// multicast, unspecified, one of ours, port 0).
    pub rx_drop_bad_datagram: u64,
    /// A TCP segment with a bad IPv4 header or TCP checksum (corrupted on
    /// the way): dropped before any socket sees it.
    pub rx_drop_checksum: u64,
    pub rx_queue_full: u64,
    pub tx_frames: u64,
    pub tx_queue_full: u64,
    pub accepted: u64,
    pub overload_rejected: u64,
    pub sockets_created: u64,
    /// Sockets holding no payload buffers right now (idle connections and
    /// closed slots; a gauge): their buffers are back in the worker's pool.
    pub sockets_parked: u64,
    /// Sockets serving a connection now, closing ones included (a gauge):
    /// flat under steady load, growing only with a socket leak.
    pub sockets_open: u64,
    /// Local ports held by upstream connections now (a gauge): the
    /// worker's upstream sockets, pooled, busy or closing.
    pub upstream_ports_in_use: u64,
    /// Payload buffer pairs allocated because the pool had none spare.
    pub socket_buffers_allocated: u64,
    /// smoltcp polls of a stream's socket (one ingress frame, or one egress
    /// attempt): the per-event work, independent of open connections.
    pub socket_polls: u64,
    /// Segments resent by TCP loss recovery (fast retransmit and the SACK
    /// holes after it), counted when a connection's socket is recycled.
    pub tcp_fast_retransmits: u64,
    /// TCP retransmission timeouts, counted the same way: a storm of them
    /// means loss recovery failed.
    pub tcp_retransmit_timeouts: u64,
    /// Upstream SYNs the origin answered with an old connection's ACK (it
    /// still held the 4-tuple in TIME-WAIT, or half-open from a connection
    /// the edge reclaimed, and took the SYN for a stray): reset and resent. Rare while timestamps are on (the origin sees the
    /// SYN's timestamp is newer and reuses the 4-tuple at once).
    pub tcp_syn_stale_acks: u64,
    /// Segments refused by PAWS (RFC 7323: a timestamp older than the last
    /// one taken — an old duplicate), answered by an ACK and dropped.
    pub tcp_paws_rejected: u64,
    /// Transmit buffers grown because they capped a connection's flight.
    pub tcp_tx_buffers_grown: u64,
    /// Receive buffers grown because their window capped the peer's.
    pub tcp_rx_buffers_grown: u64,
    /// Growths the worker's `tcp_buffer_budget` refused.
    pub tcp_buffer_growth_refused: u64,
    /// Bytes grown buffers hold beyond the starting size (a gauge).
    pub tcp_buffer_grown_bytes: u64,
}

impl NetStats {
    /// The outcome of every polled frame, by name: they sum to `rx_frames`
    /// once the rx queue is empty.
    pub fn rx_outcomes(&self) -> [(&'static str, u64); 10] {
        [
            ("rx_handed", self.rx_handed),
            ("rx_rst_no_socket", self.rx_rst_no_socket),
            ("rx_drop_no_socket", self.rx_drop_no_socket),
            ("rx_drop_malformed", self.rx_drop_malformed),
            ("rx_drop_unknown_ethertype", self.rx_drop_unknown_ethertype),
            ("rx_drop_vlan", self.rx_drop_vlan),
            ("rx_drop_not_for_us", self.rx_drop_not_for_us),
            ("rx_drop_fragment", self.rx_drop_fragment),
            ("rx_drop_bad_datagram", self.rx_drop_bad_datagram),
            ("rx_drop_checksum", self.rx_drop_checksum),
        ]
    }

    /// Frames with an outcome (see [`Self::rx_outcomes`]).
    pub fn rx_accounted(&self) -> u64 {
        self.rx_outcomes().iter().map(|(_, v)| v).sum()
    }

    /// Name/value pairs in a stable order, for printing and metrics.
    pub fn fields(&self) -> [(&'static str, u64); 30] {
        let o = self.rx_outcomes();
        [
            ("rx_frames", self.rx_frames),
            o[0],
            o[1],
            o[2],
            o[3],
            o[4],
            o[5],
            o[6],
            o[7],
            o[8],
            o[9],
            ("rx_queue_full", self.rx_queue_full),
            ("tx_frames", self.tx_frames),
            ("tx_queue_full", self.tx_queue_full),
            ("accepted", self.accepted),
            ("overload_rejected", self.overload_rejected),
            ("sockets_created", self.sockets_created),
            ("sockets_parked", self.sockets_parked),
            ("sockets_open", self.sockets_open),
            ("upstream_ports_in_use", self.upstream_ports_in_use),
            ("socket_buffers_allocated", self.socket_buffers_allocated),
            ("socket_polls", self.socket_polls),
            ("tcp_fast_retransmits", self.tcp_fast_retransmits),
            ("tcp_retransmit_timeouts", self.tcp_retransmit_timeouts),
            ("tcp_syn_stale_acks", self.tcp_syn_stale_acks),
            ("tcp_paws_rejected", self.tcp_paws_rejected),
            ("tcp_tx_buffers_grown", self.tcp_tx_buffers_grown),
            ("tcp_rx_buffers_grown", self.tcp_rx_buffers_grown),
            ("tcp_buffer_growth_refused", self.tcp_buffer_growth_refused),
            ("tcp_buffer_grown_bytes", self.tcp_buffer_grown_bytes),
        ]
    }

    /// Field-wise sum, for totals across workers.
    pub fn add(&mut self, o: &NetStats) {
        // Destructured without `..`: a new field does not compile until it
        // is summed here (a forgotten one would total 0 across workers).
        let NetStats {
            rx_frames,
            rx_handed,
            rx_rst_no_socket,
            rx_drop_no_socket,
            rx_drop_malformed,
            rx_drop_unknown_ethertype,
            rx_drop_vlan,
            rx_drop_not_for_us,
            rx_drop_fragment,
            rx_drop_bad_datagram,
            rx_drop_checksum,
            rx_queue_full,
            tx_frames,
            tx_queue_full,
            accepted,
            overload_rejected,
            sockets_created,
            sockets_parked,
            sockets_open,
            upstream_ports_in_use,
            socket_buffers_allocated,
            socket_polls,
            tcp_fast_retransmits,
            tcp_retransmit_timeouts,
            tcp_syn_stale_acks,
            tcp_paws_rejected,
            tcp_tx_buffers_grown,
            tcp_rx_buffers_grown,
            tcp_buffer_growth_refused,
            tcp_buffer_grown_bytes,
        } = *o;
        self.rx_frames += rx_frames;
        self.rx_handed += rx_handed;
        self.rx_rst_no_socket += rx_rst_no_socket;
        self.rx_drop_no_socket += rx_drop_no_socket;
        self.rx_drop_malformed += rx_drop_malformed;
        self.rx_drop_unknown_ethertype += rx_drop_unknown_ethertype;
        self.rx_drop_vlan += rx_drop_vlan;
        self.rx_drop_not_for_us += rx_drop_not_for_us;
        self.rx_drop_fragment += rx_drop_fragment;
        self.rx_drop_bad_datagram += rx_drop_bad_datagram;
        self.rx_drop_checksum += rx_drop_checksum;
        self.rx_queue_full += rx_queue_full;
        self.tx_frames += tx_frames;
        self.tx_queue_full += tx_queue_full;
        self.accepted += accepted;
        self.overload_rejected += overload_rejected;
        self.sockets_created += sockets_created;
        self.sockets_parked += sockets_parked;
        self.sockets_open += sockets_open;
        self.upstream_ports_in_use += upstream_ports_in_use;
        self.socket_buffers_allocated += socket_buffers_allocated;
        self.socket_polls += socket_polls;
        self.tcp_fast_retransmits += tcp_fast_retransmits;
        self.tcp_retransmit_timeouts += tcp_retransmit_timeouts;
        self.tcp_syn_stale_acks += tcp_syn_stale_acks;
        self.tcp_paws_rejected += tcp_paws_rejected;
        self.tcp_tx_buffers_grown += tcp_tx_buffers_grown;
        self.tcp_rx_buffers_grown += tcp_rx_buffers_grown;
        self.tcp_buffer_growth_refused += tcp_buffer_growth_refused;
        self.tcp_buffer_grown_bytes += tcp_buffer_grown_bytes;
    }

    fn count_rx_drop(&mut self, why: RxDrop) {
        match why {
            RxDrop::Malformed => self.rx_drop_malformed += 1,
            RxDrop::UnknownEthertype => self.rx_drop_unknown_ethertype += 1,
            RxDrop::Vlan => self.rx_drop_vlan += 1,
            RxDrop::NotForUs => self.rx_drop_not_for_us += 1,
            RxDrop::Fragment => self.rx_drop_fragment += 1,
        }
    }
}

pub struct Net {
    cfg: NetConfig,
    iface: Interface,
    /// Given to smoltcp for frames that belong to no stream (ARP, ICMP,
    /// NDP, stray TCP that it answers with RST).
    no_sockets: SocketSet<'static>,
    sockets: SocketTable,
    rx: FrameQueue,
    tx: FrameQueue,
    scratch: Box<[u8]>,
    device_stats: DeviceStats,
    listen_ports: Vec<u16>,
    udp: UdpPorts,
    /// The sockets of the current pass (kept for its allocation).
    work: Vec<SockId>,
    ports: PortAllocator,
    neighbors: NeighborPrimer,
    stats: NetStats,
    pass: u64,
    now: Instant,
}

/// Passes over the sockets with work per `poll`, so one burst cannot
/// monopolise a worker; what is left stays queued for the next `poll`.
const MAX_ROUNDS: usize = 8;

/// Egress polls of one socket in a row: each sends at most one segment; the
/// window bounds it long before this does.
const MAX_EGRESS_SEGMENTS: usize = 256;

/// smoltcp retries a send that waited for a neighbour after this long
/// (`Meta::DISCOVERY_SILENT_TIME`); a socket whose next poll is exactly this
/// far away after an egress is (almost always) such a waiter.
const NEIGHBOUR_SILENCE: Duration = Duration::from_millis(1_000);

impl Net {
    /// An interface owning `cfg.addresses`, accepting connections on
    /// `listen_ports`.
    pub fn new(cfg: NetConfig, listen_ports: Vec<u16>, now: Instant) -> Result<Self, NetError> {
        let mac = EthernetAddress(cfg.mac);
        if !mac.is_unicast() {
            return Err(NetError::BadMac(cfg.mac));
        }
        if cfg.addresses.is_empty() {
            return Err(NetError::NoAddress);
        }
        if cfg.addresses.len() > 8 {
            return Err(NetError::TooManyAddresses);
        }
        if let Some(&p) = listen_ports.iter().find(|p| cfg.upstream_ports.contains(p)) {
            return Err(NetError::ListenerInPortRange(p));
        }
        let rx = FrameQueue::new(cfg.rx_queue_frames, 2048);
        let mut tx = FrameQueue::new(cfg.tx_queue_frames, 2048);
        let mut scratch = vec![0u8; 2048].into_boxed_slice();
        let mut device_stats = DeviceStats::default();
        let mut iface_cfg = Config::new(HardwareAddress::Ethernet(mac));
        iface_cfg.random_seed = cfg.random_seed;
        let iface = {
            let mut dev = QueueDevice {
                rx: None,
                tx: &mut tx,
                scratch: &mut scratch,
                stats: &mut device_stats,
                checksum_rx: cfg.verify_rx_checksums,
                checksum_tx_offload: cfg.tx_checksum_offload,
            };
            let mut iface = Interface::new(iface_cfg, &mut dev, now);
            iface.update_ip_addrs(|addrs| {
                for (ip, prefix) in &cfg.addresses {
                    let _ = addrs.push(IpCidr::new((*ip).into(), *prefix));
                }
            });
            if let Some(gw) = cfg.gateway_v4 {
                let _ = iface.routes_mut().add_default_ipv4_route(gw);
            }
            iface
        };
        let ports = PortAllocator::starting_at(cfg.upstream_ports.clone(), cfg.random_seed);
        Ok(Self {
            iface,
            no_sockets: SocketSet::new(Vec::new()),
            sockets: SocketTable::new(&cfg, now),
            rx,
            tx,
            scratch,
            device_stats,
            listen_ports,
            udp: UdpPorts::new(Vec::new(), cfg.upstream_ports.clone()),
            work: Vec::with_capacity(cfg.max_connections.saturating_mul(2)),
            ports,
            neighbors: NeighborPrimer::default(),
            stats: NetStats::default(),
            pass: 0,
            now,
            cfg,
        })
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// The UDP ports whose datagrams (to any of our addresses) go to the
    /// application ([`App::datagram`]); others are answered ICMP port
    /// unreachable.
    pub fn set_udp_ports(&mut self, ports: Vec<u16>) -> Result<(), NetError> {
        if let Some(&p) = ports.iter().find(|p| self.cfg.upstream_ports.contains(p)) {
            return Err(NetError::ListenerInPortRange(p));
        }
        self.udp = UdpPorts::new(ports, self.cfg.upstream_ports.clone());
        Ok(())
    }

    /// The time of the last `poll` (or of creation).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Addresses the application will connect to: their next hops are
    /// resolved ahead of time (and now).
    pub fn set_neighbour_targets(&mut self, targets: Vec<IpAddr>) {
        self.neighbors.set_targets(targets);
    }

    /// The streams, for an application call outside `poll` (a snapshot
    /// swap, a stop).
    pub fn streams(&mut self) -> Streams<'_> {
        Streams {
            sockets: &mut self.sockets,
            iface: self.iface.context(),
            ports: &mut self.ports,
            cfg: &self.cfg,
            now: self.now,
            pass: self.pass,
            tx: &mut self.tx,
            udp: &mut self.udp,
        }
    }

    /// Queues a received frame. False when the rx queue is full (counted);
    /// call `poll` after each burst so it never is.
    pub fn handle_frame(&mut self, frame: &[u8]) -> bool {
        if self.rx.push(frame) {
            self.stats.rx_frames += 1;
            true
        } else {
            self.stats.rx_queue_full += 1;
            false
        }
    }

    /// Whether a frame of `class` belongs to this stack while another
    /// engine (a binary upgrade's predecessor) still serves its own flows:
    /// a SYN to a listener, a segment of one of our sockets, a datagram to
    /// a listener or to a port we bound, and everything that is no flow's
    /// (ARP, ICMP, NDP). The rest is the predecessor's.
    pub fn claims(&self, class: &FrameClass) -> bool {
        match class {
            FrameClass::Tcp(m) => {
                (m.syn_only && self.listen_ports.contains(&m.key.local_port))
                    || self.sockets.lookup(&m.key).is_some()
            }
            FrameClass::Udp(m) => self.udp.takes(m.key.local_port),
            FrameClass::UdpUnreachable(k) => self.udp.takes(k.local_port),
            _ => true,
        }
    }

    /// A segment of a listener's connection that no socket of this stack
    /// holds (not a SYN that may open one): another worker's, when the
    /// flow came in on this worker's queue (an RSS table or a peer's flow
    /// hash changed). Unanswered here it would meet a RST.
    pub fn is_stray(&self, m: &TcpMeta) -> bool {
        !m.syn_only
            && self.listen_ports.contains(&m.key.local_port)
            && self.sockets.lookup(&m.key).is_none()
    }

    /// A binary upgrade's successor: until [`end_port_split`](Self::end_port_split),
    /// upstream connections use odd ports only and none of `held` (the
    /// predecessor's ports when it handed over).
    pub fn begin_port_split_successor(&mut self, held: &[u16]) {
        self.ports.keep_parity(1);
        self.ports.reserve_for_peer(held);
    }

    /// A binary upgrade's predecessor: from now on even ports only; returns
    /// the ports it holds (any parity), for the successor to avoid.
    pub fn begin_port_split_predecessor(&mut self) -> Vec<u16> {
        self.ports.keep_parity(0);
        self.ports.held()
    }

    /// The other engine is gone: the whole range is ours again.
    pub fn end_port_split(&mut self) {
        self.ports.end_split();
    }

    pub fn rx_pending(&self) -> usize {
        self.rx.len()
    }

    /// Takes in every queued frame, fires due timers, and runs the sockets
    /// and their owners that have work until quiescent (bounded).
    pub fn poll<A: App>(&mut self, now: Instant, app: &mut A) {
        self.now = now;
        self.iface.poll_maintenance(now);
        self.neighbors.run(&self.cfg, &mut self.tx, now);
        self.sockets.fire_timers(now);
        while let Some(idx) = self.rx.pop_index() {
            self.ingress(idx, now, app);
        }
        app.poll(self.streams());
        for _ in 0..MAX_ROUNDS {
            if !self.sockets.has_dirty() {
                break;
            }
            self.run_pass(now, app);
        }
        if std::mem::take(&mut self.udp.neighbour_missed) {
            // A datagram found no next hop (an entry expired or evicted):
            // ask again now rather than at the next refresh.
            self.neighbors.hurry(now);
        }
        self.stats.tx_queue_full = self.device_stats.tx_queue_full;
        self.stats.sockets_created = self.sockets.created() as u64;
        self.stats.sockets_parked = self.sockets.parked() as u64;
        self.stats.sockets_open = self.sockets.in_use() as u64;
        self.stats.upstream_ports_in_use = self.ports.in_use() as u64;
        self.stats.socket_buffers_allocated = self.sockets.buffers_allocated();
        (
            self.stats.tcp_fast_retransmits,
            self.stats.tcp_retransmit_timeouts,
            self.stats.tcp_syn_stale_acks,
            self.stats.tcp_paws_rejected,
        ) = self.sockets.retransmissions();
        let growth = self.sockets.growth();
        self.stats.tcp_tx_buffers_grown = growth.tx_grown;
        self.stats.tcp_rx_buffers_grown = growth.rx_grown;
        self.stats.tcp_buffer_growth_refused = growth.refused;
        self.stats.tcp_buffer_grown_bytes = self.sockets.grown_bytes() as u64;
    }

    /// Gives one received frame to smoltcp with the sockets it concerns: its
    /// stream's socket, a new socket listening for it (a SYN to a listening
    /// port), or none.
    fn ingress<A: App>(&mut self, idx: usize, now: Instant, app: &mut A) {
        let frame = self.rx.slot(idx);
        // What smoltcp would drop silently is dropped here, with a reason.
        let mac = EthernetAddress(self.cfg.mac);
        if let Err(why) = wire::rx_check(frame, mac, self.iface.ip_addrs()) {
            self.stats.count_rx_drop(why);
            return;
        }
        let class = wire::classify(frame);
        if self.datagram_ingress(idx, class, app) {
            return;
        }
        let frame = self.rx.slot(idx);
        let meta = match class {
            FrameClass::Tcp(m) => Some(m),
            _ => None,
        };
        // TCP checksums are verified here rather than inside smoltcp (which
        // then skips them): a corrupted segment is counted, and never
        // reaches, opens or resets a socket.
        let verified = meta.is_some() && self.cfg.verify_rx_checksums;
        if verified && !wire::tcp_checksums_ok(frame) {
            self.stats.rx_drop_checksum += 1;
            return;
        }
        let mut target: Option<SockId> = None;
        let mut opening = false;
        if let Some(m) = meta {
            target = self.sockets.lookup(&m.key);
            if m.syn_only
                && self.listen_ports.contains(&m.key.local_port)
                && self.iface.has_ip_addr(m.key.local)
            {
                if let Some(id) = target
                    && self.sockets.slot(id).owner == NO_OWNER
                {
                    // A new connection reusing the 4-tuple of one we are still
                    // closing: the old one has nothing left to say.
                    self.sockets.reclaim_if_done(id, &mut self.ports, now, true);
                    target = None;
                }
                if target.is_none() {
                    if !app.can_accept() {
                        // No socket: smoltcp answers the SYN with RST.
                        self.stats.overload_rejected += 1;
                    } else {
                        let id = self.sockets.take();
                        let sock = self.sockets.tcp(id);
                        // A slot from the table is always closed.
                        sock.listen(m.key.local_port)
                            .expect("idle socket is closed");
                        self.sockets.register(id, m.key);
                        target = Some(id);
                        opening = true;
                    }
                }
            }
        }
        let mut dev = QueueDevice {
            rx: Some(frame),
            tx: &mut self.tx,
            scratch: &mut self.scratch,
            stats: &mut self.device_stats,
            checksum_rx: self.cfg.verify_rx_checksums && !verified,
            checksum_tx_offload: self.cfg.tx_checksum_offload,
        };
        let Some(id) = target else {
            match meta {
                // TCP to us (rx_check) that no socket takes.
                Some(m) if m.rst => self.stats.rx_drop_no_socket += 1,
                Some(_) => self.stats.rx_rst_no_socket += 1,
                None => self.stats.rx_handed += 1,
            }
            self.iface
                .poll_ingress_single(now, &mut dev, &mut self.no_sockets);
            if matches!(class, FrameClass::Arp { .. } | FrameClass::NeighborAdvert) {
                // It may have taught us a neighbour someone is waiting for.
                self.sockets.wake_neighbour_waiters();
            }
            return;
        };
        // smoltcp never sees a socket without its buffers (a zero window).
        self.sockets.unpark(id);
        let slot = self.sockets.slot(id);
        self.iface.poll_ingress_single(now, &mut dev, &mut slot.set);
        self.stats.rx_handed += 1;
        self.stats.socket_polls += 1;
        if opening {
            if slot.tcp().state() == tcp::State::Listen {
                // smoltcp dropped the SYN (bad checksum, not for us).
                self.sockets.put_back(id);
                return;
            }
            self.accept(id, app);
        }
        self.sockets.mark(id);
    }

    /// UDP to a port of the application's, or ICMP unreachable about a
    /// datagram it sent: handed over without smoltcp. False: not such a
    /// frame (a datagram to another port gets smoltcp's port unreachable).
    fn datagram_ingress<A: App>(&mut self, idx: usize, class: FrameClass, app: &mut A) -> bool {
        let Net {
            rx,
            sockets,
            iface,
            ports,
            cfg,
            tx,
            udp,
            stats,
            now,
            pass,
            ..
        } = self;
        // The streams from the fields `rx` is not among (the frame stays
        // borrowed from it).
        macro_rules! streams {
            () => {
                Streams {
                    sockets,
                    iface: iface.context(),
                    ports,
                    cfg,
                    now: *now,
                    pass: *pass,
                    tx,
                    udp,
                }
            };
        }
        let for_app = match class {
            FrameClass::Udp(m) => udp.takes(m.key.local_port) && iface.has_ip_addr(m.key.local),
            FrameClass::UdpUnreachable(k) => {
                udp.is_bound(k.local_port) && iface.has_ip_addr(k.local)
            }
            _ => false,
        };
        if !for_app {
            return false;
        }
        // smoltcp's checks, which these frames no longer meet.
        if !crate::datagram::acceptable(rx.slot(idx), class, cfg.verify_rx_checksums, |a| {
            iface.has_ip_addr(a)
        }) {
            stats.rx_drop_bad_datagram += 1;
            return true;
        }
        match class {
            FrameClass::Udp(m) => {
                let frame = rx.slot(idx);
                let d = Datagram {
                    local: SocketAddr::new(ip_of(m.key.local), m.key.local_port),
                    remote: SocketAddr::new(ip_of(m.key.remote), m.key.remote_port),
                    peer_mac: frame[6..12].try_into().expect("rx_check: a full header"),
                    payload: m.payload(frame),
                };
                stats.rx_handed += 1;
                app.datagram(streams!(), &d);
                true
            }
            FrameClass::UdpUnreachable(k) => {
                stats.rx_handed += 1;
                let local = SocketAddr::new(ip_of(k.local), k.local_port);
                let remote = SocketAddr::new(ip_of(k.remote), k.remote_port);
                app.datagram_unreachable(streams!(), local, remote);
                true
            }
            _ => false,
        }
    }

    /// Hands a socket that has just received its SYN to the application.
    fn accept<A: App>(&mut self, id: SockId, app: &mut A) {
        self.stats.accepted += 1;
        let port = self.sockets.tcp(id).local_endpoint().map_or(0, |e| e.port);
        match app.accept(self.streams(), id, port) {
            Some(owner) => self.sockets.slot(id).owner = owner,
            None => {
                let (now, linger) = (self.now, self.cfg.linger);
                self.sockets.retire(id, None, true, now, linger);
            }
        }
    }

    /// One pass over the sockets with work: runs each one's owner (once per
    /// pass), sends what the socket has to send, and re-arms its timer.
    /// Sockets touched on the way join the same pass.
    fn run_pass<A: App>(&mut self, now: Instant, app: &mut A) {
        self.pass += 1;
        let mut work = std::mem::take(&mut self.work);
        let mut i = 0;
        loop {
            if i == work.len() {
                // Sockets marked while this pass ran (an owner's other
                // socket, a new connection) join it.
                self.sockets.take_dirty_append(&mut work);
                if i == work.len() {
                    break;
                }
            }
            let id = work[i];
            i += 1;
            self.process_socket(id, now, app);
        }
        work.clear();
        self.work = work;
        app.end_pass(self.streams());
    }

    fn process_socket<A: App>(&mut self, id: SockId, now: Instant, app: &mut A) {
        if !self.sockets.is_live(id) {
            self.sockets.unqueue(id);
            // An idle slot a stale stream access unparked.
            self.sockets.park_if_idle(id);
            return;
        }
        // A delayed ACK or a timer may make smoltcp send: with its buffers.
        self.sockets.unpark(id);
        // Before the owner writes or reads: the segments just taken in may
        // show that a buffer, not the path, capped the last flight.
        self.sockets.grow_if_capped(id);
        let owner = self.sockets.slot(id).owner;
        if owner != NO_OWNER {
            app.run(self.streams(), owner, id);
        }
        if !self.sockets.is_live(id) {
            self.sockets.unqueue(id);
            self.sockets.park_if_idle(id);
            return;
        }
        // Egress: everything the socket has to send now.
        let slot = self.sockets.slot(id);
        let mut dev = QueueDevice {
            rx: None,
            tx: &mut self.tx,
            scratch: &mut self.scratch,
            stats: &mut self.device_stats,
            checksum_rx: self.cfg.verify_rx_checksums,
            checksum_tx_offload: self.cfg.tx_checksum_offload,
        };
        let mut n = 0;
        while n < MAX_EGRESS_SEGMENTS {
            n += 1;
            if self.iface.poll_egress(now, &mut dev, &mut slot.set) == PollResult::None {
                break;
            }
        }
        self.stats.socket_polls += n as u64;
        let mut at = self.iface.poll_at(now, &slot.set);
        self.sockets.unqueue(id);
        if at == Some(now + NEIGHBOUR_SILENCE) {
            self.sockets.set_neighbour_wait(id);
        }
        if self
            .sockets
            .reclaim_if_done(id, &mut self.ports, now, false)
        {
            return;
        }
        let owner = self.sockets.slot(id).owner;
        let deadline = match owner {
            NO_OWNER => self.sockets.linger_until(id),
            _ => app.deadline(owner, id),
        };
        if let Some(d) = deadline {
            at = Some(at.map_or(d, |a| a.min(d)));
        }
        if let Some(d) = self.sockets.hold_grown_idle(id, now) {
            at = Some(at.map_or(d, |a| a.min(d)));
        }
        match at {
            Some(t) => self.sockets.timers.schedule(id, t),
            None => self.sockets.timers.cancel(id),
        }
        // Nothing buffered either way: the buffers wait in the pool until
        // the next frame, write or timer of this socket.
        self.sockets.park_if_idle(id);
    }

    /// Hands each queued outgoing frame to `send`, oldest first.
    pub fn drain_tx(&mut self, mut send: impl FnMut(&[u8])) -> usize {
        self.drain_tx_while(|f| {
            send(f);
            true
        })
    }

    /// Hands queued frames to `send` oldest first until it refuses one (a
    /// full NIC ring): that frame and those behind it stay queued, in
    /// order, for the next call, rather than be lost and left to a
    /// retransmission timeout.
    pub fn drain_tx_while(&mut self, mut send: impl FnMut(&[u8]) -> bool) -> usize {
        let mut n = 0;
        while self.tx.pop_if(&mut send) == Some(true) {
            n += 1;
        }
        self.stats.tx_frames += n as u64;
        n
    }

    /// Frames waiting to be sent.
    pub fn tx_pending(&self) -> usize {
        self.tx.len()
    }

    /// When `poll` should run next even without new frames (a soft deadline:
    /// it may be early, never late).
    pub fn poll_at<A: App>(&self, now: Instant, app: &A) -> Option<Instant> {
        if self.sockets.has_dirty() {
            return Some(now);
        }
        [
            self.sockets.timers.next_at(),
            self.neighbors.next_at(),
            app.poll_at(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    pub fn closing_sockets(&self) -> usize {
        self.sockets.closing()
    }

    pub fn upstream_ports_in_use(&self) -> usize {
        self.ports.in_use()
    }

    pub fn owns_address(&self, ip: IpAddr) -> bool {
        self.iface.has_ip_addr(ip)
    }
}
