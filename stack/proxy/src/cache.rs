//! The response cache in the proxy's phases (#21): what a request on a
//! route with `cache` does — look up, serve, wait for another request's
//! fetch, revalidate, store what comes back — on top of `ferrogate-cache`
//! (policy, keys, the shared store, locks). The connection state machines
//! call [`lookup`] once routing chose a caching route, [`on_response`] when
//! the upstream's head arrives, and serve objects with [`CachedHead`].
//!
//! One [`EdgeCache`] per engine, shared by its workers; each stack holds it
//! with the [`ClockAnchor`] that maps its clock to wall time (HTTP dates)
//! and to the monotonic clock of the locks.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferrogate_cache::policy::{RequestDecision, response_storable};
use ferrogate_cache::{
    Acquired, CacheControl, CacheKey, CacheLocks, CacheMeta, CachePolicyConfig, CacheStatus,
    FetchPermit, HeaderView, Hit, KeyConfig, KeyParts, MemoryStore, Object, ObjectWriter,
    PurgeMode, StoreConfig, StoredHeaders, WaitTicket,
};

use crate::http::Headers;
use crate::net::Instant;

pub use ferrogate_cache as core;

/// The engine's cache settings (`[cache]`).
#[derive(Clone, Debug)]
pub struct CacheSettings {
    pub store: StoreConfig,
    /// Response header that names what the cache did (`X-Cache: HIT`);
    /// `None` sends none.
    pub status_header: Option<String>,
    /// How long a request waits for another request's fetch of the same
    /// key before it goes upstream itself.
    pub lock_timeout: Duration,
    /// How often a waiting request (or a reader ahead of a body being
    /// stored) looks again.
    pub wait_poll: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            store: StoreConfig::default(),
            status_header: Some("x-cache".into()),
            lock_timeout: Duration::from_secs(5),
            wait_poll: Duration::from_millis(1),
        }
    }
}

/// The engine's cache: one store and one set of fetch locks, shared by
/// every worker; purges act on it directly, so they are seen by every
/// worker at once.
pub struct EdgeCache {
    pub store: MemoryStore,
    pub locks: CacheLocks,
    pub settings: CacheSettings,
}

impl std::fmt::Debug for EdgeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeCache")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl EdgeCache {
    pub fn new(settings: CacheSettings) -> Self {
        EdgeCache {
            store: MemoryStore::new(&settings.store),
            locks: CacheLocks::new(settings.store.shards),
            settings,
        }
    }

    /// Runs one purge; returns how many objects it hit.
    pub fn purge(&self, p: &Purge) -> Result<usize, PurgeError> {
        match &p.target {
            PurgeTarget::Tag(t) => {
                if t.is_empty() {
                    return Err(PurgeError::Empty);
                }
                Ok(self.store.purge_tag(t.as_bytes(), p.mode))
            }
            PurgeTarget::Url(u) | PurgeTarget::Prefix(u) => {
                let (scheme, host, path) = split_url(u)?;
                let prefix = ferrogate_cache::key::purge_prefix(scheme, host.as_bytes(), path);
                if matches!(p.target, PurgeTarget::Prefix(_)) {
                    return Ok(self.store.purge_prefix(&prefix, p.mode));
                }
                Ok(self.purge_exact(&prefix, p.mode))
            }
        }
    }

    /// Every key of exactly this URL: with or without chosen request
    /// headers in the key (`\n` follows the URL part) and every variant.
    fn purge_exact(&self, url_key: &[u8], mode: PurgeMode) -> usize {
        let mut with_headers = url_key.to_vec();
        with_headers.push(b'\n');
        let (scheme, rest) = match url_key.iter().position(|&b| b == b':') {
            Some(i) if &url_key[..i] == b"https" => ("https", &url_key[i + 3..]),
            Some(i) => ("http", &url_key[i + 3..]),
            None => return 0,
        };
        let slash = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
        let no_fields: [(&str, &str); 0] = [];
        let parts = KeyParts {
            scheme,
            host: &rest[..slash],
            path_and_query: &rest[slash..],
            headers: &no_fields,
        };
        let cfg = KeyConfig::default();
        let key = CacheKey::new(parts, &cfg, self.store.hasher());
        self.store.purge_key(&key, mode) + self.store.purge_prefix(&with_headers, mode)
    }

    pub fn stats(&self) -> ferrogate_cache::StoreStats {
        self.store.stats()
    }
}

