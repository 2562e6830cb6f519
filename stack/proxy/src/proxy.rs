//! One client connection's HTTP/1.1 proxy state machine. It moves bytes
//! between the client socket and an upstream socket of the same stack, parses
//! heads, applies the route, and decides keep-alive, retries and errors.

mod cached;
pub(crate) mod plugin_body;

use std::net::IpAddr;
use std::sync::Arc;

use crate::net::{Instant, StreamId, StreamState, Streams};

use crate::access::{AccessRecord, AccessSink};
use crate::attempt::{Attempt, Connecting, Started};
use crate::cache::Part;
use crate::client_io::ClientIo;
use crate::config::StackConfig;
use crate::error::ProxyError;
use crate::http::HeaderSlots;
use crate::http::head;
use crate::http::{BodyFraming, ByteBuf, ChunkedDecoder, RequestHead, RequestView};
use crate::jwt::JwtAuth;
use crate::lb::Upstream;
use crate::lb::conn_pool::ConnPool;
use crate::lb::{Balancer, UpstreamRegistry};
use crate::limits;
use crate::phases::{ProxyHttp, RequestInfo, ResponseInfo, Verdict};
use crate::quota::Quota;
use crate::route::{DirectResponse, RouteAction, RouteTable};
use crate::route_stats::RouteCounters;
use crate::rules::{Rewrite, Rewrites, RuleAction};
use crate::stats::StackStats;

/// Buffers of one connection, recycled between connections.
pub(crate) struct ConnBufs {
    /// Bytes from the client not yet handled (request heads and bodies).
    from_client: ByteBuf,
    /// Bytes from the upstream not yet handled (response heads and bodies).
    from_upstream: ByteBuf,
    /// The rewritten request head, kept until a response arrives (retries).
    request_head: ByteBuf,
    /// A response head or local response waiting to go to the client.
    to_client: ByteBuf,
}

impl ConnBufs {
    pub(crate) fn new(size: usize) -> Self {
        Self {
            from_client: ByteBuf::with_capacity(size),
            from_upstream: ByteBuf::with_capacity(size),
            request_head: ByteBuf::with_capacity(size),
            to_client: ByteBuf::with_capacity(size),
        }
    }

    /// What a parked connection holds: four unallocated buffers.
    pub(crate) fn none() -> Self {
        Self::new(0)
    }

    /// Has storage (not the placeholder of a parked connection).
    pub(crate) fn is_held(&self) -> bool {
        self.from_client.capacity() > 0
    }

    fn clear(&mut self) {
        self.from_client.clear();
        self.from_upstream.clear();
        self.request_head.clear();
        self.to_client.clear();
    }
}

pub(crate) enum Body {
    Done,
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

impl Body {
    pub(crate) fn from_framing(f: BodyFraming) -> Self {
        match f {
            BodyFraming::None => Body::Done,
            BodyFraming::Length(n) => Body::Length(n),
            BodyFraming::Chunked => Body::Chunked(ChunkedDecoder::new()),
            BodyFraming::UntilClose => Body::UntilClose,
        }
    }
}

enum Phase {
    /// TLS listeners: until the handshake completes.
    Handshake,
    ReadHead,
    WriteLocal {
        keep: bool,
    },
    Connect,
    SendRequest {
        head_sent: usize,
        body: Body,
    },
    ReadResponseHead,
    StreamResponse {
        body: Body,
        keep_client: bool,
        keep_upstream: bool,
    },
    /// Another request is fetching the same key: wait for it (polled at
    /// the cache's `wait_poll`), then look up again.
    CacheWait {
        ticket: ferrogate_cache::WaitTicket,
        /// Looks so far (the interval between them grows).
        polls: u8,
        upstream: Arc<Upstream>,
        hash_key: u64,
    },
    /// A stored response's body going to the client (its head is in
    /// `to_client`); `pending`: the part of a chunk not yet taken.
    CacheServe {
        reader: ferrogate_cache::BodyReader,
        /// The deadline is the client's idle timeout (else the object's
        /// poll interval).
        client_wait: bool,
        slice: crate::cache::BodySlice,
        chunked: bool,
        pending: bytes::Bytes,
        keep_client: bool,
    },
    /// The client left mid-body while the body was being stored: the
    /// rest comes from the origin into the object, for its other readers.
    CacheFill(crate::detached_fill::DetachedFill),
    /// After `101 Switching Protocols`: bytes both ways until one side ends.
    Tunnel,
    /// The answer is out and our FIN sent, but the client may still be
    /// sending a body nobody will read: discard it until the client closes
    /// too (or the drain's bounds), so that a reset does not destroy the
    /// response in the client's receive buffer (a lingering close).
    Drain {
        fin_sent: bool,
        left: usize,
    },
    Close,
    Finished,
    /// The client chose HTTP/2 (ALPN `h2`, or the h2c preface): the stack
    /// hands the connection to an `H2Conn`.
    ToH2,
}

/// Longest request id kept (a client's longer id is forwarded, not echoed).
pub(crate) const REQUEST_ID_MAX: usize = 64;
/// Most request-body bytes a lingering close discards.
const DRAIN_MAX_BYTES: usize = 4 << 20;

/// Everything of the stack a connection may touch while it runs.
pub(crate) struct Ctx<'a, P: ProxyHttp> {
    /// The worker's streams; a connection touches only its own.
    pub net: Streams<'a>,
    /// The proxy's phases (routing, header rules, logging).
    pub phases: &'a P,
    /// This connection's index in the stack, recorded as the owner of the
    /// streams it opens so that their frames and timers wake it.
    pub conn: u32,
    pub routes: &'a RouteTable,
    pub stats: &'a mut StackStats,
    pub cfg: &'a StackConfig,
    pub rr_cursor: &'a mut usize,
    /// Per-worker pool state: health, breakers, retry budgets, balancers.
    pub registry: &'a mut UpstreamRegistry,
    /// The engine's rate-limit buckets, shared by its workers.
    pub quota: &'a Quota,
    /// The engine's response cache.
    pub cache: &'a crate::cache::CacheHandle,
    /// The worker's idle upstream connections, shared by its connections.
    pub conn_pool: &'a mut ConnPool,
    pub route_stats: &'a mut RouteCounters,
    pub access: &'a AccessSink,
    /// Generated request ids: `<worker tag>-<sequence>`.
    pub request_seq: &'a mut u64,
    pub id_tag: u32,
    pub now: Instant,
    /// The worker drains (a graceful stop): no response keeps its client
    /// connection, idle connections close.
    pub draining: bool,
    /// The worker's proxy-wasm plugin instances.
    pub plugins: &'a mut crate::plugin_phase::WorkerPlugins,
    /// Background revalidations asked for (started after this drive).
    pub background: &'a mut crate::revalidation::Background,
}

impl<'a, P: ProxyHttp> Ctx<'a, P> {
    /// Opens an upstream connection owned by this connection.
    pub(crate) fn connect(
        &mut self,
        remote: std::net::SocketAddr,
        local_port: u16,
    ) -> Option<StreamId> {
        self.net.connect(self.conn, remote, local_port)
    }

    /// The worker's connection pool, with the streams it closes with.
    pub(crate) fn conn_pool(&mut self) -> (&mut ConnPool, &mut Streams<'a>) {
        (self.conn_pool, &mut self.net)
    }

    /// Hands a stream back to the stack to close (FIN) or reset and reuse.
    pub(crate) fn retire(&mut self, h: StreamId, local_port: Option<u16>, reset: bool) {
        self.net.retire(h, local_port, reset);
    }
}

pub(crate) struct Conn<P: ProxyHttp> {
    client: StreamId,
    /// The client byte stream: plain, or through a TLS session.
    io: ClientIo,
    client_ip: Option<IpAddr>,
    listener_port: u16,
    /// The upstream side of the request in flight.
    att: Attempt,
    request: Option<RequestHead>,
    /// `request_body_filter` was told the body ended (once per request,
    /// however many attempts).
    body_end_seen: bool,
    /// The request came without Host (HTTP/1.0): where in `request_head`
    /// each attempt writes the one its pool and endpoint call for.
    host_at: Option<usize>,
    /// The upstream answered before the request body was complete: the
    /// rest of it is not sent, and neither connection is kept.
    body_abandoned: bool,
    upgrade: bool,
    /// A plain listener with `http2`: the first bytes may be the h2c
    /// preface (prior knowledge). Cleared once a request head came.
    h2c: bool,
    route_id: Option<usize>,
    /// What the allow rules that matched the request in flight change.
    rewrite: Rewrites,
    /// The route's canary split of the request in flight, and its arm.
    canary: Option<(Arc<crate::canary::Canary>, bool)>,
    /// The upstream target when a rule rewrites it (kept: no allocation
    /// once grown).
    target_buf: String,
    started: Instant,
    request_id: [u8; REQUEST_ID_MAX],
    request_id_len: usize,
    /// The record of the request in flight, for the access log and the
    /// logging phase.
    access: AccessRecord,
    /// The phases' state for the request in flight.
    pctx: P::Ctx,
    /// The cache's state for the request in flight (caching routes), what
    /// it did (counted once the response head goes out), and the stored
    /// object being written from the origin's body.
    cache: Option<Box<crate::cache::CacheReq>>,
    cache_status: Option<ferrogate_cache::CacheStatus>,
    cache_writer: Option<crate::cache::Filler>,
    /// The response body in flight goes through plugins' body phase.
    plugin_body: Option<Box<plugin_body::PluginBody>>,
    /// The request body in flight goes through plugins' body phase.
    request_plugin_body: Option<Box<plugin_body::PluginBody>>,
    /// A request head came on this connection: while draining, such a
    /// connection closes once idle (a new one may still send its first).
    had_request: bool,
    /// When the connection last went idle between two requests (or the
    /// drain began, if later).
    idle_since: Instant,
    /// The deadline was brought forward to close an idle connection of a
    /// draining worker: a request that starts arriving gets its own.
    drain_deadline: bool,
    phase: Phase,
    deadline: Instant,
    bufs: ConnBufs,
}

