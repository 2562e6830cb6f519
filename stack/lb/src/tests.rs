//! Pools end to end: balancers over registry state, health, panic mode,
//! breaker gating, retries and reloads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::Upstream;
use ferrogate_net::Instant;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 1, i as u8 + 1], 8080))
}

fn pool(weights: &[u32], policy: PoolPolicy) -> Upstream {
    let eps: Vec<Endpoint> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Endpoint::weighted(addr(i), w))
        .collect();
    Upstream::new("p", 0, &eps, policy)
}

fn with(balancer: Balancer) -> PoolPolicy {
    PoolPolicy {
        balancer,
        ..PoolPolicy::default()
    }
}

const T0: Instant = Instant::ZERO;

/// Picks `n` times (finishing each attempt at once) and returns the counts.
fn spread(p: &Upstream, s: &mut PoolState, n: usize, key: impl Fn(usize) -> u64) -> Vec<usize> {
    let mut counts = vec![0; p.endpoints.len()];
    for k in 0..n {
        let i = s.pick(p, key(k), &[], T0).unwrap();
        s.finish(p, i, true, T0);
        counts[i] += 1;
    }
    counts
}

/// Largest relative deviation of `counts` from the weights' shares.
fn worst_deviation(counts: &[usize], weights: &[u32]) -> f64 {
    let total: usize = counts.iter().sum();
    let wsum: u32 = weights.iter().sum();
    counts
        .iter()
        .zip(weights)
        .map(|(&c, &w)| {
            let want = total as f64 * f64::from(w) / f64::from(wsum);
            (c as f64 - want).abs() / want
        })
        .fold(0.0, f64::max)
}

#[test]
fn weighted_round_robin_holds_weights_within_5_percent_over_10000_picks() {
    let weights = [5, 3, 1, 1];
    let p = pool(&weights, with(Balancer::Weighted));
    let mut s = PoolState::new(&p, T0);
    let counts = spread(&p, &mut s, 10_000, |_| 0);
    let dev = worst_deviation(&counts, &weights);
    eprintln!("swrr {counts:?}: worst deviation {:.3} %", dev * 100.0);
    assert!(dev <= 0.05, "{counts:?}");
}

#[test]
fn weighted_round_robin_spreads_weight_over_healthy_endpoints_only() {
    let weights = [2, 2, 1];
    let p = pool(
        &weights,
        PoolPolicy {
            passive: Some(PassivePolicy {
                consecutive_failures: 1,
                eject: Duration::from_secs(60),
            }),
            ..with(Balancer::Weighted)
        },
    );
    let mut s = PoolState::new(&p, T0);
    let i = s.pick(&p, 0, &[], T0).unwrap();
    assert_eq!(i, 0);
    s.finish(&p, 0, false, T0);
    let counts = spread(&p, &mut s, 3_000, |_| 0);
    assert_eq!(counts[0], 0);
    assert!(
        worst_deviation(&counts[1..], &weights[1..]) <= 0.05,
        "{counts:?}"
    );
}

#[test]
fn maglev_table_holds_weights_within_1_percent_and_keys_follow_within_sampling_noise() {
    let weights = [4, 2, 1, 1, 2];
    let p = pool(&weights, with(Balancer::Hash(HashOn::Source)));
    let m = p.maglev.as_ref().unwrap();
    let mut table = vec![0; weights.len()];
    for h in 0..m.len() as u64 {
        table[m.lookup(h).unwrap()] += 1;
    }
    let dev = worst_deviation(&table, &weights);
    assert!(dev <= 0.01, "{table:?}");
    // Keys hash to entries at random: 10,000 keys put ~1,000 on a weight-1
    // endpoint, +-3 % (one sigma). Each set stays within 5 sigma; the mean
    // of five sets within 5 %.
    let mut sum = vec![0; weights.len()];
    for seed in 0..5 {
        let mut s = PoolState::new(&p, T0);
        let counts = spread(&p, &mut s, 10_000, |k| {
            stable_hash(&(k as u64).to_le_bytes(), seed)
        });
        let dev = worst_deviation(&counts, &weights);
        eprintln!(
            "maglev seed {seed} {counts:?}: worst deviation {:.2} %",
            dev * 100.0
        );
        assert!(dev <= 0.15, "{counts:?}");
        for (a, c) in sum.iter_mut().zip(&counts) {
            *a += c;
        }
    }
    let dev = worst_deviation(&sum, &weights);
    eprintln!(
        "maglev table {table:?}; 50,000 keys {sum:?}: worst deviation {:.2} %",
        dev * 100.0
    );
    assert!(dev <= 0.05, "{sum:?}");
}

