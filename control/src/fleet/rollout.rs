//! Progressive rollout: the plan a bundle carries (signed with it), the
//! waves each host computes for itself, the health summary read from the
//! engine's route counters, and the gate that judges a host after its bake.
//!
//! There is no coordinator: every daemon orders the cluster's members by a
//! hash of (host, bundle serial), takes its wave from the plan, and applies
//! the bundle once every host of the earlier waves reports (in its
//! `hosts/<host>` status) that it runs it and passed its gate. A host whose
//! gate fails says so, writes `rollout/<serial>` (stopped, with the reason)
//! and goes back to the bundle it ran before; every host that sees either
//! does the same, and hosts that had not applied it never will.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a rolled-out bundle carries inside its signed payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Cumulative wave sizes, e.g. `1,25%,100%`: after wave k, that many
    /// hosts (or that share, rounded up) run the bundle. Hosts past the
    /// last entry form one more wave.
    pub waves: String,
    /// Largest share of 5xx among the responses of the bake.
    pub max_error_ratio: f64,
    /// Largest p99 of the bake, as a multiple of the same host's p99 on
    /// the previous bundle.
    pub max_p99_ratio: f64,
    /// How long a host runs the bundle before its gate is judged.
    pub bake_s: u64,
    /// Fewer responses than this in a window: that window is not judged
    /// (a ratio over a handful of requests is noise).
    pub min_requests: u64,
    /// The bundle this one replaces (what `publish` read under its
    /// compare-and-swap), for the operator; each host goes back to the
    /// bundle *it* ran before, which is this one unless it lagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Previous>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Previous {
    pub serial: u64,
    pub digest: String,
    pub version: String,
}

impl Plan {
    /// The defaults `publish --rollout` starts from.
    pub fn new(waves: &str) -> Plan {
        Plan {
            waves: waves.into(),
            max_error_ratio: 0.05,
            max_p99_ratio: 2.0,
            bake_s: 30,
            min_requests: 20,
            previous: None,
        }
    }

    /// The waves, checked; also what a daemon checks before trusting it.
    pub fn validate(&self) -> Result<Vec<WaveSize>, PlanError> {
        let waves = parse_waves(&self.waves)?;
        if !(0.0..=1.0).contains(&self.max_error_ratio) {
            return Err(PlanError(format!(
                "max error ratio {} is not within 0..=1",
                self.max_error_ratio
            )));
        }
        if !(self.max_p99_ratio.is_finite() && self.max_p99_ratio >= 1.0) {
            return Err(PlanError(format!(
                "max p99 ratio {} must be a number >= 1",
                self.max_p99_ratio
            )));
        }
        if self.bake_s < MIN_BAKE_S {
            return Err(PlanError(format!(
                "bake {} s is under the minimum of {MIN_BAKE_S} s",
                self.bake_s
            )));
        }
        if self.bake_s > 24 * 3600 {
            return Err(PlanError(format!("bake {} s is over a day", self.bake_s)));
        }
        Ok(waves)
    }

    pub fn describe(&self) -> String {
        format!(
            "plan {} error<={} p99<={}x bake {}s min {} requests",
            self.waves, self.max_error_ratio, self.max_p99_ratio, self.bake_s, self.min_requests
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rollout plan: {0}")]
pub struct PlanError(pub String);

/// One entry of a plan: a number of hosts or a share of them (cumulative).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveSize {
    Hosts(usize),
    Percent(u32),
}

pub fn parse_waves(s: &str) -> Result<Vec<WaveSize>, PlanError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let w = if let Some(p) = part.strip_suffix('%') {
            match p.trim().parse::<u32>() {
                Ok(p) if (1..=100).contains(&p) => WaveSize::Percent(p),
                _ => return Err(PlanError(format!("{part:?}: expected 1%..100%"))),
            }
        } else {
            match part.parse::<usize>() {
                Ok(n) if n >= 1 => WaveSize::Hosts(n),
                _ => {
                    return Err(PlanError(format!(
                        "{part:?}: expected a host count (>= 1) or a share like 25%"
                    )));
                }
            }
        };
        out.push(w);
    }
    if out.len() > 64 {
        return Err(PlanError("more than 64 waves".into()));
    }
    Ok(out)
}

