//! The optional disk tier (issue #21): a directory with a byte budget whose
//! objects survive a restart.
//!
//! **No file I/O on a worker.** All reads, writes and deletes run on one
//! thread the tier owns. Workers only enqueue work (a bounded queue, no
//! allocation per job) and read the index under a `RwLock`:
//!
//! * **Writes (write-on-complete).** The [`MemoryStore`] offers every
//!   object whose body completed (and every 304-refreshed one) once a tier
//!   is attached; the thread writes it to a temp file and renames it into
//!   place. Write-on-evict would write fewer files but the store evicts
//!   under its shard locks, mid-insert, and would lose everything still in
//!   memory on a crash; write-on-complete is simpler and restart-safe. A
//!   full queue drops the offer (counted).
//! * **Reads.** [`DiskHandle::contains`] says whether a primary key has
//!   files; [`DiskHandle::load`] with the key's [`FetchPermit`] queues a
//!   load (a queue of its own, served before writes): the thread reads every variant file of the key, checks it and
//!   inserts it into the store ([`MemoryStore::insert_loaded`]), then
//!   releases the permit (`stored()`, or dropped on failure so one waiter
//!   takes over and fetches).
//! * **Purges.** The store calls the tier from every `purge_*` (light or
//!   hard: a disk copy cannot be marked stale in place, so it is deleted):
//!   the matching index entries go at once, the files are deleted by the
//!   thread.
//! * **Invalidations** (an unsafe method's success, a memory removal) come
//!   from workers, which must not wait on the index: they bump the key's
//!   generation bucket (a write or load that started before keeps
//!   nothing fresh) and queue the key; the thread removes its files before
//!   its next load or write. The purge is recorded in the store's
//!   purge log under the index's write lock, which makes a load (which
//!   reads the purge epoch and the index under that lock) and a write
//!   (which checks the log under it) either see the purge or be seen by it.
//! * **Budget.** Total file bytes ≤ `max_bytes`, oldest written first out.
//!
//! Files: `<seq>.fgc` (16 hex digits, write order), written as
//! `<seq>.tmp` first; see [`format`] for the layout. A `lock` file is
//! locked (`flock`) while a store uses the directory: a second tier (another
//! engine) is refused with [`DiskError::Busy`]. At open the directory
//! is scanned (headers only): temp files and files that fail to parse are
//! deleted, keys are rehashed with the store's hasher (the seed may differ
//! between runs), and the oldest files over the budget are deleted.
//!
//! **Locks.** The index `RwLock` is never held across I/O, and never
//! waited for on a worker: `contains*` only try it (a writer holding it
//! makes them answer "no": a miss). A purge (the admin API's thread) holds
//! it for writing while it removes its matches (O(matches), no I/O).
//!
//! **Purges survive a crash.** A purge's files are deleted by the thread
//! shortly after (and before a clean shutdown ends); so that a crash in
//! between cannot serve them again, the purge writes their names to a
//! journal ([`journal`]) before it returns, and the next open deletes
//! what the journal names before it scans.
//!
//! **So do purges made before the attach** (the engine serves while the
//! tier is scanned): told the directory
//! ([`MemoryStore::journal_purges_until_attached`]), the store appends
//! each one, fsynced, to `purges.pending` there ([`pending`]) before it
//! returns; the open applies that file to the index before it attaches
//! (and so before anything is served), and removes it once the purged
//! files are named by the (flushed) journal. Invalidations before the
//! attach are not written down: they come from workers, which do no file
//! I/O, and name keys by a hash whose seed may change at the next start.

mod format;
mod index;
mod journal;
mod pending;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::headers::HeaderView;
use crate::lock::FetchPermit;
use crate::store::{MemoryStore, Object};
use index::Index;
pub(crate) use index::Matcher;
pub(crate) use pending::PendingWriter;

/// Where and how big the disk tier is.
#[derive(Clone, Debug)]
pub struct DiskConfig {
    /// The directory (created if missing). One tier at a time (a lock
    /// file refuses a second).
    pub dir: PathBuf,
    /// Byte budget of all files together.
    pub max_bytes: u64,
    /// Largest file written (bigger objects stay in memory only).
    pub max_object_bytes: u64,
    /// Writes queued for the thread; more are refused.
    pub queue: usize,
    /// Loads queued for the thread (a queue of their own, served before
    /// writes: a miss never waits behind a backlog of writes); more hand
    /// their permit back.
    pub load_queue: usize,
    /// Body bytes of the objects queued for writing (they stay in memory
    /// until written, whatever the memory store evicts); more are refused.
    pub max_queued_bytes: u64,
    /// fsync each file before renaming it into place (survives power loss,
    /// costs a disk flush per object).
    pub fsync: bool,
    /// How long dropping the tier waits for its thread.
    pub shutdown_wait: Duration,
}

