//! The engine's own rx → filter → stack → tx ceiling on one core, without
//! the kernel in the way: a `net_ring`-style port made of two DPDK rings
//! (`rte_eth_from_rings`: the generator enqueues into the port's rx ring and
//! dequeues the port's tx ring), one busy-polling worker pinned to a core,
//! the real `Engine` (DPDK backend, software filter tier on) answering ICMP
//! echo requests to its VIP from its smoltcp stack. A generator thread on
//! another core keeps the rx ring full and counts the replies.
//!
//! CI runs it as a 1 s check (every request answered, the filter tier on
//! the path); as a benchmark run it as root with
//!   FG_CEILING_SECS=5 cargo test --release -p ferrogate-engine --features dpdk --test dpdk_ceiling -- --nocapture
//! It prints replies/s and the worker's busy ns per packet; it never
//! asserts on a rate.

#![cfg(feature = "dpdk")]

use std::ffi::{CString, c_char, c_int, c_uint, c_void};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferrogate_dpdk_sys as sys;
use ferrogate_engine::{BackendChoice, DpdkSettings, Engine, EngineConfig, PollingMode};
use ferrogate_proxy::RouteTable;

const VIP: [u8; 4] = [10, 99, 0, 1];
const GEN_IP: [u8; 4] = [10, 99, 0, 2];
const GEN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const BURST: usize = 32;

type FromRings = unsafe extern "C" fn(
    name: *const c_char,
    rx: *const *mut sys::rte_ring,
    nb_rx: c_uint,
    tx: *const *mut sys::rte_ring,
    nb_tx: c_uint,
    numa: c_uint,
) -> c_int;

