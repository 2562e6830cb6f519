//! Prometheus exposition (text format 0.0.4) of the engine's counters and
//! of the control plane's state, encoded by `prometheus-client`.
//!
//! The engine's counters are per-worker values summed when read, so they
//! are not mirrored into `prometheus-client`'s atomics: each scrape
//! gathers them into `Families`, a `Collector` that encodes them with
//! const counters and gauges and the histogram encoding. Names are written
//! here as exported (counters with `_total`, info metrics with `_info`);
//! the encoder adds those suffixes itself, so they are stripped before it.

mod control;
mod engine;

use std::collections::HashMap;

use ferrogate_engine::EngineStats;
use ferrogate_proxy::lb::LatencyHistogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

pub use control::{ApplyCounts, ConfigState, ControlInfo, FleetInfo};

/// What `GET /metrics` is served as (the engine's and the daemon's): the
/// text format 0.0.4 that `prometheus_text::encode` writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Facts of the engine process that are not in `EngineStats`.
#[derive(Debug, Clone, Default)]
pub struct Info<'a> {
    pub version: &'a str,
    pub counter: u64,
    pub uptime_s: f64,
    /// How the configuration got where it is (applies, rollbacks, drain).
    pub config: ConfigState,
    /// Counters of the process outside the engine (snapshot persister,
    /// access-log writer), as `/stats` names them; exported as
    /// `ferrogate_{name}_total`.
    pub process: &'a [(&'static str, u64)],
}

/// Renders the engine's counters and the engine process's state.
pub fn render(st: &EngineStats, info: &Info<'_>) -> String {
    let mut f = Families::default();
    engine::counters(&mut f, st, info);
    engine::plugins(&mut f, st);
    control::config(&mut f, info);
    encode(f)
}

/// Renders the control daemon's own state (appended by the daemon to the
/// engine's exposition it forwards).
pub fn render_control(c: &ControlInfo) -> String {
    let mut f = Families::default();
    control::daemon(&mut f, c);
    encode(f)
}

fn encode(f: Families) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(f));
    let mut out = String::new();
    if prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).is_err() {
        // Only the writer can fail, and a String does not.
        tracing::warn!("encoding the metrics failed; the exposition is cut short");
    }
    out
}

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
enum Value {
    Int(u64),
    /// A gauge that may go below zero (a plugin's).
    Signed(i64),
    Float(f64),
    /// A histogram known only by its sum and count (a plugin's: proxy-wasm
    /// records values, not buckets), exported with the `+Inf` bucket alone.
    SumCount(f64, u64),
    Histogram(Box<LatencyHistogram>),
    /// An info metric's sample (its value is 1).
    One,
}

#[derive(Debug)]
struct Family {
    /// As the encoder takes it: without `_total` or `_info`.
    name: String,
    help: String,
    kind: MetricType,
    samples: Vec<(Labels, Value)>,
}

/// Samples grouped by family in first-seen order: the text format wants
/// one `# HELP`/`# TYPE` per family with all its samples after it, while
/// the counters come per worker, pool or route.
#[derive(Debug, Default)]
struct Families {
    fams: Vec<Family>,
    index: HashMap<String, usize>,
}

impl Families {
    fn family(&mut self, exported: &str, kind: MetricType, help: &str) -> &mut Family {
        let i = match self.index.get(exported) {
            Some(&i) => i,
            None => {
                let suffix = match kind {
                    MetricType::Counter => "_total",
                    MetricType::Info => "_info",
                    _ => "",
                };
                let name = exported.strip_suffix(suffix).unwrap_or(exported);
                debug_assert!(
                    suffix.is_empty() || name != exported,
                    "{exported}: a {} is exported with {suffix}",
                    kind.as_str()
                );
                self.fams.push(Family {
                    name: name.to_string(),
                    help: help.to_string(),
                    kind,
                    samples: Vec::new(),
                });
                self.index.insert(exported.to_string(), self.fams.len() - 1);
                self.fams.len() - 1
            }
        };
        let fam = &mut self.fams[i];
        debug_assert_eq!(fam.kind, kind, "{exported} has two types");
        fam
    }

    fn push(
        &mut self,
        name: &str,
        kind: MetricType,
        help: &str,
        l: &[(&'static str, String)],
        v: Value,
    ) {
        self.family(name, kind, help).samples.push((l.to_vec(), v));
    }

    /// `name` ends with `_total`, as exported.
    fn counter(&mut self, name: &str, help: &str, l: &[(&'static str, String)], v: u64) {
        self.push(name, MetricType::Counter, help, l, Value::Int(v));
    }

    fn gauge(&mut self, name: &str, help: &str, l: &[(&'static str, String)], v: u64) {
        self.push(name, MetricType::Gauge, help, l, Value::Int(v));
    }

    fn gauge_i64(&mut self, name: &str, help: &str, l: &[(&'static str, String)], v: i64) {
        self.push(name, MetricType::Gauge, help, l, Value::Signed(v));
    }

    /// A histogram of `count` values adding up to `sum`, without buckets.
    fn sum_count(
        &mut self,
        name: &str,
        help: &str,
        l: &[(&'static str, String)],
        sum: f64,
        count: u64,
    ) {
        self.push(
            name,
            MetricType::Histogram,
            help,
            l,
            Value::SumCount(sum, count),
        );
    }

    fn gauge_f64(&mut self, name: &str, help: &str, l: &[(&'static str, String)], v: f64) {
        self.push(name, MetricType::Gauge, help, l, Value::Float(v));
    }

    /// `name` ends with `_info`, as exported; the sample's value is 1.
    fn info(&mut self, name: &str, help: &str, l: &[(&'static str, String)]) {
        self.push(name, MetricType::Info, help, l, Value::One);
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        l: &[(&'static str, String)],
        h: &LatencyHistogram,
    ) {
        self.push(
            name,
            MetricType::Histogram,
            help,
            l,
            Value::Histogram(Box::new(*h)),
        );
    }
}

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for fam in &self.fams {
            let mut m = encoder.encode_descriptor(&fam.name, &fam.help, None, fam.kind)?;
            for (labels, v) in &fam.samples {
                match v {
                    Value::One => m.encode_info(labels)?,
                    Value::Int(n) if fam.kind == MetricType::Counter => {
                        ConstCounter::new(*n).encode(m.encode_family(labels)?)?
                    }
                    Value::Int(n) => ConstGauge::new(*n).encode(m.encode_family(labels)?)?,
                    Value::Signed(n) => ConstGauge::new(*n).encode(m.encode_family(labels)?)?,
                    Value::Float(x) => ConstGauge::new(*x).encode(m.encode_family(labels)?)?,
                    Value::SumCount(sum, count) => {
                        m.encode_family(labels)?.encode_histogram::<NoLabelSet>(
                            *sum,
                            *count,
                            &[(f64::INFINITY, *count)],
                            None,
                        )?
                    }
                    Value::Histogram(h) => {
                        // Per-bucket counts; the encoder makes them cumulative.
                        let buckets: Vec<(f64, u64)> = h
                            .counts
                            .iter()
                            .enumerate()
                            .map(|(i, c)| {
                                let le = LatencyHistogram::bound_us(i)
                                    .map_or(f64::INFINITY, |b| b as f64);
                                (le, *c)
                            })
                            .collect();
                        m.encode_family(labels)?.encode_histogram::<NoLabelSet>(
                            h.sum_us as f64,
                            h.count(),
                            &buckets,
                            None,
                        )?
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod golden;
#[cfg(test)]
pub(crate) mod parse;
#[cfg(test)]
mod tests;
