//! L7 rate limits as the proxy applies them: which bucket a request takes
//! from (its key), who is exempt, the 429 it gets when over, and the
//! escalation of a source to the XDP deny set. The buckets themselves are
//! `ferrogate-limits`' shared table.

use std::net::IpAddr;
use std::sync::Arc;

use crate::route::DirectResponse;
use crate::rules::Cidr;
use ferrogate_limits::{Decision, EscalateSpec, Escalation, LimitSpec, Quota};

/// What a limit counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client's address, cut to a prefix (`/32` and `/128`: one bucket
    /// per address).
    Source { prefix4: u8, prefix6: u8 },
    /// A request header's value (the first one); a request without it is
    /// not counted by this limit.
    Header(String),
    /// The route the request took (requests without a route share one).
    Route,
    /// One bucket for every request the limit sees.
    Global,
    /// The verified JWT's `sub`, per provider (listeners with `jwt`); a request without
    /// one is not counted by this limit.
    JwtSubject,
}

/// Retry-After values answered from a prepared response: a wait is at
/// most one interval (T), so `1..=ceil(T)` seconds covers every 429 of a
/// limit down to one an hour (the slowest rate a limit may have).
const PREPARED_RETRY_AFTER_MAX: u64 = 3600;

/// A rate limit applied at L7 (`[[limits]]` with `enforce = "l7"`).
#[derive(Debug)]
pub struct Limit {
    pub name: Arc<str>,
    /// Slot of its per-worker counters ([`crate::route_stats`]): its
    /// position in [`crate::RouteTable::limits`].
    pub id: usize,
    pub spec: LimitSpec,
    pub key: LimitKey,
    /// Never limited nor escalated.
    pub exempt: Vec<Cidr>,
    /// Push sources that exceed the limit by a factor into the XDP deny
    /// set (source keys only).
    pub escalate: Option<EscalateSpec>,
    /// 429 answers with `Retry-After: 1..=ceil(T)` seconds.
    answers: Vec<Arc<DirectResponse>>,
}

impl Limit {
    pub fn new(name: &str, id: usize, spec: LimitSpec, key: LimitKey) -> Self {
        let longest = spec
            .interval_ns
            .div_ceil(1_000_000_000)
            .clamp(1, PREPARED_RETRY_AFTER_MAX);
        let answers = (1..=longest).map(too_many_requests).collect();
        Self {
            name: name.into(),
            id,
            spec,
            key,
            exempt: Vec::new(),
            escalate: None,
            answers,
        }
    }

    pub fn with_exempt(mut self, exempt: Vec<Cidr>) -> Self {
        self.exempt = exempt;
        self
    }

    pub fn with_escalation(mut self, e: EscalateSpec) -> Self {
        self.escalate = Some(e);
        self
    }

    /// The 429 for a wait of `wait_ns` (whole seconds, rounded up, at
    /// least 1: a client that retries after it finds a token).
    pub fn answer(&self, wait_ns: u64) -> Arc<DirectResponse> {
        let secs = wait_ns.div_ceil(1_000_000_000).max(1);
        match self.answers.get(secs as usize - 1) {
            Some(a) => a.clone(),
            None => too_many_requests(secs),
        }
    }
}

fn too_many_requests(retry_after: u64) -> Arc<DirectResponse> {
    Arc::new(DirectResponse {
        status: 429,
        content_type: "text/plain".into(),
        body: b"Too Many Requests\n".to_vec(),
        location: None,
        retry_after: Some(retry_after),
        www_authenticate: None,
    })
}

/// What a request got from one limit.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Exempt, or no key (a header limit without the header).
    NotCounted,
    Allowed,
    Limited(Arc<DirectResponse>),
}

/// The request facts a key is made of.
pub struct KeyInput<'a> {
    pub client: IpAddr,
    pub header: &'a dyn Fn(&str) -> Option<&'a [u8]>,
    pub route: &'a str,
    /// The verified bearer token's subject, if any, with the name of the
    /// provider that verified it: one issuer's `alice` is not another's
    /// (a limit shared by routes of different providers).
    pub jwt_sub: Option<(&'a str, &'a str)>,
}

