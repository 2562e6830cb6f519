//! Per-endpoint health: active-check results (rise/fall), the probe
//! schedule, and passive ejection after consecutive request failures.

use std::net::SocketAddr;

use super::{HealthCheck, PassivePolicy, micros};
use ferrogate_net::Instant;

/// What the proxy must probe now: connect to `addr` (and send the check's
/// request for HTTP checks); report via `PoolState::record_result` by
/// `deadline` at the latest (a probe without an answer by then failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub endpoint: usize,
    pub addr: SocketAddr,
    pub deadline: Instant,
}

/// Health of one endpoint. A new endpoint starts healthy, so a new or
/// reloaded configuration serves at once; `fall` failed probes take it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointHealth {
    /// Verdict of the active checks (true when there are none).
    pub active_up: bool,
    successes: u32,
    failures: u32,
    next_probe_us: i64,
    probe_in_flight: bool,
    /// Consecutive failed requests (passive).
    passive_failures: u32,
    ejected_until_us: Option<i64>,
    /// Times the endpoint was ejected (passively) or fell (actively).
    pub ejections: u64,
}

impl EndpointHealth {
    /// `first_probe` staggers probes of a pool's endpoints over an interval.
    pub fn new(first_probe: Instant) -> Self {
        Self {
            active_up: true,
            successes: 0,
            failures: 0,
            next_probe_us: first_probe.total_micros(),
            probe_in_flight: false,
            passive_failures: 0,
            ejected_until_us: None,
            ejections: 0,
        }
    }

    /// In rotation: actively healthy and not ejected.
    pub fn usable(&self, now: Instant) -> bool {
        self.active_up && !self.ejected(now)
    }

    pub fn ejected(&self, now: Instant) -> bool {
        self.ejected_until_us
            .is_some_and(|t| now.total_micros() < t)
    }

    pub(crate) fn probe_due(&self, now: Instant) -> bool {
        !self.probe_in_flight && now.total_micros() >= self.next_probe_us
    }

    pub(crate) fn next_probe(&self) -> Option<Instant> {
        (!self.probe_in_flight).then(|| Instant::from_micros(self.next_probe_us))
    }

    pub(crate) fn start_probe(&mut self, check: &HealthCheck, now: Instant) -> Instant {
        self.probe_in_flight = true;
        self.next_probe_us = now.total_micros() + micros(check.interval);
        Instant::from_micros(now.total_micros() + micros(check.timeout))
    }

    /// Applies a probe result; returns true when the verdict changed.
    pub(crate) fn probe_result(&mut self, check: &HealthCheck, ok: bool) -> bool {
        self.probe_in_flight = false;
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.active_up && self.successes >= check.rise.max(1) {
                self.active_up = true;
                return true;
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.active_up && self.failures >= check.fall.max(1) {
                self.active_up = false;
                self.ejections += 1;
                return true;
            }
        }
        false
    }

    /// Applies a request outcome; returns true when it ejected the endpoint.
    pub(crate) fn request_result(
        &mut self,
        passive: Option<&PassivePolicy>,
        ok: bool,
        now: Instant,
    ) -> bool {
        let Some(p) = passive else {
            return false;
        };
        if ok {
            self.passive_failures = 0;
            return false;
        }
        if self.ejected(now) {
            return false;
        }
        self.passive_failures = self.passive_failures.saturating_add(1);
        if self.passive_failures >= p.consecutive_failures.max(1) {
            self.passive_failures = 0;
            self.ejected_until_us = Some(now.total_micros() + micros(p.eject));
            self.ejections += 1;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn check() -> HealthCheck {
        HealthCheck {
            rise: 2,
            fall: 3,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            ..HealthCheck::default()
        }
    }

    #[test]
    fn endpoint_falls_after_fall_failures_and_rises_after_rise_successes() {
        let c = check();
        let mut h = EndpointHealth::new(Instant::ZERO);
        assert!(!h.probe_result(&c, false));
        assert!(!h.probe_result(&c, false));
        assert!(h.usable(Instant::ZERO));
        assert!(h.probe_result(&c, false), "third failure flips it");
        assert!(!h.usable(Instant::ZERO));
        assert!(!h.probe_result(&c, true));
        assert!(
            !h.probe_result(&c, false),
            "a failure resets the rise count"
        );
        assert!(!h.probe_result(&c, true));
        assert!(h.probe_result(&c, true));
        assert!(h.usable(Instant::ZERO));
        assert_eq!(h.ejections, 1);
    }

    #[test]
    fn passive_ejection_lasts_eject_time_after_consecutive_failures() {
        let p = PassivePolicy {
            consecutive_failures: 3,
            eject: Duration::from_secs(10),
        };
        let mut h = EndpointHealth::new(Instant::ZERO);
        let t = Instant::from_secs(1);
        h.request_result(Some(&p), false, t);
        h.request_result(Some(&p), false, t);
        h.request_result(Some(&p), true, t);
        h.request_result(Some(&p), false, t);
        h.request_result(Some(&p), false, t);
        assert!(h.usable(t), "a success in between resets the count");
        assert!(h.request_result(Some(&p), false, t));
        assert!(!h.usable(Instant::from_secs(10)));
        assert!(h.usable(Instant::from_secs(11)));
        assert!(
            !h.request_result(None, false, t),
            "no passive policy, no ejection"
        );
    }

    #[test]
    fn probes_are_due_once_per_interval_and_not_while_in_flight() {
        let c = check();
        let mut h = EndpointHealth::new(Instant::from_millis(100));
        assert!(!h.probe_due(Instant::from_millis(99)));
        assert!(h.probe_due(Instant::from_millis(100)));
        let deadline = h.start_probe(&c, Instant::from_millis(100));
        assert_eq!(deadline, Instant::from_millis(600));
        assert!(!h.probe_due(Instant::from_millis(5000)));
        assert_eq!(h.next_probe(), None);
        h.probe_result(&c, true);
        assert_eq!(h.next_probe(), Some(Instant::from_millis(1100)));
    }
}
