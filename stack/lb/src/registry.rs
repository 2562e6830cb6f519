//! Per-worker runtime state of the pools, keyed by pool name and endpoint
//! address so it survives snapshot swaps.

use std::net::SocketAddr;
use std::sync::Arc;

use super::balance::{least_conn, round_robin, smooth_weighted};
use super::breaker::{BreakerState, CircuitBreaker};
use super::health::{EndpointHealth, Probe};
use super::retry::{RequestBody, RetryBudget, RetryDenied, may_retry};
use super::stats::{EndpointStats, PoolStats, UpstreamStats};
use super::{Balancer, micros};
use crate::Upstream;
use ferrogate_net::Instant;

/// Why no endpoint was picked. Both answer 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    #[error("the pool's circuit breaker is open")]
    BreakerOpen,
    #[error("no healthy endpoint in the pool")]
    NoHealthyEndpoint,
}

/// Runtime state of one endpoint.
#[derive(Debug, Clone)]
pub struct EndpointState {
    pub addr: SocketAddr,
    pub health: EndpointHealth,
    /// Attempts started and not finished (least-connections).
    pub in_flight: u32,
    pub stats: EndpointStats,
}

/// Balancer cursors (reset when the endpoint list changes).
#[derive(Debug, Clone, Default)]
struct Cursors {
    next: usize,
    swrr: Vec<i64>,
}

/// Runtime state of one pool in one worker.
#[derive(Debug, Clone)]
pub struct PoolState {
    pub name: String,
    /// Aligned with `Upstream::endpoints` of the snapshot last synced.
    pub endpoints: Vec<EndpointState>,
    cursors: Cursors,
    pub breaker: CircuitBreaker,
    pub retry_budget: RetryBudget,
    /// Pool-wide counters (per-endpoint ones live in `endpoints`).
    pub stats: PoolStats,
}

impl PoolState {
    pub fn new(pool: &Upstream, now: Instant) -> Self {
        let mut s = Self {
            name: pool.name.clone(),
            endpoints: Vec::new(),
            cursors: Cursors::default(),
            breaker: CircuitBreaker::default(),
            retry_budget: RetryBudget::default(),
            stats: PoolStats::default(),
        };
        s.realign(pool, Vec::new(), now);
        s
    }

