//! The data-plane process core: attaches XDP, opens one packet socket per
//! queue, builds a stack per worker and runs the workers until shutdown.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant as StdInstant};

use arc_swap::ArcSwap;
use ferrogate_ebpf::{FailMode, VipAction, XdpFilter};
use ferrogate_proxy::access::{AccessQueue, AccessSink};
use ferrogate_proxy::cache::core::PurgeCount;
use ferrogate_proxy::cache::{CacheSettings, ClockAnchor, EdgeCache, Purge, PurgeError};
use ferrogate_proxy::{Instant, RouteTable, Stack};
use ferrogate_proxy::{lb::UpstreamStats, route_stats::RouteCounters};

use crate::afpacket::{AfPacketConfig, AfPacketSocket};
use crate::afxdp::{AfXdpConfig, AfXdpSocket};
use crate::config::{BackendChoice, EngineConfig, PollingMode, PortPlan};
use crate::escalation::{DeniedSource, DenySet, DenyTarget};
use crate::handoff;
use crate::io::{BackendKind, PacketIo};
use crate::relay::RelayShm;
use crate::stats::EscalationStats;
use crate::stats::{EngineStats, StatsCell};
use crate::tap::ExceptionTap;
use crate::upgrade::{HandedOver, HandoverSlot, Predecessor};
use crate::worker::{Worker, WorkerFilter};
use ferrogate_ebpf::swfilter::{BlockedSources, Buckets, FilterCounters, RuleIndex, SwRules};
use ferrogate_proxy::quota::Quota;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("interface {iface}: {source}")]
    Interface {
        iface: String,
        source: std::io::Error,
    },
    #[error("XDP: {0}")]
    Xdp(#[from] ferrogate_ebpf::EbpfError),
    #[error("packet I/O: {0}")]
    Io(#[from] crate::io_error::IoError),
    #[error("worker placement: {0}")]
    Numa(#[from] ferrogate_numa::NumaError),
    #[error("worker {worker}: stack: {source}")]
    Stack {
        worker: usize,
        source: ferrogate_proxy::StackError,
    },
    #[error("invalid engine config: {0}")]
    Config(String),
    #[error("spawning worker thread: {0}")]
    Spawn(std::io::Error),
    #[error("worker wake-up eventfd: {0}")]
    Waker(std::io::Error),
    #[cfg(feature = "dpdk")]
    #[error(transparent)]
    Dpdk(#[from] crate::dpdk::DpdkError),
    #[error("filter rules: {0}")]
    Filter(String),
    #[error("exception interface {iface}: {source}")]
    ExceptionTap {
        iface: String,
        source: std::io::Error,
    },
    #[error("binary upgrade: {0}")]
    Upgrade(String),
}

/// A successor's hook, called once everything is loaded and checked and
/// before it touches the NIC: asks the predecessor to let go (the number of
/// queues) and returns what it handed over.
pub type TakeOver<'a> = &'a mut dyn FnMut(u32) -> Result<Predecessor, EngineError>;

/// How long a successor retries binding a queue its predecessor is closing.
const BIND_WAIT: Duration = Duration::from_secs(2);
/// How long a predecessor's workers get to swap their sockets.
const HANDOVER_WAIT: Duration = Duration::from_secs(3);

/// The software filter tier (backends without XDP): compiled rules swapped
/// atomically, token buckets shared by the workers, counters per worker.
struct SoftFilter {
    rules: Arc<ArcSwap<SwRules>>,
    buckets: Arc<Buckets>,
    /// Sources denied by escalation (the XDP program's deny set's twin).
    blocked: Arc<BlockedSources>,
    counters: Vec<Arc<FilterCounters>>,
    index: RuleIndex,
    vips: Vec<IpAddr>,
}

/// What a reload changed.
#[derive(Debug)]
pub struct ReloadReport {
    pub filter: Option<ferrogate_ebpf::ApplyReport>,
    /// Settings that changed but need a restart.
    pub ignored: Vec<&'static str>,
}

/// The settings the engine started with (for reload comparisons).
struct Started {
    iface: String,
    queues: u32,
    vips: Vec<(IpAddr, u8)>,
    routes: Arc<RouteTable>,
    access_log: bool,
    tcp: TcpSettings,
    upstream_port_range: std::ops::Range<u16>,
    cache: CacheShape,
    dpdk: crate::config::DpdkSettings,
}

/// What a `[cache]` change would change in the store (compared on reload:
/// the store lives as long as the engine).
#[derive(PartialEq, Clone)]
struct CacheShape {
    store: (usize, usize, usize, Option<String>),
    status_header: Option<String>,
    lock_timeout: std::time::Duration,
    wait_poll: std::time::Duration,
    key_seed: Option<u128>,
    /// The disk tier's directory and limits (opened once, at start).
    disk: Option<(std::path::PathBuf, u64, u64, bool)>,
}

impl CacheShape {
    fn of(cfg: &EngineConfig) -> Self {
        let c = &cfg.cache;
        Self {
            store: (
                c.store.max_bytes,
                c.store.shards,
                c.store.max_object_bytes,
                c.store.tag_header.clone(),
            ),
            status_header: c.status_header.clone(),
            lock_timeout: c.lock_timeout,
            wait_poll: c.wait_poll,
            key_seed: cfg.cache_key_seed,
            disk: c
                .disk
                .as_ref()
                .map(|d| (d.dir.clone(), d.max_bytes, d.max_object_bytes, d.fsync)),
        }
    }

    /// `new` is this shape plus a disk tier where none was: the one cache
    /// change a reload can make (the tier attaches beside the store).
    fn only_adds_disk(&self, new: &CacheShape) -> bool {
        self.disk.is_none()
            && new.disk.is_some()
            && *self
                == CacheShape {
                    disk: None,
                    ..new.clone()
                }
    }
}

/// The settings of the engine's cache: the configured key seed, else a
/// random one (std's per-process random keys).
fn cache_settings(cfg: &EngineConfig) -> CacheSettings {
    use std::hash::{BuildHasher, Hasher};
    let mut s = cfg.cache.clone();
    s.store.key_seed = cfg.cache_key_seed.unwrap_or_else(|| {
        let word = || std::hash::RandomState::new().build_hasher().finish();
        u128::from(word()) << 64 | u128::from(word())
    });
    s
}

/// The engine's cache, memory only at first: a configured disk tier is
/// opened and scanned on a thread of its own once the workers serve
/// (`Engine::attach_disk_tier`), so a big cache directory does not hold a
/// start or a crash restart (its objects are found once the scan is done;
/// meanwhile misses go to the origin). A tier that cannot open (a
/// directory another engine holds, permissions, a file in the way) is
/// logged, and the engine serves with memory only. Purges made until
/// the attach are written to the directory's `purges.pending` as well, so
/// a stop or a crash before it does not forget them.
fn open_cache(cfg: &EngineConfig, successor: bool) -> Arc<EdgeCache> {
    let settings = cache_settings(cfg);
    if successor && settings.disk.is_some() {
        // The predecessor holds the directory until it exits (it leaves
        // `purges.pending` to the tier's next open: this one's).
        tracing::info!("binary upgrade: the disk tier is attached once the predecessor is gone");
    }
    let cache = Arc::new(EdgeCache::new(settings));
    if let Some(d) = &cache.settings.disk {
        journal_purges_until_attached(&cache, &d.dir);
    }
    cache
}

/// See `MemoryStore::journal_purges_until_attached`.
fn journal_purges_until_attached(cache: &EdgeCache, dir: &std::path::Path) {
    if let Err(e) = cache.store.journal_purges_until_attached(dir) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot write the purges made so far to the disk tier's directory; a stop before the tier attaches forgets them");
    }
}

/// One exception TAP queue per worker (index = worker) when a DPDK port has
/// `exception_iface`; the first queue configures the interface.
fn exception_taps(
    cfg: &EngineConfig,
    backend: BackendKind,
    mac: [u8; 6],
    workers: usize,
    filtered: bool,
) -> Result<Vec<Option<ExceptionTap>>, EngineError> {
    let Some(iface) = cfg.dpdk.exception_iface.as_deref() else {
        return Ok(Vec::new());
    };
    if backend != BackendKind::Dpdk || !filtered {
        // Other backends leave the host's frames to the kernel already.
        tracing::warn!(iface, backend = %backend, "engine.dpdk.exception_iface applies to a DPDK port only; ignored");
        return Ok(Vec::new());
    }
    let taps = (0..workers)
        .map(|id| {
            ExceptionTap::open(iface, mac, id == 0)
                .map(Some)
                .map_err(|source| EngineError::ExceptionTap {
                    iface: iface.to_string(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    tracing::info!(
        iface,
        queues = workers,
        "exception path: the host's frames go through the TAP"
    );
    Ok(taps)
}

/// The per-socket TCP settings the workers' stacks were built with.
#[derive(PartialEq)]
struct TcpSettings {
    buffers: (usize, usize, usize, usize),
    budget: usize,
    timestamps: bool,
}

impl TcpSettings {
    fn of(net: &ferrogate_proxy::net::NetConfig) -> Self {
        Self {
            buffers: (
                net.tcp_rx_buffer,
                net.tcp_rx_buffer_max,
                net.tcp_tx_buffer,
                net.tcp_tx_buffer_max,
            ),
            budget: net.tcp_buffer_budget,
            timestamps: net.tcp_timestamps,
        }
    }
}

pub struct Engine {
    started: Started,
    backend: BackendKind,
    xdp: Option<XdpFilter>,
    workers: Vec<JoinHandle<()>>,
    stats: Vec<Arc<StatsCell>>,
    shutdown: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
    routes: Arc<ArcSwap<RouteTable>>,
    epoch: Arc<AtomicU64>,
    /// Per-worker access-log queues (index = worker), empty when off.
    access: Vec<Arc<AccessQueue>>,
    clock_start: StdInstant,
    /// The response cache every worker's stack shares (purged from here).
    cache: Arc<EdgeCache>,
    soft_filter: Option<SoftFilter>,
    /// Rate-limit buckets shared by the workers; their escalations.
    quota: Arc<Quota>,
    deny: DenySet,
    /// Per worker: where a binary upgrade offers the relay port.
    handovers: Vec<Arc<HandoverSlot>>,
    /// This engine handed its NIC queues to a successor.
    handed_over: bool,
    /// This engine's QUIC generation (see `ferrogate_quic::generation_of`).
    quic_generation: u8,
    /// A successor's relay to its predecessor (closed here should the
    /// predecessor die without closing it).
    relay: Option<Arc<RelayShm>>,
    /// Dropped after the workers (Drop joins them first): stops and closes
    /// the port, frees the mempools, cleans up the EAL.
    #[cfg(feature = "dpdk")]
    dpdk: Option<crate::dpdk::DpdkPort>,
}

/// The plugins the listeners of `routes` run, once each (a plugin on two
/// listeners is one plugin), read without stopping a worker: their
/// metrics are atomics the instances write and this sums.
fn plugin_readings(routes: &RouteTable) -> Vec<crate::stats::PluginReading> {
    let mut seen: Vec<&ferrogate_proxy::plugins::Plugin> = Vec::new();
    // Listeners' plugins (viewer phases), then routes' (origin phases).
    let attached = routes
        .listeners()
        .iter()
        .flat_map(|l| l.plugins())
        .chain(routes.routes().flat_map(|r| r.plugins.iter()));
    for a in attached {
        if !seen.iter().any(|p| p.ptr_eq(&a.plugin)) {
            seen.push(&a.plugin);
        }
    }
    seen.into_iter()
        .map(|p| crate::stats::PluginReading {
            name: p.name().to_string(),
            metrics: p.metrics(),
            stats: p.stats(),
        })
        .collect()
}

/// What opening a backend produced.
/// The stack's MAC address on in-memory ports (locally administered).
pub const MEMORY_MAC: [u8; 6] = [0x02, 0xfe, 0, 0, 0, 0x01];

struct Opened {
    mac: [u8; 6],
    cpus: Vec<usize>,
    backend: BackendKind,
    xdp: Option<XdpFilter>,
    ios: Vec<Box<dyn PacketIo>>,
    #[cfg(feature = "dpdk")]
    dpdk: Option<crate::dpdk::DpdkPort>,
}

fn vip_addrs(cfg: &EngineConfig) -> Vec<IpAddr> {
    cfg.vips().iter().map(|(ip, _)| *ip).collect()
}

/// Decides each worker's CPU (hwloc plan for the NIC's node, or
/// `engine.cpus` when given) and applies the NIC node's `[numa.node.N]`
/// tuning to the config. Returns the CPUs and the node for packet memory.
fn place_workers(
    cfg: &mut EngineConfig,
    nic_node: Option<usize>,
) -> Result<(Vec<usize>, Option<usize>), EngineError> {
    if !cfg.cpus.is_empty() {
        let cpus = ferrogate_numa::plan_worker_cpus(cfg.queues as usize, &cfg.cpus, &cfg.iface)?;
        return Ok((cpus, None));
    }
    let machine = match ferrogate_numa::Machine::discover() {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "no hwloc topology; placing workers on the online CPUs");
            let cpus = ferrogate_numa::plan_worker_cpus(cfg.queues as usize, &[], &cfg.iface)?;
            return Ok((cpus, None));
        }
    };
    let plan = ferrogate_numa::plan(
        &machine,
        &ferrogate_numa::PlanRequest {
            queues: cfg.queues,
            nic_node,
            tuning: &cfg.numa,
        },
    )
    .map_err(|e| EngineError::Config(e.to_string()))?;
    for w in &plan.warnings {
        tracing::warn!(warning = %w, "worker placement");
    }
    for w in &plan.workers {
        tracing::info!(
            queue = w.queue,
            cpu = w.cpu,
            node = w.node,
            "worker placement"
        );
    }
    if let Some(t) = cfg.numa.get(&plan.node).cloned() {
        if let Some(v) = t.umem_frames {
            cfg.umem_frames = v;
        }
        if let Some(v) = t.ring_size {
            cfg.ring_size = v;
        }
        if let Some(v) = t.batch_size {
            cfg.batch_size = v;
        }
        if let Some(v) = t.hugepages {
            cfg.hugepages = v;
        }
        if let Some(p) = t.polling.as_deref() {
            cfg.polling = match p {
                "busy" => PollingMode::Busy,
                "interrupt" => PollingMode::Interrupt,
                _ => PollingMode::Adaptive {
                    spin: std::time::Duration::from_micros(50),
                },
            };
        }
    }
    let multi_node = machine.nodes.len() > 1;
    Ok((
        plan.workers.iter().map(|w| w.cpu).collect(),
        multi_node.then_some(plan.node),
    ))
}

/// Opens AF_XDP sockets on every queue and registers them with the program.
fn open_af_xdp(
    cfg: &EngineConfig,
    xdp: &mut XdpFilter,
    umem_node: Option<usize>,
    bind_wait: Duration,
) -> Result<Vec<Box<dyn PacketIo>>, EngineError> {
    let mut out: Vec<Box<dyn PacketIo>> = Vec::new();
    for q in 0..cfg.queues {
        let mut c = AfXdpConfig::new(cfg.iface.clone(), q);
        c.frame_count = cfg.umem_frames;
        c.ring_size = cfg.ring_size;
        c.hugepages = cfg.hugepages;
        c.numa_node = umem_node;
        // A predecessor's socket may still be closing (EBUSY).
        let deadline = StdInstant::now() + bind_wait;
        let sock = loop {
            match AfXdpSocket::open(&c) {
                Ok(s) => break s,
                Err(e) if StdInstant::now() < deadline => {
                    tracing::debug!(queue = q, error = %e, "queue not free yet; retrying");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        };
        xdp.register_xsk(q, sock.fd())?;
        tracing::info!(
            queue = q,
            zero_copy = sock.zero_copy(),
            "AF_XDP socket bound"
        );
        out.push(Box::new(sock));
    }
    Ok(out)
}

fn open_af_packet(cfg: &EngineConfig) -> Result<Vec<Box<dyn PacketIo>>, EngineError> {
    // Sockets join the fanout group in queue order (PACKET_FANOUT_QM).
    (0..cfg.queues)
        .map(|q| {
            let c = AfPacketConfig::new(cfg.iface.clone(), q, cfg.queues);
            Ok(Box::new(AfPacketSocket::open(&c)?) as Box<dyn PacketIo>)
        })
        .collect()
}

/// AF_XDP / AF_PACKET on a kernel interface, with the XDP program.
fn open_kernel(
    cfg: &mut EngineConfig,
    take_over: Option<TakeOver<'_>>,
) -> Result<(Opened, Option<Predecessor>), EngineError> {
    let mac = crate::netdev::mac_address(&cfg.iface).map_err(|source| EngineError::Interface {
        iface: cfg.iface.clone(),
        source,
    })?;
    if let Some(n) = crate::netdev::rx_queues(&cfg.iface)
        && cfg.queues < n
    {
        tracing::warn!(
            iface = %cfg.iface,
            nic_queues = n,
            workers = cfg.queues,
            "fewer workers than receive queues: VIP frames on queues without a worker go to the kernel and are lost; set `ethtool -L {} combined {}` or engine.queues = {n}",
            cfg.iface,
            cfg.queues
        );
    }
    if let Some(n) = crate::netdev::rx_queues(&cfg.iface)
        && cfg.queues > n
    {
        return Err(EngineError::Config(format!(
            "{} has {n} receive queue(s) but {} workers were asked for (engine.queues); \
             raise the NIC's channels (`ethtool -L {} combined {}`) or lower engine.queues",
            cfg.iface, cfg.queues, cfg.iface, cfg.queues
        )));
    }
    let (cpus, umem_node) = place_workers(cfg, ferrogate_numa::nic_node(&cfg.iface))?;
    let vips = vip_addrs(cfg);

    if let Some(take_over) = take_over {
        if !matches!(cfg.backend, BackendChoice::AfXdp | BackendChoice::Auto) {
            return Err(EngineError::Upgrade(format!(
                "a binary upgrade needs the af_xdp backend, not {:?}",
                cfg.backend
            )));
        }
        // Everything is loaded and checked before the predecessor lets go;
        // until our sockets are in the map, VIP frames are dropped (TCP
        // retransmits them), never passed to the kernel.
        let mut xdp = XdpFilter::load(
            &cfg.iface,
            &vips,
            VipAction::RedirectToXsk,
            FailMode::Closed,
            &cfg.filter,
        )?;
        // What this binary checks of the config beyond `compile` (a newer
        // one may be stricter) fails here, not after the hand-over.
        let mut sc = cfg.stack.clone();
        sc.net.mac = mac;
        sc.net.upstream_ports =
            PortPlan::new(cfg.upstream_port_range.clone(), cfg.queues as usize).range_of(0);
        Stack::new(sc, cfg.routes.clone(), Instant::from_micros(0))
            .map_err(|source| EngineError::Stack { worker: 0, source })?;
        let pred = take_over(cfg.queues)?;
        if let Some(t) = &pred.handed_over.xdp_counters {
            xdp.seed_counters(t)?;
        }
        xdp.attach_prepared(cfg.xdp_mode, vips.len(), VipAction::RedirectToXsk)?;
        let ios = open_af_xdp(cfg, &mut xdp, umem_node, BIND_WAIT)?;
        xdp.set_fail_mode(cfg.fail_mode)?;
        let opened = Opened {
            mac,
            cpus,
            backend: BackendKind::AfXdp,
            xdp: Some(xdp),
            ios,
            #[cfg(feature = "dpdk")]
            dpdk: None,
        };
        return Ok((opened, Some(pred)));
    }

    let (backend, xdp, ios) = match cfg.backend {
        BackendChoice::AfXdp => {
            let mut xdp = XdpFilter::attach_with_rules(
                &cfg.iface,
                cfg.xdp_mode,
                &vips,
                VipAction::RedirectToXsk,
                cfg.fail_mode,
                &cfg.filter,
            )?;
            let ios = open_af_xdp(cfg, &mut xdp, umem_node, Duration::ZERO)?;
            (BackendKind::AfXdp, Some(xdp), ios)
        }
        BackendChoice::Auto => {
            let mut xdp = XdpFilter::attach_with_rules(
                &cfg.iface,
                cfg.xdp_mode,
                &vips,
                VipAction::RedirectToXsk,
                cfg.fail_mode,
                &cfg.filter,
            )?;
            match open_af_xdp(cfg, &mut xdp, umem_node, Duration::ZERO) {
                Ok(ios) => (BackendKind::AfXdp, Some(xdp), ios),
                Err(e) => {
                    tracing::warn!(error = %e, "AF_XDP unavailable, falling back to AF_PACKET");
                    xdp.set_vip_action(VipAction::PassToKernel)?;
                    (BackendKind::AfPacket, Some(xdp), open_af_packet(cfg)?)
                }
            }
        }
        BackendChoice::Dpdk => unreachable!("opened by open_dpdk"),
        BackendChoice::AfPacket => {
            // XDP still counts and passes; AF_PACKET taps the kernel path.
            let xdp =
                match XdpFilter::attach(&cfg.iface, cfg.xdp_mode, &vips, VipAction::PassToKernel) {
                    Ok(x) => Some(x),
                    Err(e) => {
                        tracing::warn!(error = %e, "running AF_PACKET without the XDP program");
                        None
                    }
                };
            (BackendKind::AfPacket, xdp, open_af_packet(cfg)?)
        }
    };
    Ok((
        Opened {
            mac,
            cpus,
            backend,
            xdp,
            ios,
            #[cfg(feature = "dpdk")]
            dpdk: None,
        },
        None,
    ))
}

/// DPDK: EAL, port on its NUMA node, one queue per worker; no XDP.
#[cfg(feature = "dpdk")]
fn open_dpdk(cfg: &mut EngineConfig) -> Result<Opened, EngineError> {
    let float = ferrogate_numa::online_cpus().unwrap_or_default();
    let info = crate::dpdk::probe(&cfg.dpdk, &float)?;
    tracing::info!(port = info.port, name = %info.name, driver = %info.driver, node = ?info.node, max_queues = info.max_queues, "DPDK port found");
    let mac = info.mac;
    let (cpus, _) = place_workers(cfg, info.node).inspect_err(|_| crate::dpdk::eal_cleanup())?;
    // Each queue's mbufs come from the pool of its worker's node (one pool
    // per node that runs a worker); one machine-wide pool on single-node
    // machines or without a topology.
    let nodes: Vec<Option<usize>> = match ferrogate_numa::Machine::discover() {
        Ok(m) if m.nodes.len() > 1 => cpus
            .iter()
            .map(|&c| m.locate(c).map(|(n, _)| n.id))
            .collect(),
        _ => vec![None; cpus.len()],
    };
    let (port, queues) = crate::dpdk::DpdkPort::open(&cfg.dpdk, info, &nodes)?;
    let ios = queues
        .into_iter()
        .map(|q| Box::new(q) as Box<dyn PacketIo>)
        .collect();
    Ok(Opened {
        mac,
        cpus,
        backend: BackendKind::Dpdk,
        xdp: None,
        ios,
        dpdk: Some(port),
    })
}

#[cfg(not(feature = "dpdk"))]
fn open_dpdk(_cfg: &mut EngineConfig) -> Result<Opened, EngineError> {
    Err(EngineError::Config(
        "backend dpdk: this ferrogate was built without DPDK support (build with the `dpdk` feature, the default of the ferrogate binary)".into(),
    ))
}

impl Engine {
    pub fn start(cfg: EngineConfig) -> Result<Engine, EngineError> {
        Self::start_kernel(cfg, None)
    }

    /// Starts as a binary upgrade's successor: loads and checks everything,
    /// then `take_over` has the predecessor let go of the NIC queues; binds
    /// them, takes over the XDP link (and its counters), and relays the
    /// predecessor's flows to it until it is done. A failure before
    /// `take_over` leaves the predecessor untouched.
    pub fn start_successor(
        cfg: EngineConfig,
        take_over: TakeOver<'_>,
    ) -> Result<Engine, EngineError> {
        Self::start_kernel(cfg, Some(take_over))
    }

    fn start_kernel(
        cfg: EngineConfig,
        take_over: Option<TakeOver<'_>>,
    ) -> Result<Engine, EngineError> {
        if cfg.queues == 0 || cfg.queues as usize > ferrogate_ebpf::MAX_QUEUES as usize {
            return Err(EngineError::Config(format!(
                "queues must be 1..={}",
                ferrogate_ebpf::MAX_QUEUES
            )));
        }
        if cfg.vips().is_empty() {
            return Err(EngineError::Config("at least one VIP is required".into()));
        }
        PortPlan::check(&cfg.upstream_port_range, cfg.queues as usize)
            .map_err(EngineError::Config)?;
        let mut cfg = cfg;
        let cache = open_cache(&cfg, take_over.is_some());
        let (opened, predecessor) = if cfg.backend == BackendChoice::Dpdk {
            if take_over.is_some() {
                return Err(EngineError::Upgrade(
                    "a binary upgrade needs the af_xdp backend, not dpdk".into(),
                ));
            }
            (open_dpdk(&mut cfg)?, None)
        } else {
            open_kernel(&mut cfg, take_over)?
        };
        Self::start_opened(cfg, opened, cache, predecessor)
    }

    /// Starts one worker per in-memory port ([`crate::memio`]): the whole
    /// data path (filter tier in the workers, stack, proxy) with no NIC and
    /// no kernel, for the L7 ceiling bench and tests that need no root.
    /// `cfg.iface`, `backend` and `queues` are ignored; `cfg.cpus` pins the
    /// workers when it names enough CPUs. The stack's MAC is [`MEMORY_MAC`].
    pub fn start_on_memory(
        mut cfg: EngineConfig,
        ports: Vec<crate::memio::MemPort>,
    ) -> Result<Engine, EngineError> {
        if ports.is_empty() || ports.len() > ferrogate_ebpf::MAX_QUEUES as usize {
            return Err(EngineError::Config(format!(
                "1..={} memory ports",
                ferrogate_ebpf::MAX_QUEUES
            )));
        }
        if cfg.vips().is_empty() {
            return Err(EngineError::Config("at least one VIP is required".into()));
        }
        cfg.queues = ports.len() as u32;
        PortPlan::check(&cfg.upstream_port_range, ports.len()).map_err(EngineError::Config)?;
        let (cpus, _) = place_workers(&mut cfg, None)?;
        let cache = open_cache(&cfg, false);
        let opened = Opened {
            mac: MEMORY_MAC,
            cpus,
            backend: BackendKind::Memory,
            xdp: None,
            ios: ports
                .into_iter()
                .map(|p| Box::new(p) as Box<dyn PacketIo>)
                .collect(),
            #[cfg(feature = "dpdk")]
            dpdk: None,
        };
        Self::start_opened(cfg, opened, cache, None)
    }

    fn start_opened(
        cfg: EngineConfig,
        opened: Opened,
        cache: Arc<EdgeCache>,
        predecessor: Option<Predecessor>,
    ) -> Result<Engine, EngineError> {
        let Opened {
            mac,
            cpus,
            backend,
            xdp,
            ios,
            ..
        } = opened;
        #[cfg(feature = "dpdk")]
        let dpdk_port = opened.dpdk;
        tracing::info!(
            backend = %backend,
            iface = %cfg.iface,
            queues = cfg.queues,
            xdp_mode = ?xdp.as_ref().map(|x| x.mode()),
            "packet backend selected"
        );
        let vips = vip_addrs(&cfg);
        // Without XDP, the filter tier runs in the workers.
        let soft_filter =
            if xdp.is_none() && matches!(backend, BackendKind::Dpdk | BackendKind::Memory) {
                let mut index = RuleIndex::default();
                let rules = SwRules::compile(&cfg.filter, &vips, &mut index, 0)
                    .map_err(EngineError::Filter)?;
                let blocked = Arc::new(BlockedSources::default());
                Some(SoftFilter {
                    rules: Arc::new(ArcSwap::from_pointee(rules)),
                    buckets: Arc::new(Buckets::with_blocked(blocked.clone())),
                    blocked,
                    counters: (0..cfg.queues)
                        .map(|_| Arc::new(FilterCounters::default()))
                        .collect(),
                    index,
                    vips: vips.clone(),
                })
            } else {
                None
            };

        let workers_n = cfg.queues as usize;
        let ports = PortPlan::new(cfg.upstream_port_range.clone(), workers_n);
        let routes = Arc::new(ArcSwap::from(cfg.routes.clone()));
        let epoch = Arc::new(AtomicU64::new(0));
        let shutdown = Arc::new(AtomicBool::new(false));
        let draining = Arc::new(AtomicBool::new(false));
        let clock_start = StdInstant::now();
        // The workers' clocks count µs from `clock_start`: the cache maps
        // them to wall time (HTTP dates) and to std's monotonic clock.
        let anchor = ClockAnchor {
            mono: clock_start,
            wall: std::time::SystemTime::now()
                .checked_sub(clock_start.elapsed())
                .unwrap_or(std::time::UNIX_EPOCH),
        };
        let mut meshes = handoff::mesh(workers_n, 1024).map_err(EngineError::Waker)?;
        let mut engine = Engine {
            started: Started {
                iface: cfg.iface.clone(),
                queues: cfg.queues,
                vips: cfg.vips().to_vec(),
                access_log: cfg.access_log_queue > 0,
                routes: cfg.routes.clone(),
                tcp: TcpSettings::of(&cfg.stack.net),
                upstream_port_range: cfg.upstream_port_range.clone(),
                cache: CacheShape::of(&cfg),
                dpdk: cfg.dpdk.clone(),
            },
            backend,
            xdp,
            workers: Vec::new(),
            stats: Vec::new(),
            shutdown: shutdown.clone(),
            draining: draining.clone(),
            routes: routes.clone(),
            epoch: epoch.clone(),
            access: Vec::new(),
            clock_start,
            cache: cache.clone(),
            soft_filter,
            quota: Arc::new(Quota::default()),
            deny: DenySet::default(),
            handovers: Vec::new(),
            handed_over: false,
            relay: None,
            quic_generation: 0,
            #[cfg(feature = "dpdk")]
            dpdk: dpdk_port,
        };
        engine.deny.set_rules(&cfg.filter);
        let mut taps = exception_taps(&cfg, backend, mac, workers_n, engine.soft_filter.is_some())?;
        let held_by_predecessor: Vec<u16> = predecessor
            .iter()
            .flat_map(|p| p.handed_over.held_ports.iter().flatten().copied())
            .collect();
        engine.relay = predecessor.as_ref().map(|p| p.relay.clone());
        // A successor's HTTP/3 connection ids carry the other generation.
        engine.quic_generation = predecessor
            .as_ref()
            .map_or(0, |p| (p.handed_over.quic_generation & 1) ^ 1);
        for (id, io) in ios.into_iter().enumerate().rev() {
            let mut sc = cfg.stack.clone();
            sc.net.mac = mac;
            sc.net.upstream_ports = ports.range_of(id);
            sc.worker = u8::try_from(id).expect("config allows at most MAX_QUEUES (64) workers");
            sc.quic_generation = engine.quic_generation;
            if io.checksum_offload() {
                sc.net.verify_rx_checksums = false;
                sc.net.tx_checksum_offload = true;
            }
            // Differs per start (wall clock, pid): request ids, and where
            // the upstream port allocator begins.
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            sc.net.random_seed =
                (0x9e37_79b9_7f4a_7c15 ^ (id as u64) ^ wall ^ u64::from(std::process::id()) << 32)
                    .wrapping_mul(0xbf58_476d_1ce4_e5b9);
            let mut stack = Stack::new(sc, cfg.routes.clone(), Instant::from_micros(0))
                .map_err(|source| EngineError::Stack { worker: id, source })?;
            stack.set_quota(engine.quota.clone());
            let relay = predecessor.as_ref().map(|p| {
                // Every worker's: the two engines' port plans may differ.
                stack.begin_port_split_successor(&held_by_predecessor);
                p.relay.successor_link(id as u32)
            });
            let handover = Arc::new(HandoverSlot::default());
            engine.handovers.push(handover.clone());
            stack.set_cache(cache.clone(), anchor);
            if cfg.access_log_queue > 0 {
                let q = Arc::new(AccessQueue::new(cfg.access_log_queue));
                stack.set_access_log(AccessSink::new(q.clone()));
                engine.access.push(q);
            }
            let cell = Arc::new(StatsCell::default());
            engine.stats.push(cell.clone());
            let worker = Worker {
                id,
                queue: id as u32,
                cpu: cpus[id],
                io,
                stack,
                handoff: meshes.pop().expect("one mesh end per worker"),
                ports: ports.clone(),
                h3_ports: cfg
                    .routes
                    .listeners
                    .iter()
                    .filter(|l| l.http3.is_some())
                    .map(|l| l.port)
                    .collect(),
                quic_generation: engine.quic_generation,
                routes: routes.clone(),
                epoch: epoch.clone(),
                shutdown: shutdown.clone(),
                draining: draining.clone(),
                stats: cell,
                batch: cfg.batch_size,
                polling: cfg.polling,
                mac,
                clock_start,
                filter: engine.soft_filter.as_ref().map(|f| WorkerFilter {
                    rules: arc_swap::Cache::new(f.rules.clone()),
                    buckets: f.buckets.clone(),
                    counters: f.counters[id].clone(),
                }),
                exception: taps.pop().flatten(),
                handover,
                relay,
            };
            let h = std::thread::Builder::new()
                .name(format!("fg-worker-{id}"))
                .spawn(move || worker.run())
                .map_err(EngineError::Spawn)?;
            engine.workers.push(h);
        }
        engine.stats.reverse();
        engine.access.reverse();
        engine.handovers.reverse();
        if predecessor.is_none() {
            engine.attach_disk_tier();
        }
        Ok(engine)
    }

    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// Each worker's access-log queue (index = worker); empty when the
    /// access log is off. The writer drains them off the data path.
    pub fn access_queues(&self) -> &[Arc<AccessQueue>] {
        &self.access
    }

    /// When the workers' clocks started: `AccessRecord::at_us` counts from
    /// here.
    pub fn clock_start(&self) -> StdInstant {
        self.clock_start
    }

    /// The response cache the workers share.
    pub fn cache(&self) -> &Arc<EdgeCache> {
        &self.cache
    }

    /// Purges cached objects (every worker sees it at once); returns how
    /// many objects it hit in memory and files on disk.
    pub fn purge(&self, p: &Purge) -> Result<PurgeCount, PurgeError> {
        self.cache.purge(p)
    }

    /// Swaps in a new routing snapshot; workers pick it up between batches.
    pub fn apply_routes(&self, routes: Arc<RouteTable>) {
        self.routes.store(routes);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Applies a reloaded configuration: filter rules (atomically, in XDP)
    /// and routes. Interface, queues, VIPs and listeners need a restart; a
    /// change to them is reported and ignored.
    pub fn reload(&mut self, cfg: &EngineConfig) -> Result<ReloadReport, EngineError> {
        let mut ignored = Vec::new();
        if cfg.iface != self.started.iface {
            ignored.push("engine.interface");
        }
        if cfg.queues != self.started.queues {
            ignored.push("engine.queues");
        }
        if cfg.vips() != self.started.vips.as_slice() {
            ignored.push("vips");
        }
        let ports = |t: &RouteTable| t.listeners.iter().map(|l| l.port).collect::<Vec<_>>();
        if ports(&cfg.routes) != ports(&self.started.routes) {
            ignored.push("listeners (ports)");
        }
        let udp_ports = |t: &RouteTable| t.udp_listeners.iter().map(|l| l.port).collect::<Vec<_>>();
        if udp_ports(&cfg.routes) != udp_ports(&self.started.routes) {
            ignored.push("listeners (UDP ports)");
        }
        // A listener gaining or losing `http3` changes the UDP ports the
        // stacks claim (set once, at start), as a UDP listener's would.
        let h3_ports = |t: &RouteTable| {
            t.listeners
                .iter()
                .filter(|l| l.http3.is_some())
                .map(|l| l.port)
                .collect::<Vec<_>>()
        };
        if h3_ports(&cfg.routes) != h3_ports(&self.started.routes) {
            ignored.push("listeners (HTTP/3 ports)");
        }
        if (cfg.access_log_queue > 0) != self.started.access_log {
            ignored.push("access_log (on/off)");
        }
        if TcpSettings::of(&cfg.stack.net) != self.started.tcp {
            ignored.push("engine.tcp_buffer*, engine.tcp_timestamps");
        }
        if cfg.upstream_port_range != self.started.upstream_port_range {
            ignored.push("engine.upstream_port_range");
        }
        if cfg.dpdk != self.started.dpdk {
            // The EAL, the port and the exception TAP are set up once.
            ignored.push("engine.dpdk");
        }
        let cache = CacheShape::of(cfg);
        if cache != self.started.cache {
            match &cfg.cache.disk {
                // A disk tier where none ran: opened (and scanned) in the
                // background, the store serving on meanwhile.
                Some(disk) if self.started.cache.only_adds_disk(&cache) => {
                    self.spawn_disk_attach(disk.clone());
                    self.started.cache = cache;
                }
                // The store and its objects outlive reloads; a new size
                // or seed would mean a new, empty store.
                _ => ignored.push("cache"),
            }
        }
        let filter = match (self.xdp.as_mut(), self.soft_filter.as_mut()) {
            (Some(x), _) => {
                x.set_fail_mode(cfg.fail_mode)?;
                Some(x.apply_rules(&cfg.filter)?)
            }
            (None, Some(sf)) => {
                let started = std::time::Instant::now();
                let generation = sf.rules.load().generation + 1;
                let rules = SwRules::compile(&cfg.filter, &sf.vips, &mut sf.index, generation)
                    .map_err(EngineError::Filter)?;
                sf.rules.store(Arc::new(rules));
                Some(ferrogate_ebpf::ApplyReport {
                    generation,
                    prefixes: cfg.filter.prefix_count(),
                    writes: 0,
                    elapsed: started.elapsed(),
                })
            }
            (None, None) => None,
        };
        self.deny.set_rules(&cfg.filter);
        self.apply_routes(cfg.routes.clone());
        Ok(ReloadReport { filter, ignored })
    }

    /// Denies the sources L7 limits escalated since the last call (in XDP,
    /// or the Rust filter) and lifts expired denies. Call it often (the
    /// run loop does, every 50 ms at most): escalations wait in a bounded
    /// queue until then.
    pub fn tick(&mut self) {
        let now = StdInstant::now();
        let target = match (self.xdp.as_mut(), self.soft_filter.as_ref()) {
            (Some(x), _) => DenyTarget::Xdp(x),
            (None, Some(sf)) => DenyTarget::Soft(&sf.blocked),
            // No filter tier (memory ports): escalations are only counted.
            (None, None) => DenyTarget::None,
        };
        self.deny.tick(&self.quota, target, now);
    }

    /// Lifts `source`'s escalation deny now; false if it had none.
    pub fn unblock(&mut self, source: IpAddr) -> bool {
        let target = match (self.xdp.as_mut(), self.soft_filter.as_ref()) {
            (Some(x), _) => DenyTarget::Xdp(x),
            (None, Some(sf)) => DenyTarget::Soft(&sf.blocked),
            (None, None) => DenyTarget::None,
        };
        self.deny.lift(source, target)
    }

    /// Sources denied by escalation, now.
    pub fn denied_sources(&self) -> &[DeniedSource] {
        self.deny.denied()
    }

    /// The snapshot version each worker last reported: a cheap read (no
    /// XDP map reads, no copies of pool counters) for apply's wait loop.
    pub fn worker_versions(&self) -> Vec<u64> {
        self.stats
            .iter()
            .map(|c| c.read().snapshot_version)
            .collect()
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            backend: self.backend,
            workers: self.stats.iter().map(|c| c.read()).collect(),
            xdp: match &self.soft_filter {
                Some(sf) => {
                    let mut total = ferrogate_ebpf::XdpCounters::default();
                    for c in &sf.counters {
                        c.add_to(&mut total);
                    }
                    Some(total)
                }
                None => self.xdp.as_ref().and_then(|x| x.counters().ok()),
            },
            rules: match &self.soft_filter {
                Some(sf) => sf
                    .index
                    .ids()
                    .into_iter()
                    .map(|(id, slot)| {
                        let mut v = ferrogate_ebpf::Verdict::default();
                        for c in &sf.counters {
                            let r = c.rule(slot);
                            v.packets += r.packets;
                            v.bytes += r.bytes;
                        }
                        (id, v)
                    })
                    .collect(),
                None => self
                    .xdp
                    .as_ref()
                    .and_then(|x| x.rule_counters().ok())
                    .unwrap_or_default(),
            },
            filter_generation: match &self.soft_filter {
                Some(sf) => Some(sf.rules.load().generation),
                None => self.xdp.as_ref().map(|x| x.generation()),
            },
            port: self.port_stats(),
            escalation: EscalationStats {
                denied_now: self.deny.denied().len() as u64,
                escalated: self.deny.escalated,
                refused_allowed: self.deny.refused_allowed,
                failed: self.deny.failed,
                queue_dropped: self.quota.escalations().dropped(),
            },
            snapshot_version: self.routes.load().version,
            cache: self.cache.stats(),
            cache_disk: self.cache.disk_stats(),
            plugins: plugin_readings(&self.routes.load()),
            upstreams: self
                .stats
                .iter()
                .fold(Default::default(), |mut acc: UpstreamStats, c| {
                    acc.add(&c.read_l7().0);
                    acc
                }),
            routes: self
                .stats
                .iter()
                .fold(Default::default(), |mut acc: RouteCounters, c| {
                    acc.add(&c.read_l7().1);
                    acc
                }),
        }
    }

    /// The DPDK port's counters (`rte_eth_stats`, xstats); empty otherwise.
    fn port_stats(&self) -> Vec<(String, u64)> {
        #[cfg(feature = "dpdk")]
        if let Some(p) = &self.dpdk {
            return p.stats();
        }
        Vec::new()
    }

    /// A binary upgrade's predecessor lets go of its NIC queues: the XDP
    /// link is pinned with VIP frames dropped while no socket is bound (the
    /// successor takes the link over), each worker swaps its AF_XDP socket
    /// for its queue's port on `relay`, and the ports they hold and the XDP
    /// counters are returned for the successor. The engine then serves its
    /// flows through the successor; drain it next.
    pub fn hand_over(&mut self, relay: &Arc<RelayShm>) -> Result<HandedOver, EngineError> {
        if self.handed_over {
            return Err(EngineError::Upgrade(
                "the NIC queues were handed over already".into(),
            ));
        }
        // Its successor would take its predecessor's QUIC generation (and
        // the predecessor's flows would have nobody to go to).
        if self.relaying() {
            return Err(EngineError::Upgrade(
                "this engine still relays for its own predecessor: upgrade again once that upgrade completed".into(),
            ));
        }
        if self.backend != BackendKind::AfXdp {
            return Err(EngineError::Upgrade(format!(
                "a binary upgrade needs the af_xdp backend; this engine runs {}",
                self.backend
            )));
        }
        if relay.queues() as usize != self.handovers.len() {
            return Err(EngineError::Upgrade(format!(
                "the successor has {} queue(s), this engine {}: start it with the same engine.queues",
                relay.queues(),
                self.handovers.len()
            )));
        }
        let Some(xdp) = self.xdp.as_mut() else {
            return Err(EngineError::Upgrade("no XDP program to hand over".into()));
        };
        let configured = xdp.fail_mode();
        xdp.set_fail_mode(FailMode::Closed)?;
        if xdp.pinned().is_none() {
            xdp.set_fail_mode(configured)?;
            return Err(EngineError::Upgrade(
                "the XDP link could not be pinned for the successor (is bpffs mounted at /sys/fs/bpf?)".into(),
            ));
        }
        for (q, slot) in self.handovers.iter().enumerate() {
            slot.offer(Box::new(relay.predecessor_port(q as u32)));
        }
        // From the first offer on there is no way back: a worker that is
        // late swaps when it gets there (the successor's bind waits for
        // its socket), its held ports unknown (parity still keeps the two
        // engines apart on every port it opens from now on).
        let deadline = StdInstant::now() + HANDOVER_WAIT;
        let mut held = Vec::with_capacity(self.handovers.len());
        for (q, slot) in self.handovers.iter().enumerate() {
            loop {
                if let Some(h) = slot.held() {
                    held.push(h);
                    break;
                }
                if StdInstant::now() >= deadline {
                    tracing::error!(
                        worker = q,
                        "a worker did not let go of its queue in time; handing over without its ports"
                    );
                    held.push(Vec::new());
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.handed_over = true;
        // Read last: what the program counted until the successor attaches
        // is all but these few milliseconds.
        let xdp = self.xdp.take().expect("checked above");
        let xdp_counters = match xdp.counter_totals() {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the XDP counters for the successor; they restart at zero");
                None
            }
        };
        // Closes our link fd only: the pin keeps the program attached.
        drop(xdp);
        tracing::info!(queues = held.len(), "NIC queues handed to the successor");
        Ok(HandedOver {
            held_ports: held,
            xdp_counters,
            quic_generation: self.quic_generation,
        })
    }

    /// Whether this engine handed its NIC queues to a successor.
    pub fn handed_over(&self) -> bool {
        self.handed_over
    }

    /// A successor whose predecessor still serves flows through it: its
    /// frames come in and go out through this engine's queues.
    pub fn relaying(&self) -> bool {
        self.relay.is_some()
    }

    /// A successor's predecessor is gone (it exited or died without
    /// closing its relay): the workers stop relaying, and frames of its
    /// flows meet our stack (a reset) rather than a dead ring.
    pub fn predecessor_gone(&mut self) {
        if let Some(r) = self.relay.take() {
            r.close_all();
        }
        self.attach_disk_tier();
    }

    /// A successor's disk tier, once the predecessor let go of the
    /// directory: opened (and scanned) on a thread of its own, the workers
    /// serve from memory meanwhile.
    fn attach_disk_tier(&self) {
        if let Some(cfg) = self.cache.settings.disk.clone() {
            self.spawn_disk_attach(cfg);
        }
    }

    /// Opens the disk tier `cfg` on a thread of its own (a scan of a big
    /// directory must not hold the caller); none if the cache has one.
    fn spawn_disk_attach(&self, cfg: ferrogate_proxy::cache::core::DiskConfig) {
        if self.cache.disk().is_some() {
            return;
        }
        // A reload that adds the tier: purges from now until the attach
        // are written down too.
        journal_purges_until_attached(&self.cache, &cfg.dir);
        let cache = self.cache.clone();
        let spawned = std::thread::Builder::new()
            .name("fg-disk-attach".into())
            .spawn(move || match cache.attach_disk(cfg) {
                Ok(()) => {
                    tracing::info!("the response cache's disk tier is attached");
                    if let Some(d) = cache.disk_stats()
                        && d.pending_unreadable > 0
                    {
                        tracing::warn!(
                            applied = d.pending_applied,
                            "purges.pending in the cache directory ended in an unreadable record: a torn last append was ignored, or, if it was unreadable beyond that, every file of the disk tier was dropped"
                        );
                    }
                }
                Err(e) => tracing::error!(error = %e, "the response cache's disk tier did not open; serving with the memory tier only"),
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot attach the disk tier");
        }
    }

    /// Starts a graceful stop on every worker (`Stack::begin_drain`): new
    /// connections are refused, in-flight requests are answered, keep-alive
    /// and HTTP/2 connections close once done. XDP keeps passing host
    /// traffic. Poll [`Engine::drained`], then [`Engine::shutdown`].
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Every worker drains and has no client connection left.
    pub fn drained(&self) -> bool {
        self.stats.iter().all(|c| {
            let w = c.read();
            w.draining && w.drained
        })
    }

    /// Client connections still open (summed over workers' last reports).
    pub fn open_connections(&self) -> u64 {
        self.stats
            .iter()
            .map(|c| c.read().stack.active_connections)
            .sum()
    }

    /// Whether every worker thread is still running.
    pub fn healthy(&self) -> bool {
        self.workers.iter().all(|w| !w.is_finished())
    }

    /// How the workers that ended on their own ended, for the log once
    /// [`Self::healthy`] is false: each is joined and reported as
    /// `fg-worker-N panicked: <message>` or `fg-worker-N returned`.
    pub fn reap_finished_workers(&mut self) -> Vec<String> {
        let (done, running): (Vec<_>, Vec<_>) =
            self.workers.drain(..).partition(|w| w.is_finished());
        self.workers = running;
        done.into_iter()
            .map(|w| {
                let name = w.thread().name().unwrap_or("worker").to_string();
                match w.join() {
                    Ok(()) => format!("{name} returned"),
                    Err(p) => {
                        let msg = p
                            .downcast_ref::<&str>()
                            .map(|m| m.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "(not a string)".into());
                        format!("{name} panicked: {msg}")
                    }
                }
            })
            .collect()
    }

    /// Stops the workers, then detaches XDP (so no frame is redirected to a
    /// closed socket in between: unbound queues fall back to the kernel).
    pub fn shutdown(mut self) -> Result<EngineStats, EngineError> {
        self.stop_workers();
        let stats = self.stats();
        if let Some(x) = self.xdp.take() {
            x.detach()?;
        }
        #[cfg(feature = "dpdk")]
        drop(self.dpdk.take());
        Ok(stats)
    }

    fn stop_workers(&mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop_workers();
    }
}
