//! Sources an L7 rate limit escalated, denied in the filter tier (the XDP
//! program's deny set, or the Rust filter's on backends without XDP) until
//! their TTL runs out. Off the data path: the engine's owner calls
//! [`DenySet::tick`] from its loop; workers only push to the quota's
//! bounded queue.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use ferrogate_ebpf::swfilter::BlockedSources;
use ferrogate_ebpf::{CidrAction, FilterRules, XdpFilter};
use ferrogate_proxy::quota::Quota;

/// One denied source, for `ferrogate ctl blocked`.
#[derive(Debug, Clone)]
pub struct DeniedSource {
    pub source: IpAddr,
    pub limit: String,
    pub since: SystemTime,
    pub until: Instant,
    /// Requests a second it offered in the window that tipped it.
    pub offered_per_second: u64,
}

/// Where denied sources are enforced.
pub enum DenyTarget<'a> {
    Xdp(&'a mut XdpFilter),
    /// The Rust filter (on the same monotonic clock as the program).
    Soft(&'a BlockedSources),
    /// No filter tier (in-memory ports): escalations are counted only.
    None,
}

/// The engine's escalated sources and what it refused to escalate.
#[derive(Default)]
pub struct DenySet {
    denied: Vec<DeniedSource>,
    /// Prefixes never denied: the filter's allow and upstream CIDRs.
    never: Vec<(IpAddr, u8)>,
    /// Escalations of never-denied sources, ignored (counted).
    pub refused_allowed: u64,
    /// Escalations the filter tier could not take (a full set), counted.
    pub failed: u64,
    /// Sources denied so far (counter; expiries do not lower it).
    pub escalated: u64,
}

fn contains(prefix: (IpAddr, u8), ip: IpAddr) -> bool {
    match (prefix.0, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix.1)).unwrap_or(0);
            u32::from(n) & m == u32::from(a) & m
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(prefix.1))
                .unwrap_or(0);
            u128::from(n) & m == u128::from(a) & m
        }
        _ => false,
    }
}

impl DenySet {
    /// Takes the never-denied prefixes from the filter's rules (at start
    /// and after each reload); the next tick lifts denied sources they
    /// now cover.
    pub fn set_rules(&mut self, rules: &FilterRules) {
        self.never = rules
            .cidr
            .iter()
            .filter(|r| matches!(r.action, CidrAction::Allow | CidrAction::Upstream))
            .flat_map(|r| r.prefixes.iter().copied())
            .collect();
    }

    pub fn denied(&self) -> &[DeniedSource] {
        &self.denied
    }

    /// Lifts the deny of `source` now (`ferrogate ctl unblock`); false if
    /// it was not denied.
    pub fn lift(&mut self, source: IpAddr, mut target: DenyTarget<'_>) -> bool {
        let before = self.denied.len();
        self.denied.retain(|d| d.source != source);
        if self.denied.len() == before {
            return false;
        }
        let _ = lift(&mut target, source);
        tracing::info!(source = %source, "escalated source's deny lifted by the operator");
        true
    }

    /// Applies the queued escalations and lets expired ones go.
    pub fn tick(&mut self, quota: &Quota, mut target: DenyTarget<'_>, now: Instant) {
        while let Some(e) = quota.escalations().pop() {
            if self.never.iter().any(|p| contains(*p, e.source)) {
                self.refused_allowed += 1;
                continue;
            }
            if matches!(target, DenyTarget::None) {
                // Nothing would drop it: not listed as denied.
                self.failed += 1;
                continue;
            }
            let known = self.denied.iter().position(|d| d.source == e.source);
            // A second escalation (another limit) never shortens a deny.
            let until = known.map_or(now + e.ttl, |i| self.denied[i].until.max(now + e.ttl));
            if let Err(err) = enforce(&mut target, e.source, until, now) {
                self.failed += 1;
                tracing::warn!(source = %e.source, limit = %e.limit, error = %err, "cannot deny an escalated source");
                continue;
            }
            match known {
                Some(i) => self.denied[i].until = until,
                None => {
                    self.escalated += 1;
                    tracing::warn!(
                        source = %e.source,
                        limit = %e.limit,
                        offered_per_second = e.offered_per_second,
                        ttl_s = e.ttl.as_secs(),
                        "source escalated to the XDP deny set"
                    );
                    self.denied.push(DeniedSource {
                        source: e.source,
                        limit: e.limit.to_string(),
                        since: SystemTime::now(),
                        until,
                        offered_per_second: e.offered_per_second,
                    });
                }
            }
        }
        let never = &self.never;
        let mut lifted = Vec::new();
        self.denied.retain(|d| {
            let allowed = never.iter().any(|p| contains(*p, d.source));
            let keep = d.until > now && !allowed;
            if !keep {
                lifted.push((d.source, allowed));
            }
            keep
        });
        for (source, allowed) in lifted {
            let _ = lift(&mut target, source);
            if allowed {
                tracing::info!(source = %source, "escalated source's deny lifted: the filter allows it now");
            } else {
                tracing::info!(source = %source, "escalated source's deny expired");
            }
        }
    }
}

