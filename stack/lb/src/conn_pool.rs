//! The worker's idle upstream connections, shared by all of its client
//! connections: a response that leaves its upstream connection reusable
//! gives it back here, and the next request to the same endpoint of the same
//! pool (any client) takes it instead of a new TCP (and TLS) handshake.
//!
//! Keyed by (pool, endpoint, TLS identity): a pool's TLS config is compiled
//! per snapshot, so after a reload its old TLS connections are never handed
//! out (they idle out). Most recently used first, so few connections stay
//! warm. A connection is checked on the way out: one the origin closed
//! (FIN, RST, close_notify), or that has bytes nobody asked for, is closed
//! and the next one tried. Pooled sockets belong to no client connection
//! (`POOLED` owner); their events come here through [`ConnPool::check`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::Upstream;
use crate::stable_hash;
use ferrogate_net::{Instant, StreamId as SockId, StreamState, Streams};
use ferrogate_tls::ByteStream;

/// `owner` of a socket resting in the pool.
pub const POOLED: u32 = u32::MAX - 1;

/// Idle time after which a pooled connection is closed, unless the pool
/// sets `idle_ms`: below nginx's 60 s upstream and 75 s client defaults, so
/// the proxy, not the origin, usually ends an idle connection.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(30);

/// One upstream TCP connection (plain or TLS) and what it has carried.
pub struct UpstreamConn {
    pub handle: SockId,
    pub local_port: u16,
    pub endpoint: SocketAddr,
    /// Requests completed on this connection (0: fresh).
    pub served: u32,
    /// The upstream byte stream: plain, or through a TLS client session.
    pub io: ByteStream,
}

/// Which pooled connections a request may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pool: u64,
    endpoint: SocketAddr,
    /// The TLS client config's address (0: plain): a connection made under
    /// another config (another snapshot's CA or SNI) is not this pool's.
    tls: usize,
}

impl PoolKey {
    pub fn new(pool: &Upstream, endpoint: SocketAddr) -> Self {
        Self {
            pool: stable_hash(pool.name.as_bytes(), 0),
            endpoint,
            tls: pool
                .tls
                .as_ref()
                .map_or(0, |t| std::sync::Arc::as_ptr(&t.config) as usize),
        }
    }
}

struct Idle {
    conn: UpstreamConn,
    until: Instant,
    /// Holds the TLS config the connection was made under: its address
    /// is in the key, and must not be reused by another config while a
    /// connection made under this one rests here.
    _tls: Option<Arc<rustls::ClientConfig>>,
}

/// Why a pooled connection was closed (`StackStats::upstream_pool_*`).
#[derive(Debug, Default, Clone, Copy)]
pub struct PoolCounters {
    /// Given back after a response.
    pub released: u64,
    /// Closed at release: the endpoint's idle list was full, or the
    /// connection reached the pool's `max_requests`.
    pub surplus: u64,
    /// Found closed by the origin (or with stray bytes) while idle.
    pub stale: u64,
    /// Idle longer than the pool's idle timeout.
    pub expired: u64,
    /// Closed because their endpoint left rotation (health, ejection).
    pub evicted: u64,
}

pub struct ConnPool {
    idle: HashMap<PoolKey, Vec<Idle>>,
    /// Where each pooled socket rests, for its events.
    by_sock: HashMap<SockId, PoolKey>,
    /// Post-handshake TLS records (tickets) of idle connections are read
    /// into this and thrown away; any plaintext makes the connection stale.
    scratch: Box<[u8]>,
    /// The worker is stopping: connections given back are closed.
    closing: bool,
    pub counters: PoolCounters,
}

/// FIN (after close_notify on TLS); the stream lingers, then is reused.
fn close(net: &mut Streams<'_>, mut c: UpstreamConn) {
    c.io.close(&mut net.stream(c.handle));
    net.retire(c.handle, Some(c.local_port), false);
}

impl Default for ConnPool {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnPool {
    pub fn new() -> Self {
        Self {
            idle: HashMap::new(),
            by_sock: HashMap::new(),
            scratch: vec![0; 4096].into_boxed_slice(),
            closing: false,
            counters: PoolCounters::default(),
        }
    }

    /// Connections resting in the pool.
    pub fn len(&self) -> usize {
        self.by_sock.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_sock.is_empty()
    }

    /// A live idle connection for `key`, or None. Dead ones met on the way
    /// are closed. The caller owns the one returned (and sets its owner).
    pub fn checkout(&mut self, key: &PoolKey, net: &mut Streams<'_>) -> Option<UpstreamConn> {
        loop {
            let list = self.idle.get_mut(key)?;
            let Some(mut idle) = list.pop() else {
                self.idle.remove(key);
                return None;
            };
            self.by_sock.remove(&idle.conn.handle);
            if alive(&mut idle.conn, net, &mut self.scratch) {
                return Some(idle.conn);
            }
            self.counters.stale += 1;
            close(net, idle.conn);
        }
    }

