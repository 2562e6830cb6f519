//! Per-plugin metrics (`proxy_define_metric` and friends) and failure
//! counters, readable by the engine while workers run.
//!
//! A metric's value is kept in stripes, one cache line each: every
//! instance (one per worker) writes the stripe it was given at start, so
//! workers counting the same metric do not fight over one cache line, and
//! a read sums the stripes (no lock on either side). Gauges are the
//! exception: `record` sets one value for the plugin, so a gauge lives in
//! stripe 0 alone.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The most metrics one plugin may define: each is a series in
/// `/metrics`, so a guest defining names in a loop must not grow the
/// exposition (or the host's memory) without bound. Past it a definition
/// answers `BadArgument` and is counted (`metrics_refused`).
pub const MAX_METRICS: usize = 64;

/// The longest metric name (bytes) a plugin may define.
pub const MAX_METRIC_NAME: usize = 128;

/// Stripes per metric: instances past this many share stripes (slower,
/// still exact).
const STRIPES: usize = 16;

/// The kind a plugin gave a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric as the engine reads it (for the Prometheus output).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricSample {
    pub name: String,
    pub kind: MetricKind,
    /// Counter and gauge: the value. Histogram: the sum of recorded values.
    pub value: i64,
    /// Histogram: how many values were recorded; 0 for the others.
    pub count: u64,
}

#[repr(align(64))]
#[derive(Default)]
struct Stripe {
    value: AtomicI64,
    count: AtomicU64,
}

pub(crate) struct MetricCell {
    name: String,
    kind: MetricKind,
    stripes: Box<[Stripe]>,
}

impl MetricCell {
    fn stripe(&self, s: usize) -> &Stripe {
        match self.kind {
            MetricKind::Gauge => &self.stripes[0],
            _ => &self.stripes[s % STRIPES],
        }
    }

    /// `proxy_increment_metric` from the instance holding stripe `s`;
    /// counters only go up.
    pub(crate) fn increment(&self, s: usize, offset: i64) -> bool {
        if self.kind == MetricKind::Counter && offset < 0 {
            return false;
        }
        self.stripe(s).value.fetch_add(offset, Ordering::Relaxed);
        true
    }

    /// `proxy_record_metric`: a gauge takes the value, a histogram adds a
    /// sample, a counter is set (Envoy allows it: this stripe takes what
    /// makes the sum the value).
    pub(crate) fn record(&self, s: usize, value: u64) {
        let v = i64::try_from(value).unwrap_or(i64::MAX);
        let stripe = self.stripe(s);
        match self.kind {
            MetricKind::Histogram => {
                stripe.value.fetch_add(v, Ordering::Relaxed);
                stripe.count.fetch_add(1, Ordering::Relaxed);
            }
            MetricKind::Gauge => stripe.value.store(v, Ordering::Relaxed),
            MetricKind::Counter => {
                let others = self
                    .get()
                    .wrapping_sub(stripe.value.load(Ordering::Relaxed));
                stripe
                    .value
                    .store(v.wrapping_sub(others), Ordering::Relaxed);
            }
        }
    }

    /// The value summed over the stripes.
    pub(crate) fn get(&self) -> i64 {
        self.stripes
            .iter()
            .fold(0i64, |a, s| a.wrapping_add(s.value.load(Ordering::Relaxed)))
    }

    fn count(&self) -> u64 {
        self.stripes
            .iter()
            .fold(0u64, |a, s| a.wrapping_add(s.count.load(Ordering::Relaxed)))
    }
}

/// Why a definition was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DefineRefused {
    /// The name exists with another kind.
    KindMismatch,
    /// The plugin has [`MAX_METRICS`] already.
    TooMany,
    /// Empty, longer than [`MAX_METRIC_NAME`], not UTF-8, or with control
    /// characters.
    BadName,
}

/// The metrics of one plugin, shared by its instances on every worker. A
/// definition takes the lock (plugins define at start); increments go to the
/// atomics through each instance's cache of cells, without the lock.
#[derive(Default)]
pub(crate) struct Metrics {
    cells: Mutex<Vec<Arc<MetricCell>>>,
    /// The next instance's stripe.
    next_stripe: AtomicUsize,
}

impl Metrics {
    /// The stripe a new instance writes.
    pub(crate) fn take_stripe(&self) -> usize {
        self.next_stripe.fetch_add(1, Ordering::Relaxed) % STRIPES
    }

    /// Defines (or finds) `name`.
    pub(crate) fn define(
        &self,
        kind: MetricKind,
        name: &[u8],
    ) -> Result<(u32, Arc<MetricCell>), DefineRefused> {
        let name = std::str::from_utf8(name).map_err(|_| DefineRefused::BadName)?;
        if name.is_empty() || name.len() > MAX_METRIC_NAME || name.chars().any(char::is_control) {
            return Err(DefineRefused::BadName);
        }
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = cells.iter().position(|c| c.name == name) {
            let cell = &cells[i];
            return if cell.kind == kind {
                Ok((i as u32, cell.clone()))
            } else {
                Err(DefineRefused::KindMismatch)
            };
        }
        if cells.len() >= MAX_METRICS {
            return Err(DefineRefused::TooMany);
        }
        let cell = Arc::new(MetricCell {
            name: name.to_owned(),
            kind,
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
        });
        cells.push(cell.clone());
        Ok(((cells.len() - 1) as u32, cell))
    }

    pub(crate) fn get(&self, id: u32) -> Option<Arc<MetricCell>> {
        let cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        cells.get(id as usize).cloned()
    }

    pub(crate) fn snapshot(&self) -> Vec<MetricSample> {
        let cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        cells
            .iter()
            .map(|c| MetricSample {
                name: c.name.clone(),
                kind: c.kind,
                value: c.get(),
                count: c.count(),
            })
            .collect()
    }
}

/// Failure counters of one plugin, summed over its instances.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) traps: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) out_of_memory: AtomicU64,
    pub(crate) abi_errors: AtomicU64,
    pub(crate) reinstantiations: AtomicU64,
    pub(crate) metrics_refused: AtomicU64,
}

/// A reading of a plugin's failure counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PluginStats {
    /// Guest traps (unreachable, out-of-bounds access, `proc_exit`, …).
    pub traps: u64,
    /// Calls stopped by the per-call fuel budget.
    pub timeouts: u64,
    /// Calls stopped by the instance memory limit.
    pub out_of_memory: u64,
    /// Calls stopped because the guest broke the ABI (bad pointer or
    /// length, malformed header pairs, out-of-range result).
    pub abi_errors: u64,
    /// Poisoned instances replaced by a fresh one.
    pub reinstantiations: u64,
    /// Metric definitions refused: past [`MAX_METRICS`], a bad name, or a
    /// name defined before with another kind.
    pub metrics_refused: u64,
}

impl Stats {
    pub(crate) fn read(&self) -> PluginStats {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PluginStats {
            traps: r(&self.traps),
            timeouts: r(&self.timeouts),
            out_of_memory: r(&self.out_of_memory),
            abi_errors: r(&self.abi_errors),
            reinstantiations: r(&self.reinstantiations),
            metrics_refused: r(&self.metrics_refused),
        }
    }
}
