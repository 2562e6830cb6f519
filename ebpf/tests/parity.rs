//! Parity of the two filter tiers: every frame of one corpus runs through the
//! real XDP program (`BPF_PROG_TEST_RUN`, loaded but attached nowhere) and
//! through its Rust twin (`swfilter`, what DPDK workers run), under the same
//! rules; both must reach the same verdict and move the same counters and
//! rule counters by the same amounts, frame by frame.
//!
//! The corpus: hand-made frames for every branch of the program (ARP, IPv4,
//! IPv6 with extension chains, ICMPv6 neighbour discovery, TCP flag scans,
//! fragments, VLAN tags, bad lengths), every truncation of a TCP SYN (plain,
//! tagged, IPv6 with extension headers), and seeded byte mutations of them.
//!
//! The program runs with `vip_action = pass`, so a VIP frame it lets through
//! is counted `pass_vip` where the Rust filter counts `redirect_vip` (there is
//! no AF_XDP socket in a test run); the comparison maps one onto the other.
//! The kernel refuses test frames shorter than an Ethernet header: those run
//! through the Rust filter only. Needs root (loading BPF); skipped otherwise.
//!
//! Escalated sources (issue #20) run the same way: the same sources blocked
//! (active and expired, IPv4 and IPv6) through `XdpFilter::block_source` and
//! `BlockedSources::block`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ferrogate_ebpf::swfilter::{Buckets, FilterCounters, RuleIndex, SwFilter, SwRules};
use ferrogate_ebpf::{
    CidrAction, CidrRule, EbpfError, FailMode, FilterRules, L4Rule, MAX_BLOCKED_SOURCES, RateKey,
    RateRule, Verdict, VipAction, XdpCounters, XdpFilter, monotonic_ns,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x10);
const HOST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const HOST6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
const ORIGIN: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
const DENIED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const OFFICE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);
/// Escalated (blocked) by an L7 limit, active in the escalation scenarios.
const ABUSER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
const ABUSER6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x66);
const HOUR_NS: u64 = 3_600_000_000_000;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMPV6: u8 = 58;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

// ---- frames -------------------------------------------------------------

fn eth(ethertype: u16, body: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(body);
    f
}

fn vlan(tpid: u16, frame: &[u8]) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&[0, 7]);
    f.extend_from_slice(&frame[12..]);
    f
}

fn arp(op: u16, target: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    a.extend_from_slice(&CLIENT.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target.octets());
    eth(0x0806, &a)
}

fn tcp_header(dport: u16, flags: u8, doff: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = doff << 4;
    t[13] = flags;
    t
}

fn udp_header(dport: u16, payload: usize) -> Vec<u8> {
    let mut u = vec![0u8; 8 + payload];
    u[0..2].copy_from_slice(&5353u16.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    u
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    ip.extend_from_slice(l4);
    eth(0x0800, &ip)
}

fn tcp4(src: Ipv4Addr, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    ipv4(src, dst, TCP, &tcp_header(dport, flags, 5))
}

fn udp4(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    ipv4(src, dst, UDP, &udp_header(dport, 4))
}

/// IPv6 with extension headers `ext` (next-header values) before `proto`.
fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, ext: &[u8], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (i, &h) in ext.iter().enumerate() {
        let next = ext.get(i + 1).copied().unwrap_or(proto);
        match h {
            // Fragment header: 8 bytes; AH: (len + 2) * 4 with len 1 = 12.
            44 => payload.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 1]),
            51 => payload.extend_from_slice(&[next, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            _ => payload.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]),
        }
    }
    payload.extend_from_slice(l4);
    let mut ip = vec![0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    ip[6] = ext.first().copied().unwrap_or(proto);
    ip[7] = 64;
    ip[8..24].copy_from_slice(&src.octets());
    ip[24..40].copy_from_slice(&dst.octets());
    ip.extend_from_slice(&payload);
    eth(0x86dd, &ip)
}

fn tcp6(src: Ipv6Addr, dst: Ipv6Addr, ext: &[u8], flags: u8) -> Vec<u8> {
    ipv6(src, dst, ext, TCP, &tcp_header(443, flags, 5))
}

fn icmp6(dst: Ipv6Addr, kind: u8, target: Ipv6Addr) -> Vec<u8> {
    icmp6_from(CLIENT6, dst, kind, target)
}

fn icmp6_from(src: Ipv6Addr, dst: Ipv6Addr, kind: u8, target: Ipv6Addr) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    ipv6(src, dst, &[], ICMPV6, &m)
}

