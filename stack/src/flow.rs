//! The connection demultiplexer's view of a frame: its TCP 4-tuple, read
//! straight from the bytes before smoltcp sees them, so that each frame is
//! handed to the one connection it belongs to instead of to every socket.

use smoltcp::wire::{IpAddress, Ipv4Address, Ipv6Address};

/// A TCP connection seen from this stack: our address/port, then the peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FlowKey {
    pub local: IpAddress,
    pub local_port: u16,
    pub remote: IpAddress,
    pub remote_port: u16,
}

/// What the demultiplexer needs from a TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcpMeta {
    pub key: FlowKey,
    /// SYN without ACK: may open a connection on a listener.
    pub syn_only: bool,
    /// RST set: smoltcp never answers it.
    pub rst: bool,
}

const ETH_HLEN: usize = 14;

/// The 4-tuple of an unfragmented TCP segment over IPv4 or IPv6 (no extension
/// headers); `None` for anything else, which then reaches smoltcp without any
/// socket (ARP, ICMP, NDP, fragments, malformed frames).
pub(crate) fn tcp_meta(frame: &[u8]) -> Option<TcpMeta> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = &frame[ETH_HLEN.min(frame.len())..];
    let (src, dst, tcp) = match ethertype {
        0x0800 => {
            if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 6 {
                return None;
            }
            // More-fragments or a fragment offset: smoltcp drops these anyway
            // (no reassembly configured), so they need no socket.
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
                return None;
            }
            let ihl = ((ip[0] & 0x0f) as usize) * 4;
            let src = Ipv4Address::from(<[u8; 4]>::try_from(&ip[12..16]).ok()?);
            let dst = Ipv4Address::from(<[u8; 4]>::try_from(&ip[16..20]).ok()?);
            (IpAddress::Ipv4(src), IpAddress::Ipv4(dst), ip.get(ihl..)?)
        }
        0x86dd => {
            if ip.len() < 40 || ip[0] >> 4 != 6 || ip[6] != 6 {
                return None;
            }
            let src = Ipv6Address::from(<[u8; 16]>::try_from(&ip[8..24]).ok()?);
            let dst = Ipv6Address::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?);
            (IpAddress::Ipv6(src), IpAddress::Ipv6(dst), &ip[40..])
        }
        _ => return None,
    };
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
}