/// What to purge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PurgeTarget {
    /// `scheme://host/path?query`, exactly (all variants).
    Url(String),
    /// Every URL starting with `scheme://host/path-prefix`.
    Prefix(String),
    /// Every object tagged by the configured tag header.
    Tag(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purge {
    pub mode: PurgeMode,
    pub target: PurgeTarget,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PurgeError {
    #[error("a purge URL is scheme://host/path (http or https), got {0:?}")]
    BadUrl(String),
    #[error("an empty purge target")]
    Empty,
}

/// `http://Host:80/p?q` → ("http", "host", "/p?q"); the scheme's default
/// port is dropped (keys never hold it).
fn split_url(u: &str) -> Result<(&'static str, String, &[u8]), PurgeError> {
    let bad = || PurgeError::BadUrl(u.to_string());
    let (scheme, rest) = if let Some(r) = u.strip_prefix("https://") {
        ("https", r)
    } else if let Some(r) = u.strip_prefix("http://") {
        ("http", r)
    } else {
        return Err(bad());
    };
    let slash = rest.find('/').ok_or_else(bad)?;
    let (authority, path) = rest.split_at(slash);
    if authority.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    let host = authority
        .strip_suffix(default_port)
        .unwrap_or(authority)
        .to_ascii_lowercase();
    Ok((scheme, host, path.as_bytes()))
}

/// A route's cache settings (`cache = { … }` on a route).
#[derive(Clone, Debug)]
pub struct RouteCache {
    pub policy: CachePolicyConfig,
    /// Always starts with the route's scope (see [`SCOPE_FIELDS`]).
    key: KeyConfig,
}

/// Pseudo-fields every caching route's key starts with: the route's name
/// and listener port. Two routes (which may match on headers, go to other
/// pools, sit on other listeners) never share an object. No client can
/// send them (a field name has no `:`).
pub const SCOPE_FIELDS: [&str; 2] = [":route", ":port"];

impl RouteCache {
    pub fn new(policy: CachePolicyConfig, mut key: KeyConfig) -> Self {
        key.headers
            .retain(|h| !SCOPE_FIELDS.iter().any(|s| h.as_ref() == s.as_bytes()));
        for (i, s) in SCOPE_FIELDS.iter().enumerate() {
            key.headers
                .insert(i, bytes::Bytes::from_static(s.as_bytes()));
        }
        RouteCache { policy, key }
    }

    pub fn key(&self) -> &KeyConfig {
        &self.key
    }
}

impl Default for RouteCache {
    fn default() -> Self {
        Self::new(CachePolicyConfig::default(), KeyConfig::default())
    }
}

/// A request's fields behind the route's scope pseudo-fields.
pub(crate) struct ScopedFields<'a> {
    fields: FieldView<'a>,
    route: &'a str,
    port: [u8; 5],
    port_len: usize,
}

impl<'a> ScopedFields<'a> {
    fn new(fields: FieldView<'a>, route: &'a str, port: u16) -> Self {
        let mut buf = [0u8; 5];
        let digits = port.to_string();
        let port_len = digits.len();
        buf[..port_len].copy_from_slice(digits.as_bytes());
        ScopedFields {
            fields,
            route,
            port: buf,
            port_len,
        }
    }
}

impl HeaderView for ScopedFields<'_> {
    fn for_each_field(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        f(SCOPE_FIELDS[0].as_bytes(), self.route.as_bytes());
        f(SCOPE_FIELDS[1].as_bytes(), &self.port[..self.port_len]);
        self.fields.for_each_field(f)
    }
}

/// Maps a stack's clock (µs since its start) to wall time and to the
/// monotonic clock the locks use.
#[derive(Clone, Copy, Debug)]
pub struct ClockAnchor {
    /// The monotonic instant of the stack's time zero.
    pub mono: std::time::Instant,
    /// The wall time at the stack's time zero.
    pub wall: SystemTime,
}

impl ClockAnchor {
    /// An anchor for a stack whose time zero is now.
    pub fn now() -> Self {
        ClockAnchor {
            mono: std::time::Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// An anchor for a stack whose clock reads `now` at this moment.
    pub fn at(now: Instant) -> Self {
        let here = Self::now();
        let d = Self::since_zero(now);
        ClockAnchor {
            mono: here.mono.checked_sub(d).unwrap_or(here.mono),
            wall: here.wall.checked_sub(d).unwrap_or(here.wall),
        }
    }

    fn since_zero(now: Instant) -> Duration {
        Duration::from_micros(now.total_micros().max(0) as u64)
    }

    pub fn wall(&self, now: Instant) -> SystemTime {
        self.wall + Self::since_zero(now)
    }

    pub fn mono(&self, now: Instant) -> std::time::Instant {
        self.mono + Self::since_zero(now)
    }
}

/// A stack's view of the engine's cache.
#[derive(Clone, Debug)]
pub(crate) struct CacheHandle {
    pub edge: Arc<EdgeCache>,
    pub anchor: ClockAnchor,
}

/// Request header fields as the cache reads them.
#[derive(Clone, Copy)]
pub(crate) struct FieldView<'a>(pub Headers<'a>);

impl HeaderView for FieldView<'_> {
    fn for_each_field(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        for h in self.0.iter() {
            f(h.name.as_bytes(), h.value)
        }
    }
}

/// The parts of a request's key kept past its head (the request bytes
/// are gone by the time a response or a waited-for fetch comes back).
#[derive(Debug)]
pub(crate) struct OwnedKey {
    scheme: &'static str,
    host: Vec<u8>,
    target: Vec<u8>,
    /// The request's fields, for keyed headers and `Vary`.
    headers: StoredHeaders,
}

impl OwnedKey {
    fn parts(&self) -> KeyParts<'_> {
        KeyParts {
            scheme: self.scheme,
            host: &self.host,
            path_and_query: &self.target,
            headers: &self.headers,
        }
    }
}

