//! One shard: the maps, the S3-FIFO queues and the indexes, all changed
//! together under the shard's lock.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use foldhash::fast::FixedState;
use smallvec::SmallVec;

use super::object::Object;
use super::{Dropped, PurgeMode, StoreCounters};

/// (primary hash, variant hash).
pub(crate) type Id = (u128, u128);

/// Bytes of bookkeeping counted per object besides its metadata.
const ENTRY_OVERHEAD: usize = 128;

pub(crate) struct Primary {
    pub full_key: Arc<[u8]>,
    /// Shared so a lookup can hash the request's variant outside the lock.
    pub vary: Arc<[Bytes]>,
    variants: SmallVec<[u128; 2]>,
}

struct Entry {
    object: Arc<Object>,
    weight: usize,
    /// The part of `weight` that the metadata and tags make (a 304 refresh
    /// replaces it; the rest is the body and bookkeeping).
    meta_weight: usize,
    freq: u8,
    in_main: bool,
    generation: u64,
    tags: SmallVec<[Bytes; 4]>,
}

#[derive(Clone, Copy)]
struct QRec {
    id: Id,
    generation: u64,
}

#[derive(Default)]
pub(crate) struct Shard {
    primaries: HashMap<u128, Primary, FixedState>,
    objects: HashMap<Id, Entry, FixedState>,
    small: VecDeque<QRec>,
    main: VecDeque<QRec>,
    small_bytes: usize,
    main_bytes: usize,
    /// Ghost records in FIFO order, each with the sequence number it had
    /// when added; `ghost_set` maps a ghost to its latest one, so a stale
    /// record (the id was re-inserted, then evicted again) neither counts
    /// twice nor ends the newer ghost early.
    ghost: VecDeque<(Id, u64)>,
    ghost_set: HashMap<Id, u64, FixedState>,
    ghost_seq: u64,
    tags: HashMap<Bytes, HashSet<Id, FixedState>, FixedState>,
    /// Primaries by full key, for purges by prefix and by URL (a range
    /// scan, not a walk over every object).
    by_key: BTreeMap<Arc<[u8]>, u128>,
    next_generation: u64,
}

impl Shard {
    pub fn primary(&self, p: u128) -> Option<&Primary> {
        self.primaries.get(&p)
    }

    pub fn has(&self, id: Id) -> bool {
        self.objects.contains_key(&id)
    }

    /// A hit: bumps the frequency (saturating at 3) and clones the object.
    pub fn touch(&mut self, id: Id) -> Option<Arc<Object>> {
        let e = self.objects.get_mut(&id)?;
        e.freq = (e.freq + 1).min(3);
        Some(Arc::clone(&e.object))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &mut self,
        id: Id,
        full_key: Arc<[u8]>,
        object: Arc<Object>,
        meta_weight: usize,
        fixed_weight: usize,
        tags: SmallVec<[Bytes; 4]>,
        c: &StoreCounters,
        dropped: &mut Dropped,
    ) -> u64 {
        let (p, v) = id;
        // Another primary under the same hash (a collision), or a new Vary
        // list: the old variants can no longer be found; drop them.
        let stale = match self.primaries.get(&p) {
            Some(old) => old.full_key != full_key || *old.vary != object.meta.vary[..],
            None => false,
        };
        if stale {
            let variants: SmallVec<[u128; 4]> =
                self.primaries[&p].variants.iter().copied().collect();
            for v in variants {
                if let Some(generation) = self.objects.get(&(p, v)).map(|e| e.generation) {
                    self.remove_gen((p, v), generation, c, dropped);
                }
            }
            // Variants whose objects are gone already leave the record behind.
            self.remove_primary(p);
        }
        if let Some(old) = self.objects.get(&id) {
            let generation = old.generation;
            self.remove_gen(id, generation, c, dropped);
        }
        let by_key = &mut self.by_key;
        let prim = self.primaries.entry(p).or_insert_with(|| {
            by_key.insert(Arc::clone(&full_key), p);
            Primary {
                full_key,
                vary: object.meta.vary.clone().into(),
                variants: SmallVec::new(),
            }
        });
        prim.variants.push(v);
        let weight = meta_weight + fixed_weight + ENTRY_OVERHEAD;
        let generation = self.next_generation;
        self.next_generation += 1;
        for t in &tags {
            self.tags.entry(t.clone()).or_default().insert(id);
        }
        let in_main = self.ghost_set.remove(&id).is_some();
        let rec = QRec { id, generation };
        if in_main {
            self.main.push_back(rec);
            self.main_bytes += weight;
        } else {
            self.small.push_back(rec);
            self.small_bytes += weight;
        }
        self.objects.insert(
            id,
            Entry {
                object,
                weight,
                meta_weight,
                freq: 0,
                in_main,
                generation,
                tags,
            },
        );
        c.objects.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(weight as u64, Ordering::Relaxed);
        c.bytes_inserted.fetch_add(weight as u64, Ordering::Relaxed);
        generation
    }

