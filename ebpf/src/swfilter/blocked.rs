//! The escalated-sources deny set of the Rust twin (`blocked4`/`blocked6` of
//! the XDP program): source address → expiry on the `bpf_ktime_get_ns` clock
//! ([`monotonic_ns`](crate::monotonic_ns)).
//!
//! One fixed table, allocated once, shared by every worker. Readers (the
//! per-packet path) take no lock and allocate nothing: open addressing with
//! linear probing over a bounded window, each slot guarded by a sequence
//! number (a per-slot seqlock), so a reader never trusts a key that is being
//! rewritten. Writers (block, unblock, expire: the control path) are rare
//! and serialised by a mutex that readers never touch.
//!
//! Deleted slots become tombstones so probe chains stay intact; a tombstone
//! followed by a never-used slot is turned back into a never-used one, so
//! lookups of absent sources usually stop at the first probe.

use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::FxHasher;
use crate::MAX_BLOCKED_SOURCES;

/// Slots: four times what both families may hold together, so the table is
/// at most half full and a bounded probe window always finds room.
const SLOTS: usize = 4 * MAX_BLOCKED_SOURCES;
/// Longest probe sequence (insert and lookup).
const WINDOW: usize = 64;

/// Slot kinds, kept in bits 1..3 of `seq` (bit 0: a write is in progress).
const EMPTY: u64 = 0;
const TOMB: u64 = 1;
const V4: u64 = 2;
const V6: u64 = 3;

/// `block` found the set (or the probe window) full.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error(
    "the escalated-sources deny set is full ({max} {family} sources); cannot block {addr} until entries expire or are unblocked"
)]
pub struct BlockedSetFull {
    pub addr: IpAddr,
    pub family: &'static str,
    pub max: usize,
}

#[derive(Default)]
struct Slot {
    /// `version << 3 | kind << 1 | writing`.
    seq: AtomicU64,
    hi: AtomicU64,
    lo: AtomicU64,
    until: AtomicU64,
}

/// A source as the table keys it: the family and 128 address bits.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    kind: u64,
    hi: u64,
    lo: u64,
}

impl Key {
    fn of(addr: IpAddr) -> Key {
        match addr {
            IpAddr::V4(a) => Key::v4(a.octets()),
            IpAddr::V6(a) => Key::v6(a.octets()),
        }
    }

    fn v4(a: [u8; 4]) -> Key {
        Key {
            kind: V4,
            hi: 0,
            lo: u32::from_be_bytes(a) as u64,
        }
    }

    fn v6(a: [u8; 16]) -> Key {
        let x = u128::from_be_bytes(a);
        Key {
            kind: V6,
            hi: (x >> 64) as u64,
            lo: x as u64,
        }
    }

    fn addr(self) -> IpAddr {
        if self.kind == V4 {
            IpAddr::from((self.lo as u32).to_be_bytes())
        } else {
            IpAddr::from((((self.hi as u128) << 64) | self.lo as u128).to_be_bytes())
        }
    }

    fn home(self) -> usize {
        use std::hash::Hasher;
        let mut h = FxHasher(self.kind);
        h.write_u64(self.hi);
        h.write_u64(self.lo);
        let h = h.finish();
        // The multiply leaves the high bits best mixed.
        ((h >> 32) ^ h) as usize & (SLOTS - 1)
    }
}

/// What a reader saw in one slot.
enum Seen {
    Empty,
    /// A tombstone, or a slot being rewritten: keep probing.
    Other,
    Live(Key, u64),
}

/// The escalated-sources deny set shared by the workers of a DPDK engine;
/// see the module docs. Capacity: [`MAX_BLOCKED_SOURCES`] per family, as
/// the program's maps.
pub struct BlockedSources {
    slots: Box<[Slot]>,
    /// Live entries (both families): readers skip the table when 0.
    live: AtomicUsize,
    /// Serialises writers; holds the live count per family (v4, v6).
    writer: Mutex<[usize; 2]>,
}

