//! What may be served from the cache and what a shared cache may store
//! (RFC 9111 §3, §3.5, §4), with a route's overrides.

use crate::directives::{CacheControl, pragma_no_cache};
use crate::headers::{HeaderView, list_items};

/// Statuses a cache may store and give a heuristic lifetime to without
/// explicit freshness (RFC 9110 §15.1: "heuristically cacheable").
pub const HEURISTIC_STATUSES: &[u16] =
    &[200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// A route's cache policy. `Default` is plain RFC 9111 for a shared cache,
/// except `store_set_cookie` (see there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachePolicyConfig {
    /// Replaces the freshness lifetime of every storable response (seconds).
    /// Responses that may not be stored (no-store, private, ...) still are
    /// not, and it makes no other status storable.
    pub ttl_override: Option<u32>,
    /// Lower bound of a stored response's freshness lifetime (seconds).
    pub min_ttl: u32,
    /// Upper bound of a stored response's freshness lifetime (seconds).
    pub max_ttl: Option<u32>,
    /// The heuristic lifetime is this percentage of Date − Last-Modified
    /// (RFC 9111 §4.2.2 suggests 10 %); 0 turns heuristics off.
    pub heuristic_percent: u8,
    /// Cap of a heuristic lifetime (seconds).
    pub heuristic_max: u32,
    /// Treat a response's `no-cache` as absent (the origin over-asks).
    pub ignore_response_no_cache: bool,
    /// Treat a client's `no-cache`/`max-age=0`/`Pragma: no-cache` as absent,
    /// so clients cannot force trips to the origin.
    pub ignore_request_no_cache: bool,
    /// Store responses that carry `Set-Cookie`. RFC 9111 allows it; off by
    /// default because an edge cache that stores one user's cookie hands it
    /// to everyone.
    pub store_set_cookie: bool,
}

impl Default for CachePolicyConfig {
    fn default() -> Self {
        CachePolicyConfig {
            ttl_override: None,
            min_ttl: 0,
            max_ttl: None,
            heuristic_percent: 10,
            heuristic_max: 24 * 3600,
            ignore_response_no_cache: false,
            ignore_request_no_cache: false,
            store_set_cookie: false,
        }
    }
}

/// What the cache may do for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestDecision {
    /// Look the request up. `store` false: `no-store` asked that nothing of
    /// this exchange be stored, or it is a HEAD or Range request (their
    /// answers are not stored); then a miss must not take the cache lock
    /// ([`RequestDecision::takes_lock`]). `validate`: a stored response must be
    /// revalidated before use (`no-cache`, `Pragma: no-cache`).
    Lookup {
        store: bool,
        validate: bool,
        directives: CacheControl,
    },
    /// Not for the cache: go upstream, store nothing.
    Bypass(BypassReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BypassReason {
    Method,
}

/// Whether a request may be answered from the cache (methods GET and HEAD;
/// HEAD is served from a stored GET).
pub fn request_decision(
    method: &str,
    h: &(impl HeaderView + ?Sized),
    cfg: &CachePolicyConfig,
) -> RequestDecision {
    if method != "GET" && method != "HEAD" {
        return RequestDecision::Bypass(BypassReason::Method);
    }
    let mut cc = CacheControl::parse(h);
    let mut validate = cc.no_cache || pragma_no_cache(h, &cc);
    if cfg.ignore_request_no_cache {
        validate = false;
        cc.no_cache = false;
        cc.max_age = None;
    }
    RequestDecision::Lookup {
        // A Range request is answered 206 upstream, which is not stored.
        store: !cc.no_store && method == "GET" && !h.has("range"),
        validate,
        directives: cc,
    }
}

impl RequestDecision {
    /// Whether a miss for this request takes the cache lock: only a request
    /// that may store the response. HEAD, `no-store` and Range requests
    /// never do — others would wait for a fetch that stores nothing.
    pub fn takes_lock(&self) -> bool {
        matches!(self, RequestDecision::Lookup { store: true, .. })
    }
}

/// Why a response is not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotStorable {
    Method,
    Status,
    NoStore,
    Private,
    /// A request with `Authorization` and no public/s-maxage/must-revalidate (§3.5).
    Authorization,
    /// `Vary: *`.
    VaryStar,
    SetCookie,
    /// No explicit freshness and a status that is not heuristically cacheable.
    NoFreshness,
}

