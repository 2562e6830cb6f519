//! The XDP filter tier in Rust, for backends without XDP (DPDK): the same
//! parse, malformed checks, CIDR allow/deny (longest prefix wins, allow-list
//! mode, upstream exemption), per-VIP L4 allow lists and token-bucket rate
//! rules as `ebpf/bpf/ferrogate.bpf.c`, with the same counters
//! ([`XdpCounters`] and per-rule counters), so stats read the same names.
//!
//! Per packet: no allocation, no lock, no syscall. Rules are compiled into
//! [`SwRules`] (hash tables per prefix length) off the data path and swapped
//! atomically; token buckets live in one fixed-size table shared by the
//! workers ([`Buckets`], relaxed atomics — like the program's shared LRU hash,
//! concurrent updates of one bucket may race by a token). The escalated
//! sources (`blocked4`/`blocked6` of the program) are [`BlockedSources`],
//! shared the same way: [`Buckets`] carries them, so every worker that
//! shares the buckets shares the deny set.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

mod blocked;

pub use blocked::{BlockedSetFull, BlockedSources};

use crate::rules::{MAX_RULES, addr_bytes, masked};
use crate::{CidrAction, Counter, FilterRules, NOT_ALLOWED_RULE, RateKey, Verdict, XdpCounters};

const NSEC_PER_SEC: u64 = 1_000_000_000;
const MAX_EXT_HEADERS: usize = 6;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
const NEXTHDR_ICMPV6: u8 = 58;
const ICMPV6_NS: u8 = 135;

/// A cheap multiplicative hasher for fixed-size keys (no per-lookup allocation).
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(i as u64)
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(i as u64)
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64)
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u128(&mut self, i: u128) {
        self.write_u64(i as u64);
        self.write_u64((i >> 64) as u64);
    }
}

type FxBuild = std::hash::BuildHasherDefault<FxHasher>;

/// Longest-prefix match over one family: one hash table keyed by
/// (length, masked address), probed from the longest configured length down.
#[derive(Default)]
struct Lpm {
    /// Configured prefix lengths, longest first.
    lens: Vec<u8>,
    map: HashMap<(u8, u128), (u32, CidrAction), FxBuild>,
    bits: u8,
}

impl Lpm {
    fn new(bits: u8) -> Self {
        Lpm {
            bits,
            ..Default::default()
        }
    }

    fn mask(&self, addr: u128, len: u8) -> u128 {
        if len == 0 {
            0
        } else {
            let keep = u128::MAX << (self.bits - len) as u32;
            addr & (keep & (u128::MAX >> (128 - self.bits as u32)))
        }
    }

    fn insert(&mut self, addr: u128, len: u8, v: (u32, CidrAction)) {
        let len = len.min(self.bits);
        self.map.insert((len, self.mask(addr, len)), v);
        if !self.lens.contains(&len) {
            self.lens.push(len);
            self.lens.sort_unstable_by(|a, b| b.cmp(a));
        }
    }

    fn lookup(&self, addr: u128) -> Option<(u32, CidrAction)> {
        for &len in &self.lens {
            if let Some(v) = self.map.get(&(len, self.mask(addr, len))) {
                return Some(*v);
            }
        }
        None
    }
}

#[derive(Clone, Copy)]
struct Rate {
    rule: u32,
    key_hash: u64,
    syn_only: bool,
    global: bool,
    prefix4: u8,
    prefix6: u8,
    vip: Option<([u8; 16], bool)>,
    port: Option<u16>,
    proto: Option<u8>,
    pps: u64,
    burst_pkts: u64,
    bps: u64,
    burst_bytes: u64,
}

/// A compiled rule set (one generation), shared read-only by the workers.
pub struct SwRules {
    pub generation: u32,
    default_deny: bool,
    not_allowed_rule: u32,
    cidr4: Lpm,
    cidr6: Lpm,
    /// (vip, proto, port) → rule; (vip, 0, 0) marks a restricted VIP.
    l4: HashMap<([u8; 16], u8, u16), u32, FxBuild>,
    rate: Vec<Rate>,
    vips4: Vec<[u8; 4]>,
    vips6: Vec<[u8; 16]>,
}

/// Gives rule ids stable counter slots across reloads (like the loader).
#[derive(Default)]
pub struct RuleIndex {
    index: HashMap<String, u32>,
}

impl RuleIndex {
    fn assign(&mut self, rules: &FilterRules) -> Result<(), String> {
        let wanted: Vec<&str> = rules.ids().chain([NOT_ALLOWED_RULE]).collect();
        self.index.retain(|id, _| wanted.contains(&id.as_str()));
        let mut next = 0u32;
        for id in wanted {
            if self.index.contains_key(id) {
                continue;
            }
            while self.index.values().any(|&v| v == next) {
                next += 1;
            }
            if next >= MAX_RULES {
                return Err(format!("more than {MAX_RULES} rule ids"));
            }
            self.index.insert(id.to_string(), next);
        }
        Ok(())
    }

    /// (id, slot), by slot.
    pub fn ids(&self) -> Vec<(String, u32)> {
        let mut v: Vec<_> = self.index.iter().map(|(k, v)| (k.clone(), *v)).collect();
        v.sort_by_key(|(_, i)| *i);
        v
    }
}

fn hash_str(s: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = FxHasher::default();
    h.write(s.as_bytes());
    h.finish()
}

