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
//! without the lock. Locks live in sharded maps; a map lock is held only
//! to insert or remove an entry, never while waiting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use foldhash::fast::FixedState;

const FETCHING: u8 = 0;
const STORED: u8 = 1;
const UNCACHEABLE: u8 = 2;
const ABANDONED: u8 = 3;

#[derive(Debug)]
struct LockState {
    state: AtomicU8,
    waiters: AtomicUsize,
}

type Map = HashMap<u128, Arc<LockState>, FixedState>;

struct Inner {
    shards: Box<[Mutex<Map>]>,
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
    /// The fetcher gave up; this request fetches now.
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
        Self::new(16)
    }
}

impl CacheLocks {
    pub fn new(shards: usize) -> Self {
        let n = shards.max(1).next_power_of_two();
        CacheLocks {
            inner: Arc::new(Inner {
                shards: (0..n).map(|_| Mutex::new(Map::default())).collect(),
            }),
        }
    }

    fn map(&self, key: u128) -> MutexGuard<'_, Map> {
        let m = &self.inner.shards[(key >> 100) as usize & (self.inner.shards.len() - 1)];
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the lock for `key` (a primary key hash), or a ticket to wait
    /// until `deadline`.
    pub fn acquire(&self, key: u128, deadline: Instant) -> Acquired {
        let mut map = self.map(key);
        if let Some(l) = map.get(&key) {
            // An abandoned lock nobody has taken over yet: take it.
            if l.state
                .compare_exchange(ABANDONED, FETCHING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let lock = Arc::clone(l);
                return Acquired::Fetch(FetchPermit {
                    locks: self.clone(),
                    key,
                    lock,
                    done: false,
                });
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
        let lock = Arc::new(LockState {
            state: AtomicU8::new(FETCHING),
            waiters: AtomicUsize::new(0),
        });
        map.insert(key, Arc::clone(&lock));
        Acquired::Fetch(FetchPermit {
            locks: self.clone(),
            key,
            lock,
            done: false,
        })
    }

    /// Keys with a lock entry (for tests and stats).
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes `key`'s entry if it is still `lock`.
    fn remove(&self, key: u128, lock: &Arc<LockState>) {
        let mut map = self.map(key);
        if map.get(&key).is_some_and(|l| Arc::ptr_eq(l, lock)) {
            map.remove(&key);
        }
    }
}

impl FetchPermit {
    fn release(mut self, state: u8) {
        self.done = true;
        // Remove first so new arrivals look the cache up (or fetch) afresh;
        // then publish the outcome to the waiters holding the state.
        self.locks.remove(self.key, &self.lock);
        self.lock.state.store(state, Ordering::Release);
    }

    /// The response is being stored: waiters look it up again.
    pub fn stored(self) {
        self.release(STORED)
    }

    /// The response will not be stored: waiters go upstream themselves.
    pub fn uncacheable(self) {
        self.release(UNCACHEABLE)
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
        self.lock.state.store(ABANDONED, Ordering::Release);
        if self.lock.waiters.load(Ordering::Acquire) == 0
            && map
                .get(&self.key)
                .is_some_and(|l| Arc::ptr_eq(l, &self.lock))
        {
            map.remove(&self.key);
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
                let permit = FetchPermit {
                    locks: self.locks.clone(),
                    key: self.key,
                    lock: Arc::clone(&self.lock),
                    done: false,
                };
                Wait::TakeOver(permit)
            }
            _ if now >= self.deadline => self.leave(Wait::TimedOut),
            _ => Wait::Pending,
        }
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
                .get(&self.key)
                .is_some_and(|l| Arc::ptr_eq(l, &self.lock))
        {
            // The last waiter of an abandoned lock: nobody will take it over.
            map.remove(&self.key);
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
