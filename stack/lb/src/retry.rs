//! Which requests may be retried, and the per-pool retry budget.

use super::window::Window;
use super::{RetryPolicy, micros};
use ferrogate_net::Instant;

/// What the proxy had sent of the request body when the attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody {
    /// The request has no body.
    None,
    /// The whole body is still held in the proxy's buffer (can be resent).
    Buffered,
    /// Part of the body was streamed and is gone: never retry.
    Streamed,
}

/// Methods that RFC 9110 §9.2.2 defines as idempotent.
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// Whether a failed attempt may be sent again (to another endpoint): an
/// idempotent method, a body that can be resent, and a failure after which
/// the upstream cannot have acted on the request (`upstream_untouched`: the
/// caller's error type knows, e.g. a refused connect or a connection the
/// origin closed before reading).
pub fn may_retry(method: &str, body: RequestBody, upstream_untouched: bool) -> bool {
    is_idempotent(method) && body != RequestBody::Streamed && upstream_untouched
}

/// Why a retry was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RetryDenied {
    #[error("the request may not be retried (method, body or error)")]
    NotRetryable,
    #[error("the request used all its attempts")]
    AttemptsExhausted,
    #[error("the pool's retry budget is spent")]
    BudgetExhausted,
}

/// Retries <= `budget_percent` % of the requests in the window, with a floor
/// of `min_per_sec` retries per second so a quiet pool can still retry.
#[derive(Debug, Clone, Default)]
pub struct RetryBudget {
    /// Requests (first attempts) and retries.
    window: Window,
}

impl RetryBudget {
    /// Counts a request's first attempt.
    pub fn record_request(&mut self, p: &RetryPolicy, now: Instant) {
        self.window.add(micros(p.window), now.total_micros(), 1, 0);
    }

    /// Retries the budget still allows now.
    pub fn available(&self, p: &RetryPolicy, now: Instant) -> u64 {
        let win = micros(p.window);
        let [requests, retries] = self.window.sum(win, now.total_micros());
        let floor = u64::from(p.min_per_sec) * (p.window.as_secs().max(1));
        let allowed = (requests * u64::from(p.budget_percent) / 100).max(floor);
        allowed.saturating_sub(retries)
    }

    /// Takes one retry from the budget if there is one.
    pub fn try_take(&mut self, p: &RetryPolicy, now: Instant) -> bool {
        if self.available(p, now) == 0 {
            return false;
        }
        self.window.add(micros(p.window), now.total_micros(), 0, 1);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn only_idempotent_resendable_requests_the_upstream_never_acted_on_are_retried() {
        assert!(may_retry("GET", RequestBody::None, true));
        assert!(may_retry("PUT", RequestBody::Buffered, true));
        assert!(!may_retry("POST", RequestBody::None, true));
        assert!(!may_retry("PATCH", RequestBody::Buffered, true));
        assert!(!may_retry("PUT", RequestBody::Streamed, true));
        assert!(!may_retry("GET", RequestBody::None, false));
    }

    #[test]
    fn retry_budget_holds_retries_to_a_share_of_requests() {
        let p = RetryPolicy {
            attempts: 3,
            budget_percent: 10,
            min_per_sec: 0,
            window: Duration::from_secs(10),
        };
        let mut b = RetryBudget::default();
        let now = Instant::from_secs(1);
        for _ in 0..1000 {
            b.record_request(&p, now);
        }
        let granted = (0..500).filter(|_| b.try_take(&p, now)).count();
        assert_eq!(granted, 100);
        // Once the requests leave the window, so does the budget.
        assert_eq!(b.available(&p, Instant::from_secs(30)), 0);
    }

    #[test]
    fn retry_budget_floor_allows_min_per_sec_on_a_quiet_pool() {
        let p = RetryPolicy {
            attempts: 2,
            budget_percent: 10,
            min_per_sec: 2,
            window: Duration::from_secs(5),
        };
        let mut b = RetryBudget::default();
        let now = Instant::from_secs(100);
        b.record_request(&p, now);
        let granted = (0..50).filter(|_| b.try_take(&p, now)).count();
        assert_eq!(granted, 10, "2/s over a 5 s window");
    }
}