/// Whether a shared cache may store this response to this request (RFC 9111 §3).
pub fn response_storable(
    method: &str,
    req: &(impl HeaderView + ?Sized),
    status: u16,
    resp: &(impl HeaderView + ?Sized),
    cfg: &CachePolicyConfig,
) -> Result<(), NotStorable> {
    if method != "GET" {
        return Err(NotStorable::Method);
    }
    // 206 would need range merging; 304 is merged, never stored; 1xx is not final.
    if !(200..600).contains(&status) || status == 206 || status == 304 {
        return Err(NotStorable::Status);
    }
    let req_cc = CacheControl::parse(req);
    let cc = CacheControl::parse(resp);
    if req_cc.no_store || cc.no_store {
        return Err(NotStorable::NoStore);
    }
    if cc.private {
        return Err(NotStorable::Private);
    }
    if req.has("authorization") && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
        return Err(NotStorable::Authorization);
    }
    if vary_star(resp) {
        return Err(NotStorable::VaryStar);
    }
    if !cfg.store_set_cookie && resp.has("set-cookie") {
        return Err(NotStorable::SetCookie);
    }
    let explicit =
        cc.max_age.is_some() || cc.s_maxage.is_some() || resp.has("expires") || cc.public;
    let heuristic = HEURISTIC_STATUSES.contains(&status);
    if explicit || heuristic {
        Ok(())
    } else {
        Err(NotStorable::NoFreshness)
    }
}

