//! UDP without smoltcp sockets: a received datagram is handed to the
//! application as a slice of its frame (no socket buffer, no copy), and a
//! datagram the application sends is written straight into a tx slot.
//! Proxying UDP needs one local port per client session; a smoltcp socket
//! (two packet buffers) per session would cost memory and a copy each way
//! for nothing.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use smoltcp::phy::{Checksum, ChecksumCapabilities};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet,
    Ipv4Repr, Ipv6Packet, Ipv6Repr, UdpPacket, UdpRepr,
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

/// Counters of the UDP path of one worker.
#[derive(Debug, Default, Clone, Copy)]
pub struct UdpNetStats {
    /// Datagrams handed to the application.
    pub rx_datagrams: u64,
    /// ICMP unreachable messages about our datagrams handed to it.
    pub rx_unreachable: u64,
    pub tx_datagrams: u64,
    pub tx_drop_no_neighbour: u64,
    pub tx_drop_too_big: u64,
    pub tx_drop_queue_full: u64,
}

/// The UDP side of a worker's stack: listening ports, the upstream ports
/// the application bound, the counters.
pub(crate) struct UdpPorts {
    listen: Vec<u16>,
    /// A bit per port of the upstream range: bound to a session.
    bound: Vec<u64>,
    range: Range<u16>,
    pub(crate) stats: UdpNetStats,
}

impl UdpPorts {
    pub(crate) fn new(listen: Vec<u16>, range: Range<u16>) -> Self {
        Self {
            listen,
            bound: vec![0; range.len().div_ceil(64)],
            range,
            stats: UdpNetStats::default(),
        }
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
            if on {
                self.bound[w] |= 1 << b;
            } else {
                self.bound[w] &= !(1 << b);
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

    fn one_frame(q: &mut FrameQueue) -> Vec<u8> {
        q.pop_with(|f| f.to_vec()).expect("a frame")
    }

    #[test]
    fn an_emitted_datagram_classifies_back_with_valid_checksums() {
        let mut q = FrameQueue::new(4, 2048);
        let local: SocketAddr = "10.77.0.10:53".parse().unwrap();
        let remote: SocketAddr = "10.77.0.2:40000".parse().unwrap();
        emit(
            &mut q,
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            local,
            remote,
            b"answer",
            false,
        )
        .unwrap();
        let f = one_frame(&mut q);
        let FrameClass::Udp(m) = classify(&f) else {
            panic!("not udp")
        };
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
        let local: SocketAddr = "[fd00::10]:53".parse().unwrap();
        let remote: SocketAddr = "[fd00::2]:40000".parse().unwrap();
        emit(
            &mut q,
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            local,
            remote,
            b"v6",
            false,
        )
        .unwrap();
        let f = one_frame(&mut q);
        let FrameClass::Udp(m) = classify(&f) else {
            panic!("not udp")
        };
        assert_eq!(m.payload(&f), b"v6");
        let big = vec![0u8; max_payload(remote.ip()) + 1];
        let e = emit(
            &mut q,
            [2, 0, 0, 0, 0, 1],
            [2; 6],
            local,
            remote,
            &big,
            false,
        );
        assert_eq!(e, Err(SendDrop::TooBig));
        let v4: SocketAddr = "10.0.0.1:1".parse().unwrap();
        assert_eq!(
            emit(&mut q, [2, 0, 0, 0, 0, 1], [2; 6], v4, remote, b"", false),
            Err(SendDrop::AddressFamily)
        );
        let fits = vec![0u8; max_payload(remote.ip())];
        emit(
            &mut q,
            [2, 0, 0, 0, 0, 1],
            [2; 6],
            local,
            remote,
            &fits,
            false,
        )
        .unwrap();
        assert_eq!(one_frame(&mut q).len(), 14 + IP_MTU);
    }
}