fn with(mut f: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
    f[at..at + bytes.len()].copy_from_slice(bytes);
    f
}

/// Frames for every branch of the program, named for the failure message.
fn hand_made() -> Vec<(String, Vec<u8>)> {
    let ip = 14;
    let mut v: Vec<(&str, Vec<u8>)> = vec![
        ("arp request for the vip", arp(1, VIP)),
        ("arp reply for the vip", arp(2, VIP)),
        ("arp for the host", arp(1, HOST)),
        ("arp, not ethernet/ipv4", with(arp(1, VIP), ip, &[0, 6])),
        ("tcp syn to the vip", tcp4(CLIENT, VIP, 80, SYN)),
        ("tcp ack to the vip", tcp4(CLIENT, VIP, 80, ACK)),
        ("tcp syn to another port", tcp4(CLIENT, VIP, 8443, SYN)),
        ("tcp syn to the host", tcp4(CLIENT, HOST, 22, SYN)),
        ("tcp from the origin", tcp4(ORIGIN, VIP, 9, ACK)),
        ("tcp from a denied net", tcp4(DENIED, VIP, 80, SYN)),
        ("tcp from the office", tcp4(OFFICE, VIP, 80, SYN)),
        ("tcp null scan", tcp4(CLIENT, VIP, 80, 0)),
        ("tcp syn+fin", tcp4(CLIENT, VIP, 80, SYN | 0x01)),
        ("tcp syn+rst", tcp4(CLIENT, VIP, 80, SYN | 0x04)),
        ("tcp xmas", tcp4(CLIENT, VIP, 80, 0x29)),
        ("tcp fin without ack", tcp4(CLIENT, VIP, 80, 0x01)),
        ("tcp bad flags to the host", tcp4(CLIENT, HOST, 80, 0x03)),
        (
            "tcp doff 4",
            ipv4(CLIENT, VIP, TCP, &tcp_header(80, SYN, 4)),
        ),
        (
            "tcp doff past the payload",
            ipv4(CLIENT, VIP, TCP, &tcp_header(80, SYN, 8)),
        ),
        ("udp to the vip", udp4(CLIENT, VIP, 53)),
        ("udp to the host", udp4(CLIENT, HOST, 53)),
        ("udp from the office", udp4(OFFICE, VIP, 53)),
        ("udp header cut", ipv4(CLIENT, VIP, UDP, &[0, 53, 0, 53])),
        (
            "icmp to the vip",
            ipv4(CLIENT, VIP, 1, &[8, 0, 0, 0, 0, 1, 0, 1]),
        ),
        (
            "ipv4 more fragments",
            with(udp4(CLIENT, VIP, 53), ip + 6, &[0x20, 0]),
        ),
        (
            "ipv4 fragment offset",
            with(udp4(CLIENT, VIP, 53), ip + 6, &[0, 0x10]),
        ),
        (
            "ipv4 fragment to the host",
            with(udp4(CLIENT, HOST, 53), ip + 6, &[0x20, 0]),
        ),
        ("ipv4 ihl 4", with(udp4(CLIENT, VIP, 53), ip, &[0x44])),
        ("ipv4 ihl 15", with(udp4(CLIENT, VIP, 53), ip, &[0x4f])),
        (
            "ipv4 total length too long",
            with(udp4(CLIENT, VIP, 53), ip + 2, &[1, 0]),
        ),
        (
            "ipv4 total length below the header",
            with(udp4(CLIENT, VIP, 53), ip + 2, &[0, 10]),
        ),
        (
            "ipv4 bad length to the host",
            with(udp4(CLIENT, HOST, 53), ip + 2, &[1, 0]),
        ),
        ("tcp6 syn to the vip", tcp6(CLIENT6, VIP6, &[], SYN)),
        ("tcp6 syn to the host", tcp6(CLIENT6, HOST6, &[], SYN)),
        (
            "tcp6 behind hop-by-hop, routing, dest opts",
            tcp6(CLIENT6, VIP6, &[0, 43, 60], SYN),
        ),
        ("tcp6 behind an AH", tcp6(CLIENT6, VIP6, &[51], SYN)),
        ("tcp6 fragment", tcp6(CLIENT6, VIP6, &[60, 44], SYN)),
        (
            "tcp6 fragment to the host",
            tcp6(CLIENT6, HOST6, &[44], SYN),
        ),
        (
            "tcp6 six extension headers",
            tcp6(CLIENT6, VIP6, &[0, 60, 60, 60, 60, 43], SYN),
        ),
        (
            "tcp6 seven extension headers",
            tcp6(CLIENT6, VIP6, &[0, 60, 60, 60, 60, 60, 43], SYN),
        ),
        ("tcp6 bad flags", tcp6(CLIENT6, VIP6, &[], 0)),
        (
            "udp6 to the vip",
            ipv6(CLIENT6, VIP6, &[], UDP, &udp_header(53, 4)),
        ),
        (
            "ipv6 payload length too long",
            with(tcp6(CLIENT6, VIP6, &[], SYN), ip + 4, &[1, 0]),
        ),
        (
            "ipv6 extension longer than the payload",
            with(tcp6(CLIENT6, VIP6, &[60], SYN), ip + 40 + 1, &[9]),
        ),
        (
            "icmp6 neighbour solicitation for the vip, to its group",
            icmp6(
                Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0x10),
                135,
                VIP6,
            ),
        ),
        (
            "icmp6 neighbour solicitation for the host",
            icmp6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 1), 135, HOST6),
        ),
        ("icmp6 neighbour advert to the vip", icmp6(VIP6, 136, VIP6)),
        ("icmp6 echo to the vip", icmp6(VIP6, 128, VIP6)),
        ("icmp6 echo to the host", icmp6(HOST6, 128, HOST6)),
        (
            "icmp6 cut after two bytes",
            ipv6(CLIENT6, VIP6, &[], ICMPV6, &[128, 0]),
        ),
        ("unknown ethertype", eth(0x88cc, &[0; 40])),
        ("a bare ethernet header", eth(0x0800, &[])),
    ];
    let tagged: Vec<(String, Vec<u8>)> = [
        ("arp request for the vip", arp(1, VIP)),
        ("tcp syn to the vip", tcp4(CLIENT, VIP, 80, SYN)),
        ("tcp syn to the host", tcp4(CLIENT, HOST, 22, SYN)),
        ("tcp6 syn to the vip", tcp6(CLIENT6, VIP6, &[], SYN)),
        ("tcp null scan", tcp4(CLIENT, VIP, 80, 0)),
    ]
    .into_iter()
    .flat_map(|(name, f)| {
        [
            (format!("802.1Q {name}"), vlan(0x8100, &f)),
            (format!("802.1ad {name}"), vlan(0x88a8, &f)),
            (
                format!("double-tagged {name}"),
                vlan(0x88a8, &vlan(0x8100, &f)),
            ),
        ]
    })
    .collect();
    let mut out: Vec<(String, Vec<u8>)> = v.drain(..).map(|(n, f)| (n.to_owned(), f)).collect();
    out.extend(tagged);
    out
}

