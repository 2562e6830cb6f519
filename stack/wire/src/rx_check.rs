//! The stack's admission check: a frame smoltcp would drop silently is
//! dropped before it with a reason, so every received frame is accounted.

use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, IpCidr, Ipv4Address, Ipv4Packet, Ipv6Address, Ipv6Packet,
    TcpPacket, UdpPacket,
};

const ETH_HLEN: usize = 14;

/// Why the stack drops a received frame before smoltcp sees it (each one
/// is a `stack_rx_drop_*` counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxDrop {
    /// Truncated or invalid headers (Ethernet, ARP, IPv4/IPv6, TCP/UDP):
    /// what smoltcp's checked views refuse.
    Malformed,
    /// Neither ARP, IPv4, IPv6 nor a VLAN tag.
    UnknownEthertype,
    /// 802.1Q/802.1ad tagged: smoltcp speaks untagged Ethernet only. The
    /// filter tier drops these for VIPs; this counts what got past it.
    Vlan,
    /// Not addressed to us: another unicast MAC, an IP destination (or ARP
    /// target) that is none of our addresses, broadcasts or multicast groups.
    NotForUs,
    /// An IPv4 fragment: the stack does not reassemble.
    Fragment,
}

/// Checks a received frame against what smoltcp would accept (`mac` and
/// `addrs` are the interface's). Only headers are read; checksums are left
/// to smoltcp (it verifies them anyway), so a frame it drops for a bad
/// checksum is among the handed ones. IPv6 extension headers are not walked.
pub fn rx_check(frame: &[u8], mac: EthernetAddress, addrs: &[IpCidr]) -> Result<(), RxDrop> {
    if frame.len() < ETH_HLEN {
        return Err(RxDrop::Malformed);
    }
    let dst = EthernetAddress::from_bytes(&frame[..6]);
    if dst != mac && !dst.is_broadcast() && !dst.is_multicast() {
        return Err(RxDrop::NotForUs);
    }
    let payload = &frame[ETH_HLEN..];
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0806 => {
            let arp = ArpPacket::new_checked(payload).map_err(|_| RxDrop::Malformed)?;
            match ArpRepr::parse(&arp).map_err(|_| RxDrop::Malformed)? {
                ArpRepr::EthernetIpv4 {
                    target_protocol_addr,
                    ..
                } if is_ours_v4(addrs, target_protocol_addr, false) => Ok(()),
                _ => Err(RxDrop::NotForUs),
            }
        }
        0x0800 => {
            let ip = Ipv4Packet::new_checked(payload).map_err(|_| RxDrop::Malformed)?;
            if ip.version() != 4 || ip.header_len() < 20 {
                return Err(RxDrop::Malformed);
            }
            if !is_ours_v4(addrs, ip.dst_addr(), true) {
                return Err(RxDrop::NotForUs);
            }
            if ip.more_frags() || ip.frag_offset() != 0 {
                return Err(RxDrop::Fragment);
            }
            l4_check(ip.next_header().into(), ip.payload())
        }
        0x86dd => {
            let ip = Ipv6Packet::new_checked(payload).map_err(|_| RxDrop::Malformed)?;
            if ip.version() != 6 {
                return Err(RxDrop::Malformed);
            }
            if !is_ours_v6(addrs, ip.dst_addr()) {
                return Err(RxDrop::NotForUs);
            }
            l4_check(ip.next_header().into(), ip.payload())
        }
        0x8100 | 0x88a8 => Err(RxDrop::Vlan),
        _ => Err(RxDrop::UnknownEthertype),
    }
}

/// Whether a TCP frame that [`rx_check`] admitted carries correct
/// checksums (the IPv4 header's and the TCP one): the stack verifies these
/// itself, so that a corrupted segment is counted (and touches no socket)
/// rather than dropped silently inside smoltcp. Other frames: true.
pub fn tcp_checksums_ok(frame: &[u8]) -> bool {
    let payload = &frame[ETH_HLEN.min(frame.len())..];
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => {
            let Ok(ip) = Ipv4Packet::new_checked(payload) else {
                return true;
            };
            if ip.next_header() != smoltcp::wire::IpProtocol::Tcp {
                return true;
            }
            let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
                return true;
            };
            ip.verify_checksum()
                && tcp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into())
        }
        0x86dd => {
            let Ok(ip) = Ipv6Packet::new_checked(payload) else {
                return true;
            };
            if ip.next_header() != smoltcp::wire::IpProtocol::Tcp {
                return true;
            }
            let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
                return true;
            };
            tcp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into())
        }
        _ => true,
    }
}