    /// Adds `n` bytes to a growing object; false if it is no longer stored.
    pub fn grow(&mut self, id: Id, generation: u64, n: usize, c: &StoreCounters) -> bool {
        match self.objects.get_mut(&id) {
            Some(e) if e.generation == generation => {
                e.weight += n;
                if e.in_main {
                    self.main_bytes += n;
                } else {
                    self.small_bytes += n;
                }
                c.bytes.fetch_add(n as u64, Ordering::Relaxed);
                c.bytes_inserted.fetch_add(n as u64, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Swaps in a 304-refreshed object (same body) with its new metadata
    /// weight and tags. None if `old` is no longer the stored object.
    pub fn refresh(
        &mut self,
        id: Id,
        old: &Arc<Object>,
        new: Arc<Object>,
        meta_weight: usize,
        tags: SmallVec<[Bytes; 4]>,
        c: &StoreCounters,
    ) -> Option<Arc<Object>> {
        let e = self.objects.get_mut(&id)?;
        if !Arc::ptr_eq(&e.object, old) {
            return None;
        }
        let before = e.weight;
        e.weight = e.weight - e.meta_weight + meta_weight;
        e.meta_weight = meta_weight;
        let after = e.weight;
        let in_main = e.in_main;
        let old_tags = std::mem::replace(&mut e.tags, tags.clone());
        let prev = std::mem::replace(&mut e.object, new);
        let q = if in_main {
            &mut self.main_bytes
        } else {
            &mut self.small_bytes
        };
        *q = *q + after - before;
        c.bytes.fetch_add(after as u64, Ordering::Relaxed);
        c.bytes.fetch_sub(before as u64, Ordering::Relaxed);
        if after > before {
            c.bytes_inserted
                .fetch_add((after - before) as u64, Ordering::Relaxed);
        } else {
            c.bytes_inserted
                .fetch_sub((before - after) as u64, Ordering::Relaxed);
        }
        self.untag(id, &old_tags);
        for t in &tags {
            self.tags.entry(t.clone()).or_default().insert(id);
        }
        Some(prev)
    }

    fn untag(&mut self, id: Id, tags: &[Bytes]) {
        for t in tags {
            if let Some(set) = self.tags.get_mut(t) {
                set.remove(&id);
                if set.is_empty() {
                    self.tags.remove(t);
                }
            }
        }
    }

    pub fn remove_if(
        &mut self,
        id: Id,
        obj: &Arc<Object>,
        c: &StoreCounters,
        dropped: &mut Dropped,
    ) -> bool {
        match self.objects.get(&id) {
            Some(e) if Arc::ptr_eq(&e.object, obj) => {
                let generation = e.generation;
                self.remove_gen(id, generation, c, dropped)
            }
            _ => false,
        }
    }

    /// Removes the object `id` if it is generation `generation`; fixes the byte
    /// counts, the tag index and its primary's variant list. The queue
    /// record stays and is skipped when it reaches the head.
    pub fn remove_gen(
        &mut self,
        id: Id,
        generation: u64,
        c: &StoreCounters,
        dropped: &mut Dropped,
    ) -> bool {
        match self.objects.get(&id) {
            Some(e) if e.generation == generation => {}
            _ => return false,
        }
        let e = self.objects.remove(&id).expect("checked above");
        if e.in_main {
            self.main_bytes -= e.weight;
        } else {
            self.small_bytes -= e.weight;
        }
        c.objects.fetch_sub(1, Ordering::Relaxed);
        c.bytes.fetch_sub(e.weight as u64, Ordering::Relaxed);
        self.untag(id, &e.tags);
        if let Some(p) = self.primaries.get_mut(&id.0) {
            p.variants.retain(|v| *v != id.1);
            if p.variants.is_empty() {
                self.remove_primary(id.0);
            }
        }
        dropped.push(e.object);
        self.compact();
        true
    }

    /// Applies a purge to every variant of a primary key.
    pub fn purge_primary(
        &mut self,
        p: u128,
        mode: PurgeMode,
        c: &StoreCounters,
        dropped: &mut Dropped,
    ) -> usize {
        let variants: SmallVec<[u128; 4]> = match self.primaries.get(&p) {
            Some(pr) => pr.variants.iter().copied().collect(),
            None => return 0,
        };
        variants
            .into_iter()
            .map(|v| self.purge_id((p, v), mode, c, dropped))
            .sum()
    }

    pub fn purge_id(
        &mut self,
        id: Id,
        mode: PurgeMode,
        c: &StoreCounters,
        dropped: &mut Dropped,
    ) -> usize {
        let n = match (mode, self.objects.get(&id)) {
            (_, None) => 0,
            (PurgeMode::Light, Some(e)) => {
                e.object.light_purged.store(true, Ordering::Release);
                1
            }
            (PurgeMode::Hard, Some(e)) => {
                let generation = e.generation;
                usize::from(self.remove_gen(id, generation, c, dropped))
            }
        };
        c.purged.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    fn remove_primary(&mut self, p: u128) {
        if let Some(pr) = self.primaries.remove(&p)
            && self.by_key.get(&pr.full_key[..]) == Some(&p)
        {
            self.by_key.remove(&pr.full_key[..]);
        }
    }

    /// Up to `max` full keys starting with `prefix`, from `from` on
    /// (exclusive if `after`), in key order, with their primaries.
    pub fn keys_with_prefix(
        &self,
        prefix: &[u8],
        from: &[u8],
        after: bool,
        max: usize,
        out: &mut Vec<(Arc<[u8]>, u128)>,
    ) {
        let lo = if after {
            Bound::Excluded(from)
        } else {
            Bound::Included(from)
        };
        out.extend(
            self.by_key
                .range::<[u8], _>((lo, Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .take(max)
                .map(|(k, p)| (Arc::clone(k), *p)),
        );
    }

    pub fn tagged<'a>(&'a self, tag: &[u8]) -> impl Iterator<Item = Id> + 'a {
        self.tags
            .get(tag)
            .into_iter()
            .flat_map(|s| s.iter().copied())
    }

    fn live(&self, r: &QRec, main: bool) -> bool {
        self.objects
            .get(&r.id)
            .is_some_and(|e| e.generation == r.generation && e.in_main == main)
    }

    /// S3-FIFO eviction down to `budget` bytes.
    pub fn evict(&mut self, budget: usize, c: &StoreCounters, dropped: &mut Dropped) {
        while self.small_bytes + self.main_bytes > budget {
            let from_small =
                !self.small.is_empty() && (self.small_bytes > budget / 10 || self.main.is_empty());
            if from_small {
                self.evict_small(c, dropped);
            } else if !self.main.is_empty() {
                self.evict_main(c, dropped);
            } else {
                debug_assert!(false, "bytes accounted but no queue records");
                break;
            }
        }
    }

    fn evict_small(&mut self, c: &StoreCounters, dropped: &mut Dropped) {
        let Some(r) = self.small.pop_front() else {
            return;
        };
        if !self.live(&r, false) {
            return;
        }
        let e = self.objects.get_mut(&r.id).expect("live");
        if e.freq > 0 {
            // Read again while in the small FIFO: promote.
            e.freq = 0;
            e.in_main = true;
            self.small_bytes -= e.weight;
            self.main_bytes += e.weight;
            self.main.push_back(r);
        } else {
            self.evict_one(r, c, dropped);
            self.ghost_add(r.id);
        }
    }

    fn ghost_add(&mut self, id: Id) {
        self.ghost_seq += 1;
        self.ghost.push_back((id, self.ghost_seq));
        self.ghost_set.insert(id, self.ghost_seq);
        let cap = self.objects.len().max(64);
        while self.ghost.len() > cap || self.ghost.len() > 2 * self.ghost_set.len() + 64 {
            let Some((g, seq)) = self.ghost.pop_front() else {
                break;
            };
            if self.ghost_set.get(&g) == Some(&seq) {
                self.ghost_set.remove(&g);
            }
        }
    }

    fn evict_main(&mut self, c: &StoreCounters, dropped: &mut Dropped) {
        let Some(r) = self.main.pop_front() else {
            return;
        };
        if !self.live(&r, true) {
            return;
        }
        let e = self.objects.get_mut(&r.id).expect("live");
        if e.freq > 0 {
            e.freq -= 1;
            self.main.push_back(r);
        } else {
            self.evict_one(r, c, dropped);
        }
    }

    fn evict_one(&mut self, r: QRec, c: &StoreCounters, dropped: &mut Dropped) {
        let w = self.objects.get(&r.id).map_or(0, |e| e.weight);
        if self.remove_gen(r.id, r.generation, c, dropped) {
            c.evicted.fetch_add(1, Ordering::Relaxed);
            c.bytes_evicted.fetch_add(w as u64, Ordering::Relaxed);
        }
    }

    /// Drops dead queue records once they outnumber the live ones.
    fn compact(&mut self) {
        let live = self.objects.len();
        if self.small.len() + self.main.len() > 2 * live + 64 {
            let objects = &self.objects;
            let ok = |r: &QRec, main: bool| {
                objects
                    .get(&r.id)
                    .is_some_and(|e| e.generation == r.generation && e.in_main == main)
            };
            self.small.retain(|r| ok(r, false));
            self.main.retain(|r| ok(r, true));
        }
    }

    /// Moves an entry to another id (to fake a variant-hash collision).
    #[cfg(test)]
    pub fn rekey(&mut self, from: Id, to: Id) {
        let e = self.objects.remove(&from).expect("stored");
        self.objects.insert(to, e);
    }

    #[cfg(test)]
    pub fn tags_len(&self) -> usize {
        self.tags.len()
    }

    #[cfg(test)]
    pub fn queue_bytes(&self) -> (usize, usize) {
        (self.small_bytes, self.main_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review #15: an id ghosted, re-inserted and ghosted again is one
    /// ghost; its stale first record does not end it early.
    #[test]
    fn a_re_ghosted_id_is_not_dropped_by_its_stale_record() {
        let mut s = Shard::default();
        let a: Id = (1, 0);
        s.ghost_add(a);
        // What `insert` does when a ghost comes back.
        assert!(s.ghost_set.remove(&a).is_some());
        s.ghost_add(a);
        assert_eq!(s.ghost_set.len(), 1);
        // Push the first record of `a` out (cap: 64 while nothing is stored).
        for i in 0..63u128 {
            s.ghost_add((100 + i, 0));
        }
        assert!(s.ghost_set.contains_key(&a), "the newer ghost was dropped");
        assert!(s.ghost.len() <= 64);
        for i in 0..200u128 {
            s.ghost_add((1000 + i, 0));
        }
        assert!(!s.ghost_set.contains_key(&a));
        assert_eq!(s.ghost.len(), s.ghost_set.len());
    }
}
