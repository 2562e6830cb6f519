//! What the engine needs to start: compiled by the control plane from TOML.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrogate_ebpf::{AttachMode, FailMode, FilterRules};
use ferrogate_proxy::cache::CacheSettings;
use ferrogate_proxy::{RouteTable, StackConfig};

/// Which packet source to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// AF_XDP, falling back to AF_PACKET (with a log line) if it cannot open.
    Auto,
    AfXdp,
    AfPacket,
    /// DPDK (feature `dpdk`): the port named in [`DpdkSettings`], EAL owned
    /// by the engine; the filter rules run in the workers.
    Dpdk,
}

/// `[engine.dpdk]`: how the EAL starts and which port the engine drives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpdkSettings {
    /// Virtual devices (`--vdev`), e.g. `net_af_packet0,iface=eth0,qpairs=2`.
    pub vdevs: Vec<String>,
    /// The port: a vdev name (`net_af_packet0`) or a PCI address
    /// (`0000:03:00.0`, which is also allow-listed with `-a`). None: the
    /// first vdev, else the first port DPDK finds.
    pub port: Option<String>,
    /// 2 MB hugepages (the EAL's default); false = `--no-huge -m memory_mb`.
    pub hugepages: bool,
    /// hugetlbfs mount (`--huge-dir`); None = the EAL's own discovery.
    pub huge_dir: Option<String>,
    /// Memory for the EAL in MB (`-m`); 0 = the EAL's default (hugepages only).
    pub memory_mb: u32,
    /// Mbufs per NUMA node's mempool.
    pub mbufs: u32,
    /// Per-lcore mempool cache.
    pub mbuf_cache: u32,
    /// Rx/tx descriptors per queue (rounded by the driver).
    pub rx_desc: u16,
    pub tx_desc: u16,
    /// `--file-prefix`: shared runtime files under /var/run/dpdk/<prefix>
    /// (for secondary processes, dpdk-proc-info). None = `--in-memory`, so
    /// several engines and tests never clash.
    pub file_prefix: Option<String>,
    /// Extra EAL arguments, appended last (e.g. `--log-level=lib.eal:debug`).
    pub eal_args: Vec<String>,
    /// The exception path: a multi-queue TAP (created if missing) that gets
    /// the frames that are not a VIP's, and whose frames go out the port, so
    /// the host keeps its own addresses on a NIC DPDK owns. None: such
    /// frames reach the stack, which counts and drops them.
    pub exception_iface: Option<String>,
}

impl Default for DpdkSettings {
    fn default() -> Self {
        Self {
            vdevs: Vec::new(),
            port: None,
            hugepages: true,
            huge_dir: None,
            memory_mb: 0,
            mbufs: 8191,
            mbuf_cache: 256,
            rx_desc: 1024,
            tx_desc: 1024,
            file_prefix: None,
            exception_iface: None,
            eal_args: Vec::new(),
        }
    }
}

/// How a worker waits for frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollingMode {
    /// Spin forever: lowest latency, a full core per worker.
    Busy,
    /// Spin for `spin`, then sleep on the socket until a frame or a timer.
    Adaptive { spin: Duration },
    /// Sleep on the socket as soon as a loop finds nothing (up to 2 ms):
    /// least CPU, most latency (a hand-off from another worker can wait for
    /// that sleep to end).
    Interrupt,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub iface: String,
    pub queues: u32,
    pub backend: BackendChoice,
    pub xdp_mode: AttachMode,
    /// Every worker's stack settings: the service addresses (VIPs, which
    /// the stack owns entirely: `stack.net.addresses`), gateway, buffers,
    /// connection limit, body limit, timeouts. The engine sets the per-worker
    /// parts itself: the MAC, the worker's share of `upstream_port_range`
    /// and the random seed.
    pub stack: StackConfig,
    pub routes: Arc<RouteTable>,
    pub batch_size: usize,
    pub polling: PollingMode,
    /// CPUs for the workers, in queue order; empty = the NIC's node.
    pub cpus: Vec<usize>,
    pub umem_frames: u32,
    pub ring_size: u32,
    pub hugepages: bool,
    /// Local ports upstream connections use, split evenly across workers.
    pub upstream_port_range: std::ops::Range<u16>,
    /// The XDP filter tier's rules (VIP traffic only).
    pub filter: FilterRules,
    pub fail_mode: FailMode,
    /// `[numa.node.N]` tuning; the NIC's node's entry applies.
    pub numa: std::collections::BTreeMap<usize, ferrogate_numa::NodeTuning>,
    /// Access-log records each worker may queue for the writer; 0 = no
    /// access log (the stack then does no access-log work at all).
    pub access_log_queue: usize,
    /// `[engine.dpdk]` (used with `backend = dpdk`).
    pub dpdk: DpdkSettings,
    /// `[cache]`: the response cache every worker shares. Read at start
    /// only (a reload keeps the running store). `store.key_seed` is
    /// replaced by `cache_key_seed`, or a random seed.
    pub cache: CacheSettings,
    /// The key hash's seed; None: random at each start (keys are not
    /// predictable from outside; nothing is persisted across starts).
    pub cache_key_seed: Option<u128>,
}

