//! A request's way through the cache before the origin: bypass, serve
//! (whole, a range, 304), wait for another request's fetch, or fetch.

use std::sync::Arc;

use ferrogate_cache::policy::RequestDecision;
use std::time::SystemTime;

use ferrogate_cache::{
    Acquired, CacheControl, CacheKey, CacheMeta, CacheStatus, HeaderView, Hit, KeyParts, Object,
    StoredHeaders, WaitTicket,
};

use super::*;
use crate::net::Instant;

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
    /// Stale within `stale-while-revalidate`: served stale at once, and
    /// the request (holding the key's lock) revalidates in the background,
    /// with no client waiting (`crate::revalidation`).
    Background(Arc<Object>, Box<CacheReq>),
}

impl Lookup {
    /// Whether the client's own validators stay home: the cache may store
    /// what comes back (it needs a full response), or adds validators of
    /// its own (two sets would select neither).
    pub fn strips_client_validators(&self) -> bool {
        match self {
            Lookup::Fetch(r) | Lookup::Wait(r, _) => r.may_store() || r.stale.is_some(),
            // Its head goes upstream in the background with our validators.
            Lookup::Background(..) => true,
            _ => false,
        }
    }
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
    /// The listener forwards a verified client identity: the origin may
    /// answer per client, so nothing is shared.
    pub identity: bool,
}

/// Methods whose success invalidates what is stored for their target
/// (RFC 9111 §4.4); other methods go upstream untouched.
fn invalidates(method: &str) -> bool {
    matches!(method, "POST" | "PUT" | "PATCH" | "DELETE")
}

/// Request fields that reach the origin as sent, are not in the key, and
/// that origins commonly honour (host and scheme overrides, URL and
/// method overrides, preconditions): a response shaped by one must not
/// be stored for everyone (cache poisoning, CPDoS), so such requests go
/// upstream untouched.
const UNKEYED_OVERRIDES: [&str; 15] = [
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "x-forwarded-prefix",
    "forwarded",
    "x-real-ip",
    "x-host",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "if-match",
    "if-unmodified-since",
];

