//! Upstream pools (ferrogate-lb): the policy a snapshot carries for each
//! pool (balancer, health checks, passive ejection, circuit breaker, retries,
//! timeouts), the per-worker runtime state that outlives snapshots, and the
//! per-worker pool of idle upstream connections.
//!
//! - Policy is configuration and lives in [`Upstream`] (immutable, shared by
//!   every worker).
//! - State (health, ejections, breaker, retry budget, balancer cursors,
//!   in-flight counts, counters) lives in an [`UpstreamRegistry`] that each
//!   worker owns, keyed by pool name and endpoint address. On a snapshot swap
//!   the worker calls [`UpstreamRegistry::sync`]; state of pools and
//!   endpoints that still exist is carried over. After that, a pool finds its
//!   state in O(1) through `Upstream::index`.
//!
//! # Choosing an endpoint
//!
//! Every balancer picks among *usable* endpoints: actively healthy (or with
//! no active check), not passively ejected, and (for a retry) not already
//! tried. A pool whose circuit breaker is open refuses with
//! [`PickError::BreakerOpen`] (503).
//!
//! **Panic mode (fail-open).** When no endpoint is usable, a pool with
//! `fail_open` (the default) picks among *all* of its endpoints as if they
//! were healthy, and counts `panic_picks`: health checks can be wrong (a
//! broken check path, a partition between the proxy and the origins only),
//! and trying a possibly dead origin gives a 502 in the worst case, where
//! refusing gives a certain outage. With `fail_open = false` the pool refuses
//! with [`PickError::NoHealthyEndpoint`] (503). Either way the client gets an
//! answer, never a hang: a dead origin fails its connect within the connect
//! timeout.

mod balance;
mod breaker;
pub mod conn_pool;
mod health;
mod pool;
mod registry;
mod retry;
mod stats;
#[cfg(test)]
mod tests;
mod window;

use std::net::SocketAddr;
use std::time::Duration;

pub use balance::{Maglev, stable_hash};
pub use breaker::{BreakerState, CircuitBreaker};
pub use conn_pool::{ConnPool, DEFAULT_IDLE, PoolCounters, PoolKey, UpstreamConn};
pub use health::{EndpointHealth, Probe};
pub use pool::{ProxyProtocol, Upstream};
pub use registry::{EndpointState, PickError, PoolState, UpstreamRegistry};
pub use retry::{RequestBody, RetryBudget, RetryDenied, is_idempotent, may_retry};
pub use stats::{
    EndpointStats, LATENCY_BUCKETS, LatencyHistogram, PoolStats, UpstreamStats, render_classes,
    status_class,
};

/// Maglev lookup table size: a prime far above any pool's endpoint count.
pub const MAGLEV_TABLE_SIZE: usize = 65_537;

/// Most endpoints a pool may have (Maglev entries are `u16`).
pub const MAX_ENDPOINTS: usize = 4096;

/// A configured endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Relative share of traffic (>= 1).
    pub weight: u32,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, weight: 1 }
    }

    pub fn weighted(addr: SocketAddr, weight: u32) -> Self {
        Self { addr, weight }
    }
}

/// How a pool spreads requests over its usable endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Balancer {
    /// One after the other, weights ignored.
    #[default]
    RoundRobin,
    /// Smooth weighted round-robin (nginx): interleaves endpoints in
    /// proportion to their weights.
    Weighted,
    /// Fewest in-flight requests relative to weight (the caller reports
    /// starts and ends); ties rotate.
    LeastConn,
    /// Consistent hashing (weighted Maglev) on a request key.
    Hash(HashOn),
}

impl Balancer {
    pub fn is_hash(&self) -> bool {
        matches!(self, Balancer::Hash(_))
    }

    /// The name used in configuration.
    pub fn name(&self) -> &'static str {
        match self {
            Balancer::RoundRobin => "round_robin",
            Balancer::Weighted => "weighted",
            Balancer::LeastConn => "least_conn",
            Balancer::Hash(_) => "hash",
        }
    }
}