    /// Takes `pool`'s endpoint list, reusing the state of `old` endpoints
    /// with the same address.
    fn realign(&mut self, pool: &Upstream, mut old: Vec<EndpointState>, now: Instant) {
        let n = pool.endpoints.len();
        let interval = pool
            .policy
            .health
            .as_ref()
            .map_or(0, |h| micros(h.interval));
        self.endpoints = pool
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, &addr)| {
                let mut e = match old.iter().position(|e| e.addr == addr) {
                    Some(j) => old.swap_remove(j),
                    None => {
                        // Stagger first probes over one interval.
                        let first = now.total_micros() + interval * i as i64 / n.max(1) as i64;
                        EndpointState {
                            addr,
                            health: EndpointHealth::new(Instant::from_micros(first)),
                            in_flight: 0,
                            stats: EndpointStats::new(addr),
                        }
                    }
                };
                if pool.policy.health.is_none() {
                    // Without checks, active health is not a reason to skip.
                    e.health.active_up = true;
                }
                e
            })
            .collect();
        self.cursors = Cursors {
            next: self.cursors.next,
            swrr: vec![0; n],
        };
    }

    /// Index of `ep` in the current endpoint list: `ep` itself when the
    /// caller's snapshot is the synced one, else found by address.
    fn slot(&self, pool: &Upstream, ep: usize) -> Option<usize> {
        let addr = *pool.endpoints.get(ep)?;
        if self.endpoints.get(ep).is_some_and(|e| e.addr == addr) {
            return Some(ep);
        }
        self.endpoints.iter().position(|e| e.addr == addr)
    }

    /// Counts a new request (its first attempt) for the pool and its retry
    /// budget.
    pub fn begin_request(&mut self, pool: &Upstream, now: Instant) {
        self.stats.requests += 1;
        self.retry_budget.record_request(&pool.policy.retry, now);
    }

    /// Chooses the endpoint (an index into `pool.endpoints`) for an attempt.
    /// `key` is the request's hash (`HashOn::key`) for hash pools, ignored by
    /// the others; `tried` lists endpoints this request already failed on:
    /// they are avoided unless nothing else is usable. No allocation.
    ///
    /// Every `Ok` must be followed by [`Self::finish`] or [`Self::cancel`]
    /// (a half-open breaker counts its probes that way).
    pub fn pick(
        &mut self,
        pool: &Upstream,
        key: u64,
        tried: &[usize],
        now: Instant,
    ) -> Result<usize, PickError> {
        let eps = &self.endpoints;
        let cursors = &mut self.cursors;
        let usable = |i: usize| eps.get(i).is_some_and(|e| e.health.usable(now));
        let mut choice = select(pool, cursors, eps, key, |i| {
            usable(i) && !tried.contains(&i)
        })
        .or_else(|| select(pool, cursors, eps, key, usable));
        if choice.is_none() && pool.policy.fail_open && !pool.endpoints.is_empty() {
            choice = select(pool, cursors, eps, key, |i| !tried.contains(&i))
                .or_else(|| select(pool, cursors, eps, key, |_| true));
            if choice.is_some() {
                self.stats.panic_picks += 1;
            }
        }
        let Some(i) = choice else {
            self.stats.no_healthy += 1;
            return Err(PickError::NoHealthyEndpoint);
        };
        if let Some(b) = &pool.policy.breaker
            && !self.breaker.allow(b, now)
        {
            self.stats.breaker_rejected += 1;
            return Err(PickError::BreakerOpen);
        }
        if let Some(e) = self.endpoints.get_mut(i) {
            e.in_flight += 1;
            e.stats.attempts += 1;
        }
        Ok(i)
    }

    /// Whether endpoint `ep` is in rotation (healthy, not ejected): a
    /// connection to one that is not goes back to no pool.
    pub fn usable(&self, pool: &Upstream, ep: usize, now: Instant) -> bool {
        self.slot(pool, ep)
            .is_some_and(|i| self.endpoints[i].health.usable(now))
    }

    /// Reports the outcome of an attempt `pick` returned: `ok` false for a
    /// connect failure, timeout, reset or 502/503/504 from the endpoint.
    /// Drives passive ejection and the breaker. True when this ejected the
    /// endpoint.
    pub fn finish(&mut self, pool: &Upstream, ep: usize, ok: bool, now: Instant) -> bool {
        if let Some(b) = &pool.policy.breaker {
            self.breaker.record(b, ok, now);
        }
        let Some(i) = self.slot(pool, ep) else {
            return false;
        };
        let e = &mut self.endpoints[i];
        e.in_flight = e.in_flight.saturating_sub(1);
        if !ok {
            e.stats.failures += 1;
        }
        if e.health
            .request_result(pool.policy.passive.as_ref(), ok, now)
        {
            e.stats.ejections += 1;
            self.stats.ejections += 1;
            return true;
        }
        false
    }

    /// Gives back a pick made at `picked_at` that was never sent (e.g. no
    /// local port): frees its in-flight slot and, if it took one, a
    /// half-open probe slot, without judging anyone.
    pub fn cancel(&mut self, pool: &Upstream, ep: usize, picked_at: Instant, now: Instant) {
        if let Some(i) = self.slot(pool, ep) {
            let e = &mut self.endpoints[i];
            e.in_flight = e.in_flight.saturating_sub(1);
            e.stats.attempts = e.stats.attempts.saturating_sub(1);
        }
        if pool.policy.breaker.is_some() && self.breaker.state(now) == BreakerState::HalfOpen {
            self.breaker.release_probe(picked_at);
        }
    }

    /// Whether a failed attempt may be retried, taking one retry from the
    /// pool's budget if so. `attempts` counts the tries made so far.
    pub fn retry(
        &mut self,
        pool: &Upstream,
        attempts: u32,
        method: &str,
        body: RequestBody,
        upstream_untouched: bool,
        now: Instant,
    ) -> Result<(), RetryDenied> {
        if !may_retry(method, body, upstream_untouched) {
            return Err(RetryDenied::NotRetryable);
        }
        if attempts >= pool.policy.retry.attempts {
            return Err(RetryDenied::AttemptsExhausted);
        }
        if !self.retry_budget.try_take(&pool.policy.retry, now) {
            self.stats.retries_denied_budget += 1;
            return Err(RetryDenied::BudgetExhausted);
        }
        self.stats.retries += 1;
        Ok(())
    }

    /// The next active health probe due at `now`, if any; marks it in flight
    /// and schedules the following one. Call until `None`.
    pub fn next_due(&mut self, pool: &Upstream, now: Instant) -> Option<Probe> {
        let check = pool.policy.health.as_ref()?;
        let (i, e) = self
            .endpoints
            .iter_mut()
            .enumerate()
            .find(|(_, e)| e.health.probe_due(now))?;
        let deadline = e.health.start_probe(check, now);
        self.stats.probes += 1;
        Some(Probe {
            endpoint: i,
            addr: e.addr,
            deadline,
        })
    }

    /// When the next probe falls due (for the worker's timer), if checks are
    /// configured and one is not already in flight everywhere.
    pub fn next_probe_at(&self, pool: &Upstream) -> Option<Instant> {
        pool.policy.health.as_ref()?;
        self.endpoints
            .iter()
            .filter_map(|e| e.health.next_probe())
            .min()
    }

    /// Reports a probe result (`ok`: connected for TCP checks, status in
    /// `expect_status` for HTTP). By address, so a probe that straddled a
    /// reload still lands.
    /// True when this took the endpoint out of rotation.
    pub fn record_result(
        &mut self,
        pool: &Upstream,
        addr: SocketAddr,
        ok: bool,
        _now: Instant,
    ) -> bool {
        let Some(check) = pool.policy.health.as_ref() else {
            return false;
        };
        let Some(e) = self.endpoints.iter_mut().find(|e| e.addr == addr) else {
            return false;
        };
        if !ok {
            self.stats.probe_failures += 1;
        }
        if e.health.probe_result(check, ok) && !e.health.active_up {
            e.stats.ejections += 1;
            self.stats.ejections += 1;
            return true;
        }
        false
    }

    pub fn breaker_state(&self, now: Instant) -> BreakerState {
        self.breaker.state(now)
    }

    /// Counters with gauges filled in (health, in-flight, breaker).
    pub fn stats(&self, now: Instant) -> PoolStats {
        let mut s = self.stats.clone();
        s.breaker_opens = self.breaker.opens;
        s.breaker_open = u64::from(self.breaker.state(now) != BreakerState::Closed);
        s.endpoints = self
            .endpoints
            .iter()
            .map(|e| EndpointStats {
                in_flight: u64::from(e.in_flight),
                healthy: u64::from(e.health.usable(now)),
                ..e.stats
            })
            .collect();
        s
    }
}

