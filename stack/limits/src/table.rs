//! One fixed table of buckets for every limit and key of an engine,
//! shared by its workers (`Arc<Quota>`), allocated once.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::escalate::{self, EscalateSpec, EscalationQueue};
use crate::gcra::{Decision, LimitSpec};

/// Keys tracked at once; beyond, the stalest bucket of a probe window is
/// reused (an LRU approximation, as the XDP tier's LRU hash).
pub const TABLE_SLOTS: usize = 1 << 16;
const PROBE: usize = 8;
const ESCALATION_QUEUE: usize = 1024;

#[derive(Default)]
struct Slot {
    /// The key's hash, `| 1` (0 marks a free slot).
    tag: AtomicU64,
    /// GCRA's theoretical arrival time, ns on the callers' clock (0: full).
    tat: AtomicU64,
    /// Escalation: the open one-second window and its count.
    window: AtomicU64,
    streak: AtomicU32,
}

/// What one request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub decision: Decision,
    /// The key just completed its escalation streak (at most once a streak).
    pub escalate: Option<u64>,
}

/// The buckets, the keyed hash that names them, and the escalations on
/// their way to the engine.
pub struct Quota {
    slots: Box<[Slot]>,
    /// Keyed per process: a client cannot pick header values that collide
    /// with another client's bucket.
    hasher: RandomState,
    escalations: EscalationQueue,
}

impl Default for Quota {
    fn default() -> Self {
        Self::with_slots(TABLE_SLOTS)
    }
}

impl Quota {
    /// A table of `slots` buckets (rounded up to a power of two, at least
    /// the probe window).
    pub fn with_slots(slots: usize) -> Self {
        let n = slots.max(PROBE).next_power_of_two();
        Self {
            slots: (0..n).map(|_| Slot::default()).collect(),
            hasher: RandomState::new(),
            escalations: EscalationQueue::new(ESCALATION_QUEUE),
        }
    }

    /// The bucket key of `limit` (its name: stable across reloads that
    /// reorder limits) for the key bytes `parts`.
    pub fn key(&self, limit: &str, parts: &[&[u8]]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(limit.as_bytes());
        h.write_u8(0xff);
        for p in parts {
            h.write_usize(p.len());
            h.write(p);
        }
        h.finish()
    }

    /// One request of `key` at `now_ns` (the engine's clock, shared by its
    /// workers) against `spec`; counts it towards `escalate` if given.
    pub fn take(
        &self,
        key: u64,
        spec: &LimitSpec,
        escalate: Option<&EscalateSpec>,
        now_ns: u64,
    ) -> Outcome {
        let slot = self.slot(key);
        let decision = loop {
            let tat = slot.tat.load(Relaxed);
            match spec.step(tat, now_ns) {
                Ok(next) => {
                    if slot
                        .tat
                        .compare_exchange_weak(tat, next, Relaxed, Relaxed)
                        .is_ok()
                    {
                        break Decision::Allowed;
                    }
                }
                Err(wait) => {
                    break Decision::Limited {
                        retry_after_ns: wait,
                    };
                }
            }
        };
        let escalate =
            escalate.and_then(|e| escalate::count(&slot.window, &slot.streak, e, now_ns));
        Outcome { decision, escalate }
    }

    pub fn escalations(&self) -> &EscalationQueue {
        &self.escalations
    }

    /// The key's slot: found in its probe window, or a free one claimed,
    /// or the window's stalest (smallest TAT) reused.
    fn slot(&self, key: u64) -> &Slot {
        let tag = key | 1;
        let mask = self.slots.len() - 1;
        let start = (key ^ (key >> 32)) as usize & mask;
        let mut stalest = start;
        let mut stalest_tat = u64::MAX;
        for i in 0..PROBE {
            let at = (start + i) & mask;
            let s = &self.slots[at];
            let t = s.tag.load(Relaxed);
            if t == tag {
                return s;
            }
            if t == 0 {
                if s.tag.compare_exchange(0, tag, Relaxed, Relaxed).is_ok() {
                    return s;
                }
                if s.tag.load(Relaxed) == tag {
                    return s;
                }
                continue;
            }
            let tat = s.tat.load(Relaxed);
            if tat < stalest_tat {
                stalest_tat = tat;
                stalest = at;
            }
        }
        let s = &self.slots[stalest];
        s.tag.store(tag, Relaxed);
        s.tat.store(0, Relaxed);
        s.window.store(0, Relaxed);
        s.streak.store(0, Relaxed);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn keys_of_two_limits_do_not_share_a_bucket() {
        let q = Quota::default();
        let spec = LimitSpec::per_second(1.0, 1).unwrap();
        let a = q.key("a", &[b"10.0.0.1"]);
        let b = q.key("b", &[b"10.0.0.1"]);
        assert_ne!(a, b);
        assert_eq!(q.take(a, &spec, None, SEC).decision, Decision::Allowed);
        assert_eq!(q.take(b, &spec, None, SEC).decision, Decision::Allowed);
        assert!(matches!(
            q.take(a, &spec, None, SEC).decision,
            Decision::Limited { .. }
        ));
    }

    #[test]
    fn a_flood_of_new_keys_reuses_stale_buckets_without_failing() {
        let q = Quota::with_slots(64);
        let spec = LimitSpec::per_second(1.0, 1).unwrap();
        for i in 0..10_000u32 {
            let k = q.key("l", &[&i.to_be_bytes()]);
            assert_eq!(q.take(k, &spec, None, SEC).decision, Decision::Allowed);
        }
    }

    /// Two workers, each serving half of one key's requests with its own
    /// clock reads: together they admit the limit's rate within 5 %.
    #[test]
    fn workers_sharing_a_key_hold_the_aggregate_rate_within_five_percent() {
        let q = Arc::new(Quota::default());
        let spec = LimitSpec::per_second(1000.0, 10).unwrap();
        let key = q.key("api", &[b"client"]);
        let seconds = 20u64;
        let handles: Vec<_> = (0..2u64)
            .map(|w| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let mut admitted = 0u64;
                    // 4,000 offered per second per worker, interleaved.
                    for i in 0..seconds * 4000 {
                        let now = SEC + i * (SEC / 4000) + w * (SEC / 8000);
                        if q.take(key, &spec, None, now).decision == Decision::Allowed {
                            admitted += 1;
                        }
                    }
                    admitted
                })
            })
            .collect();
        let admitted: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        let expected = 1000 * seconds + 10;
        let err = (admitted as f64 - expected as f64).abs() / expected as f64;
        assert!(err <= 0.05, "admitted {admitted}, expected {expected}");
    }

    #[test]
    fn an_escalation_fires_through_take() {
        let q = Quota::default();
        let spec = LimitSpec::per_second(10.0, 10).unwrap();
        let esc = EscalateSpec {
            over_per_second: 50,
            windows: 2,
            ttl: std::time::Duration::from_secs(30),
        };
        let k = q.key("l", &[b"x"]);
        let mut fired = Vec::new();
        for s in 1..=3u64 {
            for i in 0..60u64 {
                if let Some(n) = q
                    .take(k, &spec, Some(&esc), s * SEC + i * (SEC / 60))
                    .escalate
                {
                    fired.push((s, n));
                }
            }
        }
        assert_eq!(fired, vec![(3, 60)]);
    }
}