/// TCP and UDP headers must fit their IP payload.
fn l4_check(proto: u8, l4: &[u8]) -> Result<(), RxDrop> {
    let ok = match proto {
        6 => TcpPacket::new_checked(l4).is_ok(),
        17 => UdpPacket::new_checked(l4).is_ok(),
        _ => true,
    };
    if ok { Ok(()) } else { Err(RxDrop::Malformed) }
}

/// One of our IPv4 addresses, or (`group`) a broadcast or multicast
/// destination smoltcp looks at itself.
fn is_ours_v4(addrs: &[IpCidr], a: Ipv4Address, group: bool) -> bool {
    if group && (a.is_broadcast() || a.is_multicast()) {
        return true;
    }
    addrs.iter().any(|c| match c {
        IpCidr::Ipv4(c) => c.address() == a || (group && c.broadcast() == Some(a)),
        _ => false,
    })
}

/// One of our IPv6 addresses, or multicast (solicited-node, all-nodes).
fn is_ours_v6(addrs: &[IpCidr], a: Ipv6Address) -> bool {
    a.is_multicast()
        || addrs.iter().any(|c| match c {
            IpCidr::Ipv6(c) => c.address() == a,
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);

    fn addrs() -> [IpCidr; 2] {
        [
            IpCidr::new(Ipv4Address::new(10, 0, 0, 10).into(), 24),
            IpCidr::new(Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10).into(), 64),
        ]
    }

    fn udp4_to(dst: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[..6].copy_from_slice(&[0xff; 6]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[17] = 28;
        f[23] = 17;
        f[30..34].copy_from_slice(&dst);
        f[38..40].copy_from_slice(&8u16.to_be_bytes());
        f
    }

    #[test]
    fn rx_check_lets_broadcasts_and_multicast_through() {
        let a = addrs();
        assert_eq!(rx_check(&udp4_to([10, 0, 0, 10]), MAC, &a), Ok(()));
        assert_eq!(rx_check(&udp4_to([10, 0, 0, 255]), MAC, &a), Ok(()));
        assert_eq!(rx_check(&udp4_to([255; 4]), MAC, &a), Ok(()));
        assert_eq!(rx_check(&udp4_to([224, 0, 0, 1]), MAC, &a), Ok(()));
        assert_eq!(
            rx_check(&udp4_to([10, 0, 0, 11]), MAC, &a),
            Err(RxDrop::NotForUs)
        );
        // IPv6 to the solicited-node group (neighbour solicitation), to a
        // multicast MAC: smoltcp's to judge.
        let mut ns = vec![0u8; 14 + 40 + 24];
        ns[..6].copy_from_slice(&[0x33, 0x33, 0xff, 0, 0, 0x10]);
        ns[12..14].copy_from_slice(&[0x86, 0xdd]);
        ns[14] = 0x60;
        ns[19] = 24;
        ns[20] = 58;
        ns[14 + 24..14 + 40]
            .copy_from_slice(&Ipv6Address::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0x10).octets());
        assert_eq!(rx_check(&ns, MAC, &a), Ok(()));
        ns[14 + 24..14 + 40]
            .copy_from_slice(&Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x11).octets());
        assert_eq!(rx_check(&ns, MAC, &a), Err(RxDrop::NotForUs));
    }

    #[test]
    fn tcp_checksums_ok_catches_any_flipped_bit_of_a_segment() {
        use smoltcp::phy::ChecksumCapabilities;
        use smoltcp::wire::{IpProtocol, Ipv4Repr, TcpRepr, TcpSeqNumber};
        let (src, dst) = (
            Ipv4Address::new(10, 0, 0, 2),
            Ipv4Address::new(10, 0, 0, 10),
        );
        let payload = b"hello, corrupted world";
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: 80,
            control: smoltcp::wire::TcpControl::Psh,
            seq_number: TcpSeqNumber(1),
            ack_number: Some(TcpSeqNumber(1)),
            window_len: 1000,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let mut f = vec![0u8; 14 + 20 + tcp.buffer_len()];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let caps = ChecksumCapabilities::default();
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut f[14..34]), &caps);
        tcp.emit(
            &mut TcpPacket::new_unchecked(&mut f[34..]),
            &src.into(),
            &dst.into(),
            &caps,
        );
        assert!(tcp_checksums_ok(&f));
        for bit in 14 * 8..f.len() * 8 {
            let mut g = f.clone();
            g[bit / 8] ^= 1 << (bit % 8);
            // A flip in the IPv4 header's version/length fields may make it
            // unparseable (rx_check's Malformed), which is a drop too.
            let parses = Ipv4Packet::new_checked(&g[14..]).is_ok_and(|p| {
                p.next_header() == IpProtocol::Tcp && TcpPacket::new_checked(p.payload()).is_ok()
            });
            assert!(!parses || !tcp_checksums_ok(&g), "bit {bit} went unnoticed");
        }
    }
}
