//! Routing snapshot: listeners, their ordered routes, and upstream pools. Built
//! off the data path (by the control plane), immutable, shared with `Arc`.
//!
//! Everything here is configuration: what to match and where to send it. The
//! mutable runtime state of pools (health, breakers, balancer cursors,
//! counters) lives in [`crate::lb::UpstreamRegistry`], keyed by pool name
//! and endpoint address, so it survives a reload; a pool finds its state in
//! O(1) through [`Upstream::index`], its position in [`RouteTable::upstreams`].

use std::sync::Arc;

use crate::http::RequestView;
use crate::jwt::JwtAuth;
use crate::lb::Upstream;
use crate::limits::Limit;
use crate::router::RouteIndex;
use crate::rules::{Rule, Rules};
use crate::tls::ListenerTls;

#[derive(Debug, Clone)]
pub struct RouteTable {
    pub version: u64,
    pub listeners: Vec<Listener>,
    /// Every pool of the snapshot; `upstreams[i].index == i`.
    pub upstreams: Vec<Arc<Upstream>>,
    /// UDP listeners (`protocol = "udp"`); a port may have a TCP or HTTP
    /// listener in `listeners` too.
    pub udp_listeners: Vec<UdpListener>,
    /// Every L7 rate limit listeners and routes apply; `limits[i].id == i`.
    pub limits: Vec<Arc<Limit>>,
}

/// A UDP listener: each client (address and port) is a session pinned to
/// one endpoint of `upstream` through a local port of ours; replies come
/// back from the listener's address and port.
#[derive(Debug, Clone)]
pub struct UdpListener {
    pub port: u16,
    /// Picked once per session with the pool's balancer (a hash balancer
    /// hashes the client's IP address, as for TCP listeners).
    pub upstream: Arc<Upstream>,
    /// No datagram either way for this long ends the session.
    pub idle_timeout: std::time::Duration,
    /// Sessions at once on this listener in a worker; a datagram from a
    /// new client beyond it is dropped (counted).
    pub max_sessions: usize,
}

/// Default idle timeout of a UDP session.
pub const UDP_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Default sessions per UDP listener and worker.
pub const UDP_MAX_SESSIONS: usize = 16_384;

/// A listening port with its routes in configuration order and the lookup
/// structure compiled from them (see [`crate::router`]).
#[derive(Debug, Clone)]
pub struct Listener {
    pub port: u16,
    /// TLS termination on this port (None: plain HTTP).
    pub tls: Option<Arc<ListenerTls>>,
    /// HTTP/2 beside HTTP/1.1: ALPN `h2` on TLS (the TLS config offers
    /// it), the h2c preface (prior knowledge) on plain connections.
    pub http2: bool,
    /// HTTP/3 on the same port over UDP (QUIC), with this listener's
    /// certificates, routes and policy; advertised by `Alt-Svc`.
    pub http3: Option<Arc<Http3Listener>>,
    /// The `Alt-Svc` value its HTTP/1.1 and HTTP/2 responses carry when
    /// HTTP/3 is on (`h3=":443"; ma=86400`).
    alt_svc: Option<Arc<str>>,
    /// A TCP listener (`protocol = "tcp"`): every connection is spliced to
    /// this pool; such a listener has no routes.
    pub l4: Option<L4Listener>,
    /// Evaluated before routing (see `rules`).
    rules: Rules,
    /// L7 rate limits every request of the listener takes from, after
    /// routing (a `route` key needs the route), before the route's own.
    limits: Vec<Arc<Limit>>,
    /// Every request needs a valid bearer token of this provider (checked
    /// before the rules, whose conditions may test its claims), unless
    /// its route says otherwise ([`Route::jwt`]).
    jwt: Option<Arc<JwtAuth>>,
    /// Some route has its own `jwt` (a provider, or exempt): which token a
    /// request needs depends on its route, looked up before the rules.
    jwt_by_route: bool,
    /// Which token, rules, rate limits or answer apply depends on the route
    /// (a route's own `jwt`, rules, `rate_limits` or `respond`, or a
    /// listener limit keyed by route): the route is looked up before the
    /// phases, and a path that routes elsewhere once normalized is refused
    /// when either route has policy (else `/x/../api/` would dodge the
    /// `api` route's policy).
    route_policy: bool,
    /// A listener limit is keyed by route: any two routes count in
    /// different buckets, so every route is policy.
    limits_by_route: bool,
    routes: Vec<Route>,
    index: RouteIndex,
    /// proxy-wasm plugins at the viewer phases, in order.
    plugins: Vec<crate::plugin_phase::AttachedPlugin>,
}

