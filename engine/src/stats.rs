//! Per-worker counters, published by each worker every few milliseconds
//! (never per packet) and summed by readers.

use std::sync::Mutex;

use ferrogate_proxy::StackStats;
use ferrogate_proxy::{lb::UpstreamStats, route_stats::RouteCounters};

use crate::io::IoStats;

#[derive(Debug, Default, Clone, Copy)]
pub struct WorkerStats {
    pub worker: usize,
    pub queue: u32,
    pub cpu: usize,
    pub stack: StackStats,
    pub io: IoStats,
    /// Frames this worker received for another worker's flow and passed on.
    pub handoff_out: u64,
    /// Frames other workers passed to this one.
    pub handoff_in: u64,
    /// Segments of a listener's connection this worker held no socket for,
    /// passed on to the next worker (also in `handoff_out` when received
    /// from the port).
    pub handoff_strays: u64,
    /// Hand-offs refused because the target's ring was full.
    pub handoff_dropped: u64,
    /// Sleeping workers this one woke (eventfd) after handing them frames.
    pub handoff_wakeups: u64,
    /// The DPDK exception path: frames passed to the host's TAP, frames the
    /// host sent out through the port, and ones either side refused (the
    /// TAP's queue full, the tx ring full).
    pub exception_to_host: u64,
    pub exception_from_host: u64,
    pub exception_dropped: u64,
    /// A binary upgrade's successor: frames of the predecessor's flows
    /// relayed to it, the predecessor's frames sent out for it, and relays
    /// refused (its ring full).
    pub upgrade_relayed_out: u64,
    pub upgrade_relayed_in: u64,
    pub upgrade_relay_dropped: u64,
    /// Loop iterations that moved frames, and ones that found nothing.
    pub busy_loops: u64,
    pub idle_loops: u64,
    /// Sleeps on the port (adaptive and interrupt modes).
    pub sleeps: u64,
    /// Nanoseconds spent in loop iterations that moved frames: the worker's
    /// CPU cost of the traffic, without idle spinning or sleeping.
    pub busy_ns: u64,
    /// Nanoseconds since the worker started (busy ratio = busy_ns / this).
    pub uptime_ns: u64,
    pub snapshot_version: u64,
    /// The worker has begun a graceful stop, and has no client connection
    /// left (see `Stack::begin_drain`).
    pub draining: bool,
    pub drained: bool,
}

/// Where a worker publishes its counters. The worker only `try_lock`s it,
/// every few milliseconds, so it never waits on a reader.
#[derive(Default)]
pub struct StatsCell {
    worker: Mutex<WorkerStats>,
    /// Pool and route counters: cloned (allocating) twice a second, off the
    /// per-packet path.
    l7: Mutex<(UpstreamStats, RouteCounters)>,
}

impl StatsCell {
    pub fn publish(&self, s: &WorkerStats) {
        if let Ok(mut g) = self.worker.try_lock() {
            *g = *s;
        }
    }

    pub fn publish_l7(&self, upstreams: UpstreamStats, routes: RouteCounters) {
        if let Ok(mut g) = self.l7.try_lock() {
            *g = (upstreams, routes);
        }
    }

