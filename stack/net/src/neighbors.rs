//! Keeps the MAC addresses of upstream next hops resolved ahead of time.
//!
//! smoltcp rate-limits ARP requests for the whole interface (one per second,
//! whatever the neighbour): after it asks for a client's address, the first
//! upstream connection waits a full second for its own ARP. The stack
//! therefore asks for every on-link upstream endpoint (or the gateway) itself,
//! at start, on every snapshot and before smoltcp's cache entries expire; the
//! replies fill smoltcp's cache like any other ARP reply for the VIP.

use std::net::{IpAddr, Ipv4Addr};

use smoltcp::time::{Duration, Instant};

use crate::config::NetConfig;
use crate::device::FrameQueue;

/// smoltcp forgets a neighbour after 60 s; ask again well before.
const REFRESH: Duration = Duration::from_secs(20);

#[derive(Default)]
pub(crate) struct NeighborPrimer {
    next: Option<Instant>,
    /// Addresses the application will connect to (upstream endpoints).
    targets: Vec<IpAddr>,
}

impl NeighborPrimer {
    /// New targets (e.g. after a snapshot swap): asks for them now.
    pub(crate) fn set_targets(&mut self, targets: Vec<IpAddr>) {
        self.targets = targets;
        self.next = None;
    }

    /// Asks again soon: now, or a second after the last requests (a
    /// sender that keeps missing its next hop does not flood ARP).
    pub(crate) fn hurry(&mut self, now: Instant) {
        if let Some(next) = self.next {
            let last = next - REFRESH;
            self.next = Some(next.min((last + Duration::from_secs(1)).max(now)));
        }
    }

    /// When the next requests are due (None: no targets).
    pub(crate) fn next_at(&self) -> Option<Instant> {
        if self.targets.is_empty() {
            return None;
        }
        Some(self.next.unwrap_or(Instant::ZERO))
    }

    /// Sends ARP requests for the next hops of every IPv4 target when due.
    /// Returns how many were queued.
    pub(crate) fn run(&mut self, cfg: &NetConfig, tx: &mut FrameQueue, now: Instant) -> usize {
        if self.next.is_some_and(|t| now < t) {
            return 0;
        }
        self.next = Some(now + REFRESH);
        let mut hops: Vec<(Ipv4Addr, Ipv4Addr)> = Vec::new();
        for target in &self.targets {
            let IpAddr::V4(target) = *target else {
                continue;
            };
            let hop = match on_link_source(cfg, target) {
                Some(src) => Some((target, src)),
                None => cfg
                    .gateway_v4
                    .and_then(|gw| on_link_source(cfg, gw).map(|src| (gw, src))),
            };
            if let Some(h) = hop
                && !hops.contains(&h)
            {
                hops.push(h);
            }
        }
        let mut sent = 0;
        for (target, src) in hops {
            if tx
                .push_with(42, |f| arp_request(f, cfg.mac, src, target))
                .is_some()
            {
                sent += 1;
            }
        }
        sent
    }
}

/// Our IPv4 address on the subnet of `target`, if it is on-link.
fn on_link_source(cfg: &NetConfig, target: Ipv4Addr) -> Option<Ipv4Addr> {
    cfg.addresses.iter().find_map(|(ip, len)| match ip {
        IpAddr::V4(a) => {
            let mask = if *len == 0 {
                0
            } else {
                u32::MAX << (32 - *len as u32)
            };
            (u32::from(*a) & mask == u32::from(target) & mask).then_some(*a)
        }
        IpAddr::V6(_) => None,
    })
}

fn arp_request(f: &mut [u8], mac: [u8; 6], src: Ipv4Addr, target: Ipv4Addr) {
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    // htype Ethernet, ptype IPv4, hlen 6, plen 4, op request
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&src.octets());
    f[32..38].copy_from_slice(&[0; 6]);
    f[38..42].copy_from_slice(&target.octets());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_link_targets_use_the_matching_address() {
        let cfg = NetConfig::new(
            [2, 0, 0, 0, 0, 1],
            vec![("10.77.0.10".parse().unwrap(), 24)],
            40_000..41_000,
        );
        assert_eq!(
            on_link_source(&cfg, "10.77.0.3".parse().unwrap()),
            Some("10.77.0.10".parse().unwrap())
        );
        assert_eq!(on_link_source(&cfg, "10.78.0.3".parse().unwrap()), None);
    }

    #[test]
    fn arp_request_is_well_formed() {
        let mut f = [0u8; 42];
        arp_request(
            &mut f,
            [2, 0, 0, 0, 0, 1],
            "10.0.0.10".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let pkt = smoltcp::wire::ArpPacket::new_checked(&f[14..]).unwrap();
        let repr = smoltcp::wire::ArpRepr::parse(&pkt).unwrap();
        match repr {
            smoltcp::wire::ArpRepr::EthernetIpv4 {
                operation,
                target_protocol_addr,
                ..
            } => {
                assert_eq!(operation, smoltcp::wire::ArpOperation::Request);
                assert_eq!(target_protocol_addr, Ipv4Addr::new(10, 0, 0, 3));
            }
            _ => panic!("not Ethernet/IPv4 ARP"),
        }
    }
}
