//! What the TCP/IP layer of one worker needs to know.

use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;

use smoltcp::time::Duration;

#[derive(Debug, Clone)]
pub struct NetConfig {
    /// MAC address the stack answers ARP with (the NIC's own).
    pub mac: [u8; 6],
    /// Service addresses (VIPs) with their prefix length.
    pub addresses: Vec<(IpAddr, u8)>,
    pub gateway_v4: Option<Ipv4Addr>,
    /// Local ports this worker uses for outgoing connections.
    pub upstream_ports: Range<u16>,
    /// Sizes the socket table up front (a client and an upstream socket
    /// each); the application decides how many it accepts.
    pub max_connections: usize,
    /// Every socket starts with these buffers; one whose flight a buffer
    /// caps (a bulk transfer on a long path) grows it by doubling up to
    /// the maximum (the receive side: when a round trip delivers most of
    /// the window).
    pub tcp_rx_buffer: usize,
    pub tcp_rx_buffer_max: usize,
    pub tcp_tx_buffer: usize,
    pub tcp_tx_buffer_max: usize,
    /// Bytes the worker's grown buffers may hold beyond their starting
    /// size, all sockets together: past it, buffers stop growing (counted).
    pub tcp_buffer_budget: usize,
    /// TCP Timestamps (RFC 7323) on every connection whose peer offers
    /// them: an RTT sample per ACK, retransmissions included, for our RTO
    /// and congestion control, and for the peer's (a Linux receiver sizes
    /// its window from its RTT; without timestamps it measures one window
    /// at a time and grows it a round trip later).
    pub tcp_timestamps: bool,
    pub rx_queue_frames: usize,
    pub tx_queue_frames: usize,
    pub verify_rx_checksums: bool,
    /// The port computes IPv4/TCP/UDP checksums of sent frames (a NIC's tx
    /// checksum offload): the stack leaves them to it.
    pub tx_checksum_offload: bool,
    /// Longest a closing socket may linger before it is reset and reused.
    pub linger: Duration,
    pub random_seed: u64,
}

impl NetConfig {
    /// Defaults for everything but the interface's MAC, its addresses and
    /// the local ports of outgoing connections.
    pub fn new(mac: [u8; 6], addresses: Vec<(IpAddr, u8)>, upstream_ports: Range<u16>) -> Self {
        Self {
            mac,
            addresses,
            gateway_v4: None,
            upstream_ports,
            max_connections: 16_384,
            tcp_rx_buffer: 64 * 1024,
            tcp_rx_buffer_max: 4 * 1024 * 1024,
            tcp_tx_buffer: 64 * 1024,
            tcp_tx_buffer_max: 4 * 1024 * 1024,
            tcp_buffer_budget: 128 * 1024 * 1024,
            tcp_timestamps: true,
            rx_queue_frames: 512,
            tx_queue_frames: 1024,
            verify_rx_checksums: true,
            tx_checksum_offload: false,
            linger: Duration::from_secs(5),
            random_seed: 0x6665_7272_6f67_6174,
        }
    }
}