impl SwRules {
    /// Compiles `rules` for `vips`; `index` keeps counter slots stable.
    pub fn compile(
        rules: &FilterRules,
        vips: &[IpAddr],
        index: &mut RuleIndex,
        generation: u32,
    ) -> Result<SwRules, String> {
        if rules.rate.len() > crate::rules::MAX_RATE_RULES {
            return Err(format!(
                "at most {} rate rules",
                crate::rules::MAX_RATE_RULES
            ));
        }
        index.assign(rules)?;
        let idx = |id: &str| index.index[id];
        let mut out = SwRules {
            generation,
            default_deny: rules.default_deny,
            not_allowed_rule: idx(NOT_ALLOWED_RULE),
            cidr4: Lpm::new(32),
            cidr6: Lpm::new(128),
            l4: HashMap::default(),
            rate: Vec::new(),
            vips4: Vec::new(),
            vips6: Vec::new(),
        };
        for v in vips {
            match v {
                IpAddr::V4(a) => out.vips4.push(a.octets()),
                IpAddr::V6(a) => out.vips6.push(a.octets()),
            }
        }
        for r in &rules.cidr {
            let v = (idx(&r.id), r.action);
            for &(ip, len) in &r.prefixes {
                match ip {
                    IpAddr::V4(a) => out.cidr4.insert(
                        u32::from_be_bytes(masked(a.octets(), len)) as u128,
                        len,
                        v,
                    ),
                    IpAddr::V6(a) => {
                        out.cidr6
                            .insert(u128::from_be_bytes(masked(a.octets(), len)), len, v)
                    }
                }
            }
        }
        for r in &rules.l4 {
            let vip = addr_bytes(r.vip);
            let i = idx(&r.id);
            out.l4.insert((vip, 0, 0), i);
            for &(proto, port) in &r.allow {
                out.l4.insert((vip, proto, port), i);
            }
        }
        for r in &rules.rate {
            let (global, prefix4, prefix6) = match r.key {
                RateKey::Global => (true, 0, 0),
                RateKey::Source { prefix4, prefix6 } => (false, prefix4, prefix6),
            };
            out.rate.push(Rate {
                rule: idx(&r.id),
                key_hash: hash_str(&r.id),
                syn_only: r.syn_only,
                global,
                prefix4,
                prefix6,
                vip: r.vip.map(|v| (addr_bytes(v), v.is_ipv6())),
                port: r.port,
                proto: r.protocol,
                pps: r.pps,
                burst_pkts: if r.pps > 0 { r.burst_packets.max(1) } else { 0 },
                bps: r.bps,
                burst_bytes: if r.bps > 0 { r.burst_bytes.max(1) } else { 0 },
            });
        }
        Ok(out)
    }

    fn is_vip4(&self, a: &[u8]) -> bool {
        self.vips4.iter().any(|v| v[..] == a[..4])
    }

    fn is_vip6(&self, a: &[u8]) -> bool {
        self.vips6.iter().any(|v| v[..] == a[..16])
    }
}

/// One worker's counters: written by that worker only (relaxed load + store,
/// no read-modify-write), read by the stats reader.
pub struct FilterCounters {
    verdicts: [[AtomicU64; 2]; Counter::COUNT],
    rules: Box<[[AtomicU64; 2]]>,
}

impl Default for FilterCounters {
    fn default() -> Self {
        FilterCounters {
            verdicts: std::array::from_fn(|_| [AtomicU64::new(0), AtomicU64::new(0)]),
            rules: (0..MAX_RULES)
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
        }
    }
}

fn bump(c: &[AtomicU64; 2], bytes: u64) {
    c[0].store(c[0].load(Relaxed).wrapping_add(1), Relaxed);
    c[1].store(c[1].load(Relaxed).wrapping_add(bytes), Relaxed);
}

impl FilterCounters {
    fn count(&self, c: Counter, bytes: u64) {
        bump(&self.verdicts[c.index() as usize], bytes);
    }

    fn count_rule(&self, rule: u32, bytes: u64) {
        if let Some(c) = self.rules.get(rule as usize) {
            bump(c, bytes);
        }
    }

    /// Adds this worker's verdict counters into `out`.
    pub fn add_to(&self, out: &mut XdpCounters) {
        for &c in Counter::ALL {
            let v = &self.verdicts[c.index() as usize];
            out.add_to(
                c,
                Verdict {
                    packets: v[0].load(Relaxed),
                    bytes: v[1].load(Relaxed),
                },
            );
        }
    }

    pub fn rule(&self, slot: u32) -> Verdict {
        self.rules
            .get(slot as usize)
            .map(|c| Verdict {
                packets: c[0].load(Relaxed),
                bytes: c[1].load(Relaxed),
            })
            .unwrap_or_default()
    }
}

/// Token buckets of the rate rules, shared by every worker: a fixed table of
/// `SLOTS` entries (open addressing over a short window, the stalest entry
/// evicted when the window is full — an LRU approximation like the
/// program's LRU hash). Allocated once.
///
/// It also carries the escalated-sources deny set, the other piece of
/// mutable filter state the workers share (and so `SwFilter` keeps its
/// fields).
pub struct Buckets {
    slots: Box<[Slot]>,
    blocked: Arc<BlockedSources>,
}

#[derive(Default)]
struct Slot {
    tag: AtomicU64,
    last_ns: AtomicU64,
    pkt_tokens: AtomicU64,
    byte_tokens: AtomicU64,
}

const SLOTS: usize = 256 * 1024;
const WINDOW: usize = 8;

impl Default for Buckets {
    /// Empty buckets with their own, empty deny set.
    fn default() -> Self {
        Self::with_blocked(Arc::default())
    }
}

/// `bucket_take` of the program, on plain values.
fn bucket_take(
    last_ns: &mut u64,
    pkt: &mut u64,
    byt: &mut u64,
    r: &Rate,
    now: u64,
    bytes: u64,
) -> bool {
    let elapsed = now.saturating_sub(*last_ns);
    *last_ns = now;
    // `cap / rate`: the time to fill an empty bucket (no rate: no limit).
    let cap = r.burst_pkts * NSEC_PER_SEC;
    if let Some(fill) = cap.checked_div(r.pps) {
        *pkt = if elapsed >= fill {
            cap
        } else {
            (*pkt + elapsed * r.pps).min(cap)
        };
    }
    let cap = r.burst_bytes * NSEC_PER_SEC;
    if let Some(fill) = cap.checked_div(r.bps) {
        *byt = if elapsed >= fill {
            cap
        } else {
            (*byt + elapsed * r.bps).min(cap)
        };
    }
    if r.pps > 0 && *pkt < NSEC_PER_SEC {
        return false;
    }
    if r.bps > 0 && *byt < bytes * NSEC_PER_SEC {
        return false;
    }
    if r.pps > 0 {
        *pkt -= NSEC_PER_SEC;
    }
    if r.bps > 0 {
        *byt -= bytes * NSEC_PER_SEC;
    }
    true
}