/// HTTP/3 on a TLS listener's port: what each worker's QUIC endpoint for
/// it is built from. The TLS config is the listener's (same certificates
/// and SNI selection), with ALPN `h3` and TLS 1.3 only.
#[derive(Debug, Clone)]
pub struct Http3Listener {
    /// The endpoint's limits; `quic.worker` is set by each worker.
    pub quic: ferrogate_quic::QuicConfig,
    /// `Alt-Svc: h3=":<port>"; ma=<this>` on the listener's HTTP/1.1 and
    /// HTTP/2 responses; 0: not advertised.
    pub alt_svc_max_age: u32,
}

/// What a TCP (L4) listener does with its connections.
#[derive(Debug, Clone)]
pub struct L4Listener {
    /// Where every connection goes (picked with the pool's balancer; a
    /// hash balancer hashes the client's address).
    pub upstream: Arc<Upstream>,
    /// No byte either way for this long: both sides are closed.
    pub idle_timeout: std::time::Duration,
    /// Connections at once on this listener in a worker (None: only the
    /// engine's bound); beyond it a SYN is reset.
    pub max_connections: Option<usize>,
    /// TLS passthrough: the pool per server name of the ClientHello (exact
    /// names, or `*.suffix`), read without terminating TLS; a hello without
    /// a name, or with another, goes to `upstream`. Empty: no peeking, the
    /// bytes are spliced from the first one.
    pub sni: Arc<[(String, Arc<Upstream>)]>,
    /// Load balancers in front whose PROXY v2 (or v1) header is read first
    /// (address, prefix length); the client address it carries replaces
    /// the connection's. Empty: no header is expected.
    pub proxy_from: Arc<[(std::net::IpAddr, u8)]>,
}

impl L4Listener {
    /// The pool for a ClientHello's server name: an exact name first, then
    /// the longest `*.suffix`, then `upstream`.
    pub fn pool_for(&self, name: Option<&str>) -> &Arc<Upstream> {
        sni_pool(&self.sni, &self.upstream, name)
    }
}

/// The pool for server name `name` among `sni` (exact, then the longest
/// `*.suffix`), else `default`.
pub fn sni_pool<'a>(
    sni: &'a [(String, Arc<Upstream>)],
    default: &'a Arc<Upstream>,
    name: Option<&str>,
) -> &'a Arc<Upstream> {
    let Some(name) = name else {
        return default;
    };
    if let Some((_, p)) = sni.iter().find(|(n, _)| n == name) {
        return p;
    }
    sni.iter()
        .filter(|(n, _)| {
            n.strip_prefix('*')
                .is_some_and(|suffix| name.len() > suffix.len() && name.ends_with(suffix))
        })
        .max_by_key(|(n, _)| n.len())
        .map_or(default, |(_, p)| p)
}

/// Default idle timeout of a TCP listener.
pub const L4_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// Position of the route in the whole table (all listeners, in order),
    /// set by [`RouteTable::new`]: the slot of its per-worker counters.
    pub id: usize,
    /// Exact host (case-insensitive) or `*.suffix`; `None` matches any host.
    pub host: Option<String>,
    pub path: PathMatch,
    /// Accepted methods (case-sensitive, e.g. `GET`); empty accepts any.
    pub methods: Vec<String>,
    /// Every one must match (AND).
    pub headers: Vec<HeaderMatch>,
    /// Every one must match (AND).
    pub query: Vec<QueryMatch>,
    /// The verified client certificate's subject CN must equal this (mTLS
    /// listeners; a request without a client certificate never matches).
    pub client_cert_cn: Option<String>,
    /// L7 rate limits of this route, after the listener's.
    pub limits: Vec<Arc<Limit>>,
    /// A share of the requests to another pool, with a safety brake
    /// (routes that proxy).
    pub canary: Option<Arc<crate::canary::Canary>>,
    /// L7 rules evaluated once routing chose this route, after the
    /// listener's (first match wins within the list).
    pub rules: Rules,
    /// Which bearer token the route's requests need.
    pub jwt: RouteJwt,
    /// Response caching (routes that proxy); `None`: requests bypass the cache.
    pub cache: Option<Arc<crate::cache::RouteCache>>,
    /// proxy-wasm plugins run once the route is chosen (origin request)
    /// and on its responses (origin response), after the listener's.
    pub plugins: Vec<crate::plugin_phase::AttachedPlugin>,
    pub action: RouteAction,
}

