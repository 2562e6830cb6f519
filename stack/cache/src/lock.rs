//! Request coalescing (Pingora's cache lock), sans-IO.
//!
//! The first request for a key that is not servable from the cache gets a
//! [`FetchPermit`]: it alone goes upstream. Later ones get a [`WaitTicket`]
//! with the caller's deadline and poll it (one atomic load per poll; a
//! worker polls its waiting requests when it runs its timers). The permit
//! ends in one of three ways:
//!
//! * [`FetchPermit::stored`]: the response is being stored; waiters get
//!   [`Wait::Ready`] and look the key up again (they stream the object
//!   while it is still arriving).
//! * [`FetchPermit::uncacheable`]: waiters get [`Wait::GoUpstream`] and
//!   fetch for themselves (no one waits on an answer that will not be stored).
//! * dropped (the fetching request died): exactly one waiter gets
//!   [`Wait::TakeOver`] with a new permit; the rest keep waiting.
//!
//! A waiter past its deadline gets [`Wait::TimedOut`] and goes upstream
//! without the lock. A permit held longer than [`LockConfig::max_lock_age`]
//! counts as abandoned: the next waiter to poll (or a newcomer) takes it
//! over, and the old holder's release does nothing.
//!
//! **Hit-for-pass.** A key whose fetch turned out uncacheable is remembered
//! for [`LockConfig::hit_for_pass`]: [`CacheLocks::hit_for_pass`] is then
//! true and the request goes upstream without the lock, making nobody
//! wait (bounded: [`LockConfig::max_pass_keys`], oldest forgotten first).
//!
//! Only requests that may store take the lock: HEAD, `no-store` and Range
//! requests never do (see [`crate::RequestDecision::takes_lock`]); nobody
//! should wait for a fetch that stores nothing. Locks live in sharded maps; a map lock is held only
//! to insert or remove an entry, never while waiting.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use foldhash::fast::FixedState;

const FETCHING: u8 = 0;
const STORED: u8 = 1;
const UNCACHEABLE: u8 = 2;
const ABANDONED: u8 = 3;

#[derive(Debug)]
struct LockState {
    state: AtomicU8,
    waiters: AtomicUsize,
    /// Bumped by every take-over: a permit whose epoch is old was superseded.
    epoch: AtomicU64,
    /// When the current holder got the permit (see `CacheLocks::ticks`; 0:
    /// not known yet, set by the first waiter's poll).
    started: AtomicU64,
}

impl LockState {
    fn new(started: u64) -> Arc<Self> {
        Arc::new(LockState {
            state: AtomicU8::new(FETCHING),
            waiters: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            started: AtomicU64::new(started),
        })
    }
}

#[derive(Default)]
struct Shard {
    locks: HashMap<u128, Arc<LockState>, FixedState>,
    /// Hit-for-pass keys and until when; `pass_order` is their FIFO.
    pass: HashMap<u128, Instant, FixedState>,
    pass_order: VecDeque<(u128, Instant)>,
}

impl Shard {
    fn passing(&mut self, key: u128, now: Instant) -> bool {
        match self.pass.get(&key) {
            Some(&until) if now < until => true,
            Some(_) => {
                self.pass.remove(&key);
                false
            }
            None => false,
        }
    }

    fn add_pass(&mut self, key: u128, until: Instant, cap: usize) {
        if cap == 0 {
            return;
        }
        self.pass.insert(key, until);
        self.pass_order.push_back((key, until));
        while self.pass_order.len() > cap {
            let Some((k, u)) = self.pass_order.pop_front() else {
                break;
            };
            // Forget the key only if this record is its latest.
            if self.pass.get(&k) == Some(&u) {
                self.pass.remove(&k);
            }
        }
    }
}

/// Sizing and timing of [`CacheLocks`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockConfig {
    /// Number of shards (rounded up to a power of two).
    pub shards: usize,
    /// A permit held longer than this is abandoned (its fetch hangs): a
    /// waiter or newcomer takes over. `None`: never.
    pub max_lock_age: Option<Duration>,
    /// How long a key whose fetch was uncacheable goes upstream without the
    /// lock ([`CacheLocks::hit_for_pass`]). Zero: off.
    pub hit_for_pass: Duration,
    /// Most hit-for-pass keys remembered (the oldest are forgotten first).
    pub max_pass_keys: usize,
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig {
            shards: 16,
            max_lock_age: Some(Duration::from_secs(30)),
            hit_for_pass: Duration::from_secs(10),
            max_pass_keys: 16 * 1024,
        }
    }
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    max_age: Option<Duration>,
    pass_ttl: Duration,
    pass_cap: usize,
    /// The first time the caller passed in: times are kept as nanoseconds
    /// since then (atomics cannot hold an `Instant`).
    base: OnceLock<Instant>,
}

