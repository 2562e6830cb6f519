//! The memory tier: one store per engine, shared by every worker.
//!
//! **Locking.** Objects live in `shards` (a power of two) chosen by the
//! primary key's hash; every variant of a primary key lives in its shard.
//! Each shard is one `Mutex` whose critical sections are a few hash-map
//! operations and pointer moves: a hit takes the lock once (find, compare
//! the full key, bump a frequency, clone an `Arc`), never across I/O, and
//! objects evicted or replaced are dropped after the lock is released.
//! Body chunks are read through the object's own body, not under
//! the shard lock. Purges by prefix or tag visit the
//! shards one at a time.
//!
//! **Eviction: S3-FIFO** (Yang et al., SOSP '23) per shard, by bytes: new
//! objects enter a small FIFO (10 % of the budget); one not read again
//! before it reaches the head goes to a ghost list of hashes and is
//! dropped, one that was read moves to the main FIFO; the main FIFO
//! reinserts an object while its 2-bit frequency is non-zero. An object
//! whose hash is in the ghost list goes straight to main. A scan (objects
//! read once) passes through the small FIFO without displacing the main one.
//!
//! Why not `quick_cache` (a maintained S3-FIFO-like cache) or `moka`
//! (W-TinyLFU): an object being streamed in grows after insertion, and the
//! Vary variants and surrogate-key index must change in the same critical
//! section as an eviction; both crates weigh an entry once and report
//! evictions through callbacks outside their shard lock, so the indexes
//! would need a second lock and could disagree. moka also runs
//! housekeeping and allocates per operation.

mod object;
pub(crate) mod purge_log;
mod shard;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use smallvec::SmallVec;

use crate::disk::{Matcher, Offer, PendingWriter, Shared as DiskShared};
use crate::headers::HeaderView;
use crate::key::{
    self, CacheKey, KeyHasher, variant_bytes, variant_hash, variant_hash_of_bytes, variant_matches,
};
use crate::meta::CacheMeta;
use object::Body;
pub use object::{Append, BodyReader, Object, Read};
use purge_log::{PurgeLog, Purged, Since};
use shard::{Id, Shard};

/// Sizing and indexing of a [`MemoryStore`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Byte budget of the whole store (headers + bodies + bookkeeping).
    pub max_bytes: usize,
    /// Number of shards (rounded up to a power of two).
    pub shards: usize,
    /// Largest object kept; a bigger one is streamed to its readers but
    /// leaves the store.
    pub max_object_bytes: usize,
    /// Response header whose space- or comma-separated values tag an object
    /// for purge by surrogate key (e.g. `surrogate-key`, `cache-tag`).
    pub tag_header: Option<String>,
    /// Seed of the key and variant hashes. The engine must pass a random
    /// seed (e.g. from the OS at startup): with a known seed, a client can
    /// craft colliding keys and push out objects it wants gone. (Full keys
    /// and variant bytes are compared, so a collision is a miss, never a
    /// wrong answer.) The `Default` is fixed, for tests.
    pub key_seed: u128,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_bytes: 256 << 20,
            shards: 16,
            max_object_bytes: 8 << 20,
            tag_header: Some("surrogate-key".into()),
            key_seed: 0x5eed,
        }
    }
}

/// What one purge reached: objects in memory and files of the disk tier
/// (an object may be in both; after a restart, only on disk).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeCount {
    pub memory: usize,
    pub disk: usize,
}

/// Light purge marks objects stale (served stale while one request
/// revalidates); hard purge deletes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PurgeMode {
    Light,
    Hard,
}

/// What [`MemoryStore::refresh_outcome`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refresh {
    /// The stored object carries the merged metadata now.
    Refreshed,
    /// The object had been replaced or removed meanwhile; nothing changed.
    Gone,
    /// The merged response may not be stored (`no-store`, `private`,
    /// `Vary: *`) or varies differently: the object was evicted.
    Evicted,
}

/// Why an insert was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    #[error("the object is larger than the largest object the store keeps")]
    TooLarge,
    /// A hard purge reached the key after the fetch started
    /// ([`MemoryStore::insert_since`]): the response predates it.
    #[error("the key was purged after the response was requested")]
    Purged,
    /// No freshness lifetime and no validator: it could never be served
    /// without a full fetch.
    #[error("the response is stale at once and has no validator")]
    NotWorthStoring,
}

/// Store-wide counters (atomics, updated under the shard locks).
#[derive(Debug, Default)]
pub(crate) struct StoreCounters {
    pub inserted: AtomicU64,
    pub evicted: AtomicU64,
    pub bytes_evicted: AtomicU64,
    pub bytes_inserted: AtomicU64,
    pub purged: AtomicU64,
    pub objects: AtomicU64,
    pub bytes: AtomicU64,
}

