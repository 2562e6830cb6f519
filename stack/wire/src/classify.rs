//! What a frame is, for steering and demultiplexing: ARP and IPv6 neighbour
//! advertisements (every worker needs those), TCP with its 4-tuple and flags,
//! UDP with its 4-tuple and payload, an ICMP "destination unreachable" about
//! a datagram we sent, or anything else (smoltcp's to judge). Read straight
//! from the bytes, allocation-free, one pass.

use smoltcp::wire::{IpAddress, Ipv4Address, Ipv6Address};

/// A TCP connection seen from this stack: our address/port, then the peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub local: IpAddress,
    pub local_port: u16,
    pub remote: IpAddress,
    pub remote_port: u16,
}

/// What the demultiplexer needs from a TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpMeta {
    pub key: FlowKey,
    /// SYN without ACK or RST: may open a connection on a listener.
    pub syn_only: bool,
    /// RST set: smoltcp never answers it.
    pub rst: bool,
}

/// A UDP datagram to us: its 4-tuple and where its payload lies in the
/// frame (bounded by the UDP length, which fits the IP payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpMeta {
    pub key: FlowKey,
    pub payload_offset: usize,
    pub payload_len: usize,
}

impl UdpMeta {
    pub fn payload<'f>(&self, frame: &'f [u8]) -> &'f [u8] {
        &frame[self.payload_offset..self.payload_offset + self.payload_len]
    }
}

/// What a worker needs to know to decide who handles a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameClass {
    /// ARP: every worker needs the neighbour it announces.
    Arp { request: bool },
    /// IPv6 neighbour advertisement: every worker needs it, like ARP.
    NeighborAdvert,
    /// An unfragmented TCP segment over IPv4 or IPv6 (no extension headers).
    Tcp(TcpMeta),
    /// An unfragmented UDP datagram over IPv4 or IPv6 (no extension headers).
    Udp(UdpMeta),
    /// ICMP destination unreachable (ICMPv6: type 1) quoting a UDP datagram
    /// this stack sent: `key` is that datagram's flow seen from us (our
    /// address and port, then the peer it went to). IPv4's "fragmentation
    /// needed" (path MTU) is not among them: the path exists.
    UdpUnreachable(FlowKey),
    /// Anything else (other ICMP, NDP solicitations, fragments, malformed frames):
    /// it reaches smoltcp without any socket.
    Other,
}

const ETH_HLEN: usize = 14;
const ARP_OP: usize = 6;
const ICMPV6_NEIGHBOR_ADVERT: u8 = 136;
const ICMPV6_DEST_UNREACHABLE: u8 = 1;
const ICMP_DEST_UNREACHABLE: u8 = 3;

pub fn classify(frame: &[u8]) -> FrameClass {
    let (Some(&hi), Some(&lo)) = (frame.get(12), frame.get(13)) else {
        return FrameClass::Other;
    };
    let l3 = &frame[ETH_HLEN.min(frame.len())..];
    match u16::from_be_bytes([hi, lo]) {
        0x0806 => match l3.get(ARP_OP..ARP_OP + 2) {
            Some(op) => FrameClass::Arp {
                request: op == [0, 1],
            },
            None => FrameClass::Other,
        },
        0x0800 => ipv4(l3),
        0x86dd => {
            if l3.len() < 40 || l3[0] >> 4 != 6 {
                return FrameClass::Other;
            }
            let src = v6_at(l3, 8);
            let dst = v6_at(l3, 24);
            let len = 40 + u16::from_be_bytes([l3[4], l3[5]]) as usize;
            let l4 = &l3[40..len.min(l3.len())];
            match l3[6] {
                6 => tcp(src, dst, l4).map_or(FrameClass::Other, FrameClass::Tcp),
                17 => udp(src, dst, l4, ETH_HLEN + 40).map_or(FrameClass::Other, FrameClass::Udp),
                // ICMPv6 directly after the fixed header
                58 if l3.get(40) == Some(&ICMPV6_NEIGHBOR_ADVERT) => FrameClass::NeighborAdvert,
                58 if l3.get(40) == Some(&ICMPV6_DEST_UNREACHABLE) => {
                    // The quoted IPv6 header of what we sent, then its UDP header.
                    match l4.get(8..8 + 40 + 4) {
                        Some(q) if q[0] >> 4 == 6 && q[6] == 17 => FrameClass::UdpUnreachable(
                            quoted_key(v6_at(q, 8), v6_at(q, 24), &q[40..]),
                        ),
                        _ => FrameClass::Other,
                    }
                }
                _ => FrameClass::Other,
            }
        }
        _ => FrameClass::Other,
    }
}