impl Default for BlockedSources {
    fn default() -> Self {
        BlockedSources {
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            live: AtomicUsize::new(0),
            writer: Mutex::new([0, 0]),
        }
    }
}

impl std::fmt::Debug for BlockedSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockedSources")
            .field("live", &self.live.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl BlockedSources {
    fn slot(&self, home: usize, i: usize) -> (usize, &Slot) {
        let at = (home + i) & (SLOTS - 1);
        (at, &self.slots[at])
    }

    /// A consistent read of one slot (per-slot seqlock, no waiting).
    fn read(s: &Slot) -> Seen {
        let seq = s.seq.load(Ordering::Acquire);
        if seq & 1 == 1 {
            return Seen::Other;
        }
        let kind = (seq >> 1) & 3;
        match kind {
            EMPTY => return Seen::Empty,
            TOMB => return Seen::Other,
            _ => {}
        }
        let (hi, lo, until) = (
            s.hi.load(Ordering::Relaxed),
            s.lo.load(Ordering::Relaxed),
            s.until.load(Ordering::Relaxed),
        );
        std::sync::atomic::fence(Ordering::Acquire);
        if s.seq.load(Ordering::Relaxed) != seq {
            return Seen::Other;
        }
        Seen::Live(Key { kind, hi, lo }, until)
    }

    /// Rewrites a slot's kind and key (writer lock held).
    fn write(s: &Slot, kind: u64, key: Key, until: u64) {
        let seq = s.seq.load(Ordering::Relaxed);
        let version = (seq >> 3) + 1;
        s.seq.store(seq | 1, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        s.hi.store(key.hi, Ordering::Relaxed);
        s.lo.store(key.lo, Ordering::Relaxed);
        s.until.store(until, Ordering::Relaxed);
        s.seq.store(version << 3 | kind << 1, Ordering::Release);
    }

    fn kind_of(s: &Slot) -> u64 {
        (s.seq.load(Ordering::Relaxed) >> 1) & 3
    }

    /// The expiry of `key`, if it is in the set (lock-free).
    fn until(&self, key: Key) -> Option<u64> {
        if self.live.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let home = key.home();
        for i in 0..WINDOW {
            match Self::read(self.slot(home, i).1) {
                Seen::Empty => return None,
                Seen::Other => {}
                Seen::Live(k, until) if k == key => return Some(until),
                Seen::Live(..) => {}
            }
        }
        None
    }

    /// Whether `addr` is blocked at `now_ns` (its expiry is still ahead).
    /// Lock-free, allocation-free.
    pub fn is_blocked(&self, addr: IpAddr, now_ns: u64) -> bool {
        self.until(Key::of(addr)).is_some_and(|u| now_ns < u)
    }

    /// The per-packet check on raw source bytes (IPv4 in the first four);
    /// reads the clock only on a hit, like the program.
    pub(super) fn blocks_now(&self, src: &[u8; 16], v6: bool) -> bool {
        let key = if v6 {
            Key::v6(*src)
        } else {
            Key::v4([src[0], src[1], src[2], src[3]])
        };
        self.until(key).is_some_and(|u| crate::monotonic_ns() < u)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [usize; 2]> {
        // A panicking writer leaves every slot consistent (each write is
        // complete or not begun from a reader's view): go on.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks `addr` until `until_ns` ([`monotonic_ns`](crate::monotonic_ns)
    /// clock), overwriting an earlier expiry.
    pub fn block(&self, addr: IpAddr, until_ns: u64) -> Result<(), BlockedSetFull> {
        let key = Key::of(addr);
        let fam = (key.kind == V6) as usize;
        let mut counts = self.lock();
        let home = key.home();
        let mut free = None;
        for i in 0..WINDOW {
            let (_, s) = self.slot(home, i);
            match Self::kind_of(s) {
                EMPTY => {
                    free.get_or_insert(i);
                    break;
                }
                TOMB => {
                    free.get_or_insert(i);
                }
                kind => {
                    let k = Key {
                        kind,
                        hi: s.hi.load(Ordering::Relaxed),
                        lo: s.lo.load(Ordering::Relaxed),
                    };
                    if k == key {
                        // Same key: only the expiry changes, readers never
                        // lose the entry.
                        s.until.store(until_ns, Ordering::Relaxed);
                        return Ok(());
                    }
                }
            }
        }
        let full = || BlockedSetFull {
            addr,
            family: if fam == 0 { "IPv4" } else { "IPv6" },
            max: MAX_BLOCKED_SOURCES,
        };
        if counts[fam] >= MAX_BLOCKED_SOURCES {
            return Err(full());
        }
        let Some(i) = free else {
            return Err(full());
        };
        Self::write(self.slot(home, i).1, key.kind, key, until_ns);
        counts[fam] += 1;
        self.live.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Turns slot `at` into a tombstone, then tombstones that end a chain
    /// back into never-used slots (writer lock held).
    fn remove_at(&self, at: usize, counts: &mut [usize; 2]) {
        let s = &self.slots[at];
        let fam = (Self::kind_of(s) == V6) as usize;
        let none = Key {
            kind: TOMB,
            hi: 0,
            lo: 0,
        };
        Self::write(s, TOMB, none, 0);
        counts[fam] -= 1;
        self.live.fetch_sub(1, Ordering::Relaxed);
        let mask = SLOTS - 1;
        if Self::kind_of(&self.slots[(at + 1) & mask]) != EMPTY {
            return;
        }
        let mut j = at;
        while Self::kind_of(&self.slots[j]) == TOMB {
            Self::write(&self.slots[j], EMPTY, none, 0);
            j = (j + SLOTS - 1) & mask;
        }
    }

    /// Removes `addr`; false when it was not in the set.
    pub fn unblock(&self, addr: IpAddr) -> bool {
        let key = Key::of(addr);
        let mut counts = self.lock();
        let home = key.home();
        for i in 0..WINDOW {
            let (at, s) = self.slot(home, i);
            match Self::read(s) {
                Seen::Empty => return false,
                Seen::Live(k, _) if k == key => {
                    self.remove_at(at, &mut counts);
                    return true;
                }
                _ => {}
            }
        }
        false
    }

    /// Every entry with its expiry (expired ones included until
    /// [`expire`](Self::expire)). Scans the table: control path only.
    pub fn list(&self) -> Vec<(IpAddr, u64)> {
        let _writers = self.lock();
        self.slots
            .iter()
            .filter_map(|s| match Self::read(s) {
                Seen::Live(k, until) => Some((k.addr(), until)),
                _ => None,
            })
            .collect()
    }

    /// Removes the entries whose expiry is at or before `now_ns`; returns how
    /// many. Scans the table: control path only.
    pub fn expire(&self, now_ns: u64) -> usize {
        let mut counts = self.lock();
        let mut removed = 0;
        for at in 0..SLOTS {
            if let Seen::Live(_, until) = Self::read(&self.slots[at])
                && until <= now_ns
            {
                self.remove_at(at, &mut counts);
                removed += 1;
            }
        }
        removed
    }

    /// Entries in the set (both families, expired ones included).
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn block_overwrite_unblock_expire_list() {
        let b = BlockedSources::default();
        assert!(!b.is_blocked(a("192.0.2.1"), 0));
        b.block(a("192.0.2.1"), 100).unwrap();
        b.block(a("2001:db8::1"), 200).unwrap();
        // The same 32 bits as IPv6 are another source (separate maps in C).
        assert!(!b.is_blocked(a("::c000:201"), 0));
        assert!(!b.is_blocked(a("::ffff:192.0.2.1"), 0));
        assert!(b.is_blocked(a("192.0.2.1"), 99));
        assert!(!b.is_blocked(a("192.0.2.1"), 100), "expiry is exclusive");
        assert!(b.is_blocked(a("2001:db8::1"), 150));
        // Overwrite: a later expiry, still one entry.
        b.block(a("192.0.2.1"), 300).unwrap();
        assert!(b.is_blocked(a("192.0.2.1"), 250));
        assert_eq!(b.len(), 2);
        let mut l = b.list();
        l.sort();
        assert_eq!(l, vec![(a("192.0.2.1"), 300), (a("2001:db8::1"), 200)]);
        // Expire at 200: the IPv6 entry (expiry <= now) goes.
        assert_eq!(b.expire(200), 1);
        assert_eq!(b.list(), vec![(a("192.0.2.1"), 300)]);
        assert!(b.unblock(a("192.0.2.1")));
        assert!(!b.unblock(a("192.0.2.1")));
        assert!(b.is_empty());
        assert!(b.list().is_empty());
    }

    #[test]
    fn colliding_keys_survive_deletions_in_their_chain() {
        let b = BlockedSources::default();
        // Find three sources with the same home slot.
        let home = Key::v4([10, 0, 0, 0]).home();
        let same: Vec<[u8; 4]> = (0u32..)
            .map(|i| (0x0a00_0000 + i).to_be_bytes())
            .filter(|x| Key::v4(*x).home() == home)
            .take(3)
            .collect();
        for x in &same {
            b.block(IpAddr::from(*x), u64::MAX).unwrap();
        }
        // Delete the first and the middle: the last stays reachable.
        assert!(b.unblock(IpAddr::from(same[0])));
        assert!(b.unblock(IpAddr::from(same[1])));
        assert!(b.is_blocked(IpAddr::from(same[2]), 0));
        // Re-insert reuses a tombstone and does not duplicate.
        b.block(IpAddr::from(same[2]), 5).unwrap();
        b.block(IpAddr::from(same[0]), 7).unwrap();
        assert_eq!(b.len(), 2);
        let mut l = b.list();
        l.sort();
        assert_eq!(
            l,
            vec![(IpAddr::from(same[0]), 7), (IpAddr::from(same[2]), 5)]
        );
        // Removing all turns the whole chain back into never-used slots.
        assert_eq!(b.expire(10), 2);
        for i in 0..3 {
            assert_eq!(BlockedSources::kind_of(b.slot(home, i).1), EMPTY);
        }
    }

    #[test]
    fn a_full_family_is_refused_and_the_other_still_has_room() {
        let b = BlockedSources::default();
        for i in 0..MAX_BLOCKED_SOURCES as u32 {
            b.block(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), u64::MAX)
                .unwrap();
        }
        let err = b.block(a("192.0.2.1"), 1).unwrap_err();
        assert_eq!(err.family, "IPv4");
        assert!(err.to_string().contains("deny set is full"), "{err}");
        // Overwriting a present source still works when full.
        b.block(a("10.0.0.1"), 9).unwrap();
        b.block(a("2001:db8::1"), 1).unwrap();
        assert_eq!(b.len(), MAX_BLOCKED_SOURCES + 1);
        assert_eq!(b.expire(9), 2);
        b.block(a("192.0.2.1"), 1).unwrap();
    }

    #[test]
    fn readers_see_every_stable_entry_while_a_writer_churns() {
        let b = std::sync::Arc::new(BlockedSources::default());
        let stable: Vec<IpAddr> = (0..64u32)
            .map(|i| IpAddr::from((0xc000_0200 + i).to_be_bytes()))
            .collect();
        for &s in &stable {
            b.block(s, u64::MAX).unwrap();
        }
        let writer = {
            let b = b.clone();
            std::thread::spawn(move || {
                for round in 0..200u32 {
                    for i in 0..256u32 {
                        let x = IpAddr::from((0x0a00_0000 + round * 256 + i).to_be_bytes());
                        b.block(x, 1).unwrap();
                    }
                    b.expire(1);
                }
            })
        };
        let mut misses = 0;
        while !writer.is_finished() {
            for &s in &stable {
                if !b.is_blocked(s, 0) {
                    misses += 1;
                }
            }
        }
        writer.join().unwrap();
        assert_eq!(misses, 0, "a stable entry vanished during churn");
        assert_eq!(b.len(), stable.len());
    }
}
