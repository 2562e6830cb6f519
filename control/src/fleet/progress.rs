//! A daemon's part in a rollout (see `rollout.rs` for the plan, the waves
//! and the gate): hold the bundle until this host's wave comes, apply it,
//! bake, judge, and stop and roll back when any host's gate failed.
//! Driven by its own thread, which polls the cluster's keys while a
//! rollout is on (a few small reads every 500 ms) and samples the
//! engine's counters once a second.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::etcd::{Cas, EtcdError};
use super::rollout::{self, Health, Plan, Sample, Verdict, WaveSize};
use super::{
    Fleet, FleetEngine, MAX_REASON, Outcome, PRIOR, bounded, bundle, read_record, rollout_key,
    sleep_for, unix_now,
};

/// How often the engine's counters are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// The window of the health summary in the host's status, and of the
/// "before" a gate compares with.
const HEALTH_WINDOW: Duration = Duration::from_secs(30);
/// How often the health summary in the status changes (each change is a
/// write to etcd).
const HEALTH_REPORT: Duration = Duration::from_secs(5);
/// Without a rollout here the engine is sampled and its health reported
/// less often: `fleet status` still shows each host's recent health, and
/// the next rollout starts with a window before its apply.
const IDLE_SAMPLE_EVERY: Duration = Duration::from_secs(5);
const IDLE_HEALTH_REPORT: Duration = Duration::from_secs(60);
/// Between reads of the cluster's keys during a rollout: short next to
/// any bake, and N hosts make N² status reads per step.
const STEP_EVERY: Duration = Duration::from_millis(500);

/// Stopped rollouts remembered in the state dir. Only the newest matter:
/// serials only grow, and a stop guards a bundle that etcd may still
/// hold, which is always among the last ones published.
const KEEP_STOPS: usize = 16;

/// Removes all but the `keep` highest serials' stop files.
fn prune_stops(dir: &std::path::Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut serials: Vec<u64> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    if serials.len() <= keep {
        return;
    }
    serials.sort_unstable_by(|a, b| b.cmp(a));
    for old in &serials[keep..] {
        let _ = std::fs::remove_file(dir.join(old.to_string()));
    }
}

/// How long a bake waits for the engine's counters before its gate fails
/// for want of them.
fn no_data_deadline(bake: Duration) -> Duration {
    bake * 2
}

/// A bundle held for its wave: verified and unpacked.
#[derive(Debug)]
pub struct Held {
    pub rev: i64,
    pub verified: bundle::Verified,
    pub toml: PathBuf,
    pub plan: Plan,
    pub waves: Vec<WaveSize>,
}

/// Where this host is in a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Waiting for the earlier waves.
    Pending,
    /// Applied; the gate is judged after the bake.
    Baking,
    Passed,
    /// The gate failed (or the engine refused the bundle); rolling back.
    Failed,
    /// Back on the bundle it ran before.
    RolledBack,
    /// Stopped before this host applied it.
    Stopped,
    /// Every member passed.
    Complete,
}

impl Phase {
    fn done(self) -> bool {
        matches!(self, Phase::RolledBack | Phase::Stopped | Phase::Complete)
    }
}

/// The rollout as this host's status shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutStatus {
    pub serial: u64,
    pub version: String,
    pub plan: String,
    pub wave: Option<usize>,
    pub waves: Option<usize>,
    pub state: Phase,
    /// `passed: …` or `failed: …` once judged.
    pub gate: Option<String>,
    /// What it waits for, or why the rollout stopped.
    pub reason: Option<String>,
    pub applied_unix_ms: Option<u64>,
    pub passed_unix_ms: Option<u64>,
    pub before: Option<Health>,
    pub after: Option<Health>,
    #[serde(skip)]
    since: Option<Instant>,
    #[serde(skip)]
    start: Option<Sample>,
    /// `Fleet::restarts` when `start` was taken.
    #[serde(skip)]
    epoch: u64,
    /// The stop key was written (or another host's was there).
    #[serde(skip)]
    stop_written: bool,
    /// When this host started holding it (the engine is sampled from
    /// then: the window before the apply).
    #[serde(skip)]
    held_at: Option<Instant>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The `reason` of a pending host: the first few hosts it waits for
