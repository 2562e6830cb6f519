//! AF_PACKET and AF_XDP backends against a veth pair in a throw-away network
//! namespace. Needs root; prints "skipped: not root" otherwise.
//!
//! Each test creates `fgt-io-<pid>-<n>`, enters it on a thread of its own
//! (`setns`), and a guard deletes it afterwards, also when the test panics.
//! The AF_XDP test loads its own six-instruction XDP program (rx queue →
//! XSKMAP) through the raw `bpf(2)` syscall, so it depends on neither the
//! `ebpf` crate nor clang.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ferrogate_engine::afpacket::{AfPacketConfig, AfPacketSocket};
use ferrogate_engine::afxdp::{AfXdpConfig, AfXdpSocket, ZeroCopy};
use ferrogate_engine::io::PacketIo;
use ferrogate_engine::io_error::IoError;

const ETHERTYPE: u16 = 0x88b5; // IEEE local experimental
const MAGIC: &[u8; 4] = b"FGT!";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            println!("skipped: not root");
            return;
        }
    };
}

// ---------------------------------------------------------------- namespace

struct NetNs {
    name: String,
}

impl NetNs {
    fn new() -> NetNs {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "fgt-io-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        NetNs { name }
    }

    /// Runs `f` on a new thread inside the namespace; panics propagate after
    /// the namespace is gone (the guard lives in the caller).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        let res = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns file");
            // SAFETY: valid netns fd; affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join();
        match res {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// veth `a` <-> `b`, two queues each, both up. Call inside the namespace.
fn make_veth() {
    sh(&[
        "ip",
        "link",
        "add",
        "name",
        "a",
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
        "type",
        "veth",
        "peer",
        "name",
        "b",
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
    ]);
    sh(&["ip", "link", "set", "dev", "a", "up"]);
    sh(&["ip", "link", "set", "dev", "b", "up"]);
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays within it for small cpu;
    // sched_setaffinity(0) affects only the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(i != 0, "no interface {name}");
    i
}

// ---------------------------------------------------------------- frames

/// A test frame: broadcast, our ethertype, magic, tag, sequence, pattern.
fn frame(tag: u8, seq: u32) -> Vec<u8> {
    let len = 60 + (seq as usize * 37) % 1400;
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, tag]);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(MAGIC);
    f.push(tag);
    f.extend_from_slice(&seq.to_be_bytes());
    while f.len() < len {
        f.push((f.len() as u32 ^ seq) as u8);
    }
    f
}

/// Parses (tag, seq) of one of our frames and checks it is intact.
fn parse(f: &[u8]) -> Option<(u8, u32)> {
    if f.len() < 23 || f[12..14] != ETHERTYPE.to_be_bytes() || &f[14..18] != MAGIC {
        return None;
    }
    let tag = f[18];
    let seq = u32::from_be_bytes(f[19..23].try_into().unwrap());
    assert_eq!(f, &frame(tag, seq)[..], "frame {tag}/{seq} corrupted");
    Some((tag, seq))
}

/// A plain AF_PACKET socket on `iface` for our ethertype (the "wire" side).
struct Raw {
    fd: OwnedFd,
}

impl Raw {
    fn open(iface: &str) -> Raw {
        // SAFETY: plain socket call, result checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETHERTYPE.to_be()),
            )
        };
        assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: fresh fd.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: zeroed sockaddr_ll is valid; size passed exactly.
        unsafe {
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ETHERTYPE.to_be();
            sll.sll_ifindex = ifindex(iface) as i32;
            let rc = libc::bind(
                raw,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let one: libc::c_int = 1;
            // Sender queue = CPU % queues (see `send_from_cpu`).
            libc::setsockopt(
                raw,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                4,
            );
            let big: libc::c_int = 16 << 20;
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&big as *const libc::c_int).cast(),
                4,
            );
        }
        Raw { fd }
    }

    fn send(&self, f: &[u8]) {
        // SAFETY: `f` is a valid buffer of f.len() bytes.
        let rc = unsafe { libc::send(self.fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
        assert_eq!(
            rc,
            f.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Receives until `want` of our frames arrived or `timeout` passed.
    fn recv_ours(&self, want: usize, timeout: Duration) -> Vec<(u8, u32)> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        let deadline = Instant::now() + timeout;
        while got.len() < want && Instant::now() < deadline {
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = deadline
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(50) as libc::c_int;
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, ms) };
            loop {
                // SAFETY: buf is valid for buf.len() bytes.
                let n = unsafe {
                    libc::recv(
                        self.fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n <= 0 {
                    break;
                }
                if let Some(id) = parse(&buf[..n as usize]) {
                    got.push(id);
                }
            }
        }
        got
    }
}

/// Sends frames `tag/0..count` from `iface` on a thread pinned to `cpu`, so
/// that (with qdisc bypass) they leave on tx queue `cpu % 2` and arrive on the
/// peer's rx queue of the same index.
fn send_from_cpu(iface: &'static str, cpu: usize, tag: u8, count: u32) {
    spawn_sender(iface, cpu, tag, count)
        .join()
        .expect("sender thread");
}

/// `send_from_cpu` without waiting for the sender.
fn spawn_sender(
    iface: &'static str,
    cpu: usize,
    tag: u8,
    count: u32,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        pin_to_cpu(cpu);
        let raw = Raw::open(iface);
        for seq in 0..count {
            raw.send(&frame(tag, seq));
        }
    })
}