    pub fn read(&self) -> WorkerStats {
        *self.worker.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn read_l7(&self) -> (UpstreamStats, RouteCounters) {
        self.l7.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Counters of the whole engine at one moment.
#[derive(Debug, Clone)]
pub struct EngineStats {
    pub backend: crate::io::BackendKind,
    pub workers: Vec<WorkerStats>,
    pub xdp: Option<ferrogate_ebpf::XdpCounters>,
    /// Per filter rule id: packets and bytes it matched (drops for deny and
    /// rate rules, passes for allow rules).
    pub rules: Vec<(String, ferrogate_ebpf::Verdict)>,
    pub filter_generation: Option<u32>,
    pub snapshot_version: u64,
    /// Pools and routes, summed over workers.
    pub upstreams: UpstreamStats,
    pub routes: RouteCounters,
    /// Port counters of the DPDK backend (`dpdk_port_*`, `dpdk_xstat_*`).
    pub port: Vec<(String, u64)>,
    pub escalation: EscalationStats,
    /// The shared response cache's store (engine-wide, not per worker).
    pub cache: ferrogate_proxy::cache::core::StoreStats,
    /// Its disk tier, if configured.
    pub cache_disk: Option<ferrogate_proxy::cache::core::DiskStats>,
    /// The running snapshot's plugins: what they defined (`define_metric`)
    /// and their failures, each summed over its instances when read.
    pub plugins: Vec<PluginReading>,
}

/// One plugin's metrics and failure counters at one moment.
#[derive(Debug, Clone)]
pub struct PluginReading {
    pub name: String,
    pub metrics: Vec<ferrogate_proxy::plugins::MetricSample>,
    pub stats: ferrogate_proxy::plugins::PluginStats,
}

/// Sources escalated by L7 rate limits to the filter tier's deny set.
#[derive(Debug, Clone, Copy, Default)]
pub struct EscalationStats {
    /// Denied now (a gauge).
    pub denied_now: u64,
    /// Sources denied so far.
    pub escalated: u64,
    /// Escalations of allow-listed or upstream sources, ignored.
    pub refused_allowed: u64,
    /// Escalations the deny set could not take (full).
    pub failed: u64,
    /// Escalations the workers' queue dropped (full).
    pub queue_dropped: u64,
}

impl EngineStats {
    pub fn stack_total(&self) -> StackStats {
        let mut t = StackStats::default();
        for w in &self.workers {
            t.add(&w.stack);
        }
        t
    }

    pub fn handoff_total(&self) -> (u64, u64, u64) {
        self.workers.iter().fold((0, 0, 0), |a, w| {
            (
                a.0 + w.handoff_out,
                a.1 + w.handoff_in,
                a.2 + w.handoff_dropped,
            )
        })
    }

    /// `name value` lines, one counter each, for logs and `ferrogate stats`.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "backend {}", self.backend);
        for w in &self.workers {
            let _ = writeln!(
                s,
                "worker {} queue {} cpu {}: rx {} tx {} requests {} handoff_out {} handoff_in {} handoff_dropped {} sleeps {} busy_ns {}",
                w.worker,
                w.queue,
                w.cpu,
                w.io.rx_frames,
                w.io.tx_frames,
                w.stack.requests,
                w.handoff_out,
                w.handoff_in,
                w.handoff_dropped,
                w.sleeps,
                w.busy_ns
            );
        }
        for (k, v) in self.stack_total().fields() {
            let _ = writeln!(s, "stack_{k} {v}");
        }
        // Frames lost at the rings: invisible to the stack's counters.
        let io = |f: fn(&IoStats) -> u64| self.workers.iter().map(|w| f(&w.io)).sum::<u64>();
        let _ = writeln!(s, "io_rx_dropped {}", io(|i| i.rx_dropped));
        let _ = writeln!(s, "io_tx_ring_full {}", io(|i| i.tx_ring_full));
        let _ = writeln!(s, "io_kicks {}", io(|i| i.kicks));
        let busy: u64 = self.workers.iter().map(|w| w.busy_ns).sum();
        let _ = writeln!(s, "workers_busy_ns {busy}");
        let sleeps: u64 = self.workers.iter().map(|w| w.sleeps).sum();
        let _ = writeln!(s, "workers_sleeps {sleeps}");
        for w in &self.workers {
            let ratio = w.busy_ns as f64 / w.uptime_ns.max(1) as f64;
            let _ = writeln!(s, "worker_{}_cpu {}", w.worker, w.cpu);
            let _ = writeln!(
                s,
                "worker_{}_busy_permille {}",
                w.worker,
                (ratio * 1000.0) as u64
            );
        }
        let (o, i, d) = self.handoff_total();
        let _ = writeln!(s, "handoff_out {o}\nhandoff_in {i}\nhandoff_dropped {d}");
        let strays: u64 = self.workers.iter().map(|w| w.handoff_strays).sum();
        let _ = writeln!(s, "handoff_strays {strays}");
        let wakeups: u64 = self.workers.iter().map(|w| w.handoff_wakeups).sum();
        let _ = writeln!(s, "handoff_wakeups {wakeups}");
        let sum = |f: fn(&WorkerStats) -> u64| self.workers.iter().map(f).sum::<u64>();
        let _ = writeln!(
            s,
            "exception_to_host {}\nexception_from_host {}\nexception_dropped {}",
            sum(|w| w.exception_to_host),
            sum(|w| w.exception_from_host),
            sum(|w| w.exception_dropped)
        );
        let _ = writeln!(
            s,
            "upgrade_relayed_out {}\nupgrade_relayed_in {}\nupgrade_relay_dropped {}",
            sum(|w| w.upgrade_relayed_out),
            sum(|w| w.upgrade_relayed_in),
            sum(|w| w.upgrade_relay_dropped)
        );
        if let Some(x) = &self.xdp {
            for (k, v) in x.iter() {
                let _ = writeln!(s, "xdp_{k}_packets {}", v.packets);
            }
        }
        for (id, v) in &self.rules {
            let _ = writeln!(s, "xdp_rule_{id}_packets {}", v.packets);
            let _ = writeln!(s, "xdp_rule_{id}_bytes {}", v.bytes);
        }
        if let Some(g) = self.filter_generation {
            let _ = writeln!(s, "filter_generation {g}");
        }
        let _ = writeln!(s, "snapshot_version {}", self.snapshot_version);
        for (k, v) in &self.port {
            let _ = writeln!(s, "{k} {v}");
        }
        let e = &self.escalation;
        let _ = writeln!(s, "escalation_denied_sources {}", e.denied_now);
        let _ = writeln!(s, "escalation_escalated {}", e.escalated);
        let _ = writeln!(s, "escalation_refused_allowed {}", e.refused_allowed);
        let _ = writeln!(s, "escalation_failed {}", e.failed);
        let _ = writeln!(s, "escalation_queue_dropped {}", e.queue_dropped);
        for (k, v) in self.cache_fields() {
            let _ = writeln!(s, "cache_store_{k} {v}");
        }
        for (k, v) in self.cache_disk_fields() {
            let _ = writeln!(s, "cache_disk_{k} {v}");
        }
        self.upstreams.render(&mut s);
        self.routes.render(&mut s);
        s
    }

    /// The cache store's figures by name (`cache_store_<name>` in
    /// `ferrogate ctl stats`, `ferrogate_cache_store_<name>` in metrics).
    /// `objects` and `bytes` are gauges, the rest counters.
    pub fn cache_fields(&self) -> [(&'static str, u64); 7] {
        let c = &self.cache;
        [
            ("objects", c.objects),
            ("bytes", c.bytes),
            ("inserted", c.inserted),
            ("bytes_inserted", c.bytes_inserted),
            ("evicted", c.evicted),
            ("bytes_evicted", c.bytes_evicted),
            ("purged", c.purged),
        ]
    }

    /// The disk tier's figures by name (`cache_disk_<name>`; none without
    /// a disk tier). `files` and `bytes` are gauges, the rest counters.
    pub fn cache_disk_fields(&self) -> Vec<(&'static str, u64)> {
        let Some(d) = &self.cache_disk else {
            return Vec::new();
        };
        vec![
            ("files", d.files),
            ("bytes", d.bytes),
            ("written", d.written),
            ("write_dropped", d.write_dropped),
            ("loaded", d.loaded),
            ("load_failed", d.load_failed),
            ("load_jobs", d.load_jobs),
            ("invalidated", d.invalidated),
            ("invalidate_dropped", d.invalidate_dropped),
            ("evicted", d.evicted),
            ("corrupt_deleted", d.corrupt_deleted),
            ("purged", d.purged),
            ("journal_errors", d.journal_errors),
            ("pending_applied", d.pending_applied),
            ("pending_unreadable", d.pending_unreadable),
        ]
    }
}