fn ipv4(ip: &[u8]) -> FrameClass {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return FrameClass::Other;
    }
    // More-fragments or a fragment offset: the stack does not reassemble,
    // and a later fragment's "ports" are payload bytes.
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return FrameClass::Other;
    }
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    let total = (u16::from_be_bytes([ip[2], ip[3]]) as usize).min(ip.len());
    let Some(l4) = ip.get(ihl..total) else {
        return FrameClass::Other;
    };
    let src = v4_at(ip, 12);
    let dst = v4_at(ip, 16);
    match ip[9] {
        6 => tcp(src, dst, l4).map_or(FrameClass::Other, FrameClass::Tcp),
        17 => udp(src, dst, l4, ETH_HLEN + ihl).map_or(FrameClass::Other, FrameClass::Udp),
        // Destination unreachable, any code but 4 (fragmentation needed):
        // the quoted IPv4 header (with its options) and the first 8 bytes
        // of what we sent.
        1 if l4.len() >= 8 + 20 && l4[0] == ICMP_DEST_UNREACHABLE && l4[1] != 4 => {
            let q = &l4[8..];
            let qihl = ((q[0] & 0x0f) as usize) * 4;
            match q.get(qihl..qihl + 4) {
                Some(ports) if q[0] >> 4 == 4 && q[9] == 17 && qihl >= 20 => {
                    FrameClass::UdpUnreachable(quoted_key(v4_at(q, 12), v4_at(q, 16), ports))
                }
                _ => FrameClass::Other,
            }
        }
        _ => FrameClass::Other,
    }
}

fn v4_at(b: &[u8], at: usize) -> IpAddress {
    Ipv4Address::from(<[u8; 4]>::try_from(&b[at..at + 4]).unwrap()).into()
}

fn v6_at(b: &[u8], at: usize) -> IpAddress {
    Ipv6Address::from(<[u8; 16]>::try_from(&b[at..at + 16]).unwrap()).into()
}

/// The flow of a datagram we sent (`src` is us), from its quoted headers.
fn quoted_key(src: IpAddress, dst: IpAddress, ports: &[u8]) -> FlowKey {
    FlowKey {
        local: src,
        local_port: u16::from_be_bytes([ports[0], ports[1]]),
        remote: dst,
        remote_port: u16::from_be_bytes([ports[2], ports[3]]),
    }
}

/// `l4` is the IP payload (trimmed to the IP length); `l4_at` its offset
/// in the frame.
fn udp(src: IpAddress, dst: IpAddress, l4: &[u8], l4_at: usize) -> Option<UdpMeta> {
    if l4.len() < 8 {
        return None;
    }
    let len = u16::from_be_bytes([l4[4], l4[5]]) as usize;
    if len < 8 || len > l4.len() {
        return None;
    }
    Some(UdpMeta {
        key: FlowKey {
            local: dst,
            local_port: u16::from_be_bytes([l4[2], l4[3]]),
            remote: src,
            remote_port: u16::from_be_bytes([l4[0], l4[1]]),
        },
        payload_offset: l4_at + 8,
        payload_len: len - 8,
    })
}