/// A route's bearer-token requirement.
#[derive(Debug, Clone, Default)]
pub enum RouteJwt {
    /// The listener's provider, if it has one.
    #[default]
    Listener,
    /// None, even on a listener with a provider (health checks, ACME
    /// challenges).
    Exempt,
    /// This provider's, instead of the listener's (with or without one).
    Provider(Arc<JwtAuth>),
}

/// How a route matches the request path (the target without `?query`).
#[derive(Debug, Clone)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    /// Must match the whole path (compiled as `^(?:pattern)$`), once per
    /// snapshot. Only routes that configure one ever run a regex.
    Regex(regex::Regex),
}

/// A header that must be present, and equal `value` when given (the value is
/// compared exactly, after trimming surrounding whitespace; the name
/// case-insensitively). Any one of repeated headers may match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    pub name: String,
    pub value: Option<String>,
}

/// A query parameter that must be present, and equal `value` when given. The
/// raw (not percent-decoded) query string is compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryMatch {
    pub name: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone)]
pub enum RouteAction {
    Proxy(Arc<Upstream>),
    Respond(Arc<DirectResponse>),
}

#[derive(Debug, Clone)]
pub struct DirectResponse {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
    /// A `Location` field (redirects).
    pub location: Option<String>,
    /// A `Retry-After` field in seconds (429 from a rate limit).
    pub retry_after: Option<u64>,
    /// A `WWW-Authenticate` challenge (401 from a JWT provider).
    pub www_authenticate: Option<String>,
}

impl RouteTable {
    /// Assigns route ids and checks that every pool sits at its index.
    ///
    /// # Panics
    /// If `upstreams[i].index != i` (a bug in the snapshot compiler).
    pub fn new(version: u64, mut listeners: Vec<Listener>, upstreams: Vec<Arc<Upstream>>) -> Self {
        for (i, u) in upstreams.iter().enumerate() {
            assert_eq!(u.index, i, "pool {:?} out of place", u.name);
        }
        let mut id = 0;
        for l in &mut listeners {
            for r in &mut l.routes {
                r.id = id;
                id += 1;
            }
        }
        // Rules in the order `rules()` lists them: a listener's, then
        // those of each of its routes.
        let mut id = 0;
        for l in &mut listeners {
            let Listener { rules, routes, .. } = l;
            let on_routes = routes.iter_mut().flat_map(|r| r.rules.rules_mut());
            for r in rules.rules_mut().iter_mut().chain(on_routes) {
                r.id = id;
                id += 1;
            }
        }
        Self {
            version,
            listeners,
            upstreams,
            udp_listeners: Vec::new(),
            limits: Vec::new(),
        }
    }

    /// With the L7 limits its listeners and routes refer to.
    ///
    /// # Panics
    /// If `limits[i].id != i` (a bug in the snapshot compiler).
    pub fn with_limits(mut self, limits: Vec<Arc<Limit>>) -> Self {
        for (i, l) in limits.iter().enumerate() {
            assert_eq!(l.id, i, "limit {:?} out of place", l.name);
        }
        self.limits = limits;
        self
    }

    /// With UDP listeners (their pools are among `upstreams`).
    pub fn with_udp(mut self, udp: Vec<UdpListener>) -> Self {
        self.udp_listeners = udp;
        self
    }

    pub fn udp_listener(&self, port: u16) -> Option<&UdpListener> {
        self.udp_listeners.iter().find(|l| l.port == port)
    }

    /// One listener on `port` whose one route sends every request to
    /// `pool` (which gets index 0).
    pub fn proxy_all(version: u64, port: u16, pool: Upstream) -> Self {
        let pool = Arc::new(Upstream { index: 0, ..pool });
        Self::new(
            version,
            vec![Listener::new(
                port,
                vec![Route::new("all", RouteAction::Proxy(pool.clone()))],
            )],
            vec![pool],
        )
    }