/// Takes one request from `limit`'s bucket for this request's key; pushes
/// an escalation when the source completed its streak. `escalated` is set
/// when it did (for the counters).
pub fn check(
    limit: &Limit,
    quota: &Quota,
    input: &KeyInput<'_>,
    now_ns: u64,
    escalated: &mut bool,
) -> Verdict {
    if limit.exempt.iter().any(|c| c.contains(input.client)) {
        return Verdict::NotCounted;
    }
    let mut addr = [0u8; 16];
    let key = match &limit.key {
        LimitKey::Source { prefix4, prefix6 } => {
            let n = masked(input.client, *prefix4, *prefix6, &mut addr);
            quota.key(&limit.name, &[&addr[..n]])
        }
        LimitKey::Header(name) => match (input.header)(name) {
            Some(v) => quota.key(&limit.name, &[v]),
            None => return Verdict::NotCounted,
        },
        LimitKey::Route => quota.key(&limit.name, &[input.route.as_bytes()]),
        LimitKey::Global => quota.key(&limit.name, &[]),
        LimitKey::JwtSubject => match input.jwt_sub {
            // Both hashed into the key (length-prefixed): no allocation.
            Some((provider, sub)) => quota.key(&limit.name, &[provider.as_bytes(), sub.as_bytes()]),
            None => return Verdict::NotCounted,
        },
    };
    let out = quota.take(key, &limit.spec, limit.escalate.as_ref(), now_ns);
    if let (Some(offered), Some(e), LimitKey::Source { .. }) =
        (out.escalate, &limit.escalate, &limit.key)
    {
        // The queue is bounded and counts what it drops; the source
        // escalates again after its next streak.
        *escalated = quota.escalations().push(Escalation {
            source: input.client,
            limit: limit.name.clone(),
            ttl: e.ttl,
            offered_per_second: offered,
        });
    }
    match out.decision {
        Decision::Allowed => Verdict::Allowed,
        Decision::Limited { retry_after_ns } => Verdict::Limited(limit.answer(retry_after_ns)),
    }
}

/// `ip` cut to its prefix, as bytes into `out`; returns how many.
fn masked(ip: IpAddr, prefix4: u8, prefix6: u8, out: &mut [u8; 16]) -> usize {
    match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix4)).unwrap_or(0);
            out[..4].copy_from_slice(&(u32::from(a) & mask).to_be_bytes());
            out[4] = prefix4;
            5
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix6)).unwrap_or(0);
            out.copy_from_slice(&(u128::from(a) & mask).to_be_bytes());
            // The prefix length is not needed to tell v6 keys apart (16
            // bytes never equal a v4 key's 5).
            16
        }
    }
}

