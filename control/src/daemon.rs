//! `ferrogate control`: the control daemon. It owns the configuration file:
//! watches it, validates every change, and pushes accepted snapshots to the
//! engine over the engine's socket (`/v1/…`, protocol 1). It serves the
//! operator API on its own Unix socket and, with a bearer token, on TCP.
//!
//! The engine never depends on it: it keeps serving (and persisting) the
//! last snapshot it applied when the daemon is gone. When the daemon comes
//! back it adopts what the engine runs, unless the file changed while it
//! was away — then the file wins, as it would have had the daemon been up.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::admin::{self, Handler, HttpRequest, Reply};
use crate::fleet::ApplyError;
use crate::snapshot::{self, content_hash};

pub struct DaemonArgs {
    pub config: PathBuf,
    pub engine_socket: PathBuf,
    /// The operator API's Unix socket; `None` serves none.
    pub socket: Option<PathBuf>,
    /// Optional TCP address of the operator API (needs `token_file`).
    pub tcp: Option<SocketAddr>,
    pub token_file: Option<PathBuf>,
    /// Where the daemon remembers the last file content it applied.
    pub state_dir: PathBuf,
    /// How often the file and the engine are looked at.
    pub watch: Duration,
    /// Fleet mode: the configuration comes from etcd, not `config`.
    pub fleet: Option<crate::fleet::FleetArgs>,
}

/// File (under the state dir) holding the hash of the last file content the
/// daemon applied: a file changed while the daemon was down is noticed.
const FILE_HASH: &str = "control-file-hash";

/// How long a changed file must hold still before the watch applies it.
const SETTLE: Duration = Duration::from_millis(100);

/// Why the daemon looks at the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    /// The periodic watch: a change is applied once it holds still.
    Watch,
    /// SIGHUP: the operator says the file is complete; it is pushed at
    /// once unless the engine already runs it and no file it names changed.
    Signal,
    /// A file the configuration names changed: the file is pushed again.
    NamedChange,
}

/// What the daemon wants the engine to run.
#[derive(Debug, Clone)]
struct Desired {
    text: String,
    source: PathBuf,
    hash: u64,
}

#[derive(Debug, Default)]
struct State {
    desired: Option<Desired>,
    /// Hash of the file content last looked at.
    file_hash: Option<u64>,
    /// A changed content seen once by the watch: applied when the next look
    /// finds it unchanged (a file written in place is not taken half-done).
    pending_hash: Option<u64>,
    engine_connected: bool,
    engine_version: String,
    engine_hash: u64,
    file_applied: u64,
    file_rejected: u64,
    pushes: u64,
    last_error: Option<String>,
    /// A fleet push whose answer never came (a timeout, a cut): it may land
    /// later. Until the engine is seen running it, or the fleet settles,
    /// the re-sync pushes nothing: it would put the older config back.
    unsettled: Option<Desired>,
}

impl State {
    /// The engine runs what the daemon wants.
    fn in_sync(&self) -> bool {
        self.desired
            .as_ref()
            .is_some_and(|d| self.engine_connected && d.hash == self.engine_hash)
    }
}

/// What identifies a file's version without reading it: (mtime ns, size,
/// inode); None when it is missing.
type Fingerprint = Option<(i128, u64, u64)>;

fn fingerprint(p: &Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((
        i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        m.size(),
        m.ino(),
    ))
}

struct Daemon {
    args: DaemonArgs,
    state: Mutex<State>,
    /// Files the config names (certificates, keys, CA bundles, prefix
    /// lists) and their last seen fingerprints: a change re-applies.
    named: Mutex<Vec<(PathBuf, Fingerprint)>>,
    /// Serializes pushes (API applies, file changes, re-syncs).
    push: Mutex<()>,
    started: Instant,
    /// Writes the applied file's hash off the apply's thread (a rename can
    /// wait seconds on writeback while the apply's caller waits).
    file_hash: crate::latest_file::LatestFile,
    /// The last hash recorded by this process.
    last_hash: Mutex<Option<u64>>,
    /// Fleet mode's follower state (None: file mode).
    fleet: Option<Arc<crate::fleet::Fleet>>,
    /// How long a push may take.
    push_timeout: Duration,
}

/// How long the engine may take to apply a snapshot.
/// Above the engine's own 30 s wait for its loop, so its answer (a 503
/// while the apply is still queued) arrives before this gives up.
const PUSH_TIMEOUT: Duration = Duration::from_secs(35);

/// What `/v1/hello` says.
struct Hello {
    version: String,
    hash: u64,
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(' '))
            .map(str::trim)
    })
}

impl Daemon {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The configuration the daemon owns: the file, or in fleet mode the
    /// last applied bundle's unpacked TOML.
    fn config_path(&self) -> PathBuf {
        match &self.fleet {
            Some(f) => f
                .state()
                .applied_toml
                .unwrap_or_else(|| PathBuf::from(format!("etcd:{}", f.boot.cluster))),
            None => self.args.config.clone(),
        }
    }

    /// API applies and rollbacks would be undone by the next bundle.
    fn fleet_refusal(&self) -> Option<Reply> {
        self.fleet.as_ref().map(|f| {
            Reply::err(
                409,
                format!(
                    "this daemon follows etcd cluster {}: publish with `ferrogate ctl publish`\n",
                    f.boot.cluster
                ),
            )
        })
    }

    fn watch_named(&self, files: Vec<PathBuf>) {
        *self.named.lock().unwrap_or_else(|e| e.into_inner()) = files
            .into_iter()
            .map(|f| {
                let fp = fingerprint(&f);
                (f, fp)
            })
            .collect();
    }

    /// The first named file that changed since the last look (all are
    /// brought up to date, so one rotation is one re-apply).
    fn named_change(&self) -> Option<PathBuf> {
        let mut named = self.named.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = None;
        for (path, seen) in named.iter_mut() {
            let now = fingerprint(path);
            if now != *seen {
                *seen = now;
                changed.get_or_insert_with(|| path.clone());
            }
        }
        changed
    }

    fn engine(&self, method: &str, path: &str, body: Option<(&str, &Path)>) -> Result<Reply> {
        self.engine_with(method, path, body, &[])
    }

    /// How long a hello may take: it is a liveness check, and the daemon's
    /// loop (and its SIGTERM) waits on it.
    const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

