//! The per-pool circuit breaker (see [`super::BreakerPolicy`]).

use super::window::Window;
use super::{BreakerPolicy, micros};
use ferrogate_net::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow; outcomes are counted.
    Closed,
    /// Requests are refused (503) until the cool-down ends.
    Open,
    /// A few probe requests decide between closed and open.
    HalfOpen,
}

impl BreakerState {
    /// 0 closed, 1 open, 2 half-open (for counters).
    pub fn code(self) -> u64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    state: BreakerState,
    /// Requests and failures in the window (closed state).
    window: Window,
    consecutive: u32,
    open_until_us: i64,
    /// When the current half-open phase began: a pick made before it took
    /// no probe slot of this phase, so its cancel gives none back.
    half_open_since_us: i64,
    probes_started: u32,
    probes_ok: u32,
    /// Times the breaker opened.
    pub opens: u64,
    /// Requests refused while open (or half-open with every probe out).
    pub rejected: u64,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            state: BreakerState::Closed,
            window: Window::default(),
            consecutive: 0,
            open_until_us: 0,
            half_open_since_us: 0,
            probes_started: 0,
            probes_ok: 0,
            opens: 0,
            rejected: 0,
        }
    }
}

impl CircuitBreaker {
    /// The state at `now` (open turns half-open once the cool-down is over).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            BreakerState::Open if now.total_micros() >= self.open_until_us => {
                BreakerState::HalfOpen
            }
            s => s,
        }
    }

    /// Whether a request may go to the pool now. In half-open, each `true`
    /// takes one of the probe slots: call it only for a request that will
    /// be sent, and report its outcome with [`Self::record`].
    pub fn allow(&mut self, p: &BreakerPolicy, now: Instant) -> bool {
        if self.state == BreakerState::Open && now.total_micros() >= self.open_until_us {
            self.state = BreakerState::HalfOpen;
            self.half_open_since_us = now.total_micros();
            self.probes_started = 0;
            self.probes_ok = 0;
        }
        let ok = match self.state {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => {
                if self.probes_started < p.half_open_probes.max(1) {
                    self.probes_started += 1;
                    true
                } else {
                    false
                }
            }
        };
        if !ok {
            self.rejected += 1;
        }
        ok
    }

    /// Records the outcome of a request that `allow` let through.
    pub fn record(&mut self, p: &BreakerPolicy, ok: bool, now: Instant) {
        let now_us = now.total_micros();
        match self.state {
            BreakerState::Open => {}
            BreakerState::HalfOpen => {
                if ok {
                    self.probes_ok += 1;
                    if self.probes_ok >= p.half_open_probes.max(1) {
                        self.state = BreakerState::Closed;
                        self.window.clear();
                        self.consecutive = 0;
                    }
                } else {
                    self.trip(p, now_us);
                }
            }
            BreakerState::Closed => {
                let win = micros(p.window);
                self.window.add(win, now_us, 1, u64::from(!ok));
                self.consecutive = if ok { 0 } else { self.consecutive + 1 };
                let [requests, failures] = self.window.sum(win, now_us);
                let by_ratio = requests >= u64::from(p.min_requests.max(1))
                    && failures * 100 >= u64::from(p.failure_percent) * requests;
                let by_run =
                    p.consecutive_failures > 0 && self.consecutive >= p.consecutive_failures;
                if !ok && (by_ratio || by_run) {
                    self.trip(p, now_us);
                }
            }
        }
    }

    /// Gives back the half-open probe slot of a request picked at
    /// `picked_at` and never sent; none when it was picked before this
    /// half-open phase (closed, or an earlier phase): it took no slot here.
    pub(crate) fn release_probe(&mut self, picked_at: Instant) {
        if self.state == BreakerState::HalfOpen
            && picked_at.total_micros() >= self.half_open_since_us
        {
            self.probes_started = self.probes_started.saturating_sub(1);
        }
    }

    fn trip(&mut self, p: &BreakerPolicy, now_us: i64) {
        self.state = BreakerState::Open;
        self.open_until_us = now_us + micros(p.cooldown);
        self.opens += 1;
        self.consecutive = 0;
        self.window.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failure_percent: 50,
            min_requests: 10,
            consecutive_failures: 0,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }

    fn ms(v: u64) -> Instant {
        Instant::from_millis(v as i64)
    }

    #[test]
    fn breaker_opens_on_failure_ratio_only_after_min_requests() {
        let p = policy();
        let mut b = CircuitBreaker::default();
        for i in 0..4 {
            b.record(&p, true, ms(i));
            b.record(&p, false, ms(i));
        }
        assert_eq!(b.state(ms(10)), BreakerState::Closed, "8 requests < min 10");
        b.record(&p, true, ms(10));
        b.record(&p, false, ms(10));
        assert_eq!(b.state(ms(10)), BreakerState::Open);
        assert!(!b.allow(&p, ms(100)));
        assert_eq!(b.rejected, 1);
        assert_eq!(b.opens, 1);
    }

    #[test]
    fn breaker_ignores_failures_that_left_the_window() {
        let p = policy();
        let mut b = CircuitBreaker::default();
        for _ in 0..9 {
            b.record(&p, false, ms(0));
        }
        for i in 0..10 {
            b.record(&p, true, ms(20_000 + i));
        }
        b.record(&p, false, ms(20_100));
        assert_eq!(b.state(ms(20_100)), BreakerState::Closed);
    }

    #[test]
    fn breaker_opens_on_consecutive_failures_when_configured() {
        let p = BreakerPolicy {
            consecutive_failures: 3,
            min_requests: 1000,
            ..policy()
        };
        let mut b = CircuitBreaker::default();
        b.record(&p, false, ms(0));
        b.record(&p, false, ms(1));
        b.record(&p, true, ms(2));
        b.record(&p, false, ms(3));
        b.record(&p, false, ms(4));
        assert_eq!(b.state(ms(4)), BreakerState::Closed);
        b.record(&p, false, ms(5));
        assert_eq!(b.state(ms(5)), BreakerState::Open);
    }

    #[test]
    fn half_open_admits_k_probes_and_closes_when_all_succeed() {
        let p = BreakerPolicy {
            consecutive_failures: 1,
            ..policy()
        };
        let mut b = CircuitBreaker::default();
        b.record(&p, false, ms(0));
        assert!(!b.allow(&p, ms(4_999)));
        assert_eq!(b.state(ms(5_000)), BreakerState::HalfOpen);
        assert!(b.allow(&p, ms(5_000)));
        assert!(b.allow(&p, ms(5_000)));
        assert!(!b.allow(&p, ms(5_000)), "only 2 probes");
        b.record(&p, true, ms(5_010));
        assert_eq!(b.state(ms(5_010)), BreakerState::HalfOpen);
        b.record(&p, true, ms(5_020));
        assert_eq!(b.state(ms(5_020)), BreakerState::Closed);
        assert!(b.allow(&p, ms(5_030)));
    }

    #[test]
    fn half_open_failure_reopens_for_another_cooldown() {
        let p = BreakerPolicy {
            consecutive_failures: 1,
            ..policy()
        };
        let mut b = CircuitBreaker::default();
        b.record(&p, false, ms(0));
        assert!(b.allow(&p, ms(6_000)));
        b.record(&p, false, ms(6_000));
        assert_eq!(b.state(ms(6_001)), BreakerState::Open);
        assert_eq!(b.state(ms(11_000)), BreakerState::HalfOpen);
        assert_eq!(b.opens, 2);
    }
}
