//! UDP listeners: each client (address and port) on a listener is a
//! session pinned to one endpoint of the listener's pool, through a local
//! port of ours bound for it. A datagram from the client goes to the
//! endpoint from that port; one from the endpoint to that port goes back
//! to the client from the listener's address and port. A session ends
//! when nothing moved for the idle timeout, when the endpoint's host says
//! the port is unreachable (ICMP), or when a reload takes its listener or
//! endpoint away. One access record per session, at its end.

use std::net::SocketAddr;
use std::sync::Arc;

use ferrogate_l4::udp::{SessionId, SessionTable};

use crate::access::{AccessRecord, AccessSink, Protocol};
use crate::lb::{Upstream, UpstreamRegistry};
use crate::net::{Datagram, Instant, Streams};
use crate::proxy::after;
use crate::route::{RouteTable, UdpListener};
use crate::stats::StackStats;

struct Session {
    pool: Arc<Upstream>,
    endpoint: usize,
    endpoint_addr: SocketAddr,
    /// The listener's address the client sent to: replies come from it.
    vip: SocketAddr,
    /// Ours towards the endpoint (the session's bound port).
    upstream_src: SocketAddr,
    client_mac: [u8; 6],
    idle: std::time::Duration,
    started: Instant,
    last_active: Instant,
    bytes_up: u64,
    bytes_down: u64,
}

/// What a UDP event needs of the worker's proxy.
pub(crate) struct UdpCx<'a> {
    pub routes: &'a RouteTable,
    pub registry: &'a mut UpstreamRegistry,
    pub stats: &'a mut StackStats,
    pub access: &'a AccessSink,
    pub rr_cursor: &'a mut usize,
}

/// Sessions a worker makes room for up front (at most half its upstream
/// ports can be bound by UDP anyway).
const UDP_RESERVE_MAX: usize = 32_768;

#[derive(Default)]
pub(crate) struct UdpProxy {
    table: SessionTable<Session>,
}

impl UdpProxy {
    pub(crate) fn active(&self) -> usize {
        self.table.len()
    }

