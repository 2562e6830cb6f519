//! The per-worker stack: the TCP/IP layer (`ferrogate-net`) with the HTTP
//! proxy as its application. Sans-IO: frames and time go in
//! (`handle_frame`, `poll(now)`), frames come out (`drain_tx`).
//!
//! [`ProxyApp`] owns the proxy's state (connections, the upstream pool, the
//! health prober, the pools' runtime registry); the net layer calls it when
//! a connection arrives or one of its streams has events.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::access::AccessSink;
use crate::cache::{CacheHandle, CacheSettings, ClockAnchor, EdgeCache};
use crate::client_io::ClientIo;
use crate::config::StackConfig;
use crate::h2_session::H2Conn;
use crate::h3_session::QuicListener;
use crate::l4_session::L4Conn;
use crate::lb::conn_pool::{ConnPool, POOLED};
use crate::lb::{UpstreamRegistry, UpstreamStats};
use crate::net::{App, Datagram, Instant, Net, NetError, Owner, StreamId, Streams};
use crate::phases::{ProxyHttp, StandardPhases};
use crate::probe::{ProbeCtx, Prober};
use crate::proxy::{Conn, ConnBufs, Ctx};
use crate::quota::Quota;
use crate::revalidation::{Background, Revalidation};
use crate::route::RouteTable;
use crate::route_stats::RouteCounters;
use crate::stats::StackStats;
use crate::udp_session::{UdpCx, UdpProxy};

/// Why a stack cannot start (the TCP/IP layer's reasons).
pub type StackError = NetError;

/// A client connection, in the protocol it speaks. HTTP/1 is inline: it is
/// the common case, and boxing it would cost an allocation per connection.
#[allow(clippy::large_enum_variant)]
enum Session<P: ProxyHttp> {
    H1(Conn<P>),
    H2(Box<H2Conn<P>>),
    /// A TCP listener's connection, spliced to its pool.
    Tcp(Box<L4Conn>),
    /// An HTTP/3 port's QUIC endpoint and its requests: no client TCP
    /// stream; its timers ride on `App::poll_at`.
    H3(Box<QuicListener<P>>),
    /// A background revalidation (`stale-while-revalidate`): one upstream
    /// exchange feeding the cache, no client. Not counted in `active`.
    Revalidation(Box<Revalidation>),
}

impl<P: ProxyHttp> Session<P> {
    fn client(&self) -> Option<StreamId> {
        match self {
            Session::H1(c) => Some(c.sockets().0),
            Session::H2(c) => Some(c.client()),
            Session::Tcp(c) => Some(c.client()),
            Session::H3(_) | Session::Revalidation(_) => None,
        }
    }

    /// The stream that wakes the session to run again (`end_pass`).
    fn wake(&self) -> Option<StreamId> {
        match self {
            Session::Revalidation(r) => r.upstream().map(|(h, _)| h),
            s => s.client(),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self {
            Session::H1(c) => Some(c.deadline()),
            Session::H2(c) => Some(c.deadline()),
            Session::Tcp(c) => Some(c.deadline()),
            Session::H3(_) | Session::Revalidation(_) => None,
        }
    }
}

/// A connection and the pass it was last driven in (each runs at most once
/// per pass, however many of its streams had events).
struct ConnSlot<P: ProxyHttp> {
    conn: Option<Session<P>>,
    pass: u64,
}

/// The HTTP proxy as the net layer's application.
struct ProxyApp<P: ProxyHttp> {
    /// What each request goes through (routing, header rules, logging).
    phases: P,
    cfg: StackConfig,
    routes: Arc<RouteTable>,
    conns: Vec<ConnSlot<P>>,
    free_conns: Vec<u32>,
    active: usize,
    /// Connections whose run made progress in this pass: run again in the
    /// next one (a run is bounded, and may stop before it is out of work).
    redrive: Vec<u32>,
    spare_bufs: Vec<ConnBufs>,
    rr_cursor: usize,
    /// Pool runtime state (health, breakers, budgets), survives snapshots.
    registry: UpstreamRegistry,
    /// Rate-limit buckets, shared with the engine's other workers.
    quota: Arc<Quota>,
    /// The response cache, shared with the engine's other workers.
    cache: CacheHandle,
    /// Idle upstream connections, reused across client connections.
    conn_pool: ConnPool,
    route_stats: RouteCounters,
    request_seq: u64,
    access: AccessSink,
    id_tag: u32,
    prober: Prober,
    stats: StackStats,
    /// Open connections per TCP listener port (for `max_connections`).
    l4_open: Vec<(u16, usize)>,
    /// The splice's copy buffer, lent to each TCP connection's run.
    l4_scratch: Vec<u8>,
    /// UDP listeners' sessions.
    udp: UdpProxy,
    /// The slots of the HTTP/3 ports' endpoints (`Session::H3`).
    h3: Vec<u32>,
    /// A graceful stop: new connections are refused, responses close
    /// their connections, idle ones close (`Stack::begin_drain`).
    draining: bool,
    /// This worker's instances of the snapshot's proxy-wasm plugins.
    plugins: crate::plugin_phase::WorkerPlugins,
    /// Background revalidations asked for and running.
    background: Background,
}

/// The splice's copy unit.
const L4_SCRATCH: usize = 16 * 1024;

impl<P: ProxyHttp> App for ProxyApp<P> {
    fn can_accept(&self) -> bool {
        self.active < self.cfg.net.max_connections
    }