#[test]
fn round_robin_ignores_weights_and_rotates() {
    let p = pool(&[9, 1, 1], PoolPolicy::default());
    let mut s = PoolState::new(&p, T0);
    let seq: Vec<usize> = (0..6)
        .map(|_| {
            let i = s.pick(&p, 0, &[], T0).unwrap();
            s.finish(&p, i, true, T0);
            i
        })
        .collect();
    assert_eq!(seq, vec![0, 1, 2, 0, 1, 2]);
}

#[test]
fn least_conn_sends_to_the_endpoint_with_fewest_in_flight() {
    let p = pool(&[1, 1, 1], with(Balancer::LeastConn));
    let mut s = PoolState::new(&p, T0);
    let a = s.pick(&p, 0, &[], T0).unwrap();
    let b = s.pick(&p, 0, &[], T0).unwrap();
    let c = s.pick(&p, 0, &[], T0).unwrap();
    let mut all = [a, b, c];
    all.sort();
    assert_eq!(all, [0, 1, 2], "one each while loads are equal");
    s.finish(&p, b, true, T0);
    assert_eq!(s.pick(&p, 0, &[], T0).unwrap(), b, "b is the only idle one");
    assert_eq!(s.endpoints[b].in_flight, 1);
}

#[test]
fn same_key_sticks_to_one_endpoint_and_moves_when_it_is_ejected() {
    let p = pool(
        &[1; 5],
        PoolPolicy {
            passive: Some(PassivePolicy {
                consecutive_failures: 1,
                eject: Duration::from_secs(10),
            }),
            ..with(Balancer::Hash(HashOn::Header("x-user".into())))
        },
    );
    let mut s = PoolState::new(&p, T0);
    let key = stable_hash(b"alice", 0);
    let first = s.pick(&p, key, &[], T0).unwrap();
    s.finish(&p, first, false, T0);
    let second = s.pick(&p, key, &[], T0).unwrap();
    assert_ne!(first, second);
    s.finish(&p, second, true, T0);
    assert_eq!(s.pick(&p, key, &[], Instant::from_secs(5)).unwrap(), second);
    s.finish(&p, second, true, T0);
    assert_eq!(
        s.pick(&p, key, &[], Instant::from_secs(11)).unwrap(),
        first,
        "back after the ejection"
    );
}

#[test]
fn retry_avoids_tried_endpoints_unless_nothing_else_is_usable() {
    let p = pool(&[1, 1], PoolPolicy::default());
    let mut s = PoolState::new(&p, T0);
    for _ in 0..4 {
        let i = s.pick(&p, 0, &[0], T0).unwrap();
        assert_eq!(i, 1);
        s.finish(&p, i, true, T0);
    }
    assert!(s.pick(&p, 0, &[0, 1], T0).is_ok());
}

fn checked(fail_open: bool) -> PoolPolicy {
    PoolPolicy {
        health: Some(HealthCheck {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(200),
            rise: 1,
            fall: 1,
            ..HealthCheck::default()
        }),
        fail_open,
        ..PoolPolicy::default()
    }
}

#[test]
fn scheduler_staggers_probes_and_reports_each_once_per_interval() {
    let p = pool(&[1, 1, 1, 1], checked(true));
    let mut s = PoolState::new(&p, T0);
    let due_at = |s: &mut PoolState, t: Instant| {
        let mut v = Vec::new();
        while let Some(pr) = s.next_due(&p, t) {
            v.push(pr.endpoint);
        }
        v
    };
    assert_eq!(due_at(&mut s, T0), vec![0]);
    assert_eq!(s.next_probe_at(&p), Some(Instant::from_millis(250)));
    assert_eq!(due_at(&mut s, Instant::from_millis(600)), vec![1, 2]);
    assert_eq!(
        due_at(&mut s, Instant::from_millis(700)),
        Vec::<usize>::new()
    );
    for i in 0..3 {
        s.record_result(&p, addr(i), true, Instant::from_millis(700));
    }
    assert_eq!(due_at(&mut s, Instant::from_millis(1000)), vec![0, 3]);
}

