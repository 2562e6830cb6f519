//! Any frame: `rx_check` and `classify` never panic, and what `classify`
//! hands out (a UDP payload range) lies inside the frame.
#![no_main]

use ferrogate_wire::{FrameClass, classify, rx_check};
use libfuzzer_sys::fuzz_target;
use smoltcp::wire::{EthernetAddress, IpCidr, Ipv4Address, Ipv6Address};

fuzz_target!(|frame: &[u8]| {
    let mac = EthernetAddress([2, 0, 0, 0, 0, 1]);
    let addrs = [
        IpCidr::new(Ipv4Address::new(10, 77, 0, 10).into(), 24),
        IpCidr::new(Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10).into(), 64),
    ];
    let _ = rx_check(frame, mac, &addrs);
    if let FrameClass::Udp(m) = classify(frame) {
        assert!(m.payload_offset + m.payload_len <= frame.len());
        let _ = m.payload(frame);
    }
});