fn tcp(src: IpAddress, dst: IpAddress, tcp: &[u8]) -> Option<TcpMeta> {
    if tcp.len() < 20 {
        return None;
    }
    Some(TcpMeta {
        key: FlowKey {
            local: dst,
            local_port: u16::from_be_bytes([tcp[2], tcp[3]]),
            remote: src,
            remote_port: u16::from_be_bytes([tcp[0], tcp[1]]),
        },
        // SYN set; ACK and RST clear.
        syn_only: tcp[13] & 0x16 == 0x02,
        rst: tcp[13] & 0x04 != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_segment(flags: u8, frag: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[14..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[10, 0, 0, 2]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 10]);
        let tcp = &mut ip[20..];
        tcp[0..2].copy_from_slice(&50_001u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[13] = flags;
        f
    }

    fn tcp_meta(frame: &[u8]) -> Option<TcpMeta> {
        match classify(frame) {
            FrameClass::Tcp(m) => Some(m),
            _ => None,
        }
    }

    #[test]
    fn ipv4_tuple_and_syn() {
        let m = tcp_meta(&v4_segment(0x02, 0)).expect("tcp");
        assert_eq!(m.key.local, IpAddress::v4(10, 0, 0, 10));
        assert_eq!(m.key.remote, IpAddress::v4(10, 0, 0, 2));
        assert_eq!((m.key.local_port, m.key.remote_port), (80, 50_001));
        assert!(m.syn_only);
        assert!(!tcp_meta(&v4_segment(0x12, 0)).unwrap().syn_only, "SYN-ACK");
        assert!(!tcp_meta(&v4_segment(0x10, 0)).unwrap().syn_only, "ACK");
    }

    #[test]
    fn fragments_truncations_and_other_protocols_have_no_tuple() {
        assert!(tcp_meta(&v4_segment(0x02, 0x2000)).is_none(), "MF");
        assert!(tcp_meta(&v4_segment(0x02, 0x0001)).is_none(), "offset");
        assert!(tcp_meta(&v4_segment(0x02, 0)[..40]).is_none());
        assert!(tcp_meta(&[0u8; 5]).is_none());
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(tcp_meta(&arp).is_none());
    }

    #[test]
    fn arp_and_neighbour_advertisements_are_told_apart() {
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        arp[20..22].copy_from_slice(&[0, 1]);
        assert_eq!(classify(&arp), FrameClass::Arp { request: true });
        arp[21] = 2;
        assert_eq!(classify(&arp), FrameClass::Arp { request: false });
        let mut na = vec![0u8; 14 + 40 + 24];
        na[12..14].copy_from_slice(&[0x86, 0xdd]);
        na[14] = 0x60;
        na[14 + 6] = 58;
        na[14 + 40] = 136;
        assert_eq!(classify(&na), FrameClass::NeighborAdvert);
        na[14 + 40] = 135;
        assert_eq!(classify(&na), FrameClass::Other, "a solicitation");
    }

    #[test]
    fn truncated_frames_are_other() {
        assert_eq!(classify(&[0u8; 5]), FrameClass::Other);
        let mut f = [0u8; 30];
        f[12] = 0x08;
        f[13] = 0x00;
        f[14] = 0x45;
        f[23] = 6;
        assert_eq!(classify(&f), FrameClass::Other, "TCP header truncated");
    }

    #[test]
    fn a_syn_with_rst_opens_nothing() {
        let m = tcp_meta(&v4_segment(0x06, 0)).unwrap();
        assert!(!m.syn_only && m.rst);
    }

    fn v4_datagram(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(payload);
        // Ethernet padding after the datagram: not payload.
        f.extend_from_slice(&[0xee; 6]);
        let ip = &mut f[14..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((28 + payload.len()) as u16).to_be_bytes());
        ip[9] = 17;
        ip[12..16].copy_from_slice(&[10, 0, 0, 2]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 10]);
        let udp = &mut ip[20..];
        udp[0..2].copy_from_slice(&40_000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&53u16.to_be_bytes());
        udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f
    }

    #[test]
    fn udp_tuple_and_payload_bounded_by_the_udp_length() {
        let f = v4_datagram(b"query");
        let FrameClass::Udp(m) = classify(&f) else {
            panic!("not udp: {:?}", classify(&f));
        };
        assert_eq!(m.key.local, IpAddress::v4(10, 0, 0, 10));
        assert_eq!((m.key.local_port, m.key.remote_port), (53, 40_000));
        assert_eq!(m.payload(&f), b"query");
    }

    #[test]
    fn udp_with_a_length_beyond_the_ip_payload_or_below_8_is_other() {
        let mut f = v4_datagram(b"query");
        f[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(classify(&f), FrameClass::Other);
        f[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(classify(&f), FrameClass::Other);
        let mut frag = v4_datagram(b"query");
        frag[14 + 6] = 0x20;
        assert_eq!(classify(&frag), FrameClass::Other, "a fragment");
        assert_eq!(
            classify(&v4_datagram(b"")[..14 + 20 + 4]),
            FrameClass::Other
        );
    }

    #[test]
    fn udp_over_ipv6() {
        let mut f = vec![0u8; 14 + 40 + 8 + 3];
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f[14] = 0x60;
        f[14 + 4..14 + 6].copy_from_slice(&11u16.to_be_bytes());
        f[14 + 6] = 17;
        f[14 + 23] = 2;
        f[14 + 39] = 0x10;
        let udp = &mut f[54..];
        udp[0..2].copy_from_slice(&40_000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&53u16.to_be_bytes());
        udp[4..6].copy_from_slice(&11u16.to_be_bytes());
        udp[8..].copy_from_slice(b"abc");
        let FrameClass::Udp(m) = classify(&f) else {
            panic!("not udp");
        };
        assert_eq!(m.payload(&f), b"abc");
        assert_eq!(m.key.local_port, 53);
    }

    /// What an origin's kernel answers to `sent` (a datagram from us).
    fn icmp4_unreachable(sent: &[u8], code: u8) -> Vec<u8> {
        let quoted = &sent[14..14 + 28];
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(quoted);
        let ip = &mut f[14..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + 8 + 28) as u16).to_be_bytes());
        ip[9] = 1;
        ip[20] = 3;
        ip[21] = code;
        f
    }

    #[test]
    fn icmp_unreachable_names_the_flow_of_the_datagram_we_sent() {
        // From us (10.0.0.10:53) to 10.0.0.2:40000, as quoted back.
        let sent = v4_datagram(b"x");
        let mut ours = sent.clone();
        let ip = &mut ours[14..];
        let (a, b) = ([10u8, 0, 0, 10], [10u8, 0, 0, 2]);
        ip[12..16].copy_from_slice(&a);
        ip[16..20].copy_from_slice(&b);
        ip[20..22].copy_from_slice(&61_000u16.to_be_bytes());
        ip[22..24].copy_from_slice(&5353u16.to_be_bytes());
        let key = FlowKey {
            local: IpAddress::v4(10, 0, 0, 10),
            local_port: 61_000,
            remote: IpAddress::v4(10, 0, 0, 2),
            remote_port: 5353,
        };
        assert_eq!(
            classify(&icmp4_unreachable(&ours, 3)),
            FrameClass::UdpUnreachable(key)
        );
        assert_eq!(
            classify(&icmp4_unreachable(&ours, 1)),
            FrameClass::UdpUnreachable(key)
        );
        assert_eq!(
            classify(&icmp4_unreachable(&ours, 4)),
            FrameClass::Other,
            "path MTU"
        );
        let cut = icmp4_unreachable(&ours, 3);
        assert_eq!(
            classify(&cut[..cut.len() - 6]),
            FrameClass::Other,
            "quote cut short"
        );
    }
}
