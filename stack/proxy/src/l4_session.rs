//! One connection of a TCP listener: pick an endpoint with the pool's
//! balancer (a hash balancer hashes the client's address), connect through
//! [`Attempt`] (retried on the next endpoint while no byte went up), then
//! splice both ways ([`ferrogate_l4::Splice`]) until both sides have ended,
//! one is reset, or nothing moved for the idle timeout. A listener with
//! `[listeners.tls]` completes the client's TLS handshake before it picks,
//! and splices the plaintext ([`ferrogate_l4::TlsPair`]). One access
//! record per connection, at its end.

use std::net::SocketAddr;
use std::sync::Arc;

use ferrogate_l4::{End, Splice, Status, StreamPair, TlsPair};

use crate::access::{AccessRecord, Protocol};
use crate::attempt::{Attempt, Connecting, L4_UNSENT, Started};
use crate::error::ProxyError;
use crate::http::{ByteBuf, RequestView};
use crate::lb::{Balancer, Upstream};
use crate::net::{Instant, StreamId, StreamState};
use crate::phases::ProxyHttp;
use crate::proxy::{Ctx, after};
use crate::route::L4Listener;
use crate::tls::{ByteStream, ListenerTls};

enum Phase {
    /// Accepted: the first run picks and connects.
    Start,
    /// From a trusted load balancer: reading its PROXY header.
    ProxyHeader,
    /// TLS passthrough: reading the ClientHello (kept, not consumed by
    /// anyone) until its server name picks the pool.
    Peek,
    /// TLS termination: the client's handshake, before any upstream.
    Handshake,
    Connecting,
    /// TLS passthrough: the bytes read while peeking go upstream first.
    Replay {
        sent: usize,
    },
    Splicing,
    Finished,
}

/// What a passthrough connection may read before it knows its pool: a
/// ClientHello and its record headers, a little more.
const HELLO_READ_MAX: usize = ferrogate_tls::MAX_HELLO + 1024;

pub(crate) struct L4Conn {
    client: StreamId,
    listener_port: u16,
    pool: Arc<Upstream>,
    /// Passthrough listeners: the pools by server name (empty: none; then
    /// `pool` is the listener's default).
    sni: Arc<[(String, Arc<Upstream>)]>,
    /// Load balancers whose PROXY header comes first.
    proxy_from: Arc<[(std::net::IpAddr, u8)]>,
    /// The ClientHello bytes read while peeking, replayed upstream (after
    /// a trusted PROXY header: what followed it).
    hello: Vec<u8>,
    /// TLS-terminating listeners: the client's session.
    tls: Option<ByteStream>,
    handshake_timeout: std::time::Duration,
    /// The client's first bytes were looked at for a PROXY header it may
    /// not send (or it is trusted to send one).
    first_checked: bool,
    idle: std::time::Duration,
    att: Attempt,
    splice: Splice,
    phase: Phase,
    deadline: Instant,
    started: Instant,
    client_addr: Option<SocketAddr>,
    upstream_addr: Option<SocketAddr>,
    /// Bytes of `splice` already added to the worker's counters.
    counted: (u64, u64),
    /// The client is reset (not closed) when the connection is retired.
    reset_client: bool,
    reason: &'static str,
}

/// The key a hash balancer picks by: the client's address (`source`; a
/// header or cookie key has nothing to read and falls back to it).
pub(crate) fn source_key(pool: &Upstream, client: Option<SocketAddr>) -> u64 {
    match (&pool.policy.balancer, client) {
        (Balancer::Hash(on), Some(c)) => on.key(
            &RequestView::new("", None, "", crate::http::Headers::EMPTY),
            c.ip(),
        ),
        _ => 0,
    }
}

/// Untrusted sources: whether the client's first bytes (what the first read
/// that has any finds, not waiting for more) are a PROXY header, i.e. a
/// forged client address; decided once (`checked`).
fn spoofs(checked: &mut bool, first: &[u8]) -> bool {
    if *checked || first.is_empty() {
        return false;
    }
    *checked = true;
    crate::proxy_header::starts_with_proxy_signature(first)
}

