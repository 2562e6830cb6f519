//! Fleet mode: many edges follow one configuration kept in etcd.
//!
//! Keys (under `/ferrogate/<cluster>/`):
//! - `bundle`: the current signed bundle (`bundle.rs`), written by
//!   `ferrogate ctl publish` with a compare-and-swap on its mod_revision;
//! - `hosts/<host>`: each daemon's status (JSON) under a lease with a TTL,
//!   so a host that dies disappears from it;
//! - `members/<host>`: written once by each daemon, without a lease, so
//!   `ferrogate ctl fleet status` can name the hosts that went silent.
//! - `rollout/<serial>`: written once (create-only) by the first host
//!   that sees a gate of that bundle's rollout fail (`progress.rs`).
//!
//! A daemon in fleet mode (`ferrogate control --etcd …`) reads the bundle,
//! verifies it against the trusted keys of its bootstrap file, unpacks it
//! into its state dir (a directory per revision) and hands the unpacked
//! TOML to the same apply path as the file mode. Then it watches the key
//! from the next revision; a broken stream is re-opened where it stopped,
//! and a watch that fell behind a compaction reads the key anew (a full
//! reload: only the newest bundle matters). etcd being away changes
//! nothing for the engine, which keeps serving what it runs.

pub mod bundle;
pub mod cli;
pub mod etcd;
mod progress;
pub mod rollout;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ed25519_dalek::VerifyingKey;
use serde::Deserialize;

use etcd::{Client, EtcdError, EventType, KeyValue, WatchEnd};

pub fn bundle_key(cluster: &str) -> String {
    format!("/ferrogate/{cluster}/bundle")
}

pub fn host_key(cluster: &str, host: &str) -> String {
    format!("/ferrogate/{cluster}/hosts/{host}")
}

pub fn member_key(cluster: &str, host: &str) -> String {
    format!("/ferrogate/{cluster}/members/{host}")
}

/// Written once (create-only) by the first host that sees a rollout's
/// gate fail: `{"stopped": reason, "by": host, …}`.
pub fn rollout_key(cluster: &str, serial: u64) -> String {
    format!("/ferrogate/{cluster}/rollout/{serial}")
}

/// Cluster and host names become key components: no `/`, nothing odd.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        bail!("{what} {name:?}: expected 1-128 characters of A-Z a-z 0-9 - _ .");
    }
    Ok(())
}

/// How long a watch may stay silent before it is re-opened (from where
/// it was: nothing is lost).
const WATCH_IDLE: Duration = Duration::from_secs(30);
/// Retry bounds while etcd is away, a bundle failed for a passing reason
/// (unpack I/O, engine away or slow), or a member lags.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Refusal and failure text built from unverified data (an envelope's
/// fields) is cut to this many bytes in logs and status.
const MAX_REASON: usize = 256;
/// Unpacked bundles kept besides the running one (the engine restarts from
/// its persisted snapshot, which names files in one of them).
const KEEP_UNPACKED: usize = 4;
/// The record of the last applied bundle, under the fleet dir.
const APPLIED: &str = "applied";
/// The record of the bundle a rollout replaced: what a failed gate goes
/// back to (kept across a restart of the daemon).
const PRIOR: &str = "prior";

/// `ferrogate control --etcd … --cluster … --bootstrap …`.
#[derive(Debug, Clone)]
pub struct FleetArgs {
    pub etcd: Vec<String>,
    pub cluster: Option<String>,
    pub bootstrap: PathBuf,
    pub host: Option<String>,
}

/// The bootstrap file: what a host needs before it can trust etcd.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BootstrapFile {
    cluster: Option<String>,
    #[serde(default)]
    etcd: Vec<String>,
    host: Option<String>,
    /// Public keys (SPKI PEM files, relative to the bootstrap file).
    trusted_keys: Vec<String>,
    /// TTL of the host's status lease.
    status_ttl_s: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub cluster: String,
    pub etcd: Vec<String>,
    pub host: String,
    pub trusted: Vec<VerifyingKey>,
    pub status_ttl: Duration,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Reads the bootstrap file; the command line's `--etcd`, `--cluster` and
/// `--host` win over it.
pub fn load_bootstrap(args: &FleetArgs) -> Result<Bootstrap> {
    let path = &args.bootstrap;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let f: BootstrapFile = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new(""));
    let mut trusted = Vec::new();
    for k in &f.trusted_keys {
        trusted.push(bundle::load_verifying_key(&base.join(k))?);
    }
    if trusted.is_empty() {
        bail!(
            "{}: trusted_keys is empty: every bundle would be refused",
            path.display()
        );
    }
    let cluster = args
        .cluster
        .clone()
        .or(f.cluster)
        .with_context(|| format!("no --cluster and no `cluster` in {}", path.display()))?;
    check_name("cluster", &cluster)?;
    let etcd = if args.etcd.is_empty() {
        f.etcd
    } else {
        args.etcd.clone()
    };
    if etcd.is_empty() {
        bail!("no --etcd and no `etcd` in {}", path.display());
    }
    let host = args.host.clone().or(f.host).unwrap_or_else(hostname);
    check_name("host", &host)?;
    let ttl = f.status_ttl_s.unwrap_or(10);
    if !(2..=3600).contains(&ttl) {
        bail!("{}: status_ttl_s must be 2..=3600", path.display());
    }
    Ok(Bootstrap {
        cluster,
        etcd,
        host,
        trusted,
        status_ttl: Duration::from_secs(ttl),
    })
}

