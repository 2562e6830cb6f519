//! The per-worker stack: a smoltcp interface that owns the VIPs, listeners,
//! the proxy connections and their upstream connections. Sans-IO: frames and
//! time go in (`handle_frame`, `poll(now)`), frames come out (`drain_tx`).
//!
//! Work is proportional to events, not to open connections: each frame is
//! demultiplexed by its 4-tuple to the one socket it belongs to (see
//! `sockets.rs`) and given to smoltcp together with that socket alone; only
//! sockets that received a frame, were touched by their connection, or whose
//! timer came due are polled for egress, and only their connections run.

use crate::access::AccessSink;
use std::net::IpAddr;
use std::sync::Arc;

use smoltcp::iface::{Config, Interface, PollResult, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

use crate::client_io::ClientIo;
use crate::config::StackConfig;
use crate::device::{DeviceStats, FrameQueue, QueueDevice};
use crate::neighbors::NeighborPrimer;
use crate::ports::PortAllocator;
use crate::probe::{ProbeCtx, Prober};
use crate::proxy::{Conn, ConnBufs, Ctx};
use crate::route::RouteTable;
use crate::sockets::{NO_OWNER, SockId, SocketTable};
use crate::stats::StackStats;
use crate::upstream::conn_pool::{Closer, ConnPool, POOLED};
use crate::upstream::{RouteCounters, UpstreamRegistry, UpstreamStats};
use crate::wire::{self, FrameClass};

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("invalid MAC address {0:02x?}: must be unicast")]
    BadMac([u8; 6]),
    #[error("no service address configured")]
    NoAddress,
    #[error("more than 8 service addresses per worker")]
    TooManyAddresses,
    #[error("listener port {0} lies inside the upstream port range")]
    ListenerInPortRange(u16),
}

/// A connection and the pass it was last driven in (each runs at most once
/// per pass, however many of its sockets had events).
struct ConnSlot {
    conn: Option<Conn>,
    pass: u64,
}

