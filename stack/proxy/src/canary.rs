//! A route's canary: a share of its requests (random, or sticky by a
//! header or cookie) goes to another pool; a safety brake compares the two
//! arms over fixed windows and, when the canary's 5xx ratio or p99 latency
//! is worse than the baseline's by a configured margin, sends it nothing
//! until the next apply (the state lives in the snapshot: an apply makes a
//! fresh one). Workers share the state through atomics: recording a
//! response is a few relaxed increments; one worker closes each window.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::lb::Upstream;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Latency buckets: `[2^i, 2^(i+1))` µs, the last open-ended (~8.4 s):
/// p99 is known to a factor of two (a `max_p99_ratio` under 2 would trip
/// on a bucket edge, so the config refuses it).
const BUCKETS: usize = 24;

/// What keeps a user on one arm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CohortKey {
    Header(String),
    Cookie(String),
}

/// When the brake trips: over one window, with at least `min_requests`
/// on each arm, the canary's 5xx ratio exceeds the baseline's by more
/// than `max_5xx_delta`, or its p99 is more than `max_p99_ratio` times
/// the baseline's.
#[derive(Debug, Clone, PartialEq)]
pub struct Brake {
    pub max_5xx_delta: f64,
    pub max_p99_ratio: Option<f64>,
    pub window_us: u64,
    pub min_requests: u64,
}

#[derive(Debug, Default)]
struct Arm {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

/// One window's figures of an arm, taken (and reset) when it closes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ArmWindow {
    pub requests: u64,
    pub errors: u64,
    /// Upper bound of the bucket holding the 99th percentile, µs.
    pub p99_us: u64,
}

impl ArmWindow {
    pub fn error_ratio(&self) -> f64 {
        self.errors as f64 / self.requests.max(1) as f64
    }
}

impl Arm {
    fn record(&self, status: u16, latency_us: u64) {
        self.requests.fetch_add(1, Relaxed);
        // 499: the client gave up waiting (a hanging arm).
        if (500..600).contains(&status) || status == 499 {
            self.errors.fetch_add(1, Relaxed);
        }
        let b = (64 - latency_us.max(1).leading_zeros() as usize - 1).min(BUCKETS - 1);
        self.latency[b].fetch_add(1, Relaxed);
    }

    fn take(&self) -> ArmWindow {
        let requests = self.requests.swap(0, Relaxed);
        let errors = self.errors.swap(0, Relaxed);
        let counts: Vec<u64> = self.latency.iter().map(|b| b.swap(0, Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let rank = total - total / 100; // the 99th percentile's rank
        let mut seen = 0;
        let mut p99_us = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank.max(1) {
                p99_us = 1u64 << (i + 1);
                break;
            }
        }
        ArmWindow {
            requests,
            errors,
            p99_us,
        }
    }
}

/// Why the brake tripped, with the window's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trip {
    pub reason: &'static str,
    pub canary: ArmWindow,
    pub baseline: ArmWindow,
}

/// A route's canary and its brake's state.
#[derive(Debug)]
pub struct Canary {
    /// The route it splits (for the trip's log line).
    pub route: String,
    pub pool: Arc<Upstream>,
    /// Requests in 10,000 that go to `pool`.
    pub per_10k: u32,
    pub key: Option<CohortKey>,
    pub brake: Option<Brake>,
    tripped: AtomicBool,
    window_start_us: AtomicU64,
    /// [baseline, canary].
    arms: [Arm; 2],
}

impl Canary {
    pub fn new(
        route: &str,
        pool: Arc<Upstream>,
        per_10k: u32,
        key: Option<CohortKey>,
        brake: Option<Brake>,
    ) -> Self {
        Self {
            route: route.into(),
            pool,
            per_10k: per_10k.min(10_000),
            key,
            brake,
            tripped: AtomicBool::new(false),
            window_start_us: AtomicU64::new(u64::MAX),
            arms: Default::default(),
        }
    }

    /// The brake tripped: the canary gets nothing until the next apply.
    pub fn tripped(&self) -> bool {
        self.tripped.load(Relaxed)
    }

    /// Whether a request goes to the canary: by the cohort key's value
    /// when the route has one and the request carries it (the same value
    /// always lands on the same arm, in every worker and after restarts),
    /// else by `random`.
    pub fn choose(&self, key_value: Option<&[u8]>, random: u64) -> bool {
        if self.tripped() || self.per_10k == 0 {
            return false;
        }
        let point = match key_value {
            // FNV-1a over the route's name and the value: a fixed
            // algorithm (the same arm in every build and process), salted
            // per route (not the same users in every canary).
            Some(v) => fnv1a(fnv1a(FNV_OFFSET, self.route.as_bytes()) ^ 0xff, v) >> 11,
            None => random.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 17,
        };
        (point % 10_000) < u64::from(self.per_10k)
    }