/// One request's cache state from lookup to the end of its response.
pub(crate) struct CacheReq {
    pub route: Arc<RouteCache>,
    key: OwnedKey,
    directives: CacheControl,
    validate: bool,
    /// This exchange may be stored (GET without `no-store`).
    store: bool,
    /// The request holds the key's fetch lock.
    permit: Option<FetchPermit>,
    /// The stored response being revalidated, and whether it may be
    /// served if the origin fails (`stale-if-error`).
    stale: Option<(Hit, bool)>,
    /// When the request went upstream (the response's `request_time`).
    sent_at: SystemTime,
    /// What the cache did (the `X-Cache` value once known).
    pub status: CacheStatus,
    /// An unsafe method's request: its success invalidates the target.
    invalidate: bool,
    /// The store's purge epoch before the lookup (see `insert_since`).
    epoch: u64,
}

impl std::fmt::Debug for CacheReq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheReq")
            .field("key", &self.key)
            .field("status", &self.status)
            .field("permit", &self.permit.is_some())
            .field("stale", &self.stale.is_some())
            .finish()
    }
}

impl CacheReq {
    /// Conditional fields for the upstream request when revalidating.
    pub fn conditional(&self) -> Option<ferrogate_cache::revalidate::Conditional> {
        let (hit, _) = self.stale.as_ref()?;
        Some(ferrogate_cache::revalidate::conditional_request(hit.meta()))
    }

    /// The request goes upstream now: its `request_time`.
    pub fn mark_sent(&mut self, wall: SystemTime) {
        self.sent_at = wall;
    }

    /// This exchange may be stored (GET, no `no-store`): the client's own
    /// validators are not forwarded (the cache needs a full response).
    pub fn may_store(&self) -> bool {
        self.store
    }

    /// The response must not be stored (e.g. it varies on a field the
    /// proxy sets itself).
    pub fn forbid_store(&mut self) {
        self.store = false;
    }

    /// The stored response, when the origin failed and it may stand in.
    pub fn take_stale_for_error(&mut self) -> Option<Arc<Object>> {
        match self.stale.take() {
            Some((hit, true)) => {
                if let Some(p) = self.permit.take() {
                    // Waiters look up again and find it stored.
                    p.stored();
                }
                self.status = CacheStatus::Stale;
                Some(hit.object)
            }
            other => {
                self.stale = other;
                None
            }
        }
    }
}

/// What the cache does with a request.
pub(crate) enum Lookup {
    /// Not for the cache: upstream as usual.
    Bypass,
    /// Answer from the cache with this status.
    Serve(Arc<Object>, CacheStatus),
    /// Answer a Range request from a fresh, complete stored response
    /// (206 with this part).
    ServeRange(Arc<Object>, ByteRange),
    /// Go upstream (a miss, or a revalidation), then `on_response`.
    Fetch(Box<CacheReq>),
    /// Another request is fetching: wait, then `relookup`.
    Wait(Box<CacheReq>, WaitTicket),
    /// `only-if-cached` and nothing usable: 504 (RFC 9111 §5.2.1.7).
    GatewayTimeout,
    /// A fresh stored response the client's validators match: 304.
    NotModified(Arc<Object>),
    /// An unsafe method: upstream as is, and a success invalidates what is
    /// stored for its target.
    Invalidate(Box<CacheReq>),
}

impl Lookup {
    /// Whether the request may end up storing what the origin sends.
    pub fn may_store(&self) -> bool {
        match self {
            Lookup::Fetch(r) | Lookup::Wait(r, _) => r.may_store(),
            _ => false,
        }
    }
}

/// What of a stored response goes to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Whole,
    /// 206 with one range.
    Range(ByteRange),
    /// 304: the client's validators match (its head only).
    NotModified,
}

/// Fields a 304 carries from the stored response (RFC 9110 §15.4.5).
const NOT_MODIFIED_FIELDS: [&[u8]; 6] = [
    b"cache-control",
    b"content-location",
    b"date",
    b"etag",
    b"expires",
    b"vary",
];

/// Request fields the proxy sets itself: a response varying on one would
/// be stored under the client's value, not the one the origin saw.
const PROXY_SET_FIELDS: [&str; 6] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "via",
    "x-request-id",
    "forwarded",
    "x-real-ip",
];

/// Whether a response's `Vary` names a field the proxy sets or changes
/// (`owned`: the listener's identity fields, a rule's changes).
pub(crate) fn varies_on_proxy_field(h: &StoredHeaders, owned: impl Fn(&str) -> bool) -> bool {
    let mut hit = false;
    h.for_each_value("vary", &mut |v| {
        for name in ferrogate_cache::headers::list_items(v) {
            let name = std::str::from_utf8(name).unwrap_or("");
            hit |= PROXY_SET_FIELDS
                .iter()
                .any(|p| name.eq_ignore_ascii_case(p))
                || owned(name);
        }
    });
    hit
}

/// Most fields a stored head keeps: serving adds `Age` (and a range's
/// `Content-Range`) and the head is parsed again with a fixed number of
/// slots.
const MAX_STORED_FIELDS: usize = 90;