/// The rollout order of `members` for bundle `serial`: by a hash of (host,
/// serial), so every host computes the same order and each bundle has
/// another canary (one weak host does not take every first hit).
pub fn order(members: &[String], serial: u64) -> Vec<String> {
    let mut m: Vec<(Vec<u8>, String)> = members
        .iter()
        .map(|h| {
            let mut d = Sha256::new();
            d.update(h.as_bytes());
            d.update([0]);
            d.update(serial.to_be_bytes());
            (d.finalize().to_vec(), h.clone())
        })
        .collect();
    m.sort();
    m.dedup_by(|a, b| a.1 == b.1);
    m.into_iter().map(|(_, h)| h).collect()
}

/// Each host of `members` with its wave (0 first), in rollout order. Empty
/// waves (a share that rounds to no more hosts) are skipped, so wave
/// numbers stay dense; hosts past the plan form one last wave.
pub fn assign(members: &[String], serial: u64, waves: &[WaveSize]) -> Vec<(String, usize)> {
    let hosts = order(members, serial);
    let n = hosts.len();
    let mut ends: Vec<usize> = Vec::new();
    for w in waves {
        let end = match *w {
            WaveSize::Hosts(k) => k.min(n),
            // Rounded up: 25% of 3 hosts is one host, not none.
            WaveSize::Percent(p) => (n * p as usize).div_ceil(100),
        };
        if end > ends.last().copied().unwrap_or(0) {
            ends.push(end);
        }
    }
    if ends.last().copied().unwrap_or(0) < n {
        ends.push(n);
    }
    hosts
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            let wave = ends.iter().position(|&e| i < e).unwrap_or(0);
            (h, wave)
        })
        .collect()
}

/// When a member first registered, from its `members/` value (None:
/// unreadable, or not registered yet).
pub fn registered_unix_s(value: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(value)
        .ok()?
        .get("registered_unix_s")?
        .as_u64()
}

/// The waves of a bundle created at `created_unix_s`: the members that
/// registered by then are ordered and cut into waves as `assign` does; a
/// host that joined later (or whose registration is unknown) goes into
/// one wave after them all. So a host joining mid-rollout neither moves
/// the others between waves (a waiting host must not become a second
/// canary) nor takes the new bundle before the hosts that were there.
pub fn assign_members(
    members: &[(String, Option<u64>)],
    created_unix_s: u64,
    serial: u64,
    waves: &[WaveSize],
) -> Vec<(String, usize)> {
    let (there, late): (Vec<_>, Vec<_>) = members
        .iter()
        .partition(|(_, at)| at.is_some_and(|t| t <= created_unix_s));
    let there: Vec<String> = there.into_iter().map(|(h, _)| h.clone()).collect();
    let mut out = assign(&there, serial, waves);
    let last = out.iter().map(|(_, w)| w + 1).max().unwrap_or(0);
    let late: Vec<String> = late
        .into_iter()
        .map(|(h, _)| h.clone())
        .filter(|h| !there.contains(h))
        .collect();
    out.extend(order(&late, serial).into_iter().map(|h| (h, last)));
    out
}

/// One route's cumulative counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteCounters {
    pub responses: u64,
    pub errors: u64,
    /// Latency histogram bucket counts.
    pub counts: Vec<u64>,
}

/// Cumulative counters of the engine's routes at one moment (from its
/// `/stats.json`: responses by class and the latency histogram, by route
/// name, since a bundle may rename or remove routes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub routes: std::collections::BTreeMap<String, RouteCounters>,
    /// Upper bounds (µs) of the histogram buckets; None: the overflow one.
    pub bounds: Vec<Option<u64>>,
    /// The engine's workers' longest uptime: going down is a restart.
    pub uptime_ns: Option<u64>,
}

impl Sample {
    pub fn from_stats(v: &serde_json::Value) -> Option<Sample> {
        let mut s = Sample::default();
        for (i, r) in v["routes"].as_array()?.iter().enumerate() {
            let mut c = RouteCounters::default();
            if let Some(classes) = r["responses"].as_object() {
                for (k, n) in classes {
                    let n = n.as_u64().unwrap_or(0);
                    c.responses += n;
                    if k == "5xx" {
                        c.errors += n;
                    }
                }
            }
            c.counts = r["latency"]["counts"]
                .as_array()
                .map(|a| a.iter().map(|c| c.as_u64().unwrap_or(0)).collect())
                .unwrap_or_default();
            let name = r["name"]
                .as_str()
                .map_or_else(|| format!("#{i}"), str::to_string);
            s.routes.insert(name, c);
        }
        s.bounds = v["latency_bounds_us"]
            .as_array()?
            .iter()
            .map(|b| b.as_u64())
            .collect();
        s.uptime_ns = v["workers"]
            .as_array()
            .and_then(|w| w.iter().filter_map(|w| w["uptime_ns"].as_u64()).max());
        Some(s)
    }