    /// Records a response of either arm; closes the window when it is
    /// over (one caller does) and returns the trip if the brake tripped.
    pub fn record(&self, canary: bool, status: u16, latency_us: u64, now_us: u64) -> Option<Trip> {
        // Nothing reads the arms without a live brake: no shared writes.
        let brake = self.brake.as_ref()?;
        if self.tripped() {
            return None;
        }
        self.arms[usize::from(canary)].record(status, latency_us);
        let start = self.window_start_us.load(Relaxed);
        if start == u64::MAX {
            let _ = self
                .window_start_us
                .compare_exchange(u64::MAX, now_us, Relaxed, Relaxed);
            return None;
        }
        if now_us.saturating_sub(start) < brake.window_us
            || self
                .window_start_us
                .compare_exchange(start, now_us, Relaxed, Relaxed)
                .is_err()
        {
            return None;
        }
        let baseline = self.arms[0].take();
        let canary = self.arms[1].take();
        let trip = judge(brake, canary, baseline)?;
        if self.tripped.swap(true, Relaxed) {
            return None;
        }
        Some(trip)
    }
}

/// The brake's decision on one window.
pub fn judge(brake: &Brake, canary: ArmWindow, baseline: ArmWindow) -> Option<Trip> {
    if canary.requests < brake.min_requests || baseline.requests < brake.min_requests {
        return None;
    }
    let trip = |reason| {
        Some(Trip {
            reason,
            canary,
            baseline,
        })
    };
    if canary.error_ratio() - baseline.error_ratio() > brake.max_5xx_delta {
        return trip("5xx");
    }
    if let Some(r) = brake.max_p99_ratio
        && canary.p99_us as f64 > baseline.p99_us as f64 * r
    {
        return trip("p99");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::PoolPolicy;

    fn canary(per_10k: u32, brake: Option<Brake>) -> Canary {
        let pool = Arc::new(Upstream::new("c", 0, &[], PoolPolicy::default()));
        Canary::new("r", pool, per_10k, None, brake)
    }

    fn brake() -> Brake {
        Brake {
            max_5xx_delta: 0.05,
            max_p99_ratio: Some(2.0),
            window_us: 1_000_000,
            min_requests: 20,
        }
    }

    #[test]
    fn the_split_follows_the_percentage_and_a_key_is_sticky() {
        let c = canary(1_000, None);
        let n = (0..100_000u64).filter(|&i| c.choose(None, i)).count();
        assert!((9_000..11_000).contains(&n), "{n}");
        let users: Vec<String> = (0..2_000).map(|i| format!("user-{i}")).collect();
        let first: Vec<bool> = users
            .iter()
            .map(|u| c.choose(Some(u.as_bytes()), 1))
            .collect();
        let again: Vec<bool> = users
            .iter()
            .map(|u| c.choose(Some(u.as_bytes()), 2))
            .collect();
        assert_eq!(first, again, "the same user, the same arm");
        let share = first.iter().filter(|x| **x).count();
        assert!((100..300).contains(&share), "{share}");
        assert!(!canary(0, None).choose(None, 5));
    }

    #[test]
    fn a_canary_with_more_5xx_trips_the_brake_once_and_gets_nothing_after() {
        let c = canary(5_000, Some(brake()));
        let mut trips = Vec::new();
        for i in 0..200u64 {
            let now = i * 20_000; // 50 a second: four windows
            let arm = i % 2 == 1;
            let status = if arm && i % 4 == 1 { 502 } else { 200 };
            if let Some(t) = c.record(arm, status, 1_000, now) {
                trips.push(t);
            }
        }
        assert_eq!(trips.len(), 1, "{trips:?}");
        assert_eq!(trips[0].reason, "5xx");
        assert!(c.tripped() && !c.choose(None, 0) && !c.choose(Some(b"x"), 0));
    }

    #[test]
    fn a_slow_canary_trips_on_p99_and_a_healthy_one_never() {
        let slow = canary(5_000, Some(brake()));
        let healthy = canary(5_000, Some(brake()));
        let (mut s, mut h) = (None, None);
        for i in 0..200u64 {
            let arm = i % 2 == 1;
            s = s.or(slow.record(arm, 200, if arm { 50_000 } else { 2_000 }, i * 20_000));
            h = h.or(healthy.record(arm, 200, 2_000 + i, i * 20_000));
        }
        assert_eq!(s.map(|t| t.reason), Some("p99"));
        assert_eq!(h, None);
    }

    #[test]
    fn too_few_requests_never_trip() {
        let b = brake();
        let bad = ArmWindow {
            requests: 19,
            errors: 19,
            p99_us: 1 << 20,
        };
        let good = ArmWindow {
            requests: 500,
            errors: 0,
            p99_us: 1 << 10,
        };
        assert_eq!(judge(&b, bad, good), None);
        assert!(
            judge(
                &b,
                ArmWindow {
                    requests: 20,
                    ..bad
                },
                good
            )
            .is_some()
        );
    }
}
