//! The control plane's state: how the engine's configuration got where it
//! is (applies, rollbacks, their outcome and time, drain), and the control
//! daemon's view (is the engine reachable, is it in sync with the file).

use super::{Families, Info};

/// Applies and rollbacks the engine answered, by outcome. A daemon's push
/// is an apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyCounts {
    pub apply_ok: u64,
    pub apply_failed: u64,
    pub rollback_ok: u64,
    pub rollback_failed: u64,
}

impl ApplyCounts {
    pub fn count(&mut self, rollback: bool, ok: bool) {
        let n = match (rollback, ok) {
            (false, true) => &mut self.apply_ok,
            (false, false) => &mut self.apply_failed,
            (true, true) => &mut self.rollback_ok,
            (true, false) => &mut self.rollback_failed,
        };
        *n += 1;
    }
}

/// The engine process's configuration state.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConfigState {
    pub applies: ApplyCounts,
    /// Unix time of the last successful apply or rollback; the load at
    /// start counts as one (Prometheus' own reload metric does the same),
    /// so `time() - this` is the age of the running configuration.
    pub last_success_unix_s: f64,
    /// Unix time of the last failed one; 0 while none failed.
    pub last_failure_unix_s: f64,
    /// How long the last apply or rollback took; 0 before the first.
    pub last_duration_s: f64,
    /// The last apply or rollback failed.
    pub last_failed: bool,
    /// Started from the persisted last-known-good snapshot because the
    /// config file did not validate (or none was given).
    pub started_from_last_known_good: bool,
    /// Versions kept for rollback.
    pub kept_versions: usize,
    /// A graceful stop is under way.
    pub draining: bool,
}

/// The control daemon's state, as its `/status` shows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ControlInfo {
    /// The engine answered this scrape (its metrics are above the daemon's).
    pub engine_connected: bool,
    /// The engine runs what the daemon wants it to.
    pub in_sync: bool,
    pub uptime_s: f64,
    pub file_changes_applied: u64,
    pub file_changes_rejected: u64,
    pub pushes: u64,
    pub admin_auth_failures: u64,
    /// The last push or file change failed (`/status`'s `last_error`).
    pub last_change_failed: bool,
    /// Fleet mode only.
    pub fleet: Option<FleetInfo>,
}

/// A fleet-mode daemon's view of etcd and its bundles.
#[derive(Debug, Clone, Copy, Default)]
pub struct FleetInfo {
    pub etcd_connected: bool,
    /// The engine runs the newest bundle.
    pub in_sync: bool,
    /// The etcd revision of the applied bundle.
    pub revision: i64,
    pub bundles_applied: u64,
    pub bundles_refused: u64,
    pub compactions: u64,
}

fn flag(b: bool) -> u64 {
    u64::from(b)
}

/// The engine process's configuration state and its own counters.
pub(super) fn config(f: &mut Families, info: &Info<'_>) {
    let c = &info.config;
    let a = &c.applies;
    for (kind, result, n) in [
        ("apply", "ok", a.apply_ok),
        ("apply", "failed", a.apply_failed),
        ("rollback", "ok", a.rollback_ok),
        ("rollback", "failed", a.rollback_failed),
    ] {
        f.counter(
            "ferrogate_config_applies_total",
            "configuration applies and rollbacks the engine answered, by outcome (a daemon's push is an apply)",
            &[("kind", kind.into()), ("result", result.into())],
            n,
        );
    }
    f.gauge(
        "ferrogate_config_last_apply_successful",
        "1 when the last apply or rollback succeeded (or none was tried since the start)",
        &[],
        flag(!c.last_failed),
    );
    f.gauge_f64(
        "ferrogate_config_last_apply_success_timestamp_seconds",
        "unix time of the last successful apply or rollback (the load at start counts)",
        &[],
        c.last_success_unix_s,
    );
    f.gauge_f64(
        "ferrogate_config_last_apply_failure_timestamp_seconds",
        "unix time of the last failed apply or rollback; 0 while none failed",
        &[],
        c.last_failure_unix_s,
    );
    f.gauge_f64(
        "ferrogate_config_last_apply_duration_seconds",
        "how long the last apply or rollback took (until every worker switched)",
        &[],
        c.last_duration_s,
    );
    f.gauge(
        "ferrogate_config_started_from_last_known_good",
        "1 when the engine started from the persisted last-known-good snapshot instead of the config file",
        &[],
        flag(c.started_from_last_known_good),
    );
    f.gauge(
        "ferrogate_config_kept_versions",
        "configuration versions kept for rollback",
        &[],
        c.kept_versions as u64,
    );
    f.gauge(
        "ferrogate_draining",
        "1 while a graceful stop is under way",
        &[],
        flag(c.draining),
    );
    for (name, v) in info.process {
        f.counter(
            &format!("ferrogate_{name}_total"),
            "engine process counter",
            &[],
            *v,
        );
    }
}

/// The control daemon's state (its `/metrics` only).
pub(super) fn daemon(f: &mut Families, c: &ControlInfo) {
    f.gauge(
        "ferrogate_control_engine_connected",
        "1 when the engine answered the control daemon for this scrape",
        &[],
        flag(c.engine_connected),
    );
    f.gauge(
        "ferrogate_control_in_sync",
        "1 when the engine runs the configuration the control daemon wants",
        &[],
        flag(c.in_sync),
    );
    f.gauge(
        "ferrogate_control_last_change_failed",
        "1 when the control daemon's last push or file change failed",
        &[],
        flag(c.last_change_failed),
    );
    f.gauge_f64(
        "ferrogate_control_uptime_seconds",
        "seconds since the control daemon started",
        &[],
        c.uptime_s,
    );
    for (name, help, v) in [
        (
            "ferrogate_control_file_changes_applied_total",
            "config file changes the control daemon pushed and the engine applied",
            c.file_changes_applied,
        ),
        (
            "ferrogate_control_file_changes_rejected_total",
            "config file changes that did not validate or that the engine refused",
            c.file_changes_rejected,
        ),
        (
            "ferrogate_control_pushes_total",
            "snapshots the control daemon pushed to the engine",
            c.pushes,
        ),
        (
            "ferrogate_control_admin_auth_failures_total",
            "admin API requests refused for a missing or wrong token",
            c.admin_auth_failures,
        ),
    ] {
        f.counter(name, help, &[], v);
    }
    if let Some(fl) = &c.fleet {
        fleet(f, fl);
    }
}

fn fleet(f: &mut Families, fl: &FleetInfo) {
    f.gauge(
        "ferrogate_control_fleet_etcd_connected",
        "1 while the fleet daemon reaches etcd",
        &[],
        flag(fl.etcd_connected),
    );
    f.gauge(
        "ferrogate_control_fleet_in_sync",
        "1 when the engine runs the fleet's newest bundle",
        &[],
        flag(fl.in_sync),
    );
    f.gauge(
        "ferrogate_control_fleet_revision",
        "etcd revision of the bundle this host applied (0: none)",
        &[],
        fl.revision.max(0) as u64,
    );
    for (result, n) in [
        ("applied", fl.bundles_applied),
        ("refused", fl.bundles_refused),
    ] {
        f.counter(
            "ferrogate_control_fleet_bundles_total",
            "fleet bundles this daemon applied, or refused (unsigned, untrusted key, bad signature, invalid here, refused by the engine)",
            &[("result", result.into())],
            n,
        );
    }
    f.counter(
        "ferrogate_control_fleet_watch_compactions_total",
        "etcd watches that fell behind a compaction (each a full reload of the bundle)",
        &[],
        fl.compactions,
    );
}