    pub fn listener(&self, port: u16) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.port == port)
    }

    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    /// Every route of every listener, in id order.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.listeners.iter().flat_map(|l| l.routes.iter())
    }

    /// Every rule of every listener and route, in id order: a
    /// listener's, then its routes'.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.listeners.iter().flat_map(|l| {
            let on_routes = l.routes.iter().flat_map(|r| r.rules.rules().iter());
            l.rules.rules().iter().chain(on_routes)
        })
    }
}

impl Listener {
    /// Compiles the lookup structure of `routes` (kept in this order).
    pub fn new(port: u16, routes: Vec<Route>) -> Self {
        let index = RouteIndex::build(&routes);
        Self {
            port,
            tls: None,
            http2: false,
            http3: None,
            alt_svc: None,
            l4: None,
            rules: Rules::default(),
            limits: Vec::new(),
            jwt: None,
            jwt_by_route: routes.iter().any(|r| !matches!(r.jwt, RouteJwt::Listener)),
            route_policy: routes.iter().any(Route::has_policy),
            limits_by_route: false,
            routes,
            index,
            plugins: Vec::new(),
        }
    }

    /// With proxy-wasm plugins that see each request before routing and
    /// its response before the client write.
    pub fn with_plugins(mut self, plugins: Vec<crate::plugin_phase::AttachedPlugin>) -> Self {
        self.plugins = plugins;
        self
    }

    pub fn plugins(&self) -> &[crate::plugin_phase::AttachedPlugin] {
        &self.plugins
    }