/// Keeps the client's `X-Request-Id` (for echoing) or makes one.
pub(crate) fn set_request_id(
    id: &mut [u8; REQUEST_ID_MAX],
    len: &mut usize,
    req: &crate::http::Request<'_>,
    cx: &mut Ctx<'_, impl ProxyHttp>,
) {
    use std::io::Write as _;
    match head::request_id(req) {
        Some(v) if v.len() <= REQUEST_ID_MAX => {
            id[..v.len()].copy_from_slice(v);
            *len = v.len();
        }
        Some(_) => *len = 0,
        None => {
            *cx.request_seq += 1;
            let mut w = &mut id[..];
            let before = w.len();
            let _ = write!(w, "{:08x}-{:x}", cx.id_tag, *cx.request_seq);
            *len = before - w.len();
        }
    }
}

/// What the request phases and the router decided for a request.
pub(crate) enum Routing<'r> {
    Route(&'r crate::route::Route),
    NoRoute,
    /// `request_filter` answers itself.
    Respond(Arc<DirectResponse>),
    Fail(ProxyError),
}

/// Runs the request phases for a parsed request (either protocol) and
/// records the route in the access record and its counters. In order:
///
/// 1. when what happens depends on the route ([`Listener::route_policy`]),
///    the route is looked up with the default lookup (side-effect free, no
///    phase runs); should the path as origins resolve it (`%XX`, `//`, dot
///    segments, `\`, `;params`) route elsewhere and either route have
///    policy, the request is refused (400, `ambiguous_paths`): the raw
///    target goes upstream;
/// 2. bearer token: the provider of the route looked up in 1
///    ([`Listener::jwt_for`]), else the listener's;
/// 3. the listener's rules (may test the token's claims), then the
///    listener's plugins (viewer request);
/// 4. [`ProxyHttp::request_filter`], then [`ProxyHttp::upstream_peer`]
///    (routing; the default reuses the lookup of 1); should the phases
///    pick a route that needs another token than the one checked in 2, it
///    is checked here and the listener's rules run again with its claims;
/// 5. the chosen route's rules;
/// 6. a path that resolves under an allow rule's `rewrite_prefix` but was
///    sent outside it is refused (400, `ambiguous_paths`);
/// 7. rate limits, the listener's then the route's;
/// 8. the route's plugins (origin request), on the head as the listener's
///    plugins left it.
///
/// `rewrite`: what the allow rules that matched change (the listener's
/// and the route's, both applied).
///
/// [`Listener::jwt_for`]: crate::route::Listener::jwt_for
/// [`Listener::route_policy`]: crate::route::Listener::route_policy
pub(crate) fn choose_route<'r, P: ProxyHttp>(
    cx: &mut Ctx<'r, P>,
    info: &mut RequestInfo<'_>,
    pctx: &mut P::Ctx,
    access: &mut AccessRecord,
    rewrite: &mut Rewrites,
    protocol: &str,
    has_body: bool,
) -> Routing<'r> {
    let (phases, routes) = (cx.phases, cx.routes);
    // The previous request's plugin contexts, if it ended without a
    // response head (an error answer, a client that left).
    crate::plugin_phase::finish(cx.plugins, &mut rewrite.plugin, cx.stats);
    rewrite.clear();
    info.looked_up = None;
    let listener = routes.listener(info.listener_port);
    // Whatever answers this request, HTTP/3 on the port is advertised
    // to a client that is not using it.
    if protocol != "HTTP/3" {
        rewrite.alt_svc = listener.and_then(|l| l.alt_svc().cloned());
    }
    let mut looked_up = None;
    if let Some(l) = listener
        && l.route_policy()
    {
        let i = l.lookup(&info.view);
        if !l.routes_alike_normalized(&info.view, i) {
            cx.stats.ambiguous_paths += 1;
            access.tag.set(b"ambiguous_path");
            return Routing::Respond(ambiguous_path());
        }
        info.looked_up = Some((std::ptr::from_ref(l), i));
        looked_up = Some(i.map(|i| &l.routes()[i]));
    }
    let info = &*info;
    let by_route = listener.is_some_and(|l| l.jwt_by_route());
    let provider = listener.and_then(|l| match looked_up {
        Some(route) if by_route => l.jwt_for(route),
        _ => l.jwt(),
    });
    // The claims with the provider that verified them.
    let mut claims = None;
    if let Some(jwt) = provider {
        match verify_bearer(cx.stats, jwt, info) {
            Ok(c) => claims = Some((c, jwt)),
            Err(answer) => return Routing::Respond(answer),
        }
    }
    let mut first_hit = None;
    if let Some(l) = listener
        && let Some(answer) = apply_rules(
            cx,
            l.rules(),
            info,
            claims.as_ref().map(|(c, _)| c),
            access,
            &mut rewrite.listener,
            &mut first_hit,
        )
    {
        return Routing::Respond(answer);
    }
    if let Some(l) = listener
        && let Some(answer) = plugin_request_phase(
            cx,
            l.plugins(),
            info,
            None,
            protocol,
            has_body,
            access,
            rewrite,
        )
    {
        return answer;
    }
    let route = match phases.request_filter(info, pctx) {
        Verdict::Continue => listener.and_then(|l| phases.upstream_peer(l, info, pctx)),
        Verdict::Respond(r) => return Routing::Respond(r),
        Verdict::Fail(e) => return Routing::Fail(e),
    };
    access
        .route
        .set(route.map(|r| r.name.as_bytes()).unwrap_or(b""));
    // The phases routed where the lookup above did not: that route's
    // provider holds (a token of another provider does not do; an exempt
    // route has no claims), and the listener's rules, which saw the other
    // provider's claims (or none), run again with its own when a rule
    // tests claims (else the verdict is the same). The first run's hit is
    // taken back: one request, one hit.
    if by_route
        && let Some(l) = listener
        && let chosen = l.jwt_for(route)
        && !same_provider(provider, chosen)
    {
        claims = match chosen {
            Some(jwt) => match verify_bearer(cx.stats, jwt, info) {
                Ok(c) => Some((c, jwt)),
                Err(answer) => return Routing::Respond(answer),
            },
            None => None,
        };
        if l.rules().uses_claims() {
            if let Some(id) = first_hit {
                cx.route_stats.rule_unhit(id);
            }
            access.rule.clear();
            access.tag.clear();
            if let Some(answer) = apply_rules(
                cx,
                l.rules(),
                info,
                claims.as_ref().map(|(c, _)| c),
                access,
                &mut rewrite.listener,
                &mut None,
            ) {
                return Routing::Respond(answer);
            }
        }
    }
    if let Some(r) = route
        && let Some(answer) = apply_rules(
            cx,
            &r.rules,
            info,
            claims.as_ref().map(|(c, _)| c),
            access,
            &mut rewrite.route,
            &mut None,
        )
    {
        return Routing::Respond(answer);
    }
    // A path that resolves under a rewritten prefix but was sent in
    // another form: the rewrite would not happen (see `dodges_rewrite`).
    if listener.is_some_and(|l| l.rules().dodges_rewrite(info.view.path))
        || route.is_some_and(|r| r.rules.dodges_rewrite(info.view.path))
    {
        cx.stats.ambiguous_paths += 1;
        access.tag.set(b"ambiguous_path");
        return Routing::Respond(ambiguous_path());
    }
    if let Some(answer) = apply_limits(cx, info, route, claims.as_ref(), access) {
        return Routing::Respond(answer);
    }
    match route {
        Some(route) => {
            if let Some(answer) = plugin_request_phase(
                cx,
                &route.plugins,
                info,
                Some(route),
                protocol,
                has_body,
                access,
                rewrite,
            ) {
                return answer;
            }
            cx.route_stats.get_mut(route.id).requests += 1;
            Routing::Route(route)
        }
        None => Routing::NoRoute,
    }
}

/// The viewer (the listener's plugins, `route` None) or origin (the
/// route's) request phase; Some: the plugins answered or failed.
#[allow(clippy::too_many_arguments)]
fn plugin_request_phase<'r, P: ProxyHttp>(
    cx: &mut Ctx<'r, P>,
    plugins: &[crate::plugin_phase::AttachedPlugin],
    info: &RequestInfo<'_>,
    route: Option<&crate::route::Route>,
    protocol: &str,
    has_body: bool,
    access: &mut AccessRecord,
    rewrite: &mut Rewrites,
) -> Option<Routing<'r>> {
    use crate::plugin_phase::{ViewerVerdict, request_phase};
    match request_phase(
        cx.plugins,
        plugins,
        info,
        route,
        protocol,
        !has_body,
        &mut rewrite.plugin,
        cx.stats,
    ) {
        ViewerVerdict::Continue => None,
        ViewerVerdict::Respond(r) => {
            access.tag.set(b"plugin");
            Some(Routing::Respond(r))
        }
        ViewerVerdict::Fail => {
            access.tag.set(b"plugin_failed");
            Some(Routing::Fail(ProxyError::PluginFailed))
        }
        ViewerVerdict::TooLarge => {
            access.tag.set(b"plugin_head_too_large");
            Some(Routing::Fail(ProxyError::BadRequest(
                crate::http::HeadError::TooManyHeaders,
            )))
        }
    }
}

fn same_provider(a: Option<&Arc<JwtAuth>>, b: Option<&Arc<JwtAuth>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (a, b) => a.is_none() && b.is_none(),
    }
}