    fn engine_with(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &Path)>,
        headers: &[(&str, String)],
    ) -> Result<Reply> {
        admin::call_with(
            &self.args.engine_socket,
            method,
            path,
            body,
            headers,
            self.push_timeout,
        )
    }

    fn hello(&self) -> Result<Hello> {
        let r = admin::call_with(
            &self.args.engine_socket,
            "GET",
            "/v1/hello",
            None,
            &[],
            Self::HELLO_TIMEOUT,
        )?;
        if r.status != 200 {
            bail!("engine refused hello ({}): {}", r.status, r.body.trim_end());
        }
        let protocol = field(&r.body, "protocol").unwrap_or("");
        if protocol != admin::PROTOCOL.to_string() {
            bail!(
                "engine speaks protocol {protocol:?}, this daemon {}",
                admin::PROTOCOL
            );
        }
        Ok(Hello {
            version: field(&r.body, "version").unwrap_or("").to_string(),
            hash: field(&r.body, "content_hash")
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .unwrap_or(0),
        })
    }

    /// The engine's running snapshot: (version, source, text).
    fn running(&self) -> Result<(String, PathBuf, String)> {
        let r = self.engine("GET", "/v1/snapshot", None)?;
        if r.status != 200 {
            bail!("engine: {}", r.body.trim_end());
        }
        let (head, text) = r.body.split_once("\n\n").unwrap_or((&r.body, ""));
        Ok((
            field(head, "version").unwrap_or("").to_string(),
            PathBuf::from(field(head, "source").unwrap_or("")),
            text.to_string(),
        ))
    }

    /// Pushes `text` to the engine; on success it becomes the desired
    /// snapshot. Returns the engine's answer.
    fn push(&self, text: &str, source: &Path) -> Result<Reply> {
        let t0 = Instant::now();
        let _one = self.push.lock().unwrap_or_else(|e| e.into_inner());
        let locked = t0.elapsed();
        let r = self.push_locked(text, source);
        // Where an apply's time went, so a slow one can be told apart:
        // waiting behind the engine check, or the engine itself.
        let (lock_wait_ms, engine_ms) = (
            locked.as_millis() as u64,
            (t0.elapsed() - locked).as_millis() as u64,
        );
        match &r {
            Ok(reply) => tracing::info!(
                lock_wait_ms,
                engine_ms,
                status = reply.status,
                "pushed a snapshot to the engine"
            ),
            Err(e) => tracing::warn!(
                lock_wait_ms,
                engine_ms,
                error = %format!("{e:#}"),
                "pushing a snapshot to the engine failed"
            ),
        }
        r
    }

    /// `push` for a caller that holds the push lock.
    fn push_locked(&self, text: &str, source: &Path) -> Result<Reply> {
        let hash = content_hash(text);
        let r = self.engine_with(
            "POST",
            "/v1/snapshot",
            Some((text, source)),
            &[("X-Ferrogate-Hash", format!("{hash:016x}"))],
        )?;
        let mut st = self.state();
        st.pushes += 1;
        if r.status == 200 {
            st.desired = Some(Desired {
                text: text.to_string(),
                source: source.to_path_buf(),
                hash,
            });
            st.engine_hash = hash;
            if let Some(v) = field(&r.body, "applied version") {
                st.engine_version = v.to_string();
            }
            st.last_error = None;
        } else {
            st.last_error = Some(r.body.trim_end().to_string());
        }
        Ok(r)
    }

    fn remember_file_hash(&self, hash: u64) {
        *self.last_hash.lock().unwrap_or_else(|e| e.into_inner()) = Some(hash);
        self.file_hash.offer(format!("{hash:016x}\n"));
    }

    /// The hash this process recorded last (the file may still be on its
    /// way to the disk), else the one a previous run left.
    fn remembered_file_hash(&self) -> Option<u64> {
        if let Some(h) = *self.last_hash.lock().unwrap_or_else(|e| e.into_inner()) {
            return Some(h);
        }
        std::fs::read_to_string(self.args.state_dir.join(FILE_HASH))
            .ok()
            .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
    }

    /// Looks at the file: a changed, valid file is pushed; a changed,
    /// invalid one is logged and the running version stays. Returns true
    /// when the watch saw a change that must hold still until the next look.
    fn check_file(&self, look: Look) -> bool {
        if self.fleet.is_some() {
            return false; // etcd owns the configuration
        }
        let path = &self.args.config;
        let Ok(text) = std::fs::read_to_string(path) else {
            return false;
        };
        let hash = content_hash(&text);
        let force = match look {
            Look::Watch => {
                let mut st = self.state();
                if st.file_hash == Some(hash) {
                    st.pending_hash = None;
                    return false;
                }
                // The first look (at start) decides at once: settling it
                // would leave a window in which an operator's apply is
                // taken back by the file the daemon started with.
                if st.file_hash.is_some() && st.pending_hash != Some(hash) {
                    // An editor or `>` may be half-way through writing it.
                    st.pending_hash = Some(hash);
                    return true;
                }
                false
            }
            Look::Signal => {
                // One SIGHUP, at most one new version: a file the watch
                // already applied (or that never changed) is not pushed
                // again, unless a file it names changed.
                let named = self.named_change().is_some();
                let mut st = self.state();
                if !named && st.engine_connected && st.engine_hash == hash {
                    st.file_hash = Some(hash);
                    st.pending_hash = None;
                    drop(st);
                    tracing::info!(config = %path.display(), "SIGHUP: the file and the files it names are unchanged; the engine already runs them");
                    return false;
                }
                true
            }
            Look::NamedChange => true,
        };
        if !self.state().engine_connected {
            // Decided once the engine answers a hello: it may already run
            // this file (it starts from it), which must not become a new
            // version. Looked at again on the next tick.
            return false;
        }
        {
            let mut st = self.state();
            st.file_hash = Some(hash);
            st.pending_hash = None;
        }
        if !force && self.remembered_file_hash() == Some(hash) {
            return false; // applied before (by an earlier daemon)
        }
        match crate::config::compile(path, &text) {
            Ok(c) => self.watch_named(c.files),
            Err(e) => {
                let mut st = self.state();
                st.file_rejected += 1;
                st.last_error = Some(e.to_string());
                tracing::error!(config = %path.display(), errors = %e, "configuration change rejected; the engine keeps its running version");
                return false;
            }
        }
        let engine_hash = self.state().engine_hash;
        if !force && engine_hash == hash {
            // The engine already runs it (it started from this file).
            self.adopt(text, path.clone(), hash);
            self.remember_file_hash(hash);
            return false;
        }
        match self.push(&text, path) {
            Ok(r) if r.status == 200 => {
                self.state().file_applied += 1;
                self.remember_file_hash(hash);
                tracing::info!(config = %path.display(), answer = %r.body.trim_end(), "configuration change applied");
            }
            Ok(r) => {
                self.state().file_rejected += 1;
                self.remember_file_hash(hash);
                tracing::error!(config = %path.display(), answer = %r.body.trim_end(), "the engine refused the configuration change");
            }
            Err(e) => {
                // Not reachable: try again on the next look.
                let mut st = self.state();
                st.file_hash = None;
                if st.engine_connected {
                    tracing::warn!(error = %format!("{e:#}"), "engine unreachable; the change waits");
                }
            }
        }
        false
    }

    fn adopt(&self, text: String, source: PathBuf, hash: u64) {
        self.state().desired = Some(Desired { text, source, hash });
    }

    /// Talks to the engine: notices it coming and going, and brings it to
    /// the desired snapshot (an engine that restarted from an older one).
    fn check_engine(&self) {
        // Under the push lock: an apply in flight must not be mistaken for
        // an engine that runs something else (and be pushed back over).
        let _one = self.push.lock().unwrap_or_else(|e| e.into_inner());
        let t0 = Instant::now();
        let _slow = SlowWarning(t0, "engine check (holds the push lock)");
        match self.hello() {
            Err(e) => {
                let mut st = self.state();
                if st.engine_connected {
                    tracing::warn!(error = %format!("{e:#}"), socket = %self.args.engine_socket.display(), "lost the engine; it keeps serving its last snapshot");
                }
                st.engine_connected = false;
            }
            Ok(h) => {
                let (was, desired) = {
                    let mut st = self.state();
                    let was = st.engine_connected;
                    st.engine_connected = true;
                    st.engine_version = h.version.clone();
                    st.engine_hash = h.hash;
                    (was, st.desired.clone())
                };
                if !was {
                    tracing::info!(version = %h.version, socket = %self.args.engine_socket.display(), "connected to the engine");
                }
                match desired {
                    None => {
                        // Nothing wanted yet: what the engine runs is it.
                        if let Ok((_, source, text)) = self.running() {
                            let hash = content_hash(&text);
                            self.adopt(text, source, hash);
                        }
                    }
                    Some(d) if d.hash != h.hash => {
                        let unsettled = self.state().unsettled.clone();
                        match unsettled {
                            Some(u) if u.hash == h.hash => {
                                // A fleet push that timed out landed: it is
                                // the newer config, not one to undo.
                                tracing::info!(engine = %h.version, "the engine runs the bundle whose push timed out; adopting it");
                                let mut st = self.state();
                                st.desired = Some(u);
                                st.unsettled = None;
                                return;
                            }
                            Some(_) => {
                                // The fleet tries the newest bundle again
                                // (reading the engine's hash first).
                                return;
                            }
                            None => {}
                        }
                        tracing::info!(engine = %h.version, want = %format!("{:016x}", d.hash), "engine runs another snapshot; pushing the desired one");
                        if let Err(e) = self.push_locked(&d.text, &d.source) {
                            tracing::warn!(error = %format!("{e:#}"), "re-sync push failed");
                        }
                    }
                    Some(_) => {}
                }
            }
        }
    }

    fn status(&self) -> Reply {
        let st = self.state();
        let in_sync = st.in_sync();
        let mut out = format!(
            "control_pid {}\ncontrol_config {}\ncontrol_uptime_s {:.1}\nengine_socket {}\nengine_connected {}\ndesired_hash {}\nin_sync {}\nfile_changes_applied {}\nfile_changes_rejected {}\npushes {}\nadmin_auth_failures {}\n",
            std::process::id(),
            self.config_path().display(),
            self.started.elapsed().as_secs_f64(),
            self.args.engine_socket.display(),
            if st.engine_connected { "yes" } else { "no" },
            st.desired
                .as_ref()
                .map(|d| format!("{:016x}", d.hash))
                .unwrap_or_else(|| "none".into()),
            if in_sync { "yes" } else { "no" },
            st.file_applied,
            st.file_rejected,
            st.pushes,
            crate::admin::auth_failures(),
        );
        if let Some(e) = &st.last_error {
            let first = e.lines().next().unwrap_or("");
            out.push_str(&format!("last_error {first}\n"));
        }
        drop(st);
        if let Some(f) = &self.fleet {
            out.push_str(&fleet_status_lines(f, in_sync));
        }
        match self.engine("GET", "/status", None) {
            Ok(r) if r.status == 200 => {
                out.push_str(&r.body);
                Reply::ok(out)
            }
            Ok(r) => Reply::err(r.status, out + &r.body),
            Err(e) => Reply::err(503, format!("{out}engine unreachable: {e:#}\n")),
        }
    }

    /// `GET /status.json`: the daemon's part under `control`, the engine's
    /// `/status.json` under `engine` (null, with `engine_error`, when the
    /// engine does not answer).
    fn status_json(&self) -> Reply {
        let mut control = {
            let st = self.state();
            let in_sync = st.in_sync();
            serde_json::json!({
                "pid": std::process::id(),
                "config": self.config_path().display().to_string(),
                "uptime_s": self.started.elapsed().as_secs_f64(),
                "engine_socket": self.args.engine_socket.display().to_string(),
                "engine_connected": st.engine_connected,
                "desired_hash": st.desired.as_ref().map(|d| format!("{:016x}", d.hash)),
                "in_sync": in_sync,
                "file_changes_applied": st.file_applied,
                "file_changes_rejected": st.file_rejected,
                "pushes": st.pushes,
                "admin_auth_failures": crate::admin::auth_failures(),
                "last_error": st.last_error.as_deref().map(|e| e.lines().next().unwrap_or("")),
            })
        };
        if let Some(f) = &self.fleet {
            let fs = f.state();
            let in_sync = control["in_sync"].as_bool().unwrap_or(false);
            control["fleet"] = serde_json::json!({
                "cluster": f.boot.cluster,
                "host": f.boot.host,
                "etcd_connected": fs.etcd_connected,
                "etcd_error": fs.etcd_error,
                "revision": fs.applied_revision,
                "version": fs.applied_version,
                "latest_revision": fs.latest_revision,
                "in_sync": in_sync && f.bundle_in_sync(),
                "bundles_applied": fs.bundles_applied,
                "bundles_refused": fs.bundles_refused,
                "last_refusal": fs.last_refusal,
                "transient_failures": fs.transient_failures,
                "last_transient": fs.last_transient,
                "compactions": fs.compactions,
                "status_error": fs.status_error,
            });
        }
        let (status, engine) = match self.engine("GET", "/status.json", None) {
            Ok(r) if r.status == 200 => match serde_json::from_str::<serde_json::Value>(&r.body) {
                Ok(mut v) => (200, v["engine"].take()),
                Err(e) => {
                    control["engine_error"] = format!("engine answered bad JSON: {e}").into();
                    (502, serde_json::Value::Null)
                }
            },
            Ok(r) => {
                control["engine_error"] = r.body.trim_end().into();
                (r.status, serde_json::Value::Null)
            }
            Err(e) => {
                control["engine_error"] = format!("engine unreachable: {e:#}").into();
                (503, serde_json::Value::Null)
            }
        };
        let body = serde_json::json!({ "control": control, "engine": engine }).to_string();
        Reply { status, body }
    }

    /// `GET /metrics`: the engine's exposition with the daemon's own
    /// families after it. Without the engine the daemon's alone, still
    /// 200: a scrape then says "engine not connected" instead of failing.
    fn metrics(&self) -> Reply {
        let (connected, mut body) = match self.engine("GET", "/metrics", None) {
            Ok(r) if r.status == 200 => (true, r.body),
            Ok(r) => (
                false,
                format!("# engine answered {}: {}\n", r.status, one_line(&r.body)),
            ),
            Err(e) => (
                false,
                format!("# engine unreachable: {}\n", one_line(&format!("{e:#}"))),
            ),
        };
        let info = {
            let st = self.state();
            crate::metrics::ControlInfo {
                engine_connected: connected,
                in_sync: connected && st.in_sync(),
                uptime_s: self.started.elapsed().as_secs_f64(),
                file_changes_applied: st.file_applied,
                file_changes_rejected: st.file_rejected,
                pushes: st.pushes,
                admin_auth_failures: crate::admin::auth_failures(),
                last_change_failed: st.last_error.is_some(),
                fleet: self.fleet.as_ref().map(|f| {
                    let fs = f.state();
                    crate::metrics::FleetInfo {
                        etcd_connected: fs.etcd_connected,
                        in_sync: connected && st.in_sync() && f.bundle_in_sync(),
                        revision: fs.applied_revision,
                        bundles_applied: fs.bundles_applied,
                        bundles_refused: fs.bundles_refused,
                        compactions: fs.compactions,
                    }
                }),
            }
        };
        body.push_str(&crate::metrics::render_control(&info));
        Reply::ok(body)
    }

    fn forward(&self, method: &str, path: &str) -> Reply {
        match self.engine(method, path, None) {
            Ok(r) => r,
            Err(e) => Reply::err(503, format!("engine unreachable: {e:#}\n")),
        }
    }

    fn apply(&self, req: &HttpRequest) -> Reply {
        if let Some(r) = self.fleet_refusal() {
            return r;
        }
        let source = req
            .source
            .clone()
            .unwrap_or_else(|| PathBuf::from("<admin-request>"));
        // Refused here, with the errors located in the operator's file, so
        // a bad config never reaches the engine.
        if let Err(e) = crate::config::compile(&source, &req.body) {
            let running = self.state().engine_version.clone();
            return Reply::err(
                422,
                format!("{e}\nconfiguration invalid; running version {running} unchanged\n"),
            );
        }
        match self.push(&req.body, &source) {
            Ok(r) => {
                if r.status == 200 {
                    self.file_superseded();
                }
                r
            }
            Err(e) => Reply::err(503, format!("engine unreachable: {e:#}\n")),
        }
    }

    /// An operator's apply or rollback wins over the file as it is now: the
    /// watch applies only what is written to it after this.
    fn file_superseded(&self) {
        let Ok(text) = std::fs::read_to_string(&self.args.config) else {
            return;
        };
        let hash = content_hash(&text);
        {
            let mut st = self.state();
            st.file_hash = Some(hash);
            st.pending_hash = None;
        }
        self.remember_file_hash(hash);
    }

    fn rollback(&self) -> Reply {
        if let Some(r) = self.fleet_refusal() {
            return r;
        }
        let _one = self.push.lock().unwrap_or_else(|e| e.into_inner());
        let r = self.forward("POST", "/rollback");
        if r.status == 200
            && let Ok((version, source, text)) = self.running()
        {
            let hash = content_hash(&text);
            {
                let mut st = self.state();
                st.desired = Some(Desired { text, source, hash });
                st.engine_hash = hash;
                st.engine_version = version;
            }
            self.file_superseded();
        }
        r
    }

    fn diff(&self) -> Reply {
        let file = &self.config_path();
        let disk = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => return Reply::err(404, format!("{}: {e}\n", file.display())),
        };
        match self.running() {
            Err(e) => Reply::err(503, format!("engine unreachable: {e:#}\n")),
            Ok((version, _, running)) => match snapshot::diff(&running, &disk) {
                Ok(d) => Reply::ok(format!("running {version} vs {}\n{d}", file.display())),
                Err(e) => Reply::err(422, format!("{e:#}\n")),
            },
        }
    }

    fn handle(&self, req: HttpRequest) -> (Reply, &'static str) {
        let text = "text/plain";
        let reply = match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/status") => self.status(),
            ("GET", "/stats") => self.forward("GET", "/stats"),
            ("GET", "/status.json") => return (self.status_json(), crate::status::JSON),
            ("GET", "/stats.json") => {
                return (self.forward("GET", "/stats.json"), crate::status::JSON);
            }
            ("GET", p) if crate::status::PAGE_PATHS.contains(&p) => {
                return (Reply::ok(crate::status::PAGE), admin::HTML);
            }
            ("GET", "/blocked") => self.forward("GET", "/blocked"),
            ("POST", p) if p.starts_with("/unblock/") => match admin::unblock_addr(p) {
                Ok(a) => self.forward("POST", &format!("/unblock/{a}")),
                Err(r) => r,
            },
            // Checked here (400 without a trip), forwarded in its canonical form.
            ("POST", "/purge") => match admin::parse_purge(&req.body) {
                Ok(p) => match self.engine(
                    "POST",
                    "/purge",
                    Some((&admin::purge_body(&p), Path::new(""))),
                ) {
                    Ok(r) => r,
                    Err(e) => Reply::err(503, format!("engine unreachable: {e:#}\n")),
                },
                Err(r) => r,
            },
            ("GET", "/metrics") => return (self.metrics(), crate::metrics::CONTENT_TYPE),
            ("POST", "/drain") => self.forward("POST", "/drain"),
            ("GET", "/diff") => self.diff(),
            ("POST", "/validate") => admin::validate(
                &req.body,
                req.source
                    .as_deref()
                    .unwrap_or(Path::new("<admin-request>")),
            ),
            ("POST", "/apply") => self.apply(&req),
            ("POST", "/rollback") => self.rollback(),
            (m, p) => admin::unknown(
                m,
                p,
                &[
                    "/status",
                    "/stats",
                    "/metrics",
                    "/status.json",
                    "/stats.json",
                    "/",
                    "/ui",
                    "/blocked",
                    "/unblock/ADDR",
                    "/purge",
                    "/drain",
                    "/diff",
                    "/validate",
                    "/apply",
                    "/rollback",
                ],
            ),
        };
        (reply, text)
    }
}