impl DiskConfig {
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        DiskConfig {
            dir: dir.into(),
            max_bytes,
            max_object_bytes: (max_bytes / 8).max(1),
            queue: 1024,
            load_queue: 256,
            max_queued_bytes: 64 << 20,
            fsync: false,
            shutdown_wait: Duration::from_secs(5),
        }
    }
}

/// Why the tier could not open.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cache directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("this memory store already has a disk tier")]
    AlreadyAttached,
    #[error("cache directory {dir} is in use by another process (its lock file is held)")]
    Busy { dir: PathBuf },
    #[error("the disk tier's queues must hold at least one job")]
    ZeroQueue,
}

/// A snapshot of the tier's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Files and bytes on disk now.
    pub files: u64,
    pub bytes: u64,
    pub written: u64,
    /// Offers refused: queue full, too large, or purged before written.
    pub write_dropped: u64,
    /// Objects loaded into the memory store.
    pub loaded: u64,
    /// Loads that found nothing usable (queue full, file gone or bad, purged,
    /// too large for memory).
    pub load_failed: u64,
    /// Load jobs the thread ran (each key's load counts once, whatever it found).
    pub load_jobs: u64,
    /// Keys whose files an unsafe method's success (or a memory removal)
    /// deleted.
    pub invalidated: u64,
    /// Invalidations dropped because too many were queued (the thread is
    /// stuck on the disk).
    pub invalidate_dropped: u64,
    /// Files deleted for the byte budget.
    pub evicted: u64,
    /// Files deleted because they failed to parse or check.
    pub corrupt_deleted: u64,
    /// Files deleted by purges.
    pub purged: u64,
    /// Purge journal writes that failed (those purges' files could come
    /// back after a crash), `purges.pending` appends before the attach
    /// included.
    pub journal_errors: u64,
    /// Purges made before a tier attached (this run's or an earlier
    /// run's, from `purges.pending`) that the open applied.
    pub pending_applied: u64,
    /// `purges.pending` records the open could not read: a torn last
    /// append (a crash while it was written: ignored), or a file unreadable
    /// beyond that (every file the scan found was dropped).
    pub pending_unreadable: u64,
}

#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    write_dropped: AtomicU64,
    loaded: AtomicU64,
    load_failed: AtomicU64,
    load_jobs: AtomicU64,
    invalidated: AtomicU64,
    invalidate_dropped: AtomicU64,
    evicted: AtomicU64,
    corrupt_deleted: AtomicU64,
    purged: AtomicU64,
    journal_errors: AtomicU64,
    pending_applied: AtomicU64,
    pending_unreadable: AtomicU64,
}

/// A completed object to write.
pub(crate) struct Offer {
    pub object: Arc<Object>,
    pub primary: u128,
    pub variant: u128,
    pub full_key: Arc<[u8]>,
    /// The purge epoch the object is known clean at (see `Object::epoch`).
    pub epoch: u64,
    /// Its body length.
    pub bytes: u64,
    /// The key's invalidation generation when the object was stored (see
    /// `Shared::generation`): a newer one means an invalidation came
    /// since, and the object is not written.
    pub generation: u64,
}

pub(crate) enum Job {
    Write(Offer),
    /// Nothing to do but look at the stop flag, pending deletes,
    /// invalidations and loads.
    Wake,
}

/// Buckets of invalidation generations (a power of two): keys share one
/// by hash, so an invalidation may also skip another key's write (a miss
/// later, never a stale hit).
const GENERATIONS: usize = 4096;
/// Invalidations waiting for the thread; more are counted and dropped
/// (their generation bump still stops writes and loads in flight).
const MAX_PENDING_INVALIDATIONS: usize = 1 << 20;