/// The cache locks of one engine (shared by its workers; cloning is cheap).
#[derive(Clone)]
pub struct CacheLocks {
    inner: Arc<Inner>,
}

/// The outcome of [`CacheLocks::acquire`].
#[derive(Debug)]
pub enum Acquired {
    /// Fetch from upstream; release the permit when the answer is known.
    Fetch(FetchPermit),
    /// Another request is fetching: wait.
    Wait(WaitTicket),
}

/// What a waiter should do now.
#[derive(Debug)]
pub enum Wait {
    Pending,
    /// The fetcher is storing the response: look it up again.
    Ready,
    /// The response is not cacheable: go upstream without the lock.
    GoUpstream,
    /// The fetcher gave up (or held the lock past the maximum lock age);
    /// this request fetches now.
    TakeOver(FetchPermit),
    /// The deadline passed: go upstream without the lock.
    TimedOut,
}

/// The right (and duty) to fetch a key.
#[derive(Debug)]
pub struct FetchPermit {
    locks: CacheLocks,
    key: u128,
    lock: Arc<LockState>,
    epoch: u64,
    done: bool,
}

/// A place in the queue for a key being fetched.
#[derive(Debug)]
pub struct WaitTicket {
    locks: CacheLocks,
    key: u128,
    lock: Arc<LockState>,
    deadline: Instant,
    left: bool,
}

impl std::fmt::Debug for CacheLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLocks")
            .field("shards", &self.inner.shards.len())
            .finish()
    }
}

impl Default for CacheLocks {
    fn default() -> Self {
        Self::with_config(&LockConfig::default())
    }
}

impl CacheLocks {
    /// Locks with `shards` shards and the other settings of
    /// [`LockConfig::default`].
    pub fn new(shards: usize) -> Self {
        Self::with_config(&LockConfig {
            shards,
            ..LockConfig::default()
        })
    }

    pub fn with_config(cfg: &LockConfig) -> Self {
        let n = cfg.shards.max(1).next_power_of_two();
        CacheLocks {
            inner: Arc::new(Inner {
                shards: (0..n).map(|_| Mutex::new(Shard::default())).collect(),
                max_age: cfg.max_lock_age,
                pass_ttl: cfg.hit_for_pass,
                pass_cap: cfg.max_pass_keys.div_ceil(n),
                base: OnceLock::new(),
            }),
        }
    }

