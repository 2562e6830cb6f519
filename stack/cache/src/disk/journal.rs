//! The purge journal: the files a purge took out of the index, written
//! down before the purge returns, so a crash before the tier's thread
//! deletes them cannot bring them back at the next start.
//!
//! Records are the files' sequence numbers, 8 bytes little-endian each,
//! appended under the index's write lock. At open the journal is replayed
//! (its files deleted) before the scan and then emptied; while running it
//! is emptied once every purged file is gone. Sequence numbers are never
//! reused while a journal names them: the scan's next number is past
//! every number the journal held.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

/// The journal's file name in the tier's directory.
pub(crate) const JOURNAL_FILE: &str = "purges.journal";

const RECORD: usize = 8;

pub(crate) struct Journal {
    file: File,
    /// Records appended since it was last emptied.
    records: u64,
    fsync: bool,
}

impl Journal {
    /// Opens the directory's journal, deletes every file it names (a purge
    /// a crash interrupted), and empties it. Returns the journal and the
    /// highest sequence number it named (0 if none). A torn last record (a
    /// crash mid-append) is ignored: its purge had not returned.
    pub(crate) fn replay(
        dir: &Path,
        fsync: bool,
        delete: impl Fn(u64),
    ) -> io::Result<(Journal, u64)> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(dir.join(JOURNAL_FILE))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut max_seq = 0;
        for rec in bytes.chunks_exact(RECORD) {
            let seq = u64::from_le_bytes(rec.try_into().expect("8-byte chunk"));
            delete(seq);
            max_seq = max_seq.max(seq);
        }
        file.set_len(0)?;
        if fsync {
            file.sync_data()?;
        }
        Ok((
            Journal {
                file,
                records: 0,
                fsync,
            },
            max_seq,
        ))
    }

    /// Writes down the files a purge removed from the index (called under
    /// the index's write lock, before they are queued for deletion).
    pub(crate) fn append(&mut self, seqs: &[u64]) -> io::Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(seqs.len() * RECORD);
        for s in seqs {
            buf.extend_from_slice(&s.to_le_bytes());
        }
        self.file.write_all(&buf)?;
        if self.fsync {
            self.file.sync_data()?;
        }
        self.records += seqs.len() as u64;
        Ok(())
    }

    /// Whether records wait to be emptied.
    pub(crate) fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Empties the journal: every file it names is deleted (the caller
    /// holds the index's write lock and saw no purged file pending).
    pub(crate) fn clear(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.records = 0;
        Ok(())
    }
}
