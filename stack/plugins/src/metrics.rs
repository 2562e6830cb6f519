//! Per-plugin metrics (`proxy_define_metric` and friends) and failure
//! counters, readable by the engine while workers run.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

pub(crate) struct MetricCell {
    name: String,
    kind: MetricKind,
    value: AtomicI64,
    count: AtomicU64,
}

impl MetricCell {
    /// `proxy_increment_metric`; counters only go up.
    pub(crate) fn increment(&self, offset: i64) -> bool {
        if self.kind == MetricKind::Counter && offset < 0 {
            return false;
        }
        self.value.fetch_add(offset, Ordering::Relaxed);
        true
    }

    /// `proxy_record_metric`: a gauge takes the value, a histogram adds a
    /// sample, a counter is set (Envoy allows it).
    pub(crate) fn record(&self, value: u64) {
        let v = i64::try_from(value).unwrap_or(i64::MAX);
        match self.kind {
            MetricKind::Histogram => {
                self.value.fetch_add(v, Ordering::Relaxed);
                self.count.fetch_add(1, Ordering::Relaxed);
            }
            MetricKind::Counter | MetricKind::Gauge => self.value.store(v, Ordering::Relaxed),
        }
    }

    pub(crate) fn get(&self) -> i64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// The metrics of one plugin, shared by its instances on every worker. A
/// definition takes the lock (plugins define at start); increments go to the
/// atomics through each instance's cache of cells, without the lock.
#[derive(Default)]
pub(crate) struct Metrics {
    cells: Mutex<Vec<Arc<MetricCell>>>,
}

impl Metrics {
    /// Defines (or finds) `name`; `None` when it exists with another kind.
    pub(crate) fn define(&self, kind: MetricKind, name: &str) -> Option<(u32, Arc<MetricCell>)> {
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = cells.iter().position(|c| c.name == name) {
            let cell = &cells[i];
            return (cell.kind == kind).then(|| (i as u32, cell.clone()));
        }
        let cell = Arc::new(MetricCell {
            name: name.to_owned(),
            kind,
            value: AtomicI64::new(0),
            count: AtomicU64::new(0),
        });
        cells.push(cell.clone());
        Some(((cells.len() - 1) as u32, cell))
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
                value: c.value.load(Ordering::Relaxed),
                count: c.count.load(Ordering::Relaxed),
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
        }
    }
}