/// The answer to a path that routes elsewhere once normalized: one
/// shared response (no allocation per request).
fn ambiguous_path() -> Arc<DirectResponse> {
    static ANSWER: std::sync::LazyLock<Arc<DirectResponse>> = std::sync::LazyLock::new(|| {
        Arc::new(DirectResponse {
            status: 400,
            content_type: "text/plain".into(),
            body: b"bad request: ambiguous path\n".to_vec(),
            location: None,
            retry_after: None,
            www_authenticate: None,
        })
    });
    ANSWER.clone()
}

/// Checks the request's bearer token against `jwt`; counts either way.
fn verify_bearer(
    stats: &mut StackStats,
    jwt: &crate::jwt::JwtAuth,
    info: &RequestInfo<'_>,
) -> Result<crate::jwt::Claims, Arc<DirectResponse>> {
    let fields = info
        .view
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("authorization"))
        .map(|h| h.value);
    match jwt.verify(fields) {
        Ok(c) => {
            stats.jwt_verified += 1;
            Ok(c)
        }
        Err(answer) => {
            stats.jwt_rejected += 1;
            Err(answer)
        }
    }
}

/// Takes the request from the listener's rate limits, then the route's;
/// the first one it is over answers (429). Counts per limit, hands an
/// escalated source to the engine (through the quota's queue).
fn apply_limits<P: ProxyHttp>(
    cx: &mut Ctx<'_, P>,
    info: &RequestInfo<'_>,
    route: Option<&crate::route::Route>,
    claims: Option<&(crate::jwt::Claims, &Arc<JwtAuth>)>,
    access: &mut AccessRecord,
) -> Option<Arc<DirectResponse>> {
    let listener = cx.routes.listener(info.listener_port)?;
    let on_route = route.map_or(&[][..], |r| &r.limits[..]);
    if listener.limits().is_empty() && on_route.is_empty() {
        return None;
    }
    let now_ns = cx.now.total_micros().max(0) as u64 * 1000;
    let header = |name: &str| info.view.header(name);
    let input = limits::KeyInput {
        client: info.client_ip,
        header: &header,
        route: route.map_or("", |r| &r.name),
        jwt_sub: claims.and_then(|(c, p)| Some((p.name.as_str(), c.sub.as_deref()?))),
    };
    for limit in listener.limits().iter().chain(on_route) {
        let mut escalated = false;
        let verdict = limits::check(limit, cx.quota, &input, now_ns, &mut escalated);
        // A limit always has its counters (the snapshot and the worker's
        // counters change together); the verdict holds regardless.
        let mut spare = crate::route_stats::LimitCounts::default();
        let counts = cx.route_stats.limit_mut(limit.id).unwrap_or(&mut spare);
        counts.escalated += u64::from(escalated);
        match verdict {
            limits::Verdict::NotCounted => {}
            limits::Verdict::Allowed => counts.allowed += 1,
            limits::Verdict::Limited(answer) => {
                counts.limited += 1;
                access.limit.set(limit.name.as_bytes());
                return Some(answer);
            }
        }
    }
    None
}

/// Whether this request of a route with a canary goes to the canary: by
/// the cohort key when the request carries it, else pseudo-randomly (the
/// worker's request count, spread).
pub(crate) fn canary_arm<P: ProxyHttp>(
    c: &crate::canary::Canary,
    info: &RequestInfo<'_>,
    cx: &Ctx<'_, P>,
) -> bool {
    use crate::canary::CohortKey;
    let key = match &c.key {
        Some(CohortKey::Header(n)) => info.view.header(n),
        Some(CohortKey::Cookie(n)) => crate::rules::cookie_values(&info.view.headers, n).next(),
        None => None,
    };
    c.choose(key, cx.stats.requests ^ (u64::from(cx.id_tag) << 32))
}

/// Records a response of a request a canary split; logs and counts a trip.
pub(crate) fn canary_record(
    stats: &mut StackStats,
    split: Option<(Arc<crate::canary::Canary>, bool)>,
    status: u16,
    latency_us: u64,
    now_us: u64,
) {
    let Some((c, arm)) = split else { return };
    if let Some(t) = c.record(arm, status, latency_us, now_us) {
        stats.canary_brake_trips += 1;
        tracing::warn!(
            route = %c.route,
            canary_pool = %c.pool.name,
            reason = t.reason,
            canary_requests = t.canary.requests,
            canary_5xx_ratio = t.canary.error_ratio(),
            baseline_5xx_ratio = t.baseline.error_ratio(),
            canary_p99_us = t.canary.p99_us,
            baseline_p99_us = t.baseline.p99_us,
            "canary brake tripped: no requests to the canary until the next apply"
        );
    }
}

/// The pool a request goes to: the rule's choice, else the route's.
pub(crate) fn rewritten_pool(rw: &Rewrites, route_pool: &Arc<Upstream>) -> Arc<Upstream> {
    rw.pool().unwrap_or(route_pool).clone()
}

/// A redirect's `Location`, a 429's `Retry-After`.
pub(crate) fn direct_lines(r: &DirectResponse, lines: &mut crate::http::HeaderLines<'_>) {
    if let Some(to) = &r.location {
        lines.add("Location", to.as_bytes());
    }
    if let Some(secs) = r.retry_after {
        lines.add_display("Retry-After", secs);
    }
    if let Some(challenge) = &r.www_authenticate {
        lines.add("WWW-Authenticate", challenge.as_bytes());
    }
}

/// Evaluates a list of L7 rules (the listener's, then the route's): counts
/// and records the rule that matched (the access record names the last
/// one, with its tag); a deny or redirect is the answer. An allow's
/// changes go to `rewrite`, the list's slot of [`Rewrites`] (both lists'
/// apply). `hit`: the id of the rule that matched, if one did.
fn apply_rules<P: ProxyHttp>(
    cx: &mut Ctx<'_, P>,
    rules: &crate::rules::Rules,
    info: &RequestInfo<'_>,
    claims: Option<&crate::jwt::Claims>,
    access: &mut AccessRecord,
    rewrite: &mut Option<Arc<Rewrite>>,
    hit: &mut Option<usize>,
) -> Option<Arc<DirectResponse>> {
    *rewrite = None;
    let rule = rules.evaluate_with_claims(&info.view, info.client_ip, claims)?;
    cx.route_stats.rule_hit(rule.id);
    *hit = Some(rule.id);
    access.rule.set(rule.name.as_bytes());
    match &rule.tag {
        Some(tag) => access.tag.set(tag.as_bytes()),
        None => access.tag.clear(),
    }
    match &rule.action {
        RuleAction::Allow => {
            rewrite.clone_from(&rule.rewrite);
            None
        }
        RuleAction::Deny(answer) => Some(answer.clone()),
        RuleAction::Redirect { status, location } => {
            let mut to = String::new();
            location.render(&info.view, info.https, &mut to);
            Some(Arc::new(DirectResponse {
                status: *status,
                content_type: "text/plain".into(),
                body: Vec::new(),
                location: Some(to),
                retry_after: None,
                www_authenticate: None,
            }))
        }
    }
}

/// Queues a filled access record (never waits: a full queue drops it and
/// counts), runs the logging phase, and clears it for the next request.
pub(crate) fn emit_access<P: ProxyHttp>(
    cx: &mut Ctx<'_, P>,
    a: &mut AccessRecord,
    pctx: &mut P::Ctx,
) {
    if cx.access.enabled() {
        if cx.access.push(a) {
            cx.stats.access_log_queued += 1;
        } else {
            cx.stats.access_log_dropped += 1;
        }
    }
    cx.phases.logging(a, pctx);
    a.reset();
}

/// The key a hashing balancer picks an endpoint by.
pub(crate) fn hash_key(pool: &Upstream, info: &RequestInfo<'_>) -> u64 {
    match &pool.policy.balancer {
        Balancer::Hash(on) => on.key(&info.view, info.client_ip),
        _ => 0,
    }
}

/// How long a draining worker keeps an idle keep-alive connection open
/// for a request the client may already have sent.
const DRAIN_IDLE_GRACE: crate::net::Duration = crate::net::Duration::from_millis(500);

pub(crate) fn after(now: Instant, d: std::time::Duration) -> Instant {
    now + crate::net::Duration::from_micros(d.as_micros() as u64)
}

impl<P: ProxyHttp> Conn<P> {
    pub(crate) fn new(
        client: StreamId,
        listener_port: u16,
        mut bufs: ConnBufs,
        cfg: &StackConfig,
        now: Instant,
        io: ClientIo,
    ) -> Self {
        bufs.clear();
        let (phase, deadline) = match io.handshake_timeout() {
            Some(t) => (Phase::Handshake, after(now, t)),
            None => (Phase::ReadHead, after(now, cfg.timeouts.client_header)),
        };
        Self {
            client,
            io,
            client_ip: None,
            listener_port,
            att: Attempt::default(),
            request: None,
            body_end_seen: false,
            host_at: None,
            body_abandoned: false,
            upgrade: false,
            h2c: false,
            route_id: None,
            rewrite: Rewrites::default(),
            canary: None,
            target_buf: String::new(),
            started: now,
            request_id: [0; REQUEST_ID_MAX],
            request_id_len: 0,
            access: AccessRecord::default(),
            pctx: P::Ctx::default(),
            cache: None,
            cache_status: None,
            cache_writer: None,
            plugin_body: None,
            request_plugin_body: None,
            had_request: false,
            idle_since: now,
            drain_deadline: false,
            phase,
            deadline,
            bufs,
        }
    }

    pub(crate) fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    /// Accepts the h2c preface as the first bytes (plain listeners with
    /// `http2`).
    pub(crate) fn allow_h2c(&mut self) {
        self.h2c = !self.io.stream.is_tls();
    }

