//! Whether a stored response may answer a request now (RFC 9111 §4.2,
//! §4.2.4 and RFC 5861's stale-while-revalidate / stale-if-error).

use std::time::SystemTime;

use crate::directives::CacheControl;
use crate::meta::CacheMeta;

/// What to do with a stored response for one request ([`evaluate`]; the
/// finer [`Decision`] of [`decide`] maps onto it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it (also a stale one the client accepts with `max-stale`).
    Fresh,
    /// Stale, but it may be served while one revalidation runs: the request
    /// that gets the lock revalidates (in the background for
    /// stale-while-revalidate; before serving its own client after a light
    /// purge is fine too), the ones that wait are served the stored one.
    ServeStaleWhileRevalidate,
    /// Revalidate (conditional request) before serving. `stale_if_error`:
    /// if that fails (5xx, connection error) the stored response may be
    /// served instead.
    Revalidate { stale_if_error: bool },
}

/// What to do with a stored response for one request, in full ([`decide`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Serve it.
    Fresh,
    /// Stale, but it may be served now while one revalidation runs in the
    /// background (stale-while-revalidate).
    ServeStaleWhileRevalidate,
    /// Revalidate (conditional request) before serving. `stale_if_error`:
    /// if that fails (5xx, connection error) the stored response may be
    /// served instead.
    Revalidate { stale_if_error: bool },
    /// Stale, and the client accepts that (`max-stale`): serve it as stale
    /// (`X-Cache: STALE`), no revalidation.
    Stale,
    /// A light purge marked it stale: it must be revalidated. Take the
    /// cache lock: with a permit, revalidate before serving (as
    /// `Revalidate`); if another request is already revalidating it (the
    /// lock says wait), serve the stored response stale now instead of
    /// waiting. So it is served stale only while one revalidation runs.
    RevalidateOrServeStale { stale_if_error: bool },
    /// `only-if-cached` and the stored response cannot be used without the
    /// origin: answer 504 (Gateway Timeout, RFC 9111 §5.2.1.7).
    GatewayTimeout,
}

impl From<Decision> for Verdict {
    fn from(d: Decision) -> Verdict {
        match d {
            Decision::Fresh | Decision::Stale => Verdict::Fresh,
            Decision::ServeStaleWhileRevalidate | Decision::RevalidateOrServeStale { .. } => {
                Verdict::ServeStaleWhileRevalidate
            }
            Decision::Revalidate { stale_if_error } => Verdict::Revalidate { stale_if_error },
            // The caller checks only-if-cached itself with `Verdict`.
            Decision::GatewayTimeout => Verdict::Revalidate {
                stale_if_error: false,
            },
        }
    }
}

/// What to do on a miss (nothing usable stored for the request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissVerdict {
    /// Fetch from upstream.
    Fetch,
    /// `only-if-cached`: answer 504 (RFC 9111 §5.2.1.7).
    GatewayTimeout,
}

/// A miss for a request with directives `req`.
pub fn on_miss(req: &CacheControl) -> MissVerdict {
    if req.only_if_cached {
        MissVerdict::GatewayTimeout
    } else {
        MissVerdict::Fetch
    }
}

/// Judges a stored response for a request: [`decide`], coarser. A
/// light-purged object is `ServeStaleWhileRevalidate` (the lock holder
/// revalidates before serving, waiters are served stale) or `Revalidate`;
/// a `max-stale` hit is `Fresh`; with `only-if-cached` anything but
/// `Fresh` / `ServeStaleWhileRevalidate` means 504.
pub fn evaluate(
    meta: &CacheMeta,
    req: &CacheControl,
    validate: bool,
    light_purged: bool,
    now: SystemTime,
) -> Verdict {
    decide(meta, req, validate, light_purged, now).into()
}

