//! Integration tests: the XDP program on a veth pair inside a private network
//! namespace. Needs root; skipped (with a message) otherwise.
//!
//! Each outer test creates a uniquely named namespace `fgt-ebpf-<pid>-<tag>`
//! with a veth pair `fg0` <-> `fg1`, then re-runs this test binary inside it
//! (`ip netns exec NS <exe> --exact <inner test> --include-ignored`) with
//! `FGT_EBPF_INNER` set. The inner test attaches the filter to `fg0`, sends
//! crafted frames from `fg1` through an AF_PACKET socket and checks the
//! counters. The namespace is removed by a guard, also when a test panics.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
    time::{Duration, Instant},
};

use ferrogate_ebpf::{AttachMode, EbpfError, VipAction, XdpCounters, XdpFilter};

const INNER_ENV: &str = "FGT_EBPF_INNER";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 0x10);
const HOST: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const XDP_IF: &str = "fg0";
const SEND_IF: &str = "fg1";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(
        out.status.success(),
        "`{cmd} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with a veth pair; deleted on drop (also on panic).
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("fgt-ebpf-{}-{tag}", std::process::id());
        // A leftover of a crashed run with the same pid: remove it first.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        let n = ns.name.as_str();
        run("ip", &["-n", n, "link", "set", "lo", "up"]);
        run(
            "ip",
            &[
                "-n", n, "link", "add", XDP_IF, "type", "veth", "peer", "name", SEND_IF,
            ],
        );
        run(
            "ip",
            &["-n", n, "addr", "add", "10.99.0.1/24", "dev", XDP_IF],
        );
        run("ip", &["-n", n, "link", "set", XDP_IF, "up"]);
        run("ip", &["-n", n, "link", "set", SEND_IF, "up"]);
        ns
    }

    /// Runs the ignored test `inner` of this binary inside the namespace.
    fn run_inner(&self, inner: &str) {
        let exe = std::env::current_exe().expect("current test binary");
        let exe = exe.to_str().expect("utf-8 path");
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, exe, "--exact", inner])
            .args(["--include-ignored", "--nocapture", "--test-threads=1"])
            .env(INNER_ENV, &self.name)
            .output()
            .expect("running ip netns exec");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("--- inner {inner} ---\n{stdout}{stderr}");
        assert!(out.status.success(), "inner test {inner} failed");
        assert!(
            stdout.contains("1 passed"),
            "inner test {inner} did not run"
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn outer(tag: &str, inner: &str) {
    if !is_root() {
        println!("SKIPPED {inner}: needs root (network namespaces, XDP)");
        return;
    }
    let ns = Netns::new(tag);
    ns.run_inner(inner);
}

/// True when running inside the namespace made by an outer test.
fn inner_guard(name: &str) -> bool {
    if std::env::var_os(INNER_ENV).is_none() {
        println!("{name} runs only inside the namespace made by its outer test");
        return false;
    }
    true
}

// ---------------------------------------------------------------- frames ---

struct RawSender {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
}

impl RawSender {
    fn new(iface: &str) -> RawSender {
        use std::os::fd::FromRawFd;
        let cname = std::ffi::CString::new(iface).unwrap();
        // SAFETY: cname is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        assert!(ifindex != 0, "no interface {iface}");
        // SAFETY: plain socket(2) call; protocol 0 means "receive nothing".
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(
            fd >= 0,
            "socket(AF_PACKET): {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        RawSender {
            fd,
            ifindex: ifindex as i32,
        }
    }

    fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        // SAFETY: frame and addr are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        assert_eq!(n as usize, frame.len(), "short send");
        Ok(())
    }
}

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const BCAST: [u8; 6] = [0xff; 6];

