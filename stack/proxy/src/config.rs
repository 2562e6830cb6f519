//! Per-worker stack settings: the TCP/IP layer's ([`NetConfig`]: addresses,
//! buffers, connection limit, linger) and the proxy's (head buffer, body
//! limit, timeouts).

use std::net::IpAddr;
use std::ops::Range;
use std::time::Duration;

use crate::net::NetConfig;

#[derive(Debug, Clone)]
pub struct StackConfig {
    /// Addresses, buffers, queues, linger. `net.max_connections` also
    /// bounds client connections: a SYN beyond it is answered with RST
    /// (counted as `overload_rejected`).
    pub net: NetConfig,
    /// Request/response head buffer; a larger head gets 431 / 502.
    pub head_buffer: usize,
    /// Largest request body in bytes (413 above it); 0 = no limit.
    pub max_request_body: u64,
    pub timeouts: Timeouts,
    /// HTTP/2 settings and limits (listeners with `http2`).
    pub h2: ferrogate_h2::ServerConfig,
    /// This worker's index in its engine: HTTP/3 connection ids carry it,
    /// so a datagram RSS put on another queue can be handed to its owner.
    pub worker: u8,
    /// The engine's generation (0 or 1), also in HTTP/3 connection ids: a
    /// binary upgrade's successor runs with the other one, so datagrams of
    /// its predecessor's connections are told apart (and relayed).
    pub quic_generation: u8,
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
    /// Longest silence from the origin mid-body (the client is reset
    /// after: its body is short). `None`: the response timeout.
    pub upstream_read: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            client_header: Duration::from_secs(10),
            client_idle: Duration::from_secs(60),
            upstream_connect: Duration::from_secs(3),
            upstream_response: Duration::from_secs(30),
            upstream_read: None,
        }
    }
}

impl StackConfig {
    pub fn new(mac: [u8; 6], addresses: Vec<(IpAddr, u8)>, upstream_ports: Range<u16>) -> Self {
        Self {
            net: NetConfig::new(mac, addresses, upstream_ports),
            head_buffer: 16 * 1024,
            max_request_body: 0,
            timeouts: Timeouts::default(),
            h2: ferrogate_h2::ServerConfig::default(),
            worker: 0,
            quic_generation: 0,
        }
    }
}