/// The key of the consistent-hash balancer. A request without the header or
/// cookie hashes on its source address instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// `header:X-User` (first occurrence, trimmed).
    Header(String),
    /// `cookie:sid`.
    Cookie(String),
    /// `source`: the client's IP address.
    Source,
}

impl HashOn {
    /// Parses `header:NAME`, `cookie:NAME` or `source`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let token = |n: &str| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        match s.split_once(':') {
            None if s == "source" => Ok(HashOn::Source),
            Some(("header", n)) if token(n) => Ok(HashOn::Header(n.to_string())),
            Some(("cookie", n)) if token(n) => Ok(HashOn::Cookie(n.to_string())),
            _ => Err(format!(
                "{s:?} is not `header:NAME`, `cookie:NAME` or `source`"
            )),
        }
    }

    /// The request's key hash (no allocation).
    pub fn key(&self, req: &ferrogate_http::RequestView<'_>, client: std::net::IpAddr) -> u64 {
        let value = match self {
            HashOn::Header(n) => req.header(n),
            HashOn::Cookie(n) => req.cookie(n),
            HashOn::Source => None,
        };
        match value {
            Some(v) => stable_hash(v, 0),
            None => match client {
                std::net::IpAddr::V4(a) => stable_hash(&a.octets(), 0),
                std::net::IpAddr::V6(a) => stable_hash(&a.octets(), 0),
            },
        }
    }
}

/// Active health checking: the proxy sends the probes the pool's state
/// schedules (see [`PoolState::next_due`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub interval: Duration,
    /// A probe without an answer within this time failed.
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy endpoint healthy.
    pub rise: u32,
    /// Consecutive failures that make a healthy endpoint unhealthy.
    pub fall: u32,
    /// Inclusive status range a passing HTTP check returns.
    pub expect_status: (u16, u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// A connect that completes passes.
    Tcp,
    /// `GET path` answered with a status in `expect_status` passes.
    Http {
        path: String,
        /// `Host` header of the probe (the endpoint's address when empty).
        host: String,
    },
}

impl HealthCheck {
    pub fn status_ok(&self, status: u16) -> bool {
        (self.expect_status.0..=self.expect_status.1).contains(&status)
    }

    /// The probe request an HTTP check sends to `endpoint` (built when a probe
    /// is sent, every few seconds, not per request).
    pub fn request(&self, endpoint: SocketAddr) -> Option<Vec<u8>> {
        match &self.kind {
            CheckKind::Tcp => None,
            CheckKind::Http { path, host } => {
                let host = if host.is_empty() {
                    endpoint.to_string()
                } else {
                    host.clone()
                };
                Some(
                    format!(
                        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ferrogate-health\r\nConnection: close\r\n\r\n"
                    )
                    .into_bytes(),
                )
            }
        }
    }
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            kind: CheckKind::Tcp,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 3,
            expect_status: (200, 399),
        }
    }
}

/// Passive ejection: an endpoint whose requests fail `consecutive_failures`
/// times in a row is taken out of rotation for `eject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassivePolicy {
    pub consecutive_failures: u32,
    pub eject: Duration,
}

impl Default for PassivePolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            eject: Duration::from_secs(30),
        }
    }
}

/// The pool's circuit breaker: closed → open when, within `window`, at least
/// `min_requests` requests saw a failure ratio >= `failure_percent`, or
/// `consecutive_failures` (when non-zero) failed in a row; open → half-open
/// after `cooldown`; half-open lets `half_open_probes` requests through:
/// all succeed → closed, one fails → open again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    pub failure_percent: u32,
    pub min_requests: u32,
    pub consecutive_failures: u32,
    pub window: Duration,
    pub cooldown: Duration,
    pub half_open_probes: u32,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failure_percent: 50,
            min_requests: 20,
            consecutive_failures: 0,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(5),
            half_open_probes: 3,
        }
    }
}