/// A snapshot of the store's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub inserted: u64,
    pub evicted: u64,
    pub bytes_evicted: u64,
    /// Bytes ever accounted to stored objects (headers and body).
    pub bytes_inserted: u64,
    pub purged: u64,
    /// Objects and bytes stored now.
    pub objects: u64,
    pub bytes: u64,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    shard_budget: usize,
    max_object: usize,
    tag_header: Option<String>,
    hasher: KeyHasher,
    counters: StoreCounters,
    purges: PurgeLog,
    /// The disk tier, once attached: offered completed objects, told of purges.
    disk: OnceLock<Arc<DiskShared>>,
    /// Keys invalidated or removed while no disk tier was attached (None:
    /// more than [`PRE_ATTACH_KEYS`]): a tier attaching later drops their
    /// files, which predate them.
    pre_attach: Mutex<Option<Vec<u128>>>,
    /// Where purges go on disk until a tier attaches (see
    /// [`MemoryStore::journal_purges_until_attached`]); taken by the attach.
    pending: Mutex<Option<PendingWriter>>,
}

/// Invalidated keys remembered for a disk tier not attached yet; past it,
/// nothing the tier's scan found is kept.
const PRE_ATTACH_KEYS: usize = 4096;

/// The shared memory tier. Cloning is cheap (one `Arc`).
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

/// A found object.
#[derive(Clone, Debug)]
pub struct Hit {
    pub object: Arc<Object>,
    id: Id,
}

impl Hit {
    pub fn meta(&self) -> &CacheMeta {
        self.object.meta()
    }
}

/// Appends the body of a new object; readers see chunks as they arrive.
/// Dropped without [`ObjectWriter::finish`]: the body is aborted (readers
/// get [`Read::Aborted`]) and the object leaves the store.
pub struct ObjectWriter {
    store: Arc<Inner>,
    object: Arc<Object>,
    id: Id,
    generation: u64,
    size: usize,
    /// The body length the response declared (Content-Length), and what
    /// was appended: a body cut short is never kept as complete.
    declared: Option<usize>,
    written: usize,
    /// The full key and the key's disk invalidation generation when it was
    /// stored, kept only when a disk tier will be offered the object.
    disk_key: Option<(Arc<[u8]>, u64)>,
    /// Growth not yet accounted in the shard (see `GROW_BATCH`).
    pending: usize,
    last: Append,
    detached: bool,
    finished: bool,
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Objects dropped after a shard lock is released.
type Dropped = SmallVec<[Arc<Object>; 4]>;

impl MemoryStore {
    pub fn new(cfg: &StoreConfig) -> Self {
        let n = cfg.shards.max(1).next_power_of_two();
        let shard_budget = (cfg.max_bytes / n).max(1);
        MemoryStore {
            inner: Arc::new(Inner {
                shards: (0..n).map(|_| Mutex::new(Shard::default())).collect(),
                shard_budget,
                max_object: cfg.max_object_bytes.min(shard_budget),
                tag_header: cfg.tag_header.as_ref().map(|t| t.to_ascii_lowercase()),
                hasher: KeyHasher::new(cfg.key_seed),
                counters: StoreCounters::default(),
                purges: PurgeLog::default(),
                disk: OnceLock::new(),
                pre_attach: Mutex::new(Some(Vec::new())),
                pending: Mutex::new(None),
            }),
        }
    }

    /// The store's key hasher (primary keys must be made with it).
    pub fn hasher(&self) -> &KeyHasher {
        &self.inner.hasher
    }

    fn shard(&self, primary: u128) -> &Mutex<Shard> {
        self.inner.shard(primary)
    }

    /// Finds the object for a request: primary key, then the variant its
    /// `Vary` names select from `req` (hashed outside the shard lock, then
    /// compared byte for byte). No allocation.
    pub fn lookup(&self, key: &CacheKey<'_>, req: &dyn HeaderView) -> Option<Hit> {
        let shard = self.shard(key.hash);
        let vary = {
            let mut s = lock(shard);
            let p = s.primary(key.hash)?;
            if !key.matches(&p.full_key) {
                return None;
            }
            if p.vary.is_empty() {
                let id = (key.hash, 0);
                return s.touch(id).map(|object| Hit { object, id });
            }
            Arc::clone(&p.vary)
        };
        let id = (key.hash, variant_hash(&vary, req, &self.inner.hasher));
        let object = lock(shard).touch(id)?;
        // The object's own Vary list: the primary's may have changed since.
        if !variant_matches(&object.meta.vary, req, &object.variant) {
            return None;
        }
        Some(Hit { object, id })
    }