/// Frames from the escalated sources: to the VIPs (dropped unless an
/// earlier check decides), to the host, neighbour discovery, malformed,
/// fragmented and tagged ones (decided before the deny set).
fn from_abusers() -> Vec<(String, Vec<u8>)> {
    let solicited = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0x10);
    let v: Vec<(&str, Vec<u8>)> = vec![
        ("abuser syn to the vip", tcp4(ABUSER, VIP, 80, SYN)),
        ("abuser ack to the vip", tcp4(ABUSER, VIP, 80, ACK)),
        ("abuser udp to the vip", udp4(ABUSER, VIP, 53)),
        ("abuser udp to a closed port", udp4(ABUSER, VIP, 9)),
        ("abuser syn to the host", tcp4(ABUSER, HOST, 22, SYN)),
        ("abuser bad flags to the vip", tcp4(ABUSER, VIP, 80, 0)),
        (
            "abuser fragment to the vip",
            with(udp4(ABUSER, VIP, 53), 14 + 6, &[0x20, 0]),
        ),
        (
            "abuser tagged syn",
            vlan(0x8100, &tcp4(ABUSER, VIP, 80, SYN)),
        ),
        ("office (blocked) syn", tcp4(OFFICE, VIP, 80, SYN)),
        ("origin (blocked) reply", tcp4(ORIGIN, VIP, 9, ACK)),
        ("denied (blocked) syn", tcp4(DENIED, VIP, 80, SYN)),
        ("client (expired) syn", tcp4(CLIENT, VIP, 80, SYN)),
        ("abuser6 syn to the vip", tcp6(ABUSER6, VIP6, &[], SYN)),
        (
            "abuser6 syn behind options",
            tcp6(ABUSER6, VIP6, &[0, 60], SYN),
        ),
        ("abuser6 syn to the host", tcp6(ABUSER6, HOST6, &[], SYN)),
        (
            "abuser6 echo to the vip",
            icmp6_from(ABUSER6, VIP6, 128, VIP6),
        ),
        (
            "abuser6 neighbour solicitation for the vip",
            icmp6_from(ABUSER6, solicited, 135, VIP6),
        ),
        (
            "abuser6 neighbour advert to the vip",
            icmp6_from(ABUSER6, VIP6, 136, ABUSER6),
        ),
        ("client6 (expired) syn", tcp6(CLIENT6, VIP6, &[], SYN)),
        ("client6 (expired) echo", icmp6(VIP6, 128, VIP6)),
    ];
    v.into_iter().map(|(n, f)| (n.to_owned(), f)).collect()
}