/// `rte_eth_from_rings` lives in the net_ring PMD, which the EAL loaded
/// from the PMD directory; find it there (RTLD_NOLOAD: no second copy).
fn from_rings() -> FromRings {
    let dirs = std::fs::read_dir("/usr/lib/x86_64-linux-gnu/dpdk")
        .expect("DPDK PMD directory")
        .flatten()
        .map(|e| e.path());
    for d in dirs {
        for name in ["librte_net_ring.so", "librte_net_ring.so.23"] {
            let p = CString::new(d.join(name).to_string_lossy().as_bytes()).unwrap();
            // SAFETY: dlopen/dlsym with NUL-terminated strings; RTLD_NOLOAD
            // only returns a handle to a library that is already loaded.
            unsafe {
                let h = libc::dlopen(p.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
                if h.is_null() {
                    continue;
                }
                let f = libc::dlsym(h, c"rte_eth_from_rings".as_ptr());
                if !f.is_null() {
                    return std::mem::transmute::<*mut c_void, FromRings>(f);
                }
            }
        }
    }
    panic!("rte_eth_from_rings not found (is the net_ring PMD installed?)");
}

fn csum(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in data.chunks(2) {
        s += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn echo_request(dst_mac: [u8; 6], seq: u16) -> Vec<u8> {
    let payload = 18; // 64-byte frames
    let mut f = vec![0u8; 14 + 20 + 8 + payload];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&GEN_MAC);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (20 + 8 + payload) as u16;
    {
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[8] = 64;
        ip[9] = 1;
        ip[12..16].copy_from_slice(&GEN_IP);
        ip[16..20].copy_from_slice(&VIP);
        let c = csum(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
    }
    {
        let icmp = &mut f[34..];
        icmp[0] = 8;
        icmp[4..6].copy_from_slice(&0x4647u16.to_be_bytes());
        icmp[6..8].copy_from_slice(&seq.to_be_bytes());
        let c = csum(icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
    }
    f
}

fn arp_request() -> Vec<u8> {
    let mut f = vec![0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&GEN_MAC);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let a = &mut f[14..];
    a[0..2].copy_from_slice(&1u16.to_be_bytes());
    a[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
    a[4] = 6;
    a[5] = 4;
    a[6..8].copy_from_slice(&1u16.to_be_bytes());
    a[8..14].copy_from_slice(&GEN_MAC);
    a[14..18].copy_from_slice(&GEN_IP);
    a[24..28].copy_from_slice(&VIP);
    f
}

struct Gen {
    pool: *mut sys::rte_mempool,
    rx: *mut sys::rte_ring,
    tx: *mut sys::rte_ring,
}

// SAFETY: DPDK rings and mempools are usable from any thread; the generator
// is the rx ring's only producer and the tx ring's only consumer.
unsafe impl Send for Gen {}

impl Gen {
    /// Enqueues up to BURST copies of `frame`; returns how many went in.
    fn push(&self, frame: &[u8], n: usize) -> usize {
        let mut m = [std::ptr::null_mut::<sys::rte_mbuf>(); BURST];
        let n = n.min(BURST);
        // SAFETY: `m` has room for n pointers; the pool is live.
        if unsafe { sys::rte_pktmbuf_alloc_bulk(self.pool, m.as_mut_ptr(), n as c_uint) } != 0 {
            return 0;
        }
        for &mb in &m[..n] {
            // SAFETY: fresh mbufs with a 2 KiB data room.
            unsafe { sys::fg_mbuf_fill(mb, frame.as_ptr().cast(), frame.len() as u16) };
        }
        // SAFETY: we are the only producer of the rx ring.
        let put = unsafe {
            sys::rte_ring_enqueue_burst(
                self.rx,
                m.as_ptr() as *const *mut c_void,
                n as c_uint,
                std::ptr::null_mut(),
            )
        } as usize;
        if put < n {
            // SAFETY: the rest are still ours.
            unsafe { sys::rte_pktmbuf_free_bulk(m.as_mut_ptr().add(put), (n - put) as c_uint) };
        }
        put
    }

    /// Dequeues and frees up to BURST replies; returns (count, echo replies).
    fn pull(&self) -> (usize, usize) {
        let mut m = [std::ptr::null_mut::<sys::rte_mbuf>(); BURST];
        // SAFETY: we are the only consumer of the tx ring; `m` holds BURST.
        let n = unsafe {
            sys::rte_ring_dequeue_burst(
                self.tx,
                m.as_mut_ptr() as *mut *mut c_void,
                BURST as c_uint,
                std::ptr::null_mut(),
            )
        } as usize;
        let mut echo = 0;
        for &mb in &m[..n] {
            // SAFETY: a valid mbuf from the ring; read its first bytes.
            let f = unsafe {
                let d = sys::fg_mbuf_data(mb) as *const u8;
                std::slice::from_raw_parts(d, (*mb).data_len as usize)
            };
            if f.len() >= 35 && f[12] == 0x08 && f[13] == 0x00 && f[23] == 1 && f[34] == 0 {
                echo += 1;
            }
        }
        if n > 0 {
            // SAFETY: the dequeued mbufs are ours now.
            unsafe { sys::rte_pktmbuf_free_bulk(m.as_mut_ptr(), n as c_uint) };
        }
        (n, echo)
    }
}

#[test]
fn ring_port_icmp_echo_ceiling_per_core() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("dpdk_ceiling: skipped: needs root (DPDK EAL)");
        return;
    }
    let secs: u64 = std::env::var("FG_CEILING_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let cpus = ferrogate_engine::numa::online_cpus().unwrap();
    let (gen_cpu, worker_cpu) = (cpus[0], *cpus.last().unwrap());
    let settings = DpdkSettings {
        port: Some("net_ring_fg_ring0".into()),
        hugepages: false,
        memory_mb: 512,
        eal_args: vec!["--no-pci".into()],
        ..Default::default()
    };
    ferrogate_engine::dpdk::eal_init(&settings, &cpus).expect("EAL");

    // The port: rx ring (generator → engine) and tx ring (engine → generator).
    // SAFETY: EAL is up; names are NUL-terminated; results are checked.
    let (rx, tx, pool) = unsafe {
        let flags = sys::RING_F_SP_ENQ | sys::RING_F_SC_DEQ;
        let rx = sys::rte_ring_create(c"fg_bench_rx".as_ptr(), 4096, sys::SOCKET_ID_ANY, flags);
        let tx = sys::rte_ring_create(c"fg_bench_tx".as_ptr(), 4096, sys::SOCKET_ID_ANY, flags);
        let pool = sys::rte_pktmbuf_pool_create(
            c"fg_bench_gen".as_ptr(),
            16383,
            256,
            0,
            sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
            sys::SOCKET_ID_ANY,
        );
        assert!(!rx.is_null() && !tx.is_null() && !pool.is_null());
        let port = from_rings()(c"fg_ring0".as_ptr(), &rx, 1, &tx, 1, 0);
        assert!(port >= 0, "rte_eth_from_rings: {port}");
        (rx, tx, pool)
    };

    let vips = vec![(IpAddr::V4(Ipv4Addr::from(VIP)), 24u8)];
    let mut cfg = EngineConfig::new(
        "fg_ring0",
        vips,
        Arc::new(RouteTable::new(1, vec![], vec![])),
    );
    cfg.backend = BackendChoice::Dpdk;
    cfg.queues = 1;
    cfg.cpus = vec![worker_cpu];
    cfg.polling = PollingMode::Busy;
    cfg.dpdk = settings;
    let engine = Engine::start(cfg).expect("engine start");

    let gen_ = Gen { pool, rx, tx };
    // Who-has for the VIP first: the reply tells the generator the port's
    // MAC, and the stack learns the generator's.
    gen_.push(&arp_request(), 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut port_mac = None;
    while port_mac.is_none() && Instant::now() < deadline {
        let mut m = [std::ptr::null_mut::<sys::rte_mbuf>(); BURST];
        // SAFETY: only consumer; `m` holds BURST pointers.
        let n = unsafe {
            sys::rte_ring_dequeue_burst(
                tx,
                m.as_mut_ptr() as *mut *mut c_void,
                BURST as c_uint,
                std::ptr::null_mut(),
            )
        } as usize;
        for &mb in &m[..n] {
            // SAFETY: valid mbuf from the ring.
            let f = unsafe {
                std::slice::from_raw_parts(
                    sys::fg_mbuf_data(mb) as *const u8,
                    (*mb).data_len as usize,
                )
            };
            if f.len() >= 42 && f[12] == 0x08 && f[13] == 0x06 {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&f[22..28]);
                port_mac = Some(mac);
            }
        }
        if n > 0 {
            // SAFETY: ours now.
            unsafe { sys::rte_pktmbuf_free_bulk(m.as_mut_ptr(), n as c_uint) };
        }
    }
    let port_mac = port_mac.expect("ARP reply from the engine's stack");
    let frame = echo_request(port_mac, 1);

    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let counted = Arc::new(AtomicU64::new(0));
    let (stop2, measuring2, counted2) = (stop.clone(), measuring.clone(), counted.clone());
    let generator = std::thread::spawn(move || {
        let g = gen_;
        ferrogate_engine::numa::pin_current_thread(gen_cpu).ok();
        let (mut replies, mut echo) = (0u64, 0u64);
        while !stop2.load(Ordering::Relaxed) {
            // Keep the rx ring topped up: the worker is never idle.
            // SAFETY: reads the ring's counters.
            if unsafe { sys::rte_ring_free_count(g.rx) } as usize >= BURST {
                g.push(&frame, BURST);
            }
            let (n, e) = g.pull();
            if measuring2.load(Ordering::Relaxed) {
                replies += n as u64;
                echo += e as u64;
            }
        }
        counted2.store(replies, Ordering::Relaxed);
        echo
    });
    std::thread::sleep(Duration::from_secs(1)); // warm-up
    let before = engine.stats();
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let after = engine.stats();
    stop.store(true, Ordering::Relaxed);
    let echo = generator.join().unwrap();
    let replies = counted.load(Ordering::Relaxed);
    let w0 = &before.workers[0];
    let w1 = &after.workers[0];
    let rx = w1.io.rx_frames - w0.io.rx_frames;
    let busy = w1.busy_ns - w0.busy_ns;
    let lost = w1.io.tx_ring_full - w0.io.tx_ring_full;
    let rate = replies as f64 / elapsed;
    eprintln!(
        "dpdk ring port, 1 worker (cpu {worker_cpu}, busy polling), generator cpu {gen_cpu}: \
         {replies} echo replies in {elapsed:.2} s = {:.3} Mpps rx->filter->stack->tx; \
         worker rx {rx}, busy {:.1} ns/packet, {:.1} ns/packet of wall time, tx lost {lost}",
        rate / 1e6,
        busy as f64 / rx.max(1) as f64,
        elapsed * 1e9 / rx.max(1) as f64
    );
    assert!(replies > 0 && echo > 0, "no echo replies came back");
    assert_eq!(after.rules.len(), 1, "the software filter tier ran");
    engine.shutdown().expect("shutdown");
}
