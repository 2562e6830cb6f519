//! The tier's thread: scans the directory at open, writes offered objects,
//! loads files into the memory store, deletes purged and evicted files.
//! The only code of the tier that touches the file system.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use bytes::Bytes;

use super::format::{self, FormatError, Header, PREFIX};
use super::index::{Entry, Index};
use super::{DiskConfig, Job, Offer, Shared};
use crate::key::variant_hash_of_bytes;
use crate::lock::FetchPermit;
use crate::store::{InsertError, MemoryStore, Read};

/// How often an idle thread looks at the stop flag and pending deletes.
const TICK: Duration = Duration::from_millis(50);

pub(crate) fn file_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.fgc"))
}

fn temp_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.tmp"))
}

fn parse_seq(stem: &str) -> Option<u64> {
    (stem.len() == 16)
        .then(|| u64::from_str_radix(stem, 16).ok())
        .flatten()
}

/// Deletes a file. A failure is not reported: the index already counts
/// it as gone, and the next scan retries.
fn remove(path: &Path) {
    let _ = fs::remove_file(path);
}

/// Deletes a purged file; false when it is still there (the journal keeps
/// naming it and the thread tries again).
pub(crate) fn remove_purged(path: &Path) -> bool {
    match fs::remove_file(path) {
        Ok(()) => true,
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

/// Why a file could not be used.
#[derive(Debug)]
enum Bad {
    Io(io::Error),
    /// Not reported (the file is deleted and counted); the kind is kept
    /// for debugging.
    Format(#[allow(dead_code)] FormatError),
}

impl From<io::Error> for Bad {
    fn from(e: io::Error) -> Self {
        Bad::Io(e)
    }
}

impl From<FormatError> for Bad {
    fn from(e: FormatError) -> Self {
        Bad::Format(e)
    }
}

/// Reads a file's fixed part and header (not the body); checks the length.
fn read_header(path: &Path) -> Result<(Header, u64), Bad> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut p = [0u8; PREFIX];
    f.read_exact(&mut p).map_err(|_| FormatError::Length)?;
    let prefix = format::decode_prefix(&p)?;
    if prefix.file_len() != len {
        return Err(FormatError::Length.into());
    }
    let mut h = vec![0u8; prefix.header_len];
    f.read_exact(&mut h).map_err(|_| FormatError::Length)?;
    Ok((format::decode_header(Bytes::from(h))?, len))
}

/// Reads a whole file and checks it; the body shares the read buffer.
fn read_file(path: &Path) -> Result<(Header, Bytes), Bad> {
    let all = Bytes::from(fs::read(path)?);
    let p: &[u8; PREFIX] = all
        .get(..PREFIX)
        .and_then(|p| p.try_into().ok())
        .ok_or(FormatError::Length)?;
    let prefix = format::decode_prefix(p)?;
    if prefix.file_len() != all.len() as u64 {
        return Err(FormatError::Length.into());
    }
    if crc32fast::hash(&all[PREFIX..]) != prefix.crc {
        return Err(FormatError::Checksum.into());
    }
    let body_at = PREFIX + prefix.header_len;
    let header = format::decode_header(all.slice(PREFIX..body_at))?;
    Ok((header, all.slice(body_at..)))
}

/// Builds the index from the directory: deletes temp files, files that do
/// not parse (counted in `corrupt`), files superseded by a newer one of the
/// same key and variant, and the oldest files over the budget. Returns the
/// index, the next sequence number and how many files the budget evicted.
pub(crate) fn scan(
    cfg: &DiskConfig,
    store: &MemoryStore,
    purged: &[u64],
    corrupt: &mut u64,
) -> io::Result<(Index, u64, u64)> {
    let mut found = Vec::new();
    let mut max_seq = 0;
    for ent in fs::read_dir(&cfg.dir)? {
        let ent = ent?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if let Some(seq) = name.strip_suffix(".tmp").and_then(parse_seq) {
            // A write cut short by a crash.
            max_seq = max_seq.max(seq);
            remove(&ent.path());
            continue;
        }
        // Other files are not ours: left alone.
        let Some(seq) = name.strip_suffix(".fgc").and_then(parse_seq) else {
            continue;
        };
        max_seq = max_seq.max(seq);
        if purged.contains(&seq) {
            continue;
        }
        match read_header(&ent.path()) {
            Ok((h, size)) => found.push((seq, h, size)),
            Err(_) => {
                *corrupt += 1;
                remove(&ent.path());
            }
        }
    }
    found.sort_by_key(|(seq, _, _)| *seq);
    let mut ix = Index::default();
    let mut gone = Vec::new();
    for (seq, h, size) in found {
        let primary = store.hasher().hash_bytes(&h.full_key);
        let variant = variant_hash_of_bytes(&h.meta.vary, &h.variant, store.hasher());
        let entry = Entry {
            seq,
            size,
            variant,
            full_key: h.full_key[..].into(),
            vary: h.meta.vary[..].into(),
            variant_bytes: h.variant[..].into(),
            // From the current tag header (it may differ from the writer's).
            tags: store.tags(&h.meta),
        };
        ix.insert(primary, entry, &mut gone);
    }
    let evicted = ix.evict_to(cfg.max_bytes, &mut gone);
    for seq in gone {
        remove(&file_path(&cfg.dir, seq));
    }
    Ok((ix, max_seq + 1, evicted as u64))
}

pub(crate) struct Worker {
    shared: Arc<Shared>,
    store: MemoryStore,
    rx: Receiver<Job>,
    loads: Receiver<(u128, FetchPermit)>,
    next_seq: u64,
}

impl Worker {
    pub fn new(
        shared: Arc<Shared>,
        store: MemoryStore,
        rx: Receiver<Job>,
        loads: Receiver<(u128, FetchPermit)>,
        next_seq: u64,
    ) -> Self {
        Worker {
            shared,
            store,
            rx,
            loads,
            next_seq,
        }
    }

    fn dir(&self) -> &Path {
        &self.shared.cfg.dir
    }

    pub fn run(mut self) {
        loop {
            self.delete_pending();
            if self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            // Loads first: a miss waits on them, a write waits on nobody.
            while let Ok((hash, permit)) = self.loads.try_recv() {
                self.load(hash, permit);
            }
            match self.rx.recv_timeout(TICK) {
                Ok(Job::Write(o)) => {
                    self.shared.dequeued(&o);
                    self.write(o)
                }
                Ok(Job::Wake) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // Queued writes are dropped; queued loads release their permits
        // (dropped: one waiter takes over).
        while self.loads.try_recv().is_ok() {}
        while let Ok(job) = self.rx.try_recv() {
            if let Job::Write(o) = job {
                self.shared.dequeued(&o);
                self.shared
                    .counters
                    .write_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut d = self
            .shared
            .deletes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        d.closed = true;
        for seq in std::mem::take(&mut d.seqs) {
            remove(&file_path(self.dir(), seq));
        }
    }

    fn delete_pending(&self) {
        self.invalidate_pending();
        let failed: Vec<u64> = self
            .shared
            .take_deletes()
            .into_iter()
            .filter(|&seq| !remove_purged(&file_path(self.dir(), seq)))
            .collect();
        self.shared.delete_failed(failed);
        self.shared.settle_journal();
    }

    /// Removes the files of the keys workers invalidated (before any load
    /// or write that comes after the invalidation).
    fn invalidate_pending(&self) {
        let keys = self.shared.take_invalidations();
        if keys.is_empty() {
            return;
        }
        let mut gone = Vec::new();
        {
            let mut ix = self.shared.write();
            for k in keys {
                if ix.remove_primary(k, &mut gone) > 0 {
                    self.shared
                        .counters
                        .invalidated
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        for seq in gone {
            remove(&file_path(self.dir(), seq));
        }
    }

    fn write(&mut self, o: Offer) {
        self.invalidate_pending();
        let c = &self.shared.counters;
        let dropped = || c.write_dropped.fetch_add(1, Ordering::Relaxed);
        let mut chunks = Vec::new();
        let mut reader = o.object.reader();
        loop {
            match reader.poll() {
                Read::Chunk(b) => chunks.push(b),
                Read::End => break,
                // Offered complete; anything else is a body cut short.
                Read::Pending | Read::Aborted => {
                    dropped();
                    return;
                }
            }
        }
        let body_len: u64 = chunks.iter().map(|b| b.len() as u64).sum();
        // Kept in the file for inspection; a scan recomputes them from the
        // headers with the tag header configured then.
        #[cfg(test)]
        self.shared.hook("write");
        let tags = self.store.tags(o.object.meta());
        let header = format::encode_header(&o.full_key, &o.object.variant, o.object.meta(), &tags);
        let size = (PREFIX + header.len()) as u64 + body_len;
        let cfg = &self.shared.cfg;
        if size > cfg.max_object_bytes || size > cfg.max_bytes {
            dropped();
            return;
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        for b in &chunks {
            crc.update(b);
        }
        let prefix = format::encode_prefix(&header, body_len, crc.finalize());
        let seq = self.next_seq;
        self.next_seq += 1;
        let tmp = temp_path(self.dir(), seq);
        let path = file_path(self.dir(), seq);
        let written = (|| -> io::Result<()> {
            let f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            let mut w = io::BufWriter::with_capacity(64 * 1024, f);
            w.write_all(&prefix)?;
            w.write_all(&header)?;
            for b in &chunks {
                w.write_all(b)?;
            }
            let f = w.into_inner().map_err(|e| e.into_error())?;
            if cfg.fsync {
                f.sync_data()?;
            }
            fs::rename(&tmp, &path)?;
            if cfg.fsync {
                // The rename itself survives power loss only once the
                // directory is on disk too.
                File::open(self.dir())?.sync_all()?;
            }
            Ok(())
        })();
        if written.is_err() {
            remove(&tmp);
            dropped();
            return;
        }
        #[cfg(test)]
        self.shared.hook("written");
        let mut gone = Vec::new();
        let (kept, evicted) = {
            let mut ix = self.shared.write();
            // Under the index lock, where purges record themselves: either
            // a purge is in the log now, or it will find this entry. An
            // invalidation since the object was stored either marked it
            // (light) or bumped its generation; one after this point finds
            // the entry (it is queued, and runs before any later load).
            if self.store.purged_since(o.epoch, &o.full_key, &tags)
                || o.object.light_purged()
                || self.shared.generation(o.primary) != o.generation
            {
                (false, 0)
            } else {
                let entry = Entry {
                    seq,
                    size,
                    variant: o.variant,
                    full_key: Arc::clone(&o.full_key),
                    vary: o.object.meta().vary[..].into(),
                    variant_bytes: Arc::clone(&o.object.variant),
                    tags,
                };
                ix.insert(o.primary, entry, &mut gone);
                (true, ix.evict_to(cfg.max_bytes, &mut gone))
            }
        };
        if kept {
            c.written.fetch_add(1, Ordering::Relaxed);
            c.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
        } else {
            remove(&path);
            dropped();
        }
        for seq in gone {
            remove(&file_path(self.dir(), seq));
        }
    }

    fn load(&mut self, hash: u128, permit: FetchPermit) {
        self.invalidate_pending();
        let c = &self.shared.counters;
        c.load_jobs.fetch_add(1, Ordering::Relaxed);
        // The epoch and the entries together, under the lock purges record
        // under: a purge after this is in the log for `insert_loaded`.
        let (epoch, generation, entries) = {
            let ix = self.shared.read();
            (
                self.store.purge_epoch(),
                self.shared.generation(hash),
                ix.variants(hash),
            )
        };
        let mut found = false;
        if entries.is_empty() {
            // Purged or evicted since the caller looked.
            c.load_failed.fetch_add(1, Ordering::Relaxed);
        }
        for e in entries {
            let path = file_path(self.dir(), e.seq);
            match read_file(&path) {
                Ok((h, body)) if h.full_key[..] == e.full_key[..] => {
                    #[cfg(test)]
                    self.shared.hook("read");
                    match self
                        .store
                        .insert_loaded(&h.full_key, &h.variant, h.meta, body, epoch)
                    {
                        Ok(inserted) => {
                            found = true;
                            if inserted {
                                c.loaded.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(InsertError::TooLarge | InsertError::NotWorthStoring) => {
                            // Memory will never take it (its limits changed
                            // since): reading it on every miss is waste.
                            c.load_failed.fetch_add(1, Ordering::Relaxed);
                            self.forget((hash, e.variant), e.seq, &path);
                        }
                        Err(_) => {
                            c.load_failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(Bad::Io(err)) if err.kind() == io::ErrorKind::NotFound => {
                    // Deleted behind our back: forget it.
                    self.forget((hash, e.variant), e.seq, &path);
                    c.load_failed.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    c.corrupt_deleted.fetch_add(1, Ordering::Relaxed);
                    c.load_failed.fetch_add(1, Ordering::Relaxed);
                    self.forget((hash, e.variant), e.seq, &path);
                }
            }
        }
        if found && self.shared.generation(hash) != generation {
            // Invalidated while it was read: what went into memory is as
            // stale as what the worker marked (it may have found nothing
            // to mark yet).
            self.store.light_purge_primary(hash);
        }
        if found {
            permit.stored();
        }
        // Else dropped: one waiter takes over and fetches.
    }

    /// Removes a bad file and its index entry (if it is still current).
    fn forget(&self, id: (u128, u128), seq: u64, path: &Path) {
        {
            let mut ix = self.shared.write();
            if ix.is_current(id, seq) {
                ix.remove(id, &mut Vec::new());
            }
        }
        remove(path);
    }
}