#[test]
fn failed_probes_take_an_endpoint_out_and_passing_ones_bring_it_back() {
    let p = pool(&[1, 1], checked(true));
    let mut s = PoolState::new(&p, T0);
    s.record_result(&p, addr(0), false, T0);
    for _ in 0..10 {
        let i = s.pick(&p, 0, &[], T0).unwrap();
        assert_eq!(i, 1);
        s.finish(&p, i, true, T0);
    }
    s.record_result(&p, addr(0), true, T0);
    let picks: Vec<usize> = (0..2)
        .map(|_| {
            let i = s.pick(&p, 0, &[], T0).unwrap();
            s.finish(&p, i, true, T0);
            i
        })
        .collect();
    assert!(picks.contains(&0));
    assert_eq!(s.stats(T0).ejections, 1);
}

#[test]
fn all_endpoints_down_fails_open_by_default_and_closed_when_configured() {
    for fail_open in [true, false] {
        let p = pool(&[1, 1], checked(fail_open));
        let mut s = PoolState::new(&p, T0);
        s.record_result(&p, addr(0), false, T0);
        s.record_result(&p, addr(1), false, T0);
        let r = s.pick(&p, 0, &[], T0);
        if fail_open {
            let i = r.unwrap();
            s.finish(&p, i, false, T0);
            assert_eq!(s.stats(T0).panic_picks, 1);
            let j = s.pick(&p, 0, &[i], T0).unwrap();
            assert_ne!(i, j, "panic picks rotate too");
        } else {
            assert_eq!(r, Err(PickError::NoHealthyEndpoint));
            assert_eq!(s.stats(T0).no_healthy, 1);
        }
    }
}

/// Two endpoints behind a breaker that opens after 2 failures in a row,
/// cools down for 1 s and lets one probe through half-open.
fn one_probe_breaker_pool() -> Upstream {
    pool(
        &[1, 1],
        PoolPolicy {
            breaker: Some(BreakerPolicy {
                consecutive_failures: 2,
                cooldown: Duration::from_secs(1),
                half_open_probes: 1,
                ..BreakerPolicy::default()
            }),
            ..PoolPolicy::default()
        },
    )
}

#[test]
fn open_breaker_refuses_picks_with_503_until_cooldown() {
    let p = one_probe_breaker_pool();
    let mut s = PoolState::new(&p, T0);
    for _ in 0..2 {
        let i = s.pick(&p, 0, &[], T0).unwrap();
        s.finish(&p, i, false, T0);
    }
    assert_eq!(s.pick(&p, 0, &[], T0), Err(PickError::BreakerOpen));
    let t = Instant::from_secs(1);
    let probe = s.pick(&p, 0, &[], t).unwrap();
    assert_eq!(
        s.pick(&p, 0, &[], t),
        Err(PickError::BreakerOpen),
        "one probe at a time"
    );
    // A probe that was never sent gives its slot back.
    s.cancel(&p, probe, t, t);
    let probe = s.pick(&p, 0, &[], t).unwrap();
    s.finish(&p, probe, true, t);
    assert_eq!(s.breaker_state(t), BreakerState::Closed);
    let st = s.stats(t);
    assert_eq!(
        (st.breaker_opens, st.breaker_rejected, st.breaker_open),
        (1, 2, 0)
    );
}

#[test]
fn cancel_of_a_pick_made_before_half_open_gives_back_no_probe_slot() {
    let p = one_probe_breaker_pool();
    let mut s = PoolState::new(&p, T0);
    // Picked while closed, still unsent when the breaker trips.
    let early = s.pick(&p, 0, &[], T0).unwrap();
    for _ in 0..2 {
        let i = s.pick(&p, 0, &[], T0).unwrap();
        s.finish(&p, i, false, T0);
    }
    let t = Instant::from_secs(1);
    let probe = s.pick(&p, 0, &[], t).unwrap();
    // The early pick is given back in the half-open phase: it held no
    // probe slot of this phase, so the one probe stays the only one.
    s.cancel(&p, early, T0, t);
    assert_eq!(
        s.pick(&p, 0, &[], t),
        Err(PickError::BreakerOpen),
        "still one probe at a time"
    );
    s.cancel(&p, probe, t, t);
    assert!(
        s.pick(&p, 0, &[], t).is_ok(),
        "the probe's own slot comes back"
    );
}