    /// Takes `c` back after a response; closes it instead when the
    /// endpoint already has `limit` idle or it served `max_requests`.
    #[allow(clippy::too_many_arguments)]
    pub fn release(
        &mut self,
        key: PoolKey,
        c: UpstreamConn,
        tls: Option<Arc<rustls::ClientConfig>>,
        limit: usize,
        max_requests: u32,
        idle_for: Duration,
        net: &mut Streams<'_>,
    ) {
        let list = self.idle.entry(key).or_default();
        if self.closing || list.len() >= limit || (max_requests > 0 && c.served >= max_requests) {
            self.counters.surplus += 1;
            close(net, c);
            return;
        }
        self.counters.released += 1;
        net.set_owner(c.handle, POOLED);
        self.by_sock.insert(c.handle, key);
        let until = net.now() + ferrogate_net::Duration::from_micros(idle_for.as_micros() as u64);
        list.push(Idle {
            conn: c,
            until,
            _tls: tls,
        });
    }

    /// A pooled socket had a frame or its timer fired: closes it when the
    /// origin ended it or it idled out. Returns when to look again.
    pub fn check(&mut self, id: SockId, net: &mut Streams<'_>) -> Option<Instant> {
        let key = *self.by_sock.get(&id)?;
        let list = self.idle.get_mut(&key)?;
        let i = list.iter().position(|e| e.conn.handle == id)?;
        let until = list[i].until;
        let expired = net.now() >= until;
        if !expired && alive(&mut list[i].conn, net, &mut self.scratch) {
            return Some(until);
        }
        let e = list.remove(i);
        self.by_sock.remove(&id);
        if expired {
            self.counters.expired += 1;
        } else {
            self.counters.stale += 1;
        }
        close(net, e.conn);
        None
    }

    /// Closes every idle connection to `endpoint` of `pool`: the endpoint
    /// left rotation (a failed health check or a passive ejection), and a
    /// connection to it would only be found dead by the next request.
    pub fn evict_endpoint(&mut self, pool: &Upstream, endpoint: SocketAddr, net: &mut Streams<'_>) {
        let pool_hash = stable_hash(pool.name.as_bytes(), 0);
        for (key, list) in self.idle.iter_mut() {
            if key.pool != pool_hash || key.endpoint != endpoint {
                continue;
            }
            for e in list.drain(..) {
                self.by_sock.remove(&e.conn.handle);
                self.counters.evicted += 1;
                close(net, e.conn);
            }
        }
    }

    /// A new snapshot: idle connections whose pool, endpoint or TLS config
    /// it no longer has are closed (nobody could be given them).
    pub fn retain_current(&mut self, upstreams: &[Arc<Upstream>], net: &mut Streams<'_>) {
        let current: Vec<PoolKey> = upstreams
            .iter()
            .flat_map(|u| u.endpoints.iter().map(|&ep| PoolKey::new(u, ep)))
            .collect();
        let stale: Vec<PoolKey> = self
            .idle
            .keys()
            .filter(|k| !current.contains(k))
            .copied()
            .collect();
        for key in stale {
            for e in self.idle.remove(&key).unwrap_or_default() {
                self.by_sock.remove(&e.conn.handle);
                self.counters.evicted += 1;
                let handle = e.conn.handle;
                close(net, e.conn);
                net.mark(handle);
            }
        }
    }

    /// Closes every idle connection (FIN; close_notify first on TLS): the
    /// worker is stopping.
    pub fn close_all(&mut self, net: &mut Streams<'_>) {
        self.closing = true;
        for (_, list) in self.idle.iter_mut() {
            for e in list.drain(..) {
                let handle = e.conn.handle;
                close(net, e.conn);
                net.mark(handle);
            }
        }
        self.by_sock.clear();
        self.idle.clear();
    }

    /// The time a pooled socket idles out, if it is pooled.
    pub fn idle_until(&self, id: SockId) -> Option<Instant> {
        let key = self.by_sock.get(&id)?;
        self.idle
            .get(key)?
            .iter()
            .find(|e| e.conn.handle == id)
            .map(|e| e.until)
    }
}

/// Whether `c` can carry a request now: open both ways, nothing unread.
fn alive(c: &mut UpstreamConn, net: &mut Streams<'_>, scratch: &mut [u8]) -> bool {
    let sock = &mut net.stream(c.handle);
    if sock.state() != StreamState::Established || !sock.may_send() || !c.io.reusable() {
        return false;
    }
    if c.io.is_tls() {
        // Session tickets and key updates are fine; data is not.
        if !matches!(c.io.recv(sock, scratch), Ok(0)) {
            return false;
        }
    } else if sock.recv_queue() > 0 {
        return false;
    }
    c.io.may_recv(sock) && c.io.reusable()
}