    /// Starts storing a response: the object is visible to lookups at once
    /// and readers stream its body while it is written. `body_len`: the
    /// length if known (`Content-Length`), to refuse what cannot fit.
    ///
    /// A response with a freshness lifetime of 0 (or `no-cache`) and no
    /// validator is refused ([`InsertError::NotWorthStoring`]). Prefer
    /// [`MemoryStore::insert_since`], which also guards against purges
    /// that ran while the response was being fetched.
    pub fn insert(
        &self,
        key: &CacheKey<'_>,
        req: &dyn HeaderView,
        meta: CacheMeta,
        body_len: Option<usize>,
    ) -> Result<ObjectWriter, InsertError> {
        self.insert_inner(key, req, meta, body_len, None)
    }

    /// The purge epoch: capture it when a fetch starts (when the lock is
    /// acquired, before the request goes upstream) and pass it to
    /// [`MemoryStore::insert_since`].
    pub fn purge_epoch(&self) -> u64 {
        self.inner.purges.epoch()
    }

    /// [`MemoryStore::insert`] for a response whose fetch started at purge
    /// epoch `since`: if a hard purge reached this key (by URL, prefix or
    /// one of the response's tags) since, it is refused
    /// ([`InsertError::Purged`]: serve it, do not store it); after a light
    /// one it is stored marked light-purged (revalidated on its next use).
    pub fn insert_since(
        &self,
        key: &CacheKey<'_>,
        req: &dyn HeaderView,
        meta: CacheMeta,
        body_len: Option<usize>,
        since: u64,
    ) -> Result<ObjectWriter, InsertError> {
        self.insert_inner(key, req, meta, body_len, Some(since))
    }

    fn insert_inner(
        &self,
        key: &CacheKey<'_>,
        req: &dyn HeaderView,
        meta: CacheMeta,
        body_len: Option<usize>,
        since: Option<u64>,
    ) -> Result<ObjectWriter, InsertError> {
        if !meta.worth_storing() {
            return Err(InsertError::NotWorthStoring);
        }
        let tags = self.tags(&meta);
        let meta_weight = meta.weight() + tags_weight(&tags);
        let full_key: Arc<[u8]> = key.to_bytes().into();
        let variant: Arc<[u8]> = variant_bytes(&meta.vary, req).into();
        // The key and variant bytes stay with the object through refreshes.
        let fixed_weight = full_key.len() + variant.len();
        let weight = meta_weight + fixed_weight;
        if weight + body_len.unwrap_or(0) > self.inner.max_object {
            return Err(InsertError::TooLarge);
        }
        let v = variant_hash(&meta.vary, req, &self.inner.hasher);
        let id = (key.hash, v);
        let epoch = self.inner.purges.epoch();
        let object = Arc::new(Object::new(meta, Arc::new(Body::new()), variant, epoch));
        let disk_key = self
            .inner
            .disk
            .get()
            .map(|d| (Arc::clone(&full_key), d.generation(key.hash)));
        let mut dropped = Dropped::new();
        let generation = {
            let mut s = lock(self.shard(key.hash));
            // Under the shard lock: a purge records itself before scanning.
            match since.map(|e| self.inner.purges.since(e, &full_key, &tags)) {
                Some(Since::Hard) => return Err(InsertError::Purged),
                Some(Since::Light) => object
                    .light_purged
                    .store(true, std::sync::atomic::Ordering::Release),
                Some(Since::Clean) | None => {}
            }
            let generation = s.insert(
                id,
                full_key,
                Arc::clone(&object),
                meta_weight,
                fixed_weight,
                tags,
                &self.inner.counters,
                &mut dropped,
            );
            s.evict(self.inner.shard_budget, &self.inner.counters, &mut dropped);
            generation
        };
        drop(dropped);
        self.inner.counters.inserted.fetch_add(1, Ordering::Relaxed);
        Ok(ObjectWriter {
            store: Arc::clone(&self.inner),
            object,
            id,
            generation,
            size: weight,
            declared: body_len,
            disk_key,
            written: 0,
            pending: 0,
            last: Append::Stored,
            detached: false,
            finished: false,
        })
    }

    /// Replaces a hit's metadata after a 304 (the body is kept and shared);
    /// clears a light purge. False if the object was replaced or removed
    /// meanwhile, or had to be evicted (see [`MemoryStore::refresh_outcome`]);
    /// the merged response can still be served.
    pub fn refresh(&self, hit: &Hit, meta: CacheMeta) -> bool {
        self.refresh_outcome(hit, meta) == Refresh::Refreshed
    }