#[test]
fn retries_respect_attempts_rule_and_budget() {
    let p = pool(
        &[1, 1],
        PoolPolicy {
            retry: RetryPolicy {
                attempts: 2,
                budget_percent: 10,
                min_per_sec: 0,
                window: Duration::from_secs(10),
            },
            ..PoolPolicy::default()
        },
    );
    let mut s = PoolState::new(&p, T0);
    for _ in 0..20 {
        s.begin_request(&p, T0);
    }
    // A refused connect: the upstream never saw the request.
    let e = true;
    assert_eq!(
        s.retry(&p, 1, "POST", RequestBody::None, e, T0),
        Err(RetryDenied::NotRetryable)
    );
    assert_eq!(
        s.retry(&p, 2, "GET", RequestBody::None, e, T0),
        Err(RetryDenied::AttemptsExhausted)
    );
    assert_eq!(s.retry(&p, 1, "GET", RequestBody::None, e, T0), Ok(()));
    assert_eq!(s.retry(&p, 1, "GET", RequestBody::None, e, T0), Ok(()));
    assert_eq!(
        s.retry(&p, 1, "GET", RequestBody::None, e, T0),
        Err(RetryDenied::BudgetExhausted),
        "10 % of 20 requests"
    );
    let st = s.stats(T0);
    assert_eq!(
        (st.requests, st.retries, st.retries_denied_budget),
        (20, 2, 1)
    );
}

#[test]
fn registry_carries_state_across_a_reload_by_name_and_address() {
    let policy = checked(true);
    let old = Arc::new(pool(&[1, 1, 1], policy.clone()));
    let other = Arc::new(Upstream::new(
        "q",
        1,
        &[Endpoint::new(addr(9))],
        PoolPolicy::default(),
    ));
    let mut reg = UpstreamRegistry::new();
    reg.sync(&[old.clone(), other.clone()], T0);
    reg.pool_mut(&old)
        .unwrap()
        .record_result(&old, addr(1), false, T0);
    reg.pool_mut(&other).unwrap().begin_request(&other, T0);

    // New snapshot: pools swap places, `p` loses endpoint 0 and gains 3.
    let eps = [
        Endpoint::new(addr(3)),
        Endpoint::new(addr(1)),
        Endpoint::new(addr(2)),
    ];
    let new_p = Arc::new(Upstream::new("p", 1, &eps, policy));
    let new_q = Arc::new(Upstream::new(
        "q",
        0,
        &[Endpoint::new(addr(9))],
        PoolPolicy::default(),
    ));
    reg.sync(&[new_q.clone(), new_p.clone()], T0);
    let s = reg.pool_mut(&new_p).unwrap();
    assert_eq!(s.name, "p");
    let health: Vec<(SocketAddr, bool)> = s
        .endpoints
        .iter()
        .map(|e| (e.addr, e.health.usable(T0)))
        .collect();
    assert_eq!(
        health,
        vec![(addr(3), true), (addr(1), false), (addr(2), true)]
    );
    assert_eq!(reg.pool(&new_q).unwrap().stats.requests, 1);
    // A pool of the old snapshot still in flight finds its state by name,
    // and its endpoint by address.
    let s = reg.pool_mut(&old).unwrap();
    assert_eq!(s.name, "p");
    let i = s.pick(&new_p, 0, &[], T0).unwrap();
    s.finish(&old, 2, true, T0);
    let _ = i;
    let st = reg.stats(T0);
    assert_eq!(st.pool("p").unwrap().endpoints.len(), 3);
    let mut out = String::new();
    st.render(&mut out);
    assert!(
        out.contains("pool_p_endpoint_10.0.1.2:8080_healthy 0\n"),
        "{out}"
    );
    assert!(out.contains("pool_q_requests 1\n"), "{out}");
    // Removed pools are gone.
    reg.sync(
        &[Arc::new(Upstream::new(
            "q",
            0,
            &[Endpoint::new(addr(9))],
            PoolPolicy::default(),
        ))],
        T0,
    );
    assert!(reg.pool(&new_p).is_none());
}

#[test]
fn removing_health_checks_on_reload_puts_endpoints_back() {
    let p = Arc::new(pool(&[1], checked(false)));
    let mut reg = UpstreamRegistry::new();
    reg.sync(std::slice::from_ref(&p), T0);
    reg.pool_mut(&p)
        .unwrap()
        .record_result(&p, addr(0), false, T0);
    assert!(reg.pool_mut(&p).unwrap().pick(&p, 0, &[], T0).is_err());
    let q = Arc::new(pool(
        &[1],
        PoolPolicy {
            fail_open: false,
            ..PoolPolicy::default()
        },
    ));
    reg.sync(std::slice::from_ref(&q), T0);
    assert!(reg.pool_mut(&q).unwrap().pick(&q, 0, &[], T0).is_ok());
}