/// The fleet lines of `GET /status` (`in_sync`: the engine runs what the
/// daemon wants).
fn fleet_status_lines(f: &crate::fleet::Fleet, in_sync: bool) -> String {
    let fs = f.state();
    let one = |o: &Option<String>| {
        o.as_deref()
            .map(|s| s.lines().next().unwrap_or("").to_string())
            .unwrap_or_else(|| "none".into())
    };
    format!(
        "fleet_cluster {}\nfleet_host {}\nfleet_etcd_connected {}\nfleet_etcd_error {}\nfleet_revision {}\nfleet_version {}\nfleet_latest_revision {}\nfleet_in_sync {}\nfleet_bundles_applied {}\nfleet_bundles_refused {}\nfleet_last_refusal {}\nfleet_transient_failures {}\nfleet_last_transient {}\nfleet_compactions {}\n",
        f.boot.cluster,
        f.boot.host,
        if fs.etcd_connected { "yes" } else { "no" },
        one(&fs.etcd_error),
        fs.applied_revision,
        fs.applied_version.as_deref().unwrap_or("none"),
        fs.latest_revision,
        if in_sync && f.bundle_in_sync() {
            "yes"
        } else {
            "no"
        },
        fs.bundles_applied,
        fs.bundles_refused,
        one(&fs.last_refusal),
        fs.transient_failures,
        one(&fs.last_transient),
        fs.compactions,
    ) + &fleet_rollout_lines(&fs)
}

