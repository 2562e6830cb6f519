//! DPDK backend (feature `dpdk`): the EAL, one port, one mempool per NUMA
//! node of the workers, one rx/tx queue pair per worker.
//!
//! - **EAL**: initialised once per process from `[engine.dpdk]`
//!   ([`eal_args`] builds the argument list), cleaned up when the port
//!   closes. The main lcore floats over every online CPU (`--lcores
//!   0@(cpus)`), so the EAL pins nothing; workers are the engine's own pinned
//!   threads and register with `rte_thread_register` on their first burst
//!   (so the mempool's per-lcore cache works for them). `--in-memory` unless
//!   a `file_prefix` is configured, so parallel engines and tests never clash.
//! - **RX** is zero-copy: the stack reads the frame straight from the mbuf's
//!   data room during the callback, then the burst is freed in bulk.
//! - **TX** copies each frame into a fresh mbuf from the worker's node-local
//!   pool and sends the batch with one `rte_eth_tx_burst` per flush.
//!
//! `unsafe` is confined to this file's FFI calls and mbuf pointer reads.

use std::ffi::{CStr, CString, c_char, c_int};
use std::io;
use std::os::fd::RawFd;
use std::sync::Mutex;
use std::time::Duration;

use ferrogate_dpdk_sys as sys;

use crate::config::DpdkSettings;
use crate::io::{BackendKind, IoStats, PacketIo};

/// Largest rx burst.
const RX_BURST: usize = 64;
/// Frames buffered for one `rte_eth_tx_burst`.
const TX_BATCH: usize = 64;

/// What can go wrong opening DPDK; one line each, naming what to do.
#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    #[error(
        "DPDK: no free hugepages ({detail}); reserve 2 MB pages (`echo 512 > /proc/sys/vm/nr_hugepages`, \
         or FG_HUGEPAGES=512 ./vendor-setup.sh) or set engine.dpdk.hugepages = false"
    )]
    NoHugepages { detail: String },
    #[error("DPDK: EAL initialisation failed: {reason} (EAL arguments: {args})")]
    Eal { reason: String, args: String },
    #[error("DPDK: the EAL was already cleaned up in this process; it cannot start twice")]
    EalDone,
    #[error(
        "DPDK: port {name:?} not found{hint}; ports DPDK probed: [{available}] (check engine.dpdk.vdevs / engine.dpdk.port; a PCI NIC must be bound to vfio-pci)"
    )]
    NoPort {
        name: String,
        available: String,
        hint: &'static str,
    },
    #[error("DPDK: no port at all (no engine.dpdk.vdevs and no NIC bound to a DPDK driver)")]
    NoPorts,
    #[error("DPDK: port {port} ({name}): {what} failed: {reason}")]
    Port {
        port: u16,
        name: String,
        what: &'static str,
        reason: String,
    },
    #[error(
        "DPDK: port {name} has {max} queue(s) but {want} workers were asked for (engine.queues; for net_af_packet add qpairs={want} to the vdev)"
    )]
    Queues { name: String, max: u16, want: u32 },
    #[error("DPDK: invalid argument: {0}")]
    Arg(String),
}

fn strerror(errno: c_int) -> String {
    let e = errno.abs();
    // SAFETY: rte_strerror returns a pointer to a static or thread-local
    // NUL-terminated string that stays valid until the next call on this thread.
    let s = unsafe { CStr::from_ptr(sys::rte_strerror(e)) };
    format!("{} (errno {e})", s.to_string_lossy())
}