/// What the tier's owner, its handles and the memory store share.
pub(crate) struct Shared {
    cfg: DiskConfig,
    index: RwLock<Index>,
    jobs: SyncSender<Job>,
    loads: SyncSender<(u128, FetchPermit)>,
    /// Invalidation generations by key hash bucket, bumped by workers
    /// (no lock): writes and loads that started before a bump of their
    /// key's bucket do not keep what they wrote or read.
    generations: Box<[AtomicU64]>,
    /// Keys whose files are to go (workers must not wait on the index).
    invalidations: Mutex<Vec<u128>>,
    /// Files (by seq) purged and not deleted yet; `closed` once the thread
    /// has stopped (purges then delete in place).
    deletes: Mutex<Deletes>,
    /// The files purges removed from the index and the thread has not
    /// deleted yet (lock order: journal, then deletes).
    journal: Mutex<journal::Journal>,
    stop: AtomicBool,
    /// Body bytes of queued writes (see `DiskConfig::max_queued_bytes`).
    queued_bytes: AtomicU64,
    /// The directory's lock file, locked (flock) as long as anything may
    /// still write or delete there: the store keeps this alive after the
    /// tier stops (purges then delete in place). A crashed process's lock
    /// goes with it.
    _dir_lock: std::fs::File,
    counters: Counters,
    /// Called by the thread at points where a test wants to interleave.
    #[cfg(test)]
    hook: TestHook,
}

