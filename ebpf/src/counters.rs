//! The XDP program's counters, mirrored from `enum fg_counter` in
//! `bpf/ferrogate.bpf.c` (same names, same order; a unit test checks it).
//!
//! Every frame increments exactly one *verdict* counter (`pass_host`,
//! `redirect_vip`, `pass_vip`, `drop_*`). The others classify:
//! `arp_vip + ipv4_vip + ipv6_vip == redirect_vip + pass_vip`, and the
//! `malformed_*` counters count malformed frames per reason, whatever their
//! verdict (dropped when addressed to a VIP, passed to the kernel otherwise).

use aya::Pod;

/// Packets and bytes of one counter; the layout of `struct fg_counter_value`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub packets: u64,
    pub bytes: u64,
}

// SAFETY: `Verdict` is `#[repr(C)]`, made of two `u64` (no padding, no
// pointers), so every bit pattern is a valid value and it may be copied
// to and from the kernel as raw bytes.
unsafe impl Pod for Verdict {}

impl Verdict {
    fn add(&mut self, other: Verdict) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

macro_rules! define_counters {
    ($( $(#[doc = $doc:literal])* $variant:ident => $field:ident, $cname:literal; )+) => {
        /// Index of a counter in the `counters` per-CPU array (`enum fg_counter`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum Counter {
            $( $(#[doc = $doc])* $variant, )+
        }

        impl Counter {
            /// All counters, in index order.
            pub const ALL: &'static [Counter] = &[ $( Counter::$variant, )+ ];
            /// Number of counters (`FG_CNT_MAX`).
            pub const COUNT: usize = Self::ALL.len();

            /// Stable snake_case name, for printing and metrics.
            pub const fn name(self) -> &'static str {
                match self { $( Counter::$variant => stringify!($field), )+ }
            }

            /// Name of the enumerator in the C source.
            pub const fn c_name(self) -> &'static str {
                match self { $( Counter::$variant => $cname, )+ }
            }

            /// Index in the `counters` map.
            pub const fn index(self) -> u32 {
                self as u32
            }
        }

        /// Counters of the XDP program, summed over CPUs.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct XdpCounters {
            $( $(#[doc = $doc])* pub $field: Verdict, )+
        }

        impl XdpCounters {
            /// The value of one counter.
            pub fn get(&self, counter: Counter) -> Verdict {
                match counter { $( Counter::$variant => self.$field, )+ }
            }

            fn get_mut(&mut self, counter: Counter) -> &mut Verdict {
                match counter { $( Counter::$variant => &mut self.$field, )+ }
            }
        }
    };
}

define_counters! {
    /// Not a VIP frame (incl. malformed frames not addressed to a VIP): passed to the kernel.
    PassHost => pass_host, "FG_CNT_PASS_HOST";
    /// VIP frame redirected to the queue's AF_XDP socket.
    RedirectVip => redirect_vip, "FG_CNT_REDIRECT_VIP";
    /// VIP frame passed to the kernel (`PassToKernel`, or no socket on the queue).
    PassVip => pass_vip, "FG_CNT_PASS_VIP";
    /// Malformed frame addressed to a VIP: dropped.
    DropMalformedVip => drop_malformed_vip, "FG_CNT_DROP_MALFORMED_VIP";
    /// Well-formed ARP frame whose target protocol address is a VIP.
    ArpVip => arp_vip, "FG_CNT_ARP_VIP";
    /// Well-formed IPv4 frame to a VIP.
    Ipv4Vip => ipv4_vip, "FG_CNT_IPV4_VIP";
    /// Well-formed IPv6 frame to a VIP.
    Ipv6Vip => ipv6_vip, "FG_CNT_IPV6_VIP";
    /// Shorter than an Ethernet header.
    MalformedEth => malformed_eth, "FG_CNT_MALFORMED_ETH";
    /// Truncated VLAN tag.
    MalformedVlan => malformed_vlan, "FG_CNT_MALFORMED_VLAN";
    /// ARP shorter than the Ethernet/IPv4 ARP body.
    MalformedArp => malformed_arp, "FG_CNT_MALFORMED_ARP";
    /// IPv4: truncated header, IHL < 5, header beyond the frame, bad total length.
    MalformedIpv4 => malformed_ipv4, "FG_CNT_MALFORMED_IPV4";
    /// IPv6: truncated header or payload length beyond the frame.
    MalformedIpv6 => malformed_ipv6, "FG_CNT_MALFORMED_IPV6";
    /// TCP/UDP header to a VIP truncated, or TCP data offset < 5 or beyond the IP payload.
    MalformedL4 => malformed_l4, "FG_CNT_MALFORMED_L4";
    /// Source in a denied CIDR (longest match).
    DropDeny => drop_deny, "FG_CNT_DROP_DENY";
    /// Allow-list mode: source in no allowed CIDR.
    DropNotAllowed => drop_not_allowed, "FG_CNT_DROP_NOT_ALLOWED";
    /// Over a rate rule (token bucket).
    DropRate => drop_rate, "FG_CNT_DROP_RATE";
    /// Protocol/port not allowed for the VIP.
    DropL4 => drop_l4, "FG_CNT_DROP_L4";
    /// IPv4/IPv6 fragment to a VIP (the stack does not reassemble).
    DropFragmentVip => drop_fragment_vip, "FG_CNT_DROP_FRAGMENT_VIP";
    /// VIP frame on a queue without a socket, fail-closed mode.
    DropNoSocket => drop_no_socket, "FG_CNT_DROP_NO_SOCKET";
    /// Impossible TCP flags (null, SYN+FIN, SYN+RST, FIN/PSH/URG without ACK); also counted as malformed_l4.
    BadTcpFlags => bad_tcp_flags, "FG_CNT_BAD_TCP_FLAGS";
    /// Well-formed frame to a VIP under one 802.1Q/802.1ad tag: dropped (the
    /// stack speaks untagged Ethernet only). Tagged host traffic passes.
    DropVlanVip => drop_vlan_vip, "FG_CNT_DROP_VLAN_VIP";
    /// Source in the escalated-sources deny set (`blocked4`/`blocked6`) with
    /// its expiry still ahead: dropped (pushed there by an L7 rate limit).
    DropEscalated => drop_escalated, "FG_CNT_DROP_ESCALATED";
}

impl XdpCounters {
    /// Adds `v` to one counter (for filters that count outside the program,
    /// e.g. the engine's software filter under DPDK).
    pub fn add_to(&mut self, counter: Counter, v: Verdict) {
        self.get_mut(counter).add(v);
    }

    /// Builds the totals from the per-CPU values of each counter (indexed by [`Counter`]).
    pub(crate) fn from_per_cpu<'a, I>(per_counter: I) -> Self
    where
        I: IntoIterator<Item = (Counter, &'a [Verdict])>,
    {
        let mut out = XdpCounters::default();
        for (counter, values) in per_counter {
            let total = out.get_mut(counter);
            for v in values {
                total.add(*v);
            }
        }
        out
    }

    /// Frames counted as malformed, for any reason (dropped or passed).
    pub fn malformed_total(&self) -> u64 {
        [
            self.malformed_eth,
            self.malformed_vlan,
            self.malformed_arp,
            self.malformed_ipv4,
            self.malformed_ipv6,
            self.malformed_l4,
        ]
        .iter()
        .map(|v| v.packets)
        .sum()
    }

    /// Frames seen by the program: the sum of the verdict counters.
    pub fn frames_total(&self) -> u64 {
        self.pass_host.packets
            + self.redirect_vip.packets
            + self.pass_vip.packets
            + self.drops_total()
    }

    /// Frames dropped, for any reason.
    pub fn drops_total(&self) -> u64 {
        [
            self.drop_malformed_vip,
            self.drop_deny,
            self.drop_not_allowed,
            self.drop_rate,
            self.drop_l4,
            self.drop_fragment_vip,
            self.drop_no_socket,
            self.drop_vlan_vip,
            self.drop_escalated,
        ]
        .iter()
        .map(|v| v.packets)
        .sum()
    }

    /// `(name, value)` of every counter, in index order, with stable snake_case names.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, Verdict)> + '_ {
        Counter::ALL.iter().map(|&c| (c.name(), self.get(c)))
    }

    /// Per-counter difference `self - earlier` (saturating), for "what happened since".
    pub fn since(&self, earlier: &XdpCounters) -> XdpCounters {
        let mut out = XdpCounters::default();
        for &c in Counter::ALL {
            let (now, then) = (self.get(c), earlier.get(c));
            *out.get_mut(c) = Verdict {
                packets: now.packets.saturating_sub(then.packets),
                bytes: now.bytes.saturating_sub(then.bytes),
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C_SOURCE: &str = include_str!("../bpf/ferrogate.bpf.c");

    /// The enumerators of `enum fg_counter` in the C source, in order, without `FG_CNT_MAX`.
    fn c_counter_names() -> Vec<String> {
        let start = C_SOURCE
            .find("enum fg_counter {")
            .expect("enum fg_counter in the C source");
        let body = &C_SOURCE[start..];
        let body = &body[body.find('{').unwrap() + 1..body.find('}').unwrap()];
        body.split(',')
            .map(|item| {
                // drop `= 0` and comments
                let item = item.split("//").next().unwrap_or("");
                item.split('=').next().unwrap_or("").trim().to_owned()
            })
            .filter(|name| !name.is_empty())
            .filter(|name| name != "FG_CNT_MAX")
            .collect()
    }

    #[test]
    fn rust_counters_match_c_enum() {
        let c = c_counter_names();
        let rust: Vec<&str> = Counter::ALL.iter().map(|c| c.c_name()).collect();
        assert_eq!(c, rust, "enum fg_counter and Counter diverged");
        for (i, &counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(counter.index() as usize, i);
            // the snake_case name is the C name without the prefix, lowercased
            assert_eq!(
                counter.name(),
                counter
                    .c_name()
                    .trim_start_matches("FG_CNT_")
                    .to_lowercase()
            );
        }
    }

    #[test]
    fn verdict_layout_matches_c() {
        assert_eq!(std::mem::size_of::<Verdict>(), 16);
        assert_eq!(std::mem::align_of::<Verdict>(), 8);
    }

    #[test]
    fn sums_over_cpus_and_totals() {
        let a = [
            Verdict {
                packets: 1,
                bytes: 60,
            },
            Verdict {
                packets: 2,
                bytes: 120,
            },
        ];
        let b = [Verdict {
            packets: 5,
            bytes: 10,
        }];
        let c = XdpCounters::from_per_cpu([
            (Counter::PassHost, &a[..]),
            (Counter::MalformedIpv4, &b[..]),
            (Counter::MalformedL4, &b[..]),
            (Counter::DropMalformedVip, &b[..]),
            (Counter::DropVlanVip, &b[..]),
            (Counter::DropEscalated, &b[..]),
        ]);
        assert_eq!(
            c.pass_host,
            Verdict {
                packets: 3,
                bytes: 180
            }
        );
        assert_eq!(c.malformed_total(), 10);
        assert_eq!(
            c.frames_total(),
            18,
            "drop_vlan_vip and drop_escalated are verdicts"
        );
        assert_eq!(c.drops_total(), 15);
        let names: Vec<_> = c.iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), Counter::COUNT);
        assert_eq!(names[0], "pass_host");
        assert_eq!(c.since(&c), XdpCounters::default());
    }
}