/// The origin's response fields as the cache keeps them: no request id
/// (each hit echoes its own), no `X-Cache` of the origin's (ours is
/// added), and `Content-Length` only when it framed the body (a chunked
/// response that also names a length is chunked, RFC 9112 §6.3). `None`:
/// too many fields to store.
pub(crate) fn stored_fields(
    status: u16,
    fields: &[(&[u8], &[u8])],
    length_framed: bool,
    status_header: Option<&str>,
) -> (StoredHeaders, bool) {
    let mut h = StoredHeaders::from_response(status, fields);
    h.fields.retain(|(n, _)| {
        !(n.eq_ignore_ascii_case(b"x-request-id")
            || status_header.is_some_and(|s| n.eq_ignore_ascii_case(s.as_bytes()))
            || (!length_framed && n.eq_ignore_ascii_case(b"content-length")))
    });
    let fits = h.fields.len() <= MAX_STORED_FIELDS;
    (h, fits)
}

/// The request's scheme, host and target as the key sees them.
pub(crate) struct RequestKey<'a> {
    pub https: bool,
    pub host: &'a str,
    pub target: &'a str,
    pub method: &'a str,
    pub headers: Headers<'a>,
    /// The request carries a body (never answered from the cache).
    pub has_body: bool,
    /// The route's name and listener port (the key's scope).
    pub route: &'a str,
    pub port: u16,
    /// Not the route's plain request: a protocol upgrade, a canary arm, or
    /// a rule that changed the pool, the target or the request's fields —
    /// never answered from nor stored in the route's objects.
    pub diverted: bool,
}

/// Methods that do not change the resource (RFC 9110 §9.2.1): others
/// invalidate what is stored for their target on success (RFC 9111 §4.4).
fn is_safe(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE")
}

/// The cache's decision for a request on a caching route.
pub(crate) fn lookup(
    h: &CacheHandle,
    route: &Arc<RouteCache>,
    req: &RequestKey<'_>,
    now: Instant,
) -> Lookup {
    let plain = FieldView(req.headers);
    let fields = ScopedFields::new(plain, req.route, req.port);
    let scheme = if req.https { "https" } else { "http" };
    let owned = || OwnedKey {
        scheme,
        host: req.host.as_bytes().to_vec(),
        target: req.target.as_bytes().to_vec(),
        headers: StoredHeaders::from_response(0, &fields),
    };
    if !is_safe(req.method) {
        // Upstream as is; a success invalidates the target (`on_response`).
        return Lookup::Invalidate(Box::new(CacheReq {
            route: route.clone(),
            key: owned(),
            directives: CacheControl::default(),
            validate: false,
            store: false,
            permit: None,
            stale: None,
            sent_at: h.anchor.wall(now),
            status: CacheStatus::Bypass,
            invalidate: true,
            epoch: 0,
        }));
    }
    if req.has_body || req.diverted || plain.has("authorization") {
        // Authorized requests go upstream untouched (RFC 9111 §3.5: a
        // shared cache serves them only what the origin marked public).
        return Lookup::Bypass;
    }
    let (store, validate, directives) =
        match ferrogate_cache::policy::request_decision(req.method, &fields, &route.policy) {
            RequestDecision::Bypass(_) => return Lookup::Bypass,
            RequestDecision::Lookup {
                store,
                validate,
                directives,
            } => (store, validate, directives),
        };
    let parts = KeyParts {
        scheme,
        host: req.host.as_bytes(),
        path_and_query: req.target.as_bytes(),
        headers: &fields,
    };
    let key = CacheKey::new(parts, route.key(), h.edge.store.hasher());
    if plain.has("range") {
        return range_lookup(h, &key, &fields, &directives, validate, now);
    }
    decide(
        h,
        route,
        &key,
        &fields,
        Decide {
            directives,
            validate,
            store,
        },
        owned,
        now,
    )
}

/// A Range request: served (206) from a fresh, complete stored response
/// when its one range is satisfiable and `If-Range` (if any) names the
/// stored validator; otherwise upstream untouched (not stored, no lock:
/// the origin answers partial content, 416 or the whole).
fn range_lookup(
    h: &CacheHandle,
    key: &CacheKey<'_>,
    fields: &ScopedFields<'_>,
    directives: &CacheControl,
    validate: bool,
    now: Instant,
) -> Lookup {
    let Some(hit) = h.edge.store.lookup(key, fields) else {
        return Lookup::Bypass;
    };
    let wall = h.anchor.wall(now);
    let fresh = ferrogate_cache::decide(
        hit.meta(),
        directives,
        validate,
        hit.object.light_purged(),
        wall,
    ) == ferrogate_cache::Decision::Fresh;
    if !fresh || !hit.object.is_complete() || hit.meta().headers.status != 200 {
        return Lookup::Bypass;
    }
    if let Some(v) = ferrogate_cache::headers::first_value(fields, "if-range")
        && !if_range_matches(&v, &hit.meta().headers)
    {
        // The client's copy is another version: the whole response, fresh.
        return Lookup::Serve(hit.object, CacheStatus::Hit);
    }
    let len = hit.object.body_len() as u64;
    let spec = ferrogate_cache::headers::first_value(fields, "range").unwrap_or_default();
    match ByteRange::parse(&spec, len) {
        Some(r) => Lookup::ServeRange(hit.object, r),
        None => Lookup::Bypass,
    }
}