    /// [`MemoryStore::refresh`], saying what happened. The merged headers
    /// decide the stored object's weight and tags from now on; a 304 whose
    /// merged headers forbid storing (`no-store`, `private`, `Vary: *`) or
    /// name a different `Vary` list evicts the object instead: serve the
    /// merged response to this request only.
    pub fn refresh_outcome(&self, hit: &Hit, meta: CacheMeta) -> Refresh {
        if !crate::revalidate::keeps_stored(&meta) || meta.vary != hit.object.meta.vary {
            return if self.remove(hit) {
                Refresh::Evicted
            } else {
                Refresh::Gone
            };
        }
        let tags = self.tags(&meta);
        let meta_weight = meta.weight() + tags_weight(&tags);
        let new = Arc::new(Object::new(
            meta,
            Arc::clone(&hit.object.body),
            Arc::clone(&hit.object.variant),
            hit.object.epoch,
        ));
        let disk = self.inner.disk.get();
        let mut dropped = Dropped::new();
        let (old, full_key) = {
            let mut s = lock(self.shard(hit.id.0));
            let old = s.refresh(
                hit.id,
                &hit.object,
                Arc::clone(&new),
                meta_weight,
                tags,
                &self.inner.counters,
            );
            let mut full_key = None;
            if old.is_some() {
                if let Some(d) = disk {
                    full_key = s
                        .primary(hit.id.0)
                        .map(|p| (Arc::clone(&p.full_key), d.generation(hit.id.0)));
                }
                s.evict(self.inner.shard_budget, &self.inner.counters, &mut dropped);
            }
            (old, full_key)
        };
        match old {
            Some(_) => {
                // The disk copy gets the merged headers too (else a restart
                // serves the old ones, and revalidates for nothing).
                if let (Some(d), Some((full_key, generation))) = (disk, full_key)
                    && new.is_complete()
                {
                    d.offer(Offer {
                        epoch: new.epoch,
                        bytes: new.body_len() as u64,
                        object: new,
                        primary: hit.id.0,
                        variant: hit.id.1,
                        full_key,
                        generation,
                    });
                }
                Refresh::Refreshed
            }
            None => Refresh::Gone,
        }
    }

    /// Hard-removes one stored object (e.g. an origin's answer showed it
    /// invalid); the key's disk copies go too (else a later miss would
    /// load the invalid one back).
    pub fn remove(&self, hit: &Hit) -> bool {
        self.invalidate_on_disk(hit.id.0);
        let mut dropped = Dropped::new();
        let mut s = lock(self.shard(hit.id.0));
        let removed = s.remove_if(hit.id, &hit.object, &self.inner.counters, &mut dropped);
        drop(s);
        removed
    }

    /// Marks stale every variant stored under exactly this key (RFC 9111
    /// §4.4, after an unsafe method succeeded): one shard, no purge log
    /// entry (a request may do this; it must not cost every shard a scan
    /// nor make in-flight fetches elsewhere refuse to store). Returns how
    /// many objects it marked.
    pub fn invalidate(&self, key: &CacheKey<'_>) -> usize {
        // A disk copy cannot be marked stale in place: it goes.
        self.invalidate_on_disk(key.hash);
        let mut dropped = Dropped::new();
        let mut s = lock(self.shard(key.hash));
        let ok = s
            .primary(key.hash)
            .is_some_and(|p| key.matches(&p.full_key));
        let n = if ok {
            s.purge_primary(
                key.hash,
                PurgeMode::Light,
                &self.inner.counters,
                &mut dropped,
            )
        } else {
            0
        };
        drop(s);
        n
    }

    /// Purges every object stored under the key's URL: every Vary variant,
    /// and every key made with other request headers (`KeyConfig::headers`)
    /// whose scheme, host, path and query equal the key's. Visits every
    /// shard (a range scan each), a bounded batch per lock hold.
    pub fn purge_key(&self, key: &CacheKey<'_>, mode: PurgeMode) -> usize {
        self.purge_key_counted(key, mode).memory
    }

    /// [`Self::purge_key`], with the disk tier's files counted apart.
    pub fn purge_key_counted(&self, key: &CacheKey<'_>, mode: PurgeMode) -> PurgeCount {
        let url = key::url_bytes(&key.parts, key.cfg);
        let disk = self.record(Purged::Url(url.clone().into()), mode, Matcher::Url(&url));
        let memory = self.purge_matching(&url, mode, |k| purge_log::url_matches(&url, k));
        PurgeCount { memory, disk }
    }

    /// Purges every object whose key is under `prefix` (see
    /// [`crate::key::purge_prefix`]) on a boundary: the prefix must end
    /// where the key does or before a `/`, `?` or header part, or itself
    /// end with `/` — `/img` purges `/img`, `/img/a` and `/img?x`, not
    /// `/imgs` (and `https://host` not `https://host:8443`). Visits every
    /// shard, a bounded batch per lock hold.
    pub fn purge_prefix(&self, prefix: &[u8], mode: PurgeMode) -> usize {
        self.purge_prefix_counted(prefix, mode).memory
    }