#[cfg(test)]
type TestHook = Mutex<Option<Box<dyn FnMut(&'static str) + Send>>>;

#[derive(Default)]
struct Deletes {
    seqs: Vec<u64>,
    closed: bool,
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A worker must not wait on the index: if the thread or a purge
    /// holds it for writing, the answer is "no" (a miss fetches upstream).
    fn try_read(&self) -> Option<RwLockReadGuard<'_, Index>> {
        match self.index.try_read() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    pub(crate) fn contains(&self, primary: u128) -> bool {
        self.try_read().is_some_and(|ix| ix.contains(primary))
    }

    /// The invalidation generation of `primary`'s bucket.
    pub(crate) fn generation(&self, primary: u128) -> u64 {
        self.generations[(primary as usize) & (GENERATIONS - 1)].load(Ordering::Acquire)
    }

    /// An unsafe method succeeded on the key (or memory removed it): its
    /// files go. Called on a worker: a generation bump (writes and loads in
    /// flight then keep nothing) and a queued request to the thread, which
    /// removes the files before its next load or write; no index lock.
    pub(crate) fn invalidate(&self, primary: u128) {
        self.generations[(primary as usize) & (GENERATIONS - 1)].fetch_add(1, Ordering::AcqRel);
        let mut v = self.invalidations.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() >= MAX_PENDING_INVALIDATIONS {
            drop(v);
            self.counters
                .invalidate_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let first = v.is_empty();
        v.push(primary);
        drop(v);
        if first {
            let _ = self.jobs.try_send(Job::Wake);
        }
    }

    fn take_invalidations(&self) -> Vec<u128> {
        std::mem::take(&mut *self.invalidations.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Queues a completed object (from the store; never blocks).
    pub(crate) fn offer(&self, offer: Offer) {
        let c = &self.counters;
        if offer.object.light_purged() {
            return;
        }
        let n = offer.bytes;
        if n > self.cfg.max_object_bytes
            || self.queued_bytes.fetch_add(n, Ordering::AcqRel) + n > self.cfg.max_queued_bytes
        {
            if n <= self.cfg.max_object_bytes {
                self.queued_bytes.fetch_sub(n, Ordering::AcqRel);
            }
            c.write_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.jobs.try_send(Job::Write(offer)).is_err() {
            self.queued_bytes.fetch_sub(n, Ordering::AcqRel);
            c.write_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A queued write left the queue (written or not).
    fn dequeued(&self, o: &Offer) {
        self.queued_bytes.fetch_sub(o.bytes, Ordering::AcqRel);
    }

    /// Applies a purge to the disk tier: `record` (the store's purge-log
    /// entry, if any) runs under the index write lock, then the matching
    /// entries leave the index (no I/O under that lock: workers' lookups
    /// only try it). Then, under the journal's lock, the files are written
    /// to the journal and queued for deletion by the thread: the thread
    /// cannot shrink the journal between the two (lock order: journal,
    /// then deletes).
    pub(crate) fn purge(&self, m: Matcher<'_>, record: impl FnOnce()) -> usize {
        let mut gone = Vec::new();
        let n = {
            let mut ix = self.write();
            record();
            ix.purge(m, &mut gone)
        };
        self.purged(n, gone)
    }

    /// Journals and queues for deletion the `n` files a purge took out of
    /// the index (`gone`).
    fn purged(&self, n: usize, gone: Vec<u64>) -> usize {
        if n > 0 {
            let mut j = self.journal();
            if j.append(&gone).is_err() {
                self.counters.journal_errors.fetch_add(1, Ordering::Relaxed);
            }
            self.counters.purged.fetch_add(n as u64, Ordering::Relaxed);
            self.delete_later(gone);
        }
        n
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, journal::Journal> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Shrinks the journal to the files still waiting to be deleted (the
    /// thread, after its deletes).
    fn settle_journal(&self) {
        let mut j = self.journal();
        let d = self.deletes.lock().unwrap_or_else(|e| e.into_inner());
        // The journal names every pending file (unless an append failed):
        // as many records as pending files means nothing to drop.
        if j.records() == d.seqs.len() as u64 {
            return;
        }
        if j.rewrite(&d.seqs).is_err() {
            self.counters.journal_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Puts back files whose delete failed (the thread retries them; the
    /// journal keeps naming them).
    fn delete_failed(&self, seqs: Vec<u64>) {
        if seqs.is_empty() {
            return;
        }
        self.deletes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .seqs
            .extend(seqs);
    }

    fn delete_later(&self, seqs: Vec<u64>) {
        let mut d = self.deletes.lock().unwrap_or_else(|e| e.into_inner());
        if d.closed {
            // The thread is gone (shutdown): delete here.
            for s in seqs {
                let _ = std::fs::remove_file(worker::file_path(&self.cfg.dir, s));
            }
            return;
        }
        let first = d.seqs.is_empty();
        d.seqs.extend(seqs);
        drop(d);
        // One wake per batch: a burst of purges must not fill the queue.
        if first {
            let _ = self.jobs.try_send(Job::Wake);
        }
    }

    #[cfg(test)]
    fn hook(&self, stage: &'static str) {
        if let Some(h) = self.hook.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            h(stage)
        }
    }

    fn take_deletes(&self) -> Vec<u64> {
        std::mem::take(&mut self.deletes.lock().unwrap_or_else(|e| e.into_inner()).seqs)
    }
}

/// A worker's handle on the disk tier (cheap to clone, `Send + Sync`).
#[derive(Clone)]
pub struct DiskHandle {
    shared: Arc<Shared>,
}

impl DiskHandle {
    /// Whether files exist for the primary key `hash` (any variant). One
    /// read lock, never waited for (false while it is held for writing),
    /// no allocation.
    pub fn contains(&self, hash: u128) -> bool {
        self.shared.contains(hash)
    }

    /// Whether a file of the primary key `hash` is the Vary variant `req`
    /// selects: what to check on a memory miss (a key stored for other
    /// `Accept-Encoding`s is not worth a load). As [`DiskHandle::contains`],
    /// plus a comparison of the request's header values per file.
    pub fn contains_variant(&self, hash: u128, req: &dyn HeaderView) -> bool {
        self.shared
            .try_read()
            .is_some_and(|ix| ix.contains_variant(hash, req))
    }

    /// Queues loading the key's files into the memory store; the permit is
    /// released when done (`stored()`: waiters look the store up again;
    /// dropped on failure: one waiter takes over and fetches). A full
    /// queue hands the permit back: fetch upstream with it.
    pub fn load(&self, hash: u128, permit: FetchPermit) -> Result<(), FetchPermit> {
        debug_assert_eq!(permit.key(), hash, "the permit must be the key's");
        match self.shared.loads.try_send((hash, permit)) {
            Ok(()) => {
                // A thread busy with a write looks at loads next; an idle
                // one needs waking (a full write queue means it is busy).
                let _ = self.shared.jobs.try_send(Job::Wake);
                Ok(())
            }
            Err(TrySendError::Full((_, p)) | TrySendError::Disconnected((_, p))) => {
                self.shared
                    .counters
                    .load_failed
                    .fetch_add(1, Ordering::Relaxed);
                Err(p)
            }
        }
    }

    pub fn stats(&self) -> DiskStats {
        let (files, bytes) = {
            let ix = self.shared.read();
            (ix.files, ix.bytes)
        };
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DiskStats {
            files,
            bytes,
            written: l(&c.written),
            write_dropped: l(&c.write_dropped),
            loaded: l(&c.loaded),
            load_failed: l(&c.load_failed),
            load_jobs: l(&c.load_jobs),
            invalidated: l(&c.invalidated),
            invalidate_dropped: l(&c.invalidate_dropped),
            evicted: l(&c.evicted),
            corrupt_deleted: l(&c.corrupt_deleted),
            purged: l(&c.purged),
            journal_errors: l(&c.journal_errors),
            pending_applied: l(&c.pending_applied),
            pending_unreadable: l(&c.pending_unreadable),
        }
    }
}

/// The disk tier: owns its thread; dropping it stops the thread (pending
/// writes and loads are dropped, pending deletes done) and waits for it
/// up to `shutdown_wait`.
pub struct DiskTier {
    handle: DiskHandle,
    thread: Option<JoinHandle<()>>,
    /// In a mutex only to make the tier `Sync` (the engine shares it with
    /// its workers); used once, by `drop`.
    done: Mutex<Receiver<()>>,
}

impl DiskTier {
    /// Opens (or creates) the directory, scans it (synchronously: this runs
    /// at engine start, not on the data path), attaches the tier to `store`
    /// (which from then on offers completed objects and reports purges)
    /// and starts the thread.
    pub fn open(cfg: DiskConfig, store: MemoryStore) -> Result<DiskTier, DiskError> {
        if cfg.queue == 0 || cfg.load_queue == 0 {
            return Err(DiskError::ZeroQueue);
        }
        // Before the scan deletes anything in a directory another tier of
        // this store may be using.
        if store.has_disk() {
            return Err(DiskError::AlreadyAttached);
        }
        let io = |source| DiskError::Io {
            dir: cfg.dir.clone(),
            source,
        };
        std::fs::create_dir_all(&cfg.dir).map_err(io)?;
        let dir_lock = lock_dir(&cfg.dir)?;
        // Purges a crash interrupted finish before the scan sees their files.
        let replayed = journal::Journal::replay(&cfg.dir, cfg.fsync, |seq| {
            worker::remove_purged(&worker::file_path(&cfg.dir, seq))
        })
        .map_err(io)?;
        let mut corrupt = 0;
        // A purged file the replay could not delete is not indexed (the
        // thread deletes it).
        let (index, next_seq, evicted) =
            worker::scan(&cfg, &store, &replayed.pending, &mut corrupt).map_err(io)?;
        let next_seq = next_seq.max(replayed.max_seq.saturating_add(1));
        let (tx, rx) = mpsc::sync_channel(cfg.queue);
        let (loads_tx, loads_rx) = mpsc::sync_channel(cfg.load_queue);
        let shared = Arc::new(Shared {
            cfg,
            index: RwLock::new(index),
            jobs: tx,
            loads: loads_tx,
            generations: (0..GENERATIONS).map(|_| AtomicU64::new(0)).collect(),
            invalidations: Mutex::default(),
            deletes: Mutex::new(Deletes {
                seqs: replayed.pending,
                closed: false,
            }),
            journal: Mutex::new(replayed.journal),
            stop: AtomicBool::new(false),
            queued_bytes: AtomicU64::new(0),
            _dir_lock: dir_lock,
            counters: Counters::default(),
            #[cfg(test)]
            hook: Mutex::new(None),
        });
        shared
            .counters
            .corrupt_deleted
            .store(corrupt, Ordering::Relaxed);
        shared.counters.evicted.store(evicted, Ordering::Relaxed);
        // Purges made before a tier attached, written down by this store
        // or by an earlier run's that stopped or crashed before its attach
        // (`pending`). Read with the store's writer held: a purge now waits
        // for the attach, after which the tier has it.
        let mut writer = store.pending_writer();
        let pending_file =
            pending::Pending::open(&shared.cfg.dir).map_err(|source| DiskError::Io {
                dir: shared.cfg.dir.clone(),
                source,
            })?;
        // The store served (and was purged) before this tier attached: at
        // engine start the scan runs beside the workers. Those purges
        // reached the memory tier only, and every file here predates them
        // (a store attaches one tier, once), so each applies to the index,
        // under its write lock with the tier attached (a purge from now on
        // finds it) and no worker loading one of their files meanwhile
        // (lookups only try the lock).
        let (mut gone, mut n) = (Vec::new(), 0);
        {
            let mut ix = shared.write();
            if let Some(p) = &pending_file {
                let p = &p.parsed;
                let c = &shared.counters;
                c.pending_applied
                    .store(p.records.len() as u64, Ordering::Relaxed);
                c.pending_unreadable
                    .store(u64::from(p.torn || p.corrupt), Ordering::Relaxed);
                if p.all {
                    n += ix.purge_all(&mut gone);
                }
                for r in &p.records {
                    if let Some(m) = r.matcher() {
                        n += ix.purge(m, &mut gone);
                    }
                }
            }
            if !store.attach_disk(Arc::clone(&shared)) {
                return Err(DiskError::AlreadyAttached);
            }
            let replayed = store.replay_purges_since(0, |m, _| n += ix.purge(m, &mut gone));
            // Keys invalidated meanwhile (an unsafe method's success, an
            // origin that showed a copy invalid) go as well.
            let invalidated = store.take_pre_attach();
            if let Some(keys) = &invalidated {
                for &p in keys {
                    n += ix.remove_primary(p, &mut gone);
                }
            }
            if !replayed || invalidated.is_none() {
                // More purges or invalidations than are remembered: which
                // reached what is unknown, so nothing the scan found is
                // served.
                n += ix.purge_all(&mut gone);
            }
        }
        let errors = || shared.counters.journal_errors.load(Ordering::Relaxed);
        let before = errors();
        shared.purged(n, gone);
        let journaled = errors() == before;
        // From now on purges reach the tier (and its journal), not the file.
        if let Some(w) = writer.take() {
            shared
                .counters
                .journal_errors
                .fetch_add(w.errors, Ordering::Relaxed);
        }
        drop(writer);
        if let Some(p) = pending_file {
            // The file goes once what it purged is on disk: the files it
            // reached are named by the journal (flushed whatever `fsync`
            // says; purges are rare). Else it stays, to be applied again
            // (a second time only drops files again).
            let durable = journaled && shared.journal().sync().is_ok();
            if !durable || p.remove().is_err() {
                shared
                    .counters
                    .journal_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        let (done_tx, done) = mpsc::sync_channel(1);
        let w = worker::Worker::new(Arc::clone(&shared), store, rx, loads_rx, next_seq);
        let thread = std::thread::Builder::new()
            .name("fg-cache-disk".into())
            .spawn(move || {
                w.run();
                let _ = done_tx.send(());
            })
            .map_err(|e| DiskError::Io {
                dir: shared.cfg.dir.clone(),
                source: e,
            })?;
        Ok(DiskTier {
            handle: DiskHandle { shared },
            thread: Some(thread),
            done: Mutex::new(done),
        })
    }

    /// A handle for the workers.
    pub fn handle(&self) -> DiskHandle {
        self.handle.clone()
    }

    /// See [`DiskHandle::contains`].
    pub fn contains(&self, hash: u128) -> bool {
        self.handle.contains(hash)
    }

    /// See [`DiskHandle::contains_variant`].
    pub fn contains_variant(&self, hash: u128, req: &dyn HeaderView) -> bool {
        self.handle.contains_variant(hash, req)
    }

    /// See [`DiskHandle::load`].
    pub fn load(&self, hash: u128, permit: FetchPermit) -> Result<(), FetchPermit> {
        self.handle.load(hash, permit)
    }

    pub fn stats(&self) -> DiskStats {
        self.handle.stats()
    }
}

/// Name of the lock file in a tier's directory.
const LOCK_FILE: &str = "lock";

/// Locks the directory for this tier: two tiers (two engines, or an old
/// engine still running beside its replacement) would delete each other's
/// files.
fn lock_dir(dir: &std::path::Path) -> Result<std::fs::File, DiskError> {
    let io = |source| DiskError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(io)?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(DiskError::Busy {
            dir: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

// The engine shares its cache (and so the tier) with every worker.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<DiskTier>();
    shared::<DiskHandle>();
};

impl Drop for DiskTier {
    fn drop(&mut self) {
        let s = &self.handle.shared;
        s.stop.store(true, Ordering::Release);
        let _ = s.jobs.try_send(Job::Wake);
        // Bounded: a wedged disk must not hang the engine's shutdown.
        let done = self.done.get_mut().unwrap_or_else(|e| e.into_inner());
        if done.recv_timeout(s.cfg.shutdown_wait).is_ok()
            && let Some(t) = self.thread.take()
        {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