/// `If-Range` (RFC 9110 §13.1.5): a strong ETag equal to the stored one, or
/// the stored `Last-Modified` exactly.
fn if_range_matches(v: &[u8], stored: &StoredHeaders) -> bool {
    let v = v.trim_ascii();
    if v.starts_with(b"\"") {
        return stored.get("etag").is_some_and(|e| e.trim_ascii() == v);
    }
    stored
        .get("last-modified")
        .is_some_and(|lm| lm.trim_ascii() == v)
}

/// One satisfiable byte range of a body of known length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub first: u64,
    pub last: u64,
    pub total: u64,
}

impl ByteRange {
    /// `bytes=a-b`, `bytes=a-`, `bytes=-n` (one range; RFC 9110 §14.1.2).
    /// `None`: several ranges, another unit, malformed or unsatisfiable —
    /// the origin answers those.
    pub fn parse(spec: &[u8], total: u64) -> Option<ByteRange> {
        let spec = std::str::from_utf8(spec).ok()?.trim();
        let (unit, set) = spec.split_once('=')?;
        if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') || total == 0 {
            return None;
        }
        let (a, b) = set.trim().split_once('-')?;
        let num = |x: &str| -> Option<u64> {
            (!x.is_empty() && x.bytes().all(|c| c.is_ascii_digit()))
                .then(|| x.parse().ok())
                .flatten()
        };
        let (first, last) = match (a.trim(), b.trim()) {
            ("", n) => {
                let n = num(n)?;
                if n == 0 {
                    return None;
                }
                (total.saturating_sub(n), total - 1)
            }
            (a, "") => (num(a)?, total - 1),
            (a, b) => (num(a)?, num(b)?.min(total - 1)),
        };
        (first <= last && first < total).then_some(ByteRange { first, last, total })
    }

    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What of a stored body a response carries: all, or one range.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodySlice {
    skip: u64,
    left: u64,
}

impl BodySlice {
    pub fn new(range: Option<ByteRange>) -> Self {
        match range {
            Some(r) => BodySlice {
                skip: r.first,
                left: r.len(),
            },
            None => BodySlice {
                skip: 0,
                left: u64::MAX,
            },
        }
    }

    /// The part of the next stored chunk that goes out (maybe empty).
    pub fn cut(&mut self, mut b: bytes::Bytes) -> bytes::Bytes {
        let skip = self.skip.min(b.len() as u64) as usize;
        self.skip -= skip as u64;
        let _ = b.split_to(skip);
        if (b.len() as u64) > self.left {
            b.truncate(self.left as usize);
        }
        self.left -= b.len() as u64;
        b
    }

    /// The range is complete (nothing more to send).
    pub fn done(&self) -> bool {
        self.left == 0
    }
}

/// Whether the client's validators select the stored response (RFC 9110
/// §13.1.2 weak comparison for If-None-Match; If-Modified-Since only
/// without it, against the stored Last-Modified).
fn client_has_it(fields: &dyn HeaderView, meta: &CacheMeta) -> bool {
    let weak = |t: &[u8]| t.strip_prefix(b"W/").unwrap_or(t).to_vec();
    let stored_etag = meta.headers.get("etag").map(|e| weak(e.trim_ascii()));
    let mut inm_seen = false;
    let mut inm_match = false;
    fields.for_each_value("if-none-match", &mut |v| {
        inm_seen = true;
        for t in ferrogate_cache::headers::list_items(v) {
            if t == b"*" || stored_etag.as_deref() == Some(&weak(t)[..]) {
                inm_match = true;
            }
        }
    });
    if inm_seen {
        return inm_match;
    }
    let Some(ims) = ferrogate_cache::headers::first_value(fields, "if-modified-since")
        .and_then(|v| ferrogate_cache::meta::parse_http_date(&v))
    else {
        return false;
    };
    meta.headers
        .get("last-modified")
        .and_then(|lm| ferrogate_cache::meta::parse_http_date(lm))
        .is_some_and(|lm| lm <= ims)
}

struct Decide {
    directives: CacheControl,
    validate: bool,
    store: bool,
}