/// The escalated sources of the scenarios: active ones (an hour ahead) and
/// expired ones (a second ago), both families. The office (allow-listed),
/// the origin (upstream) and a denied source are blocked too, to pin the
/// order of the checks.
fn escalations(now: u64) -> Vec<(IpAddr, u64)> {
    vec![
        (IpAddr::V4(ABUSER), now + HOUR_NS),
        (IpAddr::V6(ABUSER6), now + HOUR_NS),
        (IpAddr::V4(CLIENT), now - 1_000_000_000),
        (IpAddr::V6(CLIENT6), now - 1_000_000_000),
        (IpAddr::V4(OFFICE), now + HOUR_NS),
        (IpAddr::V4(ORIGIN), now + HOUR_NS),
        (IpAddr::V4(DENIED), now + HOUR_NS),
    ]
}

/// Every prefix of a TCP SYN to the VIP: plain, tagged, and over IPv6 with
/// an extension chain.
fn truncations() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let syn = tcp4(CLIENT, VIP, 80, SYN);
    let cases = [
        ("tcp syn", syn.clone()),
        ("802.1Q tcp syn", vlan(0x8100, &syn)),
        (
            "tcp6 syn behind extensions",
            tcp6(CLIENT6, VIP6, &[0, 60], SYN),
        ),
    ];
    for (name, f) in cases {
        for len in 0..f.len() {
            out.push((format!("{name} cut to {len} bytes"), f[..len].to_vec()));
        }
    }
    out
}