/// The rollout and health lines of `GET /status` in fleet mode.
fn fleet_rollout_lines(fs: &crate::fleet::FleetState) -> String {
    let mut out = String::new();
    match &fs.health {
        Some(h) => out.push_str(&format!(
            "fleet_health_window_s {}\nfleet_health_responses {}\nfleet_health_errors_5xx {}\nfleet_health_error_ratio {:.4}\nfleet_health_p99_us {}\n",
            h.window_s,
            h.responses,
            h.errors_5xx,
            h.error_ratio,
            h.p99_us.map_or("none".into(), |p| p.to_string()),
        )),
        None => out.push_str("fleet_health_window_s none\n"),
    }
    match &fs.rollout {
        Some(r) => {
            let v = serde_json::to_value(r).unwrap_or_default();
            out.push_str(&format!(
                "fleet_rollout_serial {}\nfleet_rollout_state {}\nfleet_rollout_wave {}\nfleet_rollout_gate {}\nfleet_rollout_reason {}\n",
                r.serial,
                v["state"].as_str().unwrap_or("?"),
                r.wave.map_or("unknown".into(), |w| w.to_string()),
                one_line(r.gate.as_deref().unwrap_or("none")),
                one_line(r.reason.as_deref().unwrap_or("none")),
            ));
        }
        None => out.push_str("fleet_rollout_state none\n"),
    }
    out
}

