//! A hashed timing wheel over small integer ids (socket slots): O(1) schedule,
//! reschedule and cancel, no allocation once the id space is sized. It is what
//! lets idle connections cost nothing per packet: only ids whose deadline has
//! come are handed back by `advance`.
//!
//! One level of `BUCKETS` one-millisecond buckets; an entry further away than
//! one revolution stays in its bucket and is merely compared once per
//! revolution (one comparison per entry per ~1 s), never polled.

use smoltcp::time::Instant;

const BUCKETS: usize = 1024;
const NIL: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Entry {
    /// Expiry tick (ms, rounded up); meaningful when `bucket != NIL`.
    at: u64,
    bucket: u32,
    prev: u32,
    next: u32,
}

const UNSCHEDULED: Entry = Entry {
    at: 0,
    bucket: NIL,
    prev: NIL,
    next: NIL,
};

pub(crate) struct TimerWheel {
    entries: Vec<Entry>,
    heads: Box<[u32]>,
    /// One bit per bucket, for `next_at` without walking lists.
    occupied: [u64; BUCKETS / 64],
    /// Every tick before this one has been processed.
    cursor: u64,
    len: usize,
}

/// Ticks are milliseconds, rounded up so that a timer never fires early.
fn tick_ceil(t: Instant) -> u64 {
    (t.total_micros().max(0) as u64).div_ceil(1000)
}

fn tick_floor(t: Instant) -> u64 {
    t.total_micros().max(0) as u64 / 1000
}

impl TimerWheel {
    pub(crate) fn new(capacity: usize, now: Instant) -> Self {
        Self {
            entries: Vec::with_capacity(capacity),
            heads: vec![NIL; BUCKETS].into_boxed_slice(),
            occupied: [0; BUCKETS / 64],
            cursor: tick_floor(now),
            len: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Makes room for ids below `n` (called when a slot is created).
    pub(crate) fn grow_to(&mut self, n: usize) {
        if self.entries.len() < n {
            self.entries.resize(n, UNSCHEDULED);
        }
    }

    /// Sets (or moves) the timer of `id`; a time already past fires at the
    /// next `advance`.
    pub(crate) fn schedule(&mut self, id: u32, at: Instant) {
        let tick = tick_ceil(at).max(self.cursor);
        let e = self.entries[id as usize];
        if e.bucket != NIL {
            if e.at == tick {
                return;
            }
            self.unlink(id);
        }
        let b = (tick % BUCKETS as u64) as usize;
        let head = self.heads[b];
        self.entries[id as usize] = Entry {
            at: tick,
            bucket: b as u32,
            prev: NIL,
            next: head,
        };
        if head != NIL {
            self.entries[head as usize].prev = id;
        }
        self.heads[b] = id;
        self.occupied[b / 64] |= 1 << (b % 64);
        self.len += 1;
    }

    pub(crate) fn cancel(&mut self, id: u32) {
        if self.entries[id as usize].bucket != NIL {
            self.unlink(id);
        }
    }

    fn unlink(&mut self, id: u32) {
        let e = self.entries[id as usize];
        if e.prev != NIL {
            self.entries[e.prev as usize].next = e.next;
        } else {
            self.heads[e.bucket as usize] = e.next;
            if e.next == NIL {
                let b = e.bucket as usize;
                self.occupied[b / 64] &= !(1 << (b % 64));
            }
        }
        if e.next != NIL {
            self.entries[e.next as usize].prev = e.prev;
        }
        self.entries[id as usize] = UNSCHEDULED;
        self.len -= 1;
    }

    /// Removes every timer due at `now` and hands its id to `fire`.
    pub(crate) fn advance(&mut self, now: Instant, mut fire: impl FnMut(u32)) {
        let now_tick = tick_floor(now);
        if now_tick < self.cursor {
            return;
        }
        if self.len > 0 {
            // After a long gap one revolution visits every bucket once.
            let span = (now_tick - self.cursor + 1).min(BUCKETS as u64);
            for t in self.cursor..self.cursor + span {
                let b = (t % BUCKETS as u64) as usize;
                if self.occupied[b / 64] & (1 << (b % 64)) == 0 {
                    continue;
                }
                let mut id = self.heads[b];
                while id != NIL {
                    let e = self.entries[id as usize];
                    if e.at <= now_tick {
                        self.unlink(id);
                        fire(id);
                    }
                    id = e.next;
                }
            }
        }
        self.cursor = now_tick + 1;
    }

    /// A soft deadline: the start of the next bucket holding any timer (it
    /// may hold only timers of a later revolution; waking early is harmless).
    pub(crate) fn next_at(&self) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        for d in 0..BUCKETS as u64 {
            let b = ((self.cursor + d) % BUCKETS as u64) as usize;
            if self.occupied[b / 64] & (1 << (b % 64)) != 0 {
                return Some(Instant::from_millis((self.cursor + d) as i64));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fired(w: &mut TimerWheel, ms: i64) -> Vec<u32> {
        let mut v = vec![];
        w.advance(Instant::from_millis(ms), |id| v.push(id));
        v.sort();
        v
    }

    #[test]
    fn fires_once_at_deadline_and_not_before() {
        let mut w = TimerWheel::new(8, Instant::from_millis(0));
        w.grow_to(4);
        w.schedule(0, Instant::from_millis(5));
        w.schedule(1, Instant::from_micros(5_001)); // rounds up to 6 ms
        w.schedule(2, Instant::from_millis(5 + BUCKETS as i64)); // next revolution
        assert_eq!(w.next_at(), Some(Instant::from_millis(5)));
        assert_eq!(fired(&mut w, 4), Vec::<u32>::new());
        assert_eq!(fired(&mut w, 5), vec![0]);
        assert_eq!(fired(&mut w, 6), vec![1]);
        assert_eq!(fired(&mut w, 6 + BUCKETS as i64 / 2), Vec::<u32>::new());
        assert_eq!(w.len(), 1);
        assert_eq!(
            fired(&mut w, 10 * BUCKETS as i64),
            vec![2],
            "after a long gap"
        );
        assert_eq!(w.len(), 0);
        assert_eq!(w.next_at(), None);
    }

    #[test]
    fn reschedule_and_cancel() {
        let mut w = TimerWheel::new(8, Instant::from_millis(0));
        w.grow_to(3);
        w.schedule(0, Instant::from_millis(10));
        w.schedule(1, Instant::from_millis(10));
        w.schedule(2, Instant::from_millis(10));
        w.schedule(1, Instant::from_millis(20));
        w.cancel(2);
        assert_eq!(fired(&mut w, 15), vec![0]);
        // A time already past fires at the next advance.
        w.schedule(0, Instant::from_millis(1));
        assert_eq!(fired(&mut w, 16), vec![0]);
        assert_eq!(fired(&mut w, 25), vec![1]);
        assert_eq!(w.len(), 0);
    }
}