fn eth(ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&BCAST);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let mut f = eth(0x0806);
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&PEER.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4 header with `ihl` words (options zero-filled) and an explicit total length.
fn ipv4_header(dst: Ipv4Addr, proto: u8, ihl: u8, tot_len: u16) -> Vec<u8> {
    let mut h = vec![0x40 | ihl, 0];
    h.extend_from_slice(&tot_len.to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&PEER.octets());
    h.extend_from_slice(&dst.octets());
    let hlen = usize::from(ihl.max(5)) * 4;
    h.resize(hlen, 0);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

fn udp4(dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len() as u16;
    let mut f = eth(0x0800);
    f.extend(ipv4_header(dst, 17, 5, 20 + udp_len));
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn udp6(dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len() as u16;
    let mut f = eth(0x86dd);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[17, 64]);
    f.extend_from_slice(&Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 2).octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// `plain` with a VLAN tag (`tpid` 0x8100 or 0x88a8, VID 7) after the MACs.
fn tagged(tpid: u16, plain: &[u8]) -> Vec<u8> {
    let mut f = eth(tpid);
    f.extend_from_slice(&[0x00, 0x07]);
    f.extend_from_slice(&plain[12..]);
    f
}

/// IPv4 with IHL 3: the 20-byte base header is there, but the IHL is invalid.
fn ipv4_ihl3(dst: Ipv4Addr) -> Vec<u8> {
    let mut f = eth(0x0800);
    f.extend(ipv4_header(dst, 17, 3, 28));
    f.extend_from_slice(&[0; 8]);
    f
}

/// IPv4 UDP whose total length claims more than the frame carries.
fn ipv4_long(dst: Ipv4Addr) -> Vec<u8> {
    let mut f = eth(0x0800);
    f.extend(ipv4_header(dst, 17, 5, 1000));
    f.extend_from_slice(&[0; 8]);
    f
}

fn tcp4(dst: Ipv4Addr, data_offset: u8) -> Vec<u8> {
    let mut f = eth(0x0800);
    f.extend(ipv4_header(dst, 6, 5, 40));
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&80u16.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]); // seq, ack
    f.push(data_offset << 4);
    f.push(0x02); // SYN
    f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, csum, urg
    f
}