/// Whether a `Vary` field lists `*`.
pub fn vary_star(resp: &(impl HeaderView + ?Sized)) -> bool {
    let mut star = false;
    resp.for_each_value("vary", &mut |v| star |= list_items(v).any(|t| t == b"*"));
    star
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: [(&str, &str); 0] = [];

    fn storable(
        req: &[(&str, &str)],
        status: u16,
        resp: &[(&str, &str)],
    ) -> Result<(), NotStorable> {
        response_storable("GET", req, status, resp, &CachePolicyConfig::default())
    }

    #[test]
    fn methods() {
        let c = CachePolicyConfig::default();
        assert!(matches!(
            request_decision("GET", &NONE, &c),
            RequestDecision::Lookup {
                store: true,
                validate: false,
                ..
            }
        ));
        assert!(matches!(
            request_decision("HEAD", &NONE, &c),
            RequestDecision::Lookup { store: false, .. }
        ));
        for m in ["POST", "PUT", "DELETE", "OPTIONS", "get"] {
            assert_eq!(
                request_decision(m, &NONE, &c),
                RequestDecision::Bypass(BypassReason::Method)
            );
        }
        assert_eq!(
            response_storable("HEAD", &NONE, 200, &[("Cache-Control", "max-age=5")], &c),
            Err(NotStorable::Method)
        );
    }

    #[test]
    fn request_no_cache_no_store_pragma() {
        let c = CachePolicyConfig::default();
        let d = |h: &[(&str, &str)]| request_decision("GET", h, &c);
        assert!(matches!(
            d(&[("Cache-Control", "no-cache")]),
            RequestDecision::Lookup { validate: true, .. }
        ));
        assert!(matches!(
            d(&[("Pragma", "no-cache")]),
            RequestDecision::Lookup { validate: true, .. }
        ));
        assert!(matches!(
            d(&[("Pragma", "no-cache"), ("Cache-Control", "max-stale")]),
            RequestDecision::Lookup {
                validate: false,
                ..
            }
        ));
        assert!(matches!(
            d(&[("Cache-Control", "no-store")]),
            RequestDecision::Lookup {
                store: false,
                validate: false,
                ..
            }
        ));
        let ign = CachePolicyConfig {
            ignore_request_no_cache: true,
            ..Default::default()
        };
        assert!(matches!(
            request_decision("GET", &[("Cache-Control", "no-cache, max-age=0")], &ign),
            RequestDecision::Lookup {
                validate: false,
                directives: CacheControl { max_age: None, .. },
                ..
            }
        ));
    }

    /// Review #5: HEAD, no-store and Range requests do not take the lock.
    #[test]
    fn only_requests_that_may_store_take_the_lock() {
        let c = CachePolicyConfig::default();
        assert!(request_decision("GET", &NONE, &c).takes_lock());
        assert!(!request_decision("HEAD", &NONE, &c).takes_lock());
        assert!(!request_decision("GET", &[("Cache-Control", "no-store")], &c).takes_lock());
        let range = request_decision("GET", &[("Range", "bytes=0-9")], &c);
        assert!(!range.takes_lock());
        assert!(matches!(
            range,
            RequestDecision::Lookup { store: false, .. }
        ));
        assert!(!request_decision("POST", &NONE, &c).takes_lock());
    }

    #[test]
    fn statuses() {
        for s in HEURISTIC_STATUSES.iter().copied().filter(|&s| s != 206) {
            assert_eq!(storable(&NONE, s, &NONE), Ok(()), "{s}");
        }
        for s in [201, 202, 302, 303, 307, 400, 403, 500, 502, 503] {
            assert_eq!(
                storable(&NONE, s, &NONE),
                Err(NotStorable::NoFreshness),
                "{s}"
            );
            assert_eq!(
                storable(&NONE, s, &[("Cache-Control", "max-age=5")]),
                Ok(()),
                "{s}"
            );
            assert_eq!(
                storable(&NONE, s, &[("Expires", "garbage")]),
                Ok(()),
                "{s}: invalid Expires is explicit (and expired)"
            );
        }
        for s in [100, 101, 206, 304] {
            assert_eq!(
                storable(&NONE, s, &[("Cache-Control", "max-age=5")]),
                Err(NotStorable::Status),
                "{s}"
            );
        }
    }

    #[test]
    fn directives_forbid() {
        assert_eq!(
            storable(&NONE, 200, &[("Cache-Control", "max-age=5, no-store")]),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            storable(&[("Cache-Control", "no-store")], 200, &NONE),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            storable(&NONE, 200, &[("Cache-Control", "private, max-age=5")]),
            Err(NotStorable::Private)
        );
        assert_eq!(
            storable(&NONE, 200, &[("Cache-Control", "private=\"x\"")]),
            Err(NotStorable::Private)
        );
        assert_eq!(
            storable(&NONE, 200, &[("Cache-Control", "no-cache")]),
            Ok(()),
            "no-cache stores, revalidates"
        );
        assert_eq!(
            storable(&NONE, 200, &[("Vary", "Accept, *")]),
            Err(NotStorable::VaryStar)
        );
        assert_eq!(storable(&NONE, 200, &[("Vary", "Accept")]), Ok(()));
        assert_eq!(
            storable(&NONE, 200, &[("Set-Cookie", "a=1")]),
            Err(NotStorable::SetCookie)
        );
        let c = CachePolicyConfig {
            store_set_cookie: true,
            ..Default::default()
        };
        assert_eq!(
            response_storable("GET", &NONE, 200, &[("Set-Cookie", "a=1")], &c),
            Ok(())
        );
    }

    #[test]
    fn authorization_rules() {
        let auth = [("Authorization", "Bearer x")];
        assert_eq!(
            storable(&auth, 200, &[("Cache-Control", "max-age=60")]),
            Err(NotStorable::Authorization)
        );
        assert_eq!(storable(&auth, 200, &NONE), Err(NotStorable::Authorization));
        for ok in ["public", "s-maxage=60", "must-revalidate, max-age=5"] {
            assert_eq!(
                storable(&auth, 200, &[("Cache-Control", ok)]),
                Ok(()),
                "{ok}"
            );
        }
        assert_eq!(
            storable(
                &auth,
                200,
                &[("Cache-Control", "proxy-revalidate, max-age=5")]
            ),
            Err(NotStorable::Authorization)
        );
    }
}