    /// With rules evaluated before routing.
    pub fn with_rules(mut self, rules: Rules) -> Self {
        self.rules = rules;
        self
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// With L7 rate limits for every request.
    pub fn with_limits(mut self, limits: Vec<Arc<Limit>>) -> Self {
        self.limits_by_route = limits
            .iter()
            .any(|l| l.key == crate::limits::LimitKey::Route);
        self.route_policy |= self.limits_by_route;
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &[Arc<Limit>] {
        &self.limits
    }

    /// Every request needs a valid bearer token of `jwt`.
    pub fn with_jwt(mut self, jwt: Arc<JwtAuth>) -> Self {
        self.jwt = Some(jwt);
        self
    }

    pub fn jwt(&self) -> Option<&Arc<JwtAuth>> {
        self.jwt.as_ref()
    }

    /// Some route has its own `jwt`: [`Listener::jwt_for`] depends on the
    /// route (else it is always [`Listener::jwt`]).
    pub fn jwt_by_route(&self) -> bool {
        self.jwt_by_route
    }

    /// Some route has policy ([`Route::has_policy`]) or a listener limit is
    /// keyed by route: the proxy looks the route up before the token and
    /// the listener's rules, and checks that the normalized path routes
    /// the same (`routes_alike_normalized`).
    pub fn route_policy(&self) -> bool {
        self.route_policy
    }

    /// Whether the path as origins resolve it (`%XX` decoded, `//` and
    /// dot segments resolved, as rules see it) routes to `raw`, the route
    /// of the path as sent, or to a route that decides nothing else. The
    /// raw target goes upstream: should the two differ and either have
    /// policy, the token, rules, limits or answer of the raw route would
    /// stand for what the origin serves as another route's path
    /// (`/public/../partner/x`); two routes without policy (`//assets/x`
    /// to the catch-all rather than `assets`) pass. No allocation (the
    /// rules' per-thread scratch).
    /// `raw`: the index of that route ([`Listener::lookup`]).
    pub(crate) fn routes_alike_normalized(
        &self,
        req: &RequestView<'_>,
        raw: Option<usize>,
    ) -> bool {
        if !crate::rules::needs_normalizing(req.path.as_bytes()) {
            return true;
        }
        let policy = |i: Option<usize>| i.is_some_and(|i| self.routes[i].has_policy());
        crate::rules::with_normalized(req.path, |path| {
            let normalized = self.lookup(&RequestView { path, ..*req });
            normalized == raw || !(self.limits_by_route || policy(raw) || policy(normalized))
        })
    }

    /// The provider whose token a request routed to `route` needs (None
    /// for no route: the listener's).
    pub fn jwt_for<'a>(&'a self, route: Option<&'a Route>) -> Option<&'a Arc<JwtAuth>> {
        match route.map(|r| &r.jwt) {
            None | Some(RouteJwt::Listener) => self.jwt.as_ref(),
            Some(RouteJwt::Exempt) => None,
            Some(RouteJwt::Provider(p)) => Some(p),
        }
    }

    /// Terminates TLS on this listener.
    pub fn with_tls(mut self, tls: Arc<ListenerTls>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// A TCP listener splicing every connection to `l4.upstream`.
    pub fn tcp(port: u16, l4: L4Listener) -> Self {
        Self {
            l4: Some(l4),
            ..Self::new(port, Vec::new())
        }
    }

    /// Accepts HTTP/2 too (see `http2`).
    pub fn with_http2(mut self, on: bool) -> Self {
        self.http2 = on;
        self
    }

    /// Serves HTTP/3 on this port too (a TLS listener).
    pub fn with_http3(mut self, http3: Option<Arc<Http3Listener>>) -> Self {
        self.alt_svc = http3
            .as_ref()
            .filter(|h| h.alt_svc_max_age > 0)
            .map(|h| format!("h3=\":{}\"; ma={}", self.port, h.alt_svc_max_age).into());
        self.http3 = http3;
        self
    }

    /// What `Alt-Svc` says on this listener's HTTP/1.1 and HTTP/2
    /// responses (None: HTTP/3 off, or not advertised).
    pub fn alt_svc(&self) -> Option<&Arc<str>> {
        self.alt_svc.as_ref()
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// First route, in configuration order, that matches the request. No
    /// allocation; only the routes that can match the host are examined.
    pub fn route_request(&self, req: &RequestView<'_>) -> Option<&Route> {
        self.lookup(req).map(|i| &self.routes[i])
    }

    /// [`Listener::route_request`]'s index into [`Listener::routes`].
    pub(crate) fn lookup(&self, req: &RequestView<'_>) -> Option<usize> {
        self.index
            .candidates(req.host)
            .iter()
            .map(|&i| i as usize)
            .find(|&i| self.routes[i].matches_rest(req))
    }

    /// Host and target only (method `GET`, no headers): the lookup of the
    /// first proxy version, kept until the proxy passes a [`RequestView`].
    /// Routes that need a method other than GET, or a header, never match.
    pub fn route(&self, host: Option<&str>, target: &str) -> Option<&Route> {
        self.route_request(&RequestView::new(
            "GET",
            host,
            target,
            crate::http::Headers::EMPTY,
        ))
    }
}

impl Route {
    /// A route matching every request (any host, path prefix `/`).
    pub fn new(name: impl Into<String>, action: RouteAction) -> Self {
        Self {
            name: name.into(),
            id: 0,
            host: None,
            path: PathMatch::Prefix("/".into()),
            methods: Vec::new(),
            headers: Vec::new(),
            query: Vec::new(),
            client_cert_cn: None,
            limits: Vec::new(),
            canary: None,
            rules: Rules::default(),
            jwt: RouteJwt::Listener,
            cache: None,
            plugins: Vec::new(),
            action,
        }
    }

    /// Whether what happens to a request depends on taking this route
    /// rather than another: its own `jwt` (a route naming the listener's
    /// provider is compiled without one), rules, rate limits, or an answer
    /// of its own (`respond`: a route that blocks a path, `/admin/` → 403,
    /// beside a catch-all that proxies).
    pub fn has_policy(&self) -> bool {
        !matches!(self.jwt, RouteJwt::Listener)
            || !self.rules.is_empty()
            || !self.limits.is_empty()
            || matches!(self.action, RouteAction::Respond(_))
    }

    /// Whether the route matches, host included (the listener's index
    /// already filters on the host; this is the reference behaviour).
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let host_ok = match (&self.host, req.host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(pattern), Some(h)) => host_matches(pattern, h),
        };
        host_ok && self.matches_rest(req)
    }

    /// Everything but the host.
    fn matches_rest(&self, req: &RequestView<'_>) -> bool {
        self.path.matches(req.path)
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == req.method))
            && self.headers.iter().all(|h| h.matches(req.headers))
            && self.query.iter().all(|q| q.matches(req.query))
            && self
                .client_cert_cn
                .as_deref()
                .is_none_or(|cn| req.client_cn == Some(cn))
    }
}

