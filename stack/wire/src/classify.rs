//! What a frame is, for steering and demultiplexing: ARP and IPv6 neighbour
//! advertisements (every worker needs those), TCP with its 4-tuple and flags,
//! or anything else (smoltcp's to judge). Read straight from the bytes,
//! allocation-free, one pass.

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

/// What a worker needs to know to decide who handles a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameClass {
    /// ARP: every worker needs the neighbour it announces.
    Arp { request: bool },
    /// IPv6 neighbour advertisement: every worker needs it, like ARP.
    NeighborAdvert,
    /// An unfragmented TCP segment over IPv4 or IPv6 (no extension headers).
    Tcp(TcpMeta),
    /// Anything else (ICMP, NDP solicitations, fragments, malformed frames):
    /// it reaches smoltcp without any socket.
    Other,
}

const ETH_HLEN: usize = 14;
const ARP_OP: usize = 6;
const ICMPV6_NEIGHBOR_ADVERT: u8 = 136;

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
        0x0800 => ipv4(l3).map_or(FrameClass::Other, FrameClass::Tcp),
        0x86dd => {
            if l3.len() < 40 || l3[0] >> 4 != 6 {
                return FrameClass::Other;
            }
            match l3[6] {
                6 => {
                    let src = Ipv6Address::from(<[u8; 16]>::try_from(&l3[8..24]).unwrap());
                    let dst = Ipv6Address::from(<[u8; 16]>::try_from(&l3[24..40]).unwrap());
                    tcp(src.into(), dst.into(), &l3[40..])
                        .map_or(FrameClass::Other, FrameClass::Tcp)
                }
                // ICMPv6 directly after the fixed header
                58 if l3.get(40) == Some(&ICMPV6_NEIGHBOR_ADVERT) => FrameClass::NeighborAdvert,
                _ => FrameClass::Other,
            }
        }
        _ => FrameClass::Other,
    }
}

fn ipv4(ip: &[u8]) -> Option<TcpMeta> {
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 6 {
        return None;
    }
    // More-fragments or a fragment offset: the stack does not reassemble,
    // and a later fragment's "ports" are payload bytes.
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return None;
    }
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    let src = Ipv4Address::from(<[u8; 4]>::try_from(&ip[12..16]).unwrap());
    let dst = Ipv4Address::from(<[u8; 4]>::try_from(&ip[16..20]).unwrap());
    tcp(src.into(), dst.into(), ip.get(ihl..)?)
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
}