impl Daemon {
    /// The engine runs `d`: it is what the daemon wants now.
    fn settle(&self, d: Desired) {
        let mut st = self.state();
        st.engine_hash = d.hash;
        st.desired = Some(d);
        st.unsettled = None;
        st.last_error = None;
    }

    /// A hello under the push lock: the engine's state as it is now.
    fn hello_now(&self) -> Result<u64> {
        match self.hello() {
            Ok(h) => {
                let mut st = self.state();
                st.engine_connected = true;
                st.engine_hash = h.hash;
                st.engine_version = h.version;
                Ok(h.hash)
            }
            Err(e) => {
                self.state().engine_connected = false;
                Err(e)
            }
        }
    }
}

impl crate::fleet::FleetEngine for Daemon {
    fn apply_bundle(&self, toml: &Path, text: &str) -> std::result::Result<(), ApplyError> {
        let want = Desired {
            text: text.to_string(),
            source: toml.to_path_buf(),
            hash: content_hash(text),
        };
        let _one = self.push.lock().unwrap_or_else(|e| e.into_inner());
        // The engine's hash first: an earlier push that timed out may have
        // landed (pushing again would make a new version of it).
        match self.hello_now() {
            Err(e) => {
                return Err(ApplyError::Transient(format!(
                    "engine unreachable: {}",
                    one_line(&format!("{e:#}"))
                )));
            }
            Ok(h) if h == want.hash => {
                self.settle(want);
                return Ok(());
            }
            Ok(_) => {}
        }
        // Validated here too: this host's ferrogate may refuse what the
        // publisher's accepted (another version, a missing interface).
        // After the hello: a retry while the engine is away costs no
        // compile (large prefix lists take seconds).
        if let Err(e) = crate::config::compile(toml, text) {
            return Err(ApplyError::Refused(format!(
                "does not validate here: {}",
                one_line(&e.to_string())
            )));
        }
        match self.push_locked(text, toml) {
            Ok(r) if r.status == 200 => {
                self.state().unsettled = None;
                Ok(())
            }
            Ok(r) if r.status >= 500 => {
                // The engine's admin side answers 503 when its loop did not
                // take the apply in time: it is still queued and may land.
                if self.hello_now().is_ok_and(|h| h == want.hash) {
                    self.settle(want);
                    return Ok(());
                }
                self.state().unsettled = Some(want);
                Err(ApplyError::Transient(format!(
                    "the engine answered {}: {}",
                    r.status,
                    one_line(&r.body)
                )))
            }
            Ok(r) => {
                // The engine handles one request at a time: an earlier push
                // left unsettled has been taken or failed by now.
                let earlier = self.state().unsettled.take();
                if let Some(p) = earlier
                    && self.hello_now().is_ok_and(|h| h == p.hash)
                {
                    self.settle(p);
                }
                Err(ApplyError::Refused(format!(
                    "the engine refused it: {}",
                    one_line(&r.body)
                )))
            }
            Err(e) => {
                // No answer: it may have landed, or may still land.
                if self.hello_now().is_ok_and(|h| h == want.hash) {
                    self.settle(want);
                    return Ok(());
                }
                self.state().unsettled = Some(want);
                Err(ApplyError::Transient(format!(
                    "the push got no answer: {}",
                    one_line(&format!("{e:#}"))
                )))
            }
        }
    }