fn rte_errno() -> c_int {
    // SAFETY: reads the calling thread's rte_errno through our C helper.
    unsafe { sys::fg_rte_errno() }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EalState {
    Uninit,
    Up,
    Done,
}

static EAL: Mutex<EalState> = Mutex::new(EalState::Uninit);

/// The EAL argument list for `settings` (argv[0] included).
pub fn eal_args(s: &DpdkSettings, cpus: &[usize]) -> Vec<String> {
    let mut a = vec!["ferrogate".to_string()];
    let cpu_list = if cpus.is_empty() {
        "0".to_string()
    } else {
        cpus.iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    a.push(format!("--lcores=0@({cpu_list})"));
    match &s.file_prefix {
        Some(p) => a.push(format!("--file-prefix={p}")),
        // --no-huge implies legacy memory, which --in-memory refuses;
        // --no-shconf is the part of --in-memory that matters then.
        None if !s.hugepages => a.push("--no-shconf".into()),
        None => a.push("--in-memory".into()),
    }
    if s.hugepages {
        if let Some(d) = &s.huge_dir {
            a.push(format!("--huge-dir={d}"));
        }
        if s.memory_mb > 0 {
            a.push(format!("-m{}", s.memory_mb));
        }
    } else {
        a.push("--no-huge".into());
        a.push(format!(
            "-m{}",
            if s.memory_mb > 0 { s.memory_mb } else { 512 }
        ));
    }
    a.push("--no-telemetry".into());
    a.push("--log-level=notice".into());
    for v in &s.vdevs {
        a.push(format!("--vdev={v}"));
    }
    match s.port.as_deref() {
        Some(p) if is_pci_address(p) => a.push(format!("-a{p}")),
        // Only virtual devices: do not probe (and grab) PCI NICs.
        _ if !s.vdevs.is_empty() => a.push("--no-pci".into()),
        _ => {}
    }
    a.extend(s.eal_args.iter().cloned());
    a
}

fn is_pci_address(s: &str) -> bool {
    // dddd:bb:dd.f or bb:dd.f
    let parts: Vec<&str> = s.split([':', '.']).collect();
    (parts.len() == 3 || parts.len() == 4)
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Free 2 MB (or any size) hugepages, summed over the sizes the kernel offers.
fn free_hugepages() -> u64 {
    let Ok(dir) = std::fs::read_dir("/sys/kernel/mm/hugepages") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("free_hugepages")).ok())
        .filter_map(|s| s.trim().parse::<u64>().ok())
        .sum()
}

/// Starts the EAL once per process (the engine does it in [`probe`]; a
/// benchmark may start it first to create ports of its own).
pub fn eal_init(s: &DpdkSettings, cpus: &[usize]) -> Result<(), DpdkError> {
    let mut st = EAL.lock().unwrap_or_else(|e| e.into_inner());
    match *st {
        EalState::Up => return Ok(()),
        EalState::Done => return Err(DpdkError::EalDone),
        EalState::Uninit => {}
    }
    if s.hugepages && free_hugepages() == 0 {
        return Err(DpdkError::NoHugepages {
            detail: "/sys/kernel/mm/hugepages/*/free_hugepages is 0".into(),
        });
    }
    let args = eal_args(s, cpus);
    let joined = args.join(" ");
    let cargs: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_str()).map_err(|_| DpdkError::Arg(a.clone())))
        .collect::<Result<_, _>>()?;
    // The EAL may keep pointers into argv: the strings live for the process.
    let cargs: &'static [CString] = Box::leak(cargs.into_boxed_slice());
    let mut argv: Vec<*mut c_char> = cargs.iter().map(|c| c.as_ptr() as *mut c_char).collect();
    argv.push(std::ptr::null_mut());
    let argv: &'static mut [*mut c_char] = Box::leak(argv.into_boxed_slice());
    tracing::info!(args = %joined, "starting the DPDK EAL");
    // SAFETY: argc/argv describe NUL-terminated strings that live for the
    // rest of the process; the EAL is started at most once (guarded by EAL).
    let rc = unsafe { sys::rte_eal_init(cargs.len() as c_int, argv.as_mut_ptr()) };
    if rc < 0 {
        let errno = rte_errno();
        // EAL initialisation is not retryable once it failed half way.
        *st = EalState::Done;
        drop(st);
        eal_cleanup();
        if s.hugepages && (errno == libc::EACCES || errno == libc::ENOMEM) {
            return Err(DpdkError::NoHugepages {
                detail: strerror(errno),
            });
        }
        return Err(DpdkError::Eal {
            reason: strerror(errno),
            args: joined,
        });
    }
    *st = EalState::Up;
    tracing::info!("DPDK EAL up");
    Ok(())
}

