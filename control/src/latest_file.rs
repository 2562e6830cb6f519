//! A file rewritten (tmp + rename) by a thread of its own with the newest
//! text offered: callers that also answer requests (the engine's run
//! loop, the daemon's apply) never wait on the disk — a rename can block
//! for seconds on writeback (seen in CI: an apply timed out while its
//! thread sat in `rename`). An offer replaces one not yet written.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, Result};

#[derive(Default)]
struct Slot {
    next: Option<String>,
    closed: bool,
    /// Texts offered, and written (or failed): `flush` waits for equal.
    offered: u64,
    done: u64,
}

pub struct LatestFile {
    slot: Arc<(Mutex<Slot>, Condvar)>,
    writer: Option<JoinHandle<()>>,
}

/// tmp + rename: readers see the old file or the new one. The tmp name is
/// the process's own: during a binary upgrade two engines may write the
/// same file at once, and one must not rename the other's half-written tmp.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

impl LatestFile {
    /// `on_result` sees each write's outcome (on the writer thread).
    pub fn start(
        path: PathBuf,
        name: &str,
        on_result: impl Fn(&Path, std::io::Result<()>) + Send + 'static,
    ) -> Result<Self> {
        let slot = Arc::new((Mutex::new(Slot::default()), Condvar::new()));
        let shared = slot.clone();
        let writer = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let (lock, cv) = &*shared;
                loop {
                    let (text, generation) = {
                        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
                        while s.next.is_none() && !s.closed {
                            s = cv.wait(s).unwrap_or_else(|e| e.into_inner());
                        }
                        match s.next.take() {
                            Some(t) => (t, s.offered),
                            None => return,
                        }
                    };
                    on_result(&path, write_atomically(&path, &text));
                    lock.lock().unwrap_or_else(|e| e.into_inner()).done = generation;
                    cv.notify_all();
                }
            })
            .with_context(|| format!("starting the {name} thread"))?;
        Ok(Self {
            slot,
            writer: Some(writer),
        })
    }

    /// Queues `text` (replacing any not yet written); never blocks on I/O.
    pub fn offer(&self, text: String) {
        let (lock, cv) = &*self.slot;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        s.next = Some(text);
        s.offered += 1;
        cv.notify_all();
    }

    /// Waits (at most `limit`) until everything offered is written.
    pub fn flush(&self, limit: std::time::Duration) {
        let (lock, cv) = &*self.slot;
        let deadline = std::time::Instant::now() + limit;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        while s.done < s.offered {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            s = cv
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Writes `last` and waits until it is written.
    pub fn finish(mut self, last: String) {
        self.offer(last);
        self.close();
    }

    fn close(&mut self) {
        let (lock, cv) = &*self.slot;
        lock.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        cv.notify_all();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for LatestFile {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_text_is_written_and_finish_waits_for_it() {
        let dir = std::env::temp_dir().join(format!("fg-latest-{}", std::process::id()));
        let path = dir.join("stats");
        let f = LatestFile::start(path.clone(), "fg-test-writer", |_, r| r.unwrap()).unwrap();
        for i in 0..100 {
            f.offer(format!("v{i}\n"));
        }
        f.offer("flushed\n".into());
        f.flush(std::time::Duration::from_secs(10));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "flushed\n");
        f.finish("last\n".into());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "last\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn another_writers_tmp_file_is_left_alone() {
        let dir = std::env::temp_dir().join(format!("fg-latest-tmp-{}", std::process::id()));
        let path = dir.join("engine.stats");
        std::fs::create_dir_all(&dir).unwrap();
        // Another engine (another pid) is half-way through its write.
        let theirs = dir.join("engine.tmp.1");
        std::fs::write(&theirs, "half").unwrap();
        write_atomically(&path, "mine\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "mine\n");
        assert_eq!(std::fs::read_to_string(&theirs).unwrap(), "half");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