    /// [`Self::purge_prefix`], with the disk tier's files counted apart.
    pub fn purge_prefix_counted(&self, prefix: &[u8], mode: PurgeMode) -> PurgeCount {
        let disk = self.record(Purged::Prefix(prefix.into()), mode, Matcher::Prefix(prefix));
        let memory = self.purge_matching(prefix, mode, |k| purge_log::prefix_matches(prefix, k));
        PurgeCount { memory, disk }
    }

    /// The disk copies of `primary` go: the tier's thread deletes them (a
    /// worker never waits on its index); before a tier attaches, the key
    /// is remembered for it (`take_pre_attach`).
    fn invalidate_on_disk(&self, primary: u128) {
        if let Some(d) = self.inner.disk.get() {
            d.invalidate(primary);
            return;
        }
        {
            let mut keys = self
                .inner
                .pre_attach
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(v) = keys.as_mut() {
                if v.len() < PRE_ATTACH_KEYS {
                    v.push(primary);
                } else {
                    *keys = None;
                }
            }
        }
        // A tier attached meanwhile took the list before this key was in
        // it, or finds it there: its files go either way.
        if let Some(d) = self.inner.disk.get() {
            d.invalidate(primary);
        }
    }

    /// The keys invalidated before a disk tier attached (None: too many to
    /// name); from now on they go to the tier.
    pub(crate) fn take_pre_attach(&self) -> Option<Vec<u128>> {
        let mut keys = self
            .inner
            .pre_attach
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        keys.replace(Vec::new())
    }

    /// Records a purge in the purge log; with a disk tier, under its index
    /// lock, and the disk tier's matching files go first (light or hard: a
    /// file cannot be marked stale in place). Returns how many files that
    /// was (`purge_*` return memory objects; `purge_*_counted` both).
    fn record(&self, what: Purged, mode: PurgeMode, m: Matcher<'_>) -> usize {
        match self.inner.disk.get() {
            Some(d) => d.purge(m, || self.inner.purges.record(what, mode)),
            None => {
                self.inner.purges.record(what, mode);
                self.journal_pending(Some(m), mode);
                // A tier attached meanwhile replayed the log before this
                // entry was in it, or sees it: its files go either way.
                self.inner.disk.get().map_or(0, |d| d.purge(m, || {}))
            }
        }
    }

    /// Writes a purge made while no tier is attached to the tier's
    /// pending file (if the store was told its directory), before the
    /// purge returns: a stop or crash before the attach does not forget
    /// it. A failure is counted (`DiskStats::journal_errors` once the
    /// tier attaches); the purge still holds in memory.
    fn journal_pending(&self, m: Option<Matcher<'_>>, mode: PurgeMode) {
        let mut w = self.pending_writer();
        // An attach holds this lock from before it reads the file until it
        // took the writer away; after that, the tier has this purge.
        if self.inner.disk.get().is_none()
            && let Some(w) = w.as_mut()
        {
            let _ = w.append(m, mode);
        }
    }

    /// The pending file's writer (the attach holds it while it reads and
    /// removes the file).
    pub(crate) fn pending_writer(&self) -> MutexGuard<'_, Option<PendingWriter>> {
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the purges made before a disk tier attaches survive a stop or
    /// a crash: from now until a tier attaches to this store, each purge is
    /// also appended to `purges.pending` in `dir` (the tier's directory,
    /// created if missing) and flushed to disk before it returns, and the
    /// purges already made are written now. The tier's open (this run's,
    /// or the next start's) applies that file to the files it finds
    /// before serving any, then removes it. Call before the tier's open
    /// starts (the engine scans the directory beside its workers). Does
    /// nothing once a tier is attached or a directory was given; the
    /// error is that of writing the purges already made (later ones are
    /// still written).
    pub fn journal_purges_until_attached(&self, dir: impl Into<PathBuf>) -> std::io::Result<()> {
        let mut slot = self.pending_writer();
        if self.inner.disk.get().is_some() || slot.is_some() {
            return Ok(());
        }
        let mut w = PendingWriter::new(dir.into());
        // Copied out first: no file I/O under the purge log's lock (workers
        // read it while storing). A purge recorded meanwhile waits for
        // `slot` and is written after these.
        let mut made = Vec::new();
        let whole = self.replay_purges_since(0, |m, mode| {
            made.push(match m {
                Matcher::Url(v) => (0, v.to_vec(), mode),
                Matcher::Prefix(v) => (1, v.to_vec(), mode),
                Matcher::Tag(v) => (2, v.to_vec(), mode),
            })
        });
        let mut r = Ok(());
        for (kind, v, mode) in &made {
            let m = match kind {
                0 => Matcher::Url(v),
                1 => Matcher::Prefix(v),
                _ => Matcher::Tag(v),
            };
            if let Err(e) = w.append(Some(m), *mode) {
                r = Err(e);
            }
        }
        if !whole && let Err(e) = w.append(None, PurgeMode::Hard) {
            r = Err(e);
        }
        *slot = Some(w);
        r
    }