/// Retries: at most `attempts` tries per request (the first included), and
/// over the pool, retries <= `budget_percent` % of requests in the last
/// `window`, but always at least `min_per_sec` retries per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub budget_percent: u32,
    pub min_per_sec: u32,
    pub window: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 2,
            budget_percent: 10,
            min_per_sec: 3,
            window: Duration::from_secs(10),
        }
    }
}

/// Per-pool timeouts; `None` keeps the stack's global value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UpstreamTimeouts {
    pub connect: Option<Duration>,
    /// Request sent → response head received.
    pub response: Option<Duration>,
    /// Longest silence from the origin once the response head has come
    /// (between two reads of the body): long enough for server-sent events
    /// or long polls. `None`: the stack's read timeout, else the response
    /// timeout.
    pub read: Option<Duration>,
    /// A kept-alive upstream connection idle longer is closed.
    pub idle: Option<Duration>,
}

/// Everything a pool is configured with besides its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolPolicy {
    pub balancer: Balancer,
    pub health: Option<HealthCheck>,
    pub passive: Option<PassivePolicy>,
    pub breaker: Option<BreakerPolicy>,
    pub retry: RetryPolicy,
    pub timeouts: UpstreamTimeouts,
    /// Panic mode: with no usable endpoint, pick among all of them.
    pub fail_open: bool,
    /// Idle connections kept per endpoint and worker for reuse by any
    /// client connection (0: a connection carries one exchange).
    pub keepalive: usize,
    /// Requests one upstream connection carries before it is closed (0: no
    /// limit).
    pub max_requests: u32,
}

impl Default for PoolPolicy {
    fn default() -> Self {
        Self {
            balancer: Balancer::RoundRobin,
            health: None,
            passive: None,
            breaker: None,
            retry: RetryPolicy::default(),
            timeouts: UpstreamTimeouts::default(),
            fail_open: true,
            keepalive: 64,
            max_requests: 1000,
        }
    }
}

/// Microseconds of a `std` duration, as the stack's clock counts.
pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod policy_tests {
    use super::*;

    #[test]
    fn hash_on_parses_header_cookie_and_source() {
        assert_eq!(HashOn::parse("source"), Ok(HashOn::Source));
        assert_eq!(
            HashOn::parse("header:X-User"),
            Ok(HashOn::Header("X-User".into()))
        );
        assert_eq!(
            HashOn::parse("cookie:sid"),
            Ok(HashOn::Cookie("sid".into()))
        );
        for bad in ["", "header:", "cookie", "ip", "header:a b", "Source"] {
            assert!(HashOn::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn http_check_builds_its_probe_and_judges_status() {
        let c = HealthCheck {
            kind: CheckKind::Http {
                path: "/healthz".into(),
                host: String::new(),
            },
            expect_status: (200, 299),
            ..HealthCheck::default()
        };
        let req = c.request("10.0.0.1:80".parse().unwrap()).unwrap();
        assert!(req.starts_with(b"GET /healthz HTTP/1.1\r\nHost: 10.0.0.1:80\r\n"));
        assert!(c.status_ok(204));
        assert!(!c.status_ok(301));
        assert!(
            HealthCheck::default()
                .request("10.0.0.1:80".parse().unwrap())
                .is_none()
        );
    }

    #[test]
    fn hash_key_falls_back_to_the_source_address() {
        let headers = [ferrogate_http::Header {
            name: "x-user",
            value: b"alice",
        }];
        let req = ferrogate_http::RequestView::new(
            "GET",
            None,
            "/",
            ferrogate_http::Headers::from_list(&headers),
        );
        let ip: std::net::IpAddr = "10.0.0.9".parse().unwrap();
        let by_header = HashOn::Header("X-User".into()).key(&req, ip);
        assert_eq!(by_header, stable_hash(b"alice", 0));
        let missing = HashOn::Cookie("sid".into()).key(&req, ip);
        assert_eq!(missing, HashOn::Source.key(&req, ip));
    }
}
