//! The per-worker stack: a smoltcp interface that owns the VIPs, listeners,
//! the proxy connections and their upstream connections. Sans-IO: frames and
//! time go in (`handle_frame`, `poll(now)`), frames come out (`drain_tx`).

use std::net::IpAddr;
use std::sync::Arc;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

use crate::config::StackConfig;
use crate::device::{DeviceStats, FrameQueue, QueueDevice};
use crate::ports::PortAllocator;
use crate::proxy::{Conn, ConnBufs, Ctx};
use crate::route::RouteTable;
use crate::sockets::SocketPool;
use crate::stats::StackStats;

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

struct ListenSlot {
    port: u16,
    sockets: Vec<SocketHandle>,
}

pub struct Stack {
    cfg: StackConfig,
    iface: Interface,
    sockets: SocketSet<'static>,
    rx: FrameQueue,
    tx: FrameQueue,
    scratch: Box<[u8]>,
    device_stats: DeviceStats,
    routes: Arc<RouteTable>,
    listeners: Vec<ListenSlot>,
    conns: Vec<Conn>,
    spare_bufs: Vec<ConnBufs>,
    pool: SocketPool,
    ports: PortAllocator,
    rr_cursor: usize,
    stats: StackStats,
    now: Instant,
}

/// Rounds of ingress → application → egress per `poll`, so one burst cannot
/// monopolise a worker.
const MAX_ROUNDS: usize = 8;

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
        let mut rx = FrameQueue::new(cfg.rx_queue_frames, 2048);
        let mut tx = FrameQueue::new(cfg.tx_queue_frames, 2048);
        let mut scratch = vec![0u8; 2048].into_boxed_slice();
        let mut device_stats = DeviceStats::default();
        let mut iface_cfg = Config::new(HardwareAddress::Ethernet(mac));
        iface_cfg.random_seed = cfg.random_seed;
        let iface = {
            let mut dev = QueueDevice {
                rx: &mut rx,
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
        let ports = PortAllocator::new(cfg.upstream_ports.clone());
        let mut stack = Self {
            iface,
            sockets: SocketSet::new(Vec::new()),
            rx,
            tx,
            scratch,
            device_stats,
            routes: routes.clone(),
            listeners: Vec::new(),
            conns: Vec::new(),
            spare_bufs: Vec::new(),
            pool: SocketPool::default(),
            ports,
            rr_cursor: cfg.random_seed as usize,
            stats: StackStats::default(),
            now,
            cfg,
        };
        for l in &routes.listeners {
            let mut slot = ListenSlot {
                port: l.port,
                sockets: Vec::with_capacity(stack.cfg.listen_backlog),
            };
            for _ in 0..stack.cfg.listen_backlog.max(1) {
                let h = stack.pool.take(&mut stack.sockets, &stack.cfg);
                listen(&mut stack.sockets, h, l.port);
                slot.sockets.push(h);
            }
            stack.listeners.push(slot);
        }
        Ok(stack)
    }

    pub fn config(&self) -> &StackConfig {
        &self.cfg
    }

    /// Replaces the routing snapshot. Listener ports are fixed at creation;
    /// routes and pools change for every request that starts afterwards.
    pub fn set_routes(&mut self, routes: Arc<RouteTable>) {
        self.routes = routes;
    }

    pub fn routes(&self) -> &Arc<RouteTable> {
        &self.routes
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

    pub fn rx_pending(&self) -> usize {
        self.rx.len()
    }

    /// Runs the interface and every connection until quiescent (bounded).
    pub fn poll(&mut self, now: Instant) {
        self.now = now;
        for round in 0..MAX_ROUNDS {
            let changed = self.poll_interface(now);
            self.pool.reclaim(
                &mut self.sockets,
                &mut self.ports,
                now,
                Duration::from_micros(self.cfg.timeouts.linger.as_micros() as u64),
            );
            let accepted = self.accept(now);
            let progressed = self.drive(now);
            if !changed && !accepted && !progressed {
                break;
            }
            if round + 1 == MAX_ROUNDS {
                // Flush what the last round produced.
                self.poll_interface(now);
            }
        }
        self.stats.active_connections = self.conns.len() as u64;
        self.stats.tx_queue_full = self.device_stats.tx_queue_full;
        self.stats.sockets_created = self.pool.created() as u64;
    }

    fn poll_interface(&mut self, now: Instant) -> bool {
        let mut dev = QueueDevice {
            rx: &mut self.rx,
            tx: &mut self.tx,
            scratch: &mut self.scratch,
            stats: &mut self.device_stats,
            checksum_rx: self.cfg.verify_rx_checksums,
        };
        let r = self.iface.poll(now, &mut dev, &mut self.sockets);
        r == smoltcp::iface::PollResult::SocketStateChanged
    }

    /// Hands every listening socket that left LISTEN to a new connection, and
    /// puts a fresh listening socket in its place.
    fn accept(&mut self, now: Instant) -> bool {
        let mut any = false;
        for slot in &mut self.listeners {
            for h in slot.sockets.iter_mut() {
                let state = self.sockets.get::<tcp::Socket<'static>>(*h).state();
                if state == tcp::State::Listen {
                    continue;
                }
                any = true;
                let taken = *h;
                let fresh = self.pool.take(&mut self.sockets, &self.cfg);
                listen(&mut self.sockets, fresh, slot.port);
                *h = fresh;
                if state == tcp::State::Closed {
                    // Handshake failed (RST): just recycle.
                    self.pool.put_closed(&mut self.sockets, taken);
                    continue;
                }
                if self.conns.len() >= self.cfg.max_connections {
                    self.stats.overload_rejected += 1;
                    self.pool.retire(&mut self.sockets, taken, None, true, now);
                    continue;
                }
                self.stats.accepted += 1;
                let bufs = self
                    .spare_bufs
                    .pop()
                    .unwrap_or_else(|| ConnBufs::new(self.cfg.head_buffer));
                self.conns
                    .push(Conn::new(taken, slot.port, bufs, &self.cfg, now));
            }
        }
        any
    }

    fn drive(&mut self, now: Instant) -> bool {
        let mut progressed = false;
        let routes = self.routes.clone();
        let mut cx = Ctx {
            sockets: &mut self.sockets,
            iface: self.iface.context(),
            pool: &mut self.pool,
            ports: &mut self.ports,
            routes: &routes,
            stats: &mut self.stats,
            cfg: &self.cfg,
            rr_cursor: &mut self.rr_cursor,
            now,
        };
        let mut i = 0;
        while i < self.conns.len() {
            progressed |= self.conns[i].drive(&mut cx);
            if self.conns[i].is_finished() {
                let conn = self.conns.swap_remove(i);
                let (bufs, client, upstream) = conn.into_parts();
                cx.pool.retire(cx.sockets, client, None, false, now);
                if let Some((h, port)) = upstream {
                    cx.pool.retire(cx.sockets, h, Some(port), false, now);
                }
                self.spare_bufs.push(bufs);
                progressed = true;
            } else {
                i += 1;
            }
        }
        progressed
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

    /// When `poll` should run next even without new frames.
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        let iface = self.iface.poll_at(now, &self.sockets);
        let conns = self.conns.iter().map(Conn::deadline).min();
        match (iface, conns) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn stats(&self) -> &StackStats {
        &self.stats
    }

    pub fn active_connections(&self) -> usize {
        self.conns.len()
    }

    pub fn closing_sockets(&self) -> usize {
        self.pool.closing()
    }

    pub fn upstream_ports_in_use(&self) -> usize {
        self.ports.in_use()
    }

    pub fn owns_address(&self, ip: IpAddr) -> bool {
        self.iface.has_ip_addr(ip)
    }
}

fn listen(sockets: &mut SocketSet<'static>, h: SocketHandle, port: u16) {
    let sock = sockets.get_mut::<tcp::Socket<'static>>(h);
    // A socket from the pool is always Closed, so listen cannot fail.
    sock.listen(port).expect("pooled socket is closed");
}
