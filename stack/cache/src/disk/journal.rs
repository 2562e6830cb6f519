//! The purge journal: the files a purge took out of the index, written
//! down before the purge returns, so a crash before the tier's thread
//! deletes them cannot bring them back at the next start.
//!
//! Records are the files' sequence numbers, 8 bytes little-endian each.
//! At open the journal is replayed (its files deleted) before the scan;
//! while running it is rewritten to hold only the files still waiting to
//! be deleted. A file whose delete fails stays in it (and queued). Sequence
//! numbers are never reused while a journal names them: the next number
//! is past every number the journal held. With `fsync`, the directory is
//! flushed before the journal shrinks, so the unlinks are durable first.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The journal's file name in the tier's directory.
pub(crate) const JOURNAL_FILE: &str = "purges.journal";

const RECORD: usize = 8;

pub(crate) struct Journal {
    file: File,
    dir: PathBuf,
    /// Whole records in the file.
    records: u64,
    fsync: bool,
}

/// What a replay at open found.
pub(crate) struct Replayed {
    pub journal: Journal,
    /// The highest sequence number the journal named (0 if none).
    pub max_seq: u64,
    /// Files whose delete failed: still named by the journal, to be
    /// deleted by the thread.
    pub pending: Vec<u64>,
}

impl Journal {
    /// Opens the directory's journal and deletes every file it names (a
    /// purge a crash interrupted); `delete` says whether the file is gone.
    /// A torn last record (a crash mid-append) is ignored: its purge had
    /// not returned.
    pub(crate) fn replay(
        dir: &Path,
        fsync: bool,
        delete: impl Fn(u64) -> bool,
    ) -> io::Result<Replayed> {
        let path = dir.join(JOURNAL_FILE);
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut max_seq = 0;
        let mut pending = Vec::new();
        for rec in bytes.chunks_exact(RECORD) {
            let seq = u64::from_le_bytes(rec.try_into().expect("8-byte chunk"));
            max_seq = max_seq.max(seq);
            if !delete(seq) {
                pending.push(seq);
            }
        }
        let mut journal = Journal {
            file,
            dir: dir.to_path_buf(),
            records: (bytes.len() / RECORD) as u64,
            fsync,
        };
        if created && fsync {
            journal.sync_dir()?;
        }
        journal.rewrite(&pending)?;
        Ok(Replayed {
            journal,
            max_seq,
            pending,
        })
    }

    /// Writes down the files a purge removed from the index (before they
    /// are queued for deletion). A failed write is cut back to the last
    /// whole record, so a later replay never reads shifted numbers.
    pub(crate) fn append(&mut self, seqs: &[u64]) -> io::Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(seqs.len() * RECORD);
        for s in seqs {
            buf.extend_from_slice(&s.to_le_bytes());
        }
        let written = self.file.write_all(&buf).and_then(|()| {
            if self.fsync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            let _ = self.file.set_len(self.records * RECORD as u64);
            return Err(e);
        }
        self.records += seqs.len() as u64;
        Ok(())
    }

    /// Flushes what the journal names to disk, whatever `fsync` says (the
    /// pending purges' file goes once their files are named here).
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// How many files the journal names.
    pub(crate) fn records(&self) -> u64 {
        self.records
    }

    /// Rewrites the journal to name only `pending` (every other file it
    /// named is deleted; with `fsync` the deletes are flushed first).
    pub(crate) fn rewrite(&mut self, pending: &[u64]) -> io::Result<()> {
        if self.records == 0 && pending.is_empty() {
            return Ok(());
        }
        if self.fsync {
            self.sync_dir()?;
        }
        self.file.set_len(0)?;
        self.records = 0;
        self.append(pending)
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}
