//! Per-worker stack settings (addresses, buffers, limits, timeouts).

use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct StackConfig {
    /// MAC address the stack answers ARP with (the NIC's own).
    pub mac: [u8; 6],
    /// Service addresses (VIPs) with their prefix length.
    pub addresses: Vec<(IpAddr, u8)>,
    pub gateway_v4: Option<Ipv4Addr>,
    /// Local ports this worker uses for upstream connections.
    pub upstream_ports: Range<u16>,
    /// Client connections per worker; a SYN beyond it is answered with RST
    /// (counted as `overload_rejected`). Also sizes the socket and
    /// connection tables up front.
    pub max_connections: usize,
    pub tcp_rx_buffer: usize,
    pub tcp_tx_buffer: usize,
    /// Request/response head buffer; a larger head gets 431 / 502.
    pub head_buffer: usize,
    pub rx_queue_frames: usize,
    pub tx_queue_frames: usize,
    pub verify_rx_checksums: bool,
    /// Largest request body in bytes (413 above it); 0 = no limit.
    pub max_request_body: u64,
    pub timeouts: Timeouts,
    pub random_seed: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Time for a client to send a complete request head (408 after).
    pub client_header: Duration,
    /// Keep-alive idle time between requests on a client connection.
    pub client_idle: Duration,
    pub upstream_connect: Duration,
    /// Time from request sent to response head received (504 after).
    pub upstream_response: Duration,
    /// Longest a closing socket may linger before it is reset and reused.
    pub linger: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            client_header: Duration::from_secs(10),
            client_idle: Duration::from_secs(60),
            upstream_connect: Duration::from_secs(3),
            upstream_response: Duration::from_secs(30),
            linger: Duration::from_secs(5),
        }
    }
}

impl StackConfig {
    /// What the TCP/IP layer takes of it.
    pub fn net(&self) -> crate::net::NetConfig {
        crate::net::NetConfig {
            mac: self.mac,
            addresses: self.addresses.clone(),
            gateway_v4: self.gateway_v4,
            upstream_ports: self.upstream_ports.clone(),
            max_connections: self.max_connections,
            tcp_rx_buffer: self.tcp_rx_buffer,
            tcp_tx_buffer: self.tcp_tx_buffer,
            rx_queue_frames: self.rx_queue_frames,
            tx_queue_frames: self.tx_queue_frames,
            verify_rx_checksums: self.verify_rx_checksums,
            linger: crate::net::Duration::from_micros(self.timeouts.linger.as_micros() as u64),
            random_seed: self.random_seed,
        }
    }

    pub fn new(mac: [u8; 6], addresses: Vec<(IpAddr, u8)>, upstream_ports: Range<u16>) -> Self {
        Self {
            mac,
            addresses,
            gateway_v4: None,
            upstream_ports,
            max_connections: 16_384,
            tcp_rx_buffer: 64 * 1024,
            tcp_tx_buffer: 64 * 1024,
            head_buffer: 16 * 1024,
            rx_queue_frames: 512,
            tx_queue_frames: 1024,
            verify_rx_checksums: true,
            max_request_body: 0,
            timeouts: Timeouts::default(),
            random_seed: 0x6665_7272_6f67_6174,
        }
    }
}
