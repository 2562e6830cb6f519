//! Versioned configuration snapshots: content hash + apply counter, the
//! last-known-good copy on disk, the kept history for rollback, and a
//! per-section diff.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// How many applied configurations are kept in memory for rollback.
pub const KEEP: usize = 5;

/// File name of the last-known-good snapshot under the state directory.
pub const LAST_GOOD: &str = "last-good.toml";

const HEADER: &str = "# ferrogate-snapshot";

/// FNV-1a 64: a stable content hash (the same text hashes the same across
/// builds and machines).
pub fn content_hash(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// One applied configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Increments with every apply (reload, API apply, rollback).
    pub counter: u64,
    pub hash: u64,
    /// The TOML text as applied.
    pub text: String,
    /// The file the text came from (names errors, resolves relative paths).
    pub source: PathBuf,
}

impl Snapshot {
    pub fn new(counter: u64, text: String, source: PathBuf) -> Self {
        Self {
            counter,
            hash: content_hash(&text),
            text,
            source,
        }
    }

    /// `<counter>-<hash>`, e.g. `3-9f1c0a2b44d7e615`.
    pub fn version(&self) -> String {
        format!("{}-{:016x}", self.counter, self.hash)
    }
}

/// The last applied snapshots, newest last.
#[derive(Debug, Default)]
pub struct History {
    kept: VecDeque<Snapshot>,
}

impl History {
    pub fn push(&mut self, s: Snapshot) {
        self.kept.push_back(s);
        while self.kept.len() > KEEP {
            self.kept.pop_front();
        }
    }

    pub fn current(&self) -> Option<&Snapshot> {
        self.kept.back()
    }

    /// The snapshot before the current one, if one is kept.
    pub fn previous(&self) -> Option<&Snapshot> {
        self.kept
            .len()
            .checked_sub(2)
            .and_then(|i| self.kept.get(i))
    }

    /// Forgets the current snapshot and the previous one (the caller
    /// re-applies the previous one as a new snapshot).
    pub fn pop_two(&mut self) {
        self.kept.pop_back();
        self.kept.pop_back();
    }

    pub fn versions(&self) -> Vec<String> {
        self.kept.iter().map(|s| s.version()).collect()
    }
}

/// Writes the snapshot to `dir/last-good.toml` atomically (tmp + rename).
pub fn persist(dir: &Path, s: &Snapshot) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(LAST_GOOD);
    let tmp = dir.join(format!(".{LAST_GOOD}.{}.tmp", std::process::id()));
    let body = format!(
        "{HEADER} version={} source={}\n{}",
        s.version(),
        s.source.display(),
        s.text
    );
    let written = (|| -> Result<()> {
        use std::io::Write;
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(body.as_bytes())
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
    })();
    if written.is_err() {
        // A full disk: the half-written copy must not hold space.
        let _ = std::fs::remove_file(&tmp);
    }
    written.map(|()| path)
}