/// Cleans up the EAL if it is up (once per process) and removes the empty
/// runtime directory it leaves behind. Called when the port closes, and on
/// every start-up error after the EAL started.
pub fn eal_cleanup() {
    let mut st = EAL.lock().unwrap_or_else(|e| e.into_inner());
    if *st == EalState::Up {
        // SAFETY: every port and pool is closed/freed and every worker has
        // unregistered; nothing uses DPDK after this.
        unsafe { sys::rte_eal_cleanup() };
        *st = EalState::Done;
    }
    // With --in-memory/--no-shconf the directory is empty; remove_dir never
    // removes a non-empty one, so another process's files stay.
    for d in ["/var/run/dpdk/rte", "/var/run/dpdk"] {
        let _ = std::fs::remove_dir(d);
    }
}

fn port_name(port: u16) -> String {
    let mut buf = [0 as c_char; sys::RTE_ETH_NAME_MAX_LEN as usize];
    // SAFETY: buf has RTE_ETH_NAME_MAX_LEN bytes as the API requires.
    let rc = unsafe { sys::rte_eth_dev_get_name_by_port(port, buf.as_mut_ptr()) };
    if rc != 0 {
        return format!("port{port}");
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn available_ports() -> Vec<(u16, String)> {
    let mut out = Vec::new();
    let mut p: u64 = 0;
    loop {
        // SAFETY: plain query over the port table.
        let next = unsafe { sys::rte_eth_find_next_owned_by(p as u16, 0) };
        if next >= sys::RTE_MAX_ETHPORTS as u64 {
            break;
        }
        out.push((next as u16, port_name(next as u16)));
        p = next + 1;
    }
    out
}

/// A vdev's name is its first comma-separated field.
fn vdev_name(v: &str) -> &str {
    v.split(',').next().unwrap_or(v).trim()
}

/// Where the port lives and what the engine learned opening it.
pub struct PortInfo {
    pub port: u16,
    pub name: String,
    pub mac: [u8; 6],
    /// The port's NUMA node (None: unknown / any).
    pub node: Option<usize>,
    pub driver: String,
    pub max_queues: u16,
    pub rss: bool,
}

/// Starts the EAL (once per process) and finds the port; nothing is
/// configured yet, so the caller can place workers on the port's node first.
pub fn probe(s: &DpdkSettings, cpus: &[usize]) -> Result<PortInfo, DpdkError> {
    eal_init(s, cpus)?;
    find_port(s).inspect_err(|_| eal_cleanup())
}

fn find_port(s: &DpdkSettings) -> Result<PortInfo, DpdkError> {
    let wanted = s
        .port
        .clone()
        .or_else(|| s.vdevs.first().map(|v| vdev_name(v).to_string()));
    let ports = available_ports();
    let (port, name) = match wanted {
        Some(name) => {
            let c = CString::new(name.as_str()).map_err(|_| DpdkError::Arg(name.clone()))?;
            let mut id: u16 = 0;
            // SAFETY: NUL-terminated name and a valid out pointer.
            let rc = unsafe { sys::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) };
            if rc != 0 {
                let hint = if s.vdevs.iter().any(|v| vdev_name(v) == name) {
                    " — the vdev did not probe: see the EAL line above (e.g. its iface does not exist in this namespace)"
                } else {
                    ""
                };
                return Err(DpdkError::NoPort {
                    hint,
                    name,
                    available: ports
                        .iter()
                        .map(|(_, n)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            (id, name)
        }
        None => ports.first().cloned().ok_or(DpdkError::NoPorts)?,
    };
    let mut info = sys::rte_eth_dev_info::default();
    // SAFETY: valid port id and out pointer.
    let rc = unsafe { sys::rte_eth_dev_info_get(port, &mut info) };
    if rc != 0 {
        return Err(DpdkError::Port {
            port,
            name,
            what: "rte_eth_dev_info_get",
            reason: strerror(rc),
        });
    }
    let driver = if info.driver_name.is_null() {
        String::new()
    } else {
        // SAFETY: driver_name is a static NUL-terminated string of the PMD.
        unsafe { CStr::from_ptr(info.driver_name) }
            .to_string_lossy()
            .into_owned()
    };
    let mut addr = sys::rte_ether_addr::default();
    // SAFETY: valid port id and out pointer.
    let rc = unsafe { sys::rte_eth_macaddr_get(port, &mut addr) };
    if rc != 0 {
        return Err(DpdkError::Port {
            port,
            name,
            what: "rte_eth_macaddr_get",
            reason: strerror(rc),
        });
    }
    // SAFETY: valid port id.
    let socket = unsafe { sys::rte_eth_dev_socket_id(port) };
    Ok(PortInfo {
        port,
        name,
        mac: addr.addr_bytes,
        node: (socket >= 0).then_some(socket as usize),
        driver,
        max_queues: info.max_rx_queues.min(info.max_tx_queues),
        rss: info.flow_type_rss_offloads != 0,
    })
}

// rte_ethdev.h's RTE_ETH_RSS_* bits (macros over RTE_BIT64 bindgen cannot see).
const RSS_IPV4: u64 = 1 << 2;
const RSS_FRAG_IPV4: u64 = 1 << 3;
const RSS_NONFRAG_IPV4_TCP: u64 = 1 << 4;
const RSS_NONFRAG_IPV4_UDP: u64 = 1 << 5;
const RSS_NONFRAG_IPV4_OTHER: u64 = 1 << 7;
const RSS_IPV6: u64 = 1 << 8;
const RSS_FRAG_IPV6: u64 = 1 << 9;
const RSS_NONFRAG_IPV6_TCP: u64 = 1 << 10;
const RSS_NONFRAG_IPV6_UDP: u64 = 1 << 11;
const RSS_NONFRAG_IPV6_OTHER: u64 = 1 << 13;
const RSS_WANTED: u64 = RSS_IPV4
    | RSS_FRAG_IPV4
    | RSS_NONFRAG_IPV4_TCP
    | RSS_NONFRAG_IPV4_UDP
    | RSS_NONFRAG_IPV4_OTHER
    | RSS_IPV6
    | RSS_FRAG_IPV6
    | RSS_NONFRAG_IPV6_TCP
    | RSS_NONFRAG_IPV6_UDP
    | RSS_NONFRAG_IPV6_OTHER;

/// The configured and started port; owns the mempools. Dropping it stops and
/// closes the port, frees the pools and cleans up the EAL — after every
/// queue ([`DpdkQueue`]) was dropped (the engine joins its workers first).
pub struct DpdkPort {
    info: PortInfo,
    pools: Vec<(usize, *mut sys::rte_mempool)>,
    started: bool,
}

// SAFETY: the raw mempool pointers are only used to free the pools on drop;
// DPDK mempools are safe to use from any thread.
unsafe impl Send for DpdkPort {}
// SAFETY: `&DpdkPort` only reads port statistics, which DPDK allows from any thread.
unsafe impl Sync for DpdkPort {}

impl DpdkPort {
    /// Configures `queues` rx/tx queue pairs (RSS over IP/TCP/UDP when more
    /// than one and the port supports it), one mempool per NUMA node in
    /// `queue_nodes` (the node of each queue's worker), and starts the port.
    pub fn open(
        s: &DpdkSettings,
        info: PortInfo,
        queue_nodes: &[Option<usize>],
    ) -> Result<(DpdkPort, Vec<DpdkQueue>), DpdkError> {
        let want = queue_nodes.len() as u32;
        if want == 0 || want > info.max_queues as u32 {
            return Err(DpdkError::Queues {
                name: info.name.clone(),
                max: info.max_queues,
                want,
            });
        }
        let (port, name) = (info.port, info.name.clone());
        let perr = |what: &'static str, rc: c_int| DpdkError::Port {
            port,
            name: name.clone(),
            what,
            reason: strerror(rc),
        };
        let mut conf = sys::rte_eth_conf::default();
        if want > 1 && info.rss {
            let mut dinfo = sys::rte_eth_dev_info::default();
            // SAFETY: valid port id and out pointer.
            unsafe { sys::rte_eth_dev_info_get(port, &mut dinfo) };
            conf.rxmode.mq_mode = sys::rte_eth_rx_mq_mode_RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_key = std::ptr::null_mut();
            conf.rx_adv_conf.rss_conf.rss_hf = RSS_WANTED & dinfo.flow_type_rss_offloads;
        }
        // SAFETY: valid port id, queue counts checked against the device, conf initialised.
        let rc = unsafe { sys::rte_eth_dev_configure(port, want as u16, want as u16, &conf) };
        if rc != 0 {
            return Err(perr("rte_eth_dev_configure", rc));
        }
        let mut dev = DpdkPort {
            info,
            pools: Vec::new(),
            started: false,
        };
        let (mut rx_desc, mut tx_desc) = (s.rx_desc, s.tx_desc);
        // SAFETY: valid port id and out pointers.
        let rc = unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(port, &mut rx_desc, &mut tx_desc) };
        if rc != 0 {
            return Err(perr("rte_eth_dev_adjust_nb_rx_tx_desc", rc));
        }
        // One pool per node that runs a worker.
        for node in queue_nodes {
            let key = node.unwrap_or(usize::MAX);
            if dev.pools.iter().any(|(n, _)| *n == key) {
                continue;
            }
            let pname = CString::new(format!("fg_mbufs_{port}_{}", node.map_or(-1, |n| n as i64)))
                .expect("no NUL");
            let socket = node.map_or(sys::SOCKET_ID_ANY, |n| n as c_int);
            // SAFETY: valid name; sizes are plain numbers the EAL checks.
            let mp = unsafe {
                sys::rte_pktmbuf_pool_create(
                    pname.as_ptr(),
                    s.mbufs,
                    s.mbuf_cache,
                    0,
                    sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
                    socket,
                )
            };
            if mp.is_null() {
                let e = rte_errno();
                if e == libc::ENOMEM && !s.hugepages {
                    return Err(DpdkError::Port {
                        port,
                        name: name.clone(),
                        what: "rte_pktmbuf_pool_create",
                        reason: format!(
                            "{}: raise engine.dpdk.memory_mb or lower engine.dpdk.mbufs",
                            strerror(e)
                        ),
                    });
                }
                return Err(perr("rte_pktmbuf_pool_create", e));
            }
            tracing::info!(node = ?node, mbufs = s.mbufs, "DPDK mempool created");
            dev.pools.push((key, mp));
        }
        let mut queues = Vec::with_capacity(queue_nodes.len());
        for (q, node) in queue_nodes.iter().enumerate() {
            let key = node.unwrap_or(usize::MAX);
            let pool = dev
                .pools
                .iter()
                .find(|(n, _)| *n == key)
                .map(|(_, p)| *p)
                .expect("a pool per node");
            let socket = node.map_or(sys::SOCKET_ID_ANY, |n| n as c_int) as u32;
            // SAFETY: valid port/queue ids, a live mempool, default queue conf (null).
            let rc = unsafe {
                sys::rte_eth_rx_queue_setup(port, q as u16, rx_desc, socket, std::ptr::null(), pool)
            };
            if rc != 0 {
                return Err(perr("rte_eth_rx_queue_setup", rc));
            }
            // SAFETY: as above.
            let rc = unsafe {
                sys::rte_eth_tx_queue_setup(port, q as u16, tx_desc, socket, std::ptr::null())
            };
            if rc != 0 {
                return Err(perr("rte_eth_tx_queue_setup", rc));
            }
            queues.push(DpdkQueue::new(port, q as u16, pool));
        }
        // SAFETY: valid, configured port.
        let rc = unsafe { sys::rte_eth_dev_start(port) };
        if rc != 0 {
            return Err(perr("rte_eth_dev_start", rc));
        }
        dev.started = true;
        // IPv6 neighbour discovery needs the solicited-node groups; not every
        // PMD supports it (the result is only informative).
        // SAFETY: valid, started port.
        let _ = unsafe { sys::rte_eth_allmulticast_enable(port) };
        tracing::info!(
            port,
            name = %dev.info.name,
            driver = %dev.info.driver,
            queues = want,
            rss = want > 1 && dev.info.rss,
            rx_desc,
            tx_desc,
            "DPDK port started"
        );
        Ok((dev, queues))
    }

    pub fn info(&self) -> &PortInfo {
        &self.info
    }

    /// `rte_eth_stats` and the driver's extended statistics, as
    /// `dpdk_port_<name>` / `dpdk_xstat_<name>` counters. Off the data path
    /// (allocates).
    pub fn stats(&self) -> Vec<(String, u64)> {
        let port = self.info.port;
        let mut out = Vec::new();
        let mut st = sys::rte_eth_stats::default();
        // SAFETY: valid port id and out pointer.
        if unsafe { sys::rte_eth_stats_get(port, &mut st) } == 0 {
            for (k, v) in [
                ("ipackets", st.ipackets),
                ("opackets", st.opackets),
                ("ibytes", st.ibytes),
                ("obytes", st.obytes),
                ("imissed", st.imissed),
                ("ierrors", st.ierrors),
                ("oerrors", st.oerrors),
                ("rx_nombuf", st.rx_nombuf),
            ] {
                out.push((format!("dpdk_port_{k}"), v));
            }
        }
        // SAFETY: a null array asks for the count only.
        let n = unsafe { sys::rte_eth_xstats_get_names(port, std::ptr::null_mut(), 0) };
        if n > 0 {
            let n = n as usize;
            let mut names = vec![sys::rte_eth_xstat_name::default(); n];
            let mut vals = vec![sys::rte_eth_xstat::default(); n];
            // SAFETY: both arrays hold `n` elements.
            let a = unsafe { sys::rte_eth_xstats_get_names(port, names.as_mut_ptr(), n as u32) };
            // SAFETY: as above.
            let b = unsafe { sys::rte_eth_xstats_get(port, vals.as_mut_ptr(), n as u32) };
            if a as usize == n && b as usize == n {
                for v in &vals {
                    let Some(nm) = names.get(v.id as usize) else {
                        continue;
                    };
                    // SAFETY: the name is a NUL-terminated fixed-size array.
                    let name = unsafe { CStr::from_ptr(nm.name.as_ptr()) }.to_string_lossy();
                    let clean: String = name
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                        .collect();
                    out.push((format!("dpdk_xstat_{clean}"), v.value));
                }
            }
        }
        out
    }
}

impl Drop for DpdkPort {
    fn drop(&mut self) {
        let port = self.info.port;
        if self.started {
            // SAFETY: the port was started by us; every queue user is gone.
            unsafe {
                sys::rte_eth_dev_stop(port);
            }
        }
        // SAFETY: as above; closing releases the PMD (and a vdev's socket).
        unsafe { sys::rte_eth_dev_close(port) };
        for (_, mp) in self.pools.drain(..) {
            // SAFETY: the port is closed, so no descriptor holds an mbuf of the pool.
            unsafe { sys::rte_mempool_free(mp) };
        }
        eal_cleanup();
        tracing::info!(port, "DPDK port closed, EAL cleaned up");
    }
}

/// One rx/tx queue pair, driven by one worker.
pub struct DpdkQueue {
    port: u16,
    queue: u16,
    pool: *mut sys::rte_mempool,
    rx: [*mut sys::rte_mbuf; RX_BURST],
    tx: [*mut sys::rte_mbuf; TX_BATCH],
    tx_len: usize,
    registered: bool,
    stats: IoStats,
    rx_multiseg: u64,
}

// SAFETY: the mbuf pointers are owned by this queue until handed back to
// DPDK; the queue is driven by exactly one thread at a time.
unsafe impl Send for DpdkQueue {}

impl DpdkQueue {
    fn new(port: u16, queue: u16, pool: *mut sys::rte_mempool) -> Self {
        DpdkQueue {
            port,
            queue,
            pool,
            rx: [std::ptr::null_mut(); RX_BURST],
            tx: [std::ptr::null_mut(); TX_BATCH],
            tx_len: 0,
            registered: false,
            stats: IoStats::default(),
            rx_multiseg: 0,
        }
    }

    /// Registers the calling worker thread as an EAL lcore (once), so the
    /// mempool cache applies; without a free lcore it still works, uncached.
    fn register(&mut self) {
        if self.registered {
            return;
        }
        self.registered = true;
        // SAFETY: called from the worker thread that drives this queue.
        let rc = unsafe { sys::rte_thread_register() };
        if rc != 0 {
            tracing::warn!(queue = self.queue, error = %strerror(rte_errno()), "worker not registered as an lcore (mempool cache off)");
        }
    }

    /// Frames that could not be segmented into one mbuf (never with the
    /// default 2 KiB data room and a 1514-byte MTU).
    pub fn rx_multiseg(&self) -> u64 {
        self.rx_multiseg
    }

    fn send_pending(&mut self) {
        let mut off = 0usize;
        // Two tries: a full descriptor ring rarely clears within a flush.
        for _ in 0..2 {
            if off == self.tx_len {
                break;
            }
            // SAFETY: tx[off..tx_len] are mbufs we own; the driver takes
            // ownership of the first `sent`.
            let sent = unsafe {
                sys::rte_eth_tx_burst(
                    self.port,
                    self.queue,
                    self.tx.as_mut_ptr().add(off),
                    (self.tx_len - off) as u16,
                )
            } as usize;
            off += sent;
        }
        let unsent = self.tx_len - off;
        if unsent > 0 {
            // SAFETY: the unsent mbufs are still ours; free them (TCP retransmits).
            unsafe { sys::rte_pktmbuf_free_bulk(self.tx.as_mut_ptr().add(off), unsent as u32) };
            self.stats.tx_ring_full += unsent as u64;
            self.stats.tx_frames -= unsent as u64;
        }
        self.tx_len = 0;
        self.stats.kicks += 1;
    }
}

impl PacketIo for DpdkQueue {
    fn kind(&self) -> BackendKind {
        BackendKind::Dpdk
    }

    fn rx_burst(&mut self, max: usize, on_frame: &mut dyn FnMut(&[u8])) -> io::Result<usize> {
        self.register();
        let want = max.min(RX_BURST) as u16;
        // SAFETY: `rx` has room for `want` mbuf pointers.
        let n = unsafe { sys::rte_eth_rx_burst(self.port, self.queue, self.rx.as_mut_ptr(), want) }
            as usize;
        let mut delivered = 0;
        for &m in &self.rx[..n] {
            // SAFETY: the driver returned `n` valid mbufs that we own until freed below.
            let (data, len, segs) = unsafe {
                let mb = &*m;
                (
                    (mb.buf_addr as *const u8).add(mb.data_off as usize),
                    mb.data_len as usize,
                    mb.nb_segs,
                )
            };
            if segs != 1 {
                self.rx_multiseg += 1;
                continue;
            }
            // SAFETY: data..data+len is the mbuf's packet data, alive until the free below.
            let frame = unsafe { std::slice::from_raw_parts(data, len) };
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += len as u64;
            on_frame(frame);
            delivered += 1;
        }
        if n > 0 {
            // SAFETY: the `n` mbufs are ours; the frame slices are no longer used.
            unsafe { sys::rte_pktmbuf_free_bulk(self.rx.as_mut_ptr(), n as u32) };
        }
        Ok(delivered)
    }

    fn tx_frame(&mut self, frame: &[u8]) -> bool {
        if self.tx_len == TX_BATCH {
            self.send_pending();
        }
        if frame.len() > u16::MAX as usize {
            // Never fits an mbuf: dropped and counted, not offered again.
            self.stats.tx_ring_full += 1;
            return true;
        }
        // SAFETY: a live mempool owned by the port.
        let m = unsafe { sys::rte_pktmbuf_alloc(self.pool) };
        if m.is_null() {
            self.stats.tx_ring_full += 1;
            return false;
        }
        // SAFETY: a fresh mbuf we own; fg_mbuf_fill appends and copies within its data room.
        let rc = unsafe { sys::fg_mbuf_fill(m, frame.as_ptr().cast(), frame.len() as u16) };
        if rc != 0 {
            // SAFETY: ours, not handed to the driver.
            unsafe { sys::rte_pktmbuf_free(m) };
            // Larger than an mbuf's data room: it never will fit.
            self.stats.tx_ring_full += 1;
            return true;
        }
        self.tx[self.tx_len] = m;
        self.tx_len += 1;
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += frame.len() as u64;
        true
    }

    fn tx_flush(&mut self) -> io::Result<()> {
        if self.tx_len > 0 {
            self.send_pending();
        }
        Ok(())
    }

    fn wait(&mut self, timeout: Duration, wake: RawFd) -> io::Result<bool> {
        // Poll-mode drivers have no fd to sleep on: an idle worker sleeps a
        // bounded time (or until a hand-off wakes it) and polls again.
        crate::io_error::poll_readable(&[wake], timeout.min(Duration::from_micros(200)))
            .map(|ready| ready & 1 != 0)
    }

    fn stats(&self) -> IoStats {
        self.stats
    }
}

impl Drop for DpdkQueue {
    fn drop(&mut self) {
        if self.tx_len > 0 {
            // SAFETY: unsent mbufs are ours.
            unsafe { sys::rte_pktmbuf_free_bulk(self.tx.as_mut_ptr(), self.tx_len as u32) };
            self.tx_len = 0;
        }
        if self.registered {
            // SAFETY: dropped on the worker thread that registered (the
            // worker owns its queue until its loop ends).
            unsafe { sys::rte_thread_unregister() };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eal_args_without_hugepages_and_with_vdevs() {
        let s = DpdkSettings {
            vdevs: vec!["net_null0".into(), "net_null1,size=64".into()],
            hugepages: false,
            memory_mb: 256,
            ..Default::default()
        };
        let a = eal_args(&s, &[0, 1]);
        assert_eq!(a[0], "ferrogate");
        assert!(a.contains(&"--lcores=0@(0,1)".to_string()), "{a:?}");
        assert!(a.contains(&"--no-shconf".to_string()), "{a:?}");
        assert!(a.contains(&"--no-huge".to_string()));
        assert!(a.contains(&"-m256".to_string()));
        assert!(a.contains(&"--vdev=net_null1,size=64".to_string()));
        assert!(a.contains(&"--no-pci".to_string()));
    }

    #[test]
    fn pci_port_is_allow_listed() {
        let s = DpdkSettings {
            port: Some("0000:03:00.0".into()),
            file_prefix: Some("fg1".into()),
            ..Default::default()
        };
        let a = eal_args(&s, &[2]);
        assert!(a.contains(&"-a0000:03:00.0".to_string()), "{a:?}");
        assert!(a.contains(&"--file-prefix=fg1".to_string()));
        assert!(!a.contains(&"--no-pci".to_string()));
        assert!(!a.contains(&"--no-huge".to_string()));
        assert!(is_pci_address("03:00.1"));
        assert!(!is_pci_address("net_null0"));
        assert_eq!(vdev_name("net_af_packet0,iface=eth0"), "net_af_packet0");
    }
}