/// Why a bundle was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyError {
    /// For good (it does not validate here, the engine refused it): the
    /// revision is settled, counted as refused.
    Refused(String),
    /// For now (the engine is away, slow or answered 5xx): the revision is
    /// tried again with backoff.
    Transient(String),
}

/// What became of one bundle revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Settled before (applied or refused).
    Seen,
    Applied,
    /// The bundle the engine runs, seen again (a restart, or the same
    /// bundle under a new revision after a snapshot restore or a mirror).
    AlreadyApplied,
    Refused,
    /// Not settled: to be tried again.
    Transient,
    /// Verified and unpacked, with a rollout plan: applied when this
    /// host's wave comes (`progress.rs`).
    Held,
}

/// `s` cut to at most `max` bytes (on a character boundary), marked.
pub fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// What the daemon's engine side does for the fleet.
pub trait FleetEngine: Send + Sync {
    /// Validates the unpacked TOML and pushes it, unless the engine already
    /// runs it (its hash is read first: a push that timed out may have
    /// landed).
    fn apply_bundle(&self, toml: &Path, text: &str) -> std::result::Result<(), ApplyError>;
    /// Whether the engine already runs exactly this (a restarted daemon
    /// does not make a new version of it).
    fn runs(&self, toml: &Path, text: &str) -> bool;
    /// (engine connected, engine runs what the daemon wants).
    fn engine_state(&self) -> (bool, bool);
    /// The configuration file the engine's snapshot names (it persists it
    /// and restarts from it): pruning keeps its directory.
    fn engine_source(&self) -> Option<PathBuf>;
    /// The engine's `/stats.json` (route counters for the health summary);
    /// None when it cannot be read now.
    fn engine_stats(&self) -> Option<serde_json::Value> {
        None
    }
}

/// What the daemon shows about the fleet.
#[derive(Debug, Default, Clone)]
pub struct FleetState {
    pub etcd_connected: bool,
    pub etcd_error: Option<String>,
    /// The etcd member that answered last.
    pub applied_revision: i64,
    pub applied_version: Option<String>,
    pub applied_serial: u64,
    /// With the serial, what names a bundle (the same bundle can come back
    /// under another revision).
    pub applied_digest: Option<String>,
    pub applied_toml: Option<PathBuf>,
    /// The applied bundle came without a plan or passed its gate here:
    /// only such a bundle becomes a rollout's rollback target.
    pub applied_vetted: bool,
    /// The newest bundle revision seen (applied or not).
    pub latest_revision: i64,
    /// The newest revision settled (applied or refused); a revision that
    /// failed for a passing reason is not, and is tried again.
    pub settled_revision: i64,
    pub latest_version: Option<String>,
    pub bundles_applied: u64,
    pub bundles_refused: u64,
    pub last_refusal: Option<String>,
    /// Failures for a passing reason (each retried with backoff).
    pub transient_failures: u64,
    /// The current one (cleared when a bundle is applied).
    pub last_transient: Option<String>,
    /// Watches that fell behind a compaction (each a full reload).
    pub compactions: u64,
    pub status_error: Option<String>,
    /// The rollout this host takes part in (None: the bundle had no plan).
    pub rollout: Option<progress::RolloutStatus>,
    /// The engine's recent health (responses, 5xx, p99).
    pub health: Option<rollout::Health>,
}

/// What `applied` and `prior` hold.
#[derive(Debug, Clone)]
struct Record {
    revision: i64,
    version: Option<String>,
    serial: u64,
    digest: Option<String>,
    toml: Option<PathBuf>,
    /// `vetted no`: a rollout's bundle not (yet) passed here. Records
    /// from before the line: vetted.
    vetted: bool,
}

fn read_record(path: &Path) -> Option<Record> {
    let text = std::fs::read_to_string(path).ok()?;
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ').map(str::to_string))
    };
    Some(Record {
        revision: get("revision").and_then(|r| r.parse().ok()).unwrap_or(0),
        version: get("version"),
        serial: get("serial").and_then(|r| r.parse().ok()).unwrap_or(0),
        digest: get("digest"),
        toml: get("config").map(PathBuf::from),
        vetted: get("vetted").is_none_or(|v| v != "no"),
    })
}

pub struct Fleet {
    pub boot: Bootstrap,
    client: Client,
    dir: PathBuf,
    state: Mutex<FleetState>,
    /// The held bundle of a rollout (immutable; its progress is in
    /// `FleetState::rollout`).
    held: Mutex<Option<Arc<progress::Held>>>,
    /// Serializes pushes of bundles: the follower's, the rollout's, a
    /// rollback.
    apply: Mutex<()>,
    /// Recent samples of the engine's counters (health windows).
    samples: Mutex<std::collections::VecDeque<(Instant, rollout::Sample)>>,
    /// Engine restarts seen in the samples: a bake that spans one starts
    /// again.
    restarts: std::sync::atomic::AtomicU64,
}