#[cfg(test)]
impl PartialEq for Verdict {
    fn eq(&self, o: &Self) -> bool {
        match (self, o) {
            (Self::NotCounted, Self::NotCounted) | (Self::Allowed, Self::Allowed) => true,
            (Self::Limited(a), Self::Limited(b)) => a.retry_after == b.retry_after,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn input(client: &str) -> KeyInput<'static> {
        KeyInput {
            client: client.parse().unwrap(),
            header: &|_| None,
            route: "r",
            jwt_sub: None,
        }
    }

    fn source_limit(prefix4: u8) -> Limit {
        Limit::new(
            "per-client",
            0,
            LimitSpec::per_second(1.0, 2).unwrap(),
            LimitKey::Source {
                prefix4,
                prefix6: 64,
            },
        )
    }

    #[test]
    fn over_the_burst_gets_429_with_retry_after() {
        let (l, q, mut e) = (source_limit(32), Quota::default(), false);
        for _ in 0..2 {
            assert_eq!(
                check(&l, &q, &input("192.0.2.1"), SEC, &mut e),
                Verdict::Allowed
            );
        }
        let Verdict::Limited(r) = check(&l, &q, &input("192.0.2.1"), SEC, &mut e) else {
            panic!("third request over the burst");
        };
        assert_eq!((r.status, r.retry_after), (429, Some(1)));
        assert_eq!(
            check(&l, &q, &input("192.0.2.2"), SEC, &mut e),
            Verdict::Allowed,
            "another address has its own bucket"
        );
    }

    #[test]
    fn a_prefix_key_shares_one_bucket_across_the_prefix() {
        let (l, q, mut e) = (source_limit(24), Quota::default(), false);
        check(&l, &q, &input("192.0.2.1"), SEC, &mut e);
        check(&l, &q, &input("192.0.2.2"), SEC, &mut e);
        assert!(matches!(
            check(&l, &q, &input("192.0.2.3"), SEC, &mut e),
            Verdict::Limited(_)
        ));
        assert_eq!(
            check(&l, &q, &input("192.0.3.1"), SEC, &mut e),
            Verdict::Allowed
        );
    }

    #[test]
    fn exempt_sources_are_never_counted_nor_escalated() {
        let l = source_limit(32)
            .with_exempt(vec![Cidr::new("10.0.0.0".parse().unwrap(), 8).unwrap()])
            .with_escalation(EscalateSpec {
                over_per_second: 2,
                windows: 1,
                ttl: std::time::Duration::from_secs(9),
            });
        let (q, mut e) = (Quota::default(), false);
        for s in 1..5 {
            for _ in 0..10 {
                assert_eq!(
                    check(&l, &q, &input("10.1.2.3"), s * SEC, &mut e),
                    Verdict::NotCounted
                );
            }
        }
        assert!(!e && q.escalations().pop().is_none());
    }

    #[test]
    fn a_source_over_the_factor_is_escalated_with_its_address() {
        let l = source_limit(24).with_escalation(EscalateSpec {
            over_per_second: 5,
            windows: 2,
            ttl: std::time::Duration::from_secs(9),
        });
        let (q, mut e) = (Quota::default(), false);
        for s in 1..=3 {
            for i in 0..6 {
                check(&l, &q, &input("192.0.2.77"), s * SEC + i, &mut e);
            }
        }
        assert!(e);
        let got = q.escalations().pop().expect("escalated");
        assert_eq!(got.source, "192.0.2.77".parse::<IpAddr>().unwrap());
        assert_eq!((&*got.limit, got.offered_per_second), ("per-client", 6));
    }

    #[test]
    fn a_header_key_skips_requests_without_the_header() {
        let l = Limit::new(
            "per-key",
            0,
            LimitSpec::per_second(1.0, 1).unwrap(),
            LimitKey::Header("x-api-key".into()),
        );
        let (q, mut e) = (Quota::default(), false);
        let with = KeyInput {
            client: "192.0.2.1".parse().unwrap(),
            header: &|n| (n == "x-api-key").then_some(&b"k1"[..]),
            route: "",
            jwt_sub: None,
        };
        assert_eq!(
            check(&l, &q, &input("192.0.2.1"), SEC, &mut e),
            Verdict::NotCounted
        );
        assert_eq!(check(&l, &q, &with, SEC, &mut e), Verdict::Allowed);
        assert!(matches!(
            check(&l, &q, &with, SEC, &mut e),
            Verdict::Limited(_)
        ));
    }

    #[test]
    fn a_subject_key_is_per_provider() {
        let l = Limit::new(
            "per-sub",
            0,
            LimitSpec::per_second(1.0, 1).unwrap(),
            LimitKey::JwtSubject,
        );
        let (q, mut e) = (Quota::default(), false);
        let by = |provider: &'static str, sub: &'static str| KeyInput {
            jwt_sub: Some((provider, sub)),
            ..input("192.0.2.1")
        };
        assert_eq!(
            check(&l, &q, &by("a", "alice"), SEC, &mut e),
            Verdict::Allowed
        );
        assert!(matches!(
            check(&l, &q, &by("a", "alice"), SEC, &mut e),
            Verdict::Limited(_)
        ));
        // Issuer B's alice is someone else.
        assert_eq!(
            check(&l, &q, &by("b", "alice"), SEC, &mut e),
            Verdict::Allowed
        );
        // Length-prefixed parts: ("ab", "c") is not ("a", "bc").
        assert_eq!(check(&l, &q, &by("ab", "c"), SEC, &mut e), Verdict::Allowed);
        assert_eq!(check(&l, &q, &by("a", "bc"), SEC, &mut e), Verdict::Allowed);
    }

    #[test]
    fn long_waits_round_up_to_whole_seconds() {
        let l = Limit::new(
            "slow",
            0,
            LimitSpec::per_second(1.0 / 120.0, 1).unwrap(),
            LimitKey::Global,
        );
        assert_eq!(l.answer(1).retry_after, Some(1));
        assert_eq!(l.answer(SEC + 1).retry_after, Some(2));
        assert_eq!(l.answer(119 * SEC + 5).retry_after, Some(120));
    }
}
