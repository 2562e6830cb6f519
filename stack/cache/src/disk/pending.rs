//! Purges made while no tier is attached: the engine serves (and is
//! purged) while its tier is still being scanned, and a binary upgrade's
//! successor before its predecessor lets go of the directory. The store
//! keeps those purges in memory and the attach applies them; so that a
//! stop or a crash before the attach does not forget them, the store
//! (told the directory: `MemoryStore::journal_purges_until_attached`)
//! also appends each one to `purges.pending` there, fsynced, before the
//! purge returns. The next open applies the file's records to the files
//! its scan found before anything is served, makes that durable (the
//! purge journal, fsynced), and only then unlinks the file.
//!
//! Format: an 8-byte magic holding the version (`FGPURGE1`), then records
//! `[len u32 LE][crc32 of payload u32 LE][payload]`, the payload being
//! `[kind u8][mode u8][unix seconds u64 LE][value]`. Kind "all" stands
//! for purges the file does not name (past [`MAX_RECORDS`], a value too
//! long, purges the store forgot): the open drops every file it found.
//!
//! Each append is fsynced before the purge returns, so only the last one
//! can be torn by a crash: bytes after the last whole record that fit in
//! one record are ignored and counted (that purge had not returned).
//! Anything else unreadable (another magic, a whole record that fails its
//! checksum, more junk than a record) drops every file: which purges it
//! held is unknown.
//!
//! Writers (this process's store; a successor's while its predecessor
//! still holds the directory) and the open, which unlinks the file, take
//! an `flock` on it; a writer whose file was unlinked under it opens the
//! path again.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::Matcher;
use crate::store::PurgeMode;

/// The file's name in the tier's directory.
pub(crate) const PENDING_FILE: &str = "purges.pending";

const MAGIC: &[u8; 8] = b"FGPURGE1";
/// Length and checksum.
const HEAD: usize = 8;
/// Kind, mode and time.
const FIXED: usize = 10;
/// A longer value is written as "all".
const MAX_VALUE: usize = 64 * 1024;
const MAX_RECORD: usize = HEAD + FIXED + MAX_VALUE;
/// Records a file holds; the last one is "all".
pub(crate) const MAX_RECORDS: usize = 1024;
/// The most a file of ours can hold: a bigger one (garbage, a sparse
/// file) is not read into memory but taken as unreadable.
const MAX_FILE: u64 = (MAGIC.len() + MAX_RECORDS * MAX_RECORD) as u64;

/// The file's bytes, or None when it is bigger than any file of ours.
fn read_bounded(f: &mut File) -> io::Result<Option<Vec<u8>>> {
    if f.metadata()?.len() > MAX_FILE {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    f.take(MAX_FILE + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= MAX_FILE).then_some(bytes))
}

/// What an oversized file stands for: every file goes.
fn oversized() -> Parsed {
    Parsed {
        all: true,
        corrupt: true,
        ..Parsed::default()
    }
}

const URL: u8 = 0;
const PREFIX: u8 = 1;
const TAG: u8 = 2;
const ALL: u8 = 3;

/// One purge as the file holds it.
#[derive(Debug)]
pub(crate) struct Record {
    kind: u8,
    /// Light or hard, and when it ran (unix seconds): for inspection (on
    /// disk both delete the files).
    #[allow(dead_code)]
    pub mode: PurgeMode,
    #[allow(dead_code)]
    pub at: u64,
    value: Vec<u8>,
}

impl Record {
    /// What the purge reaches; None: every file.
    pub fn matcher(&self) -> Option<Matcher<'_>> {
        match self.kind {
            URL => Some(Matcher::Url(&self.value)),
            PREFIX => Some(Matcher::Prefix(&self.value)),
            TAG => Some(Matcher::Tag(&self.value)),
            _ => None,
        }
    }
}