    /// Calls `f` with a matcher for each purge recorded after `since`
    /// (a disk tier that was scanning while they ran); false when the log
    /// no longer reaches back that far.
    pub(crate) fn replay_purges_since(
        &self,
        since: u64,
        mut f: impl FnMut(Matcher<'_>, PurgeMode),
    ) -> bool {
        self.inner.purges.replay_since(since, |p, mode| match p {
            Purged::Url(u) => f(Matcher::Url(u), mode),
            Purged::Prefix(p) => f(Matcher::Prefix(p), mode),
            Purged::Tag(t) => f(Matcher::Tag(t), mode),
        })
    }

    /// Marks stale every variant stored under `primary` (the disk tier,
    /// after loading what an invalidation reached meanwhile).
    pub(crate) fn light_purge_primary(&self, primary: u128) {
        let mut dropped = Dropped::new();
        let mut s = lock(self.shard(primary));
        s.purge_primary(
            primary,
            PurgeMode::Light,
            &self.inner.counters,
            &mut dropped,
        );
    }

    pub(crate) fn has_disk(&self) -> bool {
        self.inner.disk.get().is_some()
    }

    /// Attaches a disk tier (once per store).
    pub(crate) fn attach_disk(&self, d: Arc<DiskShared>) -> bool {
        self.inner.disk.set(d).is_ok()
    }

    /// Whether a purge since `epoch` reaches the key (light or hard).
    pub(crate) fn purged_since(&self, epoch: u64, full_key: &[u8], tags: &[Bytes]) -> bool {
        self.inner.purges.since(epoch, full_key, tags) != Since::Clean
    }

    /// Inserts a complete object read back from a lower tier (the disk):
    /// its full key and variant bytes as stored, its metadata and whole
    /// body. `since`: the purge epoch read before the object was looked up
    /// there (a purge since refuses it, as in [`MemoryStore::insert_since`]).
    /// An object already stored under the key and variant, or variants of
    /// the key under another `Vary` list, are kept: `Ok(false)`.
    pub fn insert_loaded(
        &self,
        full_key: &[u8],
        variant: &[u8],
        meta: CacheMeta,
        body: Bytes,
        since: u64,
    ) -> Result<bool, InsertError> {
        if !meta.worth_storing() {
            return Err(InsertError::NotWorthStoring);
        }
        let primary = self.inner.hasher.hash_bytes(full_key);
        let id = (
            primary,
            variant_hash_of_bytes(&meta.vary, variant, &self.inner.hasher),
        );
        let tags = self.tags(&meta);
        let meta_weight = meta.weight() + tags_weight(&tags);
        // In pieces as the proxy stores them (slices of one buffer).
        let pieces = body.len().div_ceil(LOADED_PIECE);
        let fixed_weight = full_key.len() + variant.len() + body.len() + pieces * CHUNK_OVERHEAD;
        if meta_weight + fixed_weight > self.inner.max_object {
            return Err(InsertError::TooLarge);
        }
        let b = Body::new();
        for i in 0..pieces {
            let end = ((i + 1) * LOADED_PIECE).min(body.len());
            b.append(body.slice(i * LOADED_PIECE..end), usize::MAX);
        }
        b.finish();
        let object = Arc::new(Object::new(meta, Arc::new(b), variant.into(), since));
        let mut dropped = Dropped::new();
        {
            let mut s = lock(self.shard(primary));
            // What memory holds under the key is as new or newer: another
            // Vary list (or a colliding key) there is not replaced.
            let other = s
                .primary(primary)
                .is_some_and(|p| *p.full_key != *full_key || p.vary[..] != object.meta.vary[..]);
            if other || s.has(id) {
                return Ok(false);
            }
            match self.inner.purges.since(since, full_key, &tags) {
                Since::Hard => return Err(InsertError::Purged),
                Since::Light => object.light_purged.store(true, Ordering::Release),
                Since::Clean => {}
            }
            s.insert(
                id,
                full_key.into(),
                object,
                meta_weight,
                fixed_weight,
                tags,
                &self.inner.counters,
                &mut dropped,
            );
            s.evict(self.inner.shard_budget, &self.inner.counters, &mut dropped);
        }
        drop(dropped);
        self.inner.counters.inserted.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Purges the primaries whose full key starts with `prefix` and passes
    /// `keep`, `PURGE_BATCH` keys per shard lock hold.
    fn purge_matching(&self, prefix: &[u8], mode: PurgeMode, ok: impl Fn(&[u8]) -> bool) -> usize {
        let mut n = 0;
        let mut batch = Vec::with_capacity(PURGE_BATCH);
        for m in self.inner.shards.iter() {
            let mut from: Arc<[u8]> = prefix.into();
            let mut after = false;
            loop {
                batch.clear();
                let mut dropped = Dropped::new();
                let mut s = lock(m);
                s.keys_with_prefix(prefix, &from, after, PURGE_BATCH, &mut batch);
                for (k, p) in &batch {
                    if ok(k) {
                        n += s.purge_primary(*p, mode, &self.inner.counters, &mut dropped);
                    }
                }
                drop(s);
                drop(dropped);
                match batch.last() {
                    Some((k, _)) if batch.len() == PURGE_BATCH => {
                        from = Arc::clone(k);
                        after = true;
                    }
                    _ => break,
                }
            }
        }
        n
    }

    /// Purges every object tagged `tag` by the configured tag header,
    /// a bounded batch per shard lock hold.
    pub fn purge_tag(&self, tag: &[u8], mode: PurgeMode) -> usize {
        self.purge_tag_counted(tag, mode).memory
    }

    /// [`Self::purge_tag`], with the disk tier's files counted apart.
    pub fn purge_tag_counted(&self, tag: &[u8], mode: PurgeMode) -> PurgeCount {
        let disk = self.record(
            Purged::Tag(Bytes::copy_from_slice(tag)),
            mode,
            Matcher::Tag(tag),
        );
        let mut n = 0;
        for m in self.inner.shards.iter() {
            let ids: Vec<Id> = lock(m).tagged(tag).collect();
            for chunk in ids.chunks(PURGE_BATCH) {
                let mut dropped = Dropped::new();
                let mut s = lock(m);
                for id in chunk {
                    n += s.purge_id(*id, mode, &self.inner.counters, &mut dropped);
                }
                drop(s);
            }
        }
        PurgeCount { memory: n, disk }
    }

    pub fn stats(&self) -> StoreStats {
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreStats {
            inserted: l(&c.inserted),
            evicted: l(&c.evicted),
            bytes_evicted: l(&c.bytes_evicted),
            bytes_inserted: l(&c.bytes_inserted),
            purged: l(&c.purged),
            objects: l(&c.objects),
            bytes: l(&c.bytes),
        }
    }

    /// The tags the configured tag header gives an object.
    pub(crate) fn tags(&self, meta: &CacheMeta) -> SmallVec<[Bytes; 4]> {
        let mut tags = SmallVec::new();
        if let Some(h) = &self.inner.tag_header {
            meta.headers.for_each_value(h, &mut |v| {
                for t in v
                    .split(|&b| b == b' ' || b == b',' || b == b'\t')
                    .filter(|t| !t.is_empty() && t.len() <= MAX_TAG_LEN)
                {
                    // Bounded: an origin cannot make the index grow without limit.
                    if tags.len() < MAX_TAGS && !tags.iter().any(|x: &Bytes| x == t) {
                        tags.push(Bytes::copy_from_slice(t));
                    }
                }
            });
        }
        tags
    }
}

/// Tags indexed per object (more are ignored).
pub const MAX_TAGS: usize = 32;
/// Longest tag indexed (longer ones are ignored).
pub const MAX_TAG_LEN: usize = 256;

/// Bytes the tag index costs for an object's tags (the key copy, the set
/// entry and its share of the map).
fn tags_weight(tags: &[Bytes]) -> usize {
    tags.iter().map(|t| t.len() + 64).sum()
}

impl Inner {
    fn shard(&self, primary: u128) -> &Mutex<Shard> {
        // The low bits feed the shard's hash maps; use high ones here.
        &self.shards[(primary >> 100) as usize & (self.shards.len() - 1)]
    }
}

/// Piece size of a body loaded whole ([`MemoryStore::insert_loaded`]): the
/// proxy's fill size, so a hit from disk is sent like any other.
const LOADED_PIECE: usize = 16 * 1024;

/// Keys a purge handles per shard lock hold (workers wait at most that long).
const PURGE_BATCH: usize = 64;

/// Growth of a stored object is accounted in batches of this many bytes
/// (one shard lock per batch, not per chunk).
const GROW_BATCH: usize = 16 * 1024;

/// Bytes counted per body chunk besides its data (the `Bytes` handle and
/// its slot in the chunk list).
pub(crate) const CHUNK_OVERHEAD: usize = 48;

/// Chunks smaller than this are copied before they are kept: a small slice
/// of a big `Bytes` would keep the whole allocation alive unaccounted.
const COPY_BELOW: usize = 16 * 1024;

impl ObjectWriter {
    /// The object being written (to serve the fetching client from too).
    pub fn object(&self) -> &Arc<Object> {
        &self.object
    }

    /// Appends a body chunk; readers see it at once. [`ObjectWriter::push`]
    /// also says whether to keep feeding; here [`ObjectWriter::status`]
    /// tells it afterwards.
    pub fn append(&mut self, chunk: Bytes) {
        self.push(chunk);
    }

    /// What the last append did ([`Append::Stored`] before any): on
    /// [`Append::Detached`] stop feeding, on [`Append::Full`] pause.
    pub fn status(&self) -> Append {
        self.last
    }

    /// Appends a body chunk and says whether to keep feeding; readers see
    /// it at once. Create the readers
    /// (e.g. the fetching client's) before the first append: a body that
    /// leaves the store with no reader stops buffering.
    ///
    /// An object that outgrows the largest object size, or is evicted,
    /// replaced or purged meanwhile, leaves the store; its readers keep
    /// reading it to the end, and chunks every reader has read are
    /// released. The result says whether to keep feeding ([`Append`]).
    /// Chunks under 16 KiB are copied (a small slice must not pin a big
    /// buffer); bigger ones are kept as given and counted at their length.
    pub fn push(&mut self, chunk: Bytes) -> Append {
        let r = self.push_inner(chunk);
        self.last = r;
        r
    }

    fn push_inner(&mut self, chunk: Bytes) -> Append {
        let chunk = if chunk.len() < COPY_BELOW {
            Bytes::copy_from_slice(&chunk)
        } else {
            chunk
        };
        let n = chunk.len();
        self.written += n;
        let max = self.store.max_object;
        if self.detached {
            return self.object.body.append(chunk, max);
        }
        let cost = n + CHUNK_OVERHEAD;
        self.size += cost;
        if self.size > max {
            self.leave_store();
            return self.object.body.append(chunk, max);
        }
        let r = self.object.body.append(chunk, max);
        self.pending += cost;
        if self.pending >= GROW_BATCH && !self.flush() {
            // Evicted, replaced or purged meanwhile: feed the readers only.
            self.detached = true;
            if !self.object.body.detach() {
                return Append::Detached;
            }
            return Append::Streaming;
        }
        r
    }

    /// Body bytes buffered now (for a detached body: not yet read by every
    /// reader); what a caller pausing on [`Append::Full`] waits to drop.
    pub fn buffered(&self) -> usize {
        self.object.body.held()
    }

    /// Whether the object left the store (its readers may still be fed).
    pub fn is_detached(&self) -> bool {
        self.detached
    }

    /// Accounts the pending growth; false if the object is no longer stored.
    fn flush(&mut self) -> bool {
        let n = std::mem::take(&mut self.pending);
        if n == 0 {
            return true;
        }
        let mut dropped = Dropped::new();
        let mut s = lock(self.store.shard(self.id.0));
        let ok = s.grow(self.id, self.generation, n, &self.store.counters);
        if ok {
            s.evict(self.store.shard_budget, &self.store.counters, &mut dropped);
        }
        drop(s);
        ok
    }

    fn leave_store(&mut self) {
        let mut dropped = Dropped::new();
        let mut s = lock(self.store.shard(self.id.0));
        s.remove_gen(self.id, self.generation, &self.store.counters, &mut dropped);
        drop(s);
        drop(dropped);
        self.detached = true;
        self.object.body.detach();
    }

    /// The body is complete. If it is shorter or longer than the declared
    /// length (upstream closed early), it is aborted instead: its readers
    /// see `Aborted` and the object leaves the store.
    pub fn finish(mut self) {
        if self.declared.is_some_and(|n| n != self.written) {
            return;
        }
        if !self.detached && !self.flush() {
            self.detached = true;
        }
        self.finished = true;
        self.object.body.finish();
        if !self.detached
            && let (Some(d), Some((full_key, generation))) =
                (self.store.disk.get(), self.disk_key.take())
        {
            d.offer(Offer {
                object: Arc::clone(&self.object),
                primary: self.id.0,
                variant: self.id.1,
                full_key,
                epoch: self.object.epoch,
                bytes: self.written as u64,
                generation,
            });
        }
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.object.body.abort();
        if !self.detached {
            let mut dropped = Dropped::new();
            let mut s = lock(self.store.shard(self.id.0));
            s.remove_gen(self.id, self.generation, &self.store.counters, &mut dropped);
            drop(s);
        }
    }
}

#[cfg(test)]
mod tests;