    /// The engine restarted between `earlier` and this sample.
    pub fn restarted_since(&self, earlier: &Sample) -> bool {
        matches!((earlier.uptime_ns, self.uptime_ns), (Some(a), Some(b)) if b < a)
    }
}

/// The health of a window: what the engine answered between two samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub window_s: u64,
    pub responses: u64,
    pub errors_5xx: u64,
    pub error_ratio: f64,
    /// Bucket upper bound; None: no response, or past the last bound.
    pub p99_us: Option<u64>,
}

/// The health between `a` and the later `b`, route by route: a route only
/// in `b` (new or renamed) counts from zero, one only in `a` (removed) is
/// left out, and a route whose counters went down (reset) or an engine
/// that restarted counts from zero.
pub fn health(a: &Sample, b: &Sample, window_s: u64) -> Health {
    let restarted = b.restarted_since(a);
    let zero = RouteCounters::default();
    let mut responses = 0u64;
    let mut errors = 0u64;
    let mut counts = vec![0u64; b.bounds.len()];
    for (name, rb) in &b.routes {
        let mut ra = if restarted {
            &zero
        } else {
            a.routes.get(name).unwrap_or(&zero)
        };
        let went_down = rb.responses < ra.responses
            || rb.errors < ra.errors
            || rb
                .counts
                .iter()
                .enumerate()
                .any(|(i, &c)| c < ra.counts.get(i).copied().unwrap_or(0));
        if went_down {
            ra = &zero;
        }
        let dr = rb.responses - ra.responses;
        responses += dr;
        errors += (rb.errors - ra.errors).min(dr);
        for (i, &c) in rb.counts.iter().enumerate() {
            let d = c - ra.counts.get(i).copied().unwrap_or(0);
            match counts.get_mut(i) {
                Some(x) => *x += d,
                None => counts.push(d),
            }
        }
    }
    let total: u64 = counts.iter().sum();
    let mut p99_us = None;
    if total > 0 {
        // The bucket holding the 99th percentile response, and within it
        // a linear guess (as Prometheus' histogram_quantile): the bucket's
        // upper bound alone would make a 2x gate a coin toss whenever the
        // p99 sits near a bound.
        let want = (total * 99).div_ceil(100);
        let mut seen = 0;
        let mut lower = 0u64;
        for (i, &c) in counts.iter().enumerate() {
            let upper = b.bounds.get(i).copied().flatten();
            if c > 0 && seen + c >= want {
                p99_us = upper.map(|hi| {
                    let into = (want - seen) as f64 / c as f64;
                    lower + ((hi.saturating_sub(lower)) as f64 * into).round() as u64
                });
                break;
            }
            seen += c;
            if let Some(hi) = upper {
                lower = hi;
            }
        }
    }
    Health {
        window_s,
        responses,
        errors_5xx: errors,
        error_ratio: if responses == 0 {
            0.0
        } else {
            errors as f64 / responses as f64
        },
        p99_us,
    }
}

/// A bake answering less than this share of the rate before the apply
/// fails (when the window before had enough responses to tell).
pub const TRAFFIC_DROP: f64 = 0.2;

/// The shortest bake: a sample must be taken after the apply.
pub const MIN_BAKE_S: u64 = 1;

/// What the gate says of a host after its bake.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Passed; the text says what was judged (or why not).
    Pass(String),
    Fail(String),
}