/// The authority the origin will see: the request's Host field as sent
/// (HTTP/2: from `:authority`), trimmed; the key lowercases it and drops
/// a default port.
fn authority<'a>(fields: &FieldView<'a>, fallback: &'a str) -> &'a [u8] {
    fields
        .0
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .map_or(fallback.as_bytes(), |h| h.value.trim_ascii())
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
    let host = authority(&plain, req.host);
    let wall = h.anchor.wall(now);
    let owned = || OwnedKey {
        scheme,
        host: host.to_vec(),
        target: req.target.as_bytes().to_vec(),
        headers: copy_fields(&fields),
    };
    if invalidates(req.method) {
        // Upstream as is; a success invalidates the target (`on_response`).
        return Lookup::Invalidate(Box::new(CacheReq {
            route: route.clone(),
            key: owned(),
            directives: CacheControl::default(),
            validate: false,
            store: false,
            permit: None,
            stale: None,
            sent_at: wall,
            status: CacheStatus::Bypass,
            invalidate: true,
            epoch: 0,
            arrived: wall,
            lock_deadline: h.anchor.mono(now),
            disk_tried: false,
            refreshed: false,
        }));
    }
    let cloaked = !route.key().ignore_params.is_empty()
        && req
            .target
            .split_once('?')
            .is_some_and(|(_, q)| q.contains(';'));
    if req.has_body
        || req.diverted
        || req.identity
        || cloaked
        || plain.has("authorization")
        || UNKEYED_OVERRIDES.iter().any(|f| plain.has(f))
    {
        // Authorized requests go upstream untouched (RFC 9111 §3.5: a
        // shared cache serves them only what the origin marked public).
        // A `;` in a query whose parameters are partly ignored could hide
        // one from the key that the origin reads (parameter cloaking).
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
        host,
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
            arrived: wall,
            lock_deadline: None,
            disk_tried: false,
            held: None,
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
        // Upstream untouched; a disk copy is loaded for the next request
        // (not waited for: the origin answers this one's range itself).
        let mono = h.anchor.mono(now);
        if let Some(disk) = h.edge.disk()
            && !h.edge.locks.hit_for_pass(key.hash, mono)
            && disk.contains_variant(key.hash, fields)
        {
            let deadline = mono + h.edge.settings.lock_timeout;
            if let Acquired::Fetch(p) = h.edge.locks.acquire_at(key.hash, mono, deadline) {
                // A full queue hands the permit back: dropped, nothing waits.
                let _ = disk.load(key.hash, p);
            }
        }
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
    /// When the request first looked.
    arrived: SystemTime,
    /// Set once the request waited: its waits share one deadline, and a
    /// response stored since it arrived serves it.
    lock_deadline: Option<std::time::Instant>,
    /// The request asked the disk tier already.
    disk_tried: bool,
    /// The key's lock, held again after a disk load (see `Step::Loaded`).
    held: Option<FetchPermit>,
}

/// What one pass of [`decide_once`] came to.
enum Step {
    Done(Lookup),
    /// A disk load ended before the request could wait for it, and the
    /// request holds the key's lock again: look again with it (memory now
    /// holds what the disk had, if anything).
    Loaded(FetchPermit),
}

fn decide(
    h: &CacheHandle,
    route: &Arc<RouteCache>,
    key: &CacheKey<'_>,
    fields: &dyn HeaderView,
    mut d: Decide,
    owned: impl Fn() -> OwnedKey,
    now: Instant,
) -> Lookup {
    loop {
        match decide_once(h, route, key, fields, &mut d, &owned, now) {
            Step::Done(l) => return l,
            // Once: `disk_tried` keeps the next pass off the disk.
            Step::Loaded(p) => {
                d.disk_tried = true;
                d.held = Some(p);
            }
        }
    }
}

fn decide_once(
    h: &CacheHandle,
    route: &Arc<RouteCache>,
    key: &CacheKey<'_>,
    fields: &dyn HeaderView,
    d: &mut Decide,
    owned: &impl Fn() -> OwnedKey,
    now: Instant,
) -> Step {
    let held = d.held.take();
    let d = &*d;
    use ferrogate_cache::Decision;
    let edge = &h.edge;
    let wall = h.anchor.wall(now);
    let mono = h.anchor.mono(now);
    let deadline = d.lock_deadline.unwrap_or(mono + edge.settings.lock_timeout);
    let waited = d.lock_deadline.is_some();
    let arrived_secs = ferrogate_cache::meta::unix_secs(d.arrived);
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
            arrived: d.arrived,
            lock_deadline: deadline,
            disk_tried: d.disk_tried,
            refreshed: false,
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
            // Keeps the stored response: if the wait ends without a usable
            // one, its own fetch may still fall back on it.
            Acquired::Wait(t) => {
                Lookup::Wait(req(Some((hit, stale_if_error)), CacheStatus::Miss), t)
            }
        }
    };
    // stale-while-revalidate: the one request that gets the lock is served
    // stale too; its conditional request runs in the background.
    let background = |hit: Hit| -> Lookup {
        if !d.store {
            return Lookup::Serve(hit.object, CacheStatus::Stale);
        }
        match edge.locks.acquire_at(key.hash, mono, deadline) {
            Acquired::Fetch(p) => {
                let object = hit.object.clone();
                // No stale-if-error: a failing origin leaves the stale copy
                // stored, and nobody is answered from this exchange.
                let mut r = req(Some((hit, false)), CacheStatus::Stale);
                r.permit = Some(p);
                Lookup::Background(object, r)
            }
            Acquired::Wait(_) => Lookup::Serve(hit.object, CacheStatus::Stale),
        }
    };
    let only_if_cached = d.directives.only_if_cached;
    if let Some(hit) = edge.store.lookup(key, fields) {
        // The load this request held the lock for stored it: the others
        // look it up now (this request takes the lock anew if it must
        // revalidate).
        if let Some(p) = held {
            p.stored();
        }
        let light = hit.object.light_purged();
        let decision = ferrogate_cache::decide(hit.meta(), &d.directives, d.validate, light, wall);
        // After a wait: a response the origin sent (or confirmed) since
        // this request arrived is as good as its own revalidation.
        let validated_since = waited
            && hit.meta().response_time >= arrived_secs
            && matches!(
                decision,
                Decision::Revalidate { .. } | Decision::RevalidateOrServeStale { .. }
            );
        return Step::Done(match decision {
            _ if validated_since => Lookup::Serve(hit.object, CacheStatus::Hit),
            Decision::Fresh if client_has_it(fields, hit.meta()) => Lookup::NotModified(hit.object),
            Decision::Fresh => Lookup::Serve(hit.object, CacheStatus::Hit),
            // The client accepts it stale (max-stale).
            Decision::Stale => Lookup::Serve(hit.object, CacheStatus::Stale),
            Decision::GatewayTimeout => Lookup::GatewayTimeout,
            _ if only_if_cached => Lookup::GatewayTimeout,
            // Served stale; one revalidation runs in the background.
            Decision::ServeStaleWhileRevalidate => background(hit),
            // A light purge: stale only while one revalidation runs.
            Decision::RevalidateOrServeStale { stale_if_error } => {
                revalidate(hit, stale_if_error, true)
            }
            Decision::Revalidate { stale_if_error } => revalidate(hit, stale_if_error, false),
        });
    }
    if only_if_cached {
        // Memory only: waiting for a load could end in a take-over, which
        // fetches.
        return Step::Done(Lookup::GatewayTimeout);
    }
    if !d.store || edge.locks.hit_for_pass(key.hash, mono) {
        // HEAD and no-store requests never hold the lock (nothing of
        // theirs is stored for the waiters), so they do not load from disk
        // either; a key that just answered something uncacheable goes
        // upstream without coalescing.
        let mut r = req(None, CacheStatus::Miss);
        r.store = false;
        return Step::Done(Lookup::Fetch(r));
    }
    // A memory miss the disk tier may answer (asked once per request).
    let disk = edge
        .disk()
        .filter(|t| !d.disk_tried && t.contains_variant(key.hash, fields));
    let miss = |permit: Option<FetchPermit>, disk_tried: bool| {
        let mut r = req(None, CacheStatus::Miss);
        r.permit = permit;
        r.disk_tried |= disk_tried;
        r
    };
    if let Some(p) = held {
        // The disk had nothing for this request: fetch with the lock held
        // (the waiters keep waiting for this fetch).
        return Step::Done(Lookup::Fetch(miss(Some(p), true)));
    }
    let p = match edge.locks.acquire_at(key.hash, mono, deadline) {
        Acquired::Fetch(p) => p,
        Acquired::Wait(t) => return Step::Done(Lookup::Wait(miss(None, false), t)),
    };
    // A fetch may have stored and released between the miss and
    // `acquire`: look again before going upstream.
    if let Some(hit) = edge.store.lookup(key, fields)
        && ferrogate_cache::decide(
            hit.meta(),
            &d.directives,
            d.validate,
            hit.object.light_purged(),
            wall,
        ) == Decision::Fresh
    {
        p.stored();
        return Step::Done(Lookup::Serve(hit.object, CacheStatus::Hit));
    }
    let Some(disk) = disk else {
        return Step::Done(Lookup::Fetch(miss(Some(p), false)));
    };
    match disk.load(key.hash, p) {
        // Wait for the load like any waiter: `Ready` looks again,
        // `TakeOver` (the load failed) fetches.
        Ok(()) => match edge.locks.acquire_at(key.hash, mono, deadline) {
            Acquired::Wait(t) => Step::Done(Lookup::Wait(miss(None, true), t)),
            // The load already ended: look again, holding the lock.
            Acquired::Fetch(p) => Step::Loaded(p),
        },
        // A full queue hands the permit back: fetch with it.
        Err(p) => Step::Done(Lookup::Fetch(miss(Some(p), true))),
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
        arrived,
        lock_deadline,
        disk_tried,
        ..
    } = *req;
    let key = CacheKey::new(owned.parts(), route.key(), h.edge.store.hasher());
    let d = Decide {
        directives,
        validate,
        store,
        arrived,
        lock_deadline: Some(lock_deadline),
        disk_tried,
        held: None,
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
