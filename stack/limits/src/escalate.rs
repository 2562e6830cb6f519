//! Which sources exceed a limit by a factor for long enough to be pushed
//! into the XDP deny set, and the queue that carries them to the engine.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crossbeam::queue::ArrayQueue;

const NS_PER_SEC: u64 = 1_000_000_000;

/// When a limit escalates: `windows` consecutive one-second windows in
/// each of which a key offered more than `over_per_second` requests
/// (admitted or not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscalateSpec {
    pub over_per_second: u64,
    pub windows: u32,
    /// How long the source stays in the deny set.
    pub ttl: Duration,
}

/// A source to deny in XDP, from the worker that saw it to the engine.
#[derive(Debug, Clone)]
pub struct Escalation {
    pub source: IpAddr,
    pub limit: Arc<str>,
    pub ttl: Duration,
    /// Requests the source offered in the window that tipped it.
    pub offered_per_second: u64,
}

/// Bounded, lock-free: a full queue drops the escalation and counts it
/// (the source escalates again on its next window over the factor).
pub struct EscalationQueue {
    queue: ArrayQueue<Escalation>,
    dropped: AtomicU64,
}

impl EscalationQueue {
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: ArrayQueue::new(capacity.max(1)),
            dropped: AtomicU64::new(0),
        }
    }

    /// False (and counted) when the queue is full.
    pub fn push(&self, e: Escalation) -> bool {
        if self.queue.push(e).is_err() {
            self.dropped.fetch_add(1, Relaxed);
            return false;
        }
        true
    }

    pub fn pop(&self) -> Option<Escalation> {
        self.queue.pop()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

/// Counts one offered request in the key's window (`(second << 32) |
/// count`); when this request opens a new second, judges the one it closes.
/// Returns the closed window's count when it completes `spec.windows`
/// consecutive windows over the factor (the streak then starts again).
///
/// Workers race on the two words; a lost update miscounts a request, not
/// the decision's order of magnitude.
pub(crate) fn count(
    window: &AtomicU64,
    streak: &AtomicU32,
    spec: &EscalateSpec,
    now_ns: u64,
) -> Option<u64> {
    let sec = u64::from((now_ns / NS_PER_SEC) as u32);
    let mut cur = window.load(Relaxed);
    loop {
        let (open, n) = (cur >> 32, cur & 0xffff_ffff);
        // A worker whose clock read is a little older still counts in the
        // open window instead of reopening a past one.
        if sec <= open {
            if n < u64::from(u32::MAX) {
                window.fetch_add(1, Relaxed);
            }
            return None;
        }
        match window.compare_exchange_weak(cur, sec << 32 | 1, Relaxed, Relaxed) {
            Ok(_) => {
                let over = n > spec.over_per_second;
                let run = if over { streak.load(Relaxed) + 1 } else { 0 };
                let fire = run >= spec.windows;
                // Quiet seconds between the closed window and this one
                // were not over: the streak ends with the closed window.
                let keep = if fire || sec != open + 1 { 0 } else { run };
                streak.store(keep, Relaxed);
                return fire.then_some(n);
            }
            Err(seen) => cur = seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> EscalateSpec {
        EscalateSpec {
            over_per_second: 100,
            windows: 3,
            ttl: Duration::from_secs(60),
        }
    }

    /// Offers `n` requests spread over second `s`; returns what fired.
    fn offer(w: &AtomicU64, st: &AtomicU32, s: u64, n: u64) -> Vec<u64> {
        (0..n)
            .filter_map(|i| count(w, st, &spec(), s * NS_PER_SEC + i * (NS_PER_SEC / n.max(1))))
            .collect()
    }

    #[test]
    fn three_consecutive_seconds_over_the_factor_escalate_once() {
        let (w, st) = (AtomicU64::new(0), AtomicU32::new(0));
        assert!(offer(&w, &st, 10, 150).is_empty());
        assert!(offer(&w, &st, 11, 150).is_empty());
        assert!(offer(&w, &st, 12, 150).is_empty());
        // The first request of second 13 closes the third window over.
        assert_eq!(offer(&w, &st, 13, 150), vec![150]);
        assert!(offer(&w, &st, 14, 150).is_empty(), "the streak restarts");
    }

    #[test]
    fn a_window_under_the_factor_breaks_the_streak() {
        let (w, st) = (AtomicU64::new(0), AtomicU32::new(0));
        offer(&w, &st, 10, 150);
        offer(&w, &st, 11, 150);
        offer(&w, &st, 12, 99);
        offer(&w, &st, 13, 150);
        offer(&w, &st, 14, 150);
        assert!(
            offer(&w, &st, 15, 1).is_empty(),
            "only two over since the dip"
        );
        assert!(offer(&w, &st, 16, 1).is_empty());
    }

    #[test]
    fn a_quiet_second_breaks_the_streak() {
        let (w, st) = (AtomicU64::new(0), AtomicU32::new(0));
        offer(&w, &st, 10, 150);
        offer(&w, &st, 11, 150);
        // Nothing in second 12.
        assert!(offer(&w, &st, 13, 150).is_empty());
        assert!(offer(&w, &st, 14, 150).is_empty());
    }

    #[test]
    fn an_older_clock_read_counts_in_the_open_window() {
        let (w, st) = (AtomicU64::new(0), AtomicU32::new(0));
        count(&w, &st, &spec(), 5 * NS_PER_SEC);
        count(&w, &st, &spec(), 5 * NS_PER_SEC - 1);
        assert_eq!(w.load(Relaxed), 5 << 32 | 2);
    }

    #[test]
    fn a_full_queue_counts_what_it_drops() {
        let q = EscalationQueue::new(1);
        let e = Escalation {
            source: "192.0.2.1".parse().unwrap(),
            limit: "l".into(),
            ttl: Duration::from_secs(1),
            offered_per_second: 1,
        };
        assert!(q.push(e.clone()));
        assert!(!q.push(e));
        assert_eq!(q.dropped(), 1);
        assert!(q.pop().is_some());
    }
}
