//! Just enough frame classification for the engine to steer a frame to the
//! worker that owns it, without running the stack.

/// What a worker needs to know to decide who handles a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameClass {
    /// ARP: every worker needs the neighbour it announces.
    Arp {
        request: bool,
    },
    /// IPv6 neighbour advertisement: every worker needs it, like ARP.
    NeighborAdvert,
    /// TCP over IPv4 or IPv6, by destination port.
    Tcp {
        dst_port: u16,
        syn_only: bool,
    },
    Other,
}

const ETH_HLEN: usize = 14;

pub fn classify(frame: &[u8]) -> FrameClass {
    if frame.len() < ETH_HLEN {
        return FrameClass::Other;
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    match ethertype {
        0x0806 => {
            // op at offset 6 of the ARP body
            match frame.get(ETH_HLEN + 6..ETH_HLEN + 8) {
                Some(op) => FrameClass::Arp {
                    request: op == [0, 1],
                },
                None => FrameClass::Other,
            }
        }
        0x0800 => {
            let ip = &frame[ETH_HLEN..];
            if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 6 {
                return FrameClass::Other;
            }
            let ihl = ((ip[0] & 0x0f) as usize) * 4;
            tcp_class(ip.get(ihl..))
        }
        0x86dd => {
            let ip = &frame[ETH_HLEN..];
            if ip.len() < 41 {
                return FrameClass::Other;
            }
            match ip[6] {
                6 => tcp_class(ip.get(40..)),
                // ICMPv6 type 136 directly after the fixed header
                58 if ip[40] == 136 => FrameClass::NeighborAdvert,
                _ => FrameClass::Other,
            }
        }
        _ => FrameClass::Other,
    }
}

fn tcp_class(tcp: Option<&[u8]>) -> FrameClass {
    match tcp {
        Some(t) if t.len() >= 20 => FrameClass::Tcp {
            dst_port: u16::from_be_bytes([t[2], t[3]]),
            // SYN set, ACK clear: a new inbound connection
            syn_only: t[13] & 0x12 == 0x02,
        },
        _ => FrameClass::Other,
    }
}

/// Rewrites an ARP request in place into a reply addressed to `our_mac`, so
/// that a worker which did not receive the original learns the sender's
/// address without answering it a second time.
pub fn arp_request_to_learning_reply(frame: &mut [u8], our_mac: [u8; 6]) -> bool {
    if frame.len() < ETH_HLEN + 28 || frame[12..14] != [0x08, 0x06] {
        return false;
    }
    let arp = &mut frame[ETH_HLEN..];
    if arp[6..8] != [0, 1] {
        return false;
    }
    arp[7] = 2;
    arp[18..24].copy_from_slice(&our_mac);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
