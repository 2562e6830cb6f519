//! A stored response's metadata: headers, the exchange's times, and what
//! RFC 9111 §4.2 derives from them once at store time (freshness lifetime,
//! corrected initial age), so a hit only does arithmetic.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::directives::{CacheControl, DELTA_MAX};
use crate::headers::{HeaderView, StoredHeaders, list_items};
use crate::policy::{CachePolicyConfig, HEURISTIC_STATUSES};

/// Seconds since the Unix epoch (times before it count as 0).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Parses an HTTP-date (IMF-fixdate, RFC 850, asctime) into Unix seconds.
pub fn parse_http_date(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?;
    httpdate::parse_http_date(s.trim()).ok().map(unix_secs)
}

/// The response directives a hit decision needs, copied out of the parsed set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoredDirectives {
    /// `no-cache` (qualified or not) and not ignored by the route.
    pub no_cache: bool,
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage`: never served stale.
    pub revalidate_when_stale: bool,
    pub stale_while_revalidate: Option<u32>,
    pub stale_if_error: Option<u32>,
}

/// Everything the cache keeps about a stored response except its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheMeta {
    pub headers: StoredHeaders,
    /// When the request that produced the response was sent (Unix seconds).
    pub request_time: u64,
    /// When the response was received (Unix seconds).
    pub response_time: u64,
    /// RFC 9111 §4.2.3 `corrected_initial_age`.
    pub corrected_initial_age: u64,
    /// RFC 9111 §4.2.1 freshness lifetime after the route's overrides.
    pub freshness_lifetime: u64,
    pub directives: StoredDirectives,
    /// The `Vary` field names, lowercased, sorted, deduplicated (empty: no Vary).
    pub vary: Vec<Bytes>,
}

impl CacheMeta {
    /// Builds the metadata of a response the policy said is storable.
    pub fn new(
        status: u16,
        resp: &(impl HeaderView + ?Sized),
        request_time: SystemTime,
        response_time: SystemTime,
        cfg: &CachePolicyConfig,
    ) -> Self {
        let headers = StoredHeaders::from_response(status, resp);
        let age_value = age_value(resp);
        Self::from_stored(
            headers,
            age_value,
            unix_secs(request_time),
            unix_secs(response_time),
            cfg,
        )
    }

    /// Builds metadata from already stored headers (also the 304 merge path).
    pub fn from_stored(
        headers: StoredHeaders,
        age_value: u64,
        request_time: u64,
        response_time: u64,
        cfg: &CachePolicyConfig,
    ) -> Self {
        let cc = CacheControl::parse(&headers);
        let date = headers.get("date").and_then(|d| parse_http_date(d));
        // §4.2.3, with a missing Date taken as the response time (§6.6.1 of RFC 9110).
        let date_value = date.unwrap_or(response_time);
        let response_time = response_time.max(request_time);
        let apparent_age = response_time.saturating_sub(date_value);
        let response_delay = response_time - request_time;
        let corrected_age_value = age_value.saturating_add(response_delay);
        let corrected_initial_age = apparent_age.max(corrected_age_value);
        let freshness_lifetime = lifetime(&headers, &cc, date_value, cfg);
        let mut vary: Vec<Bytes> = Vec::new();
        headers.for_each_value("vary", &mut |v| {
            for t in list_items(v) {
                vary.push(Bytes::from(t.to_ascii_lowercase()));
            }
        });
        vary.sort();
        vary.dedup();
        CacheMeta {
            directives: StoredDirectives {
                no_cache: cc.no_cache && !cfg.ignore_response_no_cache,
                // s-maxage implies proxy-revalidate (RFC 9111 §5.2.2.10).
                revalidate_when_stale: cc.revalidate_when_stale() || cc.s_maxage.is_some(),
                stale_while_revalidate: cc.stale_while_revalidate,
                stale_if_error: cc.stale_if_error,
            },
            headers,
            request_time,
            response_time,
            corrected_initial_age,
            freshness_lifetime,
            vary,
        }
    }

    /// RFC 9111 §4.2.3 `current_age` at `now`.
    pub fn current_age(&self, now: SystemTime) -> u64 {
        let resident = unix_secs(now).saturating_sub(self.response_time);
        self.corrected_initial_age.saturating_add(resident)
    }

    /// Whether the stored response is fresh at `now` (§4.2).
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        self.freshness_lifetime > self.current_age(now)
    }

    /// The `Age` value to send with a hit (capped as §1.2.2 asks).
    pub fn age_header(&self, now: SystemTime) -> u64 {
        self.current_age(now).min(u64::from(DELTA_MAX))
    }

    /// Whether storing it can ever save a fetch: it has a freshness
    /// lifetime (and no `no-cache`), or a validator to revalidate with.
    pub fn worth_storing(&self) -> bool {
        (self.freshness_lifetime > 0 && !self.directives.no_cache)
            || self.headers.get("etag").is_some()
            || self.headers.get("last-modified").is_some()
    }

    /// Bytes counted against the store's budget for the metadata.
    pub fn weight(&self) -> usize {
        self.headers.weight() + self.vary.iter().map(|v| v.len() + 8).sum::<usize>() + 96
    }
}

/// The `Age` field's value (§5.1): a non-negative integer; invalid or absent is 0;
/// several lines or a comma list (a singleton field sent as a list by a
/// broken hop) take the first valid element; at most 2^31 (§1.2.2).
pub fn age_value(h: &(impl HeaderView + ?Sized)) -> u64 {
    let mut out = None;
    h.for_each_value("age", &mut |v| {
        for v in list_items(v) {
            if out.is_none() && v.iter().all(u8::is_ascii_digit) {
                out = Some(
                    std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(u64::MAX)
                        .min(u64::from(DELTA_MAX)),
                );
            }
        }
    });
    out.unwrap_or(0)
}

/// RFC 9111 §4.2.1 freshness lifetime for a shared cache, then §4.2.2
/// heuristics, then the route's override and bounds.
fn lifetime(h: &StoredHeaders, cc: &CacheControl, date: u64, cfg: &CachePolicyConfig) -> u64 {
    let explicit = if let Some(s) = cc.s_maxage {
        Some(u64::from(s))
    } else if let Some(m) = cc.max_age {
        Some(u64::from(m))
    } else if h.count("expires") > 0 {
        // Several Expires lines or an invalid date: already expired (§5.3).
        match (
            h.count("expires"),
            h.get("expires").and_then(|e| parse_http_date(e)),
        ) {
            (1, Some(exp)) => Some(exp.saturating_sub(date)),
            _ => Some(0),
        }
    } else {
        None
    };
    let base = explicit.unwrap_or_else(|| {
        let heuristic_ok = HEURISTIC_STATUSES.contains(&h.status) || cc.public;
        match h.get("last-modified").and_then(|lm| parse_http_date(lm)) {
            Some(lm) if heuristic_ok && cfg.heuristic_percent > 0 => {
                (date.saturating_sub(lm) * u64::from(cfg.heuristic_percent) / 100)
                    .min(u64::from(cfg.heuristic_max))
            }
            _ => 0,
        }
    });
    let ttl = cfg.ttl_override.map_or(base, u64::from);
    let ttl = ttl.max(u64::from(cfg.min_ttl));
    cfg.max_ttl.map_or(ttl, |m| ttl.min(u64::from(m)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    pub(crate) const T0: u64 = 1_700_000_000;

    pub(crate) fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    pub(crate) fn date(s: u64) -> String {
        httpdate::fmt_http_date(at(s))
    }

    fn meta(h: &[(&str, &str)], req: u64, resp: u64) -> CacheMeta {
        CacheMeta::new(200, h, at(req), at(resp), &CachePolicyConfig::default())
    }

    #[test]
    fn http_date_forms() {
        // RFC 9110 §5.6.7's three forms of the same instant.
        let want = Some(784_111_777);
        assert_eq!(parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT"), want);
        assert_eq!(parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT"), want);
        assert_eq!(parse_http_date(b"Sun Nov  6 08:49:37 1994"), want);
        assert_eq!(parse_http_date(b"yesterday"), None);
        assert_eq!(parse_http_date(b"0"), None);
    }

    #[test]
    fn lifetime_precedence() {
        let d = date(T0);
        let e = date(T0 + 500);
        let lm = date(T0 - 10_000);
        let all = [
            ("Date", d.as_str()),
            ("Cache-Control", "max-age=100, s-maxage=50"),
            ("Expires", e.as_str()),
            ("Last-Modified", lm.as_str()),
        ];
        assert_eq!(meta(&all, T0, T0).freshness_lifetime, 50, "s-maxage first");
        assert_eq!(
            meta(
                &[all[0], ("Cache-Control", "max-age=100"), all[2], all[3]],
                T0,
                T0
            )
            .freshness_lifetime,
            100,
            "then max-age"
        );
        assert_eq!(
            meta(&[all[0], all[2], all[3]], T0, T0).freshness_lifetime,
            500,
            "then Expires - Date"
        );
        assert_eq!(
            meta(&[all[0], all[3]], T0, T0).freshness_lifetime,
            1000,
            "then 10 % of Date - Last-Modified"
        );
        assert_eq!(meta(&[all[0]], T0, T0).freshness_lifetime, 0, "nothing: 0");
    }

    #[test]
    fn expires_edge_cases() {
        let d = date(T0);
        assert_eq!(
            meta(&[("Date", &d), ("Expires", "0")], T0, T0).freshness_lifetime,
            0
        );
        assert_eq!(
            meta(&[("Date", &d), ("Expires", &date(T0 - 60))], T0, T0).freshness_lifetime,
            0
        );
        let e = date(T0 + 60);
        assert_eq!(
            meta(&[("Date", &d), ("Expires", &e), ("Expires", &e)], T0, T0).freshness_lifetime,
            0,
            "two Expires: stale"
        );
        // No Date: Expires is measured from the response time.
        assert_eq!(meta(&[("Expires", &e)], T0 - 5, T0).freshness_lifetime, 60);
    }

    #[test]
    fn heuristic_needs_status_or_public_and_is_capped() {
        let d = date(T0);
        let lm = date(T0 - 10 * 86_400 * 10);
        let c = CachePolicyConfig::default();
        let m = CacheMeta::new(
            200,
            &[("Date", d.as_str()), ("Last-Modified", lm.as_str())],
            at(T0),
            at(T0),
            &c,
        );
        assert_eq!(m.freshness_lifetime, 86_400, "capped at heuristic_max");
        let lm = date(T0 - 1000);
        let h = [("Date", d.as_str()), ("Last-Modified", lm.as_str())];
        assert_eq!(
            CacheMeta::new(302, &h, at(T0), at(T0), &c).freshness_lifetime,
            0
        );
        let hp = [h[0], h[1], ("Cache-Control", "public")];
        assert_eq!(
            CacheMeta::new(302, &hp, at(T0), at(T0), &c).freshness_lifetime,
            100
        );
        let off = CachePolicyConfig {
            heuristic_percent: 0,
            ..c.clone()
        };
        assert_eq!(
            CacheMeta::new(200, &h, at(T0), at(T0), &off).freshness_lifetime,
            0
        );
        let lm_future = date(T0 + 1000);
        assert_eq!(
            CacheMeta::new(
                200,
                &[h[0], ("Last-Modified", lm_future.as_str())],
                at(T0),
                at(T0),
                &c
            )
            .freshness_lifetime,
            0
        );
    }

    #[test]
    fn overrides_and_bounds() {
        let h = [("Cache-Control", "max-age=100")];
        let m =
            |c: CachePolicyConfig| CacheMeta::new(200, &h, at(T0), at(T0), &c).freshness_lifetime;
        assert_eq!(
            m(CachePolicyConfig {
                ttl_override: Some(7),
                ..Default::default()
            }),
            7
        );
        assert_eq!(
            m(CachePolicyConfig {
                min_ttl: 300,
                ..Default::default()
            }),
            300
        );
        assert_eq!(
            m(CachePolicyConfig {
                max_ttl: Some(30),
                ..Default::default()
            }),
            30
        );
        assert_eq!(
            m(CachePolicyConfig {
                ttl_override: Some(1000),
                max_ttl: Some(30),
                ..Default::default()
            }),
            30
        );
    }

    #[test]
    fn age_arithmetic_rfc9111_4_2_3() {
        // Request sent at T0, response (Date T0+2, Age 10) received at T0+4.
        let d = date(T0 + 2);
        let m = meta(
            &[("Date", &d), ("Age", "10"), ("Cache-Control", "max-age=60")],
            T0,
            T0 + 4,
        );
        // apparent_age = 4 - 2 = 2; corrected_age_value = 10 + 4 = 14; initial = 14.
        assert_eq!(m.corrected_initial_age, 14);
        assert_eq!(m.current_age(at(T0 + 4)), 14);
        assert_eq!(m.current_age(at(T0 + 50)), 60);
        assert!(m.is_fresh(at(T0 + 49)));
        assert!(!m.is_fresh(at(T0 + 50)), "fresh means lifetime > age");
        // A Date far in the past dominates a small Age (clock skew upstream).
        let d = date(T0 - 100);
        assert_eq!(
            meta(&[("Date", &d), ("Age", "1")], T0, T0).corrected_initial_age,
            100
        );
        // A Date in the future gives apparent age 0, not negative.
        let d = date(T0 + 100);
        assert_eq!(meta(&[("Date", &d)], T0, T0).corrected_initial_age, 0);
        // Age is not stored (the cache sends its own).
        assert!(m.headers.get("age").is_none());
        assert_eq!(m.age_header(at(T0 + 4)), 14);
    }

    #[test]
    fn age_field_parsing() {
        assert_eq!(age_value(&[("Age", " 42 ")]), 42);
        assert_eq!(age_value(&[("Age", "-1"), ("Age", "7")]), 7);
        assert_eq!(age_value(&[("Age", "1e3")]), 0);
        assert_eq!(
            age_value(&[("Age", "99999999999999999999999")]),
            u64::from(DELTA_MAX)
        );
        // Review #15: capped at 2^31 even when it fits a u64; comma lists.
        assert_eq!(age_value(&[("Age", "99999999999")]), u64::from(DELTA_MAX));
        assert_eq!(age_value(&[("Age", "5, 9")]), 5);
        assert_eq!(age_value(&[("Age", "x, 9")]), 9);
    }

    #[test]
    fn vary_names_normalised() {
        let m = meta(
            &[
                ("Vary", "Accept-Encoding, accept"),
                ("vary", "ACCEPT-encoding"),
            ],
            T0,
            T0,
        );
        assert_eq!(
            m.vary,
            [
                Bytes::from_static(b"accept"),
                Bytes::from_static(b"accept-encoding")
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn age_is_monotonic_and_never_below_initial(req in 0u64..1000, delay in 0u64..100, skew in 0u64..200, agev in 0u64..500, later in 0u64..10_000) {
            let d = date(T0 + skew);
            let a = agev.to_string();
            let m = meta(&[("Date", d.as_str()), ("Age", a.as_str())], T0 + req, T0 + req + delay);
            let now = T0 + req + delay + later;
            proptest::prop_assert!(m.current_age(at(now)) >= agev + delay);
            proptest::prop_assert_eq!(m.current_age(at(now + 1)), m.current_age(at(now)) + 1);
        }
    }
}