impl EngineConfig {
    pub fn new(iface: impl Into<String>, vips: Vec<(IpAddr, u8)>, routes: Arc<RouteTable>) -> Self {
        Self {
            iface: iface.into(),
            queues: 1,
            backend: BackendChoice::Auto,
            xdp_mode: AttachMode::Auto,
            stack: StackConfig::new([0; 6], vips, 0..0),
            routes,
            batch_size: 64,
            polling: PollingMode::Adaptive {
                spin: Duration::from_micros(50),
            },
            cpus: Vec::new(),
            umem_frames: 4096,
            ring_size: 2048,
            hugepages: false,
            upstream_port_range: 32_768..61_000,
            filter: FilterRules::default(),
            fail_mode: FailMode::Open,
            numa: Default::default(),
            access_log_queue: 0,
            dpdk: DpdkSettings::default(),
            cache: CacheSettings::default(),
            cache_key_seed: None,
        }
    }

    /// Service addresses with their prefix length.
    pub fn vips(&self) -> &[(IpAddr, u8)] {
        &self.stack.net.addresses
    }
}

/// Splits the upstream port range into one disjoint range per worker.
#[derive(Debug, Clone)]
pub struct PortPlan {
    start: u16,
    span: u16,
    workers: usize,
}

impl PortPlan {
    /// Every worker needs a share of at least 16 ports (`--queues` may ask
    /// for more workers than the config's range was checked for).
    pub fn check(range: &std::ops::Range<u16>, workers: usize) -> Result<(), String> {
        if range.len() / workers.max(1) < 16 {
            return Err(format!(
                "upstream ports {}..{} leave fewer than 16 per worker for {workers} workers (engine.upstream_port_range)",
                range.start, range.end
            ));
        }
        Ok(())
    }

    pub fn new(range: std::ops::Range<u16>, workers: usize) -> Self {
        let span = (range.len() / workers.max(1)) as u16;
        Self {
            start: range.start,
            span,
            workers,
        }
    }

    pub fn range_of(&self, worker: usize) -> std::ops::Range<u16> {
        let s = self.start + self.span * worker as u16;
        s..s + self.span
    }

    /// The worker that owns local port `port`, if any.
    pub fn owner(&self, port: u16) -> Option<usize> {
        if port < self.start || self.span == 0 {
            return None;
        }
        let w = ((port - self.start) / self.span) as usize;
        (w < self.workers).then_some(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_are_disjoint_and_owned() {
        let p = PortPlan::new(32_768..61_000, 2);
        let (a, b) = (p.range_of(0), p.range_of(1));
        assert!(a.end <= b.start);
        assert_eq!(p.owner(a.start), Some(0));
        assert_eq!(p.owner(a.end - 1), Some(0));
        assert_eq!(p.owner(b.start), Some(1));
        assert_eq!(p.owner(80), None);
        assert_eq!(p.owner(b.end), None);
    }

    #[test]
    fn a_range_too_small_for_the_workers_is_refused() {
        assert!(PortPlan::check(&(40_000..40_032), 2).is_ok());
        let e = PortPlan::check(&(40_000..40_032), 3).unwrap_err();
        assert!(e.contains("engine.upstream_port_range"), "{e}");
    }
}