impl Fleet {
    /// `state_dir/fleet` holds the unpacked bundles and the applied record.
    pub fn new(boot: Bootstrap, state_dir: &Path) -> Result<Fleet> {
        let client = Client::new(&boot.etcd, WATCH_IDLE)?;
        let dir = state_dir.join("fleet");
        let mut st = FleetState::default();
        if let Some(r) = read_record(&dir.join(APPLIED)) {
            st.applied_revision = r.revision;
            st.applied_version = r.version;
            st.applied_serial = r.serial;
            st.applied_digest = r.digest;
            st.applied_toml = r.toml;
            st.applied_vetted = r.vetted;
        }
        Ok(Fleet {
            boot,
            client,
            dir,
            state: Mutex::new(st),
            held: Mutex::new(None),
            apply: Mutex::new(()),
            samples: Mutex::default(),
            restarts: Default::default(),
        })
    }

    pub fn state(&self) -> FleetState {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FleetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fleet's part of `in_sync`: the newest bundle is the applied one.
    pub fn bundle_in_sync(&self) -> bool {
        let st = self.lock();
        st.latest_revision > 0 && st.applied_revision == st.latest_revision
    }

    fn connected(&self) {
        let mut st = self.lock();
        if !st.etcd_connected {
            tracing::info!(endpoints = %self.boot.etcd.join(","), "connected to etcd");
        }
        st.etcd_connected = true;
        st.etcd_error = None;
    }

    fn disconnected(&self, e: &EtcdError) {
        let mut st = self.lock();
        if st.etcd_connected || st.etcd_error.is_none() {
            tracing::warn!(error = %e, "etcd unreachable; the engine keeps serving, retrying");
        }
        st.etcd_connected = false;
        st.etcd_error = Some(e.to_string());
    }

    #[allow(clippy::too_many_arguments)]
    fn record_applied(
        &self,
        revision: i64,
        version: &str,
        serial: u64,
        digest: &str,
        toml: &Path,
        vetted: bool,
    ) {
        self.write_record(APPLIED, revision, version, serial, digest, toml, vetted);
    }

    #[allow(clippy::too_many_arguments)]
    fn write_record(
        &self,
        name: &str,
        revision: i64,
        version: &str,
        serial: u64,
        digest: &str,
        toml: &Path,
        vetted: bool,
    ) {
        let text = format!(
            "revision {revision}\nversion {version}\nserial {serial}\ndigest {digest}\nconfig {}\nvetted {}\n",
            toml.display(),
            if vetted { "yes" } else { "no" }
        );
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let r = std::fs::write(&tmp, text)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, self.dir.join(name)));
        if let Err(e) = r {
            tracing::warn!(error = %e, dir = %self.dir.display(), "cannot record the applied bundle revision");
        }
    }

    fn refuse(&self, revision: i64, why: &str) -> Outcome {
        let why = bounded(why, MAX_REASON);
        tracing::error!(revision, reason = %why, "fleet bundle refused; the engine keeps its running version");
        let mut st = self.lock();
        st.bundles_refused += 1;
        st.last_refusal = Some(format!("revision {revision}: {why}"));
        st.settled_revision = st.settled_revision.max(revision);
        Outcome::Refused
    }

    /// A failure for a passing reason: counted, shown, not settled.
    fn transient(&self, revision: i64, why: &str) -> Outcome {
        let why = bounded(why, MAX_REASON);
        tracing::warn!(revision, reason = %why, "fleet bundle not applied for now; retrying with backoff");
        let mut st = self.lock();
        st.transient_failures += 1;
        st.last_transient = Some(format!("revision {revision}: {why}"));
        Outcome::Transient
    }

    /// A bundle seen at `kv.mod_revision`: verified, unpacked, applied
    /// (or held for its rollout wave).
    pub fn consider(&self, eng: &dyn FleetEngine, kv: &KeyValue) -> Outcome {
        let _one = self.apply.lock().unwrap_or_else(|e| e.into_inner());
        let rev = kv.mod_revision;
        {
            let mut st = self.lock();
            if rev <= st.settled_revision {
                return Outcome::Seen;
            }
            if rev > st.latest_revision {
                st.latest_revision = rev;
                st.latest_version = None;
            }
        }
        let v = match bundle::verify(&kv.value, &self.boot.trusted, &self.boot.cluster) {
            Ok(v) => v,
            Err(r) => return self.refuse(rev, &r.to_string()),
        };
        let version = v.payload.version.clone();
        self.lock().latest_version = Some(version.clone());
        let (applied, applied_serial, applied_digest, applied_toml) = {
            let st = self.lock();
            (
                st.applied_revision,
                st.applied_serial,
                st.applied_digest.clone(),
                st.applied_toml.clone(),
            )
        };
        let serial = v.payload.serial;
        // A bundle is (serial, digest): the running one may come again under
        // its revision (a restarted daemon) or another (a snapshot restore,
        // a mirror). An older one, or another with its serial, is a replay.
        let same = serial == applied_serial
            && match &applied_digest {
                Some(d) => *d == v.digest,
                // A record from before digests were kept.
                None => rev == applied,
            };
        if same {
            // Not under the fleet lock: the daemon's status takes its own
            // lock, then this one.
            if let Some(toml) = applied_toml.filter(|t| eng.runs(t, &v.payload.config)) {
                // An old record without a digest gets one (a later restore
                // under another revision is then known as this bundle).
                if rev != applied || applied_digest.is_none() {
                    tracing::info!(revision = rev, was = applied, %version, "the running bundle under a new revision; nothing to push");
                    let vetted = self.lock().applied_vetted;
                    self.record_applied(rev, &version, serial, &v.digest, &toml, vetted);
                }
                {
                    let mut st = self.lock();
                    st.applied_revision = rev;
                    st.applied_digest = Some(v.digest.clone());
                    st.applied_version = Some(version);
                    st.settled_revision = st.settled_revision.max(rev);
                    st.last_transient = None;
                }
                // A daemon restarted amid a rollout of what it runs: it
                // bakes again and keeps watching for a failed gate.
                if let Some(plan) = v.payload.rollout.clone() {
                    self.hold(eng, rev, &v, toml, plan, true);
                } else {
                    self.drop_rollout();
                }
                return Outcome::AlreadyApplied;
            }
            // The engine lost it: pushed again below.
        } else if serial <= applied_serial {
            return self.refuse(
                rev,
                &format!(
                    "version {version}: serial {serial} is not newer than the running bundle's {applied_serial} (an older bundle written back?)"
                ),
            );
        }
        let toml = match bundle::unpack(&v, &self.dir, rev) {
            Ok(t) => t,
            // Signed but undecodable: it will not get better.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return self.refuse(rev, &format!("cannot unpack: {e}"));
            }
            Err(e) => {
                return self.transient(
                    rev,
                    &format!("cannot unpack into {}: {e}", self.dir.display()),
                );
            }
        };
        if let Some(plan) = v.payload.rollout.clone() {
            return self.hold(eng, rev, &v, toml, plan, false);
        }
        let out = self.push_bundle(eng, rev, &v, &toml);
        if out == Outcome::Applied {
            self.drop_rollout();
        }
        out
    }

    /// Pushes a verified, unpacked bundle to the engine and records it.
    fn push_bundle(
        &self,
        eng: &dyn FleetEngine,
        rev: i64,
        v: &bundle::Verified,
        toml: &Path,
    ) -> Outcome {
        let version = v.payload.version.clone();
        let serial = v.payload.serial;
        match eng.apply_bundle(toml, &v.payload.config) {
            Ok(()) => {}
            Err(ApplyError::Refused(e)) => {
                return self.refuse(rev, &format!("version {version}: {e}"));
            }
            Err(ApplyError::Transient(e)) => {
                return self.transient(rev, &format!("version {version}: {e}"));
            }
        }
        tracing::info!(revision = rev, %version, signer = %v.signer, config = %toml.display(), "fleet bundle applied");
        // A rollout's bundle is vetted once it passed its gate here.
        let vetted = v.payload.rollout.is_none();
        self.record_applied(rev, &version, serial, &v.digest, toml, vetted);
        {
            let mut st = self.lock();
            st.applied_revision = rev;
            st.applied_version = Some(version);
            st.applied_serial = serial;
            st.applied_digest = Some(v.digest.clone());
            st.applied_toml = Some(toml.to_path_buf());
            st.applied_vetted = vetted;
            st.settled_revision = st.settled_revision.max(rev);
            st.last_transient = None;
            st.bundles_applied += 1;
        }
        // The engine persists the snapshot it runs and restarts from it: its
        // files stay even when it does not run the newest bundle.
        let engine = eng.engine_source();
        // The prior bundle stays too: a failed gate goes back to it.
        let prior = read_record(&self.dir.join(PRIOR)).and_then(|r| r.toml);
        let keep: Vec<&Path> = std::iter::once(toml)
            .chain(engine.as_deref())
            .chain(prior.as_deref())
            .collect();
        bundle::prune(&self.dir, KEEP_UNPACKED, &keep);
        Outcome::Applied
    }

    /// Reads the bundle key as it is now; returns the revision to watch
    /// from and what became of the bundle.
    fn full_read(
        &self,
        eng: &dyn FleetEngine,
    ) -> std::result::Result<(i64, Option<Outcome>), EtcdError> {
        let (h, kv) = self.client.get(bundle_key(&self.boot.cluster).as_bytes())?;
        self.connected();
        let out = match kv {
            Some(kv) => Some(self.consider(eng, &kv)),
            None => {
                tracing::info!(cluster = %self.boot.cluster, "no bundle published yet");
                None
            }
        };
        Ok((h.revision + 1, out))
    }

    /// The follower: runs until `stop`.
    pub fn follow(&self, eng: &dyn FleetEngine, stop: &AtomicBool) {
        let key = bundle_key(&self.boot.cluster);
        // None: read the key anew (start, compaction, a store that went
        // back, a bundle to try again, a watch message past its bound).
        let mut next: Option<i64> = None;
        let mut backoff = BACKOFF_MIN;
        // Between tries of a bundle that failed for a passing reason.
        let mut retry = BACKOFF_MIN;
        // Members in a row whose watch started below what was applied.
        let mut behind = 0usize;
        let mut lag = BACKOFF_MIN;
        while !stop.load(Ordering::Relaxed) {
            let from = match next {
                Some(n) => n,
                None => match self.full_read(eng) {
                    Ok((n, out)) => {
                        backoff = BACKOFF_MIN;
                        if out == Some(Outcome::Transient) {
                            sleep(stop, &mut retry);
                            continue;
                        }
                        retry = BACKOFF_MIN;
                        n
                    }
                    Err(e) => {
                        self.disconnected(&e);
                        sleep(stop, &mut backoff);
                        continue;
                    }
                },
            };
            let mut then = After::Resume;
            let mut resume = from;
            let members = self.client.endpoints().len();
            let r = self.client.watch(key.as_bytes(), from, stop, |w| {
                if w.created {
                    self.connected();
                    if w.header.revision + 1 < from {
                        then = After::Behind(w.header.revision);
                        return false;
                    }
                    behind = 0;
                    lag = BACKOFF_MIN;
                }
                // Only the newest bundle of a batch matters.
                if let Some(ev) = w.events.iter().rev().find(|e| e.kind == EventType::Put)
                    && self.consider(eng, &ev.kv) == Outcome::Transient
                {
                    then = After::Retry;
                    return false;
                }
                if w.events.iter().any(|e| e.kind == EventType::Delete) {
                    tracing::warn!(key = %key, "the bundle was deleted; the engine keeps its running version");
                }
                if let Some(last) = w.events.iter().map(|e| e.kv.mod_revision).max() {
                    resume = resume.max(last + 1);
                }
                true
            });
            next = Some(resume);
            match r {
                Ok(WatchEnd::Stopped) => match then {
                    After::Resume => {}
                    After::Retry => {
                        sleep(stop, &mut retry);
                        next = None;
                    }
                    After::Behind(store) => {
                        behind += 1;
                        if behind < members {
                            // A member that lags (it rejoined, or is cut
                            // off): another one is asked, after a pause.
                            tracing::warn!(
                                store,
                                from,
                                "an etcd member is behind what was applied; asking another"
                            );
                            self.client.skip_current();
                            sleep(stop, &mut lag);
                        } else {
                            // Every member says so: the store was rebuilt
                            // and restarts its revisions; waiting for
                            // `from` would miss every bundle.
                            tracing::warn!(
                                store,
                                from,
                                "etcd's revision went back; reading the bundle anew"
                            );
                            {
                                let mut st = self.lock();
                                st.latest_revision = 0;
                                st.settled_revision = 0;
                            }
                            behind = 0;
                            sleep(stop, &mut lag);
                            next = None;
                        }
                    }
                },
                Ok(WatchEnd::Canceled(w)) => {
                    if w.compact_revision > 0 {
                        tracing::warn!(
                            from = resume,
                            compacted_to = w.compact_revision,
                            "the watch fell behind a compaction; reading the bundle anew"
                        );
                        self.lock().compactions += 1;
                    } else {
                        tracing::warn!(reason = %bounded(&w.cancel_reason, MAX_REASON), "etcd cancelled the watch; reading the bundle anew");
                        // A store that cancels every watch (permissions,
                        // limits) must not get a read and a watch in a loop.
                        sleep(stop, &mut backoff);
                    }
                    next = None;
                }
                Ok(WatchEnd::Idle) => {} // re-opened where it was
                Ok(WatchEnd::TooLong(n)) => {
                    // A history replay (or garbage) past the bound: only
                    // the newest bundle matters, and a range read has it.
                    tracing::warn!(
                        bytes = n,
                        "a watch message is past its bound; reading the bundle anew"
                    );
                    next = None;
                }
                Err(e) => {
                    self.disconnected(&e);
                    sleep(stop, &mut backoff);
                }
            }
        }
    }

    /// The host's status as written under its lease.
    fn host_status(&self, eng: &dyn FleetEngine) -> serde_json::Value {
        let st = self.state();
        let (engine_connected, engine_in_sync) = eng.engine_state();
        let last_error = st
            .last_transient
            .clone()
            .or_else(|| st.last_refusal.clone())
            .or_else(|| st.etcd_error.clone());
        serde_json::json!({
            "host": self.boot.host,
            "pid": std::process::id(),
            "version": st.applied_version,
            "revision": st.applied_revision,
            "latest_revision": st.latest_revision,
            "in_sync": engine_in_sync && st.latest_revision > 0 && st.applied_revision == st.latest_revision,
            "engine_connected": engine_connected,
            "bundles_refused": st.bundles_refused,
            "transient_failures": st.transient_failures,
            "last_error": last_error,
            "health": st.health,
            "rollout": st.rollout,
        })
    }

    /// Keeps `hosts/<host>` current under a lease until `stop`.
    pub fn report(&self, eng: &dyn FleetEngine, stop: &AtomicBool) {
        let ttl = self.boot.status_ttl;
        let c = &self.boot.cluster;
        let mut lease: Option<i64> = None;
        let mut sent: Option<serde_json::Value> = None;
        let mut kept = Instant::now();
        let mut backoff = BACKOFF_MIN;
        while !stop.load(Ordering::Relaxed) {
            let status = self.host_status(eng);
            let r = (|| -> std::result::Result<(), EtcdError> {
                let id = match lease {
                    Some(id) => id,
                    None => {
                        let id = self.client.lease_grant(ttl.as_secs() as i64)?;
                        // With each new lease (a start, a lease lost while
                        // etcd was away, a store restored without it) the
                        // member entry is written again: `fleet status`
                        // names silent hosts from it. The first
                        // registration's time stays: rollouts put hosts
                        // that joined after a bundle into a last wave.
                        let (_, had) =
                            self.client.get(member_key(c, &self.boot.host).as_bytes())?;
                        let since = had
                            .and_then(|kv| rollout::registered_unix_s(&kv.value))
                            .unwrap_or_else(unix_now);
                        let m = serde_json::json!({ "host": self.boot.host, "registered_unix_s": since });
                        self.client.put(
                            member_key(c, &self.boot.host).as_bytes(),
                            m.to_string().as_bytes(),
                            None,
                        )?;
                        lease = Some(id);
                        kept = Instant::now();
                        sent = None;
                        id
                    }
                };
                if kept.elapsed() >= ttl / 3 {
                    let left = self.client.lease_keepalive(id)?;
                    kept = Instant::now();
                    if left <= 0 {
                        // Expired while etcd (or this host) was away.
                        lease = None;
                        return Ok(());
                    }
                }
                if sent.as_ref() != Some(&status) {
                    let mut body = status.clone();
                    body["updated_unix_s"] = unix_now().into();
                    self.client.put(
                        host_key(c, &self.boot.host).as_bytes(),
                        body.to_string().as_bytes(),
                        Some(id),
                    )?;
                    sent = Some(status);
                }
                Ok(())
            })();
            match r {
                Ok(()) => {
                    backoff = BACKOFF_MIN;
                    self.lock().status_error = None;
                    sleep_for(stop, Duration::from_millis(250));
                }
                Err(e) => {
                    self.lock().status_error = Some(e.to_string());
                    sleep(stop, &mut backoff);
                }
            }
        }
        // A clean stop: the host's status goes now, not a TTL later.
        if let Some(id) = lease
            && let Err(e) = self.client.lease_revoke(id)
        {
            tracing::warn!(error = %e, "cannot revoke the status lease; it expires with its TTL");
        }
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn sleep_for(stop: &AtomicBool, d: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < d && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20).min(d));
    }
}

