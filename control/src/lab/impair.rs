//! Impairment specs of the lab's relay: what `--impair` and `lab impair
//! --set` accept (`loss=1%,delay=20ms,jitter=5ms,reorder=1%,dup=1%,
//! corrupt=1%,rate=100mbit,limit=4096`), per side and direction, and the
//! spec file the relay reads (one line per direction).

use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// A side of the lab whose link can be impaired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Client,
    Origin,
}

impl Side {
    pub const ALL: [Side; 2] = [Side::Client, Side::Origin];

    pub fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Origin => "origin",
        }
    }

    /// The tag of the side's interfaces (`c-port`, `o-port`, …).
    pub fn tag(self) -> &'static str {
        match self {
            Side::Client => "c",
            Side::Origin => "o",
        }
    }
}

/// A direction, seen from the side's host: `tx` is what the client (or
/// origin) sends into the lab, `rx` what the lab sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    Tx,
    Rx,
}

impl Dir {
    pub const ALL: [Dir; 2] = [Dir::Tx, Dir::Rx];

    pub fn name(self) -> &'static str {
        match self {
            Dir::Tx => "tx",
            Dir::Rx => "rx",
        }
    }
}

/// Default queue limit per direction (frames): a 20 ms delay line at a few
/// hundred Mbit/s holds ~500 frames.
pub const DEFAULT_LIMIT: usize = 4096;
/// Default hold of a reordered frame beyond its normal delay: long enough
/// for later frames to overtake it, far below any retransmission timeout.
pub const DEFAULT_REORDER_HOLD: Duration = Duration::from_millis(5);

/// What one direction of the relay does to frames. Probabilities are in
/// 0..=1. Jitter keeps frame order (a frame never leaves before the one
/// ahead of it); only `reorder` reorders.
#[derive(Debug, Clone, PartialEq)]
pub struct Impairment {
    pub loss: f64,
    pub delay: Duration,
    pub jitter: Duration,
    pub reorder: f64,
    pub reorder_hold: Duration,
    pub dup: f64,
    pub corrupt: f64,
    /// Bits per second; 0 = unlimited.
    pub rate: u64,
    /// Frames queued at most (delay line + held back); more are dropped.
    pub limit: usize,
}

impl Default for Impairment {
    fn default() -> Self {
        Self {
            loss: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: 0.0,
            reorder_hold: DEFAULT_REORDER_HOLD,
            dup: 0.0,
            corrupt: 0.0,
            rate: 0,
            limit: DEFAULT_LIMIT,
        }
    }
}

impl Impairment {
    /// No impairment (the relay only forwards).
    pub fn is_none(&self) -> bool {
        let d = Impairment::default();
        self.loss == 0.0
            && self.delay.is_zero()
            && self.jitter.is_zero()
            && self.reorder == 0.0
            && self.dup == 0.0
            && self.corrupt == 0.0
            && self.rate == 0
            && self.limit == d.limit
    }

    /// Sets the keys of `patch` (parsed by [`parse_patch`]).
    pub fn apply(&mut self, patch: &[(Key, Value)]) {
        for (k, v) in patch {
            match (k, *v) {
                (Key::Loss, Value::Prob(p)) => self.loss = p,
                (Key::Delay, Value::Time(t)) => self.delay = t,
                (Key::Jitter, Value::Time(t)) => self.jitter = t,
                (Key::Reorder, Value::Prob(p)) => self.reorder = p,
                (Key::ReorderHold, Value::Time(t)) => self.reorder_hold = t,
                (Key::Dup, Value::Prob(p)) => self.dup = p,
                (Key::Corrupt, Value::Prob(p)) => self.corrupt = p,
                (Key::Rate, Value::Rate(r)) => self.rate = r,
                (Key::Limit, Value::Count(n)) => self.limit = n,
                _ => unreachable!("parse_patch pairs keys with their kind of value"),
            }
        }
    }
}

fn pct(p: f64) -> String {
    let s = format!("{:.4}", p * 100.0);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

fn time(t: Duration) -> String {
    if t.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", t.as_millis())
    } else {
        format!("{}us", t.as_micros())
    }
}

