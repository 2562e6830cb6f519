//! Filter rules: what the operator configures (ids, CIDRs, rates, L4 pairs),
//! and their `#[repr(C)]` images in the program's maps.

use std::net::IpAddr;

use aya::Pod;

/// Rate rules per generation; `FG_MAX_RATE_RULES` in C.
pub const MAX_RATE_RULES: usize = 16;
/// Rule ids with counters; `FG_MAX_RULES` in C.
pub const MAX_RULES: u32 = 1024;
/// Prefixes per family per generation; `FG_MAX_PREFIXES` in C.
pub const MAX_PREFIXES: usize = 2 * 1024 * 1024;
/// Per-VIP L4 entries per generation; `FG_MAX_L4_RULES` in C.
pub const MAX_L4_ENTRIES: usize = 4096;
/// Largest burst, so `burst * 1e9` token arithmetic cannot overflow.
pub const MAX_BURST_PACKETS: u64 = 1_000_000_000;
pub const MAX_BURST_BYTES: u64 = 10_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CidrAction {
    Deny,
    Allow,
    /// An upstream endpoint: its replies to the VIP bypass client rules.
    Upstream,
}

#[derive(Debug, Clone)]
pub struct CidrRule {
    pub id: String,
    pub action: CidrAction,
    pub prefixes: Vec<(IpAddr, u8)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKey {
    /// One bucket per source prefix (/32 + /128 = per address).
    Source { prefix4: u8, prefix6: u8 },
    /// One bucket for everything the rule matches.
    Global,
}

#[derive(Debug, Clone)]
pub struct RateRule {
    pub id: String,
    pub key: RateKey,
    /// Packets per second; 0 = no packet limit.
    pub pps: u64,
    pub burst_packets: u64,
    /// Bytes per second; 0 = no byte limit.
    pub bps: u64,
    pub burst_bytes: u64,
    /// Only TCP SYNs (new connections) count.
    pub syn_only: bool,
    pub vip: Option<IpAddr>,
    pub port: Option<u16>,
    pub protocol: Option<u8>,
}

#[derive(Debug, Clone)]
pub struct L4Rule {
    pub id: String,
    pub vip: IpAddr,
    /// (IP protocol, destination port) pairs allowed; port 0 for ICMP.
    pub allow: Vec<(u8, u16)>,
}

/// A complete rule set; applied atomically.
#[derive(Debug, Clone, Default)]
pub struct FilterRules {
    /// Allow-list mode: only sources matched by an `Allow` CIDR reach VIPs.
    pub default_deny: bool,
    pub cidr: Vec<CidrRule>,
    pub rate: Vec<RateRule>,
    pub l4: Vec<L4Rule>,
}

impl FilterRules {
    /// Every rule id, in a stable order (for counters).
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.cidr
            .iter()
            .map(|r| r.id.as_str())
            .chain(self.rate.iter().map(|r| r.id.as_str()))
            .chain(self.l4.iter().map(|r| r.id.as_str()))
    }

    pub fn prefix_count(&self) -> usize {
        self.cidr.iter().map(|r| r.prefixes.len()).sum()
    }
}

pub const RATE_SYN_ONLY: u32 = 1 << 0;
pub const RATE_MATCH_VIP: u32 = 1 << 1;
pub const RATE_MATCH_PORT: u32 = 1 << 2;
pub const RATE_MATCH_PROTO: u32 = 1 << 3;
pub const RATE_GLOBAL: u32 = 1 << 4;

/// `struct fg_rate_rule`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct RawRateRule {
    pub rule: u32,
    pub flags: u32,
    pub vip: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub prefix4: u8,
    pub prefix6: u8,
    pub vip_is_v6: u8,
    pub pad: [u8; 2],
    pub pps: u64,
    pub burst_pkts: u64,
    pub bps: u64,
    pub burst_bytes: u64,
}

/// `struct fg_ruleset`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RawRuleset {
    pub default_deny: u32,
    pub not_allowed_rule: u32,
    pub n_rate: u32,
    pub pad: u32,
    pub rate: [RawRateRule; MAX_RATE_RULES],
}

impl Default for RawRuleset {
    fn default() -> Self {
        Self {
            default_deny: 0,
            not_allowed_rule: 0,
            n_rate: 0,
            pad: 0,
            rate: [RawRateRule::default(); MAX_RATE_RULES],
        }
    }
}

/// `struct fg_cidr_value`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RawCidrValue {
    pub rule: u32,
    pub action: u32,
}

/// `struct fg_l4_key`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawL4Key {
    pub vip: [u8; 16],
    pub proto: u8,
    pub pad: u8,
    pub port: u16,
}

// SAFETY: the four types above are `#[repr(C)]` plain integers and byte
// arrays laid out without implicit padding (checked by the layout tests), so
// every bit pattern is valid and they may be copied to and from the kernel.
unsafe impl Pod for RawRateRule {}
// SAFETY: see above.
unsafe impl Pod for RawRuleset {}
// SAFETY: see above.
unsafe impl Pod for RawCidrValue {}
// SAFETY: see above.
unsafe impl Pod for RawL4Key {}

/// An address as the program stores it: IPv4 in the first four bytes.
pub fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

/// Zeroes the host bits of `addr` beyond `len` (the trie wants clean keys).
pub fn masked<const N: usize>(mut addr: [u8; N], len: u8) -> [u8; N] {
    let mut bits = len as usize;
    for b in addr.iter_mut() {
        if bits >= 8 {
            bits -= 8;
        } else {
            *b &= (0xffu16 << (8 - bits)) as u8;
            bits = 0;
        }
    }
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_c() {
        assert_eq!(std::mem::size_of::<RawRateRule>(), 64);
        assert_eq!(std::mem::size_of::<RawRuleset>(), 16 + 64 * MAX_RATE_RULES);
        assert_eq!(std::mem::size_of::<RawCidrValue>(), 8);
        assert_eq!(std::mem::size_of::<RawL4Key>(), 20);
    }

    #[test]
    fn masks_host_bits() {
        assert_eq!(masked([10, 1, 2, 3], 8), [10, 0, 0, 0]);
        assert_eq!(masked([255, 255, 255, 255], 20), [255, 255, 240, 0]);
        assert_eq!(masked([1, 2, 3, 4], 32), [1, 2, 3, 4]);
        assert_eq!(masked([1, 2, 3, 4], 0), [0, 0, 0, 0]);
    }

    #[test]
    fn c_constants_match() {
        let c = include_str!("../bpf/ferrogate.bpf.c");
        assert!(c.contains(&format!("#define FG_MAX_RATE_RULES {MAX_RATE_RULES}")));
        assert!(c.contains(&format!("#define FG_MAX_RULES {MAX_RULES}")));
        assert!(c.contains("#define FG_MAX_PREFIXES (2 * 1024 * 1024)"));
        assert!(c.contains(&format!("#define FG_MAX_L4_RULES {MAX_L4_ENTRIES}")));
        let blocked = crate::MAX_BLOCKED_SOURCES;
        assert!(c.contains(&format!("#define FG_MAX_BLOCKED {blocked}")));
    }
}
