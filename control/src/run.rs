//! `ferrogate run`: enter the namespace, start the engine, serve until
//! SIGTERM/SIGINT, publish counters, detach cleanly. The main thread owns
//! the engine and answers the admin API (forwarded from its own thread);
//! every applied snapshot is persisted as the last-known-good one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use ferrogate_engine::Engine;

use crate::access_log::AccessLogWriter;
use crate::admin::{self, Op, Reply};
use crate::config::Compiled;
use crate::snapshot::{self, History, Snapshot};

pub struct RunArgs {
    /// The config file; without it (or when it fails validation) the
    /// engine starts from the last-known-good snapshot in `state_dir`.
    pub config: Option<PathBuf>,
    pub netns: Option<String>,
    pub stats_file: Option<PathBuf>,
    pub duration: Option<Duration>,
    pub queues: Option<u32>,
    pub backend: Option<ferrogate_engine::BackendChoice>,
    /// The admin API's Unix socket; `None` serves none.
    pub admin_socket: Option<PathBuf>,
    /// Where the last applied snapshot is persisted.
    pub state_dir: PathBuf,
    /// Start as the successor of the engine serving `state_dir` (a binary
    /// upgrade): take its NIC queues over without dropping a connection.
    pub upgrade: bool,
}

/// Moves this process (it must not have spawned threads yet) into a named
/// network namespace.
pub fn enter_netns(name: &str) -> Result<()> {
    let path = format!("/var/run/netns/{name}");
    let f = std::fs::File::open(&path)
        .with_context(|| format!("opening {path} (does the namespace exist?)"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: setns(2) with a valid namespace fd; the process is still
    // single-threaded, so every thread spawned later inherits the namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns into {name}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// What was started from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    File,
    LastKnownGood,
}

/// The owner of the engine: applies snapshots (SIGHUP, admin API,
/// rollback), keeps the history, persists the last applied one.
struct Runtime<'a> {
    engine: Engine,
    args: &'a RunArgs,
    history: History,
    started: Instant,
    origin: Origin,
    access_log: Option<AccessLogWriter>,
    persister: snapshot::Persister,
    /// The running config's `timeouts.drain_ms`.
    drain_timeout: Duration,
    /// When the graceful stop began and when it gives up (SIGTERM or
    /// `POST /drain`).
    drain: Option<Drain>,
    /// What the last apply or rollback did (the status page shows it).
    last_apply: Option<crate::status::LastApply>,
    /// Applies and rollbacks by outcome, and when the last of each
    /// outcome was (`/metrics`).
    applies: crate::metrics::ApplyCounts,
    last_success: SystemTime,
    last_failure: Option<SystemTime>,
}

struct Drain {
    started: Instant,
    until: Instant,
}

impl Runtime<'_> {
    fn current(&self) -> &Snapshot {
        self.history
            .current()
            .expect("a snapshot is always running")
    }

    /// Validates and applies `text` as snapshot `counter`; nothing changes
    /// on error.
    fn apply_text(
        &mut self,
        text: &str,
        source: &Path,
        counter: u64,
    ) -> Result<Vec<&'static str>, Reply> {
        let mut compiled = crate::config::compile(source, text).map_err(|e| {
            Reply::err(
                422,
                format!(
                    "{e}\nconfiguration invalid; running version {} unchanged\n",
                    self.current().version()
                ),
            )
        })?;
        if let (Some(w), Some(t)) = (&self.access_log, &compiled.access_log) {
            w.set_target(t.clone());
        }
        let mut routes = (*compiled.engine.routes).clone();
        routes.version = counter;
        compiled.engine.routes = Arc::new(routes);
        compiled.engine.queues = self.args.queues.unwrap_or(compiled.engine.queues);
        let r = self.engine.reload(&compiled.engine).map_err(|e| {
            Reply::err(
                422,
                format!(
                    "apply failed: {e}; running version {} unchanged\n",
                    self.current().version()
                ),
            )
        })?;
        tracing::info!(
            counter,
            filter_generation = r.filter.as_ref().map(|f| f.generation),
            filter_ms = r.filter.as_ref().map(|f| f.elapsed.as_millis() as u64),
            "configuration applied"
        );
        if !r.ignored.is_empty() {
            tracing::warn!(ignored = ?r.ignored, "these changes need a restart");
        }
        self.drain_timeout = compiled.drain_timeout;
        Ok(r.ignored)
    }

    /// Starts the graceful stop (once): the workers refuse new connections
    /// and finish what is open; the main loop stops the engine once they
    /// are done or `drain_timeout` has passed.
    fn begin_drain(&mut self) {
        if self.drain.is_some() {
            return;
        }
        let now = Instant::now();
        self.engine.drain();
        tracing::info!(
            open_connections = self.engine.open_connections(),
            timeout_ms = self.drain_timeout.as_millis() as u64,
            "draining"
        );
        self.drain = Some(Drain {
            started: now,
            until: now + self.drain_timeout,
        });
    }

    fn commit(&mut self, snap: Snapshot) {
        self.persister.submit(snap.clone());
        self.history.push(snap);
    }

    /// Remembers what an apply or rollback answered.
    fn record(&mut self, kind: &'static str, t0: Instant, r: &Reply) {
        let (at, ok) = (SystemTime::now(), r.status == 200);
        self.applies.count(kind == "rollback", ok);
        if ok {
            self.last_success = at;
        } else {
            self.last_failure = Some(at);
        }
        self.last_apply = Some(crate::status::LastApply {
            at,
            ok,
            kind,
            version: self.current().version(),
            message: r.body.lines().next().unwrap_or("").to_string(),
            took_ms: t0.elapsed().as_millis() as u64,
        });
    }

    fn apply(&mut self, text: String, source: PathBuf) -> Reply {
        let t0 = Instant::now();
        let r = self.apply_inner(text, source);
        self.record("apply", t0, &r);
        r
    }

    fn apply_inner(&mut self, text: String, source: PathBuf) -> Reply {
        let counter = self.current().counter + 1;
        let t0 = Instant::now();
        match self.apply_text(&text, &source, counter) {
            Err(r) => r,
            Ok(ignored) => {
                let reloaded = t0.elapsed();
                let snap = Snapshot::new(counter, text, source);
                let mut body = format!("applied version {}\n", snap.version());
                body.push_str(&self.wait_switched(counter));
                tracing::info!(
                    counter,
                    reload_ms = reloaded.as_millis() as u64,
                    total_ms = t0.elapsed().as_millis() as u64,
                    "snapshot answered"
                );
                for i in ignored {
                    body.push_str(&format!("warning: {i} changed; needs a restart\n"));
                }
                self.commit(snap);
                Reply::ok(body)
            }
        }
    }

    /// Waits (up to 5 s) until every worker reports snapshot `counter`
    /// (a worker publishes its counters as soon as it switches; polled
    /// every 0.5 ms).
    fn wait_switched(&self, counter: u64) -> String {
        let t0 = Instant::now();
        loop {
            let (on, all) = self.workers_on(counter);
            if on == all {
                return format!(
                    "all {all} workers switched within {:.1} ms\n",
                    t0.elapsed().as_secs_f64() * 1e3
                );
            }
            if t0.elapsed() >= Duration::from_secs(5) {
                return format!("{on}/{all} workers switched after 5 s\n");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// (workers on snapshot `counter`, workers).
    fn workers_on(&self, counter: u64) -> (usize, usize) {
        let versions = self.engine.worker_versions();
        let on = versions.iter().filter(|&&v| v == counter).count();
        (on, versions.len())
    }

    fn rollback(&mut self) -> Reply {
        let t0 = Instant::now();
        let r = self.rollback_inner();
        self.record("rollback", t0, &r);
        r
    }

    fn rollback_inner(&mut self) -> Reply {
        let Some(prev) = self.history.previous().cloned() else {
            return Reply::err(409, "no previous version kept\n");
        };
        let counter = self.current().counter + 1;
        match self.apply_text(&prev.text, &prev.source, counter) {
            Err(r) => r,
            Ok(_) => {
                let from = self.current().version();
                self.history.pop_two();
                let prev_version = prev.version();
                let snap = Snapshot::new(counter, prev.text, prev.source);
                let body = format!(
                    "rolled back from {from} to the content of {prev_version} as version {}\n",
                    snap.version()
                );
                self.commit(snap);
                Reply::ok(body)
            }
        }
    }

    /// The file SIGHUP and diff read: `--config`, else the running
    /// snapshot's source.
    fn file(&self) -> PathBuf {
        self.args
            .config
            .clone()
            .unwrap_or_else(|| self.current().source.clone())
    }

    fn status(&self) -> String {
        let st = self.engine.stats();
        let cur = self.current();
        format!(
            "version {}\ncounter {}\ncontent_hash {:016x}\nsource {}\nstarted_from {}\nuptime_s {:.1}\nbackend {}\nworkers {}\nfilter_generation {}\nengine_snapshot_version {}\nworkers_on_version {}\nkept_versions {}\n",
            cur.version(),
            cur.counter,
            cur.hash,
            cur.source.display(),
            match self.origin {
                Origin::File => "file",
                Origin::LastKnownGood => "last-known-good",
            },
            self.started.elapsed().as_secs_f64(),
            st.backend,
            st.workers.len(),
            st.filter_generation
                .map(|g| g.to_string())
                .unwrap_or_else(|| "none".into()),
            st.snapshot_version,
            st.workers
                .iter()
                .filter(|w| w.snapshot_version == cur.counter)
                .count(),
            self.history.versions().join(","),
        )
    }

    /// `GET /status.json`: `/status` as JSON, under `engine` (`control`
    /// is the daemon's part, null here).
    fn status_json(&self) -> String {
        let st = self.engine.stats();
        let cur = self.current();
        let v = serde_json::json!({
            "control": null,
            "engine": {
                "version": cur.version(),
                "counter": cur.counter,
                "content_hash": format!("{:016x}", cur.hash),
                "source": cur.source.display().to_string(),
                "started_from": match self.origin {
                    Origin::File => "file",
                    Origin::LastKnownGood => "last-known-good",
                },
                "uptime_s": self.started.elapsed().as_secs_f64(),
                "backend": st.backend.to_string(),
                "workers": st.workers.len(),
                "filter_generation": st.filter_generation,
                "engine_snapshot_version": st.snapshot_version,
                "workers_on_version": st
                    .workers
                    .iter()
                    .filter(|w| w.snapshot_version == cur.counter)
                    .count(),
                "kept_versions": self.history.versions(),
                "last_apply": self.last_apply.as_ref().map(|a| a.to_json()),
                "pid": std::process::id(),
            },
        });
        v.to_string()
    }

    /// `GET /metrics`: the engine's counters and this process's state.
    fn metrics(&self) -> String {
        let unix = |t: SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        };
        let cur = self.current();
        let version = cur.version();
        let process = self.process_counters();
        let info = crate::metrics::Info {
            version: &version,
            counter: cur.counter,
            uptime_s: self.started.elapsed().as_secs_f64(),
            config: crate::metrics::ConfigState {
                applies: self.applies,
                last_success_unix_s: unix(self.last_success),
                last_failure_unix_s: self.last_failure.map_or(0.0, unix),
                last_duration_s: self
                    .last_apply
                    .as_ref()
                    .map_or(0.0, |a| a.took_ms as f64 / 1e3),
                last_failed: self.last_apply.as_ref().is_some_and(|a| !a.ok),
                started_from_last_known_good: self.origin == Origin::LastKnownGood,
                kept_versions: self.history.versions().len(),
                draining: self.drain.is_some(),
            },
            process: &process,
        };
        crate::metrics::render(&self.engine.stats(), &info)
    }

    /// Counters of this process that are not the engine's.
    fn process_counters(&self) -> Vec<(&'static str, u64)> {
        let mut v = vec![("snapshot_persist_errors", self.persister.errors())];
        if let Some(w) = &self.access_log {
            let (written, errors) = w.counts();
            v.push(("access_log_written", written));
            v.push(("access_log_write_errors", errors));
        }
        v
    }

    fn handle(&mut self, op: Op) -> Reply {
        match op {
            Op::Status => Reply::ok(self.status()),
            Op::StatusJson => Reply::ok(self.status_json()),
            Op::Stats => {
                let mut text = self.engine.stats().render();
                for (k, v) in self.process_counters() {
                    text.push_str(&format!("{k} {v}\n"));
                }
                Reply::ok(text)
            }
            Op::StatsJson => Reply::ok(
                crate::status::stats_json(&self.engine.stats(), &self.process_counters())
                    .to_string(),
            ),
            Op::Blocked => Reply::ok(blocked_list(self.engine.denied_sources())),
            Op::Unblock(addr) => {
                if self.engine.unblock(addr) {
                    Reply::ok(format!("unblocked {addr}\n"))
                } else {
                    Reply::err(404, format!("{addr} is not denied by escalation\n"))
                }
            }
            Op::Drain => {
                self.begin_drain();
                let open = self.engine.open_connections();
                let left = self.drain.as_ref().map_or(0.0, |d| {
                    d.until
                        .saturating_duration_since(Instant::now())
                        .as_secs_f64()
                });
                Reply::ok(format!(
                    "draining: {open} connections open; the engine stops when they are done or in {left:.1} s\n"
                ))
            }
            Op::Purge(p) => match self.engine.purge(&p) {
                Ok(n) => {
                    tracing::info!(purge = ?p, memory = n.memory, disk = n.disk, "cache purge");
                    Reply::ok(format!(
                        "purged {} in memory, {} on disk\n",
                        n.memory, n.disk
                    ))
                }
                Err(e) => Reply::err(400, format!("bad purge request: {e}\n")),
            },
            Op::Metrics => Reply::ok(self.metrics()),
            Op::Apply { text, source } => self.apply(text, source),
            Op::Rollback => self.rollback(),
            Op::Hello => {
                let cur = self.current();
                Reply::ok(format!(
                    "protocol {}\nversion {}\ncontent_hash {:016x}\npid {}\n",
                    admin::PROTOCOL,
                    cur.version(),
                    cur.hash,
                    std::process::id()
                ))
            }
            Op::Running => {
                let cur = self.current();
                Reply::ok(format!(
                    "version {}\nsource {}\n\n{}",
                    cur.version(),
                    cur.source.display(),
                    cur.text
                ))
            }
            Op::Diff => {
                let file = self.file();
                match std::fs::read_to_string(&file) {
                    Err(e) => Reply::err(404, format!("{}: {e}\n", file.display())),
                    Ok(disk) => match snapshot::diff(&self.current().text, &disk) {
                        Ok(d) => Reply::ok(format!(
                            "running {} vs {}\n{d}",
                            self.current().version(),
                            file.display()
                        )),
                        Err(e) => Reply::err(422, format!("{e:#}\n")),
                    },
                }
            }
        }
    }

    /// SIGHUP: re-read the file; a bad file is logged and the running
    /// configuration stays.
    fn reload_file(&mut self) {
        let file = self.file();
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(config = %file.display(), error = %e, "reload rejected; keeping the running configuration");
                return;
            }
        };
        let r = self.apply(text, file.clone());
        if r.status != 200 {
            tracing::error!(config = %file.display(), errors = %r.body.trim_end(), "reload rejected; keeping the running configuration");
        }
    }
}