impl PathMatch {
    /// Compiles an anchored regex: it must match the whole path.
    pub fn regex(pattern: &str) -> Result<Self, regex::Error> {
        regex::Regex::new(&format!("^(?:{pattern})$")).map(PathMatch::Regex)
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

impl HeaderMatch {
    fn matches(&self, headers: crate::http::Headers<'_>) -> bool {
        headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case(&self.name)
                && self
                    .value
                    .as_ref()
                    .is_none_or(|v| h.value.trim_ascii() == v.as_bytes())
        })
    }
}

impl QueryMatch {
    fn matches(&self, query: Option<&str>) -> bool {
        let Some(q) = query else {
            return false;
        };
        q.split('&').any(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            k == self.name && self.value.as_ref().is_none_or(|want| want == v)
        })
    }
}

pub(crate) fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn respond(name: &str, host: Option<&str>, prefix: &str) -> Route {
        Route {
            host: host.map(Into::into),
            path: PathMatch::Prefix(prefix.into()),
            ..Route::new(
                name,
                RouteAction::Respond(Arc::new(DirectResponse {
                    status: 200,
                    content_type: "text/plain".into(),
                    body: name.as_bytes().to_vec(),
                    location: None,
                    retry_after: None,
                    www_authenticate: None,
                })),
            )
        }
    }

    #[test]
    fn a_route_with_its_own_rate_limits_makes_the_route_a_policy_decision() {
        // Without it `/x/../api/` would route to the catch-all and dodge
        // the `api` route's limits while the origin serves `/api/`.
        let plain = Listener::new(80, vec![proxy("api", "/api/"), proxy("any", "/")]);
        assert!(!plain.route_policy());
        let spec = ferrogate_limits::LimitSpec {
            interval_ns: 1_000_000_000,
            burst: 1,
        };
        let limit = Arc::new(crate::limits::Limit::new(
            "per-client",
            0,
            spec,
            crate::limits::LimitKey::Source {
                prefix4: 32,
                prefix6: 128,
            },
        ));
        let api = Route {
            limits: vec![limit],
            ..proxy("api", "/api/")
        };
        let limited = Listener::new(80, vec![api, proxy("any", "/")]);
        assert!(limited.route_policy());
    }

    fn proxy(name: &str, prefix: &str) -> Route {
        let pool = Arc::new(Upstream::simple("p", 0, &["10.0.0.1:80".parse().unwrap()]));
        Route {
            path: PathMatch::Prefix(prefix.into()),
            ..Route::new(name, RouteAction::Proxy(pool))
        }
    }

    fn limit(key: crate::limits::LimitKey) -> Arc<crate::limits::Limit> {
        let spec = ferrogate_limits::LimitSpec {
            interval_ns: 1_000_000_000,
            burst: 1,
        };
        Arc::new(crate::limits::Limit::new("l", 0, spec, key))
    }

    /// `routes_alike_normalized` on `target` (the raw lookup first).
    fn alike(l: &Listener, target: &str) -> bool {
        let req = RequestView::new("GET", None, target, crate::http::Headers::EMPTY);
        l.routes_alike_normalized(&req, l.lookup(&req))
    }

    #[test]
    fn paths_that_route_elsewhere_once_normalized_are_refused_only_where_policy_differs() {
        // `admin` blocks a path beside a proxying catch-all; `limited`
        // has its own rate limits; `assets` and the regex route decide
        // nothing but the pool.
        let regex = Route {
            path: PathMatch::regex("/api/v4/projects/[^/]+/issues").unwrap(),
            ..proxy("issues", "/")
        };
        let l = Listener::new(
            80,
            vec![
                respond("admin", None, "/admin/"),
                Route {
                    limits: vec![limit(crate::limits::LimitKey::Global)],
                    ..proxy("limited", "/limited/")
                },
                proxy("assets", "/assets/"),
                regex,
                proxy("any", "/"),
            ],
        );
        assert!(l.route_policy());
        // Raw: the catch-all; normalized: `assets` (no policy either).
        assert!(alike(&l, "//assets/app.js"));
        // Raw: the regex route; normalized: the catch-all.
        assert!(alike(&l, "/api/v4/projects/group%2Fproj/issues"));
        // Raw: the catch-all; normalized: the route that answers 403.
        assert!(!alike(&l, "/x/../admin/"));
        assert!(!alike(&l, "/%61dmin/"));
        // Raw: the catch-all; normalized: the route with limits.
        assert!(!alike(&l, "/x/../limited/y"));
        // The other way round: raw `limited`, normalized the catch-all.
        assert!(!alike(&l, "/limited/../y"));
        assert!(alike(&l, "/admin/x/../y/"));
    }

    #[test]
    fn a_listener_limit_keyed_by_route_makes_every_route_policy() {
        let routes = || vec![proxy("api", "/api/"), proxy("any", "/")];
        let source =
            Listener::new(80, routes()).with_limits(vec![limit(crate::limits::LimitKey::Source {
                prefix4: 32,
                prefix6: 128,
            })]);
        assert!(!source.route_policy());
        let by_route =
            Listener::new(80, routes()).with_limits(vec![limit(crate::limits::LimitKey::Route)]);
        assert!(by_route.route_policy());
        // `/x/../api/y` would count in the catch-all's bucket.
        assert!(!alike(&by_route, "/x/../api/y"));
        assert!(alike(&by_route, "/api/y"));
    }

    #[test]
    fn a_respond_route_is_policy() {
        let l = Listener::new(
            80,
            vec![respond("admin", None, "/admin/"), proxy("any", "/")],
        );
        assert!(l.route_policy());
        assert!(!alike(&l, "/x/../admin/"));
    }

    #[test]
    fn first_matching_route_wins() {
        let l = Listener::new(
            80,
            vec![
                respond("api", Some("api.example.com"), "/v1/"),
                respond("wild", Some("*.example.com"), "/"),
                respond("any", None, "/"),
            ],
        );
        assert_eq!(
            l.route(Some("API.example.com"), "/v1/x").unwrap().name,
            "api"
        );
        assert_eq!(
            l.route(Some("api.example.com"), "/v2").unwrap().name,
            "wild"
        );
        assert_eq!(l.route(Some("example.com"), "/").unwrap().name, "any");
        assert_eq!(l.route(Some("xexample.com"), "/").unwrap().name, "any");
        assert_eq!(l.route(None, "/").unwrap().name, "any");
    }

    #[test]
    fn table_numbers_routes_across_listeners() {
        let t = RouteTable::new(
            1,
            vec![
                Listener::new(80, vec![respond("a", None, "/"), respond("b", None, "/")]),
                Listener::new(81, vec![respond("c", None, "/")]),
            ],
            vec![],
        );
        let ids: Vec<(usize, &str)> = t.routes().map(|r| (r.id, r.name.as_str())).collect();
        assert_eq!(ids, vec![(0, "a"), (1, "b"), (2, "c")]);
        assert_eq!(t.listener(81).unwrap().route(None, "/").unwrap().id, 2);
    }

    #[test]
    fn rule_ids_follow_rules_order_a_listeners_then_its_routes() {
        use crate::rules::{Rule, RuleAction, RuleMatch};
        let rules = |names: &[&str]| {
            let list = names
                .iter()
                .map(|n| Rule::new(*n, RuleMatch::default(), RuleAction::Allow))
                .collect();
            Rules::new(list).unwrap()
        };
        let with = |name: &str, r: &[&str]| Route {
            rules: rules(r),
            ..respond(name, None, "/")
        };
        let t = RouteTable::new(
            1,
            vec![
                Listener::new(80, vec![with("a", &["a1", "a2"]), with("b", &["b1"])])
                    .with_rules(rules(&["l80"])),
                Listener::new(81, vec![with("c", &["c1"])]).with_rules(rules(&["l81"])),
            ],
            vec![],
        );
        let ids: Vec<(usize, &str)> = t.rules().map(|r| (r.id, r.name.as_str())).collect();
        assert_eq!(
            ids,
            [
                (0, "l80"),
                (1, "a1"),
                (2, "a2"),
                (3, "b1"),
                (4, "l81"),
                (5, "c1")
            ]
        );
        let l = t.listener(80).unwrap();
        assert!(!l.jwt_by_route() && l.jwt_for(l.route(None, "/")).is_none());
        let exempt = Listener::new(
            80,
            vec![Route {
                jwt: RouteJwt::Exempt,
                ..respond("health", None, "/")
            }],
        );
        assert!(exempt.jwt_by_route());
    }

    #[test]
    #[should_panic(expected = "out of place")]
    fn table_rejects_a_pool_at_the_wrong_index() {
        let u = Arc::new(Upstream::simple("p", 3, &["10.0.0.1:80".parse().unwrap()]));
        RouteTable::new(1, vec![], vec![u]);
    }
}