    fn map(&self, key: u128) -> MutexGuard<'_, Shard> {
        let m = &self.inner.shards[(key >> 100) as usize & (self.inner.shards.len() - 1)];
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `t` as a non-zero tick count.
    fn ticks(&self, t: Instant) -> u64 {
        let base = *self.inner.base.get_or_init(|| t);
        u64::try_from(t.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    fn instant(&self, ticks: u64) -> Option<Instant> {
        let base = self.inner.base.get()?;
        (ticks != 0).then(|| *base + Duration::from_nanos(ticks - 1))
    }

    /// Whether the holder of `l` has held it past the maximum lock age.
    fn expired(&self, l: &LockState, now: Instant) -> bool {
        let (Some(max), Some(started)) = (
            self.inner.max_age,
            self.instant(l.started.load(Ordering::Acquire)),
        ) else {
            return false;
        };
        now.saturating_duration_since(started) > max
    }

    /// Whether `key`'s last fetch was uncacheable less than
    /// [`LockConfig::hit_for_pass`] ago: then go upstream without the lock
    /// (and store the response if it turns out storable after all). Check
    /// before [`CacheLocks::acquire_at`].
    pub fn hit_for_pass(&self, key: u128, now: Instant) -> bool {
        self.map(key).passing(key, now)
    }

    /// Takes the lock for `key` (a primary key hash), or a ticket to wait
    /// until `deadline`. Prefer [`CacheLocks::acquire_at`]: without the
    /// time, a lock's age counts from its first waiter's poll.
    pub fn acquire(&self, key: u128, deadline: Instant) -> Acquired {
        self.acquire_inner(key, None, deadline)
    }

    /// [`CacheLocks::acquire`] at `now` (the caller's clock): also takes
    /// over a lock held past the maximum lock age.
    pub fn acquire_at(&self, key: u128, now: Instant, deadline: Instant) -> Acquired {
        self.acquire_inner(key, Some(now), deadline)
    }

    fn acquire_inner(&self, key: u128, now: Option<Instant>, deadline: Instant) -> Acquired {
        let started = now.map_or(0, |t| self.ticks(t));
        let mut map = self.map(key);
        if let Some(l) = map.locks.get(&key) {
            // An abandoned lock nobody has taken over yet, or one held too
            // long: take it.
            let abandoned = l
                .state
                .compare_exchange(ABANDONED, FETCHING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if abandoned || now.is_some_and(|t| self.expired(l, t)) {
                // Still under the map lock: one newcomer or waiter wins.
                let lock = Arc::clone(l);
                return Acquired::Fetch(self.take_over(key, lock, started));
            }
            l.waiters.fetch_add(1, Ordering::AcqRel);
            let lock = Arc::clone(l);
            return Acquired::Wait(WaitTicket {
                locks: self.clone(),
                key,
                lock,
                deadline,
                left: false,
            });
        }
        let lock = LockState::new(started);
        map.locks.insert(key, Arc::clone(&lock));
        Acquired::Fetch(FetchPermit {
            locks: self.clone(),
            key,
            lock,
            epoch: 0,
            done: false,
        })
    }

    /// A new permit for `lock` (its state already FETCHING): the previous
    /// holder's permit is superseded.
    fn take_over(&self, key: u128, lock: Arc<LockState>, started: u64) -> FetchPermit {
        let epoch = lock.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        lock.started.store(started, Ordering::Release);
        FetchPermit {
            locks: self.clone(),
            key,
            lock,
            epoch,
            done: false,
        }
    }

    /// Keys with a lock entry (for tests and stats).
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).locks.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys remembered for hit-for-pass (for tests and stats).
    pub fn pass_len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).pass.len())
            .sum()
    }
}

impl FetchPermit {
    /// Ends the permit; `pass_from`: remember the key for hit-for-pass
    /// from then. Does nothing if the permit was superseded by a take-over.
    fn release(mut self, state: u8, pass_from: Option<Instant>) {
        self.done = true;
        let locks = self.locks.clone();
        let mut map = locks.map(self.key);
        if self.lock.epoch.load(Ordering::Acquire) != self.epoch {
            return;
        }
        // Remove first so new arrivals look the cache up (or fetch) afresh;
        // then publish the outcome to the waiters holding the state.
        if map
            .locks
            .get(&self.key)
            .is_some_and(|l| Arc::ptr_eq(l, &self.lock))
        {
            map.locks.remove(&self.key);
        }
        if let Some(t) = pass_from
            && !locks.inner.pass_ttl.is_zero()
        {
            map.add_pass(self.key, t + locks.inner.pass_ttl, locks.inner.pass_cap);
        }
        self.lock.state.store(state, Ordering::Release);
    }

    /// The response is being stored: waiters look it up again.
    pub fn stored(self) {
        self.release(STORED, None)
    }

    /// The response will not be stored: waiters go upstream themselves,
    /// and the key is hit-for-pass from when this permit was taken (if
    /// known). Prefer [`FetchPermit::uncacheable_at`].
    pub fn uncacheable(self) {
        let from = self
            .locks
            .instant(self.lock.started.load(Ordering::Acquire));
        self.release(UNCACHEABLE, from)
    }

    /// [`FetchPermit::uncacheable`]; the key is hit-for-pass from `now`.
    pub fn uncacheable_at(self, now: Instant) {
        self.release(UNCACHEABLE, Some(now))
    }

    pub fn key(&self) -> u128 {
        self.key
    }
}

impl Drop for FetchPermit {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Under the map lock so that an arriving request either sees the
        // entry abandoned (and takes it) or counts as a waiter first.
        let mut map = self.locks.map(self.key);
        if self.lock.epoch.load(Ordering::Acquire) != self.epoch {
            return;
        }
        self.lock.state.store(ABANDONED, Ordering::Release);
        if self.lock.waiters.load(Ordering::Acquire) == 0
            && map
                .locks
                .get(&self.key)
                .is_some_and(|l| Arc::ptr_eq(l, &self.lock))
        {
            map.locks.remove(&self.key);
        }
    }
}