/// Picks the starting snapshot: the config file when it validates, else
/// the persisted last-known-good one.
fn initial(args: &RunArgs) -> Result<(Snapshot, Compiled, Origin)> {
    let persisted = || -> Result<(Snapshot, Compiled)> {
        let (version, source, text) = snapshot::load_persisted(&args.state_dir)?;
        let compiled = crate::config::compile(&source, &text).map_err(|e| {
            anyhow::anyhow!("the persisted snapshot {version} does not validate:\n{e}")
        })?;
        let snap = Snapshot::new(snapshot::counter_of(&version), text, source);
        Ok((snap, compiled))
    };
    let next_counter = || {
        snapshot::load_persisted(&args.state_dir)
            .map(|(v, _, _)| snapshot::counter_of(&v) + 1)
            .unwrap_or(1)
    };
    let Some(path) = &args.config else {
        let (snap, c) =
            persisted().context("no --config and no usable last-known-good snapshot")?;
        tracing::info!(state_dir = %args.state_dir.display(), version = %snap.version(), "no --config: starting from the persisted last-known-good snapshot");
        return Ok((snap, c, Origin::LastKnownGood));
    };
    let from_file = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))
        .and_then(|text| match crate::config::compile(path, &text) {
            Ok(c) => Ok((text, c)),
            Err(e) => Err(e.to_string()),
        });
    match from_file {
        Ok((text, c)) => Ok((
            Snapshot::new(next_counter(), text, path.clone()),
            c,
            Origin::File,
        )),
        Err(errors) => match persisted() {
            Ok((snap, c)) => {
                tracing::error!(config = %path.display(), %errors, "the config does not validate");
                tracing::warn!(state_dir = %args.state_dir.display(), version = %snap.version(), "starting from the persisted last-known-good snapshot instead");
                Ok((snap, c, Origin::LastKnownGood))
            }
            Err(_) => bail!("{errors}"),
        },
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    let (snap, mut compiled, origin) = initial(&args)?;
    if let Some(q) = args.queues {
        compiled.engine.queues = q;
    }
    if let Some(b) = args.backend {
        compiled.engine.backend = b;
    }
    let mut routes = (*compiled.engine.routes).clone();
    routes.version = snap.counter;
    compiled.engine.routes = Arc::new(routes);
    if let Some(ns) = args.netns.as_ref().or(compiled.netns.as_ref()) {
        enter_netns(ns)?;
        tracing::info!(netns = %ns, "entered network namespace");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())?;
    // SIGUSR2 upgrades the engine: it is `ferrogate run`'s. One sent to
    // every process of the unit must not end this one (the default action).
    signal_hook::flag::register(
        signal_hook::consts::SIGUSR2,
        Arc::new(AtomicBool::new(false)),
    )?;

    // Bound before the engine starts, and fatal: an engine nobody can reach
    // cannot be managed, and a control daemon would talk to whichever engine
    // owns the path.
    // A binary upgrade's stream to the predecessor, confirmed once serving.
    let mut upgrade_session = None;
    // A successor binds it once its predecessor freed the path.
    let bind_admin = || -> Result<_> {
        Ok(match &args.admin_socket {
            Some(path) => Some((
                path.clone(),
                admin::bind(path).context("the engine's API socket")?,
            )),
            None => None,
        })
    };
    let mut listener = if args.upgrade { None } else { bind_admin()? };
    let access_target = compiled.access_log.clone();
    let drain_timeout = compiled.drain_timeout;
    let engine = if args.upgrade {
        let mut session = None;
        let state_dir = args.state_dir.clone();
        let engine = Engine::start_successor(compiled.engine, &mut |queues| {
            let (pred, stream) = crate::upgrade::take_over(&state_dir, queues)?;
            session = Some(stream);
            Ok(pred)
        });
        let engine = engine.context("taking over from the running engine")?;
        listener = bind_admin()?;
        upgrade_session = session;
        engine
    } else {
        Engine::start(compiled.engine).context("starting the engine")?
    };
    // Where a later successor finds us (one engine per state directory).
    let upgrades = match crate::upgrade::listen(&args.state_dir) {
        Ok(rx) => Some(rx),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "binary upgrades unavailable");
            None
        }
    };
    let access_log = match access_target {
        Some(t) => Some(
            AccessLogWriter::start(engine.access_queues().to_vec(), engine.clock_start(), t)
                .context("starting the access-log writer")?,
        ),
        None => None,
    };
    let mut rt = Runtime {
        persister: snapshot::Persister::start(args.state_dir.clone()),
        access_log,
        engine,
        args: &args,
        history: History::default(),
        started: Instant::now(),
        origin,
        drain_timeout,
        drain: None,
        last_apply: None,
        applies: Default::default(),
        // The load at start is the first successful one.
        last_success: SystemTime::now(),
        last_failure: None,
    };
    if origin == Origin::File {
        rt.commit(snap);
    } else {
        rt.history.push(snap);
    }
    let (tx, rx) = mpsc::channel::<admin::Request>();
    let mut socket = None;
    if let Some((path, l)) = listener {
        admin::spawn(l, tx.clone())?;
        tracing::info!(socket = %path.display(), "admin API listening");
        socket = Some(path);
    }
    tracing::info!(backend = %rt.engine.backend(), version = %rt.current().version(), "ferrogate engine serving");
    // Everything started: the predecessor may count on us now.
    let mut predecessor = upgrade_session.map(|s| {
        tracing::info!(
            "binary upgrade: the NIC queues are ours; the predecessor drains through us"
        );
        crate::upgrade::PredecessorLink::confirm(s)
    });
    let mut last_stats = Instant::now();
    // Off the loop, which also serves applies (a rename may wait on the
    // disk's writeback for seconds).
    let stats_file = match &args.stats_file {
        Some(p) => Some(crate::latest_file::LatestFile::start(
            p.clone(),
            "fg-stats",
            |_, _| {},
        )?),
        None => None,
    };
    let mut failure = None;
    let mut orphaned = false;
    // Set once a successor took the NIC queues: this engine only drains.
    let mut handed_over = false;
    let mut successor_failed = Arc::new(AtomicBool::new(false));
    loop {
        if successor_failed.load(Ordering::Relaxed) {
            // Nothing reaches us without it: end, so that the supervisor
            // starts a fresh engine now rather than after the drain bound.
            orphaned = true;
            break;
        }
        if predecessor.as_mut().is_some_and(|p| p.just_gone()) {
            tracing::info!("the predecessor has ended; its relay is closed");
            rt.engine.predecessor_gone();
            predecessor = None;
        }
        if let Some(req) = upgrades
            .as_ref()
            .and_then(|u| u.try_recv().ok())
            .filter(|r| r.take())
        {
            match rt.engine.hand_over(&req.relay) {
                Ok(h) => {
                    handed_over = true;
                    successor_failed = req.successor_failed.clone();
                    // The successor binds these paths next.
                    if let Some(p) = socket.take() {
                        let _ = std::fs::remove_file(p);
                    }
                    let _ = std::fs::remove_file(crate::upgrade::socket_path(&args.state_dir));
                    tracing::info!(
                        successor_pid = req.successor_pid,
                        "handed the NIC queues to the successor; draining"
                    );
                    let _ = req.reply.send(Ok(h));
                    if rt.drain_timeout.is_zero() {
                        break;
                    }
                    rt.begin_drain();
                }
                Err(e) => {
                    tracing::error!(error = %e, "refusing the binary upgrade; keeping everything");
                    let _ = req.reply.send(Err(e.to_string()));
                }
            }
        }
        if stop.load(Ordering::Relaxed) {
            if rt.drain_timeout.is_zero() {
                break;
            }
            rt.begin_drain();
        }
        if let Some(d) = &rt.drain {
            // A successor stopped while its predecessor drains carries the
            // predecessor's frames: it ends after it (or at the deadline).
            if rt.engine.drained() && !rt.engine.relaying() {
                tracing::info!(
                    took_ms = d.started.elapsed().as_millis() as u64,
                    "drained: every connection is done"
                );
                break;
            }
            if Instant::now() >= d.until {
                tracing::warn!(
                    cut_connections = rt.engine.open_connections(),
                    "drain timed out; cutting what is still open"
                );
                break;
            }
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(req) => {
                let reply = rt.handle(req.op);
                let _ = req.reply.send(reply);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(50))
            }
        }
        // The stats file is the successor's now.
        if let Some(f) = stats_file.as_ref().filter(|_| !handed_over)
            && last_stats.elapsed() >= Duration::from_millis(250)
        {
            last_stats = Instant::now();
            f.offer(rt.engine.stats().render());
        }
        if reload.swap(false, Ordering::Relaxed) {
            rt.reload_file();
        }
        rt.engine.tick();
        if !rt.engine.healthy() {
            for how in rt.engine.reap_finished_workers() {
                tracing::error!("{how}");
            }
            failure = Some("a worker thread exited");
            break;
        }
        if args.duration.is_some_and(|d| rt.started.elapsed() >= d) {
            break;
        }
    }
    tracing::info!("shutting down");
    // Requests still queued (or arriving) get "shutting down" at once
    // instead of waiting out their timeout on a loop that has ended.
    drop(rx);
    if let Some(p) = socket {
        let _ = std::fs::remove_file(p);
    }
    let Runtime {
        engine,
        persister,
        access_log,
        ..
    } = rt;
    let stats = engine.shutdown().context("detaching XDP")?;
    if let Some(w) = access_log {
        w.stop();
    }
    persister.finish();
    let text = stats.render();
    if let Some(f) = stats_file.filter(|_| !handed_over) {
        f.finish(text.clone());
    }
    println!("{text}");
    if orphaned {
        return Err(crate::upgrade::Orphaned.into());
    }
    if let Some(f) = failure {
        bail!("engine failed: {f}");
    }
    Ok(())
}

/// `GET /blocked`: one line per escalated source (a header line first).
fn blocked_list(denied: &[ferrogate_engine::escalation::DeniedSource]) -> String {
    use std::fmt::Write as _;
    let now = Instant::now();
    let mut out = String::from("# source limit expires_in_s offered_per_s since_unix_s\n");
    for d in denied {
        let since = d
            .since
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_secs());
        let _ = writeln!(
            out,
            "{} {} {} {} {}",
            d.source,
            d.limit,
            ferrogate_engine::escalation::remaining(d, now).as_secs(),
            d.offered_per_second,
            since
        );
    }
    out
}