fn decide(
    h: &CacheHandle,
    route: &Arc<RouteCache>,
    key: &CacheKey<'_>,
    fields: &dyn HeaderView,
    d: Decide,
    owned: impl Fn() -> OwnedKey,
    now: Instant,
) -> Lookup {
    use ferrogate_cache::Decision;
    let edge = &h.edge;
    let wall = h.anchor.wall(now);
    let mono = h.anchor.mono(now);
    let deadline = mono + edge.settings.lock_timeout;
    // Before the lookup: a hard purge from now on refuses what this
    // request's fetch would store.
    let epoch = edge.store.purge_epoch();
    let req = |stale: Option<(Hit, bool)>, status| {
        Box::new(CacheReq {
            route: route.clone(),
            key: owned(),
            directives: d.directives.clone(),
            validate: d.validate,
            store: d.store,
            permit: None,
            stale,
            sent_at: wall,
            status,
            invalidate: false,
            epoch,
        })
    };
    // Holds the key's lock to revalidate `hit`, or serves it stale while
    // another request does (`serve_stale`), or waits for that one.
    let revalidate = |hit: Hit, stale_if_error: bool, serve_stale: bool| -> Lookup {
        if !d.store {
            // HEAD or no-store: nothing of theirs is stored for others;
            // they revalidate (or are served stale) alone, holding no lock.
            return if serve_stale {
                Lookup::Serve(hit.object, CacheStatus::Stale)
            } else {
                Lookup::Fetch(req(Some((hit, stale_if_error)), CacheStatus::Expired))
            };
        }
        match edge.locks.acquire_at(key.hash, mono, deadline) {
            Acquired::Fetch(p) => {
                let mut r = req(Some((hit, stale_if_error)), CacheStatus::Expired);
                r.permit = Some(p);
                Lookup::Fetch(r)
            }
            Acquired::Wait(_) if serve_stale => Lookup::Serve(hit.object, CacheStatus::Stale),
            Acquired::Wait(t) => Lookup::Wait(req(None, CacheStatus::Miss), t),
        }
    };
    let only_if_cached = d.directives.only_if_cached;
    if let Some(hit) = edge.store.lookup(key, fields) {
        let light = hit.object.light_purged();
        return match ferrogate_cache::decide(hit.meta(), &d.directives, d.validate, light, wall) {
            Decision::Fresh if client_has_it(fields, hit.meta()) => Lookup::NotModified(hit.object),
            Decision::Fresh => Lookup::Serve(hit.object, CacheStatus::Hit),
            // The client accepts it stale (max-stale).
            Decision::Stale => Lookup::Serve(hit.object, CacheStatus::Stale),
            Decision::GatewayTimeout => Lookup::GatewayTimeout,
            _ if only_if_cached => Lookup::GatewayTimeout,
            // This request revalidates; the others are served stale.
            Decision::ServeStaleWhileRevalidate => revalidate(hit, true, true),
            // A light purge: stale only while one revalidation runs.
            Decision::RevalidateOrServeStale { stale_if_error } => {
                revalidate(hit, stale_if_error, true)
            }
            Decision::Revalidate { stale_if_error } => revalidate(hit, stale_if_error, false),
        };
    }
    if only_if_cached {
        return Lookup::GatewayTimeout;
    }
    if !d.store || edge.locks.hit_for_pass(key.hash, mono) {
        // HEAD and no-store requests never hold the lock (nothing of
        // theirs is stored for the waiters); a key that just answered
        // something uncacheable goes upstream without coalescing.
        let mut r = req(None, CacheStatus::Miss);
        r.store &= d.store;
        return Lookup::Fetch(r);
    }
    match edge.locks.acquire_at(key.hash, mono, deadline) {
        Acquired::Fetch(p) => {
            // A fetch may have stored and released between the miss and
            // `acquire`: look again before going upstream.
            if let Some(hit) = edge.store.lookup(key, fields)
                && ferrogate_cache::decide(hit.meta(), &d.directives, d.validate, false, wall)
                    == Decision::Fresh
            {
                p.stored();
                return Lookup::Serve(hit.object, CacheStatus::Hit);
            }
            let mut r = req(None, CacheStatus::Miss);
            r.permit = Some(p);
            Lookup::Fetch(r)
        }
        Acquired::Wait(t) => Lookup::Wait(req(None, CacheStatus::Miss), t),
    }
}

/// A waiting request's next step.
pub(crate) enum Waited {
    Pending,
    Lookup(Lookup),
}

/// Polls a waiting request's ticket.
pub(crate) fn poll_wait(
    h: &CacheHandle,
    mut req: Box<CacheReq>,
    ticket: &mut WaitTicket,
    now: Instant,
) -> (Waited, Option<Box<CacheReq>>) {
    use ferrogate_cache::Wait;
    match ticket.poll(h.anchor.mono(now)) {
        Wait::Pending => (Waited::Pending, Some(req)),
        Wait::Ready => (Waited::Lookup(relookup(h, req, now)), None),
        Wait::TakeOver(p) => {
            req.permit = Some(p);
            (Waited::Lookup(Lookup::Fetch(req)), None)
        }
        // The fetch was not stored, or took too long: go upstream alone.
        Wait::GoUpstream | Wait::TimedOut => {
            req.store = false;
            (Waited::Lookup(Lookup::Fetch(req)), None)
        }
    }
}

/// Looks a request up again (after waiting for another's fetch).
pub(crate) fn relookup(h: &CacheHandle, req: Box<CacheReq>, now: Instant) -> Lookup {
    let CacheReq {
        route,
        key: owned,
        directives,
        validate,
        store,
        ..
    } = *req;
    let key = CacheKey::new(owned.parts(), route.key(), h.edge.store.hasher());
    let d = Decide {
        directives,
        validate,
        store,
    };
    let fields = owned.headers.clone();
    decide(
        h,
        &route,
        &key,
        &fields,
        d,
        || OwnedKey {
            scheme: owned.scheme,
            host: owned.host.clone(),
            target: owned.target.clone(),
            headers: owned.headers.clone(),
        },
        now,
    )
}