    fn accept(&mut self, _net: Streams<'_>, id: StreamId, port: u16) -> Option<Owner> {
        if self.draining {
            // Reset: a client (or a balancer in front) goes elsewhere.
            self.stats.drain_refused += 1;
            return None;
        }
        if let Some(listener) = self.routes.listener(port)
            && let Some(l4) = listener.l4.as_ref()
        {
            let open = match self.l4_open.iter_mut().position(|(p, _)| *p == port) {
                Some(i) => &mut self.l4_open[i].1,
                None => {
                    self.l4_open.push((port, 0));
                    &mut self.l4_open.last_mut().expect("pushed").1
                }
            };
            if l4.max_connections.is_some_and(|max| *open >= max) {
                self.stats.l4.refused_over_limit += 1;
                return None;
            }
            let conn = L4Conn::new(id, port, l4, listener.tls.as_ref(), _net.now())?;
            *open += 1;
            return Some(self.insert(Session::Tcp(Box::new(conn))));
        }
        let tls = self.routes.listener(port).and_then(|l| l.tls.as_ref());
        let io = ClientIo::for_listener(tls)?;
        // Buffers are lent by `drive` when there is something to read.
        let mut conn = Conn::new(id, port, ConnBufs::none(), &self.cfg, _net.now(), io);
        if self.routes.listener(port).is_some_and(|l| l.http2) {
            conn.allow_h2c();
        }
        Some(self.insert(Session::H1(conn)))
    }

    fn run(&mut self, mut net: Streams<'_>, owner: Owner, id: StreamId) {
        if owner == POOLED {
            // An idle pooled connection: the origin may have closed it.
            self.conn_pool.check(id, &mut net);
        } else if self.conns[owner as usize].pass != net.pass() {
            self.drive(owner, net);
        }
    }

    fn deadline(&self, owner: Owner, id: StreamId) -> Option<Instant> {
        if owner == POOLED {
            return self.conn_pool.idle_until(id);
        }
        // The connection's own deadline rides on its client stream; a
        // background revalidation's on its upstream socket.
        let conn = self.conns[owner as usize].conn.as_ref();
        if let Some(Session::Revalidation(r)) = conn {
            return (r.upstream().map(|(h, _)| h) == Some(id)).then(|| r.deadline());
        }
        conn.filter(|c| c.client() == Some(id))
            .and_then(Session::deadline)
    }

    fn poll(&mut self, mut net: Streams<'_>) {
        let now = net.now();
        if self.plugins.next_tick().is_some_and(|t| t <= now) {
            self.plugins.tick(now, &mut self.stats);
        }
        if self.udp.next_expiry().is_some_and(|t| t <= now) {
            let (udp, mut cx) = self.udp_cx();
            udp.expire(&mut net, &mut cx);
        }
        for i in 0..self.h3.len() {
            let idx = self.h3[i];
            let due = match &self.conns[idx as usize].conn {
                Some(Session::H3(l)) => l.due(now),
                _ => false,
            };
            if due {
                self.drive(idx, net.reborrow());
            }
        }
        self.h3
            .retain(|&idx| self.conns[idx as usize].conn.is_some());
        self.prober.run(
            &mut ProbeCtx {
                net,
                registry: &mut self.registry,
                conn_pool: &mut self.conn_pool,
            },
            &self.routes,
            now,
        );
    }