/// Polls `io` until `want` of our frames arrived or `timeout` passed.
fn rx_ours(io: &mut dyn PacketIo, want: usize, timeout: Duration) -> Vec<(u8, u32)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + timeout;
    // Nothing hands frames to this port: a waker nobody writes.
    let waker = ferrogate_engine::wake::Waker::new().expect("eventfd");
    while got.len() < want && Instant::now() < deadline {
        let n = io
            .rx_burst(64, &mut |f| {
                if let Some(id) = parse(f) {
                    got.push(id);
                }
            })
            .expect("rx_burst");
        if n == 0 {
            io.wait(Duration::from_millis(20), waker.fd())
                .expect("wait");
        }
    }
    got
}

fn assert_all(mut got: Vec<(u8, u32)>, tag: u8, count: u32) {
    got.sort_unstable();
    let want: Vec<(u8, u32)> = (0..count).map(|s| (tag, s)).collect();
    assert_eq!(got, want, "frames of tag {tag}");
}

/// Sends `count` frames through `io` in bursts of 64 and checks they reach `b`.
fn tx_check(io: &mut dyn PacketIo, tag: u8, count: u32) {
    let peer = Raw::open("b");
    let mut got = Vec::new();
    let mut seq = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while seq < count && Instant::now() < deadline {
        let burst_end = (seq + 64).min(count);
        while seq < burst_end {
            if !io.tx_frame(&frame(tag, seq)) {
                break; // ring full: flush and retry this one
            }
            seq += 1;
        }
        io.tx_flush().expect("tx_flush");
        got.extend(peer.recv_ours(usize::MAX, Duration::from_millis(1)));
    }
    // Drain: a few more flushes let copy-mode AF_XDP finish its backlog.
    let deadline = Instant::now() + Duration::from_secs(3);
    while got.len() < count as usize && Instant::now() < deadline {
        io.tx_flush().expect("tx_flush");
        got.extend(peer.recv_ours(count as usize - got.len(), Duration::from_millis(20)));
    }
    assert_eq!(seq, count, "could not queue all frames");
    assert_all(got, tag, count);
}

// ---------------------------------------------------------------- AF_PACKET

#[test]
fn afpacket_rx_tx() {
    require_root!();
    let ns = NetNs::new();
    ns.run(|| {
        make_veth();
        let mut sock = AfPacketSocket::open(&AfPacketConfig::new("a", 0, 1)).expect("open");
        // Received while they are sent: 1,000 frames queued before the
        // first read can overflow the ring on a loaded machine.
        let senders = [spawn_sender("b", 0, 1, 500), spawn_sender("b", 1, 2, 500)];
        let got = rx_ours(&mut sock, 1000, Duration::from_secs(5));
        for s in senders {
            s.join().expect("sender thread");
        }
        let (t1, t2): (Vec<_>, Vec<_>) = got.into_iter().partition(|(t, _)| *t == 1);
        assert_all(t1, 1, 500);
        assert_all(t2, 2, 500);

        // Never sendable: dropped and counted, reported as taken so the
        // frames behind it are not held up.
        assert!(sock.tx_frame(&vec![0u8; 4000]), "oversize frame held");
        assert_eq!(sock.tx_oversize(), 1);
        tx_check(&mut sock, 3, 1000);
        let st = sock.stats();
        assert!(st.rx_frames >= 1000 && st.tx_frames == 1000, "{st:?}");
        assert_eq!(st.rx_dropped, 0, "{st:?}");
    });
}