/// Seeded single- and multi-byte mutations of the hand-made frames.
fn mutations(seed: u64, count: usize) -> Vec<(String, Vec<u8>)> {
    let base = hand_made();
    let mut x = seed;
    let mut next = move || {
        // xorshift64*: deterministic, no dependency.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    (0..count)
        .map(|i| {
            let (name, mut f) = base[next() as usize % base.len()].clone();
            let flips = 1 + next() as usize % 3;
            for _ in 0..flips {
                // Mutate the headers, where the decisions are.
                let at = 12 + next() as usize % f.len().saturating_sub(12).clamp(1, 80);
                if at < f.len() {
                    f[at] = next() as u8;
                }
            }
            if next() % 8 == 0 {
                let keep = next() as usize % (f.len() + 1);
                f.truncate(keep.max(14));
            }
            (format!("mutant {i} of {name}"), f)
        })
        .collect()
}

// ---- the two filters ----------------------------------------------------

struct Rust {
    rules: SwRules,
    buckets: Buckets,
    counters: FilterCounters,
    index: RuleIndex,
}

impl Rust {
    fn new(rules: &FilterRules, vips: &[IpAddr]) -> Rust {
        let mut index = RuleIndex::default();
        let rules = SwRules::compile(rules, vips, &mut index, 0).expect("rules compile");
        Rust {
            rules,
            buckets: Buckets::default(),
            counters: FilterCounters::default(),
            index,
        }
    }

    fn counters(&self) -> XdpCounters {
        let mut c = XdpCounters::default();
        self.counters.add_to(&mut c);
        c
    }

    fn rule_counters(&self) -> BTreeMap<String, Verdict> {
        self.index
            .ids()
            .into_iter()
            .map(|(id, slot)| (id, self.counters.rule(slot)))
            .collect()
    }

    fn block(&self, blocks: &[(IpAddr, u64)]) {
        for &(addr, until) in blocks {
            self.buckets
                .blocked()
                .block(addr, until)
                .expect("room in the deny set");
        }
    }

    fn admit(&self, frame: &[u8]) -> bool {
        SwFilter {
            rules: &self.rules,
            buckets: &self.buckets,
            counters: &self.counters,
        }
        .admit(frame, monotonic_ns())
    }
}

fn kernel_rule_counters(xdp: &XdpFilter) -> BTreeMap<String, Verdict> {
    xdp.rule_counters()
        .expect("rule counters")
        .into_iter()
        .collect()
}

/// What one frame did: verdict (true = to the stack/kernel), counters moved.
#[derive(Debug, PartialEq)]
struct Effect {
    admitted: bool,
    counters: Vec<(&'static str, Verdict)>,
    rules: Vec<(String, Verdict)>,
}

fn effect(
    admitted: bool,
    before: (&XdpCounters, &BTreeMap<String, Verdict>),
    after: (&XdpCounters, &BTreeMap<String, Verdict>),
    kernel: bool,
) -> Effect {
    let mut counters: Vec<_> = after
        .0
        .since(before.0)
        .iter()
        .filter(|(_, v)| v.packets != 0 || v.bytes != 0)
        // No AF_XDP socket in a test run: the program's `pass_vip` is the
        // Rust filter's `redirect_vip` (both: to the stack).
        .map(|(name, v)| match (kernel, name) {
            (true, "pass_vip") => ("redirect_vip", v),
            _ => (name, v),
        })
        .collect();
    counters.sort_by_key(|(name, _)| *name);
    let rules = after
        .1
        .iter()
        .filter_map(|(id, v)| {
            let was = before.1.get(id).copied().unwrap_or_default();
            let d = Verdict {
                packets: v.packets - was.packets,
                bytes: v.bytes - was.bytes,
            };
            (d != Verdict::default()).then(|| (id.clone(), d))
        })
        .collect();
    Effect {
        admitted,
        counters,
        rules,
    }
}

/// What a scenario did: frames run through both, the counters the program
/// moved at least once (the corpus's reach), and the frames that differ.
struct Outcome {
    compared: usize,
    /// The program's verdict per frame it ran (true = passed).
    verdicts: Vec<bool>,
    reached: std::collections::BTreeSet<&'static str>,
    mismatches: Vec<String>,
}

/// Runs `frames` through both filters under `rules`.
fn compare(rules: &FilterRules, frames: &[(String, Vec<u8>)]) -> Outcome {
    compare_blocked(rules, frames, &[])
}

/// Runs `frames` through both filters under `rules`, with `blocks` in both
/// deny sets.
fn compare_blocked(
    rules: &FilterRules,
    frames: &[(String, Vec<u8>)],
    blocks: &[(IpAddr, u64)],
) -> Outcome {
    let vips = [IpAddr::V4(VIP), IpAddr::V6(VIP6)];
    let mut xdp = XdpFilter::load(
        "parity",
        &vips,
        VipAction::PassToKernel,
        FailMode::Open,
        rules,
    )
    .expect("load the XDP program (root, BPF)");
    let rust = Rust::new(rules, &vips);
    for &(addr, until) in blocks {
        xdp.block_source(addr, until).expect("block in the program");
    }
    rust.block(blocks);
    let mut compared = 0;
    let mut verdicts = Vec::new();
    let mut reached = std::collections::BTreeSet::new();
    let mut mismatches = Vec::new();
    for (name, frame) in frames {
        let (rb, rrb) = (rust.counters(), rust.rule_counters());
        let admitted = rust.admit(frame);
        let ours = effect(
            admitted,
            (&rb, &rrb),
            (&rust.counters(), &rust.rule_counters()),
            false,
        );
        if frame.len() < 14 {
            // The kernel refuses it; the Rust filter must count it malformed
            // and let the kernel have it.
            let expected = vec![
                ("malformed_eth", ours_verdict(frame)),
                ("pass_host", ours_verdict(frame)),
            ];
            if !(ours.admitted && ours.counters == expected && ours.rules.is_empty()) {
                mismatches.push(format!("{name}: rust {ours:?}"));
            }
            continue;
        }
        let (kb, krb) = (
            xdp.counters().expect("counters"),
            kernel_rule_counters(&xdp),
        );
        let action = xdp.test_run(frame).expect("BPF_PROG_TEST_RUN");
        assert!(
            action == XDP_PASS || action == XDP_DROP,
            "{name}: XDP action {action}"
        );
        let theirs = effect(
            action == XDP_PASS,
            (&kb, &krb),
            (
                &xdp.counters().expect("counters"),
                &kernel_rule_counters(&xdp),
            ),
            true,
        );
        compared += 1;
        verdicts.push(theirs.admitted);
        reached.extend(theirs.counters.iter().map(|(name, _)| *name));
        if ours != theirs {
            mismatches.push(format!(
                "{name} ({} bytes {:02x?}):\n  xdp  {theirs:?}\n  rust {ours:?}",
                frame.len(),
                &frame[..frame.len().min(80)]
            ));
        }
    }
    Outcome {
        compared,
        verdicts,
        reached,
        mismatches,
    }
}

fn ours_verdict(frame: &[u8]) -> Verdict {
    Verdict {
        packets: 1,
        bytes: frame.len() as u64,
    }
}

fn cidr(id: &str, action: CidrAction, prefixes: &[(&str, u8)]) -> CidrRule {
    CidrRule {
        id: id.into(),
        action,
        prefixes: prefixes
            .iter()
            .map(|(a, l)| (a.parse().unwrap(), *l))
            .collect(),
    }
}

fn rate(id: &str, pps: u64, burst: u64) -> RateRule {
    RateRule {
        id: id.into(),
        key: RateKey::Source {
            prefix4: 32,
            prefix6: 64,
        },
        pps,
        burst_packets: burst,
        bps: 0,
        burst_bytes: 0,
        syn_only: false,
        vip: None,
        port: None,
        protocol: None,
    }
}

/// Deny and allow prefixes, an upstream exemption and a per-VIP L4 list.
fn deny_and_l4_rules() -> FilterRules {
    FilterRules {
        default_deny: false,
        cidr: vec![
            cidr("deny-doc-net", CidrAction::Deny, &[("192.0.2.0", 24)]),
            cidr("allow-office", CidrAction::Allow, &[("198.51.100.0", 24)]),
            cidr("origins", CidrAction::Upstream, &[("10.77.0.3", 32)]),
            cidr("deny-v6-peer", CidrAction::Deny, &[("fd77::2", 128)]),
        ],
        rate: Vec::new(),
        l4: vec![L4Rule {
            id: "vip-web-dns".into(),
            vip: IpAddr::V4(VIP),
            allow: vec![(TCP, 80), (UDP, 53)],
        }],
    }
}

/// Allow-list mode: only the office and the origins reach the VIPs.
fn allow_list_rules() -> FilterRules {
    FilterRules {
        default_deny: true,
        cidr: vec![
            cidr("allow-office", CidrAction::Allow, &[("198.51.100.0", 24)]),
            cidr("origins", CidrAction::Upstream, &[("10.77.0.3", 32)]),
        ],
        rate: Vec::new(),
        l4: Vec::new(),
    }
}

/// Fails on any frame that differs, and when the corpus missed a counter
/// the scenario must reach (a corpus that stopped covering a branch).
fn report(scenario: &str, out: &Outcome, must_reach: &[&str]) {
    println!(
        "{scenario}: {} frames through both filters, counters reached: {:?}",
        out.compared, out.reached
    );
    assert!(
        out.mismatches.is_empty(),
        "{scenario}: {} of the frames differ between the XDP program and the Rust filter:\n{}",
        out.mismatches.len(),
        out.mismatches.join("\n")
    );
    let missed: Vec<_> = must_reach
        .iter()
        .filter(|c| !out.reached.contains(*c))
        .collect();
    assert!(missed.is_empty(), "{scenario}: no frame reached {missed:?}");
}

/// What any corpus run without rules must reach.
const PARSE_COUNTERS: &[&str] = &[
    "pass_host",
    "redirect_vip",
    "arp_vip",
    "ipv4_vip",
    "ipv6_vip",
    "malformed_vlan",
    "malformed_arp",
    "malformed_ipv4",
    "malformed_ipv6",
    "malformed_l4",
    "bad_tcp_flags",
    "drop_malformed_vip",
    "drop_fragment_vip",
    "drop_vlan_vip",
];

fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut frames = hand_made();
    frames.extend(truncations());
    frames.extend(mutations(0x5eed_f00d, 3000));
    frames
}

#[test]
fn every_frame_gets_the_same_verdict_and_counters_from_xdp_and_rust_without_rules() {
    if !is_root() {
        eprintln!("skipped: loading BPF needs root");
        return;
    }
    report(
        "no rules",
        &compare(&FilterRules::default(), &corpus()),
        PARSE_COUNTERS,
    );
}

#[test]
fn every_frame_gets_the_same_verdict_and_counters_from_xdp_and_rust_under_deny_and_l4_rules() {
    if !is_root() {
        eprintln!("skipped: loading BPF needs root");
        return;
    }
    let must = [PARSE_COUNTERS, &["drop_deny", "drop_l4"]].concat();
    report(
        "deny + l4",
        &compare(&deny_and_l4_rules(), &corpus()),
        &must,
    );
}

#[test]
fn every_frame_gets_the_same_verdict_and_counters_from_xdp_and_rust_in_allow_list_mode() {
    if !is_root() {
        eprintln!("skipped: loading BPF needs root");
        return;
    }
    report(
        "allow-list",
        &compare(&allow_list_rules(), &corpus()),
        &["drop_not_allowed", "redirect_vip", "pass_host"],
    );
}

/// Rate rules: a burst of 5 per source at 1 packet/s, then a global SYN
/// limit; far less than a token refills while the frames run, so both
/// filters must cut at the same frame.
#[test]
fn rate_rules_cut_the_same_frames_in_xdp_and_rust() {
    if !is_root() {
        eprintln!("skipped: loading BPF needs root");
        return;
    }
    let mut syn_limit = rate("syn-global", 1, 7);
    syn_limit.key = RateKey::Global;
    syn_limit.syn_only = true;
    let mut dns = rate("dns-per-source", 1, 5);
    dns.protocol = Some(UDP);
    dns.port = Some(53);
    dns.vip = Some(IpAddr::V4(VIP));
    let rules = FilterRules {
        rate: vec![dns, syn_limit],
        ..Default::default()
    };
    let mut frames = Vec::new();
    for i in 0..12 {
        frames.push((format!("dns {i} from the client"), udp4(CLIENT, VIP, 53)));
        frames.push((format!("dns {i} from the office"), udp4(OFFICE, VIP, 53)));
        frames.push((format!("udp {i} to another port"), udp4(CLIENT, VIP, 54)));
        frames.push((format!("syn {i}"), tcp4(CLIENT, VIP, 80, SYN)));
        frames.push((format!("syn6 {i}"), tcp6(CLIENT6, VIP6, &[], SYN)));
        frames.push((format!("ack {i}"), tcp4(CLIENT, VIP, 80, ACK)));
    }
    report(
        "rate",
        &compare(&rules, &frames),
        &["drop_rate", "redirect_vip"],
    );
}

/// The corpus plus frames from escalated sources, under deny and L4 rules,
/// with active and expired blocks of both families in both filters.
#[test]
fn every_frame_gets_the_same_verdict_and_counters_from_xdp_and_rust_with_escalated_sources() {
    if !is_root() {
        eprintln!("skipped: loading BPF needs root");
        return;
    }
    let mut frames = from_abusers();
    frames.extend(corpus());
    let must = [PARSE_COUNTERS, &["drop_escalated", "drop_deny", "drop_l4"]].concat();
    let out = compare_blocked(&deny_and_l4_rules(), &frames, &escalations(monotonic_ns()));
    report("escalated sources", &out, &must);
    // The order of the checks, frame by frame (the program's verdicts; the
    // Rust filter matched them above).
    let expect = [
        ("abuser syn to the vip", false),
        ("abuser udp to the vip", false),
        ("abuser syn to the host", true),
        ("office (blocked) syn", false),
        ("origin (blocked) reply", true),
        ("client (expired) syn", true),
        ("abuser6 syn to the vip", false),
        ("abuser6 echo to the vip", false),
        ("abuser6 syn to the host", true),
        ("abuser6 neighbour solicitation for the vip", true),
        ("abuser6 neighbour advert to the vip", true),
    ];
    for (name, passed) in expect {
        let i = frames.iter().position(|(n, _)| n == name).unwrap();
        assert_eq!(out.verdicts[i], passed, "{name}");
    }
}

/// Blocked sources are dropped before the rate buckets: a blocked source's
/// SYNs take no tokens of a global SYN limit, an expired one's do.
#[test]
fn escalated_sources_take_no_rate_tokens_in_xdp_and_rust() {
    if !is_root() {
        eprintln!("skipped: loading BPF needs root");
        return;
    }
    let mut syn_limit = rate("syn-global", 1, 3);
    syn_limit.key = RateKey::Global;
    syn_limit.syn_only = true;
    let rules = FilterRules {
        rate: vec![syn_limit],
        ..Default::default()
    };
    let mut frames = Vec::new();
    for i in 0..6 {
        frames.push((format!("abuser syn {i}"), tcp4(ABUSER, VIP, 80, SYN)));
        frames.push((format!("abuser6 syn {i}"), tcp6(ABUSER6, VIP6, &[], SYN)));
    }
    for i in 0..4 {
        frames.push((format!("client syn {i}"), tcp4(CLIENT, VIP, 80, SYN)));
    }
    let out = compare_blocked(&rules, &frames, &escalations(monotonic_ns()));
    report("escalated + rate", &out, &["drop_escalated", "drop_rate"]);
    let mut expect = vec![false; 12];
    // The expired client's SYNs take the whole burst of 3, then hit the limit.
    expect.extend([true, true, true, false]);
    assert_eq!(out.verdicts, expect);
}

/// The loader's deny-set API on a loaded (not attached) program: block,
/// list, overwrite, expire, unblock, a full set, and the program's verdict
/// following each step.
#[test]
fn loader_blocks_lists_expires_and_unblocks_sources() {
    if !is_root() {
        eprintln!("skipped: loading BPF needs root");
        return;
    }
    let vips = [IpAddr::V4(VIP), IpAddr::V6(VIP6)];
    let mut xdp = XdpFilter::load(
        "blocked",
        &vips,
        VipAction::PassToKernel,
        FailMode::Open,
        &FilterRules::default(),
    )
    .expect("load the XDP program (root, BPF)");
    let syn = tcp4(ABUSER, VIP, 80, SYN);
    let syn6 = tcp6(ABUSER6, VIP6, &[], SYN);
    let run = |xdp: &XdpFilter, f: &[u8]| xdp.test_run(f).expect("BPF_PROG_TEST_RUN");
    assert_eq!(run(&xdp, &syn), XDP_PASS);
    assert!(xdp.blocked_sources().unwrap().is_empty());

    let now = monotonic_ns();
    xdp.block_source(IpAddr::V4(ABUSER), now + HOUR_NS).unwrap();
    xdp.block_source(IpAddr::V6(ABUSER6), now + HOUR_NS)
        .unwrap();
    xdp.block_source(IpAddr::V4(CLIENT), now - 1).unwrap();
    let mut listed = xdp.blocked_sources().unwrap();
    listed.sort();
    assert_eq!(
        listed,
        vec![
            (IpAddr::V4(CLIENT), now - 1),
            (IpAddr::V4(ABUSER), now + HOUR_NS),
            (IpAddr::V6(ABUSER6), now + HOUR_NS),
        ]
    );
    assert_eq!(run(&xdp, &syn), XDP_DROP);
    assert_eq!(run(&xdp, &syn6), XDP_DROP);
    assert_eq!(run(&xdp, &tcp4(CLIENT, VIP, 80, SYN)), XDP_PASS, "expired");
    assert_eq!(run(&xdp, &tcp4(ABUSER, HOST, 22, SYN)), XDP_PASS, "host");
    let c = xdp.counters().unwrap();
    assert_eq!(c.drop_escalated.packets, 2);
    assert_eq!(c.drop_escalated.bytes, (syn.len() + syn6.len()) as u64);

    // Overwrite with an expiry in the past: the source passes again.
    xdp.block_source(IpAddr::V4(ABUSER), now).unwrap();
    assert_eq!(run(&xdp, &syn), XDP_PASS);
    // Sweep: the two expired entries go, the active one stays.
    assert_eq!(xdp.expire_blocked(monotonic_ns()).unwrap(), 2);
    assert_eq!(
        xdp.blocked_sources().unwrap(),
        vec![(IpAddr::V6(ABUSER6), now + HOUR_NS)]
    );
    assert!(xdp.unblock_source(IpAddr::V6(ABUSER6)).unwrap());
    assert!(!xdp.unblock_source(IpAddr::V6(ABUSER6)).unwrap());
    assert_eq!(run(&xdp, &syn6), XDP_PASS);
    assert!(xdp.blocked_sources().unwrap().is_empty());

    // A full IPv4 set: a clear error; IPv6 still has room.
    for i in 0..MAX_BLOCKED_SOURCES as u32 {
        let a = Ipv4Addr::from(0x0a00_0000 + i);
        xdp.block_source(IpAddr::V4(a), now + HOUR_NS).unwrap();
    }
    match xdp.block_source(IpAddr::V4(ABUSER), now + HOUR_NS) {
        Err(e @ EbpfError::DenySetFull { .. }) => {
            assert!(e.to_string().contains("deny set is full"), "{e}")
        }
        other => panic!("expected DenySetFull, got {other:?}"),
    }
    xdp.block_source(IpAddr::V6(ABUSER6), now + HOUR_NS)
        .unwrap();
    assert_eq!(
        xdp.blocked_sources().unwrap().len(),
        MAX_BLOCKED_SOURCES + 1
    );
    assert_eq!(
        xdp.expire_blocked(now + HOUR_NS).unwrap(),
        MAX_BLOCKED_SOURCES + 1
    );
}