    fn runs(&self, toml: &Path, text: &str) -> bool {
        let st = self.state();
        st.engine_connected
            && st.engine_hash == content_hash(text)
            && st.desired.as_ref().is_some_and(|d| d.source == toml)
    }

    fn engine_state(&self) -> (bool, bool) {
        let st = self.state();
        (st.engine_connected, st.in_sync())
    }

    fn engine_stats(&self) -> Option<serde_json::Value> {
        // Short: a sample that cannot be had now is skipped.
        let r = admin::call_with(
            &self.args.engine_socket,
            "GET",
            "/stats.json",
            None,
            &[],
            Self::HELLO_TIMEOUT,
        )
        .ok()?;
        if r.status != 200 {
            return None;
        }
        serde_json::from_str(&r.body).ok()
    }

    fn engine_source(&self) -> Option<PathBuf> {
        match self.running() {
            Ok((_, source, _)) => Some(source),
            // Not known now: the one it was last seen running.
            Err(_) => {
                let st = self.state();
                st.in_sync()
                    .then(|| st.desired.as_ref().map(|d| d.source.clone()))
                    .flatten()
            }
        }
    }
}

/// `s` as one comment-safe line.
fn one_line(s: &str) -> String {
    s.trim_end().replace(['\n', '\r'], " ")
}

/// Logs a warning when dropped more than a second after its start.
struct SlowWarning(Instant, &'static str);

impl Drop for SlowWarning {
    fn drop(&mut self) {
        let took = self.0.elapsed();
        if took >= Duration::from_secs(1) {
            tracing::warn!(took_ms = took.as_millis() as u64, "slow: {}", self.1);
        }
    }
}

fn read_token(path: &Path) -> Result<String> {
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("reading the admin token {}", path.display()))?;
    let t = t.trim().to_string();
    if t.len() < 16 {
        bail!(
            "{}: the admin token must be at least 16 characters",
            path.display()
        );
    }
    Ok(t)
}