impl L4Conn {
    /// None: the TLS session could not be created (the client is refused).
    pub(crate) fn new(
        client: StreamId,
        listener_port: u16,
        l4: &L4Listener,
        tls: Option<&Arc<ListenerTls>>,
        now: Instant,
    ) -> Option<Self> {
        let (tls, handshake_timeout) = match tls {
            None => (None, std::time::Duration::ZERO),
            Some(cfg) => match ByteStream::server(cfg.server.config.clone()) {
                Ok(s) => (Some(s), cfg.handshake_timeout),
                // Only for a config without a usable protocol version,
                // which validation rules out.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a TLS session");
                    return None;
                }
            },
        };
        Some(Self {
            client,
            listener_port,
            pool: l4.upstream.clone(),
            sni: l4.sni.clone(),
            proxy_from: l4.proxy_from.clone(),
            hello: Vec::new(),
            tls,
            handshake_timeout,
            first_checked: false,
            idle: l4.idle_timeout,
            att: Attempt::l4(),
            splice: Splice::new(),
            phase: Phase::Start,
            deadline: now,
            started: now,
            client_addr: None,
            upstream_addr: None,
            counted: (0, 0),
            reset_client: false,
            reason: "",
        })
    }

    pub(crate) fn client(&self) -> StreamId {
        self.client
    }

    pub(crate) fn listener_port(&self) -> u16 {
        self.listener_port
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    pub(crate) fn upstream_socket(&self) -> Option<StreamId> {
        self.att.conn.as_ref().map(|u| u.handle)
    }

    pub(crate) fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    /// Whether the client stream is to be reset rather than closed.
    pub(crate) fn reset_client(&self) -> bool {
        self.reset_client
    }

    /// Runs the connection; true when it made progress and may have more.
    pub(crate) fn drive<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>, scratch: &mut [u8]) -> bool {
        match self.phase {
            Phase::Start => {
                cx.stats.l4.connections += 1;
                self.client_addr = cx.net.stream(self.client).remote();
                let trusted = self
                    .client_addr
                    .is_some_and(|a| crate::proxy_header::in_prefixes(a.ip(), &self.proxy_from));
                self.deadline = after(cx.now, self.idle);
                if trusted {
                    // Its PROXY header is expected, not a forgery.
                    self.first_checked = true;
                    self.phase = Phase::ProxyHeader;
                    return true;
                }
                self.after_header(cx)
            }
            Phase::ProxyHeader => self.proxy_header(cx),
            Phase::Peek => self.peek(cx),
            Phase::Handshake => self.handshake(cx),
            Phase::Connecting => self.connect(cx),
            Phase::Replay { .. } => self.replay(cx),
            Phase::Splicing => self.splice(cx, scratch),
            Phase::Finished => false,
        }
    }

    /// With the client known: peek at its hello (passthrough), shake
    /// hands (termination), or connect.
    fn after_header<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        if !self.sni.is_empty() {
            self.phase = Phase::Peek;
            return true;
        }
        if self.tls.is_some() {
            self.phase = Phase::Handshake;
            self.deadline = after(cx.now, self.handshake_timeout);
            return true;
        }
        self.pick(cx)
    }

    /// `spoofs` on what the client's socket holds, left there.
    fn socket_spoofs<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        if self.first_checked {
            return false;
        }
        let mut first = [0u8; crate::proxy_header::SIGNATURE_MAX];
        let n = cx.net.stream(self.client).peek_slice(&mut first);
        spoofs(&mut self.first_checked, &first[..n])
    }

    fn untrusted_header<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        cx.stats.l4.untrusted_proxy_header += 1;
        self.finish(cx, true, "untrusted_proxy_header")
    }

    /// TLS termination: runs the client's handshake (a trusted balancer's
    /// leftover bytes first); once done, picks an endpoint. A failed,
    /// abandoned or too slow handshake resets the client.
    fn handshake<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        if self.socket_spoofs(cx) {
            return self.untrusted_header(cx);
        }
        let tls = self.tls.as_mut().expect("a TLS listener's connection");
        let sock = &mut cx.net.stream(self.client);
        let mut fed = Ok(0);
        if !self.hello.is_empty() {
            fed = tls.feed_read(sock, &self.hello);
            if let Ok(n) = fed {
                self.hello.drain(..n);
            }
        }
        let fed = fed.and_then(|a| Ok(a + tls.handshake(sock)?));
        let progressed = match fed {
            Ok(n) => n > 0,
            Err(e) => {
                tracing::debug!(client = ?self.client_addr, error = %e, "TLS handshake failed");
                return self.handshake_failed(cx);
            }
        };
        if !tls.is_handshaking() {
            if !self.hello.is_empty() {
                // Data before our handshake answer: nothing TLS allows
                // without early data, which is not offered.
                return self.handshake_failed(cx);
            }
            cx.stats.l4.tls_handshakes += 1;
            self.deadline = after(cx.now, self.idle);
            return self.pick(cx);
        }
        let st = sock.state();
        let eof = st != StreamState::SynReceived && !sock.may_recv();
        if st == StreamState::Closed || eof || cx.now >= self.deadline {
            // Reset, a truncated hello followed by FIN, or too slow.
            return self.handshake_failed(cx);
        }
        progressed
    }

    fn handshake_failed<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        cx.stats.l4.tls_handshake_failed += 1;
        self.finish(cx, true, "tls_handshake_failed")
    }

    /// Reads a trusted load balancer's PROXY header; the client it names
    /// replaces the connection's address (hashing, logs, our own header
    /// upstream). What follows it stays for the upstream.
    fn proxy_header<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        use crate::proxy_header::{PROXY_HEADER_MAX, Received, parse_proxy_header};
        let (got, client_done) = self.read_first(cx, PROXY_HEADER_MAX);
        match parse_proxy_header(&self.hello) {
            Received::Header { len, client } => {
                self.hello.drain(..len);
                if let Some(c) = client {
                    self.client_addr = Some(c);
                }
                self.after_header(cx)
            }
            Received::Incomplete if !client_done && cx.now < self.deadline => got > 0,
            Received::Incomplete | Received::Invalid => {
                cx.stats.l4.bad_proxy_header += 1;
                self.finish(cx, true, "bad_proxy_header")
            }
        }
    }

    /// Reads what the client sent into `hello`, up to `cap` octets in all:
    /// (octets read now, whether the client has ended its side).
    fn read_first<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>, cap: usize) -> (usize, bool) {
        let sock = &mut cx.net.stream(self.client);
        let mut buf = [0u8; 2048];
        let mut got = 0;
        while self.hello.len() < cap {
            let room = buf.len().min(cap - self.hello.len());
            let n = sock.recv_slice(&mut buf[..room]);
            if n == 0 {
                break;
            }
            self.hello.extend_from_slice(&buf[..n]);
            got += n;
        }
        let client_done = sock.state() != StreamState::SynReceived && !sock.may_recv();
        (got, client_done)
    }

    /// Picks an endpoint of `self.pool` and starts connecting.
    fn pick<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        let key = source_key(&self.pool, self.client_addr);
        self.att.begin(cx, self.pool.clone(), key);
        match self.att.pick(cx) {
            Ok(ep) => self.start(cx, ep),
            Err(e) => self.no_upstream(cx, e.into()),
        }
    }

    /// Reads the client's first bytes until they hold a whole ClientHello
    /// (its server name picks the pool), refusing anything else.
    fn peek<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        let (got, client_done) = self.read_first(cx, HELLO_READ_MAX);
        if spoofs(&mut self.first_checked, &self.hello) {
            return self.untrusted_header(cx);
        }
        match ferrogate_tls::peek_client_hello(&self.hello) {
            Ok(Some(info)) => {
                let pool =
                    crate::route::sni_pool(&self.sni, &self.pool, info.server_name.as_deref());
                self.pool = pool.clone();
                self.pick(cx)
            }
            Ok(None) if !client_done && cx.now < self.deadline => got > 0,
            Ok(None) | Err(_) => {
                // Not TLS, too large, cut short, or too slow: nothing to
                // route by.
                cx.stats.l4.bad_client_hello += 1;
                self.finish(cx, true, "bad_client_hello")
            }
        }
    }

    /// Sends the bytes read while peeking before anything else.
    fn replay<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        let Phase::Replay { sent } = &mut self.phase else {
            unreachable!()
        };
        let up = self.att.conn.as_ref().expect("connected upstream").handle;
        let sock = &mut cx.net.stream(up);
        if !sock.may_send() {
            cx.stats.l4.resets += 1;
            return self.finish(cx, true, "upstream_reset");
        }
        let n = sock.send_slice(&self.hello[*sent..]);
        *sent += n;
        if *sent == self.hello.len() {
            self.hello = Vec::new();
            self.phase = Phase::Splicing;
            return true;
        }
        n > 0
    }

    fn start<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>, ep: usize) -> bool {
        match self.att.start(cx, ep) {
            Ok(Started::Connecting { deadline }) => {
                self.phase = Phase::Connecting;
                self.deadline = deadline;
                true
            }
            Ok(Started::Reused) => unreachable!("an L4 attempt never reuses"),
            Err(e) => self.upstream_failed(cx, e),
        }
    }

    fn connect<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        if cx.net.stream(self.client).state() == StreamState::Closed {
            // The client reset (or gave up) before the upstream answered.
            self.att.settle(cx, None);
            cx.stats.l4.resets += 1;
            return self.finish(cx, true, "client_reset");
        }
        // Plain pools only (the config refuses TLS pools): nothing arrives
        // here before the splice.
        let mut none = ByteBuf::with_capacity(0);
        match self.att.poll_connect(cx, &mut none, self.deadline) {
            Connecting::Pending => false,
            Connecting::Failed(e) => self.upstream_failed(cx, e),
            Connecting::Ready => {
                self.upstream_addr = self.att.conn.as_ref().map(|u| u.endpoint);
                let vip = cx.net.stream(self.client).local();
                if let (Some(kind), Some(client), Some(vip)) =
                    (self.pool.proxy_protocol, self.client_addr, vip)
                {
                    // Before anything of the client's (a peeked hello too).
                    let mut first = crate::proxy_header::proxy_header(kind, client, vip);
                    first.extend_from_slice(&self.hello);
                    self.hello = first;
                }
                self.phase = if self.hello.is_empty() {
                    Phase::Splicing
                } else {
                    Phase::Replay { sent: 0 }
                };
                self.deadline = after(cx.now, self.idle);
                true
            }
        }
    }

    /// A connect failed: the next endpoint when the pool's retry policy
    /// allows (no client byte went up yet), else the client is reset.
    fn upstream_failed<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>, e: ProxyError) -> bool {
        cx.stats.l4.connect_failures += 1;
        match self.att.failed(cx, e, Some(L4_UNSENT), None) {
            Ok(ep) => self.start(cx, ep),
            Err(e) => self.no_upstream(cx, e),
        }
    }

    fn no_upstream<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>, e: ProxyError) -> bool {
        cx.stats.l4.no_upstream += 1;
        self.finish(cx, true, e.code())
    }

    fn splice<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>, scratch: &mut [u8]) -> bool {
        // Plain listeners look at the client's first bytes here, as they
        // are read (the other paths did on their first read).
        if self.socket_spoofs(cx) {
            return self.untrusted_header(cx);
        }
        let upstream = self.upstream_socket().expect("spliced upstream");
        let (net, client) = (&mut cx.net, self.client);
        let run = match self.tls.as_mut() {
            Some(tls) => self.splice.run(
                &mut TlsPair {
                    net,
                    client,
                    upstream,
                    tls,
                },
                scratch,
            ),
            None => self.splice.run(
                &mut StreamPair {
                    net,
                    client,
                    upstream,
                },
                scratch,
            ),
        };
        self.count(cx);
        if run.moved > 0 {
            self.deadline = after(cx.now, self.idle);
        }
        match run.status {
            Status::Open if run.moved == 0 && cx.now >= self.deadline => {
                cx.stats.l4.idle_timeouts += 1;
                self.finish(cx, false, "idle_timeout")
            }
            Status::Open => run.more,
            Status::Done => self.finish(cx, false, "closed"),
            Status::Reset(End::Client) if self.tls.as_ref().is_some_and(ByteStream::failed) => {
                // A bad record from the client: the upstream was reset.
                cx.stats.l4.tls_record_errors += 1;
                self.finish(cx, true, "tls_record_error")
            }
            Status::Reset(side) => {
                cx.stats.l4.resets += 1;
                let reason = match side {
                    End::Client => "client_reset",
                    End::Upstream => "upstream_reset",
                };
                self.finish(cx, true, reason)
            }
        }
    }

    /// Adds the bytes moved since the last count to the worker's counters.
    fn count<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>) {
        let (up, down) = (self.splice.bytes_up(), self.splice.bytes_down());
        cx.stats.l4.bytes_up += up - self.counted.0;
        cx.stats.l4.bytes_down += down - self.counted.1;
        self.counted = (up, down);
    }

    /// Ends the connection: the upstream side is handed back (FIN or RST),
    /// the pool told, the record logged; the stack retires the client.
    fn finish<P: ProxyHttp>(
        &mut self,
        cx: &mut Ctx<'_, P>,
        reset: bool,
        reason: &'static str,
    ) -> bool {
        if matches!(self.phase, Phase::Splicing | Phase::Replay { .. }) {
            // The endpoint served the connection, however it ended.
            self.att.settle(cx, Some(true));
        } else {
            self.att.settle(cx, None);
        }
        self.att.close(cx, reset);
        if let Some(tls) = self.tls.as_mut().filter(|_| !reset) {
            // An orderly end (idle, or both sides done): close_notify before
            // the FIN, as far as it fits.
            tls.close(&mut cx.net.stream(self.client));
        }
        self.reset_client = reset;
        self.reason = reason;
        self.phase = Phase::Finished;
        self.log(cx);
        true
    }

    fn log<P: ProxyHttp>(&self, cx: &mut Ctx<'_, P>) {
        if !cx.access.enabled() {
            return;
        }
        let a = AccessRecord {
            at_us: cx.now.total_micros(),
            duration_us: (cx.now - self.started).total_micros(),
            client: self.client_addr,
            listener_port: self.listener_port,
            protocol: Protocol::Tcp,
            tls: self.tls.is_some(),
            upstream: self.upstream_addr,
            retries: self.att.retries,
            error: self.reason,
            bytes_up: self.splice.bytes_up(),
            bytes_down: self.splice.bytes_down(),
            ..AccessRecord::default()
        };
        if cx.access.push(&a) {
            cx.stats.access_log_queued += 1;
        } else {
            cx.stats.access_log_dropped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::{HashOn, PoolPolicy};

    fn pool(balancer: Balancer) -> Upstream {
        let eps: Vec<crate::lb::Endpoint> = ["10.0.0.3:1", "10.0.0.4:1", "10.0.0.5:1"]
            .iter()
            .map(|a| crate::lb::Endpoint::new(a.parse().unwrap()))
            .collect();
        let policy = PoolPolicy {
            balancer,
            ..PoolPolicy::default()
        };
        Upstream::new("p", 0, &eps, policy)
    }

    #[test]
    fn hash_pools_pick_by_the_client_address_not_its_port() {
        let p = pool(Balancer::Hash(HashOn::Source));
        let at = |a: &str| source_key(&p, Some(a.parse().unwrap()));
        assert_eq!(at("10.1.0.1:5000"), at("10.1.0.1:6000"));
        assert_ne!(at("10.1.0.1:5000"), at("10.1.0.2:5000"));
        let ip = "10.1.0.1".parse().unwrap();
        let view = RequestView::new("GET", None, "/", crate::http::Headers::EMPTY);
        assert_eq!(at("10.1.0.1:5000"), HashOn::Source.key(&view, ip));
        // A header key has no header to read here: the source it is.
        let h = pool(Balancer::Hash(HashOn::Header("x-user".into())));
        assert_eq!(
            source_key(&h, Some("10.1.0.1:1".parse().unwrap())),
            at("10.1.0.1:5000")
        );
        assert_eq!(
            source_key(
                &pool(Balancer::RoundRobin),
                Some("10.1.0.1:1".parse().unwrap())
            ),
            0
        );
    }
}
