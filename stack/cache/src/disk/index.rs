//! The in-memory index of the disk tier: which files hold which keys,
//! the write-order FIFO for the byte budget, and the purge indexes (by key
//! for URL and prefix purges, by tag). Changed under one `RwLock` by the
//! tier's thread (writes, evictions) and by purges; read by `contains`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use foldhash::fast::FixedState;
use smallvec::SmallVec;

use crate::headers::HeaderView;
use crate::key::variant_matches;
use crate::store::purge_log::{prefix_matches, url_matches};

/// (primary hash, variant hash), as in the memory store.
pub(crate) type Id = (u128, u128);

/// One file.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// The file's sequence number (its name; larger is newer).
    pub seq: u64,
    /// The file's length in bytes.
    pub size: u64,
    pub variant: u128,
    pub full_key: Arc<[u8]>,
    /// The response's Vary names and the variant key's bytes, so that
    /// `contains_variant` can tell whether a request would find it.
    pub vary: Arc<[Bytes]>,
    pub variant_bytes: Arc<[u8]>,
    pub tags: SmallVec<[Bytes; 4]>,
}

#[derive(Default)]
pub(crate) struct Index {
    by_primary: HashMap<u128, SmallVec<[Entry; 1]>, FixedState>,
    by_key: BTreeMap<Arc<[u8]>, u128>,
    tags: HashMap<Bytes, HashSet<Id, FixedState>, FixedState>,
    /// Write order: (seq, id); a record whose entry has another seq is stale.
    fifo: VecDeque<(u64, Id)>,
    pub bytes: u64,
    pub files: u64,
}

