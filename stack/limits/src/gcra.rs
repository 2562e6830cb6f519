//! The generic cell rate algorithm (GCRA): a token bucket kept as one
//! number, the theoretical arrival time (TAT) of the next request at the
//! sustained rate, so a bucket is one atomic word.

const NS_PER_SEC: f64 = 1e9;

/// A limit's rate and burst in GCRA terms (integer nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSpec {
    /// Nanoseconds between two requests at the sustained rate (T).
    pub interval_ns: u64,
    /// Requests a full bucket admits at once.
    pub burst: u32,
}

/// What a request gets from a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Over the limit; a token is back after `retry_after_ns`.
    Limited {
        retry_after_ns: u64,
    },
}

/// The slowest rate a limit may have: one request an hour.
pub const MIN_RATE: f64 = 1.0 / 3600.0;
/// The fastest: a million requests a second (T = 1 µs).
pub const MAX_RATE: f64 = 1e6;
/// The largest burst.
pub const MAX_BURST: u32 = 1_000_000;

impl LimitSpec {
    /// `rate` requests a second with bursts of `burst`; `None` outside
    /// [`MIN_RATE`]..=[`MAX_RATE`] or for a burst of 0 or over [`MAX_BURST`].
    pub fn per_second(rate: f64, burst: u32) -> Option<Self> {
        if !(MIN_RATE..=MAX_RATE).contains(&rate) || burst == 0 || burst > MAX_BURST {
            return None;
        }
        Some(Self {
            interval_ns: (NS_PER_SEC / rate).round() as u64,
            burst,
        })
    }

    /// Requests a second.
    pub fn rate(&self) -> f64 {
        NS_PER_SEC / self.interval_ns as f64
    }

    /// How far ahead of `now` the TAT may run: the burst's worth of intervals.
    fn tolerance_ns(&self) -> u64 {
        self.interval_ns * u64::from(self.burst)
    }

    /// One request at `now` against a bucket whose TAT is `tat` (0: full):
    /// `Ok(new TAT)` if admitted, `Err(wait)` if not.
    pub fn step(&self, tat: u64, now: u64) -> Result<u64, u64> {
        let tolerance = self.tolerance_ns();
        // A TAT further ahead than this spec allows was left by a slower
        // spec of the same limit before a reload: it counts as empty.
        let tat = tat.min(now + tolerance);
        let next = tat.max(now) + self.interval_ns;
        let ahead = next - now;
        if ahead > tolerance {
            Err(ahead - tolerance)
        } else {
            Ok(next)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_full_bucket_admits_the_burst_then_refuses() {
        let spec = LimitSpec::per_second(10.0, 5).unwrap();
        let mut tat = 0;
        let now = 7 * SEC;
        for _ in 0..5 {
            tat = spec.step(tat, now).expect("within the burst");
        }
        let wait = spec.step(tat, now).expect_err("the sixth is over");
        assert_eq!(wait, SEC / 10, "one interval until the next token");
    }

    #[test]
    fn the_sustained_rate_is_admitted_forever() {
        let spec = LimitSpec::per_second(100.0, 1).unwrap();
        let mut tat = 0;
        for i in 0..10_000u64 {
            tat = spec.step(tat, SEC + i * SEC / 100).expect("at the rate");
        }
    }

    #[test]
    fn admitted_count_over_a_second_is_rate_plus_burst() {
        let spec = LimitSpec::per_second(50.0, 10).unwrap();
        let mut tat = 0;
        let mut admitted = 0;
        // 1,000 requests spread evenly over one second.
        for i in 0..1000u64 {
            if let Ok(t) = spec.step(tat, SEC + i * SEC / 1000) {
                tat = t;
                admitted += 1;
            }
        }
        assert!((59..=60).contains(&admitted), "{admitted}");
    }

    #[test]
    fn out_of_range_specs_are_refused() {
        assert!(LimitSpec::per_second(0.0, 1).is_none());
        assert!(LimitSpec::per_second(f64::NAN, 1).is_none());
        assert!(LimitSpec::per_second(2e6, 1).is_none());
        assert!(LimitSpec::per_second(1.0, 0).is_none());
        assert!(LimitSpec::per_second(MIN_RATE, MAX_BURST).is_some());
    }
}