    /// When the next session expires.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.table.next_expiry()
    }

    /// A datagram to a listener (from a client) or to a session's port
    /// (from its endpoint).
    pub(crate) fn datagram(&mut self, net: &mut Streams<'_>, cx: &mut UdpCx<'_>, d: &Datagram<'_>) {
        match cx.routes.udp_listener(d.local.port()) {
            Some(l) => self.client_datagram(net, cx, l, d),
            None => self.endpoint_datagram(net, cx, d),
        }
    }

    fn client_datagram(
        &mut self,
        net: &mut Streams<'_>,
        cx: &mut UdpCx<'_>,
        l: &UdpListener,
        d: &Datagram<'_>,
    ) {
        let now = net.now();
        let id = match self.table.by_client(l.port, d.remote) {
            Some(id) => id,
            None => match self.open(net, cx, l, d) {
                Some(id) => id,
                None => return,
            },
        };
        let s = self.table.get_mut(id).expect("live session");
        let expires = after(now, s.idle);
        s.last_active = now;
        // The client's (or its router's) address may change.
        s.client_mac = d.peer_mac;
        match net.send_datagram(s.upstream_src, s.endpoint_addr, None, d.payload) {
            Ok(()) => {
                s.bytes_up += d.payload.len() as u64;
                cx.stats.udp.datagrams_up += 1;
                cx.stats.udp.bytes_up += d.payload.len() as u64;
            }
            Err(e) => cx.stats.udp.count_send_drop(e),
        }
        self.table.touch(id, expires);
    }

    /// A new client: an endpoint, a local port, a session; None (counted)
    /// when the listener is full or nothing is available.
    fn open(
        &mut self,
        net: &mut Streams<'_>,
        cx: &mut UdpCx<'_>,
        l: &UdpListener,
        d: &Datagram<'_>,
    ) -> Option<SessionId> {
        let now = net.now();
        if self.table.count(l.port) >= l.max_sessions {
            cx.stats.udp.drop_over_limit += 1;
            return None;
        }
        let pool = &l.upstream;
        let key = crate::l4_session::source_key(pool, Some(d.remote));
        let endpoint = match cx.registry.pool_mut(pool) {
            Some(p) => {
                p.begin_request(pool, now);
                p.pick(pool, key, &[], now).ok()
            }
            None if !pool.endpoints.is_empty() => {
                let i = *cx.rr_cursor % pool.endpoints.len();
                *cx.rr_cursor = cx.rr_cursor.wrapping_add(1);
                Some(i)
            }
            None => None,
        };
        let Some(endpoint) = endpoint else {
            cx.stats.udp.drop_no_upstream += 1;
            return None;
        };
        let endpoint_addr = pool.endpoints[endpoint];
        let source = net.source_for(endpoint_addr.ip(), d.local.ip());
        let port = source.and_then(|_| net.bind_udp());
        let (Some(source), Some(port)) = (source, port) else {
            if let Some(p) = cx.registry.pool_mut(pool) {
                p.cancel(pool, endpoint, now, now);
            }
            cx.stats.udp.drop_no_port += 1;
            return None;
        };
        cx.stats.udp.sessions += 1;
        let session = Session {
            pool: pool.clone(),
            endpoint,
            endpoint_addr,
            vip: d.local,
            upstream_src: SocketAddr::new(source, port),
            client_mac: d.peer_mac,
            idle: l.idle_timeout,
            started: now,
            last_active: now,
            bytes_up: 0,
            bytes_down: 0,
        };
        Some(
            self.table
                .insert(l.port, d.remote, port, after(now, l.idle_timeout), session),
        )
    }

    fn endpoint_datagram(&mut self, net: &mut Streams<'_>, cx: &mut UdpCx<'_>, d: &Datagram<'_>) {
        let now = net.now();
        let Some(id) = self.table.by_port(d.local.port()) else {
            // Not a session's port: a listener's that a reload removed.
            cx.stats.udp.drop_no_listener += 1;
            return;
        };
        let (_, client, _) = self.table.key(id).expect("live session");
        let s = self.table.get_mut(id).expect("live session");
        if d.remote != s.endpoint_addr || d.local != s.upstream_src {
            cx.stats.udp.drop_foreign_source += 1;
            return;
        }
        let expires = after(now, s.idle);
        s.last_active = now;
        match net.send_datagram(s.vip, client, Some(s.client_mac), d.payload) {
            Ok(()) => {
                s.bytes_down += d.payload.len() as u64;
                cx.stats.udp.datagrams_down += 1;
                cx.stats.udp.bytes_down += d.payload.len() as u64;
            }
            Err(e) => cx.stats.udp.count_send_drop(e),
        }
        self.table.touch(id, expires);
    }

    /// ICMP unreachable about a datagram from a session's port to its
    /// endpoint: the endpoint has no one listening; the session ends (the
    /// client's next datagram opens a new one, maybe elsewhere).
    pub(crate) fn unreachable(
        &mut self,
        net: &mut Streams<'_>,
        cx: &mut UdpCx<'_>,
        local: SocketAddr,
        remote: SocketAddr,
    ) {
        match self.table.by_port(local.port()) {
            Some(id)
                if self
                    .table
                    .get(id)
                    .is_some_and(|s| s.endpoint_addr == remote && s.upstream_src == local) =>
            {
                cx.stats.udp.unreachable += 1;
                self.end(net, cx, id, false, "upstream_unreachable");
            }
            // About a datagram this session did not send.
            _ => cx.stats.udp.unreachable_ignored += 1,
        }
    }

    /// Ends sessions idle past their timeout.
    pub(crate) fn expire(&mut self, net: &mut Streams<'_>, cx: &mut UdpCx<'_>) {
        while let Some(id) = self.table.expired(net.now()) {
            cx.stats.udp.idle_timeouts += 1;
            // Not a failure of the endpoint's, even unanswered: one-way
            // protocols (syslog) never answer.
            self.end(net, cx, id, true, "idle_timeout");
        }
    }

    /// After a reload: sessions whose listener is gone, or whose endpoint
    /// left the listener's pool, end; the others take the listener's
    /// idle timeout as it is now.
    pub(crate) fn retain_current(&mut self, net: &mut Streams<'_>, cx: &mut UdpCx<'_>) {
        let ids: Vec<SessionId> = self.table.ids().collect();
        for id in ids {
            let (listener, _, _) = self.table.key(id).expect("live session");
            let s = self.table.get_mut(id).expect("live session");
            match cx.routes.udp_listener(listener) {
                Some(l) if l.upstream.endpoints.contains(&s.endpoint_addr) => {
                    s.idle = l.idle_timeout;
                    let expires = after(s.last_active, s.idle);
                    self.table.set_expiry(id, expires);
                }
                _ => self.end(net, cx, id, true, "reload"),
            }
        }
        self.table.sort_by_expiry();
        self.reserve(cx.routes);
    }

    /// Ends every session (the engine stops): one record each.
    pub(crate) fn end_all(&mut self, net: &mut Streams<'_>, cx: &mut UdpCx<'_>) {
        let ids: Vec<SessionId> = self.table.ids().collect();
        for id in ids {
            self.end(net, cx, id, true, "shutdown");
        }
    }

    /// Room for every session the listeners allow, up to what a worker's
    /// ports allow: new sessions then allocate nothing.
    pub(crate) fn reserve(&mut self, routes: &RouteTable) {
        let sessions: usize = routes.udp_listeners.iter().map(|l| l.max_sessions).sum();
        self.table.reserve(sessions.min(UDP_RESERVE_MAX));
    }

    fn end(
        &mut self,
        net: &mut Streams<'_>,
        cx: &mut UdpCx<'_>,
        id: SessionId,
        ok: bool,
        reason: &'static str,
    ) {
        let Some((listener, client, port)) = self.table.key(id) else {
            return;
        };
        let s = self.table.remove(id).expect("live session");
        net.unbind_udp(port);
        let now = net.now();
        if let Some(p) = cx.registry.pool_mut(&s.pool) {
            p.finish(&s.pool, s.endpoint, ok, now);
        }
        if cx.access.enabled() {
            let a = AccessRecord {
                at_us: now.total_micros(),
                duration_us: (now - s.started).total_micros(),
                client: Some(client),
                listener_port: listener,
                protocol: Protocol::Udp,
                upstream: Some(s.endpoint_addr),
                error: reason,
                bytes_up: s.bytes_up,
                bytes_down: s.bytes_down,
                ..AccessRecord::default()
            };
            if cx.access.push(&a) {
                cx.stats.access_log_queued += 1;
            } else {
                cx.stats.access_log_dropped += 1;
            }
        }
    }
}