/// The canonical spec (every key), which [`parse_patch`] reads back.
impl fmt::Display for Impairment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loss={},delay={},jitter={},reorder={},reorder_hold={},dup={},corrupt={},rate={}bit,limit={}",
            pct(self.loss),
            time(self.delay),
            time(self.jitter),
            pct(self.reorder),
            time(self.reorder_hold),
            pct(self.dup),
            pct(self.corrupt),
            self.rate,
            self.limit
        )
    }
}

/// A spec key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Loss,
    Delay,
    Jitter,
    Reorder,
    ReorderHold,
    Dup,
    Corrupt,
    Rate,
    Limit,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Prob(f64),
    Time(Duration),
    Rate(u64),
    Count(usize),
}

const KEYS: &str = "loss, delay, jitter, reorder, reorder_hold, dup, corrupt, rate, limit";

/// Parses `key=value,…` (an empty string is no change). Errors name the
/// bad pair.
pub fn parse_patch(spec: &str) -> Result<Vec<(Key, Value)>> {
    let mut out = Vec::new();
    for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("{pair:?}: expected key=value (keys: {KEYS})"))?;
        let (k, v) = (k.trim(), v.trim());
        let key = match k {
            "loss" => Key::Loss,
            "delay" => Key::Delay,
            "jitter" => Key::Jitter,
            "reorder" => Key::Reorder,
            "reorder_hold" => Key::ReorderHold,
            "dup" | "duplicate" => Key::Dup,
            "corrupt" => Key::Corrupt,
            "rate" => Key::Rate,
            "limit" => Key::Limit,
            _ => bail!("unknown impairment key {k:?} (keys: {KEYS})"),
        };
        let value = match key {
            Key::Loss | Key::Reorder | Key::Dup | Key::Corrupt => Value::Prob(
                parse_pct(v)
                    .with_context(|| format!("{k}={v:?}: expected a percentage like 1% or 0.5%"))?,
            ),
            Key::Delay | Key::Jitter | Key::ReorderHold => {
                Value::Time(parse_time(v).with_context(|| {
                    format!("{k}={v:?}: expected a time like 20ms, 500us or 1s (at most 10s)")
                })?)
            }
            Key::Rate => Value::Rate(parse_rate(v).with_context(|| {
                format!("{k}={v:?}: expected a rate like 100mbit, 1gbit or 0 (unlimited)")
            })?),
            Key::Limit => Value::Count(
                v.parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1 << 20).contains(n))
                    .with_context(|| format!("{k}={v:?}: expected a frame count in 1..=1048576"))?,
            ),
        };
        out.push((key, value));
    }
    Ok(out)
}

fn parse_pct(v: &str) -> Option<f64> {
    let p: f64 = v.strip_suffix('%').unwrap_or(v).trim().parse().ok()?;
    (0.0..=100.0).contains(&p).then_some(p / 100.0)
}

fn parse_time(v: &str) -> Option<Duration> {
    let (num, unit) = split_unit(v);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "ms" | "" => n / 1e3,
        "us" => n / 1e6,
        _ => return None,
    };
    (n >= 0.0 && secs <= 10.0).then(|| Duration::from_secs_f64(secs))
}

fn parse_rate(v: &str) -> Option<u64> {
    let (num, unit) = split_unit(v);
    let n: f64 = num.parse().ok()?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "bit" | "bps" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => return None,
    };
    let r = n * mult;
    (n >= 0.0 && r <= 1e12).then_some(r as u64)
}

fn split_unit(v: &str) -> (&str, &str) {
    let i = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    (&v[..i], v[i..].trim())
}

/// One `--impair` argument: `SIDE[.DIR]:SPEC` with SIDE `client`, `origin`
/// or `both` and DIR `tx` or `rx` (both when absent).
#[derive(Debug, Clone, PartialEq)]
pub struct ImpairArg {
    pub sides: Vec<Side>,
    pub dirs: Vec<Dir>,
    pub patch: Vec<(Key, Value)>,
}