/// The balancer's choice among endpoints `ok` admits.
fn select(
    pool: &Upstream,
    cursors: &mut Cursors,
    eps: &[EndpointState],
    key: u64,
    ok: impl Fn(usize) -> bool,
) -> Option<usize> {
    let n = pool.endpoints.len().min(eps.len());
    if n == 0 {
        return None;
    }
    match &pool.policy.balancer {
        Balancer::RoundRobin => round_robin(&mut cursors.next, n, ok),
        Balancer::Weighted => {
            let w = &pool.weights[..n];
            smooth_weighted(&mut cursors.swrr[..n], w, ok)
        }
        Balancer::LeastConn => least_conn(
            &mut cursors.next,
            |i| eps[i].in_flight,
            &pool.weights[..n],
            ok,
        ),
        Balancer::Hash(_) => match &pool.maglev {
            Some(m) => m.pick(key, |i| i < n && ok(i)),
            None => round_robin(&mut cursors.next, n, ok),
        },
    }
}

/// Every pool's state in one worker, aligned with the snapshot last synced:
/// `Upstream::index` finds a pool's state in O(1).
#[derive(Debug, Clone, Default)]
pub struct UpstreamRegistry {
    pools: Vec<PoolState>,
}

impl UpstreamRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adopts a new snapshot's pools (`RouteTable::upstreams`): state of
    /// pools with the same name and endpoints with the same address is
    /// carried over; new ones start fresh (healthy, breaker closed); removed
    /// ones are dropped. Off the data path (allocates).
    pub fn sync(&mut self, upstreams: &[Arc<Upstream>], now: Instant) {
        let mut old = std::mem::take(&mut self.pools);
        self.pools = upstreams
            .iter()
            .map(|u| match old.iter().position(|p| p.name == u.name) {
                Some(j) => {
                    let mut p = old.swap_remove(j);
                    let eps = std::mem::take(&mut p.endpoints);
                    p.realign(u, eps, now);
                    p
                }
                None => PoolState::new(u, now),
            })
            .collect();
    }

    /// The state of `pool`: O(1) by its index when `pool` comes from the
    /// synced snapshot; by name for a pool of an older snapshot still in use;
    /// `None` for a pool that no longer exists.
    pub fn pool_mut(&mut self, pool: &Upstream) -> Option<&mut PoolState> {
        let i = match self.pools.get(pool.index) {
            Some(p) if p.name == pool.name => pool.index,
            _ => self.pools.iter().position(|p| p.name == pool.name)?,
        };
        Some(&mut self.pools[i])
    }

    pub fn pool(&self, pool: &Upstream) -> Option<&PoolState> {
        match self.pools.get(pool.index) {
            Some(p) if p.name == pool.name => Some(p),
            _ => self.pools.iter().find(|p| p.name == pool.name),
        }
    }

    pub fn pools(&self) -> &[PoolState] {
        &self.pools
    }

    /// Earliest probe due over `upstreams` (the synced snapshot's pools).
    pub fn next_probe_at(&self, upstreams: &[Arc<Upstream>]) -> Option<Instant> {
        upstreams
            .iter()
            .filter_map(|u| self.pool(u).and_then(|p| p.next_probe_at(u)))
            .min()
    }

    /// This worker's counters of every pool, gauges filled in.
    pub fn stats(&self, now: Instant) -> UpstreamStats {
        UpstreamStats {
            pools: self
                .pools
                .iter()
                .map(|p| (p.name.clone(), p.stats(now)))
                .collect(),
        }
    }
}