impl WaitTicket {
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Checks the lock at `now` (the caller's clock).
    pub fn poll(&mut self, now: Instant) -> Wait {
        if self.left {
            return Wait::GoUpstream;
        }
        match self.lock.state.load(Ordering::Acquire) {
            STORED => self.leave(Wait::Ready),
            UNCACHEABLE => self.leave(Wait::GoUpstream),
            ABANDONED
                if self
                    .lock
                    .state
                    .compare_exchange(ABANDONED, FETCHING, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok() =>
            {
                self.left = true;
                self.lock.waiters.fetch_sub(1, Ordering::AcqRel);
                let started = self.locks.ticks(now);
                Wait::TakeOver(
                    self.locks
                        .take_over(self.key, Arc::clone(&self.lock), started),
                )
            }
            FETCHING if self.locks.inner.max_age.is_some() => {
                if self.lock.started.load(Ordering::Acquire) == 0 {
                    // Taken without a time (`acquire`): its age counts from now.
                    let t = self.locks.ticks(now);
                    let _ = self.lock.started.compare_exchange(
                        0,
                        t,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                } else if self.locks.expired(&self.lock, now)
                    && let Some(p) = self.take_expired(now)
                {
                    return Wait::TakeOver(p);
                }
                self.check_deadline(now)
            }
            _ => self.check_deadline(now),
        }
    }

    fn check_deadline(&mut self, now: Instant) -> Wait {
        if now >= self.deadline {
            self.leave(Wait::TimedOut)
        } else {
            Wait::Pending
        }
    }

    /// Takes over a lock held past the maximum age (under the map lock, so
    /// exactly one waiter or newcomer wins).
    fn take_expired(&mut self, now: Instant) -> Option<FetchPermit> {
        let locks = self.locks.clone();
        let map = locks.map(self.key);
        let current = map
            .locks
            .get(&self.key)
            .is_some_and(|l| Arc::ptr_eq(l, &self.lock));
        if !current
            || self.lock.state.load(Ordering::Acquire) != FETCHING
            || !locks.expired(&self.lock, now)
        {
            return None;
        }
        self.left = true;
        self.lock.waiters.fetch_sub(1, Ordering::AcqRel);
        let p = locks.take_over(self.key, Arc::clone(&self.lock), locks.ticks(now));
        drop(map);
        Some(p)
    }

    fn leave(&mut self, w: Wait) -> Wait {
        self.depart();
        w
    }

    fn depart(&mut self) {
        if self.left {
            return;
        }
        self.left = true;
        // Under the map lock, so a newcomer cannot take the abandoned lock
        // between our check and the removal.
        let mut map = self.locks.map(self.key);
        let before = self.lock.waiters.fetch_sub(1, Ordering::AcqRel);
        let abandoned = self.lock.state.load(Ordering::Acquire) == ABANDONED;
        if before == 1
            && abandoned
            && map
                .locks
                .get(&self.key)
                .is_some_and(|l| Arc::ptr_eq(l, &self.lock))
        {
            // The last waiter of an abandoned lock: nobody will take it over.
            map.locks.remove(&self.key);
        }
    }
}

impl Drop for WaitTicket {
    fn drop(&mut self) {
        self.depart();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::time::Duration;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[test]
    fn first_fetches_others_wait_then_ready() {
        let l = CacheLocks::new(4);
        let Acquired::Fetch(p) = l.acquire(1, far()) else {
            panic!("first must fetch")
        };
        let Acquired::Wait(mut w) = l.acquire(1, far()) else {
            panic!("second must wait")
        };
        assert!(
            matches!(l.acquire(2, far()), Acquired::Fetch(_)),
            "other keys are independent"
        );
        assert!(matches!(w.poll(Instant::now()), Wait::Pending));
        p.stored();
        assert!(matches!(w.poll(Instant::now()), Wait::Ready));
        assert!(
            matches!(l.acquire(1, far()), Acquired::Fetch(_)),
            "released: the next request fetches (or hits)"
        );
    }

    #[test]
    fn uncacheable_releases_waiters_upstream() {
        let l = CacheLocks::new(1);
        let Acquired::Fetch(p) = l.acquire(7, far()) else {
            panic!()
        };
        let mut ws: Vec<WaitTicket> = (0..5)
            .map(|_| match l.acquire(7, far()) {
                Acquired::Wait(w) => w,
                _ => panic!(),
            })
            .collect();
        p.uncacheable();
        for w in &mut ws {
            assert!(matches!(w.poll(Instant::now()), Wait::GoUpstream));
        }
        drop(ws);
        assert!(l.is_empty());
    }

    #[test]
    fn deadline_is_the_callers() {
        let l = CacheLocks::new(1);
        let t0 = Instant::now();
        let _p = l.acquire(3, far());
        let Acquired::Wait(mut w) = l.acquire(3, t0 + Duration::from_secs(5)) else {
            panic!()
        };
        assert!(matches!(w.poll(t0 + Duration::from_secs(4)), Wait::Pending));
        assert!(matches!(
            w.poll(t0 + Duration::from_secs(5)),
            Wait::TimedOut
        ));
    }

    #[test]
    fn dropped_fetcher_hands_over_to_exactly_one_waiter() {
        let l = CacheLocks::new(2);
        let Acquired::Fetch(p) = l.acquire(9, far()) else {
            panic!()
        };
        let mut ws: Vec<WaitTicket> = (0..10)
            .map(|_| match l.acquire(9, far()) {
                Acquired::Wait(w) => w,
                _ => panic!(),
            })
            .collect();
        drop(p);
        let mut permits: Vec<FetchPermit> = Vec::new();
        for w in &mut ws {
            if let Wait::TakeOver(p) = w.poll(Instant::now()) {
                permits.push(p);
            }
        }
        assert_eq!(permits.len(), 1);
        assert!(
            matches!(l.acquire(9, far()), Acquired::Wait(_)),
            "the new fetcher holds the lock"
        );
        permits.pop().unwrap().stored();
        assert!(
            ws.iter_mut()
                .filter(|w| !w.left)
                .all(|w| matches!(w.poll(Instant::now()), Wait::Ready))
        );
    }

    #[test]
    fn abandoned_without_waiters_is_cleaned_up_or_taken_by_newcomer() {
        let l = CacheLocks::new(1);
        let Acquired::Fetch(p) = l.acquire(5, far()) else {
            panic!()
        };
        drop(p);
        assert!(l.is_empty());
        let Acquired::Fetch(p) = l.acquire(5, far()) else {
            panic!()
        };
        let Acquired::Wait(w) = l.acquire(5, far()) else {
            panic!()
        };
        drop(p);
        assert!(
            matches!(l.acquire(5, far()), Acquired::Fetch(_)),
            "a newcomer takes an abandoned lock"
        );
        drop(w);
    }

    #[test]
    fn last_waiter_leaving_an_abandoned_lock_removes_it() {
        let l = CacheLocks::new(1);
        let Acquired::Fetch(p) = l.acquire(5, far()) else {
            panic!()
        };
        let Acquired::Wait(w) = l.acquire(5, far()) else {
            panic!()
        };
        drop(p);
        assert_eq!(l.len(), 1);
        drop(w);
        assert!(l.is_empty());
    }

    /// Review #4: a permit held past the maximum lock age is taken over by
    /// one waiter (or a newcomer); the old holder's release changes nothing.
    #[test]
    fn lock_held_too_long_is_taken_over() {
        let l = CacheLocks::with_config(&LockConfig {
            shards: 1,
            max_lock_age: Some(Duration::from_secs(30)),
            ..Default::default()
        });
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let Acquired::Fetch(old) = l.acquire_at(1, t0, far()) else {
            panic!()
        };
        let Acquired::Wait(mut w1) = l.acquire_at(1, t0, far()) else {
            panic!()
        };
        let Acquired::Wait(mut w2) = l.acquire_at(1, t0, far()) else {
            panic!()
        };
        assert!(matches!(w1.poll(t0 + s(30)), Wait::Pending));
        let Wait::TakeOver(new) = w1.poll(t0 + s(31)) else {
            panic!("a waiter takes over a lock held too long")
        };
        assert!(matches!(w2.poll(t0 + s(31)), Wait::Pending), "only one");
        old.stored();
        assert!(
            matches!(w2.poll(t0 + s(32)), Wait::Pending),
            "the superseded holder's release is ignored"
        );
        assert!(matches!(
            l.acquire_at(1, t0 + s(32), far()),
            Acquired::Wait(_)
        ));
        new.stored();
        assert!(matches!(w2.poll(t0 + s(33)), Wait::Ready));

        let Acquired::Fetch(q1) = l.acquire_at(2, t0, far()) else {
            panic!()
        };
        let Acquired::Fetch(q2) = l.acquire_at(2, t0 + s(31), far()) else {
            panic!("a newcomer takes over a lock held too long")
        };
        drop(q1);
        assert!(
            matches!(l.acquire_at(2, t0 + s(32), far()), Acquired::Wait(_)),
            "the superseded holder's drop does not abandon the new one's lock"
        );
        q2.stored();
        // Without a time at acquire, the age counts from the first poll.
        let Acquired::Fetch(_r) = l.acquire(3, far()) else {
            panic!()
        };
        let Acquired::Wait(mut w) = l.acquire(3, far()) else {
            panic!()
        };
        assert!(matches!(w.poll(t0 + s(100)), Wait::Pending));
        assert!(matches!(w.poll(t0 + s(131)), Wait::TakeOver(_)));
    }

    /// Review #5: a key whose fetch was uncacheable goes upstream without
    /// the lock for a while; the memory for that is bounded.
    #[test]
    fn hit_for_pass_skips_the_lock_for_a_while() {
        let l = CacheLocks::with_config(&LockConfig {
            shards: 1,
            hit_for_pass: Duration::from_secs(10),
            max_pass_keys: 4,
            ..Default::default()
        });
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let Acquired::Fetch(p) = l.acquire_at(5, t0, far()) else {
            panic!()
        };
        p.uncacheable_at(t0 + s(1));
        assert!(l.hit_for_pass(5, t0 + s(2)));
        assert!(l.hit_for_pass(5, t0 + s(10)));
        assert!(!l.hit_for_pass(5, t0 + s(11)));
        assert!(!l.hit_for_pass(6, t0 + s(2)));
        for k in 100..120 {
            let Acquired::Fetch(p) = l.acquire_at(k, t0, far()) else {
                panic!()
            };
            p.uncacheable();
        }
        assert!(l.pass_len() <= 4, "{}", l.pass_len());
        assert!(l.hit_for_pass(119, t0 + s(1)));
        assert!(!l.hit_for_pass(100, t0 + s(1)));
        let Acquired::Fetch(p) = l.acquire_at(7, t0, far()) else {
            panic!()
        };
        p.stored();
        assert!(!l.hit_for_pass(7, t0));
    }

    /// 1,000 concurrent lookups of one cold key from 8 threads: exactly one
    /// fetcher; when it drops, exactly one waiter takes over; when that one
    /// stores, everyone else is released.
    #[test]
    fn thousand_concurrent_one_fetch_and_one_takeover() {
        let l = CacheLocks::new(16);
        let threads = 8;
        let per = 125;
        let barrier = Arc::new(Barrier::new(threads));
        let results: Vec<(Vec<FetchPermit>, Vec<WaitTicket>)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|_| {
                    let l = l.clone();
                    let b = Arc::clone(&barrier);
                    s.spawn(move || {
                        b.wait();
                        let mut f = Vec::new();
                        let mut w = Vec::new();
                        for _ in 0..per {
                            match l.acquire(42, far()) {
                                Acquired::Fetch(p) => f.push(p),
                                Acquired::Wait(t) => w.push(t),
                            }
                        }
                        (f, w)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut fetchers: Vec<FetchPermit> = Vec::new();
        let mut waiters: Vec<Vec<WaitTicket>> = Vec::new();
        for (f, w) in results {
            fetchers.extend(f);
            waiters.push(w);
        }
        assert_eq!(fetchers.len(), 1, "exactly one fetcher");
        assert_eq!(waiters.iter().map(Vec::len).sum::<usize>(), 999);
        drop(fetchers);
        // Every thread polls its waiters concurrently: one takes over.
        let barrier = Arc::new(Barrier::new(threads));
        let outcomes: Vec<(Vec<FetchPermit>, Vec<WaitTicket>)> = std::thread::scope(|s| {
            let hs: Vec<_> = waiters
                .into_iter()
                .map(|mut ws| {
                    let b = Arc::clone(&barrier);
                    s.spawn(move || {
                        b.wait();
                        let mut took = Vec::new();
                        for w in &mut ws {
                            if let Wait::TakeOver(p) = w.poll(Instant::now()) {
                                took.push(p);
                            }
                        }
                        (took, ws)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut took = Vec::new();
        let mut rest = Vec::new();
        for (t, w) in outcomes {
            took.extend(t);
            rest.extend(w);
        }
        assert_eq!(took.len(), 1, "exactly one takes over");
        took.pop().unwrap().stored();
        let ready = rest
            .iter_mut()
            .filter(|w| !w.left)
            .map(|w| matches!(w.poll(Instant::now()), Wait::Ready))
            .filter(|r| *r)
            .count();
        assert_eq!(ready, 998);
        drop(rest);
        assert!(l.is_empty());
    }
}