/// Parses `SIDE[.DIR]` (see [`ImpairArg`]).
pub fn parse_target(t: &str) -> Result<(Vec<Side>, Vec<Dir>)> {
    let (side, dir) = match t.split_once('.') {
        Some((s, d)) => (s, Some(d)),
        None => (t, None),
    };
    let sides = match side.trim() {
        "client" => vec![Side::Client],
        "origin" => vec![Side::Origin],
        "both" => Side::ALL.to_vec(),
        other => bail!("impairment side {other:?}: expected client, origin or both"),
    };
    let dirs = match dir.map(str::trim) {
        None => Dir::ALL.to_vec(),
        Some("tx") => vec![Dir::Tx],
        Some("rx") => vec![Dir::Rx],
        Some(other) => bail!(
            "impairment direction {other:?}: expected tx (what the side sends) or rx (what it receives)"
        ),
    };
    Ok((sides, dirs))
}

impl std::str::FromStr for ImpairArg {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (target, spec) = s.split_once(':').with_context(|| {
            format!("--impair {s:?}: expected SIDE[.tx|.rx]:key=value,… (e.g. client:loss=1%,delay=20ms)")
        })?;
        // One flat message: clap shows only the error's top line.
        let (sides, dirs) = parse_target(target).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let patch = parse_patch(spec).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        Ok(ImpairArg { sides, dirs, patch })
    }
}

/// Both directions of one side's link.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SideSpec {
    pub tx: Impairment,
    pub rx: Impairment,
}

impl SideSpec {
    pub fn dir(&self, d: Dir) -> &Impairment {
        match d {
            Dir::Tx => &self.tx,
            Dir::Rx => &self.rx,
        }
    }

    pub fn dir_mut(&mut self, d: Dir) -> &mut Impairment {
        match d {
            Dir::Tx => &mut self.tx,
            Dir::Rx => &mut self.rx,
        }
    }

    /// The spec file's text: `tx <spec>` and `rx <spec>`.
    pub fn to_file(&self) -> String {
        format!("tx {}\nrx {}\n", self.tx, self.rx)
    }

    pub fn from_file(text: &str) -> Result<SideSpec> {
        let mut s = SideSpec::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (d, spec) = line.split_once(' ').unwrap_or((line, ""));
            let dir = match d {
                "tx" => Dir::Tx,
                "rx" => Dir::Rx,
                other => bail!("spec file: unknown direction {other:?}"),
            };
            s.dir_mut(dir).apply(&parse_patch(spec)?);
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key_and_round_trips_through_the_spec_file() {
        let a: ImpairArg =
            "client:loss=1%,delay=20ms,jitter=5ms,reorder=1%,dup=0.5%,corrupt=1,rate=100mbit,limit=100"
                .parse()
                .unwrap();
        assert_eq!(a.sides, vec![Side::Client]);
        assert_eq!(a.dirs, vec![Dir::Tx, Dir::Rx]);
        let mut s = SideSpec::default();
        s.tx.apply(&a.patch);
        assert_eq!(s.tx.loss, 0.01);
        assert_eq!(s.tx.delay, Duration::from_millis(20));
        assert_eq!(s.tx.jitter, Duration::from_millis(5));
        assert_eq!(s.tx.dup, 0.005);
        assert_eq!(s.tx.corrupt, 0.01);
        assert_eq!(s.tx.rate, 100_000_000);
        assert_eq!(s.tx.limit, 100);
        assert!(s.rx.is_none() && !s.tx.is_none());
        assert_eq!(SideSpec::from_file(&s.to_file()).unwrap(), s);
        let b: ImpairArg = "both.rx:loss=2%".parse().unwrap();
        assert_eq!(b.sides, Side::ALL.to_vec());
        assert_eq!(b.dirs, vec![Dir::Rx]);
    }

    #[test]
    fn errors_name_the_bad_key_or_value() {
        let err = |s: &str| format!("{:#}", s.parse::<ImpairArg>().unwrap_err());
        assert!(err("client:los=1%").contains("unknown impairment key \"los\""));
        assert!(err("client:loss=150%").contains("loss=\"150%\""));
        assert!(err("client:delay=5parsecs").contains("delay=\"5parsecs\""));
        assert!(err("client:rate=fast").contains("rate=\"fast\""));
        assert!(err("client:limit=0").contains("limit=\"0\""));
        assert!(err("edge:loss=1%").contains("side \"edge\""));
        assert!(err("client.up:loss=1%").contains("direction \"up\""));
        assert!(err("loss=1%").contains("expected SIDE"));
        assert!(err("client:loss").contains("expected key=value"));
    }
}