/// What to do with an upstream response to a request the cache looked at.
pub(crate) enum OnResponse {
    /// Send it on; nothing stored.
    Pass,
    /// Send it on and store its body through the writer.
    Store(ObjectWriter),
    /// Drop it and answer from the cache (a 304 merged, or a stored
    /// response standing in for an origin error).
    Serve(Arc<Object>),
    /// A 304 to the cache's own conditional request that selects nothing
    /// stored: the client asked for no 304, so the exchange failed.
    Mismatch,
}

/// Decides on the upstream response `status`/`resp` (its fields as the
/// origin sent them) to `req`; `body_len`: its `Content-Length`.
pub(crate) fn on_response(
    h: &CacheHandle,
    req: &mut CacheReq,
    status: u16,
    resp: &StoredHeaders,
    body_len: Option<u64>,
    now: Instant,
) -> OnResponse {
    let edge = &h.edge;
    let wall = h.anchor.wall(now);
    let mono = h.anchor.mono(now);
    let route = req.route.clone();
    let policy = &route.policy;
    if req.invalidate {
        if status < 400 {
            let key = CacheKey::new(req.key.parts(), req.route.key(), edge.store.hasher());
            edge.store.purge_key(&key, PurgeMode::Hard);
        }
        return OnResponse::Pass;
    }
    if let Some((hit, stale_if_error)) = req.stale.take() {
        if status == 304 {
            let Ok(meta) = ferrogate_cache::revalidate::merge_not_modified(
                hit.meta(),
                resp,
                req.sent_at,
                wall,
                policy,
            ) else {
                // Selects nothing stored: the object is of no use either.
                edge.store.remove(&hit);
                if let Some(p) = req.permit.take() {
                    p.uncacheable_at(mono);
                }
                return OnResponse::Mismatch;
            };
            req.status = CacheStatus::Revalidated;
            let storable = req.store
                && response_storable(
                    "GET",
                    &req.key.headers,
                    meta.headers.status,
                    &meta.headers,
                    policy,
                )
                .is_ok();
            if !storable {
                // No longer for a shared cache (now private, no-store, …),
                // or a request that may store nothing: served this once.
                if req.store {
                    edge.store.remove(&hit);
                }
                if let Some(p) = req.permit.take() {
                    p.uncacheable_at(mono);
                }
                return OnResponse::Serve(hit.object);
            }
            if edge.store.refresh_outcome(&hit, meta) != ferrogate_cache::store::Refresh::Refreshed
            {
                // Evicted (its new fields forbid keeping it) or gone: served once.
                if let Some(p) = req.permit.take() {
                    p.uncacheable_at(mono);
                }
                return OnResponse::Serve(hit.object);
            }
            if let Some(p) = req.permit.take() {
                p.stored();
            }
            let key = CacheKey::new(req.key.parts(), req.route.key(), edge.store.hasher());
            let served = edge
                .store
                .lookup(&key, &req.key.headers)
                .map_or(hit.object, |h| h.object);
            return OnResponse::Serve(served);
        }
        if stale_if_error && matches!(status, 500 | 502 | 503 | 504) {
            req.stale = Some((hit, true));
            if let Some(o) = req.take_stale_for_error() {
                return OnResponse::Serve(o);
            }
        }
    }
    let Some(permit) = req.permit.take() else {
        return OnResponse::Pass;
    };
    if !req.store
        || response_storable("GET", &req.key.headers, status, resp, policy).is_err()
        || body_len.is_some_and(|n| n > usize::MAX as u64)
    {
        permit.uncacheable_at(mono);
        return OnResponse::Pass;
    }
    let meta = CacheMeta::from_stored(
        resp.clone(),
        ferrogate_cache::meta::age_value(resp),
        ferrogate_cache::meta::unix_secs(req.sent_at),
        ferrogate_cache::meta::unix_secs(wall),
        policy,
    );
    let key = CacheKey::new(req.key.parts(), req.route.key(), edge.store.hasher());
    match edge.store.insert_since(
        &key,
        &req.key.headers,
        meta,
        body_len.map(|n| n as usize),
        req.epoch,
    ) {
        Ok(w) => {
            // The object is visible now: the waiters read it as it grows.
            permit.stored();
            OnResponse::Store(w)
        }
        Err(_) => {
            permit.uncacheable_at(mono);
            OnResponse::Pass
        }
    }
}

