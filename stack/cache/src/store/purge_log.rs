//! The recent purges, so that a response fetched before a purge is not
//! stored after it (the fetch captured [`super::MemoryStore::purge_epoch`]
//! when it started; `insert_since` checks what was purged since).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::PurgeMode;

/// Purges remembered; a fetch older than the oldest is refused storage
/// (it may predate a purge that was forgotten).
const KEEP: usize = 1024;

#[derive(Debug)]
pub(crate) enum Purged {
    /// Keys of this URL (see `purge_key`).
    Url(Box<[u8]>),
    /// Keys under this prefix (see `purge_prefix`).
    Prefix(Box<[u8]>),
    Tag(Bytes),
}

#[derive(Debug)]
struct Record {
    epoch: u64,
    what: Purged,
    mode: PurgeMode,
}

#[derive(Debug, Default)]
pub(crate) struct PurgeLog {
    /// Bumped (under `log`) before each purge runs.
    epoch: AtomicU64,
    log: Mutex<VecDeque<Record>>,
}

/// What a purge since a fetch started means for storing its response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Since {
    Clean,
    Light,
    Hard,
}

impl PurgeLog {
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Records a purge; call before applying it.
    pub fn record(&self, what: Purged, mode: PurgeMode) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        log.push_back(Record { epoch, what, mode });
        if log.len() > KEEP {
            log.pop_front();
        }
    }

    /// The strongest purge since `since` that reaches a key `full_key`
    /// tagged `tags`. Call under the key's shard lock (a purge records
    /// before it scans, so either this sees it or the scan sees the object).
    pub fn since(&self, since: u64, full_key: &[u8], tags: &[Bytes]) -> Since {
        if self.epoch() == since {
            return Since::Clean;
        }
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if log.front().is_none_or(|r| r.epoch > since + 1) {
            return Since::Hard;
        }
        let mut out = Since::Clean;
        for r in log.iter().filter(|r| r.epoch > since) {
            let hit = match &r.what {
                Purged::Url(u) => url_matches(u, full_key),
                Purged::Prefix(p) => prefix_matches(p, full_key),
                Purged::Tag(t) => tags.contains(t),
            };
            if hit {
                match r.mode {
                    PurgeMode::Hard => return Since::Hard,
                    PurgeMode::Light => out = Since::Light,
                }
            }
        }
        out
    }
}

impl PurgeLog {
    /// Calls `f` with each purge recorded after `since`, oldest first;
    /// false (and no call) when the log no longer reaches back that far.
    pub fn replay_since(&self, since: u64, mut f: impl FnMut(&Purged, PurgeMode)) -> bool {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if self.epoch() > since && log.front().is_none_or(|r| r.epoch > since + 1) {
            return false;
        }
        log.iter()
            .filter(|r| r.epoch > since)
            .for_each(|r| f(&r.what, r.mode));
        true
    }
}

/// Whether `key` is a key of the URL `url` (the same, or it plus headers).
pub(crate) fn url_matches(url: &[u8], key: &[u8]) -> bool {
    key.starts_with(url) && (key.len() == url.len() || key[url.len()] == b'\n')
}

/// Whether `key` is under `prefix` on a boundary (see `purge_prefix`).
pub(crate) fn prefix_matches(prefix: &[u8], key: &[u8]) -> bool {
    key.starts_with(prefix)
        && (prefix.last() == Some(&b'/')
            || key.len() == prefix.len()
            || matches!(key[prefix.len()], b'/' | b'?' | b'\n'))
}
