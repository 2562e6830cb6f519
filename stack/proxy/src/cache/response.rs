//! What the cache does with the origin's response: store it, refresh a
//! stored one with a 304, stand in for an error (stale-if-error), or pass.

use std::sync::Arc;

use ferrogate_cache::policy::response_storable;
use ferrogate_cache::{CacheKey, CacheMeta, CacheStatus, HeaderView, Object, StoredHeaders};

use super::*;
use crate::net::Instant;

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
fn varies_on_proxy_field(h: &StoredHeaders, owned: impl Fn(&str) -> bool) -> bool {
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

/// Reads the origin's response head (`raw`, parsed as `resp`) for the
/// cache and decides on it (`on_response`): its fields as stored; not
/// stored when close-delimited (a body cut short looks whole), too large a
/// head, or varying on a field the proxy sets or `proxy_owned` names (the
/// listener's identity fields, a rule's removals). `None`: the head does
/// not parse here (the caller sends it on as usual).
pub(crate) fn origin_head(
    h: &CacheHandle,
    req: &mut CacheReq,
    raw: &[u8],
    resp: &crate::http::ResponseHead,
    proxy_owned: impl Fn(&str) -> bool,
    now: Instant,
) -> Option<OnResponse> {
    use crate::http::BodyFraming;
    let mut fields = Vec::new();
    crate::http::head::response_fields(raw, &mut fields)?;
    let length_framed = matches!(resp.framing, BodyFraming::Length(_));
    let status_header = h.edge.settings.status_header.as_deref();
    let (stored, fits) = stored_fields(resp.status, &fields, length_framed, status_header);
    if resp.framing == BodyFraming::UntilClose
        || !fits
        || varies_on_proxy_field(&stored, proxy_owned)
    {
        req.forbid_store();
    }
    let body_len = match resp.framing {
        BodyFraming::Length(n) => Some(n),
        BodyFraming::None => Some(0),
        BodyFraming::Chunked | BodyFraming::UntilClose => None,
    };
    Some(on_response(h, req, resp.status, &stored, body_len, now))
}

/// The failure of an exchange whose 304 selected nothing stored.
pub(crate) fn mismatch() -> crate::error::ProxyError {
    crate::error::ProxyError::BadResponse(crate::http::HeadError::Malformed(
        "304 selecting no stored response",
    ))
}

/// Statuses stored, with explicit freshness or heuristically (RFC 9110
/// §15.1's cacheable-by-default list, less 206: ranges are served from
/// whole responses).
const STORED_STATUSES: [u16; 10] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414];

/// Most fields a stored head keeps: serving adds `Age` (and a range's
/// `Content-Range`) and the head is parsed again with a fixed number of
/// slots.
const MAX_STORED_FIELDS: usize = 90;

/// The origin's response fields as the cache keeps them: no request id
/// (each hit echoes its own), no `X-Cache` of the origin's (ours is
/// added), and `Content-Length` only when it framed the body (a chunked
/// response that also names a length is chunked, RFC 9112 §6.3). `None`:
/// too many fields to store.
fn stored_fields(
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
fn on_response(
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
            // Marked stale (every variant of this key, one shard): the
            // next request revalidates.
            let key = CacheKey::new(req.key.parts(), req.route.key(), edge.store.hasher());
            edge.store.invalidate(&key);
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
            req.refreshed = true;
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
            if let Some(o) = req.take_stale_for_error(mono) {
                return OnResponse::Serve(o);
            }
        }
    }
    let Some(permit) = req.permit.take() else {
        return OnResponse::Pass;
    };
    if !STORED_STATUSES.contains(&status) {
        // An error a client provoked (412, 400, 500, …) must not be what
        // everyone gets for the response's lifetime (CPDoS), whatever its
        // Cache-Control says.
        permit.uncacheable_at(mono);
        return OnResponse::Pass;
    }
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