    fn poll_at(&self) -> Option<Instant> {
        [
            self.prober.next_at(&self.routes),
            self.udp.next_expiry(),
            self.plugins.next_tick(),
            self.h3_next(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn datagram(&mut self, mut net: Streams<'_>, d: &Datagram<'_>) {
        for &idx in &self.h3 {
            if let Some(Session::H3(l)) = &mut self.conns[idx as usize].conn
                && l.port() == d.local.port()
            {
                // Answered in this poll, once the burst is in.
                l.datagram(d, net.now(), &mut self.stats);
                return;
            }
        }
        let (udp, mut cx) = self.udp_cx();
        udp.datagram(&mut net, &mut cx, d);
    }

    fn datagram_unreachable(
        &mut self,
        mut net: Streams<'_>,
        local: SocketAddr,
        remote: SocketAddr,
    ) {
        let (udp, mut cx) = self.udp_cx();
        udp.unreachable(&mut net, &mut cx, local, remote);
    }

    fn end_pass(&mut self, mut net: Streams<'_>) {
        for idx in self.redrive.drain(..) {
            if let Some(client) = self.conns[idx as usize]
                .conn
                .as_ref()
                .and_then(Session::wake)
            {
                net.mark(client);
            }
        }
    }
}

/// Buffer sets a worker keeps for the connections it drives next; beyond
/// this, buffers of connections that finish or go idle are freed.
const SPARE_CONN_BUFS: usize = 256;

fn keep_spare(spare: &mut Vec<ConnBufs>, bufs: ConnBufs) {
    if bufs.is_held() && spare.len() < SPARE_CONN_BUFS {
        spare.push(bufs);
    }
}

impl<P: ProxyHttp> ProxyApp<P> {
    /// When an HTTP/3 endpoint must run next.
    fn h3_next(&self) -> Option<Instant> {
        self.h3
            .iter()
            .filter_map(|&idx| match &self.conns[idx as usize].conn {
                Some(Session::H3(l)) => l.next_at(),
                _ => None,
            })
            .min()
    }

    /// The UDP sessions and what their events need, borrowed apart.
    fn udp_cx(&mut self) -> (&mut UdpProxy, UdpCx<'_>) {
        (
            &mut self.udp,
            UdpCx {
                routes: &self.routes,
                registry: &mut self.registry,
                stats: &mut self.stats,
                access: &self.access,
                rr_cursor: &mut self.rr_cursor,
            },
        )
    }

    /// Stores a new connection; its index is the owner of its streams.
    fn insert(&mut self, conn: Session<P>) -> u32 {
        let idx = self.insert_slot(conn);
        self.active += 1;
        idx
    }

    /// Stores a session in a free slot (not counted as a connection).
    fn insert_slot(&mut self, conn: Session<P>) -> u32 {
        match self.free_conns.pop() {
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
        }
    }

    /// Runs one connection's state machine (releases it when it has
    /// finished), then starts the background revalidations it asked for.
    fn drive(&mut self, idx: u32, mut net: Streams<'_>) {
        self.drive_one(idx, net.reborrow());
        while let Some(f) = self.background.pending.pop() {
            let r = Revalidation::new(f, self.cfg.head_buffer, net.now());
            let idx = self.insert_slot(Session::Revalidation(Box::new(r)));
            self.background.running += 1;
            self.drive_one(idx, net.reborrow());
        }
    }

    fn drive_one(&mut self, idx: u32, net: Streams<'_>) {
        let slot = &mut self.conns[idx as usize];
        slot.pass = net.pass();
        let Some(session) = slot.conn.as_mut() else {
            return;
        };
        if let Session::H1(conn) = session
            && conn.needs_bufs()
        {
            let bufs = self.spare_bufs.pop().unwrap_or_else(|| {
                self.stats.conn_buffers_allocated += 1;
                ConnBufs::new(self.cfg.head_buffer)
            });
            conn.lend_bufs(bufs);
        }
        self.stats.conn_drives += 1;
        let now = net.now();
        let mut cx = Ctx {
            net,
            phases: &self.phases,
            conn: idx,
            routes: &self.routes,
            stats: &mut self.stats,
            cfg: &self.cfg,
            rr_cursor: &mut self.rr_cursor,
            registry: &mut self.registry,
            quota: &self.quota,
            cache: &self.cache,
            conn_pool: &mut self.conn_pool,
            route_stats: &mut self.route_stats,
            request_seq: &mut self.request_seq,
            access: &self.access,
            id_tag: self.id_tag,
            now,
            draining: self.draining,
            plugins: &mut self.plugins,
            background: &mut self.background,
        };
        let mut progressed = match session {
            Session::H1(conn) => conn.drive(&mut cx),
            Session::H2(conn) => conn.drive(&mut cx),
            Session::Tcp(conn) => conn.drive(&mut cx, &mut self.l4_scratch),
            Session::H3(l) => l.drive(&mut cx),
            Session::Revalidation(r) => r.drive(&mut cx),
        };
        if let Some(Session::H1(conn)) = &slot.conn
            && conn.wants_h2()
        {
            let Some(Session::H1(conn)) = slot.conn.take() else {
                unreachable!()
            };
            let (client, io, port, bufs) = conn.into_h2();
            let received = Conn::<P>::received(&bufs);
            let mut h2 = Box::new(H2Conn::new(client, port, io, received, &mut cx));
            if self.draining {
                h2.go_away(b"shutdown");
            } else if !self.routes.listener(port).is_some_and(|l| l.http2) {
                // Chose h2 before a reload turned it off: drained at once.
                h2.go_away(b"reload");
            }
            keep_spare(&mut self.spare_bufs, bufs);
            progressed |= h2.drive(&mut cx);
            slot.conn = Some(Session::H2(h2));
        }
        if let Some(Session::H1(conn)) = &mut slot.conn
            && conn.is_finished()
        {
            // Whatever path it ended by, its request's plugin contexts end
            // with it.
            conn.end_plugins(&mut cx);
        }
        let mut net = cx.net;
        let session = slot.conn.as_mut().expect("driven connection");
        match session {
            Session::H1(conn) if conn.is_finished() => {
                let Some(Session::H1(conn)) = slot.conn.take() else {
                    unreachable!()
                };
                let (bufs, client, upstream) = conn.into_parts();
                net.retire(client, None, false);
                if let Some((h, port)) = upstream {
                    net.retire(h, Some(port), false);
                }
                keep_spare(&mut self.spare_bufs, bufs);
                self.free_conns.push(idx);
                self.active -= 1;
                return;
            }
            Session::H2(conn) if conn.is_finished() => {
                // Its streams gave their upstream sockets back as they ended.
                net.retire(conn.client(), None, false);
                slot.conn = None;
                self.free_conns.push(idx);
                self.active -= 1;
                return;
            }
            Session::Tcp(conn) if conn.is_finished() => {
                // Its upstream socket was handed back as it finished.
                net.retire(conn.client(), None, conn.reset_client());
                let port = conn.listener_port();
                if let Some((_, n)) = self.l4_open.iter_mut().find(|(p, _)| *p == port) {
                    *n -= 1;
                }
                slot.conn = None;
                self.free_conns.push(idx);
                self.active -= 1;
                return;
            }
            Session::Revalidation(r) if r.is_finished() => {
                // Its socket went back to the pool or was closed; its lock
                // (if still held) is released with it.
                slot.conn = None;
                self.free_conns.push(idx);
                self.background.running -= 1;
                return;
            }
            Session::Revalidation(r) => {
                if let Some((u, _)) = r.upstream() {
                    net.mark(u);
                }
            }
            Session::H3(l) if l.is_finished() => {
                // Drained: its requests gave their upstream sockets back.
                slot.conn = None;
                self.free_conns.push(idx);
                self.active -= 1;
                return;
            }
            Session::H3(l) => {
                for u in l.upstream_sockets() {
                    net.mark(u);
                }
                // Its timers ride on `poll_at`, which `drive` set.
                return;
            }
            Session::Tcp(conn) => {
                net.mark(conn.client());
                if let Some(u) = conn.upstream_socket() {
                    net.mark(u);
                }
            }
            Session::H1(conn) => {
                if let Some(bufs) = conn.park_bufs() {
                    keep_spare(&mut self.spare_bufs, bufs);
                }
                // Whatever it wrote is sent, and its timers re-armed, in this pass.
                let (client, upstream) = conn.sockets();
                net.mark(client);
                if let Some(u) = upstream {
                    net.mark(u);
                }
            }
            Session::H2(conn) => {
                net.mark(conn.client());
                for u in conn.upstream_sockets() {
                    net.mark(u);
                }
            }
        }
        if progressed {
            self.redrive.push(idx);
        }
    }
}

/// Every IPv4/IPv6 address the pools connect to: their next hops are
/// resolved ahead of the first request.
fn endpoint_addresses(routes: &RouteTable) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = routes
        .upstreams
        .iter()
        .flat_map(|u| u.endpoints.iter().map(|e| e.ip()))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The stack with the HTTP proxy on top; `P` are the proxy's phases
/// ([`StandardPhases`]: ferrogate's own behaviour).
pub struct Stack<P: ProxyHttp = StandardPhases> {
    net: Net,
    app: ProxyApp<P>,
}

impl Stack {
    /// A stack whose proxy runs every phase at its default.
    pub fn new(
        cfg: StackConfig,
        routes: Arc<RouteTable>,
        now: Instant,
    ) -> Result<Self, StackError> {
        Self::with_phases(cfg, routes, now, StandardPhases)
    }
}

impl<P: ProxyHttp> Stack<P> {
    /// A stack whose proxy runs `phases`.
    pub fn with_phases(
        cfg: StackConfig,
        routes: Arc<RouteTable>,
        now: Instant,
        phases: P,
    ) -> Result<Self, StackError> {
        let routes = worker_copy(&routes);
        let listen_ports = routes.listeners.iter().map(|l| l.port).collect();
        let mut net = Net::new(cfg.net.clone(), listen_ports, now)?;
        // HTTP/3 ports are UDP ports too (the config check keeps them apart
        // from UDP listeners').
        let http3_ports = routes.listeners.iter().filter(|l| l.http3.is_some());
        let udp_ports = routes.udp_listeners.iter().map(|l| l.port);
        net.set_udp_ports(udp_ports.chain(http3_ports.map(|l| l.port)).collect())?;
        net.set_neighbour_targets(endpoint_addresses(&routes));
        let max = cfg.net.max_connections;
        let app = ProxyApp {
            phases,
            conns: Vec::with_capacity(max),
            free_conns: Vec::with_capacity(max),
            active: 0,
            redrive: Vec::with_capacity(max),
            spare_bufs: Vec::with_capacity(SPARE_CONN_BUFS),
            rr_cursor: cfg.net.random_seed as usize,
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
            quota: Arc::default(),
            cache: CacheHandle {
                edge: Arc::new(EdgeCache::new(CacheSettings::default())),
                anchor: ClockAnchor::at(now),
            },
            request_seq: 0,
            access: AccessSink::default(),
            prober: Prober::default(),
            id_tag: (cfg.net.random_seed ^ (cfg.net.random_seed >> 32)) as u32,
            stats: StackStats::default(),
            l4_open: Vec::new(),
            l4_scratch: vec![0; L4_SCRATCH],
            udp: {
                let mut u = UdpProxy::default();
                u.reserve(&routes);
                u
            },
            h3: Vec::new(),
            draining: false,
            background: Background::default(),
            plugins: Default::default(),
            routes,
            cfg,
        };
        let mut app = app;
        app.plugins.sync(&app.routes, now, &mut app.stats);
        let (worker, generation) = (app.cfg.worker, app.cfg.quic_generation);
        let listeners: Vec<_> = app
            .routes
            .listeners
            .iter()
            .filter_map(|l| QuicListener::new(l, worker, generation, now))
            .collect();
        for l in listeners {
            let idx = app.insert(Session::H3(Box::new(l)));
            app.h3.push(idx);
        }
        Ok(Self { net, app })
    }

    pub fn config(&self) -> &StackConfig {
        &self.app.cfg
    }

    /// Sends one record per response to `sink` (the engine's access-log
    /// queue of this worker).
    pub fn set_access_log(&mut self, sink: AccessSink) {
        self.app.access = sink;
    }

    /// Shares `quota` (the engine's rate-limit buckets) with this worker;
    /// a stack alone has buckets of its own.
    pub fn set_quota(&mut self, quota: Arc<Quota>) {
        self.app.quota = quota;
    }

    /// Shares `cache` (the engine's response cache) with this worker;
    /// `anchor` maps the stack's clock to wall time. A stack alone has a
    /// cache of its own.
    pub fn set_cache(&mut self, cache: Arc<EdgeCache>, anchor: ClockAnchor) {
        self.app.cache = CacheHandle {
            edge: cache,
            anchor,
        };
    }

    /// The response cache this worker uses.
    pub fn cache(&self) -> &Arc<EdgeCache> {
        &self.app.cache.edge
    }

    /// Replaces the routing snapshot. Listener ports are fixed at creation;
    /// routes and pools change for every request that starts afterwards.
    pub fn set_routes(&mut self, routes: Arc<RouteTable>) {
        let routes = worker_copy(&routes);
        let app = &mut self.app;
        app.registry.sync(&routes.upstreams, self.net.now());
        app.conn_pool
            .retain_current(&routes.upstreams, &mut self.net.streams());
        app.route_stats.sync(&routes);
        app.plugins.sync(&routes, self.net.now(), &mut app.stats);
        self.net.set_neighbour_targets(endpoint_addresses(&routes));
        // HTTP/2 connections whose listener no longer speaks it (removed,
        // or `http2` turned off) are drained: GOAWAY, their streams finish,
        // the client reconnects to what the new snapshot serves.
        let mut streams = self.net.streams();
        for slot in &mut app.conns {
            match &mut slot.conn {
                Some(Session::H2(c))
                    if !routes.listener(c.listener_port()).is_some_and(|l| l.http2) =>
                {
                    c.go_away(b"reload");
                    streams.mark(c.client());
                }
                // HTTP/3 ports are fixed at start (a change needs a
                // restart); certificates and limits follow the reload.
                Some(Session::H3(l)) => {
                    if let Some(listener) = routes.listener(l.port()) {
                        l.sync(listener);
                    }
                }
                _ => {}
            }
        }
        app.routes = routes;
        let (udp, mut cx) = app.udp_cx();
        udp.retain_current(&mut streams, &mut cx);
    }

    /// Per-pool and per-endpoint counters and states of this worker.
    pub fn upstream_stats(&self) -> UpstreamStats {
        self.app.registry.stats(self.net.now())
    }

    /// Per-route counters of this worker (aligned with its snapshot).
    pub fn route_stats(&self) -> &RouteCounters {
        &self.app.route_stats
    }

    pub fn routes(&self) -> &Arc<RouteTable> {
        &self.app.routes
    }

    /// Queues a received frame. False when the rx queue is full (counted);
    /// call `poll` after each burst so it never is. Each queued frame gets
    /// one `rx_*` outcome when polled (`NetStats::rx_outcomes`).
    pub fn handle_frame(&mut self, frame: &[u8]) -> bool {
        self.net.handle_frame(frame)
    }

    /// Whether a frame of `class` is this stack's while a binary upgrade's
    /// predecessor still serves its own flows ([`Net::claims`](ferrogate_net::Net::claims)).
    pub fn claims(&self, class: &ferrogate_wire::FrameClass) -> bool {
        self.net.claims(class)
    }

    /// See [`Net::is_stray`](ferrogate_net::Net::is_stray).
    pub fn is_stray(&self, m: &ferrogate_wire::TcpMeta) -> bool {
        self.net.is_stray(m)
    }

    /// See [`Net::begin_port_split_successor`](ferrogate_net::Net::begin_port_split_successor).
    pub fn begin_port_split_successor(&mut self, held: &[u16]) {
        self.net.begin_port_split_successor(held);
    }

    /// See [`Net::begin_port_split_predecessor`](ferrogate_net::Net::begin_port_split_predecessor).
    pub fn begin_port_split_predecessor(&mut self) -> Vec<u16> {
        self.net.begin_port_split_predecessor()
    }

    /// The other engine of an upgrade is gone.
    pub fn end_port_split(&mut self) {
        self.net.end_port_split();
    }

    /// For a clean stop: ends every idle pooled upstream connection with a
    /// FIN, so origins do not keep them open until their own timeout (and
    /// a new engine's first connections never meet their 4-tuples). Keep
    /// polling and draining tx for a moment after, for the FIN exchange.
    /// HTTP/2 clients get a GOAWAY (NO_ERROR, "shutdown") first, so they
    /// know no new stream will be served here.
    pub fn close_idle_upstreams(&mut self, now: Instant) {
        self.cut_open_connections();
        let mut streams = self.net.streams();
        for slot in &mut self.app.conns {
            match &mut slot.conn {
                Some(Session::H2(c)) => {
                    c.go_away(b"shutdown");
                    streams.mark(c.client());
                }
                Some(Session::H3(l)) => l.go_away(),
                _ => {}
            }
        }
        self.app.conn_pool.close_all(&mut streams);
        let (udp, mut cx) = self.app.udp_cx();
        udp.end_all(&mut streams, &mut cx);
        self.poll(now);
    }

    /// Starts a graceful stop: new connections are reset (counted in
    /// `drain_refused`), HTTP/2 clients get a GOAWAY (their open streams
    /// finish), HTTP/1 responses from now on say `Connection: close`, and
    /// keep-alive connections close once idle. TCP and UDP listener
    /// sessions run on until they end. Poll until [`Stack::drained`].
    pub fn begin_drain(&mut self, now: Instant) {
        if self.app.draining {
            return;
        }
        self.app.draining = true;
        let mut streams = self.net.streams();
        for (idx, slot) in self.app.conns.iter_mut().enumerate() {
            match &mut slot.conn {
                Some(Session::H2(c)) => {
                    c.go_away(b"shutdown");
                    streams.mark(c.client());
                }
                // Run once more: an idle one closes now.
                Some(Session::H1(c)) => {
                    c.drain_begins(now);
                    streams.mark(c.sockets().0);
                }
                // Driven by this poll (`due`).
                Some(Session::H3(l)) => l.go_away(),
                // No client waits for it: it ends now (the stale copy
                // stays, the lock is released) — unless it fills a new
                // object others may be reading: that one finishes.
                Some(Session::Revalidation(r)) if !r.is_filling() => {
                    if let Some((u, port)) = r.upstream() {
                        streams.retire(u, Some(port), true);
                    }
                    r.abandon(&mut self.app.registry, now);
                    slot.conn = None;
                    self.app.free_conns.push(idx as u32);
                    self.app.background.running -= 1;
                }
                _ => {}
            }
        }
        self.poll(now);
    }

    /// Resets every client connection still open, and its upstream
    /// sockets (a stop that cannot wait any longer): clients learn at once
    /// that their exchange is cut, rather than wait out their timeouts on
    /// an address nobody answers for. Counted in `drain_cut`.
    fn cut_open_connections(&mut self) {
        let now = self.net.now();
        let mut streams = self.net.streams();
        let mut cut = 0;
        for (idx, slot) in self.app.conns.iter_mut().enumerate() {
            let Some(session) = &slot.conn else { continue };
            let (client, upstreams): (_, Vec<StreamId>) = match session {
                Session::H1(c) => {
                    let (client, up) = c.sockets();
                    (client, up.into_iter().collect())
                }
                Session::H2(c) => (c.client(), c.upstream_sockets().collect()),
                Session::Tcp(c) => (c.client(), c.upstream_socket().into_iter().collect()),
                // No client: its upstream is reset and it ends here (a
                // later run could otherwise retry on a new connection).
                Session::Revalidation(r) => {
                    // Reset and given back with its port: the slot is freed
                    // here, so no socket may point at it after.
                    if let Some((u, port)) = r.upstream() {
                        streams.retire(u, Some(port), true);
                    }
                    if let Some(Session::Revalidation(r)) = &mut slot.conn {
                        r.abandon(&mut self.app.registry, now);
                    }
                    slot.conn = None;
                    self.app.free_conns.push(idx as u32);
                    self.app.background.running -= 1;
                    continue;
                }
                Session::H3(_) => {
                    let Some(Session::H3(l)) = &mut slot.conn else {
                        unreachable!()
                    };
                    // CONNECTION_CLOSE to every client (sent by the poll
                    // that follows); the requests end on the next drive.
                    cut += l.connections() as u64;
                    for u in l.upstream_sockets().collect::<Vec<_>>() {
                        streams.stream(u).abort();
                    }
                    l.close_all(now);
                    continue;
                }
            };
            let client_active = streams.stream(client).is_active();
            // A client gone while its response is stored still holds the
            // upstream that fills it.
            if !client_active && upstreams.is_empty() {
                continue;
            }
            if client_active {
                streams.stream(client).abort();
            }
            for u in upstreams {
                streams.stream(u).abort();
            }
            cut += 1;
        }
        self.app.stats.drain_cut += cut;
    }

    /// Draining, and no client connection is left.
    pub fn drained(&self) -> bool {
        self.app.draining && self.app.active == 0
    }

    pub fn rx_pending(&self) -> usize {
        self.net.rx_pending()
    }

    /// Takes in every queued frame, fires due timers, and runs the sockets
    /// and connections that have work until quiescent (bounded).
    pub fn poll(&mut self, now: Instant) {
        self.net.poll(now, &mut self.app);
        let app = &mut self.app;
        let s = &mut app.stats;
        s.active_connections = app.active as u64;
        s.l4.active = app.l4_open.iter().map(|(_, n)| *n as u64).sum();
        s.udp.active = app.udp.active() as u64;
        let pc = app.conn_pool.counters;
        s.upstream_idle = app.conn_pool.len() as u64;
        s.upstream_pool_released = pc.released;
        s.upstream_pool_surplus = pc.surplus;
        s.upstream_pool_stale = pc.stale;
        s.upstream_pool_expired = pc.expired;
        s.upstream_pool_evicted = pc.evicted;
        s.net = *self.net.stats();
    }

    /// Hands each queued outgoing frame to `send`, oldest first.
    pub fn drain_tx(&mut self, send: impl FnMut(&[u8])) -> usize {
        let n = self.net.drain_tx(send);
        self.app.stats.net = *self.net.stats();
        n
    }

    /// As `drain_tx`, until `send` refuses a frame (the NIC's ring is
    /// full): the rest stays queued, in order, for the next call.
    pub fn drain_tx_while(&mut self, send: impl FnMut(&[u8]) -> bool) -> usize {
        let n = self.net.drain_tx_while(send);
        self.app.stats.net = *self.net.stats();
        n
    }

    /// Frames queued for sending (a full NIC ring held them back).
    pub fn tx_pending(&self) -> usize {
        self.net.tx_pending()
    }

    /// When `poll` should run next even without new frames (a soft deadline:
    /// it may be early, never late).
    pub fn poll_at(&self, now: Instant) -> Option<Instant> {
        self.net.poll_at(now, &self.app)
    }

    pub fn stats(&self) -> &StackStats {
        &self.app.stats
    }

    /// Linear memory of this stack's plugin instances now, in bytes.
    pub fn plugin_memory_bytes(&self) -> u64 {
        self.app.plugins.memory_bytes() as u64
    }

    pub fn active_connections(&self) -> usize {
        self.app.active
    }

    pub fn closing_sockets(&self) -> usize {
        self.net.closing_sockets()
    }

    pub fn upstream_ports_in_use(&self) -> usize {
        self.net.upstream_ports_in_use()
    }

    pub fn owns_address(&self, ip: IpAddr) -> bool {
        self.net.owns_address(ip)
    }
}

/// The worker's own copy of a snapshot (made off the data path, at start
/// and on each reload): a cloned regex gets its own cache pool, which the
/// first thread to search owns, so the routes' and rules' regexes search
/// without the lock a pool shared by all workers takes for every thread
/// but its owner. Pools (`Arc<Upstream>`) stay shared.
fn worker_copy(routes: &Arc<RouteTable>) -> Arc<RouteTable> {
    Arc::new(RouteTable::clone(routes))
}