/// The gate. Too few responses in the bake: passed with a note, since
/// nothing can be told (a host without traffic must not hold a rollout
/// forever, and a handful of requests makes any ratio noise) — unless the
/// window before the apply had enough and the bake answered under a
/// fifth of its rate (a bundle that breaks traffic). The p99 is
/// compared only when the window before the apply had enough responses
/// too and both p99 fall within the histogram's bounds.
pub fn gate(plan: &Plan, before: Option<&Health>, after: &Health) -> Verdict {
    let min = plan.min_requests.max(1);
    if after.responses >= min && after.error_ratio > plan.max_error_ratio {
        return Verdict::Fail(format!(
            "error ratio {:.3} ({} of {} responses 5xx) over {}",
            after.error_ratio, after.errors_5xx, after.responses, plan.max_error_ratio
        ));
    }
    // A bundle that breaks traffic entirely answers nothing: too few
    // responses to judge, but not "fine".
    if let Some(b) = before.filter(|b| b.responses >= min && b.window_s > 0) {
        let rate_before = b.responses as f64 / b.window_s as f64;
        let rate_after = after.responses as f64 / after.window_s.max(1) as f64;
        if rate_after < TRAFFIC_DROP * rate_before {
            return Verdict::Fail(format!(
                "traffic dropped: {rate_after:.1} responses/s in the bake, {rate_before:.1}/s before"
            ));
        }
    }
    if after.responses < min {
        return Verdict::Pass(format!(
            "not judged: {} responses in the bake, fewer than {min}",
            after.responses
        ));
    }
    let judged_p99 = match before {
        Some(b) if b.responses >= min => match (b.p99_us, after.p99_us) {
            (Some(pb), Some(pa)) => {
                if pa as f64 > plan.max_p99_ratio * pb.max(1) as f64 {
                    return Verdict::Fail(format!(
                        "p99 {pa} us over {} x {pb} us on the previous bundle",
                        plan.max_p99_ratio
                    ));
                }
                "p99 ok".to_string()
            }
            (Some(pb), None) if after.p99_us.is_none() && after.responses > 0 => {
                return Verdict::Fail(format!(
                    "p99 past the histogram's last bound, was {pb} us on the previous bundle"
                ));
            }
            _ => "p99 not judged (no bound)".to_string(),
        },
        _ => "p99 not judged (too few responses before)".to_string(),
    };
    Verdict::Pass(format!(
        "error ratio {:.3} of {} responses, {judged_p99}",
        after.error_ratio, after.responses
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("h{i}")).collect()
    }

    #[test]
    fn waves_parse_and_bad_plans_are_refused() {
        assert_eq!(
            parse_waves("1, 25%,100%").unwrap(),
            [
                WaveSize::Hosts(1),
                WaveSize::Percent(25),
                WaveSize::Percent(100)
            ]
        );
        for bad in ["", "0", "1,,2", "101%", "0%", "x", "-1", "1.5"] {
            assert!(parse_waves(bad).is_err(), "{bad:?}");
        }
        let mut p = Plan::new("1,100%");
        assert!(p.validate().is_ok());
        p.max_error_ratio = 1.5;
        assert!(p.validate().is_err());
        p.max_error_ratio = 0.1;
        p.max_p99_ratio = 0.5;
        assert!(p.validate().is_err());
        p.max_p99_ratio = f64::NAN;
        assert!(p.validate().is_err());
        let mut p = Plan::new("1,100%");
        p.bake_s = 0;
        assert!(p.validate().is_err(), "a bake of 0 s judges nothing");
        p.bake_s = MIN_BAKE_S;
        assert!(p.validate().is_ok());
    }

    #[test]
    fn every_host_computes_the_same_waves_and_the_canary_changes_with_the_serial() {
        let m = members(3);
        let plan = parse_waves("1,100%").unwrap();
        let a = assign(&m, 7, &plan);
        // Order of the member list does not matter.
        let mut rev = m.clone();
        rev.reverse();
        assert_eq!(assign(&rev, 7, &plan), a);
        let waves: Vec<usize> = a.iter().map(|(_, w)| *w).collect();
        assert_eq!(waves, [0, 1, 1]);
        // Over many serials, every host is the canary sometimes.
        let mut canaries = std::collections::BTreeSet::new();
        for s in 0..64 {
            canaries.insert(assign(&m, s, &plan)[0].0.clone());
        }
        assert_eq!(canaries.len(), 3);
    }

    #[test]
    fn shares_round_up_empty_waves_are_skipped_and_the_rest_form_a_last_wave() {
        let count = |n, plan: &str| {
            let a = assign(&members(n), 1, &parse_waves(plan).unwrap());
            let mut per = vec![0; a.iter().map(|x| x.1).max().unwrap_or(0) + 1];
            for (_, w) in a {
                per[w] += 1;
            }
            per
        };
        assert_eq!(count(3, "1,25%,100%"), [1, 2], "25% of 3 is the canary");
        assert_eq!(count(10, "1,25%,100%"), [1, 2, 7]);
        assert_eq!(count(10, "2,50%"), [2, 3, 5], "the rest is a last wave");
        assert_eq!(count(1, "1,25%,100%"), [1]);
        assert_eq!(count(4, "10"), [4]);
        assert!(assign(&[], 1, &parse_waves("1").unwrap()).is_empty());
    }

    fn sample(responses: u64, errors: u64, counts: &[u64]) -> Sample {
        routes(&[("r", responses, errors, counts)])
    }

    fn routes(r: &[(&str, u64, u64, &[u64])]) -> Sample {
        Sample {
            routes: r
                .iter()
                .map(|&(n, responses, errors, counts)| {
                    let c = RouteCounters {
                        responses,
                        errors,
                        counts: counts.to_vec(),
                    };
                    (n.to_string(), c)
                })
                .collect(),
            bounds: vec![Some(100), Some(1000), Some(10_000), None],
            uptime_ns: None,
        }
    }

    #[test]
    fn a_renamed_or_removed_route_and_an_engine_restart_are_counted_per_route() {
        let a = routes(&[
            ("old", 1000, 0, &[1000, 0, 0, 0]),
            ("keep", 500, 0, &[500, 0, 0, 0]),
        ]);
        // The bundle renamed `old` to `new`: the engine dropped `old`'s
        // counters and `new` starts at 0. Summed over routes, the total
        // went down (1500 -> 560) and was taken for a reset: the whole
        // history (0 % errors) was judged instead of the bake's 60 %.
        let b = routes(&[
            ("new", 50, 50, &[0, 0, 50, 0]),
            ("keep", 510, 0, &[510, 0, 0, 0]),
        ]);
        let h = health(&a, &b, 10);
        assert_eq!((h.responses, h.errors_5xx), (60, 50));
        assert_eq!(h.p99_us, Some(10_000));
        // A route that only went down was reset: it counts from 0.
        let c = routes(&[
            ("new", 60, 50, &[10, 0, 50, 0]),
            ("keep", 5, 0, &[5, 0, 0, 0]),
        ]);
        let h = health(&b, &c, 10);
        assert_eq!((h.responses, h.errors_5xx), (15, 0));
        // An engine restart (worker uptime went down) counts from 0
        // everywhere, even where a counter grew past the old value.
        let mut d = routes(&[("keep", 600, 0, &[600, 0, 0, 0])]);
        d.uptime_ns = Some(1_000);
        let mut e = a.clone();
        e.uptime_ns = Some(9_000_000);
        assert!(d.restarted_since(&e));
        assert_eq!(health(&e, &d, 10).responses, 600);
        let stats = serde_json::json!({
            "routes": [{"name": "x", "responses": {"2xx": 3, "5xx": 1}, "latency": {"counts": [4, 0]}}],
            "latency_bounds_us": [100, null],
            "workers": [{"uptime_ns": 5}, {"uptime_ns": 7}],
        });
        let s = Sample::from_stats(&stats).unwrap();
        assert_eq!(s.uptime_ns, Some(7));
        assert_eq!(s.routes["x"].responses, 4);
        assert_eq!(s.routes["x"].errors, 1);
    }

    #[test]
    fn a_member_that_joined_after_the_bundle_waits_for_every_wave_and_moves_none() {
        let waves = parse_waves("1,50%,100%").unwrap();
        let at = |t: u64| -> Vec<(String, Option<u64>)> {
            members(4).into_iter().map(|h| (h, Some(t))).collect()
        };
        let before = assign_members(&at(100), 100, 7, &waves);
        assert_eq!(before, assign(&members(4), 7, &waves));
        // Two hosts join after the bundle was created (one not even
        // readable): the first four keep their waves; the joiners come
        // last, after the last wave.
        let mut with = at(100);
        with.push(("late".into(), Some(101)));
        with.push(("odd".into(), None));
        let after = assign_members(&with, 100, 7, &waves);
        for (h, w) in &before {
            assert!(after.contains(&(h.clone(), *w)), "{h} moved: {after:?}");
        }
        let last = before.iter().map(|(_, w)| *w).max().unwrap();
        for h in ["late", "odd"] {
            assert!(after.contains(&(h.to_string(), last + 1)), "{after:?}");
        }
        assert_eq!(
            registered_unix_s(br#"{"host":"a","registered_unix_s":5}"#),
            Some(5)
        );
        assert_eq!(registered_unix_s(b"junk"), None);
    }

    #[test]
    fn health_is_the_difference_of_two_samples() {
        let a = sample(100, 1, &[90, 10, 0, 0]);
        let b = sample(300, 21, &[180, 110, 10, 0]);
        let h = health(&a, &b, 10);
        assert_eq!((h.responses, h.errors_5xx), (200, 20));
        assert!((h.error_ratio - 0.1).abs() < 1e-9);
        // 90 + 100 = 190 < 198 within 1 ms: the p99 is in the 10 ms bucket,
        // 8 of its 10 responses in: 1 ms + 0.8 x 9 ms.
        assert_eq!(h.p99_us, Some(8_200));
        // An engine restart: counters start over.
        let h = health(&b, &sample(5, 0, &[5, 0, 0, 0]), 10);
        assert_eq!((h.responses, h.p99_us), (5, Some(100)));
        let h = health(&b, &b, 10);
        assert_eq!((h.responses, h.p99_us, h.error_ratio), (0, None, 0.0));
    }

    fn h(responses: u64, errors: u64, p99: Option<u64>) -> Health {
        Health {
            window_s: 5,
            responses,
            errors_5xx: errors,
            error_ratio: errors as f64 / responses.max(1) as f64,
            p99_us: p99,
        }
    }

    #[test]
    fn the_gate_fails_on_errors_and_slowness_and_does_not_judge_tiny_samples() {
        let plan = Plan::new("1,100%"); // 5 %, 2x, 20 responses
        let before = h(100, 0, Some(1000));
        assert!(matches!(
            gate(&plan, Some(&before), &h(100, 1, Some(1000))),
            Verdict::Pass(_)
        ));
        let Verdict::Fail(why) = gate(&plan, Some(&before), &h(100, 50, Some(1000))) else {
            panic!("50 % errors passed");
        };
        assert!(why.contains("error ratio 0.500"), "{why}");
        let Verdict::Fail(why) = gate(&plan, Some(&before), &h(100, 0, Some(5000))) else {
            panic!("5x slower passed");
        };
        assert!(why.contains("p99 5000 us"), "{why}");
        assert!(matches!(
            gate(&plan, Some(&before), &h(100, 0, None)),
            Verdict::Fail(_)
        ));
        // Exactly at the bounds: passes.
        assert!(matches!(
            gate(&plan, Some(&before), &h(100, 5, Some(2000))),
            Verdict::Pass(_)
        ));
        // Too few responses in the bake (and before): not judged, even
        // all failing.
        let Verdict::Pass(note) = gate(&plan, Some(&h(5, 0, None)), &h(5, 5, Some(9000))) else {
            panic!("a tiny sample failed the gate");
        };
        assert!(note.contains("not judged"), "{note}");
        // Too few before: errors judged, p99 not.
        let Verdict::Pass(note) = gate(&plan, Some(&h(3, 0, Some(10))), &h(100, 0, Some(9000)))
        else {
            panic!("p99 judged against 3 responses");
        };
        assert!(note.contains("p99 not judged"), "{note}");
        assert!(matches!(
            gate(&plan, None, &h(100, 20, Some(10))),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn a_bundle_that_stops_traffic_fails_the_gate() {
        let plan = Plan::new("1,100%"); // 20 responses minimum
        // 100 responses in 5 s before; none in the bake.
        let before = h(100, 0, Some(1000));
        let Verdict::Fail(why) = gate(&plan, Some(&before), &h(0, 0, None)) else {
            panic!("no responses at all passed");
        };
        assert!(why.contains("traffic dropped"), "{why}");
        // A tenth of the rate: failed, even above min_requests.
        let mut after = h(50, 0, Some(1000));
        after.window_s = 25;
        assert!(matches!(
            gate(&plan, Some(&before), &after),
            Verdict::Fail(_)
        ));
        // Half the rate: passed.
        after.window_s = 10;
        assert!(matches!(
            gate(&plan, Some(&before), &after),
            Verdict::Pass(_)
        ));
        // Nothing before either: not judged.
        assert!(matches!(
            gate(&plan, Some(&h(3, 0, None)), &h(0, 0, None)),
            Verdict::Pass(_)
        ));
    }
}
