//! One request's way to an upstream: pick an endpoint with the pool's
//! balancer, reuse an idle connection or open one (TLS included), report
//! the outcome to the pool (health, breaker), decide whether a failure may
//! be retried, and hand the connection back to the worker's pool. Shared by
//! an HTTP/1 connection and each HTTP/2 stream: the client protocol
//! differs, the upstream side does not.

use std::sync::Arc;

use crate::error::ProxyError;
use crate::http::{BodyFraming, ByteBuf};
use crate::lb::conn_pool::{DEFAULT_IDLE, PoolKey, UpstreamConn};
use crate::lb::{PickError, RequestBody, Upstream, UpstreamRegistry};
use crate::net::{Instant, StreamState};
use crate::phases::ProxyHttp;
use crate::proxy::{Ctx, after};

/// Endpoints one request may try.
pub(crate) const MAX_TRIES: usize = 8;

/// How an attempt got its connection.
pub(crate) enum Started {
    /// A live idle connection from the worker's pool: send at once.
    Reused,
    /// A new connection: wait for it (`poll_connect`) until `deadline`.
    Connecting { deadline: Instant },
}

/// Where a new connection stands.
pub(crate) enum Connecting {
    Ready,
    Pending,
    Failed(ProxyError),
}

/// The upstream side of one request, across its attempts.
#[derive(Default)]
pub(crate) struct Attempt {
    /// The connection of the attempt in flight.
    pub(crate) conn: Option<UpstreamConn>,
    pub(crate) pool: Option<Arc<Upstream>>,
    /// Retries made so far.
    pub(crate) retries: u8,
    /// The endpoint (index into the pool) of the attempt in flight.
    ep: Option<usize>,
    /// When `ep` was picked (a cancel gives back a breaker probe slot only
    /// to the half-open phase the pick took it from).
    picked_at: Option<Instant>,
    tried: [usize; MAX_TRIES],
    tried_len: usize,
    pub(crate) hash_key: u64,
    /// Some request-body bytes went upstream: the request can't be resent.
    pub(crate) body_started: bool,
    /// The attempt must open a new connection: the previous one failed on a
    /// pooled connection the origin had closed.
    fresh_only: bool,
    /// A TCP (L4) connection: always a new connection (never one of the
    /// worker's idle HTTP connections), never given back to the pool.
    pub(crate) l4: bool,
}

/// What an L4 connection passes to [`Attempt::failed`] as its "request"
/// while no client byte went upstream (it reads none before the upstream
/// connection is established): a request that can be sent again, so a
/// refused or timed-out connect is retried on the next endpoint under the
/// pool's retry policy (attempts, budget) like an idempotent request
/// without a body. Once bytes flow, a failure is never retried.
pub(crate) const L4_UNSENT: (&str, BodyFraming) = ("GET", BodyFraming::None);

impl Attempt {
    /// The upstream side of a TCP listener's connection (see `l4`).
    pub(crate) fn l4() -> Self {
        Self {
            l4: true,
            ..Self::default()
        }
    }

    /// Starts a request to `pool`: forgets the previous request's attempts.
    pub(crate) fn begin<P: ProxyHttp>(
        &mut self,
        cx: &mut Ctx<'_, P>,
        pool: Arc<Upstream>,
        hash_key: u64,
    ) {
        if let Some(p) = cx.registry.pool_mut(&pool) {
            p.begin_request(&pool, cx.now);
        }
        self.pool = Some(pool);
        self.retries = 0;
        self.tried_len = 0;
        self.hash_key = hash_key;
        self.body_started = false;
        self.fresh_only = false;
    }