#[test]
fn afpacket_fanout_two_queues() {
    require_root!();
    let ns = NetNs::new();
    let (q0, q1) = ns.run(|| {
        make_veth();
        let mut s0 = AfPacketSocket::open(&AfPacketConfig::new("a", 0, 2)).expect("open q0");
        let mut s1 = AfPacketSocket::open(&AfPacketConfig::new("a", 1, 2)).expect("open q1");
        // Frames sent from CPU c leave b on tx queue c and arrive on a's rx queue c.
        send_from_cpu("b", 0, 10, 300);
        send_from_cpu("b", 1, 11, 300);
        let mut got0 = rx_ours(&mut s0, 300, Duration::from_secs(2));
        let mut got1 = rx_ours(&mut s1, 300, Duration::from_secs(2));
        // Whatever is left over (if the split is not 300/300).
        got0.extend(rx_ours(&mut s0, usize::MAX, Duration::from_millis(200)));
        got1.extend(rx_ours(&mut s1, usize::MAX, Duration::from_millis(200)));
        let mut all: Vec<_> = got0.iter().chain(&got1).copied().collect();
        all.sort_unstable();
        let mut want: Vec<_> = (0..300).map(|s| (10, s)).collect();
        want.extend((0..300).map(|s| (11, s)));
        assert_eq!(all, want, "each frame exactly once across the group");
        (got0, got1)
    });
    let count = |v: &[(u8, u32)], t| v.iter().filter(|(x, _)| *x == t).count();
    println!(
        "fanout: socket 0 got {} from queue 0 and {} from queue 1; socket 1 got {} and {}",
        count(&q0, 10),
        count(&q0, 11),
        count(&q1, 10),
        count(&q1, 11)
    );
    assert_eq!(
        (count(&q0, 10), count(&q1, 11)),
        (300, 300),
        "PACKET_FANOUT_QM: socket q gets rx queue q"
    );
}

#[test]
fn afpacket_errors_name_the_interface() {
    require_root!();
    let e = AfPacketSocket::open(&AfPacketConfig::new("fgt-nope0", 3, 4))
        .err()
        .expect("open of a missing interface must fail");
    let msg = e.to_string();
    assert!(
        msg.contains("fgt-nope0") && msg.contains("queue 3"),
        "{msg}"
    );
}

// ---------------------------------------------------------------- AF_XDP

/// A minimal XDP program (`bpf_redirect_map(&xsks, ctx->rx_queue_index,
/// XDP_PASS)`) and its XSKMAP, loaded with raw bpf(2), attached in native mode
/// through a BPF link (closing the link fd detaches).
struct XskProg {
    map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
}

fn bpf(cmd: libc::c_int, attr: &mut [u64; 16]) -> std::io::Result<RawFd> {
    // SAFETY: `attr` is a 128-byte zero-padded bpf_attr for `cmd`; pointers
    // inside it point to live buffers of the caller.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128usize) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc as RawFd)
    }
}

fn set_u32(attr: &mut [u64; 16], byte_off: usize, v: u32) {
    let w = &mut attr[byte_off / 8];
    let shift = (byte_off % 8) * 8;
    *w = (*w & !(0xffff_ffffu64 << shift)) | (u64::from(v) << shift);
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | (u64::from(dst & 0xf) << 8)
        | (u64::from(src & 0xf) << 12)
        | (u64::from(off as u16) << 16)
        | (u64::from(imm as u32) << 32)
}

impl XskProg {
    fn attach(iface: &str) -> XskProg {
        // BPF_MAP_CREATE: XSKMAP, key u32, value u32 (fd), 2 entries.
        let mut a = [0u64; 16];
        set_u32(&mut a, 0, 17);
        set_u32(&mut a, 4, 4);
        set_u32(&mut a, 8, 4);
        set_u32(&mut a, 12, 2);
        // SAFETY: fresh fd from the kernel.
        let map = unsafe { OwnedFd::from_raw_fd(bpf(0, &mut a).expect("create XSKMAP")) };
        let prog = [
            insn(0x61, 2, 1, 16, 0),              // r2 = ctx->rx_queue_index
            insn(0x18, 1, 1, 0, map.as_raw_fd()), // r1 = &xsks (pseudo map fd)
            0,
            insn(0xb7, 3, 0, 0, 2),  // r3 = XDP_PASS (fallback action)
            insn(0x85, 0, 0, 0, 51), // call bpf_redirect_map
            insn(0x95, 0, 0, 0, 0),  // exit
        ];
        let license = b"GPL\0";
        let mut log = vec![0u8; 4096];
        let mut a = [0u64; 16];
        set_u32(&mut a, 0, 6); // BPF_PROG_TYPE_XDP
        set_u32(&mut a, 4, prog.len() as u32);
        a[1] = prog.as_ptr() as u64;
        a[2] = license.as_ptr() as u64;
        set_u32(&mut a, 24, 1);
        set_u32(&mut a, 28, log.len() as u32);
        a[4] = log.as_mut_ptr() as u64;
        let prog_fd = bpf(5, &mut a).unwrap_or_else(|e| {
            panic!(
                "load XDP program: {e}: {}",
                String::from_utf8_lossy(&log).trim_end_matches('\0')
            )
        });
        // SAFETY: fresh fd from the kernel.
        let prog = unsafe { OwnedFd::from_raw_fd(prog_fd) };
        // BPF_LINK_CREATE: prog_fd, target_ifindex, attach_type BPF_XDP, XDP_FLAGS_DRV_MODE.
        let mut a = [0u64; 16];
        set_u32(&mut a, 0, prog.as_raw_fd() as u32);
        set_u32(&mut a, 4, ifindex(iface));
        set_u32(&mut a, 8, 37);
        set_u32(&mut a, 12, 4);
        // SAFETY: fresh fd from the kernel.
        let link = unsafe { OwnedFd::from_raw_fd(bpf(28, &mut a).expect("attach XDP (native)")) };
        XskProg {
            map,
            _prog: prog,
            _link: link,
        }
    }