pub fn run(args: DaemonArgs) -> Result<()> {
    let token = match (&args.tcp, &args.token_file) {
        (Some(addr), None) => {
            bail!("refusing to serve the admin API on {addr} without --admin-token-file")
        }
        (_, Some(p)) => Some(read_token(p)?),
        (None, None) => None,
    };
    let fleet = match &args.fleet {
        Some(fa) => {
            let boot = crate::fleet::load_bootstrap(fa)?;
            Some(Arc::new(crate::fleet::Fleet::new(boot, &args.state_dir)?))
        }
        None => {
            std::fs::metadata(&args.config)
                .with_context(|| format!("reading {}", args.config.display()))?;
            None
        }
    };
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

    let file_hash = crate::latest_file::LatestFile::start(
        args.state_dir.join(FILE_HASH),
        "fg-file-hash",
        |path, r| {
            // A full disk fails every apply: log the first failure of a run only.
            static FAILING: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            match r {
                Err(e) => {
                    if !FAILING.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::warn!(error = %e, file = %path.display(), "cannot record the applied file hash (logged once until it works again)");
                    }
                }
                Ok(()) => {
                    if FAILING.swap(false, std::sync::atomic::Ordering::Relaxed) {
                        tracing::info!(file = %path.display(), "the applied file hash is recorded again");
                    }
                }
            }
        },
    )?;
    let daemon = Arc::new(Daemon {
        file_hash,
        last_hash: Mutex::new(None),
        args,
        state: Mutex::new(State::default()),
        push: Mutex::new(()),
        started: Instant::now(),
        named: Mutex::new(Vec::new()),
        fleet,
        push_timeout: PUSH_TIMEOUT,
    });
    // Connect first so a file the engine already runs is adopted, not pushed.
    daemon.check_engine();
    let mut fleet_reporter = None;
    if let Some(f) = &daemon.fleet {
        tracing::info!(cluster = %f.boot.cluster, host = %f.boot.host, etcd = %f.boot.etcd.join(","), "fleet mode: following etcd");
        let eng: Arc<dyn crate::fleet::FleetEngine> = daemon.clone();
        fleet_reporter = Some(crate::fleet::start(f.clone(), eng, stop.clone())?);
    }
    // Which files the config names (a large prefix list takes seconds to
    // compile: after the engine is reached, not before). A file that does
    // not validate is reported, not fatal: the engine keeps its snapshot and
    // the daemon waits for a good one.
    // (Fleet mode: the bundle carries its files; nothing to watch.)
    let compiled = daemon.fleet.is_none().then(|| {
        std::fs::read_to_string(&daemon.args.config)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                crate::config::compile(&daemon.args.config, &t).map_err(|e| e.to_string())
            })
    });
    match compiled {
        None => {}
        Some(Ok(c)) => daemon.watch_named(c.files),
        Some(Err(e)) => {
            tracing::error!(config = %daemon.args.config.display(), errors = %e, "the configuration does not validate; waiting for a good one");
        }
    }
    let handler: Handler = {
        let d = daemon.clone();
        Arc::new(move |req| d.handle(req))
    };
    if let Some(path) = &daemon.args.socket {
        let l = admin::bind(path)?;
        admin::spawn_unix(l, handler.clone())?;
        tracing::info!(socket = %path.display(), "control API listening");
    }
    if let (Some(addr), Some(token)) = (daemon.args.tcp, token) {
        let l =
            TcpListener::bind(addr).with_context(|| format!("binding the admin API on {addr}"))?;
        admin::spawn_tcp(l, token, handler)?;
        tracing::info!(%addr, "control API listening on TCP (bearer token)");
    }
    tracing::info!(config = %daemon.config_path().display(), engine = %daemon.args.engine_socket.display(), "ferrogate control daemon running");
    // A change the watch sees is applied when a look this much later finds
    // the same content.
    let settle = daemon.args.watch.min(SETTLE);
    let mut next_look = daemon.args.watch;
    let mut last = Instant::now() - next_look;
    while !stop.load(Ordering::Relaxed) {
        if reload.swap(false, Ordering::Relaxed) {
            tracing::info!(config = %daemon.args.config.display(), "SIGHUP: re-reading the configuration");
            daemon.check_engine();
            daemon.check_file(Look::Signal);
            last = Instant::now();
            next_look = daemon.args.watch;
        }
        if last.elapsed() >= next_look {
            last = Instant::now();
            daemon.check_engine();
            let pending = daemon.check_file(Look::Watch);
            next_look = if pending { settle } else { daemon.args.watch };
            if let Some(changed) = daemon.named_change() {
                tracing::info!(file = %changed.display(), "a file the configuration names changed; re-applying");
                daemon.check_file(Look::NamedChange);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(p) = &daemon.args.socket {
        let _ = std::fs::remove_file(p);
    }
    // The last applied file's hash reaches the disk before we go (a new
    // daemon must not push the file over an apply made through the API).
    daemon.file_hash.flush(Duration::from_secs(10));
    // The host's status lease is revoked (bounded: etcd may be away).
    if let Some(done) = fleet_reporter {
        let _ = done.recv_timeout(Duration::from_secs(5));
    }
    tracing::info!("control daemon stopped; the engine keeps serving");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daemon whose engine is a fake answering on `engine_socket`.
    fn daemon(dir: &Path) -> Daemon {
        Daemon {
            file_hash: crate::latest_file::LatestFile::start(
                dir.join(FILE_HASH),
                "fg-test-hash",
                |_, _| {},
            )
            .unwrap(),
            last_hash: Mutex::new(None),
            args: DaemonArgs {
                config: dir.join("edge.toml"),
                engine_socket: dir.join("engine.sock"),
                socket: None,
                tcp: None,
                token_file: None,
                state_dir: dir.to_path_buf(),
                watch: Duration::from_secs(1),
                fleet: None,
            },
            state: Mutex::new(State::default()),
            push: Mutex::new(()),
            started: Instant::now(),
            named: Mutex::new(Vec::new()),
            fleet: None,
            push_timeout: PUSH_TIMEOUT,
        }
    }

    #[test]
    fn a_purge_is_checked_then_forwarded_to_the_engine_in_canonical_form() {
        let dir = std::env::temp_dir().join(format!("fg-daemon-purge-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<admin::Request>();
        admin::spawn(admin::bind(&dir.join("engine.sock")).unwrap(), tx).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for r in rx {
                log.lock().unwrap().push(format!("{:?}", r.op));
                let _ = r.reply.send(Reply::ok("purged 2\n"));
            }
        });
        let d = daemon(&dir);
        let post = |body: &str| {
            d.handle(HttpRequest {
                method: "POST".into(),
                path: "/purge".into(),
                body: body.into(),
                ..Default::default()
            })
            .0
        };
        assert_eq!(
            post("mode=hard\nprefix=https://a.example/img/\n"),
            Reply::ok("purged 2\n")
        );
        let r = post("prefix=https://a.example/img/\ntag=x\n");
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains("one of url, prefix or tag"), "{}", r.body);
        assert_eq!(
            *seen.lock().unwrap(),
            ["Purge(Purge { mode: Hard, target: Prefix(\"https://a.example/img/\") })"],
            "the malformed one never reached the engine"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn metrics_are_the_engines_then_the_daemons_and_answer_without_an_engine() {
        use crate::metrics::parse::parse;
        let dir = std::env::temp_dir().join(format!("fg-daemon-metrics-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let get = |d: &Daemon| {
            d.handle(HttpRequest {
                method: "GET".into(),
                path: "/metrics".into(),
                ..Default::default()
            })
        };
        // No engine yet: the daemon's families alone, still 200.
        let d = daemon(&dir);
        d.state().file_rejected = 2;
        d.state().last_error = Some("bad\nfile".into());
        let (r, ctype) = get(&d);
        assert_eq!(
            (r.status, ctype),
            (200, crate::metrics::CONTENT_TYPE),
            "{}",
            r.body
        );
        let e = parse(&r.body).unwrap_or_else(|err| panic!("{err}\n{}", r.body));
        let v = |e: &crate::metrics::parse::Exposition, n: &str| {
            e.samples
                .iter()
                .find(|s| s.name == n)
                .unwrap_or_else(|| panic!("no {n}"))
                .value
        };
        assert_eq!(v(&e, "ferrogate_control_engine_connected"), 0.0);
        assert_eq!(v(&e, "ferrogate_control_file_changes_rejected_total"), 2.0);
        assert_eq!(v(&e, "ferrogate_control_last_change_failed"), 1.0);
        assert!(!e.types.contains_key("ferrogate_uptime_seconds"));
        assert!(r.body.starts_with("# engine unreachable: "), "{}", r.body);

        // An engine: its exposition first, then the daemon's.
        let (tx, rx) = std::sync::mpsc::channel::<admin::Request>();
        admin::spawn(admin::bind(&dir.join("engine.sock")).unwrap(), tx).unwrap();
        std::thread::spawn(move || {
            for r in rx {
                let body = crate::metrics::render(
                    &ferrogate_engine::EngineStats {
                        backend: ferrogate_engine::BackendKind::Memory,
                        workers: vec![],
                        xdp: None,
                        rules: vec![],
                        filter_generation: None,
                        snapshot_version: 4,
                        upstreams: Default::default(),
                        routes: Default::default(),
                        port: vec![],
                        escalation: Default::default(),
                        cache: Default::default(),
                        cache_disk: None,
                        plugins: Vec::new(),
                    },
                    &crate::metrics::Info {
                        version: "4-ab",
                        counter: 4,
                        ..Default::default()
                    },
                );
                let _ = r.reply.send(Reply::ok(body));
            }
        });
        {
            let mut st = d.state();
            st.engine_connected = true;
            st.engine_hash = 9;
            st.desired = Some(Desired {
                text: String::new(),
                source: PathBuf::new(),
                hash: 9,
            });
        }
        let (r, _) = get(&d);
        assert_eq!(r.status, 200, "{}", r.body);
        let e = parse(&r.body).unwrap_or_else(|err| panic!("{err}\n{}", r.body));
        assert_eq!(v(&e, "ferrogate_snapshot_counter"), 4.0);
        assert_eq!(v(&e, "ferrogate_control_engine_connected"), 1.0);
        assert_eq!(v(&e, "ferrogate_control_in_sync"), 1.0);
        assert!(
            r.body.starts_with("# HELP ferrogate_snapshot_info "),
            "{}",
            r.body
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A fake engine: answers hellos with the hash it runs; applies a push
    /// `delay` after receiving it (its answer then comes too late for a
    /// short push timeout); answers 503 to a text holding "busy" and 422 to
    /// one holding "nope".
    struct SlowEngine {
        hash: Arc<Mutex<u64>>,
        pushed: Arc<Mutex<Vec<String>>>,
    }

    fn slow_engine(dir: &Path, delay: Duration, running: &str) -> SlowEngine {
        let (tx, rx) = std::sync::mpsc::channel::<admin::Request>();
        admin::spawn(admin::bind(&dir.join("engine.sock")).unwrap(), tx).unwrap();
        let hash = Arc::new(Mutex::new(content_hash(running)));
        let pushed = Arc::new(Mutex::new(Vec::new()));
        let (h, p) = (hash.clone(), pushed.clone());
        std::thread::spawn(move || {
            for r in rx {
                match r.op {
                    admin::Op::Hello => {
                        let body = format!(
                            "protocol {}\nversion v\ncontent_hash {:016x}\n",
                            admin::PROTOCOL,
                            *h.lock().unwrap()
                        );
                        let _ = r.reply.send(Reply::ok(body));
                    }
                    admin::Op::Apply { text, .. } => {
                        p.lock().unwrap().push(text.clone());
                        if text.contains("busy") {
                            let _ = r.reply.send(Reply::err(503, "busy\n"));
                            continue;
                        }
                        if text.contains("nope") {
                            let _ = r.reply.send(Reply::err(422, "nope\n"));
                            continue;
                        }
                        if text.contains("late503") {
                            // The admin side gave up waiting; the apply is
                            // still queued and lands later.
                            let _ = r.reply.send(Reply::err(503, "the engine did not answer\n"));
                            let h = h.clone();
                            std::thread::spawn(move || {
                                std::thread::sleep(delay);
                                *h.lock().unwrap() = content_hash(&text);
                            });
                            continue;
                        }
                        let h = h.clone();
                        std::thread::spawn(move || {
                            std::thread::sleep(delay);
                            *h.lock().unwrap() = content_hash(&text);
                            let _ = r.reply.send(Reply::ok("applied version 2\n"));
                        });
                    }
                    _ => {
                        let _ = r.reply.send(Reply::err(404, "no\n"));
                    }
                }
            }
        });
        SlowEngine { hash, pushed }
    }

    fn config(body: &str) -> String {
        format!(
            "vips = [\"10.77.0.10/24\"]\n\n[engine]\ninterface = \"eth0\"\n\n[[listeners]]\nport = 80\n\n[[listeners.routes]]\nname = \"v\"\npath_prefix = \"/\"\nrespond = {{ status = 200, body = \"{body}\" }}\n"
        )
    }

    #[test]
    fn a_fleet_push_that_timed_out_is_never_undone_by_the_older_config() {
        use crate::fleet::FleetEngine;
        let dir = std::env::temp_dir().join(format!("fg-daemon-timeout-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (old, new) = (config("old"), config("new"));
        let eng = slow_engine(&dir, Duration::from_millis(700), &old);
        let mut d = daemon(&dir);
        d.push_timeout = Duration::from_millis(250);
        d.check_engine();
        d.adopt(old.clone(), dir.join("old.toml"), content_hash(&old));
        let toml = dir.join("new.toml");

        // The push gets no answer in time, and the engine still runs the
        // old config: not applied, for now.
        let r = d.apply_bundle(&toml, &new);
        assert!(matches!(r, Err(ApplyError::Transient(_))), "{r:?}");
        assert_eq!(eng.pushed.lock().unwrap().len(), 1);
        // It lands later. The daemon's re-sync must not push the old
        // config back over it.
        std::thread::sleep(Duration::from_millis(900));
        assert_eq!(*eng.hash.lock().unwrap(), content_hash(&new));
        d.check_engine();
        d.check_engine();
        assert_eq!(
            *eng.pushed.lock().unwrap(),
            std::slice::from_ref(&new),
            "the old config was pushed back"
        );
        assert!(d.state().in_sync(), "the landed bundle is the desired one");
        // The fleet's retry reads the engine's hash first: nothing pushed.
        assert_eq!(d.apply_bundle(&toml, &new), Ok(()));
        assert_eq!(eng.pushed.lock().unwrap().len(), 1);
        assert!(d.runs(&toml, &new));

        // A 5xx is for now, a 4xx for good.
        let busy = config("busy");
        assert!(matches!(
            d.apply_bundle(&toml, &busy),
            Err(ApplyError::Transient(_))
        ));
        let nope = config("nope");
        assert!(matches!(
            d.apply_bundle(&toml, &nope),
            Err(ApplyError::Refused(_))
        ));
        // A 503 while the apply is still queued in the engine: it lands
        // later, and the re-sync must not push the older config over it.
        let late = config("late503");
        assert!(matches!(
            d.apply_bundle(&toml, &late),
            Err(ApplyError::Transient(_))
        ));
        let pushes = eng.pushed.lock().unwrap().len();
        std::thread::sleep(Duration::from_millis(900));
        assert_eq!(*eng.hash.lock().unwrap(), content_hash(&late));
        d.check_engine();
        d.check_engine();
        assert_eq!(
            eng.pushed.lock().unwrap().len(),
            pushes,
            "the older config was pushed back over the late one"
        );
        assert_eq!(d.apply_bundle(&toml, &late), Ok(()));
        assert_eq!(eng.pushed.lock().unwrap().len(), pushes);
        // An engine that is away: for now.
        let _ = std::fs::remove_file(dir.join("engine.sock"));
        assert!(matches!(
            d.apply_bundle(&toml, &config("later")),
            Err(ApplyError::Transient(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
