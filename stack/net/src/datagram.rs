//! UDP without smoltcp sockets: a received datagram is handed to the
//! application as a slice of its frame (no socket buffer, no copy), and a
//! datagram the application sends is written straight into a tx slot.
//! Proxying UDP needs one local port per client session; a smoltcp socket
//! (two packet buffers) per session would cost memory and a copy each way
//! for nothing.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use ferrogate_wire::FrameClass;
use smoltcp::phy::{Checksum, ChecksumCapabilities};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Packet, Icmpv6Packet,
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, UdpPacket, UdpRepr,
};

use crate::device::FrameQueue;

/// A datagram to one of our UDP ports, borrowed from its frame.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'f> {
    /// Our address and port it was sent to.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The link-layer sender: where a reply goes (the client, or the
    /// router it came through), without a neighbour lookup.
    pub peer_mac: [u8; 6],
    pub payload: &'f [u8],
}

/// Why a datagram was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendDrop {
    #[error("the next hop's link-layer address is not resolved")]
    NoNeighbour,
    #[error("larger than the link's MTU")]
    TooBig,
    #[error("the transmit queue is full")]
    QueueFull,
    #[error("source and destination are of different address families")]
    AddressFamily,
}

/// The UDP side of a worker's stack: listening ports, and the upstream
/// ports the application bound.
pub(crate) struct UdpPorts {
    listen: Vec<u16>,
    /// A bit per port of the upstream range: bound to a session.
    bound: Vec<u64>,
    bound_count: usize,
    range: Range<u16>,
    /// A send found no next hop: the neighbours are asked again.
    pub(crate) neighbour_missed: bool,
}

impl UdpPorts {
    pub(crate) fn new(listen: Vec<u16>, range: Range<u16>) -> Self {
        Self {
            listen,
            bound: vec![0; range.len().div_ceil(64)],
            bound_count: 0,
            range,
            neighbour_missed: false,
        }
    }

    /// At most half of the upstream ports go to UDP sessions: a flood of
    /// new sources cannot starve TCP upstream connections of ports.
    pub(crate) fn quota_left(&self) -> bool {
        self.bound_count < self.range.len() / 2
    }

    /// A datagram to `port` goes to the application.
    pub(crate) fn takes(&self, port: u16) -> bool {
        self.listen.contains(&port) || self.is_bound(port)
    }

    pub(crate) fn is_bound(&self, port: u16) -> bool {
        self.bit(port)
            .is_some_and(|(w, b)| self.bound[w] & (1 << b) != 0)
    }

    pub(crate) fn set_bound(&mut self, port: u16, on: bool) {
        if let Some((w, b)) = self.bit(port) {
            let was = self.bound[w] & (1 << b) != 0;
            if on {
                self.bound[w] |= 1 << b;
            } else {
                self.bound[w] &= !(1 << b);
            }
            match (was, on) {
                (false, true) => self.bound_count += 1,
                (true, false) => self.bound_count -= 1,
                _ => {}
            }
        }
    }

    fn bit(&self, port: u16) -> Option<(usize, usize)> {
        self.range.contains(&port).then(|| {
            let i = (port - self.range.start) as usize;
            (i / 64, i % 64)
        })
    }
}

/// What smoltcp checks of a datagram (or ICMP error) before a socket sees
/// it, for those handed to the application without smoltcp: checksums
/// (IPv4 header, UDP — optional over IPv4 —, ICMP) when `verify`, and a
/// source a reply may go to (unicast, not ours, port not 0).
pub(crate) fn acceptable(
    frame: &[u8],
    class: FrameClass,
    verify: bool,
    ours: impl Fn(IpAddress) -> bool,
) -> bool {
    let l3 = &frame[ETH_HLEN..];
    let (src, dst, proto, l4) = match l3[0] >> 4 {
        4 => {
            let Ok(ip) = Ipv4Packet::new_checked(l3) else {
                return false;
            };
            if verify && !ip.verify_checksum() {
                return false;
            }
            let (s, d) = (
                IpAddress::Ipv4(ip.src_addr()),
                IpAddress::Ipv4(ip.dst_addr()),
            );
            (s, d, ip.next_header(), ip.payload())
        }
        _ => {
            let Ok(ip) = Ipv6Packet::new_checked(l3) else {
                return false;
            };
            let (s, d) = (
                IpAddress::Ipv6(ip.src_addr()),
                IpAddress::Ipv6(ip.dst_addr()),
            );
            (s, d, ip.next_header(), ip.payload())
        }
    };
    if !src.is_unicast() || ours(src) {
        return false;
    }
    match class {
        FrameClass::Udp(m) => {
            let Ok(udp) = UdpPacket::new_checked(l4) else {
                return false;
            };
            // IPv6 makes the UDP checksum mandatory; smoltcp's check takes
            // a zero as "none" for IPv4 only.
            m.key.remote_port != 0 && (!verify || udp.verify_checksum(&src, &dst))
        }
        FrameClass::UdpUnreachable(_) => {
            !verify
                || match proto {
                    IpProtocol::Icmp => {
                        Icmpv4Packet::new_checked(l4).is_ok_and(|p| p.verify_checksum())
                    }
                    _ => match (src, dst) {
                        (IpAddress::Ipv6(s), IpAddress::Ipv6(d)) => {
                            Icmpv6Packet::new_checked(l4).is_ok_and(|p| p.verify_checksum(&s, &d))
                        }
                        _ => false,
                    },
                }
        }
        _ => false,
    }
}