/// Writes the head of a response served from the cache as an HTTP/1.1
/// response head as an origin would send it (status, stored fields, `Age`,
/// framing), for the client codec to rewrite like any upstream head.
/// Returns how the body is framed: `Some(len)` with a length, `None` chunked.
pub(crate) fn write_stored_head(
    object: &Object,
    now: SystemTime,
    allow_chunked: bool,
    part: Part,
    out: &mut crate::http::ByteBuf,
) -> Option<Option<u64>> {
    use std::fmt::Write as _;
    let meta = object.meta();
    let h = &meta.headers;
    let range = match part {
        Part::Range(r) => Some(r),
        _ => None,
    };
    if part == Part::NotModified {
        let mut ok = out.extend(b"HTTP/1.1 304 Not Modified\r\n");
        for (n, v) in &h.fields {
            if NOT_MODIFIED_FIELDS
                .iter()
                .any(|f| n.eq_ignore_ascii_case(f))
            {
                ok &= out.extend(n) && out.extend(b": ") && out.extend(v) && out.extend(b"\r\n");
            }
        }
        ok &= write!(out, "Age: {}\r\n\r\n", meta.age_header(now)).is_ok();
        return ok.then_some(Some(0));
    }
    // No body by definition (RFC 9110 §6.4.1): no framing field either.
    let bodiless = matches!(h.status, 204 | 304) || (100..200).contains(&h.status);
    let known = if let Some(r) = range {
        Some(r.len())
    } else if object.is_complete() {
        Some(object.body_len() as u64)
    } else {
        h.get("content-length")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let status = if range.is_some() { 206 } else { h.status };
    let mut ok = write!(out, "HTTP/1.1 {} {}\r\n", status, reason(status)).is_ok();
    if let Some(r) = range {
        ok &= write!(
            out,
            "Content-Range: bytes {}-{}/{}\r\n",
            r.first, r.last, r.total
        )
        .is_ok();
    }
    for (n, v) in &h.fields {
        if n.eq_ignore_ascii_case(b"content-length")
            || (range.is_some() && n.eq_ignore_ascii_case(b"content-range"))
        {
            continue;
        }
        ok &= out.extend(n) && out.extend(b": ") && out.extend(v) && out.extend(b"\r\n");
    }
    ok &= write!(out, "Age: {}\r\n", meta.age_header(now)).is_ok();
    ok &= match known {
        _ if bodiless => true,
        Some(n) => write!(out, "Content-Length: {n}\r\n").is_ok(),
        None if allow_chunked => out.extend(b"Transfer-Encoding: chunked\r\n"),
        None => true,
    };
    ok &= out.extend(b"\r\n");
    ok.then_some(known)
}

/// Whether a writer's object should get no more of the body: it left the
/// store and its readers lag by more than an object's size (`Full`), or
/// none is left (`Detached`).
pub(crate) fn stop_feeding(w: &ObjectWriter) -> bool {
    matches!(
        w.status(),
        ferrogate_cache::Append::Full | ferrogate_cache::Append::Detached
    )
}

/// Request fields the cache's own fetches never forward: it needs a full
/// response to store, or a 304 for its own validators.
pub(crate) fn is_client_validator(name: &str) -> bool {
    name.eq_ignore_ascii_case("if-none-match") || name.eq_ignore_ascii_case("if-modified-since")
}

/// Adds fields to an upstream request head before its blank line;
/// `host_at` (where a missing Host goes) moves with the blank line.
pub(crate) fn add_request_fields<'f>(
    out: &mut crate::http::ByteBuf,
    host_at: Option<&mut usize>,
    fields: impl Iterator<Item = (&'static str, &'f bytes::Bytes)>,
) -> bool {
    let len = out.len();
    out.truncate(len - 2);
    let mut ok = true;
    for (n, v) in fields {
        ok &= out.extend(n.as_bytes()) && out.extend(b": ") && out.extend(v) && out.extend(b"\r\n");
    }
    ok &= out.extend(b"\r\n");
    if let Some(at) = host_at {
        *at = out.len() - 2;
    }
    ok
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        308 => "Permanent Redirect",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        414 => "URI Too Long",
        501 => "Not Implemented",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges_are_one_satisfiable_range_or_none() {
        let r = |s: &str, n| ByteRange::parse(s.as_bytes(), n).map(|r| (r.first, r.last));
        assert_eq!(r("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(r("bytes=90-", 100), Some((90, 99)));
        assert_eq!(r("bytes=-10", 100), Some((90, 99)));
        assert_eq!(r("bytes=-1000", 100), Some((0, 99)));
        assert_eq!(r("bytes=50-1000", 100), Some((50, 99)));
        assert_eq!(r("BYTES = 1-2", 100), Some((1, 2)));
        for bad in [
            "bytes=100-",
            "bytes=5-4",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=-0",
            "bytes=a-b",
            "bytes=-",
            "bytes=+1-2",
        ] {
            assert_eq!(r(bad, 100), None, "{bad}");
        }
        assert_eq!(r("bytes=0-9", 0), None);
        let mut s = BodySlice::new(ByteRange::parse(b"bytes=3-7", 20));
        assert_eq!(&s.cut(bytes::Bytes::from_static(b"0123"))[..], b"3");
        assert_eq!(&s.cut(bytes::Bytes::from_static(b"456789"))[..], b"4567");
        assert!(s.done());
        assert!(s.cut(bytes::Bytes::from_static(b"abc")).is_empty());
    }

    #[test]
    fn purge_url_drops_default_port_and_lowercases_host() {
        assert_eq!(
            split_url("http://Example.COM:80/a?b").unwrap(),
            ("http", "example.com".to_string(), &b"/a?b"[..])
        );
        assert_eq!(
            split_url("https://h:8443/").unwrap(),
            ("https", "h:8443".to_string(), &b"/"[..])
        );
        assert!(split_url("ftp://h/").is_err());
        assert!(split_url("http://h").is_err());
        assert!(split_url("http://u@h/").is_err());
    }
}