fn encode(m: Option<Matcher<'_>>, mode: PurgeMode, at: u64) -> Vec<u8> {
    let (kind, value): (u8, &[u8]) = match m {
        Some(Matcher::Url(v)) if v.len() <= MAX_VALUE => (URL, v),
        Some(Matcher::Prefix(v)) if v.len() <= MAX_VALUE => (PREFIX, v),
        Some(Matcher::Tag(v)) if v.len() <= MAX_VALUE => (TAG, v),
        _ => (ALL, &b""[..]),
    };
    let mut payload = Vec::with_capacity(FIXED + value.len());
    payload.push(kind);
    payload.push(match mode {
        PurgeMode::Light => 0,
        PurgeMode::Hard => 1,
    });
    payload.extend_from_slice(&at.to_le_bytes());
    payload.extend_from_slice(value);
    let mut out = Vec::with_capacity(HEAD + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// What a pending file holds.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub records: Vec<Record>,
    /// Every file goes: an "all" record, or the file is unreadable.
    pub all: bool,
    /// A torn last record was ignored.
    pub torn: bool,
    /// The file is unreadable past a torn record (`all` is set).
    pub corrupt: bool,
    /// The length up to the end of the last whole record.
    pub valid_len: usize,
}

pub(crate) fn parse(bytes: &[u8]) -> Parsed {
    let mut p = Parsed::default();
    if bytes.is_empty() {
        return p;
    }
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC[..] {
        // A crash while the file was created, or not a file of ours
        // (another version): which purges it held is unknown.
        if MAGIC.starts_with(bytes) {
            p.torn = true;
        } else {
            p.corrupt = true;
            p.all = true;
        }
        return p;
    }
    let mut at = MAGIC.len();
    p.valid_len = at;
    while at < bytes.len() {
        let rest = &bytes[at..];
        match record(rest) {
            Ok((r, n)) => {
                p.all |= r.kind == ALL;
                p.records.push(r);
                at += n;
                p.valid_len = at;
            }
            Err(whole) => {
                if whole || rest.len() > MAX_RECORD {
                    p.corrupt = true;
                    p.all = true;
                } else {
                    p.torn = true;
                }
                break;
            }
        }
    }
    p
}

/// The record at the start of `b` and its length; `Err(true)` when a
/// whole record is there (it ends before the file does) but is bad.
fn record(b: &[u8]) -> Result<(Record, usize), bool> {
    if b.len() < HEAD {
        return Err(false);
    }
    let len = u32::from_le_bytes(b[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
    if !(FIXED..=FIXED + MAX_VALUE).contains(&len) {
        return Err(false);
    }
    let Some(payload) = b.get(HEAD..HEAD + len) else {
        return Err(false);
    };
    if crc32fast::hash(payload) != crc {
        return Err(HEAD + len < b.len());
    }
    let mode = match payload[1] {
        0 => PurgeMode::Light,
        1 => PurgeMode::Hard,
        _ => return Err(true),
    };
    let kind = payload[0];
    if kind > ALL {
        return Err(true);
    }
    let at = u64::from_le_bytes(payload[2..FIXED].try_into().expect("8 bytes"));
    Ok((
        Record {
            kind,
            mode,
            at,
            value: payload[FIXED..].to_vec(),
        },
        HEAD + len,
    ))
}

/// Appends purges to a directory's pending file (the store's, while no
/// tier is attached).
#[derive(Debug)]
pub(crate) struct PendingWriter {
    dir: PathBuf,
    /// Appends that failed (those purges live in memory only).
    pub errors: u64,
}

impl PendingWriter {
    pub fn new(dir: PathBuf) -> Self {
        PendingWriter { dir, errors: 0 }
    }

    /// Appends one purge (None: every file) and flushes it to disk.
    pub fn append(&mut self, m: Option<Matcher<'_>>, mode: PurgeMode) -> io::Result<()> {
        let r = self.try_append(m, mode);
        if r.is_err() {
            self.errors += 1;
        }
        r
    }

    fn try_append(&self, m: Option<Matcher<'_>>, mode: PurgeMode) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(PENDING_FILE);
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        loop {
            let mut f = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)?;
            f.lock()?;
            if f.metadata()?.nlink() == 0 {
                // An open applied and unlinked it between our open and lock.
                continue;
            }
            let p = read_bounded(&mut f)?.map_or_else(oversized, |b| parse(&b));
            if p.all {
                // Every file goes already.
                return Ok(());
            }
            if p.torn {
                // A crash (or a failed write) cut the last append short.
                f.set_len(p.valid_len as u64)?;
            }
            let mut out = Vec::new();
            if p.valid_len == 0 {
                out.extend_from_slice(MAGIC);
            }
            let m = if p.records.len() + 1 >= MAX_RECORDS {
                None
            } else {
                m
            };
            out.extend_from_slice(&encode(m, mode, at));
            f.write_all(&out)?;
            f.sync_data()?;
            if p.valid_len == 0 {
                // A new file: its name must be on disk too.
                File::open(&self.dir)?.sync_all()?;
            }
            return Ok(());
        }
    }
}

/// A directory's pending file as the open read it, locked until
/// [`Pending::remove`] (or drop).
pub(crate) struct Pending {
    _file: File,
    path: PathBuf,
    dir: PathBuf,
    pub parsed: Parsed,
}

impl Pending {
    /// None when the directory has no pending file.
    pub fn open(dir: &Path) -> io::Result<Option<Pending>> {
        let path = dir.join(PENDING_FILE);
        let mut f = match OpenOptions::new().read(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        f.lock()?;
        let parsed = read_bounded(&mut f)?.map_or_else(oversized, |b| parse(&b));
        Ok(Some(Pending {
            _file: f,
            path,
            dir: dir.to_path_buf(),
            parsed,
        }))
    }

    /// Unlinks the file (call once its records' effect is on disk), then
    /// flushes the directory.
    pub fn remove(self) -> io::Result<()> {
        std::fs::remove_file(&self.path)?;
        File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(recs: &[Vec<u8>]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        for r in recs {
            b.extend_from_slice(r);
        }
        b
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_ignored() {
        let a = encode(Some(Matcher::Url(b"https://h/a")), PurgeMode::Hard, 7);
        let b = encode(Some(Matcher::Tag(b"news")), PurgeMode::Light, 8);
        let whole = file(&[a.clone(), b]);
        let p = parse(&whole);
        assert!(!p.all && !p.torn && !p.corrupt);
        assert_eq!(p.valid_len, whole.len());
        assert_eq!(p.records.len(), 2);
        assert!(matches!(
            p.records[0].matcher(),
            Some(Matcher::Url(b"https://h/a"))
        ));
        assert!(matches!(
            p.records[1].matcher(),
            Some(Matcher::Tag(b"news"))
        ));
        assert_eq!((p.records[1].mode, p.records[1].at), (PurgeMode::Light, 8));
        // Every cut inside the second record: the first one stands.
        for cut in MAGIC.len() + a.len() + 1..whole.len() {
            let p = parse(&whole[..cut]);
            assert!(p.torn && !p.all && !p.corrupt, "cut at {cut}");
            assert_eq!(p.records.len(), 1);
            assert_eq!(p.valid_len, MAGIC.len() + a.len());
        }
        // A cut inside the magic: nothing written yet.
        let p = parse(&MAGIC[..3]);
        assert!(p.torn && !p.all && p.records.is_empty());
        assert_eq!(p.valid_len, 0);
        // Zeros where the last record should be (a crash before the flush).
        let mut zeros = file(&[a]);
        zeros.extend_from_slice(&[0; 20]);
        let p = parse(&zeros);
        assert!(p.torn && !p.all && p.records.len() == 1);
    }

    #[test]
    fn a_bad_record_before_the_end_or_another_magic_drops_everything() {
        let a = encode(Some(Matcher::Prefix(b"https://h/img")), PurgeMode::Hard, 7);
        let b = encode(Some(Matcher::Url(b"https://h/b")), PurgeMode::Hard, 8);
        let mut bad = file(&[a.clone(), b]);
        bad[MAGIC.len() + HEAD + FIXED] ^= 1;
        let p = parse(&bad);
        assert!(p.corrupt && p.all, "{p:?}");
        let mut other = file(std::slice::from_ref(&a));
        other[7] = b'2';
        assert!(parse(&other).all);
        // More junk than one record can be.
        let mut junk = file(&[a]);
        junk.extend(std::iter::repeat_n(0xff, MAX_RECORD + 1));
        assert!(parse(&junk).all);
        // A value too long for a record is written as "all".
        let long = vec![b'x'; MAX_VALUE + 1];
        let p = parse(&file(&[encode(
            Some(Matcher::Url(&long)),
            PurgeMode::Hard,
            1,
        )]));
        assert!(p.all && !p.corrupt);
    }
}