    /// The client chose HTTP/2: hand it over with `into_h2`.
    pub(crate) fn wants_h2(&self) -> bool {
        matches!(self.phase, Phase::ToH2)
    }

    /// The client socket, its byte stream and the buffers (`from_client`
    /// holds what was read already) for an `H2Conn`.
    pub(crate) fn into_h2(self) -> (StreamId, ClientIo, u16, ConnBufs) {
        (self.client, self.io, self.listener_port, self.bufs)
    }

    /// What the client sent and nobody took yet.
    pub(crate) fn received(bufs: &ConnBufs) -> &[u8] {
        bufs.from_client.filled()
    }

    /// True for a connection parked by `park_bufs`: lend it buffers
    /// (`lend_bufs`) before driving it.
    pub(crate) fn needs_bufs(&self) -> bool {
        !self.bufs.is_held()
    }

    /// Gives a parked connection buffers: spare ones may hold what the
    /// connection that had them last left unread (a refused request, a
    /// tunnel's tail), so they start empty.
    pub(crate) fn lend_bufs(&mut self, mut bufs: ConnBufs) {
        bufs.clear();
        self.bufs = bufs;
    }

    /// An idle keep-alive connection (waiting for the next request head,
    /// nothing received or queued, no upstream) gives its buffers back:
    /// 100k idle connections must not hold 100k buffer sets.
    pub(crate) fn park_bufs(&mut self) -> Option<ConnBufs> {
        let idle = matches!(self.phase, Phase::ReadHead)
            && self.att.conn.is_none()
            && self.bufs.is_held()
            && self.bufs.from_client.is_empty()
            && self.bufs.to_client.is_empty();
        if !idle {
            return None;
        }
        let mut bufs = std::mem::replace(&mut self.bufs, ConnBufs::none());
        bufs.clear();
        Some(bufs)
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// A drain begins: an idle connection's grace counts from now.
    pub(crate) fn drain_begins(&mut self, now: Instant) {
        self.idle_since = self.idle_since.max(now);
    }

    /// The client socket and the current upstream socket, if any.
    pub(crate) fn sockets(&self) -> (StreamId, Option<StreamId>) {
        (self.client, self.att.conn.as_ref().map(|u| u.handle))
    }

    /// Hands back the buffers and the sockets still open, for recycling.
    pub(crate) fn into_parts(self) -> (ConnBufs, StreamId, Option<(StreamId, u16)>) {
        (
            self.bufs,
            self.client,
            self.att.conn.map(|u| (u.handle, u.local_port)),
        )
    }

    /// Runs the state machine until it cannot progress. True if anything moved.
    pub(crate) fn drive(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        let mut progressed = false;
        // Ciphertext that did not fit the socket last time goes first.
        self.io.stream.flush(&mut cx.net.stream(self.client));
        if let Some(up) = self.att.conn.as_mut() {
            up.io.flush(&mut cx.net.stream(up.handle));
        }
        for _ in 0..16 {
            let step = match self.phase {
                Phase::Handshake => self.handshake(cx),
                Phase::ReadHead => self.read_head(cx),
                Phase::WriteLocal { keep } => self.write_local(cx, keep),
                Phase::Connect => self.connect(cx),
                Phase::SendRequest { .. } => self.send_request(cx),
                Phase::ReadResponseHead => self.read_response_head(cx),
                Phase::StreamResponse { .. } => self.stream_response(cx),
                Phase::CacheWait { .. } => self.cache_wait(cx),
                Phase::CacheServe { .. } => self.cache_serve(cx),
                Phase::CacheFill { .. } => self.cache_fill(cx),
                Phase::Tunnel => self.tunnel(cx),
                Phase::Drain { .. } => self.drain(cx),
                Phase::Close => self.close(cx),
                Phase::Finished | Phase::ToH2 => false,
            };
            if !step {
                break;
            }
            progressed = true;
        }
        progressed
    }

    fn client_gone(&self, cx: &mut Ctx<'_, P>) -> bool {
        !cx.net.stream(self.client).is_active() || self.io.stream.failed()
    }

    /// Whether the client may still send (no FIN, no TLS close_notify).
    fn client_may_recv(&self, cx: &mut Ctx<'_, P>) -> bool {
        self.io.stream.may_recv(&cx.net.stream(self.client))
    }

    /// Reads what the client sent (decrypted, on TLS listeners) into
    /// `from_client`. A TLS error sends its alert and marks the client gone.
    fn fill_from_client(&mut self, cx: &mut Ctx<'_, P>) -> usize {
        let sock = &mut cx.net.stream(self.client);
        if self.client_ip.is_none() {
            self.client_ip = sock.remote().map(|a| a.ip());
        }
        let handshaking = self.io.stream.is_handshaking();
        match self.io.recv(sock, &mut self.bufs.from_client) {
            Ok(n) => n,
            Err(e) => {
                if handshaking {
                    cx.stats.tls_handshake_failures += 1;
                } else {
                    cx.stats.tls_record_errors += 1;
                }
                let alert = self.io.stream.tls_failure();
                if alert.is_some_and(crate::tls::FailAlert::sent) {
                    cx.stats.tls_alerts_sent += 1;
                }
                tracing::debug!(client = ?self.client_ip, error = %e, ?alert, "TLS error");
                0
            }
        }
    }

    /// TLS listeners: runs the handshake, then reads the first request.
    fn handshake(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        if self.client_gone(cx) {
            // Closed by the client, or a bad handshake (its alert is out).
            if !self.io.stream.failed() {
                cx.stats.tls_handshake_failures += 1;
            }
            self.finish(cx, false);
            return true;
        }
        let got = self.fill_from_client(cx);
        if self.io.stream.failed() {
            self.finish(cx, false);
            return true;
        }
        if !self.io.stream.is_handshaking() {
            match self.io.handshake_done() {
                Some(crate::tls::HandshakeKind::Resumed) => cx.stats.tls_handshakes_resumed += 1,
                _ => cx.stats.tls_handshakes_full += 1,
            }
            let h2 = self.io.stream.session().and_then(|s| s.alpn()) == Some(b"h2");
            self.phase = if h2 { Phase::ToH2 } else { Phase::ReadHead };
            self.deadline = after(cx.now, cx.cfg.timeouts.client_header);
            return true;
        }
        let sock = &mut cx.net.stream(self.client);
        let eof = sock.state() != StreamState::SynReceived && !sock.may_recv();
        if eof || cx.now >= self.deadline {
            // A truncated hello followed by FIN, or a client too slow.
            cx.stats.tls_handshake_failures += 1;
            self.finish(cx, false);
            return true;
        }
        got > 0
    }

    fn read_head(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        if self.client_gone(cx) {
            self.finish(cx, false);
            return true;
        }
        let got = self.fill_from_client(cx);
        if self.bufs.from_client.is_empty() {
            if cx.draining && self.had_request {
                // An idle keep-alive connection of a draining worker closes,
                // but not at once: a next request already on the wire would
                // meet a closed connection and fail. One that comes within
                // the grace is answered (with `Connection: close`).
                let close_at = self.idle_since + DRAIN_IDLE_GRACE;
                if cx.now >= close_at {
                    self.phase = Phase::Close;
                    return true;
                }
                if close_at < self.deadline {
                    self.deadline = close_at;
                    self.drain_deadline = true;
                }
            }
            let may_recv = self.client_may_recv(cx);
            let sock = &mut cx.net.stream(self.client);
            if sock.state() != StreamState::SynReceived && !may_recv {
                // Client finished sending and has nothing pending: done.
                self.phase = Phase::Close;
                return true;
            }
            if cx.now >= self.deadline {
                // Idle keep-alive connection or a silent new one: close quietly.
                self.phase = Phase::Close;
                return true;
            }
            return got > 0;
        }
        if std::mem::take(&mut self.drain_deadline) {
            // A request arrives within the grace: it is read like any other.
            self.deadline = after(cx.now, cx.cfg.timeouts.client_idle);
        }
        if self.h2c {
            let buf = self.bufs.from_client.filled();
            let n = buf.len().min(ferrogate_h2::PREFACE.len());
            if buf[..n] == ferrogate_h2::PREFACE[..n] {
                if n == ferrogate_h2::PREFACE.len() {
                    self.phase = Phase::ToH2;
                    return true;
                }
                // Its first 18 octets parse as an HTTP/1 head: wait for all.
                if !self.client_may_recv(cx) || cx.now >= self.deadline {
                    self.phase = Phase::Close;
                    return true;
                }
                return got > 0;
            }
        }
        self.h2c = false;
        let mut headers = HeaderSlots::new();
        let full = self.bufs.from_client.is_full();
        let parsed = head::parse_request(self.bufs.from_client.filled(), &mut headers, full);
        let (req, mut info) = match parsed {
            Ok(Some(p)) => p,
            Ok(None) => {
                if !self.client_may_recv(cx) {
                    // Truncated head followed by FIN.
                    let e = ProxyError::BadRequest(head::HeadError::Malformed("truncated head"));
                    return self.fail_to_client(cx, e);
                }
                if cx.now >= self.deadline {
                    return self.fail_to_client(cx, ProxyError::ClientHeaderTimeout);
                }
                return got > 0;
            }
            Err(e) => return self.fail_to_client(cx, ProxyError::BadRequest(e)),
        };
        cx.stats.requests += 1;
        self.had_request = true;
        // Draining: this response is the connection's last.
        info.keep_alive &= !cx.draining;
        self.started = cx.now;
        self.route_id = None;
        self.cache = None;
        self.cache_writer = None;
        self.cache_status = None;
        self.access.cache = "";
        let phases = cx.phases;
        let host = head::request_host(&req);
        set_request_id(&mut self.request_id, &mut self.request_id_len, &req, cx);
        let mut view = RequestView::new(req.method, host, req.target, req.headers);
        view.client_cn = self.io.client_cn();
        let mut info_req = RequestInfo {
            view,
            target: req.target,
            http10: req.http10,
            client_ip: self.client_ip.unwrap_or(IpAddr::from([0, 0, 0, 0])),
            listener_port: self.listener_port,
            https: self.io.stream.is_tls(),
            identity: self.io.identity(),
            request_id: &self.request_id[..self.request_id_len],
            client_sent_request_id: head::request_id(&req).is_some(),
            now: cx.now,
            looked_up: None,
        };
        {
            let a = &mut self.access;
            a.method.set(req.method.as_bytes());
            a.host.set(host.unwrap_or("").as_bytes());
            a.path.set(req.target.as_bytes());
            a.request_id.set(info_req.request_id);
        }
        let route = match choose_route(
            cx,
            &mut info_req,
            &mut self.pctx,
            &mut self.access,
            &mut self.rewrite,
            if req.http10 { "HTTP/1.0" } else { "HTTP/1.1" },
            info.framing != BodyFraming::None,
        ) {
            Routing::Route(route) => route,
            Routing::Respond(r) => {
                self.bufs.from_client.consume(info.head_len);
                return self.respond_direct(cx, &r, &info);
            }
            Routing::Fail(e) => {
                self.bufs.from_client.consume(info.head_len);
                return self.fail_to_client(cx, e);
            }
            Routing::NoRoute => {
                // Skipping an unread body is not worth it for a 404: close after.
                let keep = info.keep_alive && info.framing == BodyFraming::None;
                self.bufs.from_client.consume(info.head_len);
                return self.local_error(cx, ProxyError::NoRoute, keep);
            }
        };
        self.route_id = Some(route.id);
        self.canary = None;
        match &route.action {
            RouteAction::Respond(r) => {
                let r = r.clone();
                self.bufs.from_client.consume(info.head_len);
                self.respond_direct(cx, &r, &info)
            }
            RouteAction::Proxy(upstream) => {
                let mut upstream = rewritten_pool(&self.rewrite, upstream);
                self.canary = None;
                let mut canary_arm_taken = false;
                // A rule that chose the pool wins over the split.
                if let Some(c) = &route.canary
                    && self.rewrite.pool().is_none()
                {
                    let arm = canary_arm(c, &info_req, cx);
                    canary_arm_taken = arm;
                    if arm {
                        upstream = c.pool.clone();
                        cx.stats.canary_requests += 1;
                    }
                    // Only a live brake reads the arms.
                    if c.brake.is_some() && !c.tripped() {
                        self.canary = Some((c.clone(), arm));
                    }
                }
                if let BodyFraming::Length(n) = info.framing
                    && cx.cfg.max_request_body > 0
                    && n > cx.cfg.max_request_body
                {
                    self.bufs.from_client.consume(info.head_len);
                    return self.fail_to_client(cx, ProxyError::BodyTooLarge);
                }
                let hash_key = hash_key(&upstream, &info_req);
                let mut lookup = None;
                if let Some(rc) = &route.cache {
                    let key = crate::cache::RequestKey {
                        https: self.io.stream.is_tls(),
                        host: host.unwrap_or(""),
                        target: req.target,
                        method: req.method,
                        headers: req.headers,
                        has_body: info.framing != BodyFraming::None,
                        route: &route.name,
                        port: self.listener_port,
                        diverted: head::wants_upgrade(&req)
                            || canary_arm_taken
                            || self.rewrite.changes_request(),
                        identity: self.io.identity().is_some_and(|(_, id)| id.is_some()),
                    };
                    match crate::cache::lookup(cx.cache, rc, &key, cx.now) {
                        crate::cache::Lookup::Serve(obj, s) => {
                            self.bufs.from_client.consume(info.head_len);
                            self.request = Some(info);
                            return self.serve_cached(cx, &obj, s, Part::Whole);
                        }
                        l => lookup = Some(l),
                    }
                }
                // The cache fetches for itself what it may store: the
                // client's validators would get a 304 it cannot store.
                let caching = lookup
                    .as_ref()
                    .is_some_and(crate::cache::Lookup::strips_client_validators);
                self.upgrade = head::wants_upgrade(&req);
                let has_host = req.headers.contains("host");
                // A plugin with a request body phase sees the body on its
                // way up. The client's length stands unless a request
                // phase removed it (the body will change): then the body
                // goes up chunked.
                let body_plugins = info.framing != BodyFraming::None
                    && !self.upgrade
                    && crate::plugin_phase::wants_request_body(cx.plugins, &self.rewrite.plugin);
                let kept_length = match info.framing {
                    BodyFraming::Length(n) if !self.rewrite.plugin.request_unframed() => Some(n),
                    _ => None,
                };
                let reframe = body_plugins && kept_length.is_none();
                self.bufs.request_head.clear();
                let pctx = &mut self.pctx;
                let rw = &self.rewrite;
                let upstream_req = crate::http::Request {
                    target: rw.target(req.target, &mut self.target_buf),
                    ..req
                };
                if !head::write_upstream_request(
                    &upstream_req,
                    self.upgrade,
                    |name| {
                        phases.strip_request_header(&info_req, name)
                            || rw.strips_request(name)
                            || (caching && crate::cache::is_client_validator(name))
                            || (reframe
                                && (name.eq_ignore_ascii_case("content-length")
                                    || name.eq_ignore_ascii_case("transfer-encoding")))
                    },
                    |lines| {
                        phases.upstream_request_filter(&info_req, pctx, lines);
                        rw.add_request(lines);
                    },
                    &mut cx.stats.header_lines_refused,
                    &mut self.bufs.request_head,
                ) || (reframe && !head::frame_head_chunked(&mut self.bufs.request_head))
                {
                    self.bufs.from_client.consume(info.head_len);
                    // Lines the plugins added that do not fit are theirs
                    // to answer for, not the client's.
                    let err = if self.rewrite.plugin.adds_request() {
                        cx.stats.plugin_failures += 1;
                        ProxyError::PluginFailed
                    } else {
                        ProxyError::BadRequest(head::HeadError::TooLarge)
                    };
                    return self.fail_to_client(cx, err);
                }
                // Before the blank line that ends the head.
                self.host_at = (!has_host).then(|| self.bufs.request_head.len() - 2);
                self.bufs.from_client.consume(info.head_len);
                if info.expect_continue {
                    // Answer the expectation ourselves; the upstream never sees it.
                    let sock = &mut cx.net.stream(self.client);
                    let _ = self.io.stream.send(sock, b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                self.request = Some(info);
                self.body_end_seen = false;
                self.body_abandoned = false;
                self.request_plugin_body = body_plugins
                    .then(|| plugin_body::PluginBody::for_request(reframe, kept_length));
                match lookup {
                    Some(l) => self.after_lookup(cx, l, upstream, hash_key),
                    None => self.start_upstream(cx, upstream, hash_key),
                }
            }
        }
    }

    /// Answers with a configured (or phase-made) response; keeps the
    /// connection when the request had no body to skip.
    fn respond_direct(
        &mut self,
        cx: &mut Ctx<'_, P>,
        r: &DirectResponse,
        info: &RequestHead,
    ) -> bool {
        let keep = info.keep_alive && info.framing == BodyFraming::None;
        self.bufs.to_client.clear();
        let ok = head::write_local_response(
            &head::LocalResponse {
                status: r.status,
                content_type: &r.content_type,
                body: &r.body,
                keep_alive: keep,
                include_body: !info.is_head,
            },
            |lines| {
                direct_lines(r, lines);
                self.rewrite.plugin.add_response(lines);
                self.rewrite.add_alt_svc(lines);
            },
            &mut cx.stats.header_lines_refused,
            &mut self.bufs.to_client,
        );
        crate::plugin_phase::finish(cx.plugins, &mut self.rewrite.plugin, cx.stats);
        self.rewrite.plugin.clear_edits();
        // What goes out: a 500 when the answer did not fit.
        let status = if ok { r.status } else { 500 };
        cx.stats.responses_local += 1;
        cx.stats.count_status(status);
        self.count_route_response(cx, status);
        self.log_access(cx, status, "");
        if !ok {
            // Direct body larger than the head buffer: configuration
            // validation bounds it, so this is an internal error.
            self.bufs.to_client.clear();
            head::write_local_response(
                &head::LocalResponse {
                    status: 500,
                    content_type: "text/plain",
                    body: b"",
                    keep_alive: false,
                    include_body: true,
                },
                |_| {},
                &mut 0,
                &mut self.bufs.to_client,
            );
            self.phase = Phase::WriteLocal { keep: false };
        } else {
            self.phase = Phase::WriteLocal { keep };
        }
        true
    }

    /// Queues the access-log record of the response being sent (never
    /// waits: a full queue drops it and counts).
    fn log_access(&mut self, cx: &mut Ctx<'_, P>, status: u16, error: &'static str) {
        let client = cx.net.stream(self.client).remote();
        let a = &mut self.access;
        a.at_us = cx.now.total_micros();
        // An error before any head parsed (garbage, a head timeout) has no
        // request start of its own.
        a.duration_us = if a.method.is_empty() {
            0
        } else {
            (cx.now - self.started).total_micros()
        };
        a.status = status;
        a.client = client;
        a.listener_port = self.listener_port;
        a.tls = self.io.stream.is_tls();
        a.upstream = self.att.conn.as_ref().map(|u| u.endpoint);
        a.retries = self.att.retries;
        a.error = error;
        emit_access(cx, a, &mut self.pctx);
    }

    fn count_route_response(&mut self, cx: &mut Ctx<'_, P>, status: u16) {
        if let Some(id) = self.route_id {
            let us = (cx.now - self.started).total_micros();
            cx.route_stats.get_mut(id).count_response(status, us);
            let now_us = cx.now.total_micros().max(0) as u64;
            canary_record(cx.stats, self.canary.take(), status, us, now_us);
        }
    }

    /// Sends the request to the endpoint the pool's balancer picks.
    fn start_upstream(&mut self, cx: &mut Ctx<'_, P>, pool: Arc<Upstream>, hash_key: u64) -> bool {
        if self.att.conn.is_some() {
            // Not given back after the last response: out of step.
            self.drop_upstream(cx, false);
        }
        self.att.begin(cx, pool, hash_key);
        match self.att.pick(cx) {
            Ok(ep) => self.use_endpoint(cx, ep),
            Err(e) => self.fail_to_client(cx, e.into()),
        }
    }

    /// Sends the attempt to endpoint `ep` of the pool.
    fn use_endpoint(&mut self, cx: &mut Ctx<'_, P>, ep: usize) -> bool {
        match self.att.start(cx, ep) {
            Ok(Started::Reused) => self.begin_send(cx),
            Ok(Started::Connecting { deadline }) => {
                self.phase = Phase::Connect;
                self.deadline = deadline;
                true
            }
            Err(e) => self.fail_to_client(cx, e),
        }
    }

    fn settle(&mut self, cx: &mut Ctx<'_, P>, ok: Option<bool>) {
        self.att.settle(cx, ok);
    }

    /// Starts sending the request over the attempt's connection.
    fn begin_send(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        if let Some(c) = self.cache.as_mut() {
            c.mark_sent(cx.cache.anchor.wall(cx.now));
        }
        if let (Some(at), Some(pool), Some(up)) = (self.host_at, &self.att.pool, &self.att.conn) {
            // Every HTTP/1.1 request carries Host (RFC 9112 §3.2); the
            // endpoint may differ from one attempt to the next.
            let out = &mut self.bufs.request_head;
            out.truncate(at);
            let ok = out.extend(b"Host: ")
                && pool.write_host(up.endpoint, out).is_ok()
                && out.extend(b"\r\n\r\n");
            if !ok {
                return self.fail_to_client(cx, ProxyError::BadRequest(head::HeadError::TooLarge));
            }
        }
        let framing = self.request.map(|r| r.framing).unwrap_or(BodyFraming::None);
        self.phase = Phase::SendRequest {
            head_sent: 0,
            body: Body::from_framing(framing),
        };
        true
    }

    fn connect(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        if self.client_gone(cx) {
            self.finish(cx, false);
            return true;
        }
        match self
            .att
            .poll_connect(cx, &mut self.bufs.from_upstream, self.deadline)
        {
            Connecting::Ready => self.begin_send(cx),
            Connecting::Pending => false,
            Connecting::Failed(e) => self.upstream_failed(cx, e),
        }
    }

    fn send_request(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        if self.client_gone(cx) {
            self.finish(cx, false);
            return true;
        }
        if self.early_response(cx) {
            return true;
        }
        let upc = self.att.conn.as_mut().expect("upstream");
        let Phase::SendRequest { head_sent, body } = &mut self.phase else {
            unreachable!()
        };
        let mut moved = false;
        let max_body = cx.cfg.max_request_body;
        let up = &mut cx.net.stream(upc.handle);
        if !up.may_send() || upc.io.failed() {
            return self.upstream_failed(cx, ProxyError::UpstreamClosedEarly);
        }
        let head = self.bufs.request_head.filled();
        if *head_sent < head.len() {
            let n = upc.io.send(up, &head[*head_sent..]);
            *head_sent += n;
            moved |= n > 0;
            if *head_sent < head.len() {
                return moved;
            }
        }
        if self.request_plugin_body.is_some() {
            return self.request_body_through_plugins(cx) || moved;
        }
        // Stream the request body from the client, bounded by its framing.
        let space = upc.io.send_space(up);
        let avail = self.bufs.from_client.filled();
        let (take, done) = match body {
            Body::Done => (0, true),
            Body::Length(n) => {
                let t = (*n).min(avail.len() as u64).min(space as u64) as usize;
                *n -= t as u64;
                (t, *n == 0)
            }
            Body::Chunked(dec) => {
                let window = &avail[..avail.len().min(space)];
                if max_body > 0 && dec.bytes_seen() > max_body {
                    // Already streaming: the client gets 413, the upstream a reset.
                    return self.fail_to_client(cx, ProxyError::BodyTooLarge);
                }
                match dec.feed(window) {
                    Ok(t) => (t, dec.is_done()),
                    Err(e) => {
                        return self.fail_to_client(cx, ProxyError::BadRequestBody(e));
                    }
                }
            }
            Body::UntilClose => unreachable!("requests are never close-delimited"),
        };
        let end = done && !self.body_end_seen;
        if take > 0 || end {
            let filtered = cx
                .phases
                .request_body_filter(&avail[..take], end, &mut self.pctx);
            if let Err(e) = filtered {
                return self.fail_to_client(cx, e);
            }
            self.body_end_seen |= end;
        }
        if take > 0 {
            let sent = upc.io.send(up, &avail[..take]);
            debug_assert_eq!(sent, take);
            self.bufs.from_client.consume(sent);
            self.att.body_started = true;
            moved = true;
        }
        if done {
            self.phase = Phase::ReadResponseHead;
            self.deadline = self.att.response_deadline(cx);
            return true;
        }
        if self.fill_from_client(cx) > 0 {
            moved = true;
        } else if !self.client_may_recv(cx) && self.bufs.from_client.is_empty() {
            // Client stopped sending mid-body: nothing sensible to forward.
            cx.stats.client_aborts += 1;
            self.finish(cx, true);
            return true;
        }
        moved
    }

    /// While the request is still going up: has the upstream answered
    /// already (an early 413 or 401, or a 200 from an origin that does not
    /// read the body)? Then the answer goes to the client at once and the
    /// rest of the body stays with the client. Interim 1xx are skipped.
    fn early_response(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        self.fill_from_upstream(cx);
        loop {
            if self.bufs.from_upstream.is_empty() {
                return false;
            }
            let is_head = self.request.is_some_and(|r| r.is_head);
            let full = self.bufs.from_upstream.is_full();
            match head::parse_response(self.bufs.from_upstream.filled(), is_head, full) {
                Ok(Some(resp)) if resp.interim => self.bufs.from_upstream.consume(resp.head_len),
                // Incomplete: keep sending. Broken: read_response_head says so.
                Ok(None) => return false,
                Ok(Some(_)) | Err(_) => break,
            }
        }
        let unsent = match &self.phase {
            Phase::SendRequest {
                head_sent, body, ..
            } => *head_sent < self.bufs.request_head.len() || !matches!(body, Body::Done),
            _ => false,
        };
        if unsent {
            self.body_abandoned = true;
            cx.stats.early_responses += 1;
        }
        self.phase = Phase::ReadResponseHead;
        true
    }

    fn fill_from_upstream(&mut self, cx: &mut Ctx<'_, P>) -> usize {
        self.att.fill(cx, &mut self.bufs.from_upstream)
    }

    fn upstream_may_recv(&self, cx: &mut Ctx<'_, P>) -> bool {
        self.att.may_recv(cx)
    }

    fn read_response_head(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        if self.client_gone(cx) {
            self.finish(cx, true);
            return true;
        }
        let got = self.fill_from_upstream(cx);
        let upstream_open = self.upstream_may_recv(cx);
        let is_head = self.request.is_some_and(|r| r.is_head);
        let full = self.bufs.from_upstream.is_full();
        match head::parse_response(self.bufs.from_upstream.filled(), is_head, full) {
            Ok(Some(resp)) if resp.interim => {
                self.bufs.from_upstream.consume(resp.head_len);
                true
            }
            Ok(Some(resp)) => {
                if self.cache.is_some()
                    && let Some(step) = self.cache_response(cx, &resp)
                {
                    return step;
                }
                let xcache = self.note_cache(cx);
                let status_header = cx.cache.edge.settings.status_header.as_deref();
                let req = self.request.expect("request in flight");
                self.bufs.to_client.clear();
                let plugins = crate::plugin_phase::viewer_response(
                    cx.plugins,
                    &self.bufs.from_upstream.filled()[..resp.head_len],
                    cx.now,
                    &mut self.rewrite.plugin,
                    cx.stats,
                );
                if let Err(e) = plugins {
                    self.bufs.from_upstream.clear();
                    self.cache_writer = None;
                    return self.fail_to_client(cx, e);
                }
                // The body goes through the plugins' body phase. An
                // announced length stands unless a plugin removed it (it
                // will change the body): then the body is re-framed
                // (chunked; close-delimited for HTTP/1.0).
                let body_plugins = resp.framing != BodyFraming::None
                    && resp.status != 101
                    && crate::plugin_phase::wants_response_body(cx.plugins, &self.rewrite.plugin);
                let kept_length = match resp.framing {
                    BodyFraming::Length(n) if !self.rewrite.plugin.response_unframed() => Some(n),
                    _ => None,
                };
                let reframe = body_plugins && kept_length.is_none();
                let keep_client = req.keep_alive
                    && !cx.draining
                    && resp.framing != BodyFraming::UntilClose
                    && !self.body_abandoned
                    && !(reframe && req.http10);
                let plugin_lines = self.rewrite.plugin.adds_response();
                let phases = cx.phases;
                let info = ResponseInfo {
                    request_id: &self.request_id[..self.request_id_len],
                    now: cx.now,
                };
                let pctx = &mut self.pctx;
                let rw = &self.rewrite;
                let mut ok = head::write_client_response(
                    &self.bufs.from_upstream.filled()[..resp.head_len],
                    keep_client,
                    req.http10,
                    |name| {
                        rw.strips_response(name)
                            || (reframe
                                && (name.eq_ignore_ascii_case("content-length")
                                    || name.eq_ignore_ascii_case("transfer-encoding")))
                    },
                    |view, lines| {
                        phases.response_filter(view, &info, pctx, lines);
                        rw.add_response(lines);
                        if let (Some(h), Some(s)) = (status_header, xcache) {
                            lines.add(h, s.as_str().as_bytes());
                        }
                    },
                    &mut cx.stats.header_lines_refused,
                    &mut self.bufs.to_client,
                );
                if ok && reframe && !req.http10 {
                    ok = head::frame_head_chunked(&mut self.bufs.to_client);
                }
                self.bufs.from_upstream.consume(resp.head_len);
                if !ok && plugin_lines {
                    // The plugins' lines did not fit: their failure, not the
                    // origin's (no retry, no breaker).
                    cx.stats.plugin_failures += 1;
                    self.bufs.from_upstream.clear();
                    self.cache_writer = None;
                    return self.fail_to_client(cx, ProxyError::PluginFailed);
                }
                if !ok {
                    // Another endpoint may answer (a retry): its head goes
                    // through the plugins and the rules afresh.
                    self.rewrite.plugin.clear_response_edits();
                    return self
                        .upstream_failed(cx, ProxyError::BadResponse(head::HeadError::TooLarge));
                }
                if resp.status == 101 && !self.upgrade {
                    self.rewrite.plugin.clear_response_edits();
                    return self.upstream_failed(
                        cx,
                        ProxyError::BadResponse(head::HeadError::Unsupported(
                            "101 without an upgrade request",
                        )),
                    );
                }
                // The head is committed: the plugins' contexts end (with
                // the body when they see it), the rules' changes are done
                // (and their `Arc` does not pin an old snapshot's pool
                // while idle).
                if body_plugins {
                    self.plugin_body = Some(plugin_body::PluginBody::new(
                        reframe && !req.http10,
                        kept_length,
                    ));
                } else {
                    crate::plugin_phase::finish(cx.plugins, &mut self.rewrite.plugin, cx.stats);
                }
                self.rewrite.clear();
                cx.stats.count_status(resp.status);
                let endpoint_ok = !matches!(resp.status, 502..=504);
                self.log_access(cx, resp.status, "");
                self.settle(cx, Some(endpoint_ok));
                self.count_route_response(cx, resp.status);
                if resp.status == 101 {
                    self.phase = Phase::Tunnel;
                    self.deadline = after(cx.now, cx.cfg.timeouts.client_idle);
                    return true;
                }
                // The body's bytes may pause for the read timeout.
                self.deadline = self.att.read_deadline(cx);
                self.phase = Phase::StreamResponse {
                    body: Body::from_framing(resp.framing),
                    keep_client,
                    // It never got the whole request: out of step.
                    keep_upstream: resp.reusable && !self.body_abandoned,
                };
                true
            }
            Ok(None) => {
                if !upstream_open {
                    let e = if self.bufs.from_upstream.is_empty() {
                        ProxyError::UpstreamClosedEarly
                    } else {
                        ProxyError::BadResponse(head::HeadError::Malformed("truncated head"))
                    };
                    return self.upstream_failed(cx, e);
                }
                if cx.now >= self.deadline {
                    return self.upstream_failed(cx, ProxyError::UpstreamTimeout);
                }
                got > 0
            }
            Err(e) => self.upstream_failed(cx, ProxyError::BadResponse(e)),
        }
    }

    /// Writes pending `to_client` bytes; true when all are written.
    fn flush_to_client(&mut self, cx: &mut Ctx<'_, P>) -> (bool, bool) {
        if self.bufs.to_client.is_empty() {
            return (true, false);
        }
        let sock = &mut cx.net.stream(self.client);
        let n = self.io.stream.send(sock, self.bufs.to_client.filled());
        self.bufs.to_client.consume(n);
        (self.bufs.to_client.is_empty(), n > 0)
    }

    /// One step of a streamed response, and its deadline: after progress it
    /// is re-armed for whichever side the response now waits on (the
    /// client to take buffered bytes: `client_idle`; the origin to send
    /// more: the read timeout); when it passes with nothing moved, that
    /// side is cut — a reset, so the client sees the body is short.
    fn stream_response(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        let moved = self.stream_response_step(cx);
        if !matches!(self.phase, Phase::StreamResponse { .. }) {
            return moved;
        }
        let waiting_on_client = !self.bufs.from_upstream.is_empty()
            || (!self.bufs.to_client.is_empty() && !self.io.stream.is_tls())
            || self.plugin_body.as_ref().is_some_and(|p| p.pending());
        if moved {
            self.deadline = if waiting_on_client {
                after(cx.now, cx.cfg.timeouts.client_idle)
            } else {
                self.att.read_deadline(cx)
            };
            return true;
        }
        if cx.now < self.deadline {
            return false;
        }
        if waiting_on_client {
            // The client stopped reading: it would hold the upstream
            // connection (and wake this stream) forever.
            cx.stats.client_aborts += 1;
            tracing::debug!("client took nothing for the idle timeout mid-response; resetting");
            if self.fill_without_client(cx) {
                return true;
            }
        } else {
            cx.stats.upstream_errors += 1;
            tracing::debug!("upstream silent mid-body past the read timeout; resetting");
        }
        self.finish(cx, true);
        true
    }

    fn stream_response_step(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        if self.client_gone(cx) || !cx.net.stream(self.client).may_send() {
            cx.stats.client_aborts += 1;
            if !self.fill_without_client(cx) {
                self.finish(cx, true);
            }
            return true;
        }
        if self.plugin_body.is_some() {
            return self.plugin_body_step(cx);
        }
        // On TLS a pending response head waits for the body's first bytes
        // so both go out in one record (one seal instead of two).
        let coalesce = self.io.stream.is_tls() && !self.bufs.to_client.is_empty();
        let mut moved = false;
        if !coalesce {
            let (flushed, m) = self.flush_to_client(cx);
            if !flushed {
                return m;
            }
            moved = m;
        }
        moved |= self.fill_from_upstream(cx) > 0;
        let upstream_open = self.upstream_may_recv(cx);
        let client = &mut cx.net.stream(self.client);
        // The head (if coalescing) goes first: the body gets what is left.
        let head_len = self.bufs.to_client.len();
        let room = self.io.stream.send_space(client);
        if head_len > room {
            // Not even the head fits: send what does, the rest later.
            let n = self.io.stream.send(client, self.bufs.to_client.filled());
            self.bufs.to_client.consume(n);
            return moved || n > 0;
        }
        let space = room - head_len;
        let Phase::StreamResponse {
            body,
            keep_client,
            keep_upstream,
        } = &mut self.phase
        else {
            unreachable!()
        };
        let avail = self.bufs.from_upstream.filled();
        let window = &avail[..avail.len().min(space)];
        let (take, done) = match body {
            Body::Done => (0, true),
            Body::Length(n) => {
                let t = (*n).min(window.len() as u64) as usize;
                *n -= t as u64;
                if let Some(w) = &mut self.cache_writer {
                    w.push(&window[..t]);
                }
                (t, *n == 0)
            }
            Body::Chunked(dec) => match match &mut self.cache_writer {
                // The object stores the payload, without the framing.
                Some(w) => dec.feed_with(window, |d| {
                    w.push(d);
                }),
                None => dec.feed(window),
            } {
                Ok(t) => (t, dec.is_done()),
                Err(e) => {
                    cx.stats.upstream_errors += 1;
                    tracing::debug!(error = %ProxyError::BadResponseBody(e), "aborting response");
                    self.finish(cx, true);
                    return true;
                }
            },
            Body::UntilClose => {
                if let Some(w) = &mut self.cache_writer {
                    w.push(window);
                }
                (window.len(), !upstream_open && avail.len() == window.len())
            }
        };
        if self
            .cache_writer
            .as_ref()
            .is_some_and(crate::cache::Filler::stop)
        {
            // Left the store with its readers far behind, or none left:
            // this client's response goes on, the object's ends here.
            self.cache_writer = None;
        }
        if take > 0 || done {
            cx.phases
                .response_body_filter(&window[..take], done, &mut self.pctx);
        }
        if head_len > 0 {
            // Head and body bytes in one write; with no body bytes yet the
            // head goes alone rather than wait.
            let head = self.bufs.to_client.filled();
            let n = self.io.stream.send_parts(client, head, &window[..take]);
            let sent_head = n.min(head_len);
            self.bufs.to_client.consume(sent_head);
            self.bufs.from_upstream.consume(n - sent_head);
            moved = true;
            if n != head_len + take {
                // `send_space` promised room for both; a TLS session that
                // failed in between takes less. The body count already
                // includes `take`: the response cannot continue intact.
                cx.stats.client_aborts += 1;
                self.finish(cx, true);
                return true;
            }
        } else if take > 0 {
            let n = self.io.stream.send(client, &window[..take]);
            debug_assert_eq!(n, take);
            self.bufs.from_upstream.consume(n);
            moved = true;
        }
        if done {
            if let Some(w) = self.cache_writer.take() {
                w.finish();
            }
            let keep_client = *keep_client;
            // Bytes past the end of the body mean the upstream is out of
            // step (an origin error, counted): that connection is dropped.
            let out_of_step = !self.bufs.from_upstream.is_empty();
            if out_of_step && *keep_upstream {
                cx.stats.upstream_errors += 1;
            }
            let keep_upstream = *keep_upstream && !out_of_step;
            if let Some(up) = self.att.conn.as_mut() {
                up.served += 1;
            }
            if keep_upstream {
                self.release_upstream(cx);
            } else {
                self.drop_upstream(cx, false);
            }
            self.request = None;
            if keep_client {
                self.next_request(cx);
            } else if self.body_abandoned {
                self.start_drain(cx);
            } else {
                self.phase = Phase::Close;
            }
            return true;
        }
        if !upstream_open && self.bufs.from_upstream.is_empty() {
            // Upstream closed before the body was complete: make the
            // truncation visible to the client with a reset.
            cx.stats.upstream_errors += 1;
            self.finish(cx, true);
            return true;
        }
        moved
    }

    fn write_local(&mut self, cx: &mut Ctx<'_, P>, keep: bool) -> bool {
        if self.client_gone(cx) {
            self.finish(cx, false);
            return true;
        }
        let (flushed, moved) = self.flush_to_client(cx);
        if !flushed {
            return moved;
        }
        if keep {
            self.next_request(cx);
        } else {
            self.phase = Phase::Close;
        }
        true
    }

    /// Waits for the next request on a kept-alive connection; its phases
    /// start from a fresh `Ctx` (also for an error before its head parses).
    fn next_request(&mut self, cx: &mut Ctx<'_, P>) {
        self.pctx = P::Ctx::default();
        self.plugin_body = None;
        self.request_plugin_body = None;
        self.clear_cache();
        self.phase = Phase::ReadHead;
        self.idle_since = cx.now;
        self.deadline = after(cx.now, cx.cfg.timeouts.client_idle);
    }

    fn close(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        if !self.client_gone(cx) {
            let (flushed, moved) = self.flush_to_client(cx);
            if !flushed || !self.io.stream.close(&mut cx.net.stream(self.client)) {
                return moved;
            }
            cx.net.stream(self.client).close();
        }
        self.end_plugins(cx);
        self.drop_upstream(cx, false);
        self.phase = Phase::Finished;
        true
    }

    /// Closes after the response while the client may still be sending
    /// the rest of a body (see `Phase::Drain`).
    fn start_drain(&mut self, cx: &mut Ctx<'_, P>) {
        self.drop_upstream(cx, false);
        self.bufs.from_client.clear();
        self.phase = Phase::Drain {
            fin_sent: false,
            left: DRAIN_MAX_BYTES,
        };
        self.deadline = cx.now + cx.cfg.net.linger;
    }

    fn drain(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        if self.client_gone(cx) {
            self.finish(cx, false);
            return true;
        }
        let (flushed, mut moved) = self.flush_to_client(cx);
        if !flushed {
            if cx.now >= self.deadline {
                self.finish(cx, true);
                return true;
            }
            return moved;
        }
        let Phase::Drain { fin_sent, .. } = &mut self.phase else {
            unreachable!()
        };
        if !*fin_sent {
            if !self.io.stream.close(&mut cx.net.stream(self.client)) {
                return moved;
            }
            cx.net.stream(self.client).close();
            *fin_sent = true;
            moved = true;
        }
        // Read and forget what the client still sends.
        let sock = &mut cx.net.stream(self.client);
        let got = match self.io.recv(sock, &mut self.bufs.from_client) {
            Ok(n) => n,
            Err(_) => {
                self.finish(cx, false);
                return true;
            }
        };
        self.bufs.from_client.clear();
        let Phase::Drain { left, .. } = &mut self.phase else {
            unreachable!()
        };
        *left = left.saturating_sub(got);
        let exhausted = *left == 0;
        if !self.client_may_recv(cx) {
            // The client is done too: an orderly close.
            self.phase = Phase::Finished;
            return true;
        }
        if exhausted || cx.now >= self.deadline {
            self.finish(cx, true);
            return true;
        }
        moved || got > 0
    }

    /// Ends the connection now; `reset` aborts the client socket.
    fn finish(&mut self, cx: &mut Ctx<'_, P>, reset: bool) {
        // A canary-split request the client gave up on before a response
        // counts against its arm (a canary that hangs must trip the brake).
        if self.canary.is_some() {
            let us = (cx.now - self.started).total_micros();
            let now_us = cx.now.total_micros().max(0) as u64;
            canary_record(cx.stats, self.canary.take(), 499, us, now_us);
        }
        // A pick the client left before it was judged is given back (its
        // in-flight slot, a half-open breaker probe), not leaked.
        self.settle(cx, None);
        // A body being stored is aborted: its readers see it end short.
        self.clear_cache();
        self.plugin_body = None;
        self.request_plugin_body = None;
        self.end_plugins(cx);
        if reset {
            cx.net.stream(self.client).abort();
        } else {
            cx.net.stream(self.client).close();
        }
        self.drop_upstream(cx, reset);
        self.phase = Phase::Finished;
    }

    /// Ends the request's plugin contexts (see `plugin_phase::finish`).
    pub(crate) fn end_plugins(&mut self, cx: &mut Ctx<'_, P>) {
        crate::plugin_phase::finish(cx.plugins, &mut self.rewrite.plugin, cx.stats);
    }

    fn release_upstream(&mut self, cx: &mut Ctx<'_, P>) {
        self.att.release(cx);
    }

    /// Moves the upstream socket to the stack's closing list.
    fn drop_upstream(&mut self, cx: &mut Ctx<'_, P>, reset: bool) {
        // Bytes the dropped connection sent past its response (an origin out
        // of step, e.g. a body after a 204) must not prefix the next
        // upstream's response.
        self.bufs.from_upstream.clear();
        self.att.close(cx, reset);
    }

    fn upstream_failed(&mut self, cx: &mut Ctx<'_, P>, err: ProxyError) -> bool {
        self.bufs.from_upstream.clear();
        // A body being stored came from this attempt's response: aborted
        // (a retry's response is not appended to it).
        self.cache_writer = None;
        let request = self.request.map(|r| (r.method, r.framing));
        match self.att.failed(cx, err, request, self.route_id) {
            Ok(ep) => self.use_endpoint(cx, ep),
            Err(e) => self.fail_to_client(cx, e),
        }
    }

    /// Answers the client with the error's status and closes.
    fn fail_to_client(&mut self, cx: &mut Ctx<'_, P>, err: ProxyError) -> bool {
        if err.side() == crate::error::Side::Upstream
            && let Some(step) = self.stale_for_error(cx)
        {
            return step;
        }
        if err.side() == crate::error::Side::Client {
            cx.stats.bad_requests += 1;
        }
        self.local_error(cx, err, false)
    }

    fn local_error(&mut self, cx: &mut Ctx<'_, P>, err: ProxyError, keep: bool) -> bool {
        let status = err.status();
        // A HEAD's answer carries no body, however it ends.
        let is_head = self.request.is_some_and(|r| r.is_head);
        crate::plugin_phase::finish(cx.plugins, &mut self.rewrite.plugin, cx.stats);
        self.note_cache(cx);
        self.cache = None;
        self.cache_writer = None;
        cx.stats.count_status(status);
        cx.stats.responses_local += 1;
        self.log_access(cx, status, err.code());
        self.settle(cx, None);
        self.drop_upstream(cx, true);
        if let Some(id) = self.route_id
            && err.side() == crate::error::Side::Upstream
        {
            cx.route_stats.get_mut(id).upstream_errors += 1;
        }
        self.count_route_response(cx, status);
        self.request = None;
        self.bufs.to_client.clear();
        let phases = cx.phases;
        let info = ResponseInfo {
            request_id: &self.request_id[..self.request_id_len],
            now: cx.now,
        };
        let body = head::reason(status).as_bytes();
        let mut keep = keep;
        if !head::write_local_response(
            &head::LocalResponse {
                status,
                content_type: "text/plain",
                body,
                keep_alive: keep,
                include_body: !is_head,
            },
            |lines| phases.error_response_filter(&err, &info, lines),
            &mut cx.stats.header_lines_refused,
            &mut self.bufs.to_client,
        ) {
            // The phase's lines did not fit: the bare answer, then close.
            self.bufs.to_client.clear();
            keep = false;
            head::write_local_response(
                &head::LocalResponse {
                    status,
                    content_type: "text/plain",
                    body,
                    keep_alive: false,
                    include_body: true,
                },
                |_| {},
                &mut 0,
                &mut self.bufs.to_client,
            );
        }
        self.phase = Phase::WriteLocal { keep };
        true
    }

    /// Copies bytes both ways after a protocol switch, until either side
    /// stops sending; then closes both.
    fn tunnel(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        let (flushed, mut moved) = self.flush_to_client(cx);
        if !flushed {
            return moved;
        }
        let Some(up_handle) = self.att.conn.as_ref().map(|u| u.handle) else {
            self.phase = Phase::Close;
            return true;
        };
        // client -> upstream
        moved |= self.fill_from_client(cx) > 0;
        if !self.bufs.from_client.is_empty()
            && let Some(up) = self.att.conn.as_mut()
        {
            let n = up.io.send(
                &mut cx.net.stream(up_handle),
                self.bufs.from_client.filled(),
            );
            self.bufs.from_client.consume(n);
            moved |= n > 0;
        }
        // upstream -> client
        moved |= self.fill_from_upstream(cx) > 0;
        let upstream_done = !self.upstream_may_recv(cx) && self.bufs.from_upstream.is_empty();
        if !self.bufs.from_upstream.is_empty() {
            let sock = &mut cx.net.stream(self.client);
            let avail = self.bufs.from_upstream.filled();
            let space = self.io.stream.send_space(sock).min(avail.len());
            let n = self.io.stream.send(sock, &avail[..space]);
            self.bufs.from_upstream.consume(n);
            moved |= n > 0;
        }
        let client_done = !self.client_may_recv(cx) && self.bufs.from_client.is_empty();
        if moved {
            self.deadline = after(cx.now, cx.cfg.timeouts.client_idle);
        }
        if upstream_done || client_done || self.client_gone(cx) || cx.now >= self.deadline {
            self.phase = Phase::Close;
            return true;
        }
        moved
    }
}