    fn register(&self, queue: u32, xsk: RawFd) {
        let key = queue;
        let val = xsk as u32;
        let mut a = [0u64; 16];
        set_u32(&mut a, 0, self.map.as_raw_fd() as u32);
        a[1] = &key as *const u32 as u64;
        a[2] = &val as *const u32 as u64;
        bpf(2, &mut a).expect("XSKMAP update");
    }
}

fn xdp_cfg() -> AfXdpConfig {
    AfXdpConfig::new("a", 0)
}

#[test]
fn afxdp_rx_tx() {
    require_root!();
    let ns = NetNs::new();
    ns.run(|| {
        make_veth();
        let mut sock = AfXdpSocket::open(&xdp_cfg()).expect("open AF_XDP");
        assert!(!sock.zero_copy(), "veth cannot do zero-copy");
        let prog = XskProg::attach("a");
        prog.register(0, sock.fd());

        // Frames from CPU 0 arrive on a's queue 0 (ours).
        send_from_cpu("b", 0, 20, 1000);
        let got = rx_ours(&mut sock, 1000, Duration::from_secs(3));
        assert_all(got, 20, 1000);

        // More than the 2048 tx frames: completions must recycle them.
        // Never sendable: dropped and counted, not held.
        assert!(sock.tx_frame(&vec![0u8; 4000]), "oversize frame held");
        tx_check(&mut sock, 21, 3000);
        let st = sock.stats();
        assert!(st.rx_frames >= 1000 && st.tx_frames == 3000, "{st:?}");
        assert!(st.kicks > 0, "{st:?}");
        println!("af_xdp stats: {st:?}");
    });
}

#[test]
fn afxdp_reopen_and_errors() {
    require_root!();
    let ns = NetNs::new();
    ns.run(|| {
        make_veth();
        let mut cfg = xdp_cfg();
        cfg.zero_copy = ZeroCopy::Required;
        match AfXdpSocket::open(&cfg) {
            Err(e @ IoError::ZeroCopyUnsupported { .. }) => {
                let m = e.to_string();
                assert!(m.contains("a queue 0"), "{m}");
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("zero-copy on veth must fail"),
        }
        // Re-binding the queue right after closing (EBUSY retry path).
        for _ in 0..3 {
            let s = AfXdpSocket::open(&xdp_cfg()).expect("reopen");
            drop(s);
        }
        let mut bad = xdp_cfg();
        bad.iface = "fgt-nope0".into();
        let m = AfXdpSocket::open(&bad)
            .err()
            .expect("missing iface")
            .to_string();
        assert!(m.contains("fgt-nope0") && m.contains("queue 0"), "{m}");
        // Hugepages: a clear error when none are free, a working socket otherwise.
        let free_huge = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("HugePages_Free:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let mut huge = xdp_cfg();
        huge.hugepages = true;
        match (free_huge, AfXdpSocket::open(&huge)) {
            (0, Err(e @ IoError::NoHugepages { .. })) => {
                let m = e.to_string();
                assert!(m.contains("a queue 0") && m.contains("nr_hugepages"), "{m}");
            }
            (0, r) => panic!("expected NoHugepages, got {:?}", r.err()),
            (n, r) if n >= 4 => drop(r.expect("open on hugepages")),
            _ => {}
        }
        let mut bad = xdp_cfg();
        bad.frame_size = 1000;
        let m = AfXdpSocket::open(&bad)
            .err()
            .expect("bad frame size")
            .to_string();
        assert!(m.contains("frame_size"), "{m}");
    });
}