const ETH_HLEN: usize = 14;
const UDP_HLEN: usize = 8;
/// The IP MTU of the links ferrogate runs on (Ethernet).
pub const IP_MTU: usize = 1500;

/// Largest UDP payload sent to or from `ip` in one unfragmented datagram.
pub fn max_payload(ip: IpAddr) -> usize {
    IP_MTU - UDP_HLEN - if ip.is_ipv4() { 20 } else { 40 }
}

/// Writes one Ethernet + IP + UDP frame into `tx`.
pub(crate) fn emit(
    tx: &mut FrameQueue,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    local: SocketAddr,
    remote: SocketAddr,
    payload: &[u8],
    checksum_offload: bool,
) -> Result<(), SendDrop> {
    if payload.len() > max_payload(remote.ip()) {
        return Err(SendDrop::TooBig);
    }
    let mut caps = ChecksumCapabilities::default();
    if checksum_offload {
        caps.ipv4 = Checksum::Rx;
        caps.udp = Checksum::Rx;
    }
    let udp = UdpRepr {
        src_port: local.port(),
        dst_port: remote.port(),
    };
    let udp_len = UDP_HLEN + payload.len();
    let (ethertype, ip_len) = match (local.ip(), remote.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (EthernetProtocol::Ipv4, 20),
        (IpAddr::V6(_), IpAddr::V6(_)) => (EthernetProtocol::Ipv6, 40),
        _ => return Err(SendDrop::AddressFamily),
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(src_mac),
        dst_addr: EthernetAddress(dst_mac),
        ethertype,
    };
    let len = ETH_HLEN + ip_len + udp_len;
    tx.push_with(len, |buf| {
        let mut frame = EthernetFrame::new_unchecked(buf);
        eth.emit(&mut frame);
        let l3 = frame.payload_mut();
        let fill = |b: &mut [u8]| b.copy_from_slice(payload);
        match (local.ip(), remote.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let ip = Ipv4Repr {
                    src_addr: src,
                    dst_addr: dst,
                    next_header: IpProtocol::Udp,
                    payload_len: udp_len,
                    hop_limit: 64,
                };
                let mut p = Ipv4Packet::new_unchecked(l3);
                ip.emit(&mut p, &caps);
                let mut u = UdpPacket::new_unchecked(p.payload_mut());
                udp.emit(&mut u, &src.into(), &dst.into(), payload.len(), fill, &caps);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let ip = Ipv6Repr {
                    src_addr: src,
                    dst_addr: dst,
                    next_header: IpProtocol::Udp,
                    payload_len: udp_len,
                    hop_limit: 64,
                };
                let mut p = Ipv6Packet::new_unchecked(l3);
                ip.emit(&mut p);
                let mut u = UdpPacket::new_unchecked(p.payload_mut());
                udp.emit(&mut u, &src.into(), &dst.into(), payload.len(), fill, &caps);
            }
            _ => unreachable!("families checked above"),
        }
    })
    .ok_or(SendDrop::QueueFull)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrogate_wire::{FrameClass, classify};

    const US: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn send(q: &mut FrameQueue, local: &str, remote: &str, payload: &[u8]) -> Result<(), SendDrop> {
        emit(
            q,
            US,
            [2; 6],
            local.parse().unwrap(),
            remote.parse().unwrap(),
            payload,
            false,
        )
    }

    /// The one frame queued, and what `classify` makes of it.
    fn sent(q: &mut FrameQueue) -> (Vec<u8>, ferrogate_wire::UdpMeta) {
        let f = q.pop_with(|f| f.to_vec()).expect("a frame");
        let FrameClass::Udp(m) = classify(&f) else {
            panic!("not udp")
        };
        (f, m)
    }

    #[test]
    fn an_emitted_datagram_classifies_back_with_valid_checksums() {
        let mut q = FrameQueue::new(4, 2048);
        send(&mut q, "10.77.0.10:53", "10.77.0.2:40000", b"answer").unwrap();
        let (f, m) = sent(&mut q);
        assert_eq!(m.payload(&f), b"answer");
        assert_eq!((m.key.remote_port, m.key.local_port), (53, 40_000));
        let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
        assert!(ip.verify_checksum());
        let u = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(u.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
    }

    #[test]
    fn ipv6_too_big_and_mixed_families() {
        let mut q = FrameQueue::new(4, 2048);
        let (local, remote) = ("[fd00::10]:53", "[fd00::2]:40000");
        send(&mut q, local, remote, b"v6").unwrap();
        let (f, m) = sent(&mut q);
        assert_eq!(m.payload(&f), b"v6");
        let max = max_payload("fd00::2".parse().unwrap());
        assert_eq!(
            send(&mut q, local, remote, &vec![0; max + 1]),
            Err(SendDrop::TooBig)
        );
        assert_eq!(
            send(&mut q, "10.0.0.1:1", remote, b""),
            Err(SendDrop::AddressFamily)
        );
        send(&mut q, local, remote, &vec![0; max]).unwrap();
        assert_eq!(sent(&mut q).0.len(), 14 + IP_MTU);
    }
}