/// What a purge of the disk tier matches.
#[derive(Clone, Copy)]
pub(crate) enum Matcher<'a> {
    Url(&'a [u8]),
    Prefix(&'a [u8]),
    Tag(&'a [u8]),
}

impl Index {
    pub fn contains(&self, primary: u128) -> bool {
        self.by_primary.contains_key(&primary)
    }

    /// Whether a file of `primary` is the variant `req` selects (compares
    /// the request's header values with each file's; no allocation).
    pub fn contains_variant(&self, primary: u128, req: &dyn HeaderView) -> bool {
        self.by_primary.get(&primary).is_some_and(|v| {
            v.iter()
                .any(|e| variant_matches(&e.vary, req, &e.variant_bytes))
        })
    }

    /// The files of a primary key, oldest first (so a newer variant list
    /// wins when they are loaded in order).
    pub fn variants(&self, primary: u128) -> SmallVec<[Entry; 1]> {
        let mut v = self.by_primary.get(&primary).cloned().unwrap_or_default();
        v.sort_by_key(|e| e.seq);
        v
    }

    /// Whether `seq` is still the file of `id`.
    pub fn is_current(&self, id: Id, seq: u64) -> bool {
        self.by_primary
            .get(&id.0)
            .is_some_and(|v| v.iter().any(|e| e.variant == id.1 && e.seq == seq))
    }

    /// Adds a file; the files it supersedes (the same variant; every
    /// variant of the key if their Vary list differs, as in the memory
    /// store; every file of a colliding primary with another full key) are
    /// removed and their sequence numbers pushed to `gone`.
    pub fn insert(&mut self, primary: u128, e: Entry, gone: &mut Vec<u64>) {
        let collides = self
            .by_primary
            .get(&primary)
            .and_then(|v| v.first())
            .is_some_and(|old| old.full_key != e.full_key || old.vary != e.vary);
        if collides {
            self.remove_primary(primary, gone);
        }
        self.remove((primary, e.variant), gone);
        let id = (primary, e.variant);
        for t in &e.tags {
            self.tags.entry(t.clone()).or_default().insert(id);
        }
        self.bytes += e.size;
        self.files += 1;
        self.fifo.push_back((e.seq, id));
        let by_key = &mut self.by_key;
        self.by_primary
            .entry(primary)
            .or_insert_with(|| {
                by_key.insert(Arc::clone(&e.full_key), primary);
                SmallVec::new()
            })
            .push(e);
        self.compact();
    }

    /// Removes the file of `id`, if any.
    pub fn remove(&mut self, id: Id, gone: &mut Vec<u64>) -> bool {
        let Some(v) = self.by_primary.get_mut(&id.0) else {
            return false;
        };
        let Some(i) = v.iter().position(|e| e.variant == id.1) else {
            return false;
        };
        let e = v.swap_remove(i);
        let empty = v.is_empty();
        if empty {
            self.by_primary.remove(&id.0);
            if self.by_key.get(&e.full_key[..]) == Some(&id.0) {
                self.by_key.remove(&e.full_key[..]);
            }
        }
        for t in &e.tags {
            if let Some(set) = self.tags.get_mut(t) {
                set.remove(&id);
                if set.is_empty() {
                    self.tags.remove(t);
                }
            }
        }
        self.bytes -= e.size;
        self.files -= 1;
        gone.push(e.seq);
        true
    }

    pub fn remove_primary(&mut self, primary: u128, gone: &mut Vec<u64>) -> usize {
        let variants: SmallVec<[u128; 4]> = match self.by_primary.get(&primary) {
            Some(v) => v.iter().map(|e| e.variant).collect(),
            None => return 0,
        };
        variants
            .into_iter()
            .filter(|&v| self.remove((primary, v), gone))
            .count()
    }

    /// Removes every file a purge reaches; returns how many.
    pub fn purge(&mut self, m: Matcher<'_>, gone: &mut Vec<u64>) -> usize {
        match m {
            Matcher::Url(url) => self.purge_keys(url, |k| url_matches(url, k), gone),
            Matcher::Prefix(p) => self.purge_keys(p, |k| prefix_matches(p, k), gone),
            Matcher::Tag(t) => {
                let ids: Vec<Id> = self
                    .tags
                    .get(t)
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default();
                ids.into_iter().filter(|&id| self.remove(id, gone)).count()
            }
        }
    }

    fn purge_keys(
        &mut self,
        prefix: &[u8],
        ok: impl Fn(&[u8]) -> bool,
        gone: &mut Vec<u64>,
    ) -> usize {
        let primaries: Vec<u128> = self
            .by_key
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| ok(k))
            .map(|(_, p)| *p)
            .collect();
        primaries
            .into_iter()
            .map(|p| self.remove_primary(p, gone))
            .sum()
    }

    /// Removes every entry (a purge that can no longer be told apart).
    pub fn purge_all(&mut self, gone: &mut Vec<u64>) -> usize {
        let primaries: Vec<u128> = self.by_primary.keys().copied().collect();
        primaries
            .into_iter()
            .map(|p| self.remove_primary(p, gone))
            .sum()
    }

    /// Removes the oldest files until at most `budget` bytes remain.
    pub fn evict_to(&mut self, budget: u64, gone: &mut Vec<u64>) -> usize {
        let mut n = 0;
        while self.bytes > budget {
            let Some((seq, id)) = self.fifo.pop_front() else {
                debug_assert!(false, "bytes accounted but no FIFO records");
                break;
            };
            if self.is_current(id, seq) && self.remove(id, gone) {
                n += 1;
            }
        }
        n
    }

    /// Drops stale FIFO records once they outnumber the live files.
    fn compact(&mut self) {
        if self.fifo.len() as u64 > 2 * self.files + 64 {
            let live: Vec<(u64, Id)> = self
                .fifo
                .iter()
                .copied()
                .filter(|&(seq, id)| self.is_current(id, seq))
                .collect();
            self.fifo = live.into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, key: &str, variant: u128, size: u64, tags: &[&'static str]) -> Entry {
        Entry {
            seq,
            size,
            variant,
            full_key: key.as_bytes().into(),
            vary: Arc::new([]),
            variant_bytes: Arc::new([]),
            tags: tags
                .iter()
                .map(|t| Bytes::from_static(t.as_bytes()))
                .collect(),
        }
    }

    #[test]
    fn replace_purge_and_evict_keep_bytes_and_indexes_consistent() {
        let mut ix = Index::default();
        let mut gone = Vec::new();
        ix.insert(1, entry(1, "https://h/a", 0, 10, &["t"]), &mut gone);
        ix.insert(2, entry(2, "https://h/a/b", 0, 20, &[]), &mut gone);
        ix.insert(3, entry(3, "https://h/ab", 7, 30, &["t"]), &mut gone);
        ix.insert(3, entry(4, "https://h/ab", 8, 40, &[]), &mut gone);
        assert_eq!((ix.files, ix.bytes), (4, 100));
        // Same variant again: the old file goes.
        ix.insert(1, entry(5, "https://h/a", 0, 15, &[]), &mut gone);
        assert_eq!(gone, [1]);
        assert_eq!((ix.files, ix.bytes), (4, 105));
        // The tag left with the replaced file; only id (3, 7) keeps it.
        gone.clear();
        assert_eq!(ix.purge(Matcher::Tag(b"t"), &mut gone), 1);
        assert_eq!(gone, [3]);
        assert!(ix.contains(3), "the other variant stays");
        gone.clear();
        assert_eq!(ix.purge(Matcher::Prefix(b"https://h/a"), &mut gone), 2);
        gone.sort();
        assert_eq!(gone, [2, 5]);
        assert!(ix.contains(3), "/ab is not under /a");
        gone.clear();
        ix.insert(9, entry(6, "https://h/x", 0, 50, &[]), &mut gone);
        ix.insert(10, entry(7, "https://h/y", 0, 50, &[]), &mut gone);
        assert_eq!(ix.evict_to(100, &mut gone), 1);
        assert_eq!(gone, [4], "oldest first");
        assert_eq!((ix.files, ix.bytes), (2, 100));
        gone.clear();
        assert_eq!(ix.remove_primary(9, &mut gone), 1, "an invalidation");
        assert_eq!(ix.purge(Matcher::Url(b"https://h/y"), &mut gone), 1);
        assert_eq!((ix.files, ix.bytes), (0, 0));
        assert!(ix.by_key.is_empty() && ix.tags.is_empty());
    }
}