impl Buckets {
    /// Empty buckets consulting `blocked` (e.g. a deny set an L7 limiter
    /// holds a handle to).
    pub fn with_blocked(blocked: Arc<BlockedSources>) -> Buckets {
        Buckets {
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            blocked,
        }
    }

    /// The escalated-sources deny set the filter consults.
    pub fn blocked(&self) -> &Arc<BlockedSources> {
        &self.blocked
    }

    /// Takes one packet of `bytes` from the bucket `key`; false = over the rate.
    fn take(&self, key: u64, r: &Rate, now: u64, bytes: u64) -> bool {
        let key = key | 1; // 0 marks a free slot
        let mask = SLOTS - 1;
        let start = (key as usize ^ (key >> 32) as usize) & mask;
        let mut stalest = start;
        let mut stalest_ns = u64::MAX;
        for i in 0..WINDOW {
            let s = &self.slots[(start + i) & mask];
            let tag = s.tag.load(Relaxed);
            if tag == key {
                let (mut l, mut p, mut b) = (
                    s.last_ns.load(Relaxed),
                    s.pkt_tokens.load(Relaxed),
                    s.byte_tokens.load(Relaxed),
                );
                let ok = bucket_take(&mut l, &mut p, &mut b, r, now, bytes);
                s.last_ns.store(l, Relaxed);
                s.pkt_tokens.store(p, Relaxed);
                s.byte_tokens.store(b, Relaxed);
                return ok;
            }
            if tag == 0 {
                if s.tag.compare_exchange(0, key, Relaxed, Relaxed).is_ok() {
                    Self::fresh(s, r, now, bytes);
                    return true;
                }
                continue;
            }
            let l = s.last_ns.load(Relaxed);
            if l < stalest_ns {
                stalest_ns = l;
                stalest = (start + i) & mask;
            }
        }
        let s = &self.slots[stalest];
        s.tag.store(key, Relaxed);
        Self::fresh(s, r, now, bytes);
        true
    }

    /// A new bucket starts full and takes the packet (always admitted).
    fn fresh(s: &Slot, r: &Rate, now: u64, bytes: u64) {
        let (mut l, mut p, mut b) = (
            now,
            r.burst_pkts * NSEC_PER_SEC,
            r.burst_bytes * NSEC_PER_SEC,
        );
        bucket_take(&mut l, &mut p, &mut b, r, now, bytes);
        s.last_ns.store(l, Relaxed);
        s.pkt_tokens.store(p, Relaxed);
        s.byte_tokens.store(b, Relaxed);
    }
}

/// What the filter learned about an IP frame to a VIP (`struct fg_pkt`).
#[derive(Default)]
struct Pkt {
    src: [u8; 16],
    dst: [u8; 16],
    bytes: u64,
    dport: u16,
    v6: bool,
    proto: u8,
    syn: bool,
    exempt: bool,
}

fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

/// Parses TCP/UDP (`parse_l4`): Ok, Err(false) malformed, Err(true) bogus flags.
fn parse_l4(l4: &[u8], l4_len: usize, pkt: &mut Pkt) -> Result<(), bool> {
    if pkt.proto == IPPROTO_TCP {
        if l4.len() < 20 || l4_len < 20 {
            return Err(false);
        }
        let doff = (l4[12] >> 4) as usize;
        if doff < 5 || doff * 4 > l4_len {
            return Err(false);
        }
        let f = l4[13];
        let (fin, syn, rst, psh, ack, urg) = (
            f & 1 != 0,
            f & 2 != 0,
            f & 4 != 0,
            f & 8 != 0,
            f & 16 != 0,
            f & 32 != 0,
        );
        let bogus = (!syn && !ack && !rst && !fin && !psh && !urg)
            || (syn && (fin || rst))
            || (!ack && (fin || psh || urg));
        if bogus {
            return Err(true);
        }
        pkt.dport = be16(l4, 2);
        pkt.syn = syn && !ack;
    } else if pkt.proto == IPPROTO_UDP {
        if l4.len() < 8 || l4_len < 8 {
            return Err(false);
        }
        pkt.dport = be16(l4, 2);
    }
    Ok(())
}

/// Where the filter sends a frame: what the XDP program's verdicts mean
/// for a backend without one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Dropped (and counted).
    Drop,
    /// A VIP's: to the stack (`XDP_REDIRECT`).
    Stack,
    /// Not a VIP's: the host's (`XDP_PASS`).
    Host,
}

/// The filter as one worker runs it: the current rules, the shared buckets,
/// its own counters.
pub struct SwFilter<'a> {
    pub rules: &'a SwRules,
    pub buckets: &'a Buckets,
    pub counters: &'a FilterCounters,
}

