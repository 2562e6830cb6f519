//! The access-log writer: one thread that drains every worker's bounded
//! queue of `AccessRecord`s every 20 ms and writes them as JSON lines, to a
//! file (reopened when logrotate moves it) or to the process log through
//! `tracing`. Workers never wait for it: a full queue drops records and the
//! stack counts them (`access_log_dropped`).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferrogate_proxy::access::AccessQueue;

use crate::config::AccessLogTarget;

const DRAIN_EVERY: Duration = Duration::from_millis(20);
/// How often the file's identity is checked (logrotate moved it away?).
const REOPEN_CHECK: Duration = Duration::from_secs(1);

pub struct AccessLogWriter {
    target: Arc<Mutex<AccessLogTarget>>,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    write_errors: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

/// An open log file and the inode it was opened as.
struct Open {
    path: PathBuf,
    file: File,
    ino: u64,
}

fn open(path: &PathBuf) -> std::io::Result<Open> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let ino = file.metadata()?.ino();
    Ok(Open {
        path: path.clone(),
        file,
        ino,
    })
}

/// Appends `buf` whole or not at all: after a failed write (a full disk)
/// the file is cut back, so no half line is left for the next one to join.
fn append(o: &mut Open, buf: &[u8]) -> std::io::Result<()> {
    let len = o.file.metadata()?.len();
    o.file.write_all(buf).inspect_err(|_| {
        let _ = o.file.set_len(len);
    })
}

/// Logs the first error of a run of failures and the recovery, not each
/// failure (the lost lines are counted in `access_log_write_errors`).
#[derive(Default)]
struct ErrorOnce {
    failing: bool,
}

impl ErrorOnce {
    fn failed(&mut self, path: &std::path::Path, what: &str, e: &std::io::Error) {
        if !std::mem::replace(&mut self.failing, true) {
            tracing::error!(path = %path.display(), error = %e, "cannot {what} the access log; counting lost lines in access_log_write_errors until it works again");
        }
    }

    fn ok(&mut self, path: &std::path::Path) {
        if std::mem::replace(&mut self.failing, false) {
            tracing::info!(path = %path.display(), "the access log is written again");
        }
    }
}

/// RFC 3339 UTC with microseconds, from µs since the Unix epoch.
pub fn rfc3339_micros(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

impl AccessLogWriter {
    /// Starts the writer for the engine's queues; `clock_start` is the
    /// instant the records' `at_us` counts from.
    pub fn start(
        queues: Vec<Arc<AccessQueue>>,
        clock_start: Instant,
        target: AccessLogTarget,
    ) -> std::io::Result<Self> {
        let target = Arc::new(Mutex::new(target));
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let write_errors = Arc::new(AtomicU64::new(0));
        let wall_start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as i64
            - clock_start.elapsed().as_micros() as i64;
        let handle = {
            let (target, stop, written, write_errors) = (
                target.clone(),
                stop.clone(),
                written.clone(),
                write_errors.clone(),
            );
            std::thread::Builder::new()
                .name("fg-access-log".into())
                .spawn(move || {
                    let mut out: Option<Open> = None;
                    let mut last_check = Instant::now();
                    let mut buf = String::with_capacity(64 * 1024);
                    let mut errors = ErrorOnce::default();
                    loop {
                        let stopping = stop.load(Ordering::Acquire);
                        buf.clear();
                        let mut lines = 0u64;
                        for (worker, q) in queues.iter().enumerate() {
                            while let Some(r) = q.pop() {
                                let ts = rfc3339_micros(wall_start + r.at_us);
                                r.write_json(worker, &ts, &mut buf);
                                buf.push('\n');
                                lines += 1;
                            }
                        }
                        let want = target.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        let ok = match &want {
                            AccessLogTarget::Log => {
                                for line in buf.lines() {
                                    tracing::info!(target: "ferrogate::access", "{line}");
                                }
                                true
                            }
                            AccessLogTarget::File(path) => {
                                let stale = out.as_ref().is_none_or(|o| &o.path != path)
                                    || (last_check.elapsed() >= REOPEN_CHECK && {
                                        last_check = Instant::now();
                                        std::fs::metadata(path).map(|m| m.ino()).ok()
                                            != out.as_ref().map(|o| o.ino)
                                    });
                                if stale {
                                    out = match open(path) {
                                        Ok(o) => Some(o),
                                        Err(e) => {
                                            errors.failed(path, "open", &e);
                                            None
                                        }
                                    };
                                }
                                match out.as_mut() {
                                    Some(o) if !buf.is_empty() => match append(o, buf.as_bytes()) {
                                        Ok(()) => {
                                            errors.ok(path);
                                            true
                                        }
                                        Err(e) => {
                                            errors.failed(path, "write", &e);
                                            false
                                        }
                                    },
                                    Some(_) => true,
                                    None => buf.is_empty(),
                                }
                            }
                        };
                        if ok {
                            written.fetch_add(lines, Ordering::Relaxed);
                        } else {
                            write_errors.fetch_add(lines, Ordering::Relaxed);
                        }
                        if stopping {
                            break;
                        }
                        std::thread::sleep(DRAIN_EVERY);
                    }
                })?
        };
        Ok(Self {
            target,
            stop,
            written,
            write_errors,
            handle: Some(handle),
        })
    }

    /// A reload may move the log elsewhere.
    pub fn set_target(&self, t: AccessLogTarget) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }

    /// Lines written, and lines lost to write errors.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.written.load(Ordering::Relaxed),
            self.write_errors.load(Ordering::Relaxed),
        )
    }

    /// Drains what is queued, writes it, stops the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        // 2026-11-22T05:27:41.123456Z
        assert_eq!(
            rfc3339_micros(1_795_325_261_123_456),
            "2026-11-22T05:27:41.123456Z"
        );
        assert_eq!(
            rfc3339_micros(951_782_400_000_001),
            "2000-02-29T00:00:00.000001Z"
        );
    }

    #[test]
    fn writes_every_queued_record_as_one_json_line() {
        use ferrogate_proxy::access::AccessRecord;
        let dir = std::env::temp_dir().join(format!("fg-access-{}", std::process::id()));
        let path = dir.join("a.log");
        let q = Arc::new(AccessQueue::new(64));
        for status in [200u16, 404, 502] {
            let mut r = AccessRecord {
                status,
                ..Default::default()
            };
            r.path.set(b"/x");
            q.push(r).ok().unwrap();
        }
        let w =
            AccessLogWriter::start(vec![q], Instant::now(), AccessLogTarget::File(path.clone()))
                .unwrap();
        w.stop();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[1].contains("\"status\":404") && lines[1].contains("\"path\":\"/x\""));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
