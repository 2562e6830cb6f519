//! ARP frames rewritten for the other workers.

const ETH_HLEN: usize = 14;

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
    fn a_request_becomes_a_reply_to_us_and_a_reply_is_left_alone() {
        let mut f = vec![0u8; 42];
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        f[20..22].copy_from_slice(&[0, 1]);
        assert!(arp_request_to_learning_reply(&mut f, [2, 0, 0, 0, 0, 9]));
        assert_eq!(&f[20..22], &[0, 2]);
        assert_eq!(&f[32..38], &[2, 0, 0, 0, 0, 9]);
        assert!(!arp_request_to_learning_reply(&mut f, [2, 0, 0, 0, 0, 9]));
        assert!(!arp_request_to_learning_reply(&mut f[..40], [0; 6]));
    }
}