/// How often a snapshot that could not be persisted is tried again.
const PERSIST_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// Persists snapshots on its own thread, newest wins: an apply never waits
/// for the disk (an fsync behind a busy disk can take seconds). A crash
/// before the write lands restarts from the previous snapshot, which the
/// control daemon then brings forward.
pub struct Persister {
    slot: std::sync::Arc<(std::sync::Mutex<PersistSlot>, std::sync::Condvar)>,
    errors: std::sync::Arc<std::sync::atomic::AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct PersistSlot {
    next: Option<Snapshot>,
    stop: bool,
}

impl Persister {
    pub fn start(dir: PathBuf) -> Self {
        let slot = std::sync::Arc::new((
            std::sync::Mutex::new(PersistSlot::default()),
            std::sync::Condvar::new(),
        ));
        let s = slot.clone();
        let errors = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let errs = errors.clone();
        let handle = std::thread::Builder::new()
            .name("fg-persist".into())
            .spawn(move || {
                // Only the first failure of a run is logged (a full disk
                // fails every apply); each is counted.
                let mut failing = false;
                // A snapshot that failed to persist, retried every
                // PERSIST_RETRY until it is written or a newer one comes:
                // otherwise a crash after the disk frees up would restart
                // from an older one.
                let mut pending: Option<Snapshot> = None;
                loop {
                    let (next, fresh, stopping) = {
                        let (m, cv) = &*s;
                        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
                        if pending.is_some() {
                            g = cv
                                .wait_timeout_while(g, PERSIST_RETRY, |g| {
                                    g.next.is_none() && !g.stop
                                })
                                .map(|(g, _)| g)
                                .unwrap_or_else(|e| e.into_inner().0);
                        } else {
                            while g.next.is_none() && !g.stop {
                                g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
                            }
                        }
                        match (g.next.take(), pending.take()) {
                            (Some(n), _) => (n, true, g.stop),
                            (None, Some(p)) => (p, false, g.stop),
                            (None, None) => return,
                        }
                    };
                    match persist(&dir, &next) {
                        Err(e) => {
                            if fresh {
                                errs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            if !std::mem::replace(&mut failing, true) {
                                tracing::error!(error = %format!("{e:#}"), "could not persist the last-known-good snapshot; counting in snapshot_persist_errors until it works again");
                            }
                            if !stopping {
                                pending = Some(next);
                            }
                        }
                        Ok(_) if std::mem::replace(&mut failing, false) => {
                            tracing::info!(version = %next.version(), "the last-known-good snapshot is persisted again");
                        }
                        Ok(_) => {}
                    }
                }
            })
            .ok();
        Self {
            slot,
            errors,
            handle,
        }
    }

    /// Snapshots that could not be written, since start.
    pub fn errors(&self) -> u64 {
        self.errors.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues `s` (replacing one not yet written).
    pub fn submit(&self, s: Snapshot) {
        let (m, cv) = &*self.slot;
        m.lock().unwrap_or_else(|e| e.into_inner()).next = Some(s);
        cv.notify_one();
    }

    /// Writes what is queued and stops.
    pub fn finish(mut self) {
        {
            let (m, cv) = &*self.slot;
            m.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
            cv.notify_one();
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Reads the persisted snapshot back: (version string, source, text).
pub fn load_persisted(dir: &Path) -> Result<(String, PathBuf, String)> {
    let path = dir.join(LAST_GOOD);
    let all =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (head, text) = all.split_once('\n').unwrap_or((&all, ""));
    let rest = head
        .strip_prefix(HEADER)
        .with_context(|| format!("{}: missing the snapshot header", path.display()))?;
    let mut version = String::new();
    let mut source = path.clone();
    for part in rest.split_whitespace() {
        if let Some(v) = part.strip_prefix("version=") {
            version = v.to_string();
        } else if let Some(v) = part.strip_prefix("source=") {
            source = PathBuf::from(v);
        }
    }
    Ok((version, source, text.to_string()))
}

/// The counter part of a version string (`3-...` → 3).
pub fn counter_of(version: &str) -> u64 {
    version
        .split('-')
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Human-readable per-section diff of two TOML texts (`running` → `file`).
pub fn diff(running: &str, file: &str) -> Result<String> {
    let a: toml::Table = toml::from_str(running).context("parsing the running config")?;
    let b: toml::Table = toml::from_str(file).context("parsing the file")?;
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = String::new();
    let mut changed = 0;
    for k in keys {
        let render = |t: &toml::Table| -> String {
            match t.get(k) {
                None => String::new(),
                Some(v) => {
                    let mut one = toml::Table::new();
                    one.insert(k.clone(), v.clone());
                    toml::to_string_pretty(&one).unwrap_or_default()
                }
            }
        };
        let (ra, rb) = (render(&a), render(&b));
        if ra == rb {
            out.push_str(&format!("[{k}] unchanged\n"));
            continue;
        }
        changed += 1;
        let what = match (a.contains_key(k), b.contains_key(k)) {
            (false, _) => "added",
            (_, false) => "removed",
            _ => "changed",
        };
        out.push_str(&format!("[{k}] {what}\n"));
        for line in line_diff(&ra, &rb) {
            out.push_str("    ");
            out.push_str(&line);
            out.push('\n');
        }
    }
    if changed == 0 {
        out.push_str("no differences\n");
    } else {
        out.push_str(&format!("{changed} section(s) differ\n"));
    }
    Ok(out)
}

/// `-`/`+`/` ` lines of an LCS diff (the inputs are small sections).
fn line_diff(a: &str, b: &str) -> Vec<String> {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push(format!("  {}", a[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(format!("+ {}", b[j]));
            j += 1;
        } else {
            out.push(format!("- {}", a[i]));
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_counter_and_content_hash() {
        let s = Snapshot::new(3, "a = 1\n".into(), "x.toml".into());
        assert_eq!(s.version(), format!("3-{:016x}", content_hash("a = 1\n")));
        assert_eq!(counter_of(&s.version()), 3);
        assert_ne!(content_hash("a = 1\n"), content_hash("a = 2\n"));
    }

    #[test]
    fn history_keeps_five_and_rolls_back() {
        let mut h = History::default();
        for i in 1..=7 {
            h.push(Snapshot::new(i, format!("v = {i}\n"), "f".into()));
        }
        assert_eq!(h.versions().len(), KEEP);
        assert_eq!(h.current().unwrap().counter, 7);
        assert_eq!(h.previous().unwrap().counter, 6);
        h.pop_two();
        assert_eq!(h.current().unwrap().counter, 5);
    }

    #[test]
    fn persist_round_trips() {
        let dir = std::env::temp_dir().join(format!("fg-snap-{}", std::process::id()));
        let s = Snapshot::new(4, "x = \"y\"\n".into(), "/etc/f.toml".into());
        persist(&dir, &s).unwrap();
        let (v, src, text) = load_persisted(&dir).unwrap();
        assert_eq!(v, s.version());
        assert_eq!(src, PathBuf::from("/etc/f.toml"));
        assert_eq!(text, s.text);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn diff_names_changed_sections() {
        let d = diff(
            "vips = [\"a\"]\n[engine]\nqueues = 1\n",
            "vips = [\"a\"]\n[engine]\nqueues = 2\n",
        )
        .unwrap();
        assert!(d.contains("[vips] unchanged"), "{d}");
        assert!(d.contains("[engine] changed"), "{d}");
        assert!(
            d.contains("- queues = 1") && d.contains("+ queues = 2"),
            "{d}"
        );
    }
}