/// Sleeps `backoff` (interruptible) and doubles it up to the bound.
fn sleep(stop: &AtomicBool, backoff: &mut Duration) {
    sleep_for(stop, *backoff);
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}

/// What the follower does once a watch stopped itself.
enum After {
    Resume,
    /// A bundle failed for a passing reason: read the key again later.
    Retry,
    /// The member's store is at this revision, below what was applied.
    Behind(i64),
}

/// Starts the follower and the status reporter threads. The receiver
/// hears when the reporter ended (after `stop`, its lease revoked).
pub fn start(
    fleet: Arc<Fleet>,
    eng: Arc<dyn FleetEngine>,
    stop: Arc<AtomicBool>,
) -> Result<std::sync::mpsc::Receiver<()>> {
    let (f, e, s) = (fleet.clone(), eng.clone(), stop.clone());
    std::thread::Builder::new()
        .name("fg-fleet-watch".into())
        .spawn(move || f.follow(&*e, &s))?;
    let (f, e, s) = (fleet.clone(), eng.clone(), stop.clone());
    std::thread::Builder::new()
        .name("fg-fleet-rollout".into())
        .spawn(move || f.drive(&*e, &s))?;
    let (done, ended) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("fg-fleet-status".into())
        .spawn(move || {
            fleet.report(&*eng, &stop);
            let _ = done.send(());
        })?;
    Ok(ended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    /// Records what it was asked to apply; refuses TOML containing
    /// "refuse"; fails for now while `away` is set.
    #[derive(Default)]
    pub(super) struct FakeEngine {
        pub applied: Mutex<Vec<PathBuf>>,
        pub running: Mutex<Option<(PathBuf, String)>>,
        pub away: AtomicBool,
        /// What its persisted snapshot names (None: what it runs).
        pub persisted: Mutex<Option<PathBuf>>,
        /// Its `/stats.json` (None: cannot be read now).
        pub stats: Mutex<Option<serde_json::Value>>,
        /// How often `/stats.json` was asked for.
        pub stats_calls: std::sync::atomic::AtomicUsize,
    }

    impl FleetEngine for FakeEngine {
        fn apply_bundle(&self, toml: &Path, text: &str) -> std::result::Result<(), ApplyError> {
            if text.contains("refuse") {
                return Err(ApplyError::Refused("the engine refused it".into()));
            }
            if self.away.load(Ordering::Relaxed) {
                return Err(ApplyError::Transient("engine unreachable".into()));
            }
            self.applied.lock().unwrap().push(toml.to_path_buf());
            *self.running.lock().unwrap() = Some((toml.to_path_buf(), text.to_string()));
            Ok(())
        }

        fn runs(&self, toml: &Path, text: &str) -> bool {
            self.running
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|(p, t)| p == toml && t == text)
        }

        fn engine_state(&self) -> (bool, bool) {
            (true, true)
        }

        fn engine_source(&self) -> Option<PathBuf> {
            let p = self.persisted.lock().unwrap().clone();
            p.or_else(|| self.running.lock().unwrap().as_ref().map(|r| r.0.clone()))
        }

        fn engine_stats(&self) -> Option<serde_json::Value> {
            self.stats_calls.fetch_add(1, Ordering::Relaxed);
            self.stats.lock().unwrap().clone()
        }
    }

    pub(super) fn fleet(dir: &Path, key: &SigningKey) -> Fleet {
        let boot = Bootstrap {
            cluster: "eu".into(),
            etcd: vec!["http://127.0.0.1:1".into()],
            host: "h".into(),
            trusted: vec![key.verifying_key()],
            status_ttl: Duration::from_secs(10),
        };
        Fleet::new(boot, dir).unwrap()
    }

    pub(super) fn kv(rev: i64, value: Vec<u8>) -> KeyValue {
        KeyValue {
            key: bundle_key("eu").into_bytes(),
            value,
            mod_revision: rev,
            ..Default::default()
        }
    }

    fn sealed(key: &SigningKey, config: &str) -> Vec<u8> {
        sealed_n(key, config, SERIAL.fetch_add(1, Ordering::Relaxed))
    }

    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

    fn sealed_n(key: &SigningKey, config: &str, serial: u64) -> Vec<u8> {
        sealed_plan(key, config, serial, None)
    }

    pub(super) fn sealed_plan(
        key: &SigningKey,
        config: &str,
        serial: u64,
        rollout: Option<rollout::Plan>,
    ) -> Vec<u8> {
        bundle::seal(
            &bundle::Payload {
                format: bundle::FORMAT.into(),
                cluster: "eu".into(),
                version: config.into(),
                serial,
                created_unix_s: 1,
                config_name: "edge.toml".into(),
                config: config.into(),
                files: Default::default(),
                rollout,
            },
            key,
        )
    }

    #[test]
    fn bundles_are_applied_once_refused_with_a_reason_and_not_pushed_again_after_a_restart() {
        let dir = std::env::temp_dir().join(format!("fg-fleet-consider-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let key = SigningKey::from_bytes(&[7; 32]);
        let eng = FakeEngine::default();
        let f = fleet(&dir, &key);

        let one = sealed(&key, "one");
        f.consider(&eng, &kv(5, one.clone()));
        f.consider(&eng, &kv(5, one.clone())); // seen: nothing
        let st = f.state();
        assert_eq!((st.applied_revision, st.bundles_applied), (5, 1));
        assert_eq!(eng.applied.lock().unwrap().len(), 1);
        assert!(f.bundle_in_sync());

        let rogue = SigningKey::from_bytes(&[8; 32]);
        f.consider(&eng, &kv(6, sealed(&rogue, "two")));
        let st = f.state();
        assert_eq!((st.applied_revision, st.bundles_refused), (5, 1));
        assert!(
            st.last_refusal
                .as_deref()
                .unwrap()
                .starts_with("revision 6: signed by an untrusted key")
        );
        assert!(
            !f.bundle_in_sync(),
            "the newest bundle is not the applied one"
        );

        f.consider(&eng, &kv(7, sealed(&key, "refuse me")));
        let st = f.state();
        assert_eq!((st.applied_revision, st.bundles_refused), (5, 2));
        assert!(
            st.last_refusal
                .as_deref()
                .unwrap()
                .contains("the engine refused it")
        );

        let three = sealed(&key, "three");
        f.consider(&eng, &kv(8, three.clone()));
        assert_eq!(f.state().applied_revision, 8);
        assert_eq!(eng.applied.lock().unwrap().len(), 2);

        // An older signed bundle written back: a replay, refused.
        f.consider(&eng, &kv(9, one));
        let st = f.state();
        assert_eq!((st.applied_revision, st.bundles_refused), (8, 3));
        assert!(
            st.last_refusal.as_deref().unwrap().contains("not newer"),
            "{st:?}"
        );
        // Another bundle with the running one's serial: a replay too.
        let twin = sealed_n(&key, "three bis", f.state().applied_serial);
        assert_eq!(f.consider(&eng, &kv(10, twin)), Outcome::Refused);
        assert_eq!(f.state().bundles_refused, 4);

        // A new daemon on the same state dir, the engine running revision 8.
        let again = fleet(&dir, &key);
        assert_eq!(
            again.state().applied_revision,
            8,
            "read back from the state dir"
        );
        again.consider(&eng, &kv(8, three));
        assert_eq!(eng.applied.lock().unwrap().len(), 2, "not pushed again");
        assert_eq!(again.state().bundles_applied, 0);
        assert!(again.bundle_in_sync());
        let _ = std::fs::remove_dir_all(&dir);
    }

    pub(super) fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fg-fleet-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_bundle_that_failed_for_a_passing_reason_is_tried_again_not_marked_seen() {
        let dir = temp("transient");
        let key = SigningKey::from_bytes(&[7; 32]);
        let eng = FakeEngine::default();
        let f = fleet(&dir, &key);
        let one = kv(5, sealed(&key, "one"));
        eng.away.store(true, Ordering::Relaxed);
        assert_eq!(f.consider(&eng, &one), Outcome::Transient);
        assert_eq!(f.consider(&eng, &one), Outcome::Transient);
        let st = f.state();
        assert_eq!(
            (
                st.applied_revision,
                st.bundles_refused,
                st.transient_failures
            ),
            (0, 0, 2),
            "not refused, not applied: {st:?}"
        );
        assert!(
            st.last_transient
                .as_deref()
                .unwrap()
                .contains("engine unreachable")
        );
        assert!(!f.bundle_in_sync());
        // The engine is back: the same revision applies.
        eng.away.store(false, Ordering::Relaxed);
        assert_eq!(f.consider(&eng, &one), Outcome::Applied);
        let st = f.state();
        assert_eq!((st.applied_revision, st.bundles_applied), (5, 1));
        assert_eq!(st.last_transient, None);
        assert!(f.bundle_in_sync());
        assert_eq!(f.consider(&eng, &one), Outcome::Seen);

        // An unpack that fails (the fleet dir is a file for a moment): for now.
        let fdir = dir.join("fleet");
        std::fs::rename(&fdir, dir.join("moved")).unwrap();
        std::fs::write(&fdir, "in the way").unwrap();
        let two = kv(6, sealed(&key, "two"));
        assert_eq!(f.consider(&eng, &two), Outcome::Transient);
        std::fs::remove_file(&fdir).unwrap();
        std::fs::rename(dir.join("moved"), &fdir).unwrap();
        assert_eq!(f.consider(&eng, &two), Outcome::Applied);
        assert_eq!(f.state().bundles_refused, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_running_bundle_under_a_new_revision_is_already_applied_not_a_replay() {
        let dir = temp("restored");
        let key = SigningKey::from_bytes(&[7; 32]);
        let eng = FakeEngine::default();
        let f = fleet(&dir, &key);
        let b = sealed(&key, "one");
        assert_eq!(f.consider(&eng, &kv(40, b.clone())), Outcome::Applied);
        // A store restored from a snapshot (or a mirror) holds it at another
        // revision, lower or higher.
        {
            // As after "etcd's revision went back".
            let mut st = f.lock();
            st.settled_revision = 0;
            st.latest_revision = 0;
        }
        assert_eq!(f.consider(&eng, &kv(7, b.clone())), Outcome::AlreadyApplied);
        let st = f.state();
        assert_eq!(
            (st.applied_revision, st.bundles_refused, st.bundles_applied),
            (7, 0, 1)
        );
        assert!(f.bundle_in_sync());
        assert_eq!(f.consider(&eng, &kv(9, b.clone())), Outcome::AlreadyApplied);
        assert_eq!(eng.applied.lock().unwrap().len(), 1, "never pushed again");
        // Remembered across a restart, under the new revision.
        let again = fleet(&dir, &key);
        assert_eq!(again.state().applied_revision, 9);
        assert_eq!(again.consider(&eng, &kv(12, b)), Outcome::AlreadyApplied);
        assert_eq!(eng.applied.lock().unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pruning_keeps_the_directory_the_engines_persisted_snapshot_names() {
        let dir = temp("prune");
        let key = SigningKey::from_bytes(&[7; 32]);
        let eng = FakeEngine::default();
        let f = fleet(&dir, &key);
        assert_eq!(
            f.consider(&eng, &kv(3, sealed(&key, "first"))),
            Outcome::Applied
        );
        let first = f.state().applied_toml.unwrap();
        // The engine restarted from its persisted snapshot (the first
        // bundle) and the daemon applied many after it.
        *eng.persisted.lock().unwrap() = Some(first.clone());
        for rev in 4..12 {
            let name = format!("n{rev}");
            assert_eq!(
                f.consider(&eng, &kv(rev, sealed(&key, &name))),
                Outcome::Applied
            );
        }
        assert!(first.exists(), "{} was pruned", first.display());
        let n = std::fs::read_dir(dir.join("fleet"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("rev-")
            })
            .count();
        assert_eq!(n, KEEP_UNPACKED + 1, "the newest and the engine's");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refusals_built_from_unverified_data_are_bounded() {
        let dir = temp("bounded");
        let key = SigningKey::from_bytes(&[7; 32]);
        let eng = FakeEngine::default();
        let f = fleet(&dir, &key);
        let huge = format!(
            "{{\"format\":\"{}\",\"payload\":\"x\"}}",
            "é".repeat(100_000)
        );
        assert_eq!(
            f.consider(&eng, &kv(3, huge.into_bytes())),
            Outcome::Refused
        );
        let r = f.state().last_refusal.unwrap();
        assert!(r.len() < MAX_REASON + 64, "{} bytes", r.len());
        assert!(r.contains("bytes)"), "{r}");
        assert_eq!(bounded("short", 256), "short");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