pub struct Stack {
    cfg: StackConfig,
    iface: Interface,
    /// Given to smoltcp for frames that belong to no connection (ARP, ICMP,
    /// NDP, stray TCP that it answers with RST).
    no_sockets: SocketSet<'static>,
    sockets: SocketTable,
    rx: FrameQueue,
    tx: FrameQueue,
    scratch: Box<[u8]>,
    device_stats: DeviceStats,
    routes: Arc<RouteTable>,
    listen_ports: Vec<u16>,
    conns: Vec<ConnSlot>,
    free_conns: Vec<u32>,
    active: usize,
    /// Connections whose run made progress in this pass: run again in the
    /// next one (a run is bounded, and may stop before it is out of work).
    redrive: Vec<u32>,
    /// The sockets of the current pass (kept for its allocation).
    work: Vec<SockId>,
    spare_bufs: Vec<ConnBufs>,
    ports: PortAllocator,
    rr_cursor: usize,
    /// Pool runtime state (health, breakers, budgets), survives snapshots.
    registry: UpstreamRegistry,
    /// Idle upstream connections, reused across client connections.
    conn_pool: ConnPool,
    route_stats: RouteCounters,
    request_seq: u64,
    access: AccessSink,
    id_tag: u32,
    prober: Prober,
    neighbors: NeighborPrimer,
    stats: StackStats,
    pass: u64,
    linger: Duration,
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

impl Stack {
    pub fn new(
        cfg: StackConfig,
        routes: Arc<RouteTable>,
        now: Instant,
    ) -> Result<Self, StackError> {
        let mac = EthernetAddress(cfg.mac);
        if !mac.is_unicast() {
            return Err(StackError::BadMac(cfg.mac));
        }
        if cfg.addresses.is_empty() {
            return Err(StackError::NoAddress);
        }
        if cfg.addresses.len() > 8 {
            return Err(StackError::TooManyAddresses);
        }
        for l in &routes.listeners {
            if cfg.upstream_ports.contains(&l.port) {
                return Err(StackError::ListenerInPortRange(l.port));
            }
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
        let max = cfg.max_connections;
        Ok(Self {
            iface,
            no_sockets: SocketSet::new(Vec::new()),
            sockets: SocketTable::new(&cfg, now),
            rx,
            tx,
            scratch,
            device_stats,
            routes: routes.clone(),
            listen_ports: routes.listeners.iter().map(|l| l.port).collect(),
            conns: Vec::with_capacity(max),
            free_conns: Vec::with_capacity(max),
            active: 0,
            redrive: Vec::with_capacity(max),
            work: Vec::with_capacity(max.saturating_mul(2)),
            spare_bufs: Vec::with_capacity(max),
            ports,
            rr_cursor: cfg.random_seed as usize,
            registry: {
                let mut r = UpstreamRegistry::new();
                r.sync(&routes.upstreams, now);
                r
            },
            route_stats: {
                let mut c = RouteCounters::default();
                c.sync(&routes);
                c
            },
            conn_pool: ConnPool::new(),
            request_seq: 0,
            access: AccessSink::default(),
            prober: Prober::default(),
            neighbors: NeighborPrimer::default(),
            id_tag: (cfg.random_seed ^ (cfg.random_seed >> 32)) as u32,
            stats: StackStats::default(),
            pass: 0,
            linger: Duration::from_micros(cfg.timeouts.linger.as_micros() as u64),
            now,
            cfg,
        })
    }

    pub fn config(&self) -> &StackConfig {
        &self.cfg
    }

    /// Replaces the routing snapshot. Listener ports are fixed at creation;
    /// routes and pools change for every request that starts afterwards.
    /// Sends one record per response to `sink` (the engine's access-log
    /// queue of this worker).
    pub fn set_access_log(&mut self, sink: AccessSink) {
        self.access = sink;
    }

    pub fn set_routes(&mut self, routes: Arc<RouteTable>) {
        self.registry.sync(&routes.upstreams, self.now);
        self.conn_pool.retain_current(
            &routes.upstreams,
            &mut Closer {
                sockets: &mut self.sockets,
                now: self.now,
                linger: self.linger,
            },
        );
        self.route_stats.sync(&routes);
        self.routes = routes;
        self.neighbors.soon();
    }

    /// Per-pool and per-endpoint counters and states of this worker.
    pub fn upstream_stats(&self) -> UpstreamStats {
        self.registry.stats(self.now)
    }

    /// Per-route counters of this worker (aligned with its snapshot).
    pub fn route_stats(&self) -> &RouteCounters {
        &self.route_stats
    }

    pub fn routes(&self) -> &Arc<RouteTable> {
        &self.routes
    }

    /// Queues a received frame. False when the rx queue is full (counted);
    /// call `poll` after each burst so it never is. Each queued frame gets
    /// one `rx_*` outcome when polled (`StackStats::rx_outcomes`).
    pub fn handle_frame(&mut self, frame: &[u8]) -> bool {
        if self.rx.push(frame) {
            self.stats.rx_frames += 1;
            true
        } else {
            self.stats.rx_queue_full += 1;
            false
        }
    }

    /// For a clean stop: ends every idle pooled upstream connection with a
    /// FIN, so origins do not keep them open until their own timeout (and
    /// a new engine's first connections never meet their 4-tuples). Keep
    /// polling and draining tx for a moment after, for the FIN exchange.
    pub fn close_idle_upstreams(&mut self, now: Instant) {
        self.conn_pool.close_all(&mut Closer {
            sockets: &mut self.sockets,
            now,
            linger: self.linger,
        });
        self.poll(now);
    }

    pub fn rx_pending(&self) -> usize {
        self.rx.len()
    }

    /// Takes in every queued frame, fires due timers, and runs the sockets
    /// and connections that have work until quiescent (bounded).
    pub fn poll(&mut self, now: Instant) {
        self.now = now;
        self.iface.poll_maintenance(now);
        self.neighbors
            .run(&self.cfg, &self.routes, &mut self.tx, now);
        self.sockets.fire_timers(now);
        while let Some(idx) = self.rx.pop_index() {
            self.ingress(idx, now);
        }
        self.prober.run(
            &mut ProbeCtx {
                sockets: &mut self.sockets,
                iface: self.iface.context(),
                ports: &mut self.ports,
                registry: &mut self.registry,
                cfg: &self.cfg,
                linger: self.linger,
                conn_pool: &mut self.conn_pool,
            },
            &self.routes,
            now,
        );
        for _ in 0..MAX_ROUNDS {
            if !self.sockets.has_dirty() {
                break;
            }
            self.run_pass(now);
        }
        self.stats.active_connections = self.active as u64;
        let pc = self.conn_pool.counters;
        self.stats.upstream_idle = self.conn_pool.len() as u64;
        self.stats.upstream_pool_released = pc.released;
        self.stats.upstream_pool_surplus = pc.surplus;
        self.stats.upstream_pool_stale = pc.stale;
        self.stats.upstream_pool_expired = pc.expired;
        self.stats.upstream_pool_evicted = pc.evicted;
        self.stats.tx_queue_full = self.device_stats.tx_queue_full;
        self.stats.sockets_created = self.sockets.created() as u64;
    }

    /// Gives one received frame to smoltcp with the sockets it concerns: its
    /// connection's socket, a new socket listening for it (a SYN to a
    /// listener), or none.
    fn ingress(&mut self, idx: usize, now: Instant) {
        let frame = self.rx.slot(idx);
        // What smoltcp would drop silently is dropped here, with a reason.
        let mac = EthernetAddress(self.cfg.mac);
        if let Err(why) = wire::rx_check(frame, mac, self.iface.ip_addrs()) {
            self.stats.count_rx_drop(why);
            return;
        }
        let class = wire::classify(frame);
        let meta = match class {
            FrameClass::Tcp(m) => Some(m),
            _ => None,
        };
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
                    if self.active >= self.cfg.max_connections {
                        // No socket: smoltcp answers the SYN with RST.
                        self.stats.overload_rejected += 1;
                    } else {
                        let id = self.sockets.take(&self.cfg);
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
            checksum_rx: self.cfg.verify_rx_checksums,
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
            self.accept(id, now);
        }
        self.sockets.mark(id);
    }

    /// Starts a connection on a socket that has just received its SYN.
    fn accept(&mut self, id: SockId, now: Instant) {
        self.stats.accepted += 1;
        let port = self.sockets.tcp(id).local_endpoint().map_or(0, |e| e.port);
        let bufs = self
            .spare_bufs
            .pop()
            .unwrap_or_else(|| ConnBufs::new(self.cfg.head_buffer));
        let tls = self.routes.listener(port).and_then(|l| l.tls.as_ref());
        let Some(io) = ClientIo::for_listener(tls) else {
            self.spare_bufs.push(bufs);
            self.sockets.retire(id, None, true, now, self.linger);
            return;
        };
        let conn = Conn::new(id, port, bufs, &self.cfg, now, io);
        let idx = match self.free_conns.pop() {
            Some(i) => {
                self.conns[i as usize].conn = Some(conn);
                i
            }
            None => {
                self.conns.push(ConnSlot {
                    conn: Some(conn),
                    pass: 0,
                });
                (self.conns.len() - 1) as u32
            }
        };
        self.active += 1;
        self.sockets.slot(id).owner = idx;
    }

    /// One pass over the sockets with work: runs each one's connection (once
    /// per pass), sends what the socket has to send, and re-arms its timer.
    /// Sockets touched on the way join the same pass.
    fn run_pass(&mut self, now: Instant) {
        self.pass += 1;
        let mut work = std::mem::take(&mut self.work);
        let mut i = 0;
        loop {
            if i == work.len() {
                // Sockets marked while this pass ran (a connection's other
                // socket, a new upstream) join it.
                self.sockets.take_dirty_append(&mut work);
                if i == work.len() {
                    break;
                }
            }
            let id = work[i];
            i += 1;
            self.process_socket(id, now);
        }
        work.clear();
        self.work = work;
        for idx in self.redrive.drain(..) {
            if let Some(c) = &self.conns[idx as usize].conn {
                self.sockets.mark(c.sockets().0);
            }
        }
    }

    fn process_socket(&mut self, id: SockId, now: Instant) {
        if !self.sockets.is_live(id) {
            self.sockets.unqueue(id);
            return;
        }
        let owner = self.sockets.slot(id).owner;
        if owner == POOLED {
            // An idle pooled connection: the origin may have closed it.
            self.conn_pool.check(
                id,
                &mut Closer {
                    sockets: &mut self.sockets,
                    now,
                    linger: self.linger,
                },
            );
        } else if owner != NO_OWNER && self.conns[owner as usize].pass != self.pass {
            self.drive(owner, now);
        }
        if !self.sockets.is_live(id) {
            self.sockets.unqueue(id);
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
            POOLED => self.conn_pool.idle_until(id),
            // The connection's own deadline rides on its client socket.
            _ => self.conns[owner as usize]
                .conn
                .as_ref()
                .filter(|c| c.sockets().0 == id)
                .map(Conn::deadline),
        };
        if let Some(d) = deadline {
            at = Some(at.map_or(d, |a| a.min(d)));
        }
        match at {
            Some(t) => self.sockets.timers.schedule(id, t),
            None => self.sockets.timers.cancel(id),
        }
    }

    /// Runs one connection's state machine; releases it when it has finished.
    fn drive(&mut self, idx: u32, now: Instant) {
        let slot = &mut self.conns[idx as usize];
        slot.pass = self.pass;
        let Some(conn) = slot.conn.as_mut() else {
            return;
        };
        self.stats.conn_drives += 1;
        let mut cx = Ctx {
            sockets: &mut self.sockets,
            iface: self.iface.context(),
            conn: idx,
            ports: &mut self.ports,
            routes: &self.routes,
            stats: &mut self.stats,
            cfg: &self.cfg,
            rr_cursor: &mut self.rr_cursor,
            registry: &mut self.registry,
            conn_pool: &mut self.conn_pool,
            route_stats: &mut self.route_stats,
            request_seq: &mut self.request_seq,
            access: &self.access,
            id_tag: self.id_tag,
            now,
        };
        let progressed = conn.drive(&mut cx);
        let (client, upstream) = conn.sockets();
        if conn.is_finished() {
            let conn = slot.conn.take().expect("finished connection");
            let (bufs, client, upstream) = conn.into_parts();
            self.sockets.retire(client, None, false, now, self.linger);
            if let Some((h, port)) = upstream {
                self.sockets.retire(h, Some(port), false, now, self.linger);
            }
            self.spare_bufs.push(bufs);
            self.free_conns.push(idx);
            self.active -= 1;
            return;
        }
        // Whatever it wrote is sent, and its timers re-armed, in this pass.
        self.sockets.mark(client);
        if let Some(u) = upstream {
            self.sockets.mark(u);
        }
        if progressed {
            self.redrive.push(idx);
        }
    }

    /// Hands each queued outgoing frame to `send`, oldest first.
    pub fn drain_tx(&mut self, mut send: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while self.tx.pop_with(&mut send).is_some() {
            n += 1;
        }
        self.stats.tx_frames += n as u64;
        n
    }

    /// When `poll` should run next even without new frames (a soft deadline:
    /// it may be early, never late).
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        if self.sockets.has_dirty() {
            return Some(now);
        }
        self.sockets.timers.next_at()
    }

    pub fn stats(&self) -> &StackStats {
        &self.stats
    }

    pub fn active_connections(&self) -> usize {
        self.active
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