fn enforce(
    target: &mut DenyTarget<'_>,
    source: IpAddr,
    until: Instant,
    now: Instant,
) -> Result<(), String> {
    let until_ns =
        ferrogate_ebpf::monotonic_ns() + until.saturating_duration_since(now).as_nanos() as u64;
    match target {
        DenyTarget::Xdp(x) => x.block_source(source, until_ns).map_err(|e| e.to_string()),
        DenyTarget::Soft(b) => b.block(source, until_ns).map_err(|e| e.to_string()),
        DenyTarget::None => Ok(()),
    }
}

fn lift(target: &mut DenyTarget<'_>, source: IpAddr) -> Result<(), String> {
    match target {
        DenyTarget::Xdp(x) => x
            .unblock_source(source)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        DenyTarget::Soft(b) => {
            b.unblock(source);
            Ok(())
        }
        DenyTarget::None => Ok(()),
    }
}

/// Seconds left of a deny, for listings.
pub fn remaining(d: &DeniedSource, now: Instant) -> Duration {
    d.until.saturating_duration_since(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrogate_ebpf::CidrRule;
    use ferrogate_proxy::quota::Escalation;

    fn escalate(q: &Quota, source: &str, ttl_ms: u64) {
        assert!(q.escalations().push(Escalation {
            source: source.parse().unwrap(),
            limit: "per-client".into(),
            ttl: Duration::from_millis(ttl_ms),
            offered_per_second: 500,
        }));
    }

    #[test]
    fn escalations_are_denied_until_their_ttl_and_allow_listed_sources_never() {
        let q = Quota::default();
        let blocked = BlockedSources::default();
        let mut set = DenySet::default();
        set.set_rules(&FilterRules {
            cidr: vec![
                CidrRule {
                    id: "office".into(),
                    action: CidrAction::Allow,
                    prefixes: vec![("198.51.100.0".parse().unwrap(), 24)],
                },
                CidrRule {
                    id: "upstreams".into(),
                    action: CidrAction::Upstream,
                    prefixes: vec![("10.77.0.3".parse().unwrap(), 32)],
                },
            ],
            ..FilterRules::default()
        });
        escalate(&q, "192.0.2.7", 60_000);
        escalate(&q, "198.51.100.9", 60_000);
        escalate(&q, "10.77.0.3", 60_000);
        escalate(&q, "2001:db8::7", 1);
        let t0 = Instant::now();
        set.tick(&q, DenyTarget::Soft(&blocked), t0);
        let now_ns = ferrogate_ebpf::monotonic_ns();
        assert!(blocked.is_blocked("192.0.2.7".parse().unwrap(), now_ns));
        assert!(!blocked.is_blocked("198.51.100.9".parse().unwrap(), now_ns));
        assert!(!blocked.is_blocked("10.77.0.3".parse().unwrap(), now_ns));
        assert_eq!((set.escalated, set.refused_allowed), (2, 2));
        assert_eq!(set.denied().len(), 2);
        // The same source again extends its deny, not a second entry.
        escalate(&q, "192.0.2.7", 120_000);
        set.tick(&q, DenyTarget::Soft(&blocked), t0);
        assert_eq!((set.escalated, set.denied().len()), (2, 2));
        assert!(remaining(&set.denied()[0], t0) > Duration::from_secs(100));
        // The IPv6 one's TTL ran out: lifted from the list and the filter.
        set.tick(
            &q,
            DenyTarget::Soft(&blocked),
            t0 + Duration::from_millis(5),
        );
        assert_eq!(set.denied().len(), 1);
        assert_eq!(blocked.len(), 1);
        set.tick(
            &q,
            DenyTarget::Soft(&blocked),
            t0 + Duration::from_secs(121),
        );
        assert!(set.denied().is_empty() && blocked.is_empty());
    }

    #[test]
    fn an_allow_added_by_a_reload_or_the_operator_lifts_a_deny_at_once() {
        let q = Quota::default();
        let blocked = BlockedSources::default();
        let mut set = DenySet::default();
        escalate(&q, "192.0.2.7", 60_000);
        escalate(&q, "192.0.2.8", 60_000);
        let t0 = Instant::now();
        set.tick(&q, DenyTarget::Soft(&blocked), t0);
        assert_eq!(blocked.len(), 2);
        set.set_rules(&FilterRules {
            cidr: vec![CidrRule {
                id: "rescued".into(),
                action: CidrAction::Allow,
                prefixes: vec![("192.0.2.7".parse().unwrap(), 32)],
            }],
            ..FilterRules::default()
        });
        set.tick(&q, DenyTarget::Soft(&blocked), t0);
        assert_eq!(set.denied().len(), 1);
        assert!(!blocked.is_blocked("192.0.2.7".parse().unwrap(), ferrogate_ebpf::monotonic_ns()));
        assert!(set.lift("192.0.2.8".parse().unwrap(), DenyTarget::Soft(&blocked)));
        assert!(!set.lift("192.0.2.8".parse().unwrap(), DenyTarget::Soft(&blocked)));
        assert!(set.denied().is_empty() && blocked.is_empty());
        // No filter tier: counted as not applied, not listed.
        escalate(&q, "192.0.2.9", 60_000);
        set.tick(&q, DenyTarget::None, t0);
        assert!(set.denied().is_empty());
        assert_eq!(set.failed, 1);
    }
}