/// Polls the counters until `done` holds (or a timeout), returning the last read.
fn wait_for(filter: &XdpFilter, done: impl Fn(&XdpCounters) -> bool) -> XdpCounters {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let c = filter.counters().expect("read counters");
        if done(&c) || Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn print_counters(c: &XdpCounters) {
    for (name, v) in c.iter() {
        println!("  {name:20} {:6} pkts {:8} bytes", v.packets, v.bytes);
    }
}

fn xdp_attached(iface: &str) -> bool {
    let out = Command::new("ip")
        .args(["-d", "link", "show", "dev", iface])
        .output()
        .expect("ip link show");
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

// ----------------------------------------------------------------- tests ---

#[test]
fn native_pass_to_kernel() {
    outer("pass", "inner_native_pass_to_kernel");
}

#[test]
#[ignore = "runs inside the namespace made by native_pass_to_kernel"]
fn inner_native_pass_to_kernel() {
    if !inner_guard("inner_native_pass_to_kernel") {
        return;
    }
    let filter = XdpFilter::attach(
        XDP_IF,
        AttachMode::Native,
        &[IpAddr::V4(VIP), IpAddr::V6(VIP6)],
        VipAction::PassToKernel,
    )
    .expect("attach native XDP to the veth");
    assert_eq!(filter.mode(), AttachMode::Native);
    assert!(xdp_attached(XDP_IF), "ip link shows no XDP program");
    assert_eq!(
        filter.vips().unwrap(),
        vec![IpAddr::V4(VIP), IpAddr::V6(VIP6)]
    );

    // A second program on the same interface is refused, in any mode.
    for mode in [AttachMode::Native, AttachMode::Generic, AttachMode::Auto] {
        match XdpFilter::attach(XDP_IF, mode, &[], VipAction::PassToKernel) {
            Err(EbpfError::AlreadyAttached { .. }) => {}
            other => panic!("second attach in {mode:?}: expected AlreadyAttached, got {other:?}"),
        }
    }
    assert!(xdp_attached(XDP_IF), "a failed attach removed ours");

    let tx = RawSender::new(SEND_IF);
    let before = filter.counters().unwrap();
    let frames: Vec<(&str, Vec<u8>)> = vec![
        ("arp request for the VIP", arp_request(VIP)),
        ("udp to the VIP", udp4(VIP, b"hello")),
        ("802.1Q udp to the VIP", tagged(0x8100, &udp4(VIP, b"vlan"))),
        ("802.1ad arp for the VIP", tagged(0x88a8, &arp_request(VIP))),
        (
            "802.1Q udp6 to the VIP",
            tagged(0x8100, &udp6(VIP6, b"vlan")),
        ),
        (
            "802.1Q udp to the host",
            tagged(0x8100, &udp4(HOST, b"vlan")),
        ),
        ("udp to the host", udp4(HOST, b"host")),
        ("ipv4 ihl=3 to the VIP", ipv4_ihl3(VIP)),
        ("ipv4 total length > frame to the VIP", ipv4_long(VIP)),
        ("ipv4 total length > frame to the host", ipv4_long(HOST)),
        ("tcp doff=2 to the VIP", tcp4(VIP, 2)),
        ("truncated vlan tag", {
            let mut f = eth(0x8100);
            f.extend_from_slice(&[0, 7]);
            f
        }),
        ("truncated arp", arp_request(VIP)[..14 + 20].to_vec()),
        ("udp to the IPv6 VIP", udp6(VIP6, b"v6")),
        ("truncated ipv6 header", udp6(VIP6, b"")[..14 + 30].to_vec()),
        ("udp6 to the VIP, payload length > frame", {
            let mut f = udp6(VIP6, b"x");
            f[18..20].copy_from_slice(&500u16.to_be_bytes());
            f
        }),
    ];
    for (what, frame) in &frames {
        tx.send(frame)
            .unwrap_or_else(|e| panic!("sending {what}: {e}"));
    }
    // A frame shorter than an Ethernet header: the kernel may refuse to send it.
    let short = tx.send(&[0xff; 10]);

    let c = wait_for(&filter, |c| {
        let d = c.since(&before);
        d.pass_vip.packets >= 3
            && d.drop_malformed_vip.packets >= 4
            && d.drop_vlan_vip.packets >= 3
            && d.pass_host.packets >= 6
    });
    let d = c.since(&before);
    println!(
        "counters after {} frames (10-byte frame: {short:?}):",
        frames.len()
    );
    print_counters(&d);
    // The kernel refuses AF_PACKET frames shorter than the link header
    // (EINVAL), so malformed_eth can only be checked when it let one through.
    if short.is_ok() {
        assert_eq!(d.malformed_eth.packets, 1, "malformed_eth");
    } else {
        assert_eq!(d.malformed_eth.packets, 0, "malformed_eth");
    }

    assert_eq!(d.arp_vip.packets, 1, "arp_vip (untagged only)");
    assert_eq!(d.ipv4_vip.packets, 1, "ipv4_vip (untagged only)");
    assert_eq!(d.ipv6_vip.packets, 1, "ipv6_vip (untagged only)");
    assert_eq!(d.pass_vip.packets, 3, "pass_vip");
    // Tagged frames to a VIP are dropped (the stack speaks untagged
    // Ethernet only); the tagged frame to the host passed (below).
    assert_eq!(
        d.drop_vlan_vip.packets, 3,
        "drop_vlan_vip (802.1Q udp, 802.1ad arp, 802.1Q udp6)"
    );
    assert_eq!(d.redirect_vip.packets, 0, "redirect_vip");
    assert_eq!(
        d.drop_malformed_vip.packets, 4,
        "drop_malformed_vip (ihl, len, tcp, ipv6 len)"
    );
    assert_eq!(
        d.malformed_ipv6.packets, 2,
        "malformed_ipv6 (truncated, len)"
    );
    assert_eq!(
        d.malformed_ipv4.packets, 3,
        "malformed_ipv4 (ihl, len vip, len host)"
    );
    assert_eq!(d.malformed_l4.packets, 1, "malformed_l4");
    assert_eq!(d.malformed_vlan.packets, 1, "malformed_vlan");
    assert_eq!(d.malformed_arp.packets, 1, "malformed_arp");
    // host udp + tagged host udp + host bad length + truncated vlan +
    // truncated arp + truncated ipv6
    assert!(d.pass_host.packets >= 6, "pass_host");
    assert_eq!(
        d.malformed_total(),
        8 + d.malformed_eth.packets,
        "malformed_total"
    );
    let arp_len = frames[0].1.len() as u64;
    assert_eq!(d.arp_vip.bytes, arp_len, "arp_vip bytes");

    filter.detach().expect("detach");
    assert!(!xdp_attached(XDP_IF), "XDP still attached after detach");

    // Attaching again after a clean detach works (Auto picks native on veth).
    let again = XdpFilter::attach(XDP_IF, AttachMode::Auto, &[], VipAction::PassToKernel)
        .expect("re-attach");
    assert_eq!(again.mode(), AttachMode::Native);
    drop(again);
    assert!(!xdp_attached(XDP_IF), "XDP still attached after drop");
}

#[test]
fn redirect_without_socket_falls_back_to_pass() {
    outer("redir", "inner_redirect_without_socket_falls_back_to_pass");
}

#[test]
#[ignore = "runs inside the namespace made by redirect_without_socket_falls_back_to_pass"]
fn inner_redirect_without_socket_falls_back_to_pass() {
    if !inner_guard("inner_redirect_without_socket_falls_back_to_pass") {
        return;
    }
    let mut filter = XdpFilter::attach(
        XDP_IF,
        AttachMode::Native,
        &[IpAddr::V4(VIP)],
        VipAction::RedirectToXsk,
    )
    .expect("attach native XDP to the veth");
    match XdpFilter::attach("fg-nope0", AttachMode::Auto, &[], VipAction::PassToKernel) {
        Err(e @ EbpfError::UnknownInterface { .. }) => assert!(e.to_string().contains("fg-nope0")),
        other => panic!("missing interface: expected UnknownInterface, got {other:?}"),
    }
    match filter.register_xsk(64, 0) {
        Err(EbpfError::QueueOutOfRange { .. }) => {}
        other => panic!("queue 64: expected QueueOutOfRange, got {other:?}"),
    }

    let tx = RawSender::new(SEND_IF);
    let before = filter.counters().unwrap();
    tx.send(&arp_request(VIP)).unwrap();
    tx.send(&udp4(VIP, b"no socket")).unwrap();
    tx.send(&udp4(HOST, b"host")).unwrap();
    let c = wait_for(&filter, |c| {
        let d = c.since(&before);
        d.pass_vip.packets >= 2 && d.pass_host.packets >= 1
    });
    let d = c.since(&before);
    print_counters(&d);
    assert_eq!(d.redirect_vip.packets, 0, "redirect_vip without a socket");
    assert_eq!(d.pass_vip.packets, 2, "pass_vip (fallback)");
    assert_eq!(d.arp_vip.packets, 1);
    assert_eq!(d.ipv4_vip.packets, 1);
    assert!(d.pass_host.packets >= 1);
    assert_eq!(d.malformed_total(), 0);

    // The VIP set can change at run time.
    filter.set_vips(&[]).unwrap();
    assert!(filter.vips().unwrap().is_empty());
    let before = filter.counters().unwrap();
    tx.send(&udp4(VIP, b"no longer a vip")).unwrap();
    let d = wait_for(&filter, |c| c.since(&before).pass_host.packets >= 1).since(&before);
    assert_eq!(d.ipv4_vip.packets, 0);
    assert!(d.pass_host.packets >= 1);
}