    /// Asks the pool's balancer for an endpoint, avoiding those tried.
    pub(crate) fn pick<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>) -> Result<usize, PickError> {
        let pool = self.pool.as_ref().expect("pool chosen");
        let tried = &self.tried[..self.tried_len];
        match cx.registry.pool_mut(pool) {
            Some(p) => p.pick(pool, self.hash_key, tried, cx.now),
            None if !pool.endpoints.is_empty() => {
                let i = *cx.rr_cursor % pool.endpoints.len();
                *cx.rr_cursor = cx.rr_cursor.wrapping_add(1);
                Ok(i)
            }
            None => Err(PickError::NoHealthyEndpoint),
        }
    }

    /// Sends the attempt to endpoint `ep`: over a live idle connection from
    /// the worker's pool when there is one (and the attempt need not be
    /// fresh), else over a new connection.
    pub(crate) fn start<P: ProxyHttp>(
        &mut self,
        cx: &mut Ctx<'_, P>,
        ep: usize,
    ) -> Result<Started, ProxyError> {
        let pool = self.pool.clone().expect("pool chosen");
        let Some(&endpoint) = pool.endpoints.get(ep) else {
            return Err(ProxyError::NoHealthyEndpoint);
        };
        self.ep = Some(ep);
        self.picked_at = Some(cx.now);
        if !self.fresh_only && !self.l4 {
            let key = PoolKey::new(&pool, endpoint);
            let (conn_pool, net) = cx.conn_pool();
            if let Some(up) = conn_pool.checkout(&key, net) {
                cx.net.set_owner(up.handle, cx.conn);
                cx.net.mark(up.handle);
                self.conn = Some(up);
                cx.stats.upstream_reused += 1;
                return Ok(Started::Reused);
            }
        }
        let Some(port) = cx.net.ports().alloc() else {
            self.settle(cx, None);
            return Err(ProxyError::NoLocalPort);
        };
        let io = match &pool.tls {
            None => Ok(crate::tls::ByteStream::Plain),
            Some(tls) => {
                crate::tls::ByteStream::client(tls.config.clone(), tls.server_name(endpoint.ip()))
            }
        };
        let io = match io {
            Ok(io) => io,
            Err(e) => {
                cx.net.ports().free(port);
                self.settle(cx, None);
                tracing::warn!(error = %e, "cannot start an upstream TLS session");
                return Err(ProxyError::UpstreamTls);
            }
        };
        let Some(handle) = cx.connect(endpoint, port) else {
            cx.net.ports().free(port);
            self.settle(cx, None);
            return Err(ProxyError::UpstreamConnectFailed);
        };
        cx.stats.upstream_connects += 1;
        self.conn = Some(UpstreamConn {
            handle,
            local_port: port,
            endpoint,
            served: 0,
            io,
        });
        let timeout = pool
            .policy
            .timeouts
            .connect
            .unwrap_or(cx.cfg.timeouts.upstream_connect);
        Ok(Started::Connecting {
            deadline: after(cx.now, timeout),
        })
    }

    /// When the response head must have come: the pool's response timeout,
    /// else the stack's.
    pub(crate) fn response_deadline<P: ProxyHttp>(&self, cx: &Ctx<'_, P>) -> Instant {
        let timeout = self
            .pool
            .as_ref()
            .and_then(|p| p.policy.timeouts.response)
            .unwrap_or(cx.cfg.timeouts.upstream_response);
        after(cx.now, timeout)
    }

    /// When the origin must have sent more of a body it has begun: the
    /// pool's read timeout, else the stack's, else the response timeout
    /// (the pool's, else the stack's).
    pub(crate) fn read_deadline<P: ProxyHttp>(&self, cx: &Ctx<'_, P>) -> Instant {
        let pool = self.pool.as_ref().map(|p| &p.policy.timeouts);
        let timeout = pool
            .and_then(|t| t.read)
            .or(cx.cfg.timeouts.upstream_read)
            .or(pool.and_then(|t| t.response))
            .unwrap_or(cx.cfg.timeouts.upstream_response);
        after(cx.now, timeout)
    }

    /// Moves a new connection on (TCP, then the TLS handshake for TLS
    /// pools); bytes the origin sends early land in `from_upstream`.
    pub(crate) fn poll_connect<P: ProxyHttp>(
        &mut self,
        cx: &mut Ctx<'_, P>,
        from_upstream: &mut ByteBuf,
        deadline: Instant,
    ) -> Connecting {
        let up = self.conn.as_mut().expect("connecting upstream");
        match cx.net.stream(up.handle).state() {
            StreamState::Established if up.io.is_handshaking() => {
                let sock = &mut cx.net.stream(up.handle);
                up.io.flush(sock);
                match crate::client_io::recv_into(&mut up.io, sock, from_upstream) {
                    Err(e) => {
                        cx.stats.upstream_tls_failures += 1;
                        tracing::debug!(endpoint = %up.endpoint, error = %e, "upstream TLS handshake failed");
                        return Connecting::Failed(ProxyError::UpstreamTls);
                    }
                    Ok(_) if !up.io.is_handshaking() => return Connecting::Ready,
                    Ok(_) => {}
                }
                let sock = &mut cx.net.stream(up.handle);
                if !up.io.may_recv(sock) {
                    cx.stats.upstream_tls_failures += 1;
                    tracing::debug!(endpoint = %up.endpoint, "upstream closed during the TLS handshake");
                    return Connecting::Failed(ProxyError::UpstreamTls);
                }
                if cx.now >= deadline {
                    return Connecting::Failed(ProxyError::UpstreamConnectTimeout);
                }
                Connecting::Pending
            }
            StreamState::Established => Connecting::Ready,
            StreamState::Closed | StreamState::TimeWait => {
                Connecting::Failed(ProxyError::UpstreamConnectFailed)
            }
            _ if cx.now >= deadline => Connecting::Failed(ProxyError::UpstreamConnectTimeout),
            _ => Connecting::Pending,
        }
    }

    /// Reads what the upstream sent (decrypted, for TLS pools) into
    /// `from_upstream`. A TLS error ends the stream (`may_recv`).
    pub(crate) fn fill<P: ProxyHttp>(
        &mut self,
        cx: &mut Ctx<'_, P>,
        from_upstream: &mut ByteBuf,
    ) -> usize {
        let Some(up) = self.conn.as_mut() else {
            return 0;
        };
        match crate::client_io::recv_into(&mut up.io, &mut cx.net.stream(up.handle), from_upstream)
        {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(endpoint = %up.endpoint, error = %e, "upstream TLS error");
                0
            }
        }
    }

    /// Whether the upstream may still send (no FIN, no TLS close_notify).
    pub(crate) fn may_recv<P: ProxyHttp>(&self, cx: &mut Ctx<'_, P>) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|up| up.io.may_recv(&cx.net.stream(up.handle)))
    }

    /// Reports the attempt's outcome to the pool (health, breaker); `None`
    /// gives back a pick that was never judged.
    pub(crate) fn settle<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>, ok: Option<bool>) {
        let Some(ok) = ok else {
            return self.cancel(cx.registry, cx.now);
        };
        let (Some(ep), Some(pool)) = (self.ep.take(), self.pool.clone()) else {
            return;
        };
        if let Some(p) = cx.registry.pool_mut(&pool)
            && p.finish(&pool, ep, ok, cx.now)
            && let Some(&addr) = pool.endpoints.get(ep)
        {
            // Ejected: its idle connections leave rotation with it.
            let (conn_pool, net) = cx.conn_pool();
            conn_pool.evict_endpoint(&pool, addr, net);
        }
    }

    /// Gives back a pick that was never judged (its in-flight slot, a
    /// half-open breaker probe): `settle(None)`, also where no `Ctx` is at
    /// hand (a session the stack ends from outside its drive). Once: a
    /// settled pick is not given back again.
    pub(crate) fn cancel(&mut self, registry: &mut UpstreamRegistry, now: Instant) {
        let (Some(ep), Some(pool)) = (self.ep.take(), self.pool.as_ref()) else {
            return;
        };
        if let Some(p) = registry.pool_mut(pool) {
            p.cancel(pool, ep, self.picked_at.unwrap_or(now), now);
        }
    }

    /// Gives the connection to the worker's pool for the next request to
    /// its endpoint (from any client), or closes it when the pool has
    /// enough or the endpoint left rotation.
    pub(crate) fn release<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>) {
        let (Some(up), Some(pool)) = (self.conn.take(), self.pool.clone()) else {
            return;
        };
        let in_rotation = pool
            .endpoints
            .iter()
            .position(|a| *a == up.endpoint)
            .is_some_and(|ep| {
                cx.registry
                    .pool(&pool)
                    .is_none_or(|p| p.usable(&pool, ep, cx.now))
            });
        if !in_rotation {
            // Ejected or failing its checks: nobody would be given it.
            cx.conn_pool.counters.evicted += 1;
            self.conn = Some(up);
            self.close(cx, false);
            return;
        }
        let key = PoolKey::new(&pool, up.endpoint);
        let handle = up.handle;
        let policy = &pool.policy;
        let idle = policy.timeouts.idle.unwrap_or(DEFAULT_IDLE);
        let (limit, max_requests) = (policy.keepalive, policy.max_requests);
        let tls = pool.tls.as_ref().map(|t| t.config.clone());
        let (conn_pool, net) = cx.conn_pool();
        conn_pool.release(key, up, tls, limit, max_requests, idle, net);
        // Its idle timer (or its FIN) is armed in this pass.
        cx.net.mark(handle);
    }

    /// Ends the connection after a whole response: to the worker's pool
    /// when `reuse`, else closed with a FIN.
    pub(crate) fn release_or_close<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>, reuse: bool) {
        if reuse {
            self.release(cx);
        } else {
            self.close(cx, false);
        }
    }

    /// Moves the connection to the stack's closing list (FIN, or a reset).
    /// The caller clears what it buffered from it: bytes an origin sent past
    /// its response must not prefix the next upstream's.
    pub(crate) fn close<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>, reset: bool) {
        if let Some(mut up) = self.conn.take() {
            if !reset {
                up.io.close(&mut cx.net.stream(up.handle));
            }
            cx.retire(up.handle, Some(up.local_port), reset);
        }
    }

    /// The attempt failed with `err`: closes its connection, tells the pool,
    /// and decides. `Ok(ep)`: retry on endpoint `ep` (`start` it); `Err`:
    /// the error to answer the client with. `request` is the request's
    /// method and body framing (None: no request in flight).
    pub(crate) fn failed<P: ProxyHttp>(
        &mut self,
        cx: &mut Ctx<'_, P>,
        err: ProxyError,
        request: Option<(&'static str, BodyFraming)>,
        route_id: Option<usize>,
    ) -> Result<usize, ProxyError> {
        cx.stats.upstream_errors += 1;
        let was_reused = self.conn.as_ref().is_some_and(|u| u.served > 0);
        // A failed TLS handshake already logged its reason.
        if let Some(up) = &self.conn
            && err != ProxyError::UpstreamTls
        {
            tracing::debug!(endpoint = %up.endpoint, error = %err, "upstream failed");
        }
        // A TLS session that failed closes gracefully so its alert reaches
        // the origin ahead of the FIN; anything else is reset.
        let tls_failed = self.conn.as_ref().is_some_and(|u| u.io.failed());
        self.close(cx, !(err == ProxyError::UpstreamTls && tls_failed));
        let Some((method, framing)) = request else {
            return Err(err);
        };
        let pool = self.pool.clone().expect("pool of the failed attempt");
        // A kept-alive connection the origin closed just as we reused it is
        // the race every HTTP/1.1 proxy meets; it says nothing about health.
        let stale_keep_alive = was_reused && err == ProxyError::UpstreamClosedEarly;
        let failed_ep = self.ep;
        self.settle(cx, if stale_keep_alive { None } else { Some(false) });
        if let Some(ep) = failed_ep
            && self.tried_len < MAX_TRIES
            && !stale_keep_alive
        {
            self.tried[self.tried_len] = ep;
            self.tried_len += 1;
        }
        let body = if framing == BodyFraming::None {
            RequestBody::None
        } else if self.body_started {
            RequestBody::Streamed
        } else {
            RequestBody::Buffered
        };
        let allowed = if stale_keep_alive && self.retries == 0 {
            crate::lb::may_retry(method, body, err.retry_safe())
        } else {
            cx.registry
                .pool_mut(&pool)
                .map(|p| {
                    p.retry(
                        &pool,
                        self.retries as u32 + 1,
                        method,
                        body,
                        err.retry_safe(),
                        cx.now,
                    )
                    .is_ok()
                })
                .unwrap_or(false)
        };
        if !allowed {
            return Err(err);
        }
        self.retries += 1;
        cx.stats.retries += 1;
        if let Some(id) = route_id {
            cx.route_stats.get_mut(id).retries += 1;
        }
        // After an origin closed a pooled connection under us, the retry
        // opens a fresh one (Pingora's `ReusedOnly`).
        self.fresh_only = stale_keep_alive;
        self.pick(cx).map_err(ProxyError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_gives_a_pick_back_once() {
        let pool = Arc::new(Upstream::simple(
            "origin",
            0,
            &["10.0.0.3:8080".parse().unwrap()],
        ));
        let now = Instant::from_millis(0);
        let mut reg = UpstreamRegistry::new();
        reg.sync(std::slice::from_ref(&pool), now);
        let in_flight = |reg: &UpstreamRegistry| reg.stats(now).pools[0].1.endpoints[0].in_flight;
        let pick = |reg: &mut UpstreamRegistry| {
            let p = reg.pool_mut(&pool).unwrap();
            p.pick(&pool, 0, &[], now).unwrap()
        };
        let mut att = Attempt {
            pool: Some(pool.clone()),
            ep: Some(pick(&mut reg)),
            ..Attempt::default()
        };
        assert_eq!(in_flight(&reg), 1);
        att.cancel(&mut reg, now);
        assert_eq!(in_flight(&reg), 0);
        // Another request's pick of the same endpoint is not given back by
        // a second end of this one.
        pick(&mut reg);
        att.cancel(&mut reg, now);
        assert_eq!(in_flight(&reg), 1);
    }
}
