//! Active health checks sent by the stack itself, from the VIP like real
//! upstream traffic: a TCP connect, or an HTTP GET whose status is checked.
//! The pool's state (`PoolState::next_due`) decides when; results go back
//! through `record_result`.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::lb::Upstream;
use crate::lb::UpstreamRegistry;
use crate::lb::conn_pool::ConnPool;
use crate::net::{Duration, Instant, NO_OWNER, StreamId as SockId, StreamState, Streams};
use crate::route::RouteTable;

/// How often the stack looks for probes that fell due.
const CHECK_EVERY: Duration = Duration::from_millis(20);

struct ActiveProbe {
    pool: Arc<Upstream>,
    addr: SocketAddr,
    sock: SockId,
    port: u16,
    deadline: Instant,
    /// The HTTP request (None: TCP check, connecting is the test).
    request: Option<Vec<u8>>,
    sent: usize,
    status_line: [u8; 32],
    got: usize,
}

#[derive(Default)]
pub(crate) struct Prober {
    active: Vec<ActiveProbe>,
    next_check: Option<Instant>,
}

/// What the prober needs from the stack.
pub(crate) struct ProbeCtx<'a> {
    pub net: Streams<'a>,
    pub registry: &'a mut UpstreamRegistry,
    /// Idle connections to an endpoint that fails its check are closed.
    pub conn_pool: &'a mut ConnPool,
}

impl ProbeCtx<'_> {
    /// The endpoint left rotation: its idle pooled connections go too.
    fn evict(&mut self, pool: &Upstream, addr: SocketAddr) {
        self.conn_pool.evict_endpoint(pool, addr, &mut self.net);
    }
}

impl Prober {
    /// When `run` has work next: the next look for due probes while any
    /// pool has health checks, or a probe in flight (its deadline).
    pub(crate) fn next_at(&self, routes: &RouteTable) -> Option<Instant> {
        let checked = routes.upstreams.iter().any(|u| u.policy.health.is_some());
        if !checked && self.active.is_empty() {
            return None;
        }
        Some(self.next_check.unwrap_or(Instant::ZERO))
    }

    /// Starts due probes and advances running ones.
    pub(crate) fn run(&mut self, cx: &mut ProbeCtx<'_>, routes: &RouteTable, now: Instant) {
        if self.next_check.is_none_or(|t| now >= t) {
            self.next_check = Some(now + CHECK_EVERY);
            for pool in &routes.upstreams {
                if pool.policy.health.is_none() {
                    continue;
                }
                while let Some(p) = cx
                    .registry
                    .pool_mut(pool)
                    .and_then(|s| s.next_due(pool, now))
                {
                    self.start(cx, pool, p.addr, p.deadline, now);
                }
            }
        }
        let mut i = 0;
        while i < self.active.len() {
            match self.advance(cx, i, now) {
                Some(ok) => {
                    let p = self.active.swap_remove(i);
                    if let Some(s) = cx.registry.pool_mut(&p.pool)
                        && s.record_result(&p.pool, p.addr, ok, now)
                    {
                        cx.evict(&p.pool, p.addr);
                    }
                    cx.net.retire(p.sock, Some(p.port), !ok);
                }
                None => i += 1,
            }
        }
    }

    fn start(
        &mut self,
        cx: &mut ProbeCtx<'_>,
        pool: &Arc<Upstream>,
        addr: SocketAddr,
        deadline: Instant,
        now: Instant,
    ) {
        let fail = |cx: &mut ProbeCtx<'_>| {
            if let Some(s) = cx.registry.pool_mut(pool)
                && s.record_result(pool, addr, false, now)
            {
                cx.evict(pool, addr);
            }
        };
        let Some(port) = cx.net.ports().alloc() else {
            return fail(cx);
        };
        // Ownerless: the stack still runs its egress and timers.
        let Some(sock) = cx.net.connect(NO_OWNER, addr, port) else {
            cx.net.ports().free(port);
            return fail(cx);
        };
        let request = pool.policy.health.as_ref().and_then(|h| h.request(addr));
        self.active.push(ActiveProbe {
            pool: pool.clone(),
            addr,
            sock,
            port,
            deadline,
            request,
            sent: 0,
            status_line: [0; 32],
            got: 0,
        });
    }

    /// Some(result) when the probe is decided.
    fn advance(&mut self, cx: &mut ProbeCtx<'_>, i: usize, now: Instant) -> Option<bool> {
        let p = &mut self.active[i];
        let sock = &mut cx.net.stream(p.sock);
        match sock.state() {
            StreamState::SynSent | StreamState::SynReceived => {}
            StreamState::Established | StreamState::CloseWait => {
                let Some(req) = &p.request else {
                    return Some(true);
                };
                if p.sent < req.len() && sock.may_send() {
                    p.sent += sock.send_slice(&req[p.sent..]);
                    cx.net.mark(p.sock);
                }
                let sock = &mut cx.net.stream(p.sock);
                if sock.can_recv() && p.got < p.status_line.len() {
                    p.got += sock.recv_slice(&mut p.status_line[p.got..]);
                }
                if let Some(status) = status_code(&p.status_line[..p.got]) {
                    let ok = p
                        .pool
                        .policy
                        .health
                        .as_ref()
                        .is_some_and(|h| h.status_ok(status));
                    return Some(ok);
                }
                if !sock.may_recv() && p.got > 0 {
                    return Some(false);
                }
            }
            _ => return Some(false),
        }
        (now >= p.deadline).then_some(false)
    }
}

/// The status code of `HTTP/1.x NNN ...`, once those bytes are in.
fn status_code(line: &[u8]) -> Option<u16> {
    if line.len() < 12 || !line.starts_with(b"HTTP/1.") {
        return None;
    }
    std::str::from_utf8(&line[9..12]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::status_code;

    #[test]
    fn status_line_parses_once_complete() {
        assert_eq!(status_code(b"HTTP/1.1 204 No Content"), Some(204));
        assert_eq!(status_code(b"HTTP/1.1 2"), None);
        assert_eq!(status_code(b"SSH-2.0-x   "), None);
    }
}