/// Judges a stored response for a request.
///
/// * `req`: the request's directives (after the route's
///   `ignore_request_no_cache`); `validate`: the request asked for
///   validation (`no-cache` or `Pragma: no-cache`).
/// * `light_purged`: a light purge marked the object stale. Such an object
///   is never `Fresh`; it is `RevalidateOrServeStale`, or `Revalidate` when
///   the origin forbids serving stale or the request's `max-age` /
///   `min-fresh` asks for a fresh one.
pub fn decide(
    meta: &CacheMeta,
    req: &CacheControl,
    validate: bool,
    light_purged: bool,
    now: SystemTime,
) -> Decision {
    let age = meta.current_age(now);
    let lifetime = meta.freshness_lifetime;
    let d = meta.directives;
    let staleness = age.saturating_sub(lifetime);
    // Serving stale is forbidden by must-/proxy-revalidate and no-cache (§4.2.4).
    let may_serve_stale = !d.revalidate_when_stale && !d.no_cache;
    let within = |window: Option<u32>| window.is_some_and(|w| staleness <= u64::from(w));
    let stale_if_error =
        may_serve_stale && (within(d.stale_if_error) || within(req.stale_if_error));
    // only-if-cached: the origin may not be asked (§5.2.1.7).
    let revalidate = |stale_if_error| {
        if req.only_if_cached {
            Decision::GatewayTimeout
        } else {
            Decision::Revalidate { stale_if_error }
        }
    };
    // The client takes a stale response (max-stale), unless it asked for a
    // minimum age or freshness too.
    let client_takes_stale = |staleness: u64| {
        may_serve_stale
            && req.min_fresh.is_none()
            && req.max_age.is_none()
            && match req.max_stale {
                Some(None) => true,
                Some(Some(s)) => staleness <= u64::from(s),
                None => false,
            }
    };

    if d.no_cache || validate {
        return revalidate(stale_if_error);
    }
    if light_purged {
        // Known stale whatever its age: one request revalidates, the others
        // are served what is stored meanwhile (unless the origin forbade
        // stale or the client asked for a fresh response).
        if req.only_if_cached {
            return if client_takes_stale(staleness) {
                Decision::Stale
            } else {
                Decision::GatewayTimeout
            };
        }
        return if may_serve_stale && req.max_age.is_none() && req.min_fresh.is_none() {
            Decision::RevalidateOrServeStale { stale_if_error }
        } else {
            Decision::Revalidate { stale_if_error }
        };
    }
    let mut fresh = lifetime > age;
    if let Some(max_age) = req.max_age {
        fresh &= age <= u64::from(max_age);
    }
    if let Some(min_fresh) = req.min_fresh {
        fresh &= lifetime.saturating_sub(age) >= u64::from(min_fresh);
    }
    if fresh {
        return Decision::Fresh;
    }
    if lifetime <= age && client_takes_stale(staleness) {
        return Decision::Stale;
    }
    if lifetime <= age && may_serve_stale && within(d.stale_while_revalidate) {
        return Decision::ServeStaleWhileRevalidate;
    }
    revalidate(stale_if_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::tests::{T0, at, date};
    use crate::policy::CachePolicyConfig;

    fn meta(cc: &str) -> CacheMeta {
        let d = date(T0);
        CacheMeta::new(
            200,
            &[("Date", d.as_str()), ("Cache-Control", cc)],
            at(T0),
            at(T0),
            &CachePolicyConfig::default(),
        )
    }

    fn req(cc: &str) -> CacheControl {
        CacheControl::parse(&[("Cache-Control", cc)])
    }

    const NO: fn() -> CacheControl = CacheControl::default;

    #[test]
    fn fresh_then_stale() {
        let m = meta("max-age=60");
        assert_eq!(
            decide(&m, &NO(), false, false, at(T0 + 59)),
            Decision::Fresh
        );
        assert_eq!(
            decide(&m, &NO(), false, false, at(T0 + 60)),
            Decision::Revalidate {
                stale_if_error: false
            }
        );
    }

    #[test]
    fn stale_while_revalidate_window() {
        let m = meta("max-age=60, stale-while-revalidate=30");
        assert_eq!(
            decide(&m, &NO(), false, false, at(T0 + 60)),
            Decision::ServeStaleWhileRevalidate
        );
        assert_eq!(
            decide(&m, &NO(), false, false, at(T0 + 90)),
            Decision::ServeStaleWhileRevalidate
        );
        assert_eq!(
            decide(&m, &NO(), false, false, at(T0 + 91)),
            Decision::Revalidate {
                stale_if_error: false
            }
        );
    }

    #[test]
    fn stale_if_error_window_response_and_request() {
        let m = meta("max-age=60, stale-if-error=100");
        assert_eq!(
            decide(&m, &NO(), false, false, at(T0 + 160)),
            Decision::Revalidate {
                stale_if_error: true
            }
        );
        assert_eq!(
            decide(&m, &NO(), false, false, at(T0 + 161)),
            Decision::Revalidate {
                stale_if_error: false
            }
        );
        let m = meta("max-age=60");
        assert_eq!(
            decide(&m, &req("stale-if-error=10"), false, false, at(T0 + 65)),
            Decision::Revalidate {
                stale_if_error: true
            }
        );
    }

    #[test]
    fn must_revalidate_and_no_cache_forbid_stale() {
        for cc in [
            "max-age=60, stale-while-revalidate=30, stale-if-error=30, must-revalidate",
            "max-age=60, stale-while-revalidate=30, stale-if-error=30, proxy-revalidate",
        ] {
            let m = meta(cc);
            assert_eq!(
                decide(&m, &NO(), false, false, at(T0 + 61)),
                Decision::Revalidate {
                    stale_if_error: false
                },
                "{cc}"
            );
            assert_eq!(
                decide(&m, &req("max-stale"), false, false, at(T0 + 61)),
                Decision::Revalidate {
                    stale_if_error: false
                },
                "{cc}"
            );
            assert_eq!(
                decide(&m, &NO(), false, true, at(T0 + 1)),
                Decision::Revalidate {
                    stale_if_error: false
                },
                "{cc} light purge"
            );
        }
        let m = meta("s-maxage=60, stale-while-revalidate=30, stale-if-error=30");
        assert_eq!(
            decide(&m, &NO(), false, false, at(T0 + 61)),
            Decision::Revalidate {
                stale_if_error: false
            },
            "s-maxage implies proxy-revalidate"
        );
        let m = meta("no-cache, max-age=60, stale-if-error=60");
        assert_eq!(
            decide(&m, &NO(), false, false, at(T0)),
            Decision::Revalidate {
                stale_if_error: false
            }
        );
        let m = meta("no-cache=\"set-cookie\", max-age=60");
        assert_eq!(
            decide(&m, &NO(), false, false, at(T0)),
            Decision::Revalidate {
                stale_if_error: false
            },
            "qualified no-cache"
        );
        let ign = CacheMeta::new(
            200,
            &[("Cache-Control", "no-cache, max-age=60")],
            at(T0),
            at(T0),
            &CachePolicyConfig {
                ignore_response_no_cache: true,
                ..Default::default()
            },
        );
        assert_eq!(decide(&ign, &NO(), false, false, at(T0)), Decision::Fresh);
    }

    #[test]
    fn request_directives() {
        let m = meta("max-age=60, stale-if-error=600");
        assert_eq!(
            decide(&m, &NO(), true, false, at(T0)),
            Decision::Revalidate {
                stale_if_error: true
            },
            "client no-cache: still fresh, a failed revalidation may fall back"
        );
        assert_eq!(
            decide(&meta("max-age=60"), &NO(), true, false, at(T0)),
            Decision::Revalidate {
                stale_if_error: false
            }
        );
        assert_eq!(
            decide(&m, &NO(), true, false, at(T0 + 70)),
            Decision::Revalidate {
                stale_if_error: true
            }
        );
        assert_eq!(
            decide(&m, &req("max-age=10"), false, false, at(T0 + 10)),
            Decision::Fresh
        );
        assert_eq!(
            decide(&m, &req("max-age=10"), false, false, at(T0 + 11)),
            Decision::Revalidate {
                stale_if_error: true
            }
        );
        assert_eq!(
            decide(&m, &req("min-fresh=20"), false, false, at(T0 + 40)),
            Decision::Fresh
        );
        assert_eq!(
            decide(&m, &req("min-fresh=20"), false, false, at(T0 + 41)),
            Decision::Revalidate {
                stale_if_error: true
            }
        );
        assert_eq!(
            decide(&m, &req("max-stale=5"), false, false, at(T0 + 65)),
            Decision::Stale
        );
        assert_eq!(
            decide(&m, &req("max-stale=5"), false, false, at(T0 + 66)),
            Decision::Revalidate {
                stale_if_error: true
            }
        );
        assert_eq!(
            decide(&m, &req("max-stale"), false, false, at(T0 + 100_000)),
            Decision::Stale,
            "review #15: served stale, not reported fresh"
        );
    }

    /// Review #3: a light-purged object is revalidated (served stale only
    /// while another request's revalidation runs), never `Fresh`, and the
    /// request's max-age / min-fresh are honoured.
    #[test]
    fn light_purge_revalidates_serving_stale_only_meanwhile() {
        let m = meta("max-age=3600, stale-if-error=60");
        assert_eq!(
            decide(&m, &NO(), false, true, at(T0 + 1)),
            Decision::RevalidateOrServeStale {
                stale_if_error: true
            }
        );
        for r in ["max-age=100", "min-fresh=5", "max-age=0, max-stale"] {
            assert_eq!(
                decide(&m, &req(r), false, true, at(T0 + 1)),
                Decision::Revalidate {
                    stale_if_error: true
                },
                "{r}"
            );
        }
        assert_eq!(
            decide(&m, &req("max-stale"), false, true, at(T0 + 1)),
            Decision::RevalidateOrServeStale {
                stale_if_error: true
            },
            "max-stale does not skip the revalidation a purge asked for"
        );
        assert_eq!(
            decide(&m, &req("only-if-cached"), false, true, at(T0 + 1)),
            Decision::GatewayTimeout
        );
        assert_eq!(
            decide(
                &m,
                &req("only-if-cached, max-stale"),
                false,
                true,
                at(T0 + 1)
            ),
            Decision::Stale
        );
        let strict = meta("max-age=3600, must-revalidate");
        assert_eq!(
            decide(
                &strict,
                &req("only-if-cached, max-stale"),
                false,
                true,
                at(T0 + 1)
            ),
            Decision::GatewayTimeout
        );
    }

    /// `evaluate` keeps its coarse verdicts.
    #[test]
    fn evaluate_maps_decisions() {
        let m = meta("max-age=60");
        assert_eq!(
            evaluate(&m, &req("max-stale"), false, false, at(T0 + 100)),
            Verdict::Fresh
        );
        assert_eq!(
            evaluate(&m, &NO(), false, true, at(T0 + 1)),
            Verdict::ServeStaleWhileRevalidate
        );
        assert_eq!(
            evaluate(&m, &req("max-age=5"), false, true, at(T0 + 1)),
            Verdict::Revalidate {
                stale_if_error: false
            },
            "a light purge honours the request's max-age"
        );
        assert_eq!(
            evaluate(&m, &req("only-if-cached"), false, false, at(T0 + 100)),
            Verdict::Revalidate {
                stale_if_error: false
            }
        );
    }

    /// Review #11: only-if-cached never goes to the origin: 504 when the
    /// stored response is not usable as is, or nothing is stored.
    #[test]
    fn only_if_cached_gives_gateway_timeout() {
        let m = meta("max-age=60, stale-while-revalidate=30");
        let oic = req("only-if-cached");
        assert_eq!(decide(&m, &oic, false, false, at(T0 + 1)), Decision::Fresh);
        assert_eq!(
            decide(&m, &oic, false, false, at(T0 + 70)),
            Decision::ServeStaleWhileRevalidate
        );
        assert_eq!(
            decide(&m, &oic, false, false, at(T0 + 100)),
            Decision::GatewayTimeout
        );
        assert_eq!(
            decide(
                &m,
                &req("only-if-cached, max-stale"),
                false,
                false,
                at(T0 + 100)
            ),
            Decision::Stale
        );
        assert_eq!(
            decide(&m, &oic, true, false, at(T0 + 1)),
            Decision::GatewayTimeout
        );
        assert_eq!(on_miss(&oic), MissVerdict::GatewayTimeout);
        assert_eq!(on_miss(&NO()), MissVerdict::Fetch);
    }

    proptest::proptest! {
        /// Time only moves a response away from fresh: once not `Fresh`, it
        /// never becomes `Fresh` again; and it is fresh exactly while the
        /// lifetime exceeds the age.
        #[test]
        fn verdict_is_monotonic_in_time(max_age in 0u32..1000, swr in proptest::option::of(0u32..500), sie in proptest::option::of(0u32..500), t in 0u64..3000) {
            let mut cc = format!("max-age={max_age}");
            if let Some(w) = swr { cc += &format!(", stale-while-revalidate={w}"); }
            if let Some(e) = sie { cc += &format!(", stale-if-error={e}"); }
            let m = meta(&cc);
            let now = decide(&m, &NO(), false, false, at(T0 + t));
            let later = decide(&m, &NO(), false, false, at(T0 + t + 1));
            proptest::prop_assert_eq!(now == Decision::Fresh, t < u64::from(max_age));
            if now != Decision::Fresh { proptest::prop_assert_ne!(later, Decision::Fresh); }
            if now == Decision::ServeStaleWhileRevalidate { proptest::prop_assert!(t <= u64::from(max_age + swr.unwrap())); }
        }
    }
}