/// (a wave may hold hundreds), bounded.
fn waiting_for(blocking: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = format!(
        "waiting for {}",
        blocking
            .iter()
            .take(SHOWN)
            .map(|h| bounded(h, 64))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if blocking.len() > SHOWN {
        s.push_str(&format!(" +{} more", blocking.len() - SHOWN));
    }
    bounded(&s, MAX_REASON)
}

/// A host's rollout entry, as read from its status in etcd.
fn host_rollout(status: &serde_json::Value, serial: u64) -> Option<&serde_json::Value> {
    let r = &status["rollout"];
    (r["serial"].as_u64() == Some(serial)).then_some(r)
}

/// The host passed its gate for `serial` (and still runs it).
pub fn passed(status: Option<&serde_json::Value>, serial: u64) -> bool {
    status
        .and_then(|s| host_rollout(s, serial))
        .and_then(|r| r["state"].as_str())
        .is_some_and(|s| s == "passed" || s == "complete")
}

/// The host's gate for `serial` failed: why.
pub fn failed(status: &serde_json::Value, serial: u64) -> Option<String> {
    let g = host_rollout(status, serial)?["gate"].as_str()?;
    g.starts_with("failed").then(|| g.to_string())
}

impl Fleet {
    /// Holds `v` for its wave (`running`: the engine already runs it, a
    /// daemon restarted amid the rollout: it bakes again).
    pub(super) fn hold(
        &self,
        eng: &dyn FleetEngine,
        rev: i64,
        v: &bundle::Verified,
        toml: PathBuf,
        plan: Plan,
        running: bool,
    ) -> Outcome {
        let waves = match plan.validate() {
            Ok(w) => w,
            // `verify` checked it; a plan that stops validating is refused.
            Err(e) => return self.refuse(rev, &e.to_string()),
        };
        let serial = v.payload.serial;
        let same = self
            .lock()
            .rollout
            .as_ref()
            .is_some_and(|r| r.serial == serial);
        if !same && !running {
            self.back_from_failed(eng, serial);
        }
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(Held {
            rev,
            verified: v.clone(),
            toml,
            plan: plan.clone(),
            waves,
        }));
        let mut st = self.lock();
        st.settled_revision = st.settled_revision.max(rev);
        st.last_transient = None;
        if !same {
            tracing::info!(revision = rev, serial, version = %v.payload.version, plan = %plan.describe(), "a bundle with a rollout plan: held until this host's wave");
            st.rollout = Some(RolloutStatus {
                serial,
                version: v.payload.version.clone(),
                plan: plan.describe(),
                wave: None,
                waves: None,
                state: if running {
                    Phase::Baking
                } else {
                    Phase::Pending
                },
                gate: None,
                reason: None,
                applied_unix_ms: running.then(unix_ms),
                passed_unix_ms: None,
                before: None,
                after: None,
                since: running.then(Instant::now),
                start: running
                    .then(|| self.latest_sample().map(|(_, s)| s))
                    .flatten(),
                epoch: self.restarts.load(Ordering::Relaxed),
                stop_written: false,
                held_at: Some(Instant::now()),
            });
        }
        Outcome::Held
    }

    /// A newer bundle supersedes a rollout: if the engine runs that
    /// rollout's bundle, not passed here, and it failed (here, or by its
    /// stop key), go back to the prior bundle first: the newer rollout
    /// must neither keep serving it nor take it for its rollback target.
    fn back_from_failed(&self, eng: &dyn FleetEngine, serial: u64) {
        let (applied, vetted, failed_here) = {
            let st = self.lock();
            let failed_here = st
                .rollout
                .as_ref()
                .is_some_and(|r| r.serial == st.applied_serial && r.state == Phase::Failed);
            (st.applied_serial, st.applied_vetted, failed_here)
        };
        if vetted || applied == serial || applied == 0 {
            return;
        }
        let stopped = failed_here || self.local_stop(applied).is_some() || {
            let key = rollout_key(&self.boot.cluster, applied);
            // etcd away: not known to have failed; the newer rollout
            // still does not take it for its rollback target.
            matches!(self.client.get(key.as_bytes()), Ok((_, Some(_))))
        };
        if !stopped {
            return;
        }
        match self.roll_back(eng) {
            Ok(version) => {
                tracing::warn!(failed = applied, back_to = %version, "a newer bundle arrived while this host ran a failed rollout's bundle: rolled back first")
            }
            Err(e) => {
                tracing::error!(failed = applied, error = %e, "a newer bundle arrived while this host ran a failed rollout's bundle, and the rollback failed")
            }
        }
    }

    /// A bundle without a plan was applied: no rollout any more.
    pub(super) fn drop_rollout(&self) {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.lock().rollout = None;
    }

    fn latest_sample(&self) -> Option<(Instant, Sample)> {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.back().cloned()
    }

    /// Whether the samples reach back `window` from now.
    fn samples_cover(&self, window: Duration) -> bool {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.front().is_some_and(|(t, _)| t.elapsed() >= window)
    }

    fn sample_count(&self) -> usize {
        self.samples.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The health of the last `window` (or what the samples cover).
    fn recent_health(&self, window: Duration) -> Option<Health> {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let (t1, last) = s.back()?;
        let (t0, first) = s
            .iter()
            .find(|(t, _)| t1.duration_since(*t) <= window)
            .unwrap_or(s.front()?);
        Some(rollout::health(
            first,
            last,
            t1.duration_since(*t0).as_secs(),
        ))
    }

    /// Takes a sample now; None when the engine's counters cannot be read.
    fn sample(&self, eng: &dyn FleetEngine) -> Option<(Instant, Sample)> {
        let s = eng.engine_stats().as_ref().and_then(Sample::from_stats)?;
        let now = Instant::now();
        self.push_sample(now, s.clone());
        Some((now, s))
    }

    fn push_sample(&self, now: Instant, s: Sample) {
        let mut q = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if q.back().is_some_and(|(_, last)| s.restarted_since(last)) {
            // The engine restarted: its counters start over, and so do
            // the windows.
            tracing::info!("the engine restarted; health windows start again");
            q.clear();
            self.restarts.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back((now, s));
        while q
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > HEALTH_WINDOW * 2)
        {
            q.pop_front();
        }
    }

    /// The rollout thread: samples the engine and drives a held bundle.
    pub fn drive(&self, eng: &dyn FleetEngine, stop: &AtomicBool) {
        let mut sampled: Option<Instant> = None;
        let mut reported: Option<Instant> = None;
        let mut last_error = None;
        while !stop.load(Ordering::Relaxed) {
            let held = self.held.lock().unwrap_or_else(|e| e.into_inner()).clone();
            // The engine is sampled, and the health in the status (a write
            // to etcd each change) refreshed, often while a rollout is on
            // here and seldom otherwise.
            let active = held.as_ref().is_some_and(|h| {
                self.phase(h.verified.payload.serial)
                    .is_some_and(|p| !p.done())
            });
            let (sample_every, report_every) = if active {
                (SAMPLE_EVERY, HEALTH_REPORT)
            } else {
                (IDLE_SAMPLE_EVERY, IDLE_HEALTH_REPORT)
            };
            if sampled.is_none_or(|t| t.elapsed() >= sample_every) {
                let _ = self.sample(eng);
                sampled = Some(Instant::now());
            }
            // The first report waits for two samples: one alone is a
            // window of nothing.
            if reported.is_none_or(|t| t.elapsed() >= report_every) && self.sample_count() >= 2 {
                let h = self.recent_health(HEALTH_WINDOW);
                if h.is_some() {
                    self.lock().health = h;
                    reported = Some(Instant::now());
                }
            }
            if let Some(h) = held {
                match self.step(eng, &h) {
                    Ok(()) => last_error = None,
                    Err(e) => {
                        // Every 0.5 s while etcd is away: said once per kind.
                        let kind = std::mem::discriminant(&e);
                        if last_error != Some(kind) {
                            tracing::warn!(error = %e, "rollout step: cannot read the cluster's keys; this host's own gate is still judged; retrying");
                            last_error = Some(kind);
                        } else {
                            tracing::debug!(error = %e, "rollout step: retrying");
                        }
                    }
                }
            }
            sleep_for(stop, STEP_EVERY);
        }
    }

    /// Changes this host's rollout entry if it is still about `serial`.
    fn update(&self, serial: u64, f: impl FnOnce(&mut RolloutStatus)) {
        let mut st = self.lock();
        if let Some(r) = st.rollout.as_mut().filter(|r| r.serial == serial) {
            f(r);
        }
    }

    fn phase(&self, serial: u64) -> Option<Phase> {
        let st = self.lock();
        st.rollout
            .as_ref()
            .filter(|r| r.serial == serial)
            .map(|r| r.state)
    }

    fn list(&self, sub: &str) -> Result<Vec<(String, Vec<u8>)>, EtcdError> {
        let prefix = format!("/ferrogate/{}/{sub}/", self.boot.cluster);
        let r = self.client.get_prefix(prefix.as_bytes())?;
        Ok(r.kvs
            .into_iter()
            .map(|kv| {
                let k = String::from_utf8_lossy(&kv.key);
                (k.trim_start_matches(prefix.as_str()).to_string(), kv.value)
            })
            .collect())
    }

    fn step(&self, eng: &dyn FleetEngine, h: &Held) -> Result<(), EtcdError> {
        let serial = h.verified.payload.serial;
        let Some(phase) = self.phase(serial) else {
            return Ok(());
        };
        // Stopped here before (recorded in the state dir: a restart, or
        // etcd away when it happened): say so in etcd until it lands, and
        // never apply or keep it.
        if let Some(reason) = self.local_stop(serial) {
            let written = self.lock().rollout.as_ref().is_some_and(|r| r.stop_written);
            if !(written && phase.done()) {
                self.stop_rollout(eng, h, &reason, !written);
            }
            return Ok(());
        }
        if phase.done() {
            return Ok(());
        }
        // This host's own gate needs no etcd: judged (and rolled back)
        // first, the stop written when etcd answers.
        if phase == Phase::Baking {
            self.judge(eng, h);
            if self
                .phase(serial)
                .is_none_or(|p| p != Phase::Baking && p != Phase::Passed)
            {
                return Ok(());
            }
        }
        let Some(phase) = self.phase(serial) else {
            return Ok(());
        };
        let key = rollout_key(&self.boot.cluster, serial);
        let (_, stopped) = self.client.get(key.as_bytes())?;
        let hosts: Vec<(String, serde_json::Value)> = self
            .list("hosts")?
            .into_iter()
            .filter_map(|(k, v)| Some((k, serde_json::from_slice(&v).ok()?)))
            .collect();
        let failure = stopped
            .as_ref()
            .map(|kv| {
                let v: serde_json::Value = serde_json::from_slice(&kv.value).unwrap_or_default();
                v["stopped"]
                    .as_str()
                    .map(|s| bounded(s, MAX_REASON))
                    .unwrap_or_else(|| "stopped".into())
            })
            .or_else(|| {
                hosts
                    .iter()
                    .find_map(|(name, s)| failed(s, serial).map(|g| format!("{name}: {g}")))
            });
        if let Some(reason) = failure {
            self.stop_rollout(eng, h, &reason, stopped.is_none());
            return Ok(());
        }
        match phase {
            Phase::Pending => {
                let mut members: Vec<(String, Option<u64>)> = self
                    .list("members")?
                    .into_iter()
                    .map(|(k, v)| (k, rollout::registered_unix_s(&v)))
                    .collect();
                if !members.iter().any(|(m, _)| *m == self.boot.host) {
                    // Not registered yet: it joins now.
                    members.push((self.boot.host.clone(), None));
                }
                let waves = rollout::assign_members(
                    &members,
                    h.verified.payload.created_unix_s,
                    serial,
                    &h.waves,
                );
                let mine = waves
                    .iter()
                    .find(|(n, _)| *n == self.boot.host)
                    .map_or(0, |(_, w)| *w);
                let total = waves.iter().map(|(_, w)| w + 1).max();
                let blocking: Vec<String> = waves
                    .iter()
                    .filter(|(_, w)| *w < mine)
                    .filter_map(|(name, _)| {
                        let s = hosts.iter().find(|(n, _)| n == name).map(|(_, s)| s);
                        if passed(s, serial) {
                            return None;
                        }
                        let what = match s {
                            None => "silent".to_string(),
                            Some(s) => host_rollout(s, serial)
                                .and_then(|r| r["state"].as_str())
                                .unwrap_or("not started")
                                .to_string(),
                        };
                        Some(format!("{name} ({what})"))
                    })
                    .collect();
                // The window before the apply (what the gate compares
                // with) is as long as the bake, up to the health window:
                // the samples taken while idle usually cover it already;
                // otherwise (a daemon just started) the host samples until
                // they do, or for that long when the engine's counters
                // cannot be read.
                let pre = Duration::from_secs(h.plan.bake_s).min(HEALTH_WINDOW);
                let sampling = !self.samples_cover(pre)
                    && self
                        .lock()
                        .rollout
                        .as_ref()
                        .and_then(|r| r.held_at)
                        .is_some_and(|t| t.elapsed() < pre);
                let reason = if !blocking.is_empty() {
                    Some(waiting_for(&blocking))
                } else {
                    sampling.then(|| "sampling the engine before the apply".to_string())
                };
                self.update(serial, |r| {
                    r.wave = Some(mine);
                    r.waves = total;
                    r.reason = reason.clone();
                });
                if blocking.is_empty() && !sampling {
                    self.rollout_apply(eng, h);
                }
            }
            Phase::Baking => {} // judged above
            Phase::Passed => {
                let members: Vec<String> =
                    self.list("members")?.into_iter().map(|(k, _)| k).collect();
                let all = members
                    .iter()
                    .all(|m| passed(hosts.iter().find(|(n, _)| n == m).map(|(_, s)| s), serial));
                if all {
                    tracing::info!(serial, "rollout complete: every member passed its gate");
                    self.update(serial, |r| r.state = Phase::Complete);
                }
            }
            Phase::Failed => self.stop_rollout(eng, h, "this host's gate failed", true),
            Phase::RolledBack | Phase::Stopped | Phase::Complete => {}
        }
        Ok(())
    }

    /// This host's wave came: remember what runs now, apply, start baking.
    fn rollout_apply(&self, eng: &dyn FleetEngine, h: &Held) {
        let _one = self.apply.lock().unwrap_or_else(|e| e.into_inner());
        let serial = h.verified.payload.serial;
        if self.phase(serial) != Some(Phase::Pending) {
            return; // superseded meanwhile
        }
        let st = self.state();
        // Only a bundle that came without a plan or passed its gate here is
        // a rollback target; otherwise the prior one stays.
        if st.applied_serial != serial
            && st.applied_vetted
            && let (Some(toml), Some(version)) = (&st.applied_toml, &st.applied_version)
        {
            self.write_record(
                PRIOR,
                st.applied_revision,
                version,
                st.applied_serial,
                st.applied_digest.as_deref().unwrap_or("-"),
                toml,
                true,
            );
        }
        // A fresh sample: the bake counts from here (none: the judge
        // takes one and bakes from there).
        let start = self.sample(eng).map(|(_, s)| s);
        let before = self.recent_health(HEALTH_WINDOW);
        let epoch = self.restarts.load(Ordering::Relaxed);
        match self.push_bundle(eng, h.rev, &h.verified, &h.toml) {
            Outcome::Applied | Outcome::AlreadyApplied => {
                tracing::info!(serial, bake_s = h.plan.bake_s, "rollout: applied; baking");
                self.update(serial, |r| {
                    r.state = Phase::Baking;
                    r.reason = None;
                    r.applied_unix_ms = Some(unix_ms());
                    r.since = Some(Instant::now());
                    r.before = before;
                    r.start = start;
                    r.epoch = epoch;
                });
            }
            Outcome::Transient => {} // tried again next step
            _ => {
                // The engine (or this host's validation) refused it: a
                // failed gate, for every host.
                let why = self.state().last_refusal.unwrap_or_default();
                self.update(serial, |r| {
                    r.state = Phase::Failed;
                    r.gate = Some(format!("failed: refused here: {why}"));
                });
            }
        }
    }

    fn judge(&self, eng: &dyn FleetEngine, h: &Held) {
        let serial = h.verified.payload.serial;
        let (since, start, before, epoch) = {
            let st = self.lock();
            let Some(r) = st.rollout.as_ref().filter(|r| r.serial == serial) else {
                return;
            };
            (r.since, r.start.clone(), r.before.clone(), r.epoch)
        };
        let Some(since) = since else { return };
        let bake = Duration::from_secs(h.plan.bake_s);
        if since.elapsed() < bake {
            return;
        }
        let fresh = self.sample(eng);
        let restarts = self.restarts.load(Ordering::Relaxed);
        let after = match (start, fresh) {
            // No sample at the start (a daemon restarted mid-bake, the
            // engine away at the apply), or the engine restarted during
            // the bake: the bake starts again from this sample.
            (start, Some((t, s))) if start.is_none() || epoch != restarts => {
                tracing::info!(
                    serial,
                    "rollout: no counters from the bake's start (or the engine restarted); baking again"
                );
                self.update(serial, |r| {
                    r.since = Some(t);
                    r.start = Some(s);
                    r.epoch = restarts;
                });
                return;
            }
            // A sample taken after the whole bake: judged.
            (Some(a), Some((t, b))) if t >= since + bake => {
                rollout::health(&a, &b, t.duration_since(since).as_secs())
            }
            // No counters now: the gate waits for them, not forever.
            _ => {
                if since.elapsed() < no_data_deadline(bake) {
                    return;
                }
                let why = format!(
                    "no health data: no engine counters within {} s of the apply",
                    no_data_deadline(bake).as_secs()
                );
                self.fail(eng, h, &why, Health::default());
                return;
            }
        };
        let verdict = rollout::gate(&h.plan, before.as_ref(), &after);
        match &verdict {
            Verdict::Pass(note) => {
                tracing::info!(serial, %note, "rollout: gate passed");
                self.vetted(serial);
                self.update(serial, |r| {
                    r.state = Phase::Passed;
                    r.gate = Some(format!("passed: {note}"));
                    r.passed_unix_ms = Some(unix_ms());
                    r.after = Some(after);
                });
            }
            Verdict::Fail(why) => self.fail(eng, h, why, after),
        }
    }

    /// The running bundle `serial` passed here: a rollback target from now.
    fn vetted(&self, serial: u64) {
        let _one = self.apply.lock().unwrap_or_else(|e| e.into_inner());
        let st = self.state();
        if st.applied_serial != serial || st.applied_vetted {
            return;
        }
        if let (Some(toml), Some(version)) = (&st.applied_toml, &st.applied_version) {
            self.record_applied(
                st.applied_revision,
                version,
                serial,
                st.applied_digest.as_deref().unwrap_or("-"),
                toml,
                true,
            );
        }
        self.lock().applied_vetted = true;
    }

    fn fail(&self, eng: &dyn FleetEngine, h: &Held, why: &str, after: Health) {
        let serial = h.verified.payload.serial;
        tracing::error!(serial, reason = %why, "rollout: gate failed; stopping the rollout");
        self.update(serial, |r| {
            r.state = Phase::Failed;
            r.gate = Some(format!("failed: {why}"));
            r.after = Some(after);
        });
        // The key's `by` names this host.
        let reason = format!("gate failed: {why}");
        self.stop_rollout(eng, h, &reason, true);
    }

    /// The rollout stopped (`reason`): say so in etcd (first writer wins),
    /// and go back to the prior bundle if this host applied it.
    fn stop_rollout(&self, eng: &dyn FleetEngine, h: &Held, reason: &str, write: bool) {
        let serial = h.verified.payload.serial;
        self.record_stop(serial, reason);
        if write {
            let body = serde_json::json!({
                "stopped": reason,
                "by": self.boot.host,
                "at_unix_s": unix_now(),
            });
            let key = rollout_key(&self.boot.cluster, serial);
            let landed = match self.client.put_if_mod_revision(
                key.as_bytes(),
                body.to_string().as_bytes(),
                0,
            ) {
                Ok(Cas::Written(_)) => {
                    tracing::warn!(serial, %reason, "rollout stopped");
                    true
                }
                Ok(Cas::Conflict(_)) => true, // another host said it first
                // This host's status says failed (the others stop on
                // that); the key is tried again every step.
                Err(e) => {
                    tracing::debug!(error = %e, "cannot write the rollout's stop yet");
                    false
                }
            };
            self.update(serial, |r| r.stop_written = landed);
        }
        let _one = self.apply.lock().unwrap_or_else(|e| e.into_inner());
        if self.phase(serial).is_none_or(Phase::done) {
            return;
        }
        if self.state().applied_serial != serial {
            tracing::warn!(serial, %reason, "rollout stopped before this host's wave; not applying it");
            self.update(serial, |r| {
                r.state = Phase::Stopped;
                r.reason = Some(format!("stopped: {reason}"));
            });
            return;
        }
        match self.roll_back(eng) {
            Ok(version) => {
                tracing::warn!(serial, %reason, back_to = %version, "rollout stopped; rolled back");
                self.update(serial, |r| {
                    r.state = Phase::RolledBack;
                    r.reason = Some(format!("stopped: {reason}; back on {version}"));
                });
            }
            Err(e) => {
                let reason = bounded(&format!("rollback failed: {e}"), MAX_REASON);
                // Tried again every step: logged when it changes only.
                let again = self.lock().rollout.as_ref().and_then(|r| r.reason.clone())
                    == Some(reason.clone());
                if !again {
                    tracing::error!(serial, error = %e, "rollout stopped but the rollback failed; trying again");
                }
                self.update(serial, |r| {
                    r.state = Phase::Failed;
                    r.reason = Some(reason);
                });
            }
        }
    }

    fn stop_path(&self, serial: u64) -> PathBuf {
        self.dir.join("stopped").join(serial.to_string())
    }

    /// Why the rollout of `serial` stopped, if this host saw it stop.
    pub(super) fn local_stop(&self, serial: u64) -> Option<String> {
        std::fs::read_to_string(self.stop_path(serial)).ok()
    }

    /// Remembers in the state dir that the rollout of `serial` stopped: a
    /// restarted daemon neither bakes nor applies it again, even with
    /// etcd away or the stop key never written.
    fn record_stop(&self, serial: u64, reason: &str) {
        let path = self.stop_path(serial);
        if path.exists() {
            return;
        }
        let tmp = path.with_extension("tmp");
        let r = std::fs::create_dir_all(self.dir.join("stopped"))
            .and_then(|()| std::fs::write(&tmp, bounded(reason, MAX_REASON)))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = r {
            tracing::warn!(error = %e, path = %path.display(), "cannot record the rollout's stop");
        }
        prune_stops(&self.dir.join("stopped"), KEEP_STOPS);
    }

    /// Re-applies the bundle recorded before the rollout's apply.
    fn roll_back(&self, eng: &dyn FleetEngine) -> Result<String, String> {
        let prior = read_record(&self.dir.join(PRIOR))
            .ok_or("no record of the bundle before the rollout")?;
        let toml = prior.toml.ok_or("the prior record names no config")?;
        let text =
            std::fs::read_to_string(&toml).map_err(|e| format!("{}: {e}", toml.display()))?;
        eng.apply_bundle(&toml, &text)
            .map_err(|e| format!("{e:?}"))?;
        let version = prior.version.unwrap_or_else(|| "?".into());
        let digest = prior.digest.unwrap_or_else(|| "-".into());
        self.record_applied(prior.revision, &version, prior.serial, &digest, &toml, true);
        let mut st = self.lock();
        st.applied_revision = prior.revision;
        st.applied_version = Some(version.clone());
        st.applied_serial = prior.serial;
        st.applied_digest = Some(digest);
        st.applied_toml = Some(toml);
        st.applied_vetted = true;
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{FakeEngine, fleet, kv, sealed_plan, temp};
    use super::*;
    use ed25519_dalek::SigningKey;

    /// An engine's `/stats.json` with one route.
    fn stats(route: &str, responses: u64, errors: u64, uptime_ns: u64) -> serde_json::Value {
        serde_json::json!({
            "routes": [{"name": route, "responses": {"2xx": responses - errors, "5xx": errors},
                        "latency": {"counts": [responses, 0]}}],
            "latency_bounds_us": [1000, null],
            "workers": [{"uptime_ns": uptime_ns}],
        })
    }

    /// A fleet running plain bundle serial 1, holding serial 2 with a
    /// plan (bake 1 s, 20 responses minimum).
    fn held(name: &str) -> (Fleet, FakeEngine, Arc<Held>, PathBuf) {
        let dir = temp(name);
        let key = SigningKey::from_bytes(&[7; 32]);
        let eng = FakeEngine::default();
        let f = fleet(&dir, &key);
        assert_eq!(
            f.consider(&eng, &kv(3, sealed_plan(&key, "one", 1, None))),
            Outcome::Applied
        );
        assert_eq!(f.consider(&eng, &kv(4, h_bytes(&key))), Outcome::Held);
        let h = f.held.lock().unwrap().clone().unwrap();
        (f, eng, h, dir)
    }

    /// Moves the bake's start back: as if `secs` had passed.
    fn age(f: &Fleet, secs: u64) {
        age_serial(f, 2, secs)
    }

    fn age_serial(f: &Fleet, serial: u64, secs: u64) {
        f.update(serial, |r| {
            r.since = r.since.map(|t| t - Duration::from_secs(secs));
        });
    }

    fn rollout(f: &Fleet) -> RolloutStatus {
        f.state().rollout.unwrap()
    }

    fn prior_serial(dir: &std::path::Path) -> u64 {
        read_record(&dir.join("fleet").join(PRIOR)).unwrap().serial
    }

    #[test]
    fn an_unvetted_bundle_is_never_a_rollback_target_and_a_failed_one_is_left_first() {
        let (f, eng, h2, dir) = held("unvetted");
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut plan = Plan::new("1,100%");
        plan.bake_s = 1;
        f.rollout_apply(&eng, &h2);
        assert_eq!(prior_serial(&dir), 1);
        assert_eq!(f.state().applied_serial, 2);
        assert!(!f.state().applied_vetted);
        // Serial 3 (with a plan) arrives while 2 still bakes: 2 was not
        // judged, so 1 stays the rollback target.
        assert_eq!(
            f.consider(
                &eng,
                &kv(5, sealed_plan(&key, "three", 3, Some(plan.clone())))
            ),
            Outcome::Held
        );
        let h3 = f.held.lock().unwrap().clone().unwrap();
        f.rollout_apply(&eng, &h3);
        assert_eq!(f.state().applied_serial, 3);
        assert_eq!(prior_serial(&dir), 1, "an unjudged bundle became PRIOR");
        // 3 fails here (its rollback pending), then 4 arrives: the host
        // goes back to 1 first instead of serving 3 on.
        f.update(3, |r| r.state = Phase::Failed);
        assert_eq!(
            f.consider(&eng, &kv(6, sealed_plan(&key, "four", 4, Some(plan)))),
            Outcome::Held
        );
        let st = f.state();
        assert_eq!((st.applied_serial, st.applied_vetted), (1, true));
        assert_eq!(eng.running.lock().unwrap().as_ref().unwrap().1, "one");
        // And a bundle that passed its gate becomes one.
        let h4 = f.held.lock().unwrap().clone().unwrap();
        *eng.stats.lock().unwrap() = Some(stats("r", 10, 0, 10));
        f.rollout_apply(&eng, &h4);
        age_serial(&f, 4, 5);
        *eng.stats.lock().unwrap() = Some(stats("r", 11, 0, 20));
        f.judge(&eng, &h4);
        assert_eq!(rollout(&f).state, Phase::Passed, "{:?}", rollout(&f));
        assert!(f.state().applied_vetted);
        let again = fleet(&dir, &key);
        assert!(again.state().applied_vetted, "read back from the record");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn with_etcd_away_a_failing_host_judges_rolls_back_and_remembers_the_stop() {
        // The fleet's etcd (127.0.0.1:1) never answers.
        let (f, eng, h, dir) = held("etcdaway");
        *eng.stats.lock().unwrap() = Some(stats("r", 100, 0, 10));
        f.rollout_apply(&eng, &h);
        age(&f, 5);
        *eng.stats.lock().unwrap() = Some(stats("r", 200, 100, 20));
        // The step cannot read etcd, yet judges its own gate.
        let _ = f.step(&eng, &h);
        let r = rollout(&f);
        assert_eq!(r.state, Phase::RolledBack, "{r:?}");
        assert!(
            r.gate
                .as_deref()
                .unwrap()
                .starts_with("failed: error ratio")
        );
        assert!(!r.stop_written, "etcd is away");
        assert_eq!(eng.running.lock().unwrap().as_ref().unwrap().1, "one");
        let why = f
            .local_stop(2)
            .expect("the stop is recorded in the state dir");
        assert!(why.contains("error ratio"), "{why}");
        // A restarted daemon (etcd still away) holds serial 2 again: it
        // never applies it.
        let key = SigningKey::from_bytes(&[7; 32]);
        let again = fleet(&dir, &key);
        assert_eq!(again.consider(&eng, &kv(4, h_bytes(&key))), Outcome::Held);
        let h2 = again.held.lock().unwrap().clone().unwrap();
        let _ = again.step(&eng, &h2);
        assert_eq!(
            rollout(&again).state,
            Phase::Stopped,
            "{:?}",
            rollout(&again)
        );
        assert_eq!(eng.applied.lock().unwrap().len(), 3, "one, two, one");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn h_bytes(key: &SigningKey) -> Vec<u8> {
        let mut plan = Plan::new("1,100%");
        plan.bake_s = 1;
        sealed_plan(key, "two", 2, Some(plan))
    }

    /// Runs the rollout thread for a while; how often it read the stats.
    fn drive_for(f: &Fleet, eng: &FakeEngine, d: Duration) -> usize {
        let before = eng.stats_calls.load(Ordering::Relaxed);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| f.drive(eng, &stop));
            std::thread::sleep(d);
            stop.store(true, Ordering::Relaxed);
        });
        eng.stats_calls.load(Ordering::Relaxed) - before
    }

    /// Runs the rollout thread until `done` holds (checked every 20 ms) or
    /// `max` passed; how often it read the stats, and for how long it ran.
    fn drive_until(
        f: &Fleet,
        eng: &FakeEngine,
        max: Duration,
        done: impl Fn(&Fleet, usize) -> bool,
    ) -> (usize, Duration) {
        let before = eng.stats_calls.load(Ordering::Relaxed);
        let calls = || eng.stats_calls.load(Ordering::Relaxed) - before;
        let stop = AtomicBool::new(false);
        let t0 = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| f.drive(eng, &stop));
            while t0.elapsed() < max && !done(f, calls()) {
                std::thread::sleep(Duration::from_millis(20));
            }
            stop.store(true, Ordering::Relaxed);
        });
        (calls(), t0.elapsed())
    }

    // The cadences are checked as bounds (never more samples than the
    // interval allows, and the next one comes well within a generous
    // deadline), so a slow machine cannot fail the test.
    #[test]
    fn the_engine_is_sampled_every_second_during_a_rollout_and_every_five_otherwise() {
        let dir = temp("idle");
        let key = SigningKey::from_bytes(&[7; 32]);
        let eng = FakeEngine::default();
        *eng.stats.lock().unwrap() = Some(stats("r", 10, 0, 10));
        let f = fleet(&dir, &key);
        f.consider(&eng, &kv(3, sealed_plan(&key, "one", 1, None)));
        // No rollout: one sample now, the next 5 s later; one sample is
        // no window, so no health until the second.
        let health_after_one = std::cell::Cell::new(None);
        let (calls, took) = drive_until(&f, &eng, Duration::from_secs(30), |f, n| {
            if n == 1 && health_after_one.get().is_none() {
                health_after_one.set(Some(f.state().health.is_some()));
                *eng.stats.lock().unwrap() = Some(stats("r", 20, 1, 15));
            }
            n >= 2
        });
        assert_eq!(health_after_one.get(), Some(false));
        assert_eq!(calls, 2);
        assert!(
            took >= Duration::from_secs(5),
            "idle samples {took:?} apart"
        );
        let h = f.state().health.expect("idle health reported");
        assert_eq!((h.responses, h.errors_5xx), (10, 1));
        // A held plan bundle: sampled every second (the window before
        // its apply): two samples long before the idle cadence's 5 s.
        assert_eq!(f.consider(&eng, &kv(4, h_bytes(&key))), Outcome::Held);
        let (calls, took) = drive_until(&f, &eng, Duration::from_secs(30), |_, n| n >= 2);
        assert!(calls >= 2, "{calls} samples in {took:?}");
        assert!(
            took < Duration::from_millis(4500),
            "two samples took {took:?}"
        );
        // Over (stopped here): seldom again.
        f.update(2, |r| r.state = Phase::Stopped);
        assert_eq!(drive_for(&f, &eng, Duration::from_millis(1200)), 1);
        assert!(f.state().health.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_the_newest_stops_are_kept() {
        let dir = temp("stops");
        std::fs::create_dir_all(&dir).unwrap();
        for serial in 1..=20u64 {
            std::fs::write(dir.join(serial.to_string()), "why").unwrap();
        }
        std::fs::write(dir.join("x.tmp"), "").unwrap();
        prune_stops(&dir, KEEP_STOPS);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left.len(), KEEP_STOPS + 1, "{left:?}");
        assert!(left.contains(&"20".to_string()) && left.contains(&"5".to_string()));
        assert!(!left.contains(&"4".to_string()), "{left:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bake_without_a_start_sample_bakes_again_instead_of_passing() {
        let (f, eng, h, dir) = held("nostart");
        // The engine's counters cannot be read at the apply.
        f.rollout_apply(&eng, &h);
        assert_eq!(rollout(&f).state, Phase::Baking);
        assert!(rollout(&f).start.is_none());
        age(&f, 5);
        // Now they can: 1000 responses, all 5xx, since the engine started.
        *eng.stats.lock().unwrap() = Some(stats("r", 1000, 1000, 10));
        f.judge(&eng, &h);
        let r = rollout(&f);
        assert_eq!(r.state, Phase::Baking, "judged without a start: {r:?}");
        assert!(r.start.is_some());
        // The bake from that sample: 100 more responses, all 5xx.
        age(&f, 5);
        *eng.stats.lock().unwrap() = Some(stats("r", 1100, 1100, 20));
        f.judge(&eng, &h);
        let r = rollout(&f);
        assert!(
            r.gate
                .as_deref()
                .unwrap()
                .starts_with("failed: error ratio 1.000"),
            "{r:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_restarted_daemon_bakes_from_a_fresh_sample() {
        let (f, eng, h, dir) = held("restarted");
        // As after a restart amid the bake: running, no samples yet.
        let toml = h.toml.clone();
        f.lock().rollout = None;
        f.hold(&eng, h.rev, &h.verified, toml, h.plan.clone(), true);
        assert!(rollout(&f).start.is_none());
        age(&f, 5);
        *eng.stats.lock().unwrap() = Some(stats("r", 50, 50, 10));
        f.judge(&eng, &h);
        assert_eq!(rollout(&f).state, Phase::Baking, "{:?}", rollout(&f));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_engine_unreachable_at_the_end_of_the_bake_is_not_a_pass() {
        let (f, eng, h, dir) = held("unreachable");
        *eng.stats.lock().unwrap() = Some(stats("r", 10, 0, 10));
        f.rollout_apply(&eng, &h);
        assert!(rollout(&f).start.is_some());
        // The engine's counters are gone for the rest of the bake.
        *eng.stats.lock().unwrap() = None;
        age(&f, 1);
        f.judge(&eng, &h);
        assert_eq!(rollout(&f).state, Phase::Baking, "judged on stale data");
        // Past twice the bake: failed for want of data.
        age(&f, 2);
        f.judge(&eng, &h);
        let r = rollout(&f);
        assert!(
            r.gate
                .as_deref()
                .unwrap()
                .starts_with("failed: no health data"),
            "{r:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_engine_restart_during_the_bake_starts_it_again() {
        let (f, eng, h, dir) = held("enginerestart");
        *eng.stats.lock().unwrap() = Some(stats("r", 5000, 0, 9_000_000_000));
        f.rollout_apply(&eng, &h);
        age(&f, 5);
        // Restarted: its counters are small again, and its uptime too.
        *eng.stats.lock().unwrap() = Some(stats("r", 6000, 0, 1_000));
        f.judge(&eng, &h);
        let r = rollout(&f);
        assert_eq!(r.state, Phase::Baking, "{r:?}");
        age(&f, 5);
        *eng.stats.lock().unwrap() = Some(stats("r", 6100, 100, 6_000_000_000));
        f.judge(&eng, &h);
        let r = rollout(&f);
        assert!(
            r.gate
                .as_deref()
                .unwrap()
                .starts_with("failed: error ratio 1.000"),
            "the bake after the restart: {r:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_hosts_waited_for_are_bounded() {
        let many: Vec<String> = (0..40).map(|i| format!("host-{i} (baking)")).collect();
        let r = waiting_for(&many);
        assert!(r.starts_with("waiting for host-0 (baking), host-1"), "{r}");
        assert!(r.ends_with(" +35 more"), "{r}");
        assert!(!r.contains("host-5 "), "{r}");
        assert_eq!(waiting_for(&many[..1]), "waiting for host-0 (baking)");
    }

    #[test]
    fn other_hosts_entries_count_only_for_the_same_serial() {
        let s =
            serde_json::json!({"rollout": {"serial": 7, "state": "passed", "gate": "passed: ok"}});
        assert!(passed(Some(&s), 7));
        assert!(!passed(Some(&s), 8), "an older rollout's pass");
        assert!(!passed(None, 7), "a silent host");
        assert_eq!(failed(&s, 7), None);
        let f = serde_json::json!({"rollout": {"serial": 7, "state": "rolled_back", "gate": "failed: error ratio 1.000"}});
        assert_eq!(failed(&f, 7).as_deref(), Some("failed: error ratio 1.000"));
        assert_eq!(failed(&f, 6), None);
        assert!(!passed(Some(&f), 7));
    }
}