impl SwFilter<'_> {
    fn malformed(&self, reason: Counter, to_vip: bool, bytes: u64) -> Admit {
        self.counters.count(reason, bytes);
        if to_vip {
            self.counters.count(Counter::DropMalformedVip, bytes);
            return Admit::Drop;
        }
        self.counters.count(Counter::PassHost, bytes);
        Admit::Host
    }

    fn pass_host(&self, bytes: u64) -> Admit {
        self.counters.count(Counter::PassHost, bytes);
        Admit::Host
    }

    /// A well-formed VIP frame under a VLAN tag (`drop_vlan`): the stack
    /// speaks untagged Ethernet only.
    fn drop_vlan(&self, bytes: u64) -> Admit {
        self.counters.count(Counter::DropVlanVip, bytes);
        Admit::Drop
    }

    /// Counts a rule's drop; false (for `filter()`).
    fn drop(&self, verdict: Counter, rule: u32, bytes: u64) -> bool {
        self.counters.count(verdict, bytes);
        self.counters.count_rule(rule, bytes);
        false
    }

    fn vip(&self, proto_counter: Counter, bytes: u64) -> Admit {
        self.counters.count(proto_counter, bytes);
        self.counters.count(Counter::RedirectVip, bytes);
        Admit::Stack
    }

    /// Whether the frame may reach the stack (`now_ns`: a monotonic clock
    /// for the rate buckets; the escalated sources' expiries are checked
    /// against [`monotonic_ns`](crate::monotonic_ns) itself).
    /// Non-VIP frames always pass (counted as `pass_host`), tagged or not;
    /// under DPDK they reach the stack, which counts and drops what is not
    /// addressed to it (`stack_rx_drop_*`), or go to the host's exception
    /// interface ([`admit_to`](Self::admit_to)).
    pub fn admit(&self, frame: &[u8], now_ns: u64) -> bool {
        self.admit_to(frame, now_ns) != Admit::Drop
    }

    /// [`admit`](Self::admit), saying where an admitted frame goes: the
    /// stack (a VIP's) or the host (what XDP passes to the kernel).
    pub fn admit_to(&self, frame: &[u8], now_ns: u64) -> Admit {
        let bytes = frame.len() as u64;
        if frame.len() < 14 {
            return self.malformed(Counter::MalformedEth, false, bytes);
        }
        let mut proto = be16(frame, 12);
        let mut l3 = 14;
        let tagged = proto == 0x8100 || proto == 0x88a8;
        if tagged {
            if frame.len() < 18 {
                return self.malformed(Counter::MalformedVlan, false, bytes);
            }
            proto = be16(frame, 16);
            l3 = 18;
        }
        let l3b = &frame[l3..];
        match proto {
            0x0806 => self.arp(l3b, bytes, tagged),
            0x0800 => self.ipv4(l3b, bytes, tagged, now_ns),
            0x86dd => self.ipv6(l3b, bytes, tagged, now_ns),
            _ => self.pass_host(bytes),
        }
    }

    fn arp(&self, a: &[u8], bytes: u64, tagged: bool) -> Admit {
        if a.len() < 28 {
            return self.malformed(Counter::MalformedArp, false, bytes);
        }
        if be16(a, 0) != 1 || be16(a, 2) != 0x0800 || a[4] != 6 || a[5] != 4 {
            return self.pass_host(bytes);
        }
        if !self.rules.is_vip4(&a[24..28]) {
            return self.pass_host(bytes);
        }
        if tagged {
            return self.drop_vlan(bytes);
        }
        self.vip(Counter::ArpVip, bytes)
    }

    fn ipv4(&self, ip: &[u8], bytes: u64, tagged: bool, now: u64) -> Admit {
        if ip.len() < 20 {
            return self.malformed(Counter::MalformedIpv4, false, bytes);
        }
        let vip = self.rules.is_vip4(&ip[16..20]);
        let avail = ip.len();
        let ihl = (ip[0] & 0x0f) as usize;
        let hlen = ihl * 4;
        let tot_len = be16(ip, 2) as usize;
        if ihl < 5 || hlen > avail || tot_len > avail || tot_len < hlen {
            return self.malformed(Counter::MalformedIpv4, vip, bytes);
        }
        if !vip {
            return self.pass_host(bytes);
        }
        if be16(ip, 6) & 0x3fff != 0 {
            self.counters.count(Counter::DropFragmentVip, bytes);
            return Admit::Drop;
        }
        let mut pkt = Pkt {
            bytes,
            proto: ip[9],
            ..Default::default()
        };
        pkt.src[..4].copy_from_slice(&ip[12..16]);
        pkt.dst[..4].copy_from_slice(&ip[16..20]);
        match parse_l4(&ip[hlen..], tot_len - hlen, &mut pkt) {
            Ok(()) => {}
            Err(bogus) => {
                if bogus {
                    self.counters.count(Counter::BadTcpFlags, bytes);
                }
                return self.malformed(Counter::MalformedL4, true, bytes);
            }
        }
        // After the malformed checks, before any rule (as the program).
        if tagged {
            return self.drop_vlan(bytes);
        }
        if !self.filter(&pkt, now) {
            return Admit::Drop;
        }
        self.vip(Counter::Ipv4Vip, bytes)
    }

    fn ipv6(&self, ip: &[u8], bytes: u64, tagged: bool, now: u64) -> Admit {
        if ip.len() < 40 {
            return self.malformed(Counter::MalformedIpv6, false, bytes);
        }
        let mut vip = self.rules.is_vip6(&ip[24..40]);
        let avail = ip.len() - 40;
        let payload = be16(ip, 4) as usize;
        if payload > avail {
            return self.malformed(Counter::MalformedIpv6, vip, bytes);
        }
        let is_ext = |n: u8| {
            matches!(
                n,
                NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH | NEXTHDR_FRAGMENT
            )
        };
        let mut next = ip[6];
        let mut cur = 40usize;
        let mut consumed = 0usize;
        for _ in 0..MAX_EXT_HEADERS {
            if !is_ext(next) {
                break;
            }
            if cur + 2 > ip.len() {
                return self.malformed(Counter::MalformedIpv6, vip, bytes);
            }
            if next == NEXTHDR_FRAGMENT {
                if !vip {
                    return self.pass_host(bytes);
                }
                self.counters.count(Counter::DropFragmentVip, bytes);
                return Admit::Drop;
            }
            let hl = ip[cur + 1] as usize;
            let len = if next == NEXTHDR_AUTH {
                (hl + 2) * 4
            } else {
                (hl + 1) * 8
            };
            consumed += len;
            if consumed > payload {
                return self.malformed(Counter::MalformedIpv6, vip, bytes);
            }
            next = ip[cur];
            cur += len;
            if cur > ip.len() {
                return self.malformed(Counter::MalformedIpv6, vip, bytes);
            }
        }
        if is_ext(next) {
            return self.malformed(Counter::MalformedIpv6, vip, bytes);
        }
        let mut pkt = Pkt {
            bytes,
            v6: true,
            proto: next,
            ..Default::default()
        };
        if next == NEXTHDR_ICMPV6 {
            let icmp = &ip[cur..];
            if icmp.len() < 4 {
                return if vip {
                    self.malformed(Counter::MalformedL4, vip, bytes)
                } else {
                    self.pass_host(bytes)
                };
            }
            pkt.exempt = (133..=137).contains(&icmp[0]);
            if !vip && icmp[0] == ICMPV6_NS {
                if icmp.len() < 24 {
                    return self.pass_host(bytes);
                }
                vip = self.rules.is_vip6(&icmp[8..24]);
            }
        }
        if !vip {
            return self.pass_host(bytes);
        }
        pkt.src.copy_from_slice(&ip[8..24]);
        pkt.dst.copy_from_slice(&ip[24..40]);
        if let Err(bogus) = parse_l4(&ip[cur..], payload - consumed, &mut pkt) {
            if bogus {
                self.counters.count(Counter::BadTcpFlags, bytes);
            }
            return self.malformed(Counter::MalformedL4, true, bytes);
        }
        if tagged {
            return self.drop_vlan(bytes);
        }
        if !self.filter(&pkt, now) {
            return Admit::Drop;
        }
        self.vip(Counter::Ipv6Vip, bytes)
    }

    /// `filter()` of the program: true = continue to the stack.
    fn filter(&self, pkt: &Pkt, now: u64) -> bool {
        if pkt.exempt {
            return true;
        }
        let rs = self.rules;
        let hit = if pkt.v6 {
            rs.cidr6.lookup(u128::from_be_bytes(pkt.src))
        } else {
            rs.cidr4.lookup(
                u32::from_be_bytes([pkt.src[0], pkt.src[1], pkt.src[2], pkt.src[3]]) as u128,
            )
        };
        match hit {
            Some((rule, CidrAction::Upstream)) => {
                self.counters.count_rule(rule, pkt.bytes);
                return true;
            }
            Some((rule, CidrAction::Deny)) => {
                return self.drop(Counter::DropDeny, rule, pkt.bytes);
            }
            Some((rule, CidrAction::Allow)) => self.counters.count_rule(rule, pkt.bytes),
            None if rs.default_deny => {
                return self.drop(Counter::DropNotAllowed, rs.not_allowed_rule, pkt.bytes);
            }
            None => {}
        }
        // Escalated sources: where the program checks them (after the CIDR
        // decision, so upstreams stay exempt; before the L4 list and the
        // buckets, so a blocked source takes no tokens). Expiries are on the
        // program's clock, read here on a hit: the caller's `now` may be on
        // another origin (the engine's workers count from their start).
        if self.buckets.blocked.blocks_now(&pkt.src, pkt.v6) {
            self.counters.count(Counter::DropEscalated, pkt.bytes);
            return false;
        }
        if !rs.l4.is_empty()
            && let Some(&restricted) = rs.l4.get(&(pkt.dst, 0, 0))
            && !rs.l4.contains_key(&(pkt.dst, pkt.proto, pkt.dport))
        {
            return self.drop(Counter::DropL4, restricted, pkt.bytes);
        }
        for r in &rs.rate {
            if r.syn_only && !pkt.syn {
                continue;
            }
            if r.proto.is_some_and(|p| p != pkt.proto) {
                continue;
            }
            if r.port.is_some_and(|p| p != pkt.dport) {
                continue;
            }
            if let Some((vip, v6)) = &r.vip {
                let n = if pkt.v6 { 16 } else { 4 };
                if *v6 != pkt.v6 || vip[..n] != pkt.dst[..n] {
                    continue;
                }
            }
            // A global rule: one bucket for both families (as the program).
            let key = if r.global {
                r.key_hash
            } else {
                let a = masked(pkt.src, if pkt.v6 { r.prefix6 } else { r.prefix4 });
                let x = u128::from_be_bytes(a);
                let mut h = FxHasher(r.key_hash ^ ((pkt.v6 as u64) << 63));
                std::hash::Hasher::write_u128(&mut h, x);
                std::hash::Hasher::finish(&h)
            };
            if !self.buckets.take(key, r, now, pkt.bytes) {
                return self.drop(Counter::DropRate, r.rule, pkt.bytes);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CidrRule, L4Rule, RateRule};

    const VIP: [u8; 4] = [10, 77, 0, 10];

    fn udp4(src: [u8; 4], dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8 + 4];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut f[14..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(32u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = IPPROTO_UDP;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        ip[22..24].copy_from_slice(&dport.to_be_bytes());
        f
    }

    fn tcp4(src: [u8; 4], flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut f[14..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(40u16).to_be_bytes());
        ip[9] = IPPROTO_TCP;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&VIP);
        ip[22..24].copy_from_slice(&80u16.to_be_bytes());
        ip[32] = 5 << 4;
        ip[33] = flags;
        f
    }

    fn setup(rules: &FilterRules) -> (SwRules, Buckets, FilterCounters) {
        let vips = ["10.77.0.10".parse().unwrap(), "fd77::10".parse().unwrap()];
        let mut idx = RuleIndex::default();
        (
            SwRules::compile(rules, &vips, &mut idx, 0).unwrap(),
            Buckets::default(),
            FilterCounters::default(),
        )
    }

    fn totals(c: &FilterCounters) -> XdpCounters {
        let mut x = XdpCounters::default();
        c.add_to(&mut x);
        x
    }

    #[test]
    fn longest_prefix_wins_and_host_traffic_is_never_filtered() {
        let rules = FilterRules {
            cidr: vec![
                CidrRule {
                    id: "deny-net".into(),
                    action: CidrAction::Deny,
                    prefixes: vec![("10.77.0.0".parse().unwrap(), 24)],
                },
                CidrRule {
                    id: "allow-one".into(),
                    action: CidrAction::Allow,
                    prefixes: vec![("10.77.0.2".parse().unwrap(), 32)],
                },
            ],
            ..Default::default()
        };
        let (r, b, c) = setup(&rules);
        let f = SwFilter {
            rules: &r,
            buckets: &b,
            counters: &c,
        };
        assert!(f.admit(&udp4([10, 77, 0, 2], VIP, 53), 0));
        assert!(!f.admit(&udp4([10, 77, 0, 22], VIP, 53), 0));
        // To the host address: passes whatever the source.
        assert!(f.admit(&udp4([10, 77, 0, 22], [10, 77, 0, 1], 53), 0));
        let t = totals(&c);
        assert_eq!(t.drop_deny.packets, 1);
        assert_eq!(t.redirect_vip.packets, 1);
        assert_eq!(t.pass_host.packets, 1);
        assert_eq!(c.rule(0).packets, 1, "deny-net counted");
        assert_eq!(c.rule(1).packets, 1, "allow-one counted");
    }

    fn arp_request(target: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 28];
        f[..6].fill(0xff);
        f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let a = &mut f[14..];
        a[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        a[14..18].copy_from_slice(&[10, 77, 0, 2]);
        a[24..28].copy_from_slice(&target);
        f
    }

    /// An IPv6 neighbour solicitation for `target`, to its solicited-node
    /// multicast address.
    fn ns6(target: std::net::Ipv6Addr) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 40 + 24];
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        let ip = &mut f[14..];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&24u16.to_be_bytes());
        ip[6] = NEXTHDR_ICMPV6;
        ip[7] = 255;
        ip[8..24].copy_from_slice(&"fd77::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        let t = target.octets();
        let mut dst = [0u8; 16];
        dst[..2].copy_from_slice(&[0xff, 0x02]);
        dst[11] = 1;
        dst[12] = 0xff;
        dst[13..].copy_from_slice(&t[13..]);
        ip[24..40].copy_from_slice(&dst);
        ip[40] = ICMPV6_NS;
        ip[48..64].copy_from_slice(&t);
        f
    }

    /// What an exception path needs: a VIP's frames to the stack, the
    /// host's (its address, ARP and neighbour discovery for it) to the
    /// host, filtered ones nowhere.
    #[test]
    fn admit_to_tells_the_stacks_frames_from_the_hosts() {
        let rules = FilterRules {
            cidr: vec![CidrRule {
                id: "deny".into(),
                action: CidrAction::Deny,
                prefixes: vec![("10.77.0.22".parse().unwrap(), 32)],
            }],
            ..Default::default()
        };
        let (r, b, c) = setup(&rules);
        let f = SwFilter {
            rules: &r,
            buckets: &b,
            counters: &c,
        };
        let host = [10, 77, 0, 1];
        assert_eq!(f.admit_to(&udp4([10, 77, 0, 2], VIP, 53), 0), Admit::Stack);
        assert_eq!(f.admit_to(&udp4([10, 77, 0, 2], host, 53), 0), Admit::Host);
        assert_eq!(f.admit_to(&udp4([10, 77, 0, 22], VIP, 53), 0), Admit::Drop);
        // A denied source still reaches the host (XDP passes it too).
        assert_eq!(f.admit_to(&udp4([10, 77, 0, 22], host, 53), 0), Admit::Host);
        assert_eq!(f.admit_to(&arp_request(VIP), 0), Admit::Stack);
        assert_eq!(f.admit_to(&arp_request(host), 0), Admit::Host);
        assert_eq!(
            f.admit_to(&ns6("fd77::10".parse().unwrap()), 0),
            Admit::Stack
        );
        assert_eq!(f.admit_to(&ns6("fd77::1".parse().unwrap()), 0), Admit::Host);
        // An Ethernet type the stack does not speak; a runt (the program
        // passes what it cannot parse and is not a VIP's: the kernel decides).
        let mut lldp = vec![0u8; 60];
        lldp[12..14].copy_from_slice(&0x88ccu16.to_be_bytes());
        assert_eq!(f.admit_to(&lldp, 0), Admit::Host);
        assert_eq!(f.admit_to(&[0u8; 10], 0), Admit::Host);
    }

    #[test]
    fn allow_list_mode_upstreams_and_l4() {
        let rules = FilterRules {
            default_deny: true,
            cidr: vec![
                CidrRule {
                    id: "office".into(),
                    action: CidrAction::Allow,
                    prefixes: vec![("10.77.0.22".parse().unwrap(), 32)],
                },
                CidrRule {
                    id: "upstreams".into(),
                    action: CidrAction::Upstream,
                    prefixes: vec![("10.77.0.3".parse().unwrap(), 32)],
                },
            ],
            l4: vec![L4Rule {
                id: "web-only".into(),
                vip: "10.77.0.10".parse().unwrap(),
                allow: vec![(IPPROTO_TCP, 80)],
            }],
            ..Default::default()
        };
        let (r, b, c) = setup(&rules);
        let f = SwFilter {
            rules: &r,
            buckets: &b,
            counters: &c,
        };
        assert!(!f.admit(&udp4([10, 77, 0, 2], VIP, 80), 0), "not listed");
        assert!(
            f.admit(&udp4([10, 77, 0, 3], VIP, 9), 0),
            "upstream bypasses l4"
        );
        assert!(
            !f.admit(&udp4([10, 77, 0, 22], VIP, 80), 0),
            "udp not allowed"
        );
        assert!(f.admit(&tcp4([10, 77, 0, 22], 0x02), 0), "tcp/80 allowed");
        let t = totals(&c);
        assert_eq!(t.drop_not_allowed.packets, 1);
        assert_eq!(t.drop_l4.packets, 1);
        // Bogus flags (SYN+FIN) are malformed and dropped.
        assert!(!f.admit(&tcp4([10, 77, 0, 22], 0x03), 0));
        assert_eq!(totals(&c).bad_tcp_flags.packets, 1);
    }

    #[test]
    fn per_source_rate_admits_burst_then_the_rate() {
        let rules = FilterRules {
            rate: vec![RateRule {
                id: "udp".into(),
                key: RateKey::Source {
                    prefix4: 32,
                    prefix6: 128,
                },
                pps: 100,
                burst_packets: 10,
                bps: 0,
                burst_bytes: 0,
                syn_only: false,
                vip: None,
                port: None,
                protocol: Some(IPPROTO_UDP),
            }],
            ..Default::default()
        };
        let (r, b, c) = setup(&rules);
        let f = SwFilter {
            rules: &r,
            buckets: &b,
            counters: &c,
        };
        let a = udp4([10, 77, 0, 22], VIP, 9);
        let passed = (0..50).filter(|_| f.admit(&a, 1_000)).count();
        assert_eq!(passed, 10, "the burst");
        // One second later: 100 more tokens, capped at the burst of 10.
        let passed = (0..50).filter(|_| f.admit(&a, 1_000_001_000)).count();
        assert_eq!(passed, 10);
        // 50 ms later: 5 tokens.
        let passed = (0..50).filter(|_| f.admit(&a, 1_050_001_000)).count();
        assert_eq!(passed, 5);
        // Another source has its own bucket; TCP is not matched.
        assert!(f.admit(&udp4([10, 77, 0, 2], VIP, 9), 1_050_001_000));
        assert!(f.admit(&tcp4([10, 77, 0, 22], 0x02), 1_050_001_000));
        assert_eq!(totals(&c).drop_rate.packets, 40 + 40 + 45);
    }

    #[test]
    fn fragments_and_truncations_to_a_vip_are_dropped() {
        let (r, b, c) = setup(&FilterRules::default());
        let f = SwFilter {
            rules: &r,
            buckets: &b,
            counters: &c,
        };
        let mut frag = udp4([10, 77, 0, 2], VIP, 53);
        frag[14 + 6] = 0x20; // more fragments
        assert!(!f.admit(&frag, 0));
        let mut bad_len = udp4([10, 77, 0, 2], VIP, 53);
        bad_len[14 + 2..14 + 4].copy_from_slice(&200u16.to_be_bytes());
        assert!(!f.admit(&bad_len, 0));
        // The same to a host address passes (the kernel decides).
        let mut host = udp4([10, 77, 0, 2], [10, 77, 0, 1], 53);
        host[14 + 2..14 + 4].copy_from_slice(&200u16.to_be_bytes());
        assert!(f.admit(&host, 0));
        let t = totals(&c);
        assert_eq!(t.drop_fragment_vip.packets, 1);
        assert_eq!(t.malformed_ipv4.packets, 2);
        assert_eq!(t.drop_malformed_vip.packets, 1);
    }

    /// Puts an 802.1Q/802.1ad tag (VID 7) after the MAC addresses.
    fn tagged(tpid: u16, plain: &[u8]) -> Vec<u8> {
        let mut f = plain[..12].to_vec();
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&[0x00, 0x07]);
        f.extend_from_slice(&plain[12..]);
        f
    }

    #[test]
    fn vlan_tagged_frames_to_a_vip_are_dropped_and_host_ones_pass() {
        let rules = FilterRules {
            cidr: vec![CidrRule {
                id: "deny-22".into(),
                action: CidrAction::Deny,
                prefixes: vec![("10.77.0.22".parse().unwrap(), 32)],
            }],
            ..Default::default()
        };
        let (r, b, c) = setup(&rules);
        let f = SwFilter {
            rules: &r,
            buckets: &b,
            counters: &c,
        };
        let mut arp = vec![0u8; 14 + 28];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        arp[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        arp[14 + 24..14 + 28].copy_from_slice(&VIP);
        let mut udp6 = vec![0u8; 14 + 40 + 8];
        udp6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        udp6[14] = 0x60;
        udp6[14 + 4..14 + 6].copy_from_slice(&8u16.to_be_bytes());
        udp6[14 + 6] = IPPROTO_UDP;
        udp6[14 + 24..14 + 40]
            .copy_from_slice(&"fd77::10".parse::<std::net::Ipv6Addr>().unwrap().octets());
        let udp = udp4([10, 77, 0, 2], VIP, 53);
        for tpid in [0x8100, 0x88a8] {
            assert!(
                !f.admit(&tagged(tpid, &udp), 0),
                "{tpid:#x} udp4 to the VIP"
            );
            assert!(
                !f.admit(&tagged(tpid, &arp), 0),
                "{tpid:#x} arp for the VIP"
            );
            assert!(
                !f.admit(&tagged(tpid, &udp6), 0),
                "{tpid:#x} udp6 to the VIP"
            );
        }
        // A denied source under a tag: the tag decides, before any rule.
        assert!(!f.admit(&tagged(0x8100, &udp4([10, 77, 0, 22], VIP, 53)), 0));
        let t = totals(&c);
        assert_eq!(t.drop_vlan_vip.packets, 7);
        assert_eq!(t.drop_deny.packets, 0);
        assert_eq!(c.rule(0).packets, 0, "deny-22 not consulted");
        // Malformed under a tag stays malformed.
        let mut bad = tagged(0x8100, &udp);
        bad[18 + 2..18 + 4].copy_from_slice(&500u16.to_be_bytes());
        assert!(!f.admit(&bad, 0));
        // Tagged host traffic is never filtered.
        assert!(f.admit(
            &tagged(0x8100, &udp4([10, 77, 0, 2], [10, 77, 0, 1], 53)),
            0
        ));
        assert!(f.admit(
            &tagged(0x88a8, &udp4([10, 77, 0, 22], [10, 77, 0, 1], 53)),
            0
        ));
        let t = totals(&c);
        assert_eq!(t.drop_vlan_vip.packets, 7);
        assert_eq!(t.drop_malformed_vip.packets, 1);
        assert_eq!(t.pass_host.packets, 2);
        assert_eq!(t.redirect_vip.packets, 0);
        assert_eq!(t.frames_total(), 10);
    }

    #[test]
    fn escalated_sources_drop_vip_traffic_only_while_active() {
        let rules = FilterRules {
            cidr: vec![CidrRule {
                id: "origins".into(),
                action: CidrAction::Upstream,
                prefixes: vec![("10.77.0.3".parse().unwrap(), 32)],
            }],
            rate: vec![RateRule {
                id: "syn".into(),
                key: RateKey::Global,
                pps: 1,
                burst_packets: 2,
                bps: 0,
                burst_bytes: 0,
                syn_only: true,
                vip: None,
                port: None,
                protocol: None,
            }],
            ..Default::default()
        };
        let (r, b, c) = setup(&rules);
        let f = SwFilter {
            rules: &r,
            buckets: &b,
            counters: &c,
        };
        let now = crate::monotonic_ns();
        let hour = 3_600 * NSEC_PER_SEC;
        let blocked = b.blocked();
        blocked
            .block("10.77.0.66".parse().unwrap(), now + hour)
            .unwrap();
        blocked.block("10.77.0.67".parse().unwrap(), 1).unwrap(); // expired
        blocked
            .block("10.77.0.3".parse().unwrap(), now + hour)
            .unwrap();
        blocked
            .block("fd77::66".parse().unwrap(), now + hour)
            .unwrap();

        // Blocked: its SYNs are dropped before the global SYN bucket, so
        // they take none of its 2 tokens.
        for _ in 0..5 {
            assert!(!f.admit(&tcp4([10, 77, 0, 66], 0x02), 0));
        }
        assert!(f.admit(&tcp4([10, 77, 0, 2], 0x02), 0), "token 1 left");
        assert!(f.admit(&tcp4([10, 77, 0, 67], 0x02), 0), "expired: token 2");
        assert!(!f.admit(&tcp4([10, 77, 0, 2], 0x02), 0), "bucket empty");
        // Upstream replies stay exempt even if their source was escalated.
        assert!(f.admit(&udp4([10, 77, 0, 3], VIP, 9), 0));
        // Host traffic from a blocked source passes.
        assert!(f.admit(&udp4([10, 77, 0, 66], [10, 77, 0, 1], 53), 0));
        let t = totals(&c);
        assert_eq!(t.drop_escalated.packets, 5);
        assert_eq!(t.drop_rate.packets, 1);
        assert_eq!(t.pass_host.packets, 1);
        assert_eq!(t.drops_total(), 6);

        // IPv6: an echo to the VIP is dropped, neighbour discovery is not.
        let six = |src: &str, dst: &str, icmp: u8, target: &str| {
            let mut f = vec![0u8; 14 + 40 + 24];
            f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            let ip = &mut f[14..];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&24u16.to_be_bytes());
            ip[6] = NEXTHDR_ICMPV6;
            ip[8..24].copy_from_slice(&src.parse::<std::net::Ipv6Addr>().unwrap().octets());
            ip[24..40].copy_from_slice(&dst.parse::<std::net::Ipv6Addr>().unwrap().octets());
            ip[40] = icmp;
            ip[48..64].copy_from_slice(&target.parse::<std::net::Ipv6Addr>().unwrap().octets());
            f
        };
        assert!(!f.admit(&six("fd77::66", "fd77::10", 128, "::"), 0));
        assert!(f.admit(&six("fd77::66", "fd77::10", 136, "fd77::66"), 0));
        assert!(f.admit(&six("fd77::66", "fd77::1", 128, "::"), 0), "host");
        assert!(f.admit(&six("fd77::2", "fd77::10", 128, "::"), 0));
        let t = totals(&c);
        assert_eq!(t.drop_escalated.packets, 6);
        assert_eq!(t.ipv6_vip.packets, 2);

        // Unblocked: it passes again; the expired entry is swept.
        assert!(blocked.unblock("10.77.0.66".parse().unwrap()));
        assert!(f.admit(&udp4([10, 77, 0, 66], VIP, 9), 0));
        assert_eq!(blocked.expire(now), 1);
        assert_eq!(blocked.len(), 2);
    }

    #[test]
    fn ipv6_deny_and_neighbour_discovery_is_exempt() {
        let rules = FilterRules {
            default_deny: true,
            ..Default::default()
        };
        let (r, b, c) = setup(&rules);
        let f = SwFilter {
            rules: &r,
            buckets: &b,
            counters: &c,
        };
        let mut ns = vec![0u8; 14 + 40 + 24];
        ns[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        let ip = &mut ns[14..];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&24u16.to_be_bytes());
        ip[6] = NEXTHDR_ICMPV6;
        ip[8..24].copy_from_slice(&"fd77::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        ip[24..40].copy_from_slice(
            &"ff02::1:ff00:10"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        ip[40] = ICMPV6_NS;
        ip[48..64].copy_from_slice(&"fd77::10".parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert!(f.admit(&ns, 0), "NS for a VIP passes in allow-list mode");
        assert_eq!(totals(&c).ipv6_vip.packets, 1);
        // Truncated frames.
        assert!(f.admit(&[0u8; 10], 0));
        assert_eq!(totals(&c).malformed_eth.packets, 1);
    }
}
